"""Mask2Former's training loss with the stage's weights, as named terms the engine logs one by one."""
from __future__ import annotations

import torch


def configure_loss(model, loss_cfg) -> None:
    """Rebuilds the model's criterion with `stage.loss`'s weights and point sampling."""
    config = model.config
    config.class_weight, config.mask_weight = float(loss_cfg.class_weight), float(loss_cfg.mask_weight)
    config.dice_weight, config.no_object_weight = float(loss_cfg.dice_weight), float(loss_cfg.no_object_weight)
    config.train_num_points = int(loss_cfg.train_num_points)
    config.oversample_ratio = float(loss_cfg.oversample_ratio)
    config.importance_sample_ratio = float(loss_cfg.importance_sample_ratio)
    model.weight_dict = {"loss_cross_entropy": config.class_weight, "loss_mask": config.mask_weight,
                         "loss_dice": config.dice_weight}
    model.criterion = build_criterion(config, model.weight_dict)


def build_criterion(config, weight_dict: dict):
    """transformers' Mask2FormerLoss whose mask and dice terms are normalised by the mask count of the
    whole DDP batch (all-reduced, as detectron2's Mask2Former; transformers does it only under
    accelerate), so a sample weighs the same whichever rank holds it."""
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

    criterion = Mask2FormerLoss(config=config, weight_dict=weight_dict)
    criterion.get_num_masks = _global_num_masks
    return criterion


def _global_num_masks(class_labels, device) -> torch.Tensor:
    import torch.distributed as dist

    num_masks = torch.as_tensor(float(sum(len(labels) for labels in class_labels)), device=device)
    world_size = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(num_masks)
        world_size = dist.get_world_size()
    return torch.clamp(num_masks / world_size, min=1)


def unwrap(model):
    """The model inside a DistributedDataParallel wrapper, or the model itself."""
    return model.module if hasattr(model, "module") else model


def loss_terms(model, batch: dict) -> dict[str, torch.Tensor]:
    """The weighted loss terms (final layer and each auxiliary layer) of one batch; `model` may be DDP."""
    outputs = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
    return unwrap(model).get_loss_dict(outputs.masks_queries_logits, outputs.class_queries_logits,
                                       batch["mask_labels"], batch["class_labels"], outputs.auxiliary_logits)
