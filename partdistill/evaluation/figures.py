"""Every PNG meant for people: rows of titled image panels, each upscaled to a readable size, with
part labels tinted over the image and a legend per row. One module draws them all, so a label has
the same colour, and a figure the same layout, wherever it is looked at."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from partdistill.io import replace_atomically

# Trubetskoy's "20 simple, distinct colours", most distinct first, without white, black and beige
# (lost on the white page or in the image's shadows); labels beyond them get seeded random colours.
_FIXED = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (67, 99, 216), (245, 130, 49), (145, 30, 180),
    (66, 212, 244), (240, 50, 230), (191, 239, 69), (250, 190, 212), (70, 153, 144), (220, 190, 255),
    (154, 99, 36), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 216, 177), (0, 0, 117),
    (169, 169, 169),
], np.uint8)
_SEED = 12345
ALPHA = 0.55  # tint strength: the colour reads clearly and the image still shows through
MARGIN, GAP = 10, 12  # around the figure; between panels, legend columns and rows
FONT_SIZE, TITLE_SIZE = 15, 20
LINE = FONT_SIZE + 6  # height of one line of text, descenders included
SWATCH = 13


@dataclass
class Panel:
    """One picture of a figure.

    Attributes:
        title: Text above the panel.
        image: [H, W, 3] uint8 RGB.
        labels: [H, W] int label of each pixel (-1: not labelled), tinted over the image with the
            label's palette colour; None shows the image alone.
        names: Legend text of each label; a label without one is shown as `str(label)`.
    """

    title: str
    image: np.ndarray
    labels: np.ndarray | None = None
    names: dict[int, str] | None = None


def palette(n: int) -> np.ndarray:
    """[n, 3] uint8: row i is label i's colour, the same whatever n (a label keeps its colour in
    every figure)."""
    extra = [np.random.default_rng([_SEED, i]).integers(40, 256, 3) for i in range(len(_FIXED), n)]
    return np.concatenate([_FIXED[:n], np.array(extra, np.uint8).reshape(-1, 3)])


def render_grid(rows: list[list[Panel]], min_height: int = 256, title: str | None = None) -> np.ndarray:
    """Draws a figure: one row of panels per list, each row with its legend on the right.

    Args:
        rows: Non-empty lists of panels; rows may differ in width (shorter ones are padded). A label
            has one colour everywhere; the legend lists each panel's own name for it.
        min_height: Each panel is upscaled by nearest neighbour with the smallest integer factor
            that makes it at least this high (never downscaled), so pixels stay exact and visible.
        title: Optional text above the whole figure.

    Returns:
        [H, W, 3] uint8 RGB on a white background.
    """
    drawn = [_render_row(row, min_height) for row in rows]
    top = 0 if title is None else TITLE_SIZE + GAP
    width = max(row.width for row in drawn) + 2 * MARGIN
    height = top + sum(row.height for row in drawn) + GAP * (len(drawn) - 1) + 2 * MARGIN
    canvas = Image.new("RGB", (width, height), "white")
    if title is not None:
        ImageDraw.Draw(canvas).text((MARGIN, MARGIN), title, fill="black", font=_font(TITLE_SIZE))
    y = MARGIN + top
    for row in drawn:
        canvas.paste(row, (MARGIN, y))
        y += row.height + GAP
    return np.asarray(canvas)


def save_grid(path: Path, rows: list[list[Panel]], min_height: int = 256, title: str | None = None) -> None:
    """Writes `render_grid(rows, min_height, title)` as a PNG at `path` (atomically: a reader never
    sees half a file), creating its folder."""
    array = render_grid(rows, min_height, title)
    replace_atomically(Path(path), lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


@lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _text_width(text: str, font) -> int:
    return int(np.ceil(font.getlength(text)))


def _tint(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each labelled pixel's colour blended over its grey level (the image's own colours would shift
    the tint away from the legend's swatch; its texture still shows); pixels labelled -1 stay exact."""
    out = image.astype(np.float32)
    shown = labels >= 0
    grey = out[shown] @ np.array([0.299, 0.587, 0.114], np.float32)
    colours = palette(int(labels.max(initial=-1)) + 1)
    out[shown] = (1 - ALPHA) * grey[:, None] + ALPHA * colours[labels[shown]]
    return out.round().astype(np.uint8)


def _upscale(image: np.ndarray, min_height: int) -> np.ndarray:
    factor = max(1, -(-min_height // image.shape[0]))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def _legend(row: list[Panel]) -> list[tuple[int, str]]:
    """(label, name) of every label present in each panel of the row, by panel then label, each pair once: a
    label that two panels name differently (a ground-truth part, a cluster) gets both entries, one colour."""
    entries: list[tuple[int, str]] = []
    for panel in row:
        if panel.labels is not None:
            names = panel.names or {}
            entries += [(int(v), names.get(int(v), str(int(v)))) for v in np.unique(panel.labels) if v >= 0]
    return list(dict.fromkeys(entries))


def _render_row(row: list[Panel], min_height: int) -> Image.Image:
    """Titled panels left to right, then the legend in as many columns as the row's height needs."""
    font = _font(FONT_SIZE)
    pictures = [_upscale(p.image if p.labels is None else _tint(p.image, p.labels), min_height) for p in row]
    cells = [max(pic.shape[1], _text_width(p.title, font)) for p, pic in zip(row, pictures)]
    height = LINE + max(pic.shape[0] for pic in pictures)
    legend = _legend(row)
    per_column = max(1, height // LINE)
    columns = [legend[i:i + per_column] for i in range(0, len(legend), per_column)]
    widths = [SWATCH + 6 + max(_text_width(name, font) for _, name in column) for column in columns]
    canvas = Image.new("RGB", (sum(cells) + GAP * (len(cells) - 1) + sum(GAP + w for w in widths), height), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for panel, picture, cell in zip(row, pictures, cells):
        draw.text((x, 0), panel.title, fill="black", font=font)
        canvas.paste(Image.fromarray(picture), (x, LINE))
        x += cell + GAP
    colours = palette(max(label for label, _ in legend) + 1) if legend else None
    for column, width in zip(columns, widths):
        for j, (label, name) in enumerate(column):
            y = j * LINE + (LINE - SWATCH) // 2
            # a grey outline keeps pale colours visible on white; the swatch's inside is the exact colour
            draw.rectangle((x, y, x + SWATCH - 1, y + SWATCH - 1), fill=tuple(int(c) for c in colours[label]),
                           outline=(90, 90, 90))
            draw.text((x + SWATCH + 6, j * LINE), name, fill="black", font=font)
        x += width + GAP
    return canvas
