"""What a Mask2Former gives: backbone features, and mask logits back on each image's own pixels.

`image_logits` is the one place that undoes the input's resizing and padding (upsample to the
padded input, crop the image, optionally resize to the original size), as detectron2's
`sem_seg_postprocess`; `top_instances` ranks instances as Mask2Former's instance post-processing does.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from partdistill.models.inputs import Batch

FEATURE_KEYS = ("res2", "res3", "res4", "res5")  # strides 4, 8, 16, 32 = the backbone's feature_maps[0..3]


def image_logits(logits: torch.Tensor, padded: Sequence[int], valid: Sequence[int],
                 original: Sequence[int] | None = None) -> torch.Tensor:
    """[N, Hp', Wp'] logits (or scores) of one image on a grid of the padded input -> [N, h, w] on the
    image's valid region (bilinear to the padded size, crop), then [N, H, W] at `original` when given."""
    h, w = valid
    up = F.interpolate(logits.float()[None], size=tuple(padded), mode="bilinear", align_corners=False)[:, :, :h, :w]
    if original is not None:
        up = F.interpolate(up, size=tuple(original), mode="bilinear", align_corners=False)
    return up[0]



def backbone_features(model, pixel_values: torch.Tensor, keys: Sequence[str] = ("res3", "res4")) -> dict:
    """{key: [B, C_key, Hp / stride, Wp / stride]} from the backbone alone (no pixel or transformer decoder).

    res2, res3, res4, res5 have strides 4, 8, 16, 32 of the [B, 3, Hp, Wp] input. Gradients follow the
    caller's mode: wrap in torch.no_grad() for inference.
    """
    unknown = [key for key in keys if key not in FEATURE_KEYS]
    if unknown:
        raise ValueError(f"unknown feature key(s) {unknown}; valid: {', '.join(FEATURE_KEYS)}")
    feature_maps = model.model.pixel_level_module.encoder(pixel_values).feature_maps
    return {key: feature_maps[FEATURE_KEYS.index(key)] for key in keys}


def top_instances(model_outputs, batch: Batch, k: int = 1) -> list[list[dict]]:
    """Per image, its k most confident instances, best first: {"mask": [H, W] bool at the original size,
    "score": float in [0, 1], "label": int}.

    Scores as Mask2Former's instance inference: the query's best class probability (softmax without the
    no-object class) times the mean sigmoid of its mask logits over the pixels where they are > 0, taken
    on the image area of the padded input. Each query is one candidate (with its best class), so no
    mask is returned twice.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    class_probs = model_outputs.class_queries_logits.float().softmax(-1)[..., :-1]  # [B, Q, C]
    class_scores, labels = class_probs.max(-1)  # [B, Q]
    padded = batch.pixel_values.shape[-2:]
    results = []
    # One image at a time: Q masks at the input size ([Q, Hp, Wp]) is large for the paper's 200 queries.
    for i, ((h, w), original) in enumerate(zip(batch.image_sizes, batch.original_sizes)):
        logits = image_logits(model_outputs.masks_queries_logits[i], padded, (h, w))  # [Q, h, w]
        positive = (logits > 0).flatten(1).float()  # [Q, h * w]
        mask_scores = (logits.sigmoid().flatten(1) * positive).sum(1) / (positive.sum(1) + 1e-6)
        scores, order = (class_scores[i] * mask_scores).topk(min(k, len(mask_scores)))
        masks = F.interpolate(logits[order][None], size=original, mode="bilinear", align_corners=False)[0] > 0
        results.append([{"mask": mask.cpu().numpy(), "score": float(score), "label": int(label)}
                        for mask, score, label in zip(masks, scores, labels[i, order])])
    return results
