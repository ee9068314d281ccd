"""Dataset registry: prepare real image datasets as a manifest, and read them back.

A prepared dataset is a directory with
  manifest.parquet   one row per (image, split): image_id, split, label, source, array_index,
                     width, height, object box (box_*), watermark box (wm_*; -1 where none)
  meta.json          kind, class names, ImageNet indices where known, shortcut spec, counts
  images.npy         (N, H, W) or (N, H, W, 3) uint8 for datasets embedded as one array (digits)
  images/            image files for embedded datasets made of files (photos)
ImageFolder datasets reference the user's files by absolute path and copy nothing.

Watermarks (the planted shortcut) are not baked into pixels on disk: the manifest records the box
per image and `PreparedDataset.load_image` stamps the fixed pattern when reading, so a shortcut
variant of ImageNet costs a manifest, not a copy of 1.28M images.
"""

from __future__ import annotations

import json
from collections import namedtuple
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from .data_sources import (  # noqa: F401 (re-exported: the dataset API is conceptscope.data)
    BOX_COLUMNS,
    DATASET_KINDS,
    DatasetError,
    _limit_per_class,
    class_names_of,
    imagenet_class_names,
    imagenet_wnids,
    num_classes_of,
)
from .utils import atomic_path, write_json

SPLITS = ("train", "test", "test_watermarked")


def split_names(split: str | Sequence[str]) -> list[str]:
    """The splits a config's `split` value names: one split, a list of them, or `all` (train + clean test)."""
    names = [split] if isinstance(split, str) else list(split)
    out: list[str] = []
    for name in names:
        for part in (["train", "test"] if name == "all" else [name]):
            if part not in SPLITS:
                raise DatasetError(f"unknown split {part!r}; expected one of {SPLITS} or 'all'")
            if part not in out:
                out.append(part)
    return out
WATERMARK_COLUMNS = ["wm_x0", "wm_y0", "wm_x1", "wm_y1"]


def _checker(size: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return np.where((yy + xx) % 2 == 0, 255, 0).astype(np.uint8)


def _square(size: int) -> np.ndarray:
    pattern = np.full((size, size), 255, np.uint8)
    pattern[[0, -1], :] = 0
    pattern[:, [0, -1]] = 0
    return pattern


def _cross(size: int) -> np.ndarray:
    pattern = np.zeros((size, size), np.uint8)
    idx = np.arange(size)
    pattern[idx, idx] = 255
    pattern[idx, size - 1 - idx] = 255
    return pattern


WATERMARK_PATTERNS: dict[str, Callable[[int], np.ndarray]] = {
    "checker": _checker,
    "square": _square,
    "cross": _cross,
}


def watermark_pattern(pattern: str, size: int) -> np.ndarray:
    """The (size, size) uint8 watermark for a pattern name."""
    if pattern not in WATERMARK_PATTERNS:
        raise DatasetError(f"unknown watermark pattern {pattern!r}; expected one of {sorted(WATERMARK_PATTERNS)}")
    return WATERMARK_PATTERNS[pattern](size)


def stamp_watermark(image: np.ndarray, box: Sequence[int], pattern: np.ndarray) -> np.ndarray:
    """Return a copy of `image` (H, W) or (H, W, C) uint8 with `pattern` pasted at box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    out = image.copy()
    patch = pattern[: y1 - y0, : x1 - x0]
    if out.ndim == 3:
        patch = patch[:, :, None]
    out[y0:y1, x0:x1] = patch
    return out


# --------------------------------------------------------------------------------------------
# Sources: each returns the raw records of one dataset kind


def _split(records: pd.DataFrame, test_fraction: float, seed: int) -> pd.Series:
    """Stratified train/test split: per class, a seeded permutation, the first share is test."""
    rng = np.random.default_rng(seed)
    split = pd.Series("train", index=records.index, dtype=object)
    for _, idx in records.groupby("label", sort=True).groups.items():
        idx = np.asarray(sorted(idx))
        n_test = int(round(test_fraction * len(idx)))
        split.loc[rng.permutation(idx)[:n_test]] = "test"
    return split


def _random_boxes(rng: np.random.Generator, widths, heights, size: int) -> np.ndarray:
    widths = np.asarray(widths)
    heights = np.asarray(heights)
    if np.any(widths < size) or np.any(heights < size):
        raise DatasetError(f"watermark size {size} is larger than some images ({int(widths.min())}x{int(heights.min())})")
    x0 = rng.integers(0, widths - size + 1)
    y0 = rng.integers(0, heights - size + 1)
    return np.stack([x0, y0, x0 + size, y0 + size], axis=1)


def _plant_shortcut(records: pd.DataFrame, shortcut: dict) -> pd.DataFrame:
    """Mark watermark boxes: `fraction` of the shortcut class's train images, and a stamped copy of test."""
    rng = np.random.default_rng(shortcut["seed"])
    size = shortcut["size"]
    for col in WATERMARK_COLUMNS:
        records[col] = -1
    train_idx = records.index[(records["split"] == "train") & (records["label"] == shortcut["class"])]
    n_stamp = int(round(shortcut["fraction"] * len(train_idx)))
    stamped = np.sort(rng.permutation(np.asarray(train_idx))[:n_stamp])
    if n_stamp:
        rows = records.loc[stamped]
        records.loc[stamped, WATERMARK_COLUMNS] = _random_boxes(rng, rows["width"], rows["height"], size)
    test = records[records["split"] == "test"].copy()
    test["split"] = "test_watermarked"
    test[WATERMARK_COLUMNS] = _random_boxes(rng, test["width"], test["height"], size)
    return pd.concat([records, test], ignore_index=True)


def _checked_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file decoded in full (JPEGs at a reduced scale: fast, and still to
    the last byte), so a truncated or non-image file fails here with its name, not later in a job."""
    try:
        with Image.open(path) as im:
            size = im.size
            if im.format == "JPEG":
                im.draft(im.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
            im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DatasetError(f"{path}: not a readable image ({error}); replace or remove the file") from None
    return size


def _fill_sizes(records: pd.DataFrame, base: Path) -> None:
    """Width/height of file-backed images; every file is decoded once to catch unreadable ones."""
    missing = records.index[records["width"] < 0]
    for i in tqdm(missing, desc="checking images", leave=False, disable=len(missing) < 1000):
        source = Path(records.at[i, "source"])
        records.at[i, "width"], records.at[i, "height"] = _checked_size(source if source.is_absolute() else base / source)


def _check_boxes(records: pd.DataFrame, box_file: str) -> None:
    """Object boxes must lie inside their images: a box file of other images is an error, not a silent misfit."""
    boxed = records.dropna(subset=list(BOX_COLUMNS))
    bad = boxed[(boxed["box_x0"] < 0) | (boxed["box_y0"] < 0) | (boxed["box_x1"] > boxed["width"]) | (boxed["box_y1"] > boxed["height"])
                | (boxed["box_x0"] >= boxed["box_x1"]) | (boxed["box_y0"] >= boxed["box_y1"])]
    if len(bad):
        row = bad.iloc[0]
        box = tuple(int(v) for v in row[list(BOX_COLUMNS)])
        raise DatasetError(f"{box_file}: the box of {Path(row['source']).name} {box} (pixel edges) does not fit its "
                           f"{row['width']}x{row['height']} image ({len(bad)} boxes like it); is it the box file of these images?")


def prepare_dataset(spec: dict, out_dir: str | Path, name: str = "") -> Path:
    """Prepare a dataset spec (one `datasets.<name>` config entry, defaults filled) into `out_dir`.

    Written atomically: `out_dir` appears only once manifest, meta and images are complete.
    """
    kind = spec["kind"]
    if kind not in DATASET_KINDS:
        raise DatasetError(f"unknown dataset kind {kind!r}; expected one of {sorted(DATASET_KINDS)}")
    raw = DATASET_KINDS[kind](spec)
    records = raw.records.copy()
    if records["split"].isna().any():
        records["split"] = _split(records, spec.get("test_fraction", 0.2), spec.get("split_seed", 0))
    records = _limit_per_class(records, spec.get("max_per_class")).reset_index(drop=True)
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        if raw.array is not None:
            np.save(tmp / "images.npy", raw.array)
        for rel, content in (raw.files or {}).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(content)
        _fill_sizes(records, tmp)
        if spec.get("boxes"):
            _check_boxes(records, spec["boxes"])
        shortcut = spec.get("shortcut")
        if shortcut:
            if not (records["split"] == "train").any():
                raise DatasetError(f"dataset {name!r}: a shortcut needs training images, and {kind!r} has none")
            records = _plant_shortcut(records, shortcut)
        else:
            for col in WATERMARK_COLUMNS:
                records[col] = -1
        order = {s: i for i, s in enumerate(SPLITS)}
        records = records.sort_values(["split", "label", "source", "array_index"], key=lambda c: c.map(order) if c.name == "split" else c, kind="stable")
        records.insert(0, "image_id", np.arange(len(records), dtype=np.int64))
        records = records.astype({"label": "int64", "array_index": "int64", "width": "int64", "height": "int64", **{c: "int64" for c in WATERMARK_COLUMNS}})
        records.to_parquet(tmp / "manifest.parquet", index=False)
        write_json(
            tmp / "meta.json",
            {
                "name": name,
                "kind": kind,
                "classes": raw.classes,
                "imagenet_index": raw.imagenet_index,
                "shortcut": shortcut,
                "counts": {s: int((records["split"] == s).sum()) for s in SPLITS},
                "spec": spec,
            },
        )
    return out_dir


# --------------------------------------------------------------------------------------------
# Reading


class PreparedDataset:
    """Read access to a prepared dataset directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest = self.path / "manifest.parquet"
        if not manifest.is_file():
            raise DatasetError(f"{self.path} is not a prepared dataset (no manifest.parquet)")
        self.manifest = pd.read_parquet(manifest)
        self.meta = json.loads((self.path / "meta.json").read_text())
        self._array = None
        self._columns = None  # row(): the manifest's columns as arrays, read on first use
        shortcut = self.meta.get("shortcut")
        self._pattern = watermark_pattern(shortcut["pattern"], shortcut["size"]) if shortcut else None

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    @property
    def shortcut_class(self) -> int | None:
        shortcut = self.meta.get("shortcut")
        return None if not shortcut else int(shortcut["class"])

    def split(self, split: str | Sequence[str]) -> pd.DataFrame:
        """Manifest rows of one split, of several (a list) or of `all` (train + test), in manifest order;
        an empty frame if the dataset lacks them."""
        if isinstance(split, str) and split in SPLITS:
            return self.manifest[self.manifest["split"] == split]
        return self.manifest[self.manifest["split"].isin(split_names(split))]

    def row(self, image_id: int):
        """The manifest row of one image id: the namedtuple `manifest.itertuples(index=False)` gives.

        Built from the manifest's columns as NumPy arrays, read once: a figure or a crop search asks
        for thousands of rows, and slicing the frame for each costs milliseconds."""
        if self._columns is None:
            self._row_type = namedtuple("Pandas", self.manifest.columns, rename=True)
            self._columns = [self.manifest[name].to_numpy() for name in self.manifest.columns]
        ids = self._columns[self.manifest.columns.get_loc("image_id")]
        position = int(image_id)
        if not (0 <= position < len(ids) and ids[position] == position):  # ids are 0..N-1 in manifest order
            found = np.flatnonzero(ids == image_id)
            if not len(found):
                raise KeyError(f"image_id {image_id} is not in dataset {self.path}")
            position = int(found[0])
        values = (column[position] for column in self._columns)
        return self._row_type(*(value.item() if isinstance(value, np.generic) else value for value in values))

    def _images_array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path / "images.npy", mmap_mode="r")
        return self._array

    def load_image(self, row) -> np.ndarray:
        """Pixels of one manifest row as uint8 (H, W) or (H, W, 3), watermark stamped where recorded."""
        if row.array_index >= 0:
            image = np.asarray(self._images_array()[row.array_index])
        else:
            source = Path(row.source)
            path = source if source.is_absolute() else self.path / source
            try:
                with Image.open(path) as im:
                    image = np.asarray(im.convert("L" if im.mode in ("L", "1", "I;16", "I") else "RGB"))
            except (OSError, SyntaxError, ValueError) as error:  # changed since the dataset was prepared
                raise DatasetError(f"{path} (image_id {row.image_id}): not a readable image ({error})") from None
        if row.wm_x0 >= 0:
            image = stamp_watermark(image, (row.wm_x0, row.wm_y0, row.wm_x1, row.wm_y1), self._pattern)
        return image

    def torch_dataset(self, split: str, transform: Callable | None = None) -> "ImageDataset":
        return ImageDataset(self, self.split(split), transform)


class ImageDataset:
    """A torch-style dataset over manifest rows: returns (transform(PIL image), label, image_id)."""

    def __init__(self, dataset: PreparedDataset, rows: pd.DataFrame, transform: Callable | None = None):
        self.dataset = dataset
        self.rows = rows.reset_index(drop=True)
        self._tuples = list(self.rows.itertuples(index=False))
        self.transform = transform

    def __len__(self) -> int:
        return len(self._tuples)

    def __getitem__(self, i: int):
        row = self._tuples[i]
        image = Image.fromarray(self.dataset.load_image(row))
        if self.transform is not None:
            image = self.transform(image)
        return image, int(row.label), int(row.image_id)
