"""Bad image data inside an ImageFolder dataset: a clear error naming the file, and nothing written.

Real ImageNet photos (../shared/data/imagenette) copied into a small ImageFolder tree, then spoilt.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conceptscope.config import resolve_config
from conceptscope.data import DatasetError, ImageDataset, PreparedDataset, prepare_dataset
from conceptscope.models import build_transform, resolve_preprocess

CLASSES = ["n01440764", "n02102040"]


@pytest.fixture
def folder(tmp_path, imagenette_root):
    """root/val/<wnid>/ with 3 real photos of each of two classes."""
    root = tmp_path / "inet"
    for wnid in CLASSES:
        (root / "val" / wnid).mkdir(parents=True)
        for src in sorted((imagenette_root / "val" / wnid).iterdir())[:3]:
            shutil.copy(src, root / "val" / wnid / src.name)
    return root


def _spec(root, **extra) -> dict:
    raw = {"kind": "imagefolder", "root": str(root), "train_dir": None, "test_dir": "val", "label_map": "imagenet", **extra}
    return resolve_config({"datasets": {"d": raw}}, base_dir=root)["datasets"]["d"]


def _fails(spec: dict, out, *fragments: str) -> str:
    with pytest.raises(DatasetError) as info:
        prepare_dataset(spec, out, "d")
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*")), "a failed preparation left files behind"
    return message


def _first(root, wnid=CLASSES[0]):
    return sorted((root / "val" / wnid).iterdir())[0]


def test_the_unspoilt_folder_prepares(folder, tmp_path):
    data = PreparedDataset(prepare_dataset(_spec(folder), tmp_path / "out", "d"))
    assert len(data.split("test")) == 6 and (data.manifest["width"] > 0).all()


def test_truncated_jpeg_is_named(folder, tmp_path):
    path = _first(folder)
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    _fails(_spec(folder), tmp_path / "out", str(path), "not a readable image")


def test_truncated_png_is_named(folder, tmp_path):
    path = _first(folder, CLASSES[1])
    png = path.with_suffix(".png")
    Image.open(path).save(png)
    path.unlink()
    content = png.read_bytes()
    png.write_bytes(content[: len(content) * 2 // 3])
    _fails(_spec(folder), tmp_path / "out", str(png), "not a readable image")


def test_a_text_file_with_an_image_suffix_is_named(folder, tmp_path):
    path = folder / "val" / CLASSES[0] / "notes.jpg"
    path.write_text("not an image\n")
    _fails(_spec(folder), tmp_path / "out", str(path), "not a readable image")


def test_an_empty_class_folder_is_named(folder, tmp_path):
    empty = folder / "val" / "n02979186"
    empty.mkdir()
    (empty / "readme.txt").write_text("the images were never copied\n")
    _fails(_spec(folder), tmp_path / "out", f"class folder {empty} has no images")


def test_a_box_file_of_other_images_is_named(folder, tmp_path):
    # boxes for 64 px Tiny ImageNet images would fit; these are beyond a photo's 500 px side
    box_file = tmp_path / "boxes.txt"
    lines = [f"{p.name}\t{p.parent.name}\t10\t10\t4000\t300" for p in sorted((folder / "val").rglob("*.JPEG"))]
    box_file.write_text("\n".join(lines) + "\n")
    _fails(_spec(folder, boxes=str(box_file)), tmp_path / "out", str(box_file), "does not fit its")


def test_a_box_file_with_missing_columns_is_named(folder, tmp_path):
    box_file = tmp_path / "boxes.txt"
    box_file.write_text(f"{_first(folder).name}\t{CLASSES[0]}\t10\t10\n")
    _fails(_spec(folder, boxes=str(box_file)), tmp_path / "out", str(box_file), "x0<TAB>y0<TAB>x1<TAB>y1")


def test_greyscale_and_cmyk_photos_become_three_channel_inputs(folder, tmp_path):
    grey, cmyk = _first(folder), _first(folder, CLASSES[1])
    original = np.asarray(Image.open(cmyk).convert("RGB"), dtype=np.float64)
    Image.open(grey).convert("L").save(grey)
    Image.open(cmyk).convert("CMYK").save(cmyk)
    assert Image.open(grey).mode == "L" and Image.open(cmyk).mode == "CMYK"
    data = PreparedDataset(prepare_dataset(_spec(folder), tmp_path / "out", "d"))
    rows = data.split("test")
    dataset = ImageDataset(data, rows, build_transform(resolve_preprocess("mobilenet_v2", {})))
    by_name = {name.split("/")[-1]: i for i, name in enumerate(rows["source"])}
    tensor, _, _ = dataset[by_name[grey.name]]
    assert tensor.shape == (3, 224, 224)
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    pixels = tensor * std + mean  # the three channels of a greyscale photo are one channel
    assert torch.allclose(pixels[0], pixels[1], atol=1e-5) and torch.allclose(pixels[1], pixels[2], atol=1e-5)
    tensor, _, _ = dataset[by_name[cmyk.name]]
    assert tensor.shape == (3, 224, 224)
    # CMYK -> RGB through JPEG's CMYK encoding keeps the photo (mean absolute error of a few levels)
    assert np.abs(data.load_image(rows.iloc[by_name[cmyk.name]]).astype(np.float64) - original).mean() < 12


def test_an_image_spoilt_after_preparation_is_named_when_read(folder, tmp_path):
    data = PreparedDataset(prepare_dataset(_spec(folder), tmp_path / "out", "d"))
    row = next(data.split("test").itertuples(index=False))
    with open(row.source, "r+b") as f:
        f.truncate(200)
    with pytest.raises(DatasetError, match=f"{row.source} \\(image_id {row.image_id}\\): not a readable image"):
        data.load_image(row)
