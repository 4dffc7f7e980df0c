"""The training mapper shared by the stages that train Mask2Former: the paper's augmentation in plain
torch and the conversion of (image, instance masks, labels) into the model's inputs and targets.

The augmentation is the paper's LSJ pipeline (`stage.augmentation`): resize to fit `base_size`, random
horizontal flip, a relative random crop (`crop_relative`..1 of each side), scale jitter
(`min_scale`..`max_scale` of `base_size`), and a fixed `base_size` crop (padded where smaller); the
jittered crop is redrawn up to `retries` times until an instance remains, then the weak augmentation
(resize + flip) is used. All randomness comes from a torch.Generator seeded with the per-sample seed
of the engine's `ResumableSampler(sample_seeds=True)`, so a sample is the same before and after a
resume and in whichever DataLoader worker maps it.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from partdistill.data import masks
from partdistill.data.images import read_rgb


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _resize(image: torch.Tensor, part_masks: torch.Tensor, size: tuple[int, int]):
    """Image [3, H, W] float (bilinear), masks [N, H, W] bool (nearest) resized to `size`."""
    if tuple(image.shape[-2:]) == size:
        return image, part_masks
    shrink = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=shrink)[0]
    if len(part_masks):
        part_masks = F.interpolate(part_masks[None].float(), size=size, mode="nearest-exact")[0] > 0.5
    else:
        part_masks = part_masks.new_zeros((0, *size))
    return image, part_masks


def _fit(shape, target: float) -> tuple[int, int]:
    scale = target / max(shape)
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def augment(image: torch.Tensor, part_masks: torch.Tensor, aug, generator: torch.Generator, train: bool = True):
    """The paper's augmentation of one image: returns (image [3, S, S] float 0..255 zero-padded,
    masks [N', S, S] bool without the parts cropped away, valid (h, w) of the image in the top-left,
    kept [N'] the index of each returned mask among the input masks).

    `aug`: base_size, flip, crop_relative, min_scale, max_scale, retries. `train=False` only
    resizes to fit and pads.
    """
    size = int(aug.base_size)
    image, part_masks = _resize(image, part_masks, _fit(image.shape[-2:], size))
    if train and aug.flip and float(torch.rand((), generator=generator)) < 0.5:
        image, part_masks = image.flip(-1), part_masks.flip(-1)
    weak = (image, part_masks)
    result = None
    for _ in range(max(1, int(aug.retries)) if train else 0):
        img, pm = weak
        h, w = img.shape[-2:]
        # relative random crop
        ch = max(1, round(h * _uniform(generator, aug.crop_relative, 1.0)))
        cw = max(1, round(w * _uniform(generator, aug.crop_relative, 1.0)))
        y0 = int(torch.randint(0, h - ch + 1, (), generator=generator))
        x0 = int(torch.randint(0, w - cw + 1, (), generator=generator))
        img, pm = img[:, y0:y0 + ch, x0:x0 + cw], pm[:, y0:y0 + ch, x0:x0 + cw]
        # scale jitter: fit into base_size x scale
        scale = _uniform(generator, aug.min_scale, aug.max_scale)
        img, pm = _resize(img, pm, _fit(img.shape[-2:], size * scale))
        # fixed-size crop
        h, w = img.shape[-2:]
        y0 = int(torch.randint(0, max(h - size, 0) + 1, (), generator=generator))
        x0 = int(torch.randint(0, max(w - size, 0) + 1, (), generator=generator))
        img, pm = img[:, y0:y0 + size, x0:x0 + size], pm[:, y0:y0 + size, x0:x0 + size]
        keep = pm.flatten(1).any(1)
        if keep.any():
            result = (img, pm, keep)
            break
    if result is None:
        img, pm = weak
        result = (img, pm, pm.flatten(1).any(1))
    img, pm, keep = result
    pm = pm[keep]
    h, w = img.shape[-2:]
    out_img = img.new_zeros((3, size, size))
    out_img[:, :h, :w] = img
    out_masks = pm.new_zeros((len(pm), size, size))
    out_masks[:, :h, :w] = pm
    return out_img, out_masks, (h, w), keep.nonzero().flatten()


class InstanceDataset(torch.utils.data.Dataset):
    """Training items {"file_name", "segments": [RLE, ...], "labels": [int, ...]} (optionally
    "object_class": int, passed on for class-conditioned heads), indexed by the sampler's (index, seed)
    pairs; each returns `to_sample(image, segment_masks, valid, labels)` of the augmented image, a
    function the stage hands over (the model's input format, `models.inputs.to_model_sample`), as
    detectron2's dataset mapper is handed to its loader."""

    def __init__(self, items: list[dict], aug, to_sample: Callable[..., dict]):
        self.items, self.aug, self.to_sample = items, aug, to_sample

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, 0)
        item = self.items[index]
        image = torch.from_numpy(np.array(read_rgb(item["file_name"]))).permute(2, 0, 1).float()
        segment_masks = torch.from_numpy(np.stack([masks.decode(rle) for rle in item["segments"]]).astype(bool))
        generator = torch.Generator().manual_seed(int(seed))
        image, segment_masks, valid, kept = augment(image, segment_masks, self.aug, generator)
        labels = torch.as_tensor(item["labels"], dtype=torch.int64)[kept]
        sample = self.to_sample(image, segment_masks, valid, labels)
        if "object_class" in item:
            sample["object_class"] = int(item["object_class"])
        return sample


def collate(samples: list[dict]) -> dict:
    batch = {"pixel_values": torch.stack([s["pixel_values"] for s in samples]),
             "pixel_mask": torch.stack([s["pixel_mask"] for s in samples]),
             "mask_labels": [s["mask_labels"] for s in samples],
             "class_labels": [s["class_labels"] for s in samples]}
    if "object_class" in samples[0]:
        batch["object_classes"] = torch.tensor([s["object_class"] for s in samples], dtype=torch.int64)
    return batch
