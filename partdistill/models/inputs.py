"""What a Mask2Former takes: normalised, zero-padded pixel values and the valid-pixel mask.

- `preprocess` is the paper's test input (method reference 2.1/2.2): resize to fit size x size,
  ImageNet mean/std on the 0-255 scale, zero padding (after normalisation) to a multiple of 32.
- `to_model_sample` is the same for one augmented training image with its targets; a stage hands
  it to the dataset (`data.augmentation.InstanceDataset`), which knows no model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)



@dataclass
class Batch:
    """Images ready for the model.

    pixel_values: [B, 3, Hp, Wp] float32, normalised, zero-padded bottom/right; Hp, Wp multiples of 32.
    pixel_mask: [B, Hp, Wp] int64, 1 on the image, 0 on the padding.
    image_sizes: (h, w) of each resized image inside the padding.
    original_sizes: (H, W) of each input image.
    """

    pixel_values: torch.Tensor
    pixel_mask: torch.Tensor
    image_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]


def preprocess(images: Sequence[np.ndarray], size: int = 640, size_divisibility: int = 32, device=None) -> Batch:
    """Resize [H, W, 3] uint8 RGB images to fit size x size (detectron2's ResizeScale(1, 1, size, size):
    small images are enlarged), normalise, and pad them to one shape divisible by `size_divisibility`."""
    if not images:
        raise ValueError("preprocess needs at least one image")
    for image in images:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected [H, W, 3] uint8 RGB images, got {image.dtype} of shape {image.shape}")
    originals = [tuple(image.shape[:2]) for image in images]
    resized: list[torch.Tensor | None] = [None] * len(images)
    for shape in dict.fromkeys(originals):  # images of one size are resized in one call
        index = [i for i, s in enumerate(originals) if s == shape]
        stack = torch.from_numpy(np.stack([images[i] for i in index])).to(device).permute(0, 3, 1, 2).float()
        scale = size / max(shape)
        out = (int(round(shape[0] * scale)), int(round(shape[1] * scale)))
        # detectron2 resizes the uint8 image (PIL bilinear, antialiased when shrinking), hence round + clamp
        stack = F.interpolate(stack, size=out, mode="bilinear", align_corners=False, antialias=scale < 1)
        for i, image in zip(index, stack.round_().clamp_(0, 255)):
            resized[i] = image
    sizes = [tuple(image.shape[1:]) for image in resized]
    height = math.ceil(max(h for h, _ in sizes) / size_divisibility) * size_divisibility
    width = math.ceil(max(w for _, w in sizes) / size_divisibility) * size_divisibility
    padded = [normalize_and_pad(image, (height, width)) for image in resized]
    return Batch(torch.stack([p[0] for p in padded]), torch.stack([p[1] for p in padded]), sizes, originals)


def normalize_and_pad(image: torch.Tensor, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """[3, h, w] RGB on the 0-255 scale -> ([3, H, W] normalised, zeros below and right; [H, W] int64 mask,
    1 on the image) for `shape` = (H, W) >= (h, w)."""
    h, w = image.shape[-2:]
    mean = torch.tensor(PIXEL_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=image.device).view(3, 1, 1)
    pixel_values = image.new_zeros((3, *shape))
    pixel_values[:, :h, :w] = (image - mean) / std
    pixel_mask = torch.zeros(shape, dtype=torch.int64, device=image.device)
    pixel_mask[:h, :w] = 1
    return pixel_values, pixel_mask


def to_model_sample(image: torch.Tensor, segment_masks: torch.Tensor, valid: tuple[int, int],
                    labels: torch.Tensor | None = None) -> dict:
    """A training sample: the augmented image ([3, S, S], the valid region (h, w) at the top left)
    normalised with zeros outside the valid region, its valid-pixel mask, and the targets; `labels` None =
    all 0 (one class-agnostic "part" class)."""
    h, w = valid
    pixel_values, pixel_mask = normalize_and_pad(image[:, :h, :w], tuple(image.shape[-2:]))
    if labels is None:
        labels = torch.zeros(len(segment_masks), dtype=torch.int64)
    return {"pixel_values": pixel_values, "pixel_mask": pixel_mask, "mask_labels": segment_masks.float(),
            "class_labels": labels}
