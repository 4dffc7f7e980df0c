"""evaluation.figures: the one drawing module for PNG panels."""
import numpy as np
from PIL import Image

from partdistill.evaluation.figures import Panel, palette, render_grid, save_grid


def random_image(seed: int, height: int = 96, width: int = 128) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3)).astype(np.uint8)


def locate(grid: np.ndarray, block: np.ndarray) -> tuple[int, int]:
    """Top-left corner of the first place the (upscaled) pixel block[0, 0] appears in the grid."""
    ys, xs = np.nonzero((grid == block[0, 0]).all(axis=-1))
    return int(ys[0]), int(xs[0])


def has_colour(region: np.ndarray, colour: np.ndarray) -> bool:
    return bool((region == colour).all(axis=-1).any())


def test_panels_are_exact_nearest_neighbour_upscales():
    images = [random_image(0), random_image(1)]
    grid = render_grid([[Panel("a", images[0])], [Panel("b", images[1])]], min_height=256)
    assert grid.dtype == np.uint8 and grid.shape[0] >= 2 * 256
    for image in images:
        factor = 3  # the smallest integer with 96 * factor >= 256
        y, x = locate(grid, image)
        expected = np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
        assert (grid[y:y + factor, x:x + factor] == image[0, 0]).all()  # one source pixel, one block
        assert np.array_equal(grid[y:y + 96 * factor, x:x + 128 * factor], expected)


def test_a_large_panel_is_not_downscaled():
    image = random_image(2, 300, 40)
    grid = render_grid([[Panel("tall", image)]], min_height=256)
    y, x = locate(grid, image)
    assert np.array_equal(grid[y:y + 300, x:x + 40], image)


def test_each_row_legend_shows_the_colours_of_its_labels():
    image = np.full((96, 128, 3), 128, np.uint8)
    first, second = np.full((96, 128), -1), np.full((96, 128), -1)
    first[:40, :50], second[50:, 60:] = 3, 7
    names = {3: "head", 7: "tail"}
    rows = [[Panel("image", random_image(3)), Panel("gt", image, first, names)],
            [Panel("image", random_image(4)), Panel("gt", image, second, names)]]
    grid = render_grid(rows, min_height=256)
    colours = palette(8)
    row_top = 0  # a row spans from the end of the row above to the end of its own panels
    for row, (shown, absent) in enumerate([(3, 7), (7, 3)]):
        y, x = locate(grid, rows[row][0].image)
        legend = grid[row_top:y + 96 * 3, x + 2 * 128 * 3:]  # right of both panels
        row_top = y + 96 * 3
        assert has_colour(legend, colours[shown]) and not has_colour(legend, colours[absent]), row


def test_unlabelled_pixels_are_not_tinted():
    image = random_image(5)
    labels = np.full((96, 128), -1)
    labels[:, 64:] = 0
    grid = render_grid([[Panel("labelled", image, labels)]], min_height=96)  # factor 1
    y, x = locate(grid, image)
    drawn = grid[y:y + 96, x:x + 128]
    assert np.array_equal(drawn[:, :64], image[:, :64])
    grey = image[:, 64:].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    tinted = np.round(0.45 * grey[..., None] + 0.55 * palette(1)[0].astype(np.float32))
    assert np.abs(drawn[:, 64:].astype(int) - tinted.astype(int)).max() <= 1


def test_palette_keeps_a_labels_colour_and_separates_the_first_ones():
    assert np.array_equal(palette(5), palette(40)[:5]) and np.array_equal(palette(25)[21], palette(30)[21])
    first = palette(19).astype(int)
    distances = np.abs(first[:, None] - first[None]).sum(-1) + np.eye(19, dtype=int) * 999
    assert distances.min() >= 60


def test_save_grid_writes_the_rendered_png(tmp_path):
    rows = [[Panel("image", random_image(6), np.zeros((96, 128), int), {0: "zero"})],
            [Panel("short row", random_image(7, 20, 30))]]
    path = tmp_path / "new" / "folder" / "grid.png"
    save_grid(path, rows, min_height=64, title="a figure")
    with Image.open(path) as png:
        assert png.format == "PNG"
        assert np.array_equal(np.asarray(png.convert("RGB")), render_grid(rows, min_height=64, title="a figure"))
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]  # no temporary file left behind
