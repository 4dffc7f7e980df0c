"""The distillation model's class-conditioned part head (the paper's `apply_gradient_mask`).

The class head has K x C + 1 outputs: K part labels for each of C object classes, then no-object.
Each image (training) or object (inference) has one object class c, and only its K logits plus the
no-object logit take part: the loss and the scores are those of a (K + 1)-way classifier, so the
parts of one class never compete with another class's.

At inference an object whose class has no counterpart in the training classes (`None`) is scored
unconditioned: over all K x C part logits, so its labels are global (class, part) indices
`c * K + k`; the majority mapping of the unsupervised mIoU handles either.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from partdistill.models.losses import build_criterion, configure_loss, unwrap


def normalize_queries(model) -> None:
    """L2-normalises the query embeddings the class head reads (the 1K setting's QUERY_FEATURE_NORMALIZE);
    a forward pre-hook, so the weights keep their names and load into a model without it."""
    model.class_predictor.register_forward_pre_hook(lambda module, args: (F.normalize(args[0], dim=-1),))


def slice_logits(class_logits: torch.Tensor, object_classes: torch.Tensor, num_parts: int) -> torch.Tensor:
    """[B, Q, K x C + 1] -> [B, Q, K + 1]: each image's K part logits of its class, then no-object."""
    index = object_classes[:, None] * num_parts + torch.arange(num_parts, device=class_logits.device)  # [B, K]
    index = torch.cat([index, index.new_full((len(index), 1), class_logits.shape[-1] - 1)], 1)  # + no-object
    return class_logits.gather(2, index[:, None, :].expand(-1, class_logits.shape[1], -1))


def configure_conditioned_loss(model, loss_cfg, num_parts: int) -> None:
    """The stage's loss weights on a criterion of K + 1 classes (the sliced logits), not the head's K x C + 1."""
    configure_loss(model, loss_cfg)
    config = model.config.__class__.from_dict(model.config.to_dict())
    config.num_labels = num_parts
    model.criterion = build_criterion(config, model.weight_dict)


def conditioned_loss_terms(num_parts: int):
    """A loss_fn for the engine: Mask2Former's weighted terms on the logits sliced by batch["object_classes"]."""
    def loss_terms(model, batch: dict) -> dict[str, torch.Tensor]:
        outputs = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
        classes = batch["object_classes"]
        auxiliary = [{"masks_queries_logits": aux["masks_queries_logits"],
                      "class_queries_logits": slice_logits(aux["class_queries_logits"], classes, num_parts)}
                     for aux in outputs.auxiliary_logits or []]
        core = unwrap(model)
        return core.get_loss_dict(outputs.masks_queries_logits,
                                  slice_logits(outputs.class_queries_logits, classes, num_parts),
                                  batch["mask_labels"], batch["class_labels"], auxiliary)

    return loss_terms


def object_parts(class_logits: torch.Tensor, mask_logits: torch.Tensor, object_mask: torch.Tensor,
                 object_class: int | None, num_parts: int, top_k: int = 200) -> tuple[torch.Tensor, torch.Tensor,
                                                                                         torch.Tensor]:
    """The parts of one object, as the paper's `instance_inference_with_classification`.

    Args:
        class_logits: [Q, K x C + 1] of the image.
        mask_logits: [Q, h, w] mask logits cropped to the object's box at the image's original size.
        object_mask: [h, w] bool, the object inside that box.
        object_class: the object's training class, or None (unconditioned over all K x C labels).
    Returns:
        (masks [N, h, w] bool inside the object, labels [N], scores [N]): the top `top_k` (query, label)
        pairs by P(label) (softmax without no-object), each pixel given to the pair with the highest
        score x sigmoid(mask), pairs of one label merged (score = the best of them).
    """
    if object_class is None:
        probs = class_logits.float().softmax(-1)[:, :-1]  # [Q, K x C]
    else:
        sliced = slice_logits(class_logits[None], torch.tensor([object_class], device=class_logits.device), num_parts)
        probs = sliced[0].float().softmax(-1)[:, :-1]  # [Q, K]
    scores, flat = probs.flatten().topk(min(top_k, probs.numel()))
    queries, labels = flat // probs.shape[1], flat % probs.shape[1]
    weighted = scores[:, None, None] * mask_logits[queries].float().sigmoid()  # [T, h, w]
    winner = weighted.argmax(0)  # [h, w]
    pixel_labels = torch.where(object_mask, labels[winner], -1)
    present = pixel_labels[object_mask].unique()
    masks = pixel_labels[None] == present[:, None, None]
    # a label's score: the best pair of that label that wins at least one pixel
    won = torch.zeros(len(scores), dtype=torch.bool, device=scores.device)
    won[winner[object_mask].unique()] = True
    best = torch.stack([scores[won & (labels == label)].max() for label in present]) if len(present) else scores[:0]
    return masks, present, best
