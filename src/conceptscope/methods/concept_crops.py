"""Showing and testing concepts with dataset crops (concepts paper, Sec. 4.2-4.3), over crop pools.

A concept is shown as the m crops of a crop pool most similar to it (cosine similarity of the
crop's spatially averaged activation with the concept vector, Sec. 4.2). A pool is one dataset's
crop store and FAISS index; several pools (e.g. ImageNet plus a varied second set, as the stricter
test needs, Sec. 7) are searched one by one and merged by score. The prediction test stitches the
top crop of each concept at `size` x `size` (74 px for 224 px models, as the paper's crops).

The stricter variant (Sec. 4.3, Table 2) uses "only crops where the model is not predicting class
A"; the paper has one crop geometry, so that the stitched image of a single concept, one such crop,
is "never predicted as the target class" by construction (Sec. 4.3, Figure 4). Here a crop has two:
in `crops` mode its vector and stored prediction come from the crop resized to the model's input
size (as retrieved), while the test sees it at the stitched size. The stricter variant excludes a
crop when the model predicts A for the crop as retrieved (`crop_pred`, `crops` mode) or, given a
`StitchedCropClassifier`, for the crop as it appears in the stitched image: cut and resized exactly
as `stitch_hits` pastes it and fed alone, i.e. the one-concept test image itself (`stitched_pred`).
With `exclude_images` it also excludes every crop of an image predicted as A (the wording of the
paper's Figures 22-26 captions, "excluding images where the model predicts" A; Table 2 and Sec. 4.3
exclude crops). The store-known filters run inside the index search; the stitched-image check
classifies only the crops that come up among the hits, and the search repeats without those
predicted as A until the top m are admissible. `hit_records` records the three predictions.

    pools = [CropPool.open("imagenette", data_dir, crops_dir, index_path, predictions, "features.18")]
    stitched = StitchedCropClassifier(model, stitch_transform(preprocess), size=74)
    hits = search_pools(pools, concept_vectors, m=8, exclude_target=388, stitched=stitched)
    image = stitch_hits(pools, hits, size=74)
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from ..data import WATERMARK_COLUMNS, PreparedDataset
from ..crop_search import CropIndex
from ..models import fit_input
from ..store import CropStore, layer_store_name
from ..viz import cut_crop, dataset_image
from .prediction_test import stitch_crops


@dataclass
class CropPool:
    """One dataset's crops at one layer: store, index, and the model's predictions per crop row."""

    name: str
    data: PreparedDataset
    store: CropStore
    index: CropIndex
    image_pred: np.ndarray  # (M,) the model's class for the crop's whole image
    crop_pred: np.ndarray | None  # (M,) the model's class for the crop on its own (None in `cells` mode)
    image_ids: np.ndarray  # (M,) the image of each crop row
    # the last images decoded (RGB): a figure shows several crops of one image, and decoding a photo
    # costs more than cutting and resizing a crop
    _images: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False, compare=False)
    IMAGE_CACHE = 64
    # the last blocks of crop boxes read (one Zarr chunk each): reading one row decodes its whole chunk
    _box_blocks: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False, compare=False)
    BOX_BLOCKS = 16

    @classmethod
    def open(cls, name: str, data_dir, crops_dir, index_path, predictions, layer: str) -> "CropPool":
        """Open a pool from the pipeline's outputs; `predictions` is the model's parquet on that dataset."""
        store = CropStore(Path(crops_dir) / layer_store_name(layer))
        index = CropIndex.open(index_path, store)
        frame = predictions if isinstance(predictions, pd.DataFrame) else pd.read_parquet(predictions, columns=["image_id", "pred"])
        pred = frame.drop_duplicates("image_id").set_index("image_id")["pred"]
        image_ids = store.image_ids
        missing = ~np.isin(image_ids, pred.index.to_numpy())
        if missing.any():
            raise ValueError(
                f"crop pool {name!r}: {len(np.unique(image_ids[missing]))} images of the crop store have no prediction "
                f"({predictions if not isinstance(predictions, pd.DataFrame) else 'predictions'}); add their split to "
                "`predict.splits` so that crops of images predicted as the explained class can be excluded"
            )
        image_pred = pred.reindex(image_ids).to_numpy().astype(np.int64)
        return cls(name, PreparedDataset(data_dir), store, index, image_pred, store.predicted, image_ids)

    def __len__(self) -> int:
        return len(self.image_pred)

    def crop(self, row: int, size: int) -> Image.Image:
        """Crop-store row `row` cut from its original image and resized to size x size (RGB)."""
        image_id = int(self.image_ids[row])
        image = self._images.pop(image_id, None)
        if image is None:
            image = dataset_image(self.data, image_id)
            if len(self._images) >= self.IMAGE_CACHE:
                self._images.popitem(last=False)
        self._images[image_id] = image  # most recently used last
        return cut_crop(image, self.box(row), size)

    def box(self, row: int) -> np.ndarray:
        """(4,) the crop box (x0, y0, x1, y1, original pixels) of crop-store row `row`."""
        boxes = self.store["box"]
        size = boxes.chunks[0]
        start = int(row) // size * size
        block = self._box_blocks.pop(start, None)
        if block is None:
            block = boxes[start : start + size]
            while len(self._box_blocks) >= max(1, self.BOX_BLOCKS):
                self._box_blocks.popitem(last=False)
        self._box_blocks[start] = block  # most recently used last
        return block[int(row) - start]

    def watermarks(self, image_ids: np.ndarray) -> np.ndarray:
        """(k, 4) recorded watermark boxes of the images (-1 where none)."""
        if not hasattr(self, "_watermarks"):
            self._watermarks = self.data.manifest.set_index("image_id")[WATERMARK_COLUMNS]
        return self._watermarks.loc[np.asarray(image_ids)].to_numpy()

    def excluded(self, target: int, images: bool = False) -> np.ndarray:
        """Mask of the crops the stricter test may not use for `target`, known without running the
        model: (`crops` mode) the crop as retrieved predicted as it, and with `images` every crop of
        an image predicted as it."""
        mask = np.zeros(len(self.image_ids), dtype=bool)
        if self.crop_pred is not None:
            mask |= self.crop_pred == target
        if images:
            mask |= self.image_pred == target
        return mask


class StitchedCropClassifier:
    """The model's class for a pool's crops as they appear in the prediction test's stitched image.

    Each crop is cut from its image and resized to `size` x `size` as `stitch_hits` pastes it
    (`CropPool.crop`), and fed alone through `transform` (use `stitch_transform(preprocess)`, as the
    prediction test does): the stitched image of a single concept. Classes are computed in batches of
    `batch_size` on the model's device and cached per pool and row, so a crop is classified once
    however many classes and concepts it comes up for.
    """

    def __init__(self, model: nn.Module, transform, size: int, *, batch_size: int = 64):
        self.model = model
        self.transform = transform
        self.size = int(size)
        self.batch_size = int(batch_size)
        self._cache: dict[int, tuple[CropPool, dict[int, int]]] = {}  # id(pool) -> (pool, row -> class)

    @torch.no_grad()
    def __call__(self, pool: CropPool, rows: np.ndarray) -> np.ndarray:
        """(k,) the predicted class of each crop-store row of `pool`, as a one-crop stitched image."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        known = self._cache.setdefault(id(pool), (pool, {}))[1]  # the pool is kept, so its id is not reused
        todo = [int(r) for r in dict.fromkeys(rows.tolist()) if int(r) not in known]
        if todo:
            device = next(self.model.parameters()).device
            was_training = self.model.training
            self.model.eval()
            try:
                for i in range(0, len(todo), self.batch_size):
                    batch = todo[i : i + self.batch_size]
                    images = torch.stack([self.transform(pool.crop(r, self.size)) for r in batch]).to(device)
                    known.update(zip(batch, self.model(fit_input(self.model, images)).float().argmax(dim=1).tolist()))
            finally:
                self.model.train(was_training)
        return np.array([known[int(r)] for r in rows], dtype=np.int64)


@dataclass(frozen=True)
class CropHits:
    """The top-m crops of k queries across pools: pool index, crop-store row and cosine score, each (k, m).

    Missing hits (fewer admissible crops than m) are pool -1, row -1, score -inf.
    """

    pool: np.ndarray
    rows: np.ndarray
    scores: np.ndarray


def search_pools(
    pools: Sequence[CropPool],
    queries: np.ndarray,
    m: int = 8,
    *,
    exclude_target: int | None = None,
    exclude_images: bool = False,
    one_per_image: bool = False,
    stitched: StitchedCropClassifier | None = None,
) -> CropHits:
    """The m crops most similar to each query over all pools (merged by cosine similarity).

    `exclude_target`: the stricter variant (paper Table 2), no crop predicted as that class as
    retrieved (`CropPool.excluded`) and, with `stitched`, none predicted as it as it appears in the
    stitched test image (the search repeats without such crops until the top m of each pool are
    admissible); `exclude_images` also drops every crop of an image predicted as the class.
    `stitched` and `exclude_images` act only with `exclude_target`.
    """
    if not pools:
        raise ValueError("no crop pool to search")
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    pool_ids, rows, scores = [], [], []
    for i, pool in enumerate(pools):
        exclude = pool.excluded(exclude_target, exclude_images) if exclude_target is not None else None
        while True:
            s, r = pool.index.search(queries, m, exclude_rows=exclude, one_per_image=one_per_image)
            if exclude is None or stitched is None:
                break
            found = np.unique(r[r >= 0])
            shown_as_target = found[stitched(pool, found) == exclude_target]
            if not len(shown_as_target):
                break
            exclude[shown_as_target] = True
        pool_ids.append(np.where(r >= 0, i, -1))
        rows.append(r)
        scores.append(s)
    pool_ids, rows, scores = (np.concatenate(a, axis=1) for a in (pool_ids, rows, scores))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :m]
    take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
    return CropHits(pool=take(pool_ids), rows=take(rows), scores=take(scores))


def hit_records(pools: Sequence[CropPool], hits: CropHits, stitched: StitchedCropClassifier | None = None) -> pd.DataFrame:
    """One row per hit: concept, rank, pool, row, image_id, box, score, the model's predictions for
    the crop's image (image_pred), for the crop as retrieved (crop_pred, -1 in `cells` mode) and as it
    appears in the stitched test image (stitched_pred, -1 without `stitched`), and whether the crop
    overlaps the image's recorded watermark box (False where none)."""
    records = []
    for (concept, rank), pool_index in np.ndenumerate(hits.pool):
        if pool_index < 0:
            continue
        records.append((concept, rank, int(pool_index), int(hits.rows[concept, rank]), float(hits.scores[concept, rank])))
    frame = pd.DataFrame(records, columns=["concept", "rank", "pool_index", "row", "score"])
    parts = []
    for pool_index, group in frame.groupby("pool_index", sort=True):
        pool = pools[pool_index]
        rows = group["row"].to_numpy()
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        boxes = np.empty((len(rows), 4), np.float64)
        image_ids = np.empty(len(rows), np.int64)
        boxes[order] = pool.store["box"].oindex[sorted_rows]
        image_ids[order] = pool.store["image_id"].oindex[sorted_rows]
        group = group.assign(
            pool=pool.name,
            image_id=image_ids,
            box_x0=boxes[:, 0],
            box_y0=boxes[:, 1],
            box_x1=boxes[:, 2],
            box_y1=boxes[:, 3],
            image_pred=pool.image_pred[rows],
            crop_pred=pool.crop_pred[rows] if pool.crop_pred is not None else -1,
            stitched_pred=stitched(pool, rows) if stitched is not None else -1,
        )
        marks = pool.watermarks(image_ids)
        group["overlaps_watermark"] = boxes_overlap(boxes, marks)
        parts.append(group)
    columns = ["concept", "rank", "pool", "row", "image_id", "box_x0", "box_y0", "box_x1", "box_y1", "score", "image_pred", "crop_pred", "stitched_pred",
               "overlaps_watermark"]
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts).sort_values(["concept", "rank"]).reset_index(drop=True)[columns]


def _intersection(boxes: np.ndarray, marks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Width and height of each box's intersection with its watermark box (may be <= 0), and the marks."""
    boxes, marks = np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(marks, np.float64).reshape(-1, 4)
    width = np.minimum(boxes[:, 2], marks[:, 2]) - np.maximum(boxes[:, 0], marks[:, 0])
    height = np.minimum(boxes[:, 3], marks[:, 3]) - np.maximum(boxes[:, 1], marks[:, 1])
    return width, height, marks


def boxes_overlap(boxes: np.ndarray, marks: np.ndarray) -> np.ndarray:
    """Whether each box (x0, y0, x1, y1) overlaps the matching watermark box with positive area.

    Watermark boxes with x0 < 0 mean "no watermark" (never overlapping).
    """
    width, height, marks = _intersection(boxes, marks)
    return (marks[:, 0] >= 0) & (width > 0) & (height > 0)


def watermark_covered(boxes: np.ndarray, marks: np.ndarray) -> np.ndarray:
    """Share of each watermark box's area inside the matching box (0 where there is no watermark)."""
    width, height, marks = _intersection(boxes, marks)
    area = (marks[:, 2] - marks[:, 0]) * (marks[:, 3] - marks[:, 1])
    inside = np.clip(width, 0, None) * np.clip(height, 0, None)
    return np.where((marks[:, 0] >= 0) & (area > 0), inside / np.where(area > 0, area, 1), 0.0)


def watermark_summary(crops: pd.DataFrame, data_root, by: Sequence[str]) -> pd.DataFrame:
    """Per group of top crops (`hit_records` rows), how much of the planted watermark they show.

    `data_root` holds each pool's prepared dataset (`{data_root}/{pool}/manifest.parquet` with the
    watermark box per image). Columns: `by`, share_overlapping_watermark (crop box overlaps the
    watermark), share_showing_half_watermark (at least half the watermark's area inside the crop),
    top_m (crops in the group).
    """
    crops = crops.copy()
    crops["covered"] = 0.0
    for pool, part in crops.groupby("pool", sort=False):
        marks = pd.read_parquet(Path(data_root) / str(pool) / "manifest.parquet").set_index("image_id")[WATERMARK_COLUMNS]
        boxes = part[["box_x0", "box_y0", "box_x1", "box_y1"]].to_numpy()
        crops.loc[part.index, "covered"] = watermark_covered(boxes, marks.loc[part["image_id"]].to_numpy())
    crops["overlaps_watermark"] = crops["overlaps_watermark"].astype(float)
    crops["showing_half"] = (crops["covered"] >= 0.5).astype(float)
    grouped = crops.groupby(list(by), sort=True)
    return pd.DataFrame({
        "share_overlapping_watermark": grouped["overlaps_watermark"].mean(),
        "share_showing_half_watermark": grouped["showing_half"].mean(),
        "top_m": grouped.size(),
    }).reset_index()


def concept_importance(components_path, n_concepts: int) -> pd.DataFrame:
    """Each concept's share of its class's (or contrast pair's) NMF importance and its rank (1: most
    important) from a `components.npz`: columns class, [against,] concept (1-based), importance_share."""
    with np.load(components_path) as arrays:
        importance = arrays[f"importance_n{n_concepts}"]  # (K, n), most important first, NaN without concepts
        keys = {"class": arrays["classes"]}
        if "against" in arrays:
            keys["against"] = arrays["against"]
    share = importance / np.nansum(importance, axis=1, keepdims=True)
    k, n = share.shape
    frame = pd.DataFrame({name: np.repeat(values.astype(np.int64), n) for name, values in keys.items()})
    frame["concept"] = np.tile(np.arange(1, n + 1), k)
    frame["importance_share"] = share.ravel()
    return frame


def hit_tile(pools: Sequence[CropPool], pool_index: int, row: int, size: int) -> Image.Image:
    """The crop of one hit, cut from its original image and resized to size x size (RGB)."""
    return pools[pool_index].crop(row, size)


def stitch_hits(pools: Sequence[CropPool], hits: CropHits, size: int) -> Image.Image | None:
    """The prediction test's image (Sec. 4.3): the top crop of each concept, stacked in height.

    None when some concept has no admissible crop.
    """
    if (hits.pool[:, 0] < 0).any():
        return None
    return stitch_crops([hit_tile(pools, int(p), int(r), size) for p, r in zip(hits.pool[:, 0], hits.rows[:, 0])], size=size)


def concept_figure(
    pools: Sequence[CropPool],
    panels: dict[str, CropHits],
    importance: Sequence[float],
    *,
    title: str,
    tile: int = 80,
) -> Image.Image:
    """One class's concepts as the paper's Figures 5-8: per panel (e.g. crops allowed / excluding the
    class), one row per concept with its top-m crops, most similar left, cosine scores underneath."""
    from ..viz import stack_vertically, tile_grid

    images = []
    for label, hits in panels.items():
        tiles = [[hit_tile(pools, int(p), int(r), tile) if p >= 0 else None for p, r in zip(pool_row, row_row)] for pool_row, row_row in zip(hits.pool, hits.rows)]
        labels = [f"concept {i + 1}\n({share:.0%})" for i, share in enumerate(importance)]
        images.append(tile_grid(tiles, row_labels=labels, scores=hits.scores, title=f"{title} - {label}", tile=tile))
    return stack_vertically(images)
