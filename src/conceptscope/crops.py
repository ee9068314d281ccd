"""Grid crops of the concepts paper (Herdt & Otero Baguer, Sec. 4.2) as crop vectors at hidden layers.

Every image is divided into a g x g grid (g = 3 in the paper; several grids allowed). Each crop
becomes one vector per layer, by one of two modes:

- `cells`: the spatial mean of the image's activation map over the grid cell (adaptive-pooling bins:
  rows floor(i*h/g) .. ceil((i+1)*h/g)); one forward pass per image, no extra passes.
- `crops`: the crop itself is cut from the image the model sees, resized to the model's input size,
  passed through the model, and the layer's map is averaged spatially (the paper's procedure).
- `masked`: the crop stays at its own place and scale in the model's view, everything outside it is
  set to 0 after normalisation (the dataset's mean colour), and the layer's map of that image is
  averaged spatially. For small inputs (28 px digits) resizing a third of the image to the full
  input changes the scale of what the model responds to (a 1-pixel pattern becomes 3 pixels wide);
  this mode keeps the crop's pixels as the model saw them in the whole image.

Boxes are in pixel coordinates of the original image. A store holds `vectors` (M, C), `image_id`,
`grid`, `cell` (row-major index in the grid) and `box` (x0, y0, x1, y1), image-major order.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .activations import LayerRecorder, _writers
from .data import ImageDataset, PreparedDataset
from .models import build_transform
from .store import layer_store_name, provenance
from .utils import atomic_path

CROP_MODES = ("cells", "crops", "masked")


def view_box(width: int, height: int, preprocess: dict) -> tuple[float, float, float, float]:
    """The region (x0, y0, x1, y1) of the original image that the model sees after resize + centre crop."""
    scale_x = scale_y = 1.0
    new_w, new_h = width, height
    if preprocess.get("resize"):
        size = preprocess["resize"]
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = size, int(size * long / short)
        new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
        scale_x, scale_y = width / new_w, height / new_h
    crop = preprocess.get("input_size")
    if not crop:
        return (0.0, 0.0, float(width), float(height))
    left = max(0, int(round((new_w - crop) / 2.0)))
    top = max(0, int(round((new_h - crop) / 2.0)))
    right, bottom = min(new_w, left + crop), min(new_h, top + crop)
    return (left * scale_x, top * scale_y, right * scale_x, bottom * scale_y)


def cell_bins(size: int, grid: int) -> list[tuple[int, int]]:
    """Adaptive-pooling bins of a length-`size` axis cut into `grid` cells (overlap when size < grid)."""
    return [(math.floor(i * size / grid), math.ceil((i + 1) * size / grid)) for i in range(grid)]


def cell_boxes(view: Sequence[float], grid: int, map_h: int | None = None, map_w: int | None = None) -> np.ndarray:
    """(grid*grid, 4) boxes in original-image pixels, row-major.

    With a map size: the image region of each activation-map cell (cells mode); without: an even
    split of the view (crops mode).
    """
    x0, y0, x1, y1 = view
    width, height = x1 - x0, y1 - y0
    ys = [(a / map_h, b / map_h) for a, b in cell_bins(map_h, grid)] if map_h else [(i / grid, (i + 1) / grid) for i in range(grid)]
    xs = [(a / map_w, b / map_w) for a, b in cell_bins(map_w, grid)] if map_w else [(i / grid, (i + 1) / grid) for i in range(grid)]
    return np.array([(x0 + xa * width, y0 + ya * height, x0 + xb * width, y0 + yb * height) for ya, yb in ys for xa, xb in xs], np.float32)


def grid_boxes(view: Sequence[float], grids: Sequence[int], map_h: int | None = None, map_w: int | None = None) -> np.ndarray:
    """(sum(g*g), 4) boxes of one image over all grids, in store row order (see `cell_boxes`)."""
    return np.concatenate([cell_boxes(view, g, map_h, map_w) for g in grids])


def cell_means(acts: torch.Tensor, grids: Sequence[int]) -> torch.Tensor:
    """(B, C, h, w) -> (B, sum(g*g), C): spatial mean over every grid cell, grids in order, row-major."""
    if acts.ndim != 4:
        raise ValueError(f"cells mode needs spatial activations (B, C, h, w), got shape {tuple(acts.shape)}")
    parts = [F.adaptive_avg_pool2d(acts, g).flatten(2).transpose(1, 2) for g in grids]
    return torch.cat(parts, dim=1)


def spatial_mean(acts: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, C); (B, C) passes through."""
    return acts.mean(dim=(2, 3)) if acts.ndim == 4 else acts.flatten(1)


def _argmax(output, n: int) -> np.ndarray:
    """Predicted class per row of a classifier output (int32), -1 where the output is not (n, K) logits."""
    if isinstance(output, torch.Tensor) and output.ndim == 2 and len(output) == n:
        return output.argmax(dim=1).to(torch.int32).cpu().numpy()
    return np.full(n, -1, np.int32)


class _CropDataset(Dataset):
    """Every (image, grid, cell) crop of the model's view of each image, resized to the input size
    (`masked=False`) or kept in place with the rest of the view at 0 after normalisation (`masked=True`)."""

    def __init__(self, data: PreparedDataset, rows: pd.DataFrame, preprocess: dict, grids: Sequence[int], masked: bool = False):
        self.data = data
        self.masked = masked
        self.view_transform = build_transform(preprocess)
        self.rows = list(rows.itertuples(index=False))
        self.grids = list(grids)
        self.per_image = sum(g * g for g in grids)
        size = preprocess.get("input_size") or preprocess.get("resize")
        if not size:
            raise ValueError("crops mode needs preprocess.input_size (the size every crop is resized to)")
        self.preprocess = preprocess
        self.finish = build_transform({**preprocess, "resize": None, "input_size": None})
        self.size = int(size)
        self._cache: tuple[int, Image.Image, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.rows) * self.per_image

    def _image(self, index: int):
        if self._cache is None or self._cache[0] != index:
            row = self.rows[index]
            image = Image.fromarray(self.data.load_image(row))
            boxes = grid_boxes(view_box(image.width, image.height, self.preprocess), self.grids)
            self._cache = (index, image, boxes)
        return self._cache[1], self._cache[2]

    def __getitem__(self, i: int) -> torch.Tensor:
        image_index, k = divmod(i, self.per_image)
        image, boxes = self._image(image_index)
        if self.masked:
            view = self.view_transform(image)  # (C, S, S), the model's input
            x0, y0, x1, y1 = (int(round(v)) for v in grid_boxes((0, 0, view.shape[2], view.shape[1]), self.grids)[k])
            inside = torch.zeros_like(view)
            inside[:, y0:y1, x0:x1] = view[:, y0:y1, x0:x1]
            return inside
        box = boxes[k]
        crop = image.crop(tuple(int(round(v)) for v in box)).resize((self.size, self.size), Image.BILINEAR)
        return self.finish(crop)


@torch.no_grad()
def extract_crop_vectors(
    model: nn.Module,
    data: PreparedDataset,
    rows: pd.DataFrame,
    layers: Sequence[str],
    preprocess: dict,
    out_dir: str | Path,
    *,
    mode: str = "crops",
    grids: Sequence[int] = (3,),
    dtype: str = "float32",
    batch_size: int = 32,
    chunk_rows: int = 4096,
    compression: str = "zstd",
    compression_level: int = 1,
    inner_rows: int | None = None,
    device: torch.device | str = "cpu",
    attrs: dict | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Crop vectors of every image in `rows` at every layer -> `out_dir/{layer}.zarr` (atomic).

    Memory is bounded by one batch and one chunk per layer, not by the number of images.
    `inner_rows`: the vectors are written sharded, in inner chunks of that many rows, so that
    single crops read cheaply (`conceptscope.store.RowReader`; see `crop_inner_rows`).
    """
    if mode not in CROP_MODES:
        raise ValueError(f"unknown crop mode {mode!r}; expected one of {CROP_MODES}")
    if not len(rows):
        raise ValueError(f"no images selected from {data.path} for crop vectors")
    model = model.to(device).eval()
    grids = [int(g) for g in grids]
    per_image = sum(g * g for g in grids)
    grid_of = np.concatenate([np.full(g * g, g, np.int16) for g in grids])
    cell_of = np.concatenate([np.arange(g * g, dtype=np.int16) for g in grids])
    n_rows = len(rows) * per_image
    attrs = provenance("crop_vectors", mode=mode, grids=grids, dtype=dtype, n_images=len(rows), preprocess=preprocess, **(attrs or {}))
    image_ids = rows["image_id"].to_numpy().astype(np.int64)
    widths, heights = rows["width"].to_numpy(), rows["height"].to_numpy()
    store_kw = dict(chunk_rows=chunk_rows, dtypes={"vectors": dtype}, compression=compression, compression_level=compression_level)
    if inner_rows:
        store_kw["inner_rows"] = {"vectors": inner_rows}
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        with LayerRecorder(model, layers) as recorder, _writers(tmp, layers, n_rows, attrs, **store_kw) as writers:
            if mode == "cells":
                subset = ImageDataset(data, rows, build_transform(preprocess))
                loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=0)
                start = 0
                for images, _, _ in tqdm(loader, desc="crop vectors (cells)", disable=not progress, leave=False):
                    model(images.to(device))
                    stop = start + len(images)
                    views = [view_box(w, h, preprocess) for w, h in zip(widths[start:stop], heights[start:stop])]
                    for layer, writer in writers.items():
                        acts = recorder.outputs[layer].float()
                        vectors = cell_means(acts, grids).reshape(-1, acts.shape[1]).cpu().numpy()
                        map_h, map_w = acts.shape[2], acts.shape[3]
                        boxes = np.concatenate([grid_boxes(v, grids, map_h, map_w) for v in views])
                        writer.append(
                            vectors=vectors,
                            image_id=np.repeat(image_ids[start:stop], per_image),
                            grid=np.tile(grid_of, stop - start),
                            cell=np.tile(cell_of, stop - start),
                            box=boxes,
                        )
                    start = stop
            else:
                crops = _CropDataset(data, rows, preprocess, grids, masked=mode == "masked")
                loader = DataLoader(crops, batch_size=batch_size * per_image, shuffle=False, num_workers=0)
                start = 0
                for batch in tqdm(loader, desc="crop vectors (crops)", disable=not progress, leave=False):
                    # the model's class for each crop on its own (the concepts paper's stricter
                    # prediction test skips crops predicted as the explained class)
                    predicted = _argmax(model(batch.to(device)), len(batch))
                    stop = start + len(batch)
                    image_index = np.arange(start, stop) // per_image
                    within = np.arange(start, stop) % per_image
                    # each image's boxes once per batch, not once per crop
                    per_image_boxes = {i: grid_boxes(view_box(widths[i], heights[i], preprocess), grids) for i in np.unique(image_index)}
                    boxes = np.stack([per_image_boxes[i][k] for i, k in zip(image_index, within)])
                    for layer, writer in writers.items():
                        writer.append(
                            vectors=spatial_mean(recorder.outputs[layer].float()).cpu().numpy(),
                            image_id=image_ids[image_index],
                            grid=grid_of[within],
                            cell=cell_of[within],
                            box=boxes,
                            predicted=predicted,
                        )
                    start = stop
    return {layer: out_dir / layer_store_name(layer) for layer in layers}
