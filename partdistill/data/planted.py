"""Images with planted objects and parts: the content of every synthetic dataset copy.

Each object is an ellipse cut into bands (its parts) along a class-specific axis with
class-specific proportions. Every (object class, part) pair has its own colour and stripe
texture, the same in every image, so the part structure can actually be recovered from pixels,
which the grouping and ranking tests rely on.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

GENERATOR = 2  # the drawing's version: bump when the same seed and sizes draw different images


@dataclass
class PlantedObject:
    object_class: int
    mask: np.ndarray  # [H, W] bool
    part_masks: list[np.ndarray]  # [H, W] bool each, one per part of the class, disjoint, union = mask
    ellipse: tuple[float, float, float, float]  # cx, cy, rx, ry in pixel-grid coordinates
    band_axis: int = 0  # 0: parts are horizontal bands (cut along y), 1: vertical bands (cut along x)
    band_edges: tuple[float, ...] = ()  # cut coordinates, from the ellipse's first extreme to its last


@dataclass
class Variation:
    """How much objects vary between images; the defaults keep objects large and centred in their column."""

    size_x: tuple[float, float] = (0.32, 0.46)  # semi-axis range, as a share of the object's column width
    size_y: tuple[float, float] = (0.30, 0.44)  # semi-axis range, as a share of the image height
    shift: float = 0.08  # centre offset range, as a share of the column width and of the image height
    inside: bool = False  # keep every object whole inside its column (moving its centre if needed)
    colour_jitter: float = 0.0  # per-image channel gains in 1 +- this (and a brightness offset)


@dataclass
class Scene:
    image: np.ndarray  # [H, W, 3] uint8
    objects: list[PlantedObject]


def part_appearance(object_class: int, part: int) -> tuple[np.ndarray, float, float]:
    """(RGB colour, stripe period in pixels, stripe angle) of a part; part -1 = a part-less object."""
    rng = np.random.default_rng(7919 * (object_class + 1) + 104729 * (part + 2))
    colour = rng.uniform(30, 225, size=3)
    return colour, float(rng.uniform(3.0, 9.0)), float(rng.uniform(0, np.pi))


def _class_layout(object_class: int, num_parts: int) -> tuple[int, np.ndarray]:
    """(axis the bands run along, band boundaries in [0, 1]) of a class: fixed for the class."""
    rng = np.random.default_rng(31337 + object_class)
    weights = rng.uniform(0.6, 1.4, size=num_parts)
    return object_class % 2, np.concatenate([[0.0], np.cumsum(weights) / weights.sum()])


def _texture(shape: tuple[int, int], object_class: int, part: int, rng: np.random.Generator) -> np.ndarray:
    colour, period, angle = part_appearance(object_class, part)
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    stripes = np.sin(2 * np.pi * (xs * np.cos(angle) + ys * np.sin(angle)) / period)
    noise = rng.normal(0, 6, size=shape)
    return colour[None, None, :] + (18 * stripes + noise)[..., None]


def draw_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    parts_per_class: Sequence[int],
    classes: Sequence[int],
    variation: Variation | None = None,
) -> Scene:
    """One image with one object per entry of `classes`, side by side without overlap.

    Args:
        rng: the source of randomness (position, size, noise).
        height, width: image size.
        parts_per_class: number of parts of each object class (0 = a class without parts).
        classes: the object class of each object to draw, left to right.
        variation: how much sizes, positions and colours vary between images (default: little).
    """
    v = variation or Variation()
    image = rng.normal(120, 20, size=(height, width, 3))
    ys, xs = np.mgrid[0:height, 0:width]
    column = width / len(classes)
    objects = []
    for i, object_class in enumerate(classes):
        cx = column * (i + 0.5) + rng.uniform(-v.shift, v.shift) * column
        cy = height * (0.5 + rng.uniform(-v.shift, v.shift))
        rx, ry = rng.uniform(*v.size_x) * column, rng.uniform(*v.size_y) * height
        if v.inside:  # move the centre so that the whole object stays in its column and in the image
            cx = float(np.clip(cx, column * i + rx, column * (i + 1) - rx - 1))
            cy = float(np.clip(cy, ry, height - ry - 1))
        mask = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0
        num_parts = parts_per_class[object_class]
        part_masks, axis, edges = [], 0, ()
        if num_parts == 0:
            image[mask] = _texture((height, width), object_class, -1, rng)[mask]
        else:
            axis, bounds = _class_layout(object_class, num_parts)
            coord, lo, extent = (ys, cy - ry, 2 * ry) if axis == 0 else (xs, cx - rx, 2 * rx)
            band = np.clip(np.searchsorted(bounds, (coord - lo) / extent, side="right") - 1, 0, num_parts - 1)
            edges = tuple(float(lo + b * extent) for b in bounds)
            for part in range(num_parts):
                part_mask = mask & (band == part)
                image[part_mask] = _texture((height, width), object_class, part, rng)[part_mask]
                part_masks.append(part_mask)
        objects.append(PlantedObject(int(object_class), mask, part_masks, (cx, cy, rx, ry), axis, edges))
    if v.colour_jitter:  # one gain per channel and a brightness offset for the whole image
        gains = rng.uniform(1 - v.colour_jitter, 1 + v.colour_jitter, size=3)
        image = image * gains + rng.uniform(-60, 60) * v.colour_jitter
    return Scene(np.clip(image, 0, 255).astype(np.uint8), objects)


def polygons(obj: PlantedObject, vertices: int = 48) -> tuple[list[float], list[list[float]]]:
    """COCO polygons [x0, y0, x1, y1, ...] of an object's outline and of each of its parts.

    The pixel grid's coordinate i is the centre of pixel i, which is i + 0.5 in COCO's polygon
    coordinates; rasterising these polygons reproduces the planted masks up to their boundary pixels.
    """
    cx, cy, rx, ry = obj.ellipse
    angles = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    outline = np.stack([cx + 0.5 + rx * np.cos(angles), cy + 0.5 + ry * np.sin(angles)], axis=1)
    parts = []
    axis = 1 - obj.band_axis  # column of the polygon's points that the bands cut (y for axis 0)
    for lo, hi in zip(obj.band_edges[:-1], obj.band_edges[1:]):
        band = _clip(_clip(outline, axis, lo + 0.5, keep_above=True), axis, hi + 0.5, keep_above=False)
        parts.append(band.ravel().round(2).tolist())
    return outline.ravel().round(2).tolist(), parts


def _clip(points: np.ndarray, column: int, value: float, keep_above: bool) -> np.ndarray:
    """Sutherland-Hodgman: the part of a convex polygon [N, 2] on one side of coordinate `value`."""
    inside = points[:, column] >= value if keep_above else points[:, column] <= value
    out = []
    for i in range(len(points)):
        a, b = points[i], points[(i + 1) % len(points)]
        a_in, b_in = inside[i], inside[(i + 1) % len(points)]
        if a_in:
            out.append(a)
        if a_in != b_in:  # the edge crosses the cut: add the crossing point
            t = (value - a[column]) / (b[column] - a[column])
            out.append(a + t * (b - a))
    return np.array(out).reshape(-1, 2)
