"""Mask2Former's training loss with the stage's weights, as named terms the engine logs one by one."""
from __future__ import annotations

import torch


def configure_loss(model, loss_cfg) -> None:
    """Rebuilds the model's criterion with `stage.loss`'s weights and point sampling."""
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

    config = model.config
    config.class_weight, config.mask_weight = float(loss_cfg.class_weight), float(loss_cfg.mask_weight)
    config.dice_weight, config.no_object_weight = float(loss_cfg.dice_weight), float(loss_cfg.no_object_weight)
    config.train_num_points = int(loss_cfg.train_num_points)
    config.oversample_ratio = float(loss_cfg.oversample_ratio)
    config.importance_sample_ratio = float(loss_cfg.importance_sample_ratio)
    model.weight_dict = {"loss_cross_entropy": config.class_weight, "loss_mask": config.mask_weight,
                         "loss_dice": config.dice_weight}
    model.criterion = Mask2FormerLoss(config=config, weight_dict=model.weight_dict)


def unwrap(model):
    """The model inside a DistributedDataParallel wrapper, or the model itself."""
    return model.module if hasattr(model, "module") else model


def loss_terms(model, batch: dict) -> dict[str, torch.Tensor]:
    """The weighted loss terms (final layer and each auxiliary layer) of one batch; `model` may be DDP."""
    outputs = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
    return unwrap(model).get_loss_dict(outputs.masks_queries_logits, outputs.class_queries_logits,
                                       batch["mask_labels"], batch["class_labels"], outputs.auxiliary_logits)
