"""Figures: grids of dataset crops, the layout of the concepts paper's Figures 5-8.

    image = crop_grid(data, crop_store, rows, row_labels=["concept 1", ...])
    image.save("figures/concepts.png")
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .data import PreparedDataset
from .store import CropStore

BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


def dataset_image(data: PreparedDataset, image_id: int) -> Image.Image:
    """One dataset image, by its manifest id, as RGB."""
    return Image.fromarray(data.load_image(data.row(image_id))).convert("RGB")


def crop_image(data: PreparedDataset, image_id: int, box: Sequence[float], tile: int) -> Image.Image:
    """The crop `box` (x0, y0, x1, y1, original pixels) of one dataset image, resized to tile x tile, RGB."""
    return cut_crop(dataset_image(data, image_id), box, tile)


def cut_crop(image: Image.Image, box: Sequence[float], tile: int) -> Image.Image:
    """The crop `box` (x0, y0, x1, y1, original pixels) of an RGB image, resized to tile x tile."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return image.crop((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1))).resize((tile, tile), Image.BILINEAR)


def crop_grid(
    data: PreparedDataset,
    crops: CropStore,
    rows: np.ndarray,
    *,
    row_labels: Sequence[str] | None = None,
    scores: np.ndarray | None = None,
    tile: int = 96,
    gap: int = 4,
    label_width: int = 110,
) -> Image.Image:
    """One row per concept, its top-m crops left to right (rows: (k, m) crop-store rows, -1 = empty).

    Each tile is the crop cut from the original image by its stored box; `scores` (k, m) are
    printed under the tiles (cosine similarity).
    """
    rows = np.atleast_2d(rows)
    valid = rows[rows >= 0]
    order = np.sort(np.unique(valid))
    image_ids = crops["image_id"].oindex[order] if len(order) else np.array([], np.int64)
    boxes = crops["box"].oindex[order] if len(order) else np.zeros((0, 4), np.float32)
    lookup = {int(r): (int(i), b) for r, i, b in zip(order, image_ids, boxes)}
    tiles = [[crop_image(data, *lookup[int(r)], tile) if r >= 0 else None for r in line] for line in rows]
    return tile_grid(tiles, row_labels=row_labels, scores=scores, tile=tile, gap=gap, label_width=label_width)


def tile_grid(
    tiles: Sequence[Sequence[Image.Image | None]],
    *,
    row_labels: Sequence[str] | None = None,
    scores: np.ndarray | None = None,
    title: str | None = None,
    tile: int = 96,
    gap: int = 4,
    label_width: int = 110,
) -> Image.Image:
    """Tiles in rows (None = empty), a label left of each row, optional scores under the tiles and a title."""
    k = len(tiles)
    m = max((len(line) for line in tiles), default=0)
    caption = 14 if scores is not None else 0
    head = 18 if title else 0
    width = label_width + m * (tile + gap) + gap
    height = head + k * (tile + caption + gap) + gap
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, 3), title, fill=TEXT)
    for i, line in enumerate(tiles):
        top = head + gap + i * (tile + caption + gap)
        if row_labels is not None:
            draw.text((gap, top + tile // 2 - 6), str(row_labels[i]), fill=TEXT)
        for j, image in enumerate(line):
            if image is None:
                continue
            left = label_width + gap + j * (tile + gap)
            canvas.paste(image.convert("RGB").resize((tile, tile)), (left, top))
            if scores is not None:
                draw.text((left + 2, top + tile + 1), f"{scores[i][j]:.2f}", fill=TEXT)
    return canvas


# a qualitative palette (matplotlib's tab20 order) for segment ids; ids beyond it wrap around
PALETTE = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194),
    (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150),
    (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
], dtype=np.float32)


def overlay_segments(image: np.ndarray, labels: np.ndarray, *, alpha: float = 0.5, boxes: Sequence[tuple] = (), n_colors: int | None = None) -> Image.Image:
    """A segmentation over its image: labels (h, w) upsampled by nearest neighbour to the image (H, W[, 3]),
    each segment tinted with its palette colour; `boxes` are (x0, y0, x1, y1, rgb) outlines in image pixels."""
    from .methods.nave import upsample_labels

    rgb = np.asarray(image, dtype=np.float32)
    rgb = np.repeat(rgb[..., None], 3, axis=2) if rgb.ndim == 2 else rgb[..., :3]
    full = upsample_labels(np.asarray(labels), rgb.shape[:2])
    colours = PALETTE[full % (n_colors or len(PALETTE)) % len(PALETTE)]
    out = Image.fromarray(((1 - alpha) * rgb + alpha * colours).clip(0, 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for x0, y0, x1, y1, colour in boxes:
        if all(np.isfinite(v) for v in (x0, y0, x1, y1)):
            draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=tuple(colour), width=max(1, rgb.shape[0] // 112))
    return out


def stack_vertically(images: Sequence[Image.Image], gap: int = 8) -> Image.Image:
    """Figures one below the other on a white background, left-aligned."""
    width = max(image.width for image in images)
    height = sum(image.height for image in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    top = 0
    for image in images:
        canvas.paste(image, (0, top))
        top += image.height + gap
    return canvas


def tile_position(i: int, j: int, *, tile: int = 96, gap: int = 4, label_width: int = 110, with_scores: bool = False) -> tuple[int, int]:
    """Top-left pixel of tile (i, j) in a `crop_grid` image (for tests and overlays)."""
    caption = 14 if with_scores else 0
    return label_width + gap + j * (tile + gap), gap + i * (tile + caption + gap)


def save_png(image: Image.Image, path: str | Path) -> None:
    """Save a figure atomically."""
    from .utils import atomic_path

    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
