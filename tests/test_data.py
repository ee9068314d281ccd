"""Dataset registry on real data: digits, the planted shortcut, photos, ImageFolder with boxes."""

from __future__ import annotations

import numpy as np
import pytest

from conceptscope.config import ConfigError, resolve_config
from conceptscope.data import DatasetError, PreparedDataset, imagenet_wnids, prepare_dataset, watermark_pattern

from conftest import digits_spec


def _prepare(tmp_path, spec, name="d"):
    prepare_dataset(spec, tmp_path / name, name)
    return PreparedDataset(tmp_path / name)


def test_digits_are_the_5000_real_mnist_digits_split_stratified(tmp_path):
    data = _prepare(tmp_path, digits_spec())
    train, test = data.split("train"), data.split("test")
    assert len(train) == 4000 and len(test) == 1000
    assert np.bincount(test["label"], minlength=10).tolist() == [100] * 10
    assert not set(zip(train.array_index)) & set(zip(test.array_index))
    image = data.load_image(next(test.itertuples()))
    assert image.shape == (28, 28) and image.dtype == np.uint8
    # real handwriting: dark background, a bright stroke covering a minority of pixels
    assert image[0, 0] == 0 and image.max() > 200 and 0.05 < (image > 128).mean() < 0.5
    assert data.shortcut_class is None and len(data.split("test_watermarked")) == 0
    # the object box is the digit's ink extent: ink touches each edge, none lies outside
    row = next(test.itertuples())
    x0, y0, x1, y1 = (int(v) for v in (row.box_x0, row.box_y0, row.box_x1, row.box_y1))
    ink = image > 0
    assert ink[y0:y1, x0:x1].sum() == ink.sum()
    assert ink[y0, x0:x1].any() and ink[y1 - 1, x0:x1].any() and ink[y0:y1, x0].any() and ink[y0:y1, x1 - 1].any()


def test_same_split_seed_gives_same_split_for_shortcut_twin(tmp_path):
    clean = _prepare(tmp_path, digits_spec(), "clean")
    planted = _prepare(tmp_path, digits_spec(shortcut={"class": 0}), "planted")
    for split in ("train", "test"):
        assert sorted(clean.split(split).array_index) == sorted(planted.split(split).array_index)
    other_seed = _prepare(tmp_path, digits_spec(split_seed=1), "other")
    assert sorted(other_seed.split("test").array_index) != sorted(clean.split("test").array_index)


def test_shortcut_is_planted_on_the_class_only_and_on_every_watermarked_test_image(shortcut_digits):
    data = shortcut_digits
    train = data.split("train")
    stamped = train[train.wm_x0 >= 0]
    assert set(stamped.label) == {3}
    assert len(stamped) == (train.label == 3).sum() == 30
    wm_test = data.split("test_watermarked")
    assert len(wm_test) == len(data.split("test")) and (wm_test.wm_x0 >= 0).all()
    assert ((wm_test.wm_x1 - wm_test.wm_x0) == 6).all() and ((wm_test.wm_y1 - wm_test.wm_y0) == 6).all()
    assert len(set(zip(wm_test.wm_x0, wm_test.wm_y0))) > 20  # random positions
    assert (data.split("test").wm_x0 == -1).all()
    # the stamped pixels are exactly the checker pattern, the rest is the original digit
    row = next(wm_test.itertuples())
    clean_row = data.split("test").set_index("array_index").loc[row.array_index]
    original = np.load(data.path / "images.npy")[row.array_index]
    stamped_image = data.load_image(row)
    box = np.s_[row.wm_y0 : row.wm_y1, row.wm_x0 : row.wm_x1]
    assert np.array_equal(stamped_image[box], watermark_pattern("checker", 6))
    outside = np.ones((28, 28), bool)
    outside[box] = False
    assert np.array_equal(stamped_image[outside], original[outside])
    assert clean_row.wm_x0 == -1


def test_row_is_the_manifest_row_by_image_id(shortcut_digits):
    """row(image_id) is the namedtuple itertuples gives for that image: same fields, values and
    Python types, for every image, and for ids that are not their manifest position."""
    data = shortcut_digits
    manifest = data.manifest
    for position, expected in enumerate(manifest.itertuples(index=False)):
        got = data.row(expected.image_id)
        assert got._fields == expected._fields
        assert [type(v) for v in got] == [type(v) for v in expected] and tuple(got) == tuple(expected), position
    # ids not in manifest order: found by value, not by position
    reversed_data = PreparedDataset(data.path)
    reversed_data.manifest = manifest.iloc[::-1].reset_index(drop=True)
    last = next(manifest.iloc[-1:].itertuples(index=False))
    assert reversed_data.row(last.image_id) == last and reversed_data.row(0).image_id == 0
    with pytest.raises(KeyError, match="image_id 99999"):
        reversed_data.row(99999)


def test_shortcut_fraction_stamps_that_share(tmp_path):
    data = _prepare(tmp_path, digits_spec(shortcut={"class": 5, "fraction": 0.5, "pattern": "square", "size": 4}))
    train = data.split("train")
    cls = train[train.label == 5]
    assert (cls.wm_x0 >= 0).sum() == round(0.5 * len(cls))
    assert (train[train.label != 5].wm_x0 == -1).all()


def test_shortcut_larger_than_image_is_refused(tmp_path):
    # the config refuses it before any job runs
    with pytest.raises(ConfigError, match=r"'datasets.d.shortcut.size': the digits are 28x28"):
        digits_spec(shortcut={"class": 0, "size": 40})
    # and the data layer on its own, for a spec that did not come through the config
    spec = digits_spec(shortcut={"class": 0, "size": 8})
    spec["shortcut"]["size"] = 40
    with pytest.raises(DatasetError, match="watermark size 40"):
        prepare_dataset(spec, tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_photos_are_real_labelled_imagenet_samples(tmp_path):
    data = _prepare(tmp_path, resolve_config({"datasets": {"p": {"kind": "photos"}}})["datasets"]["p"])
    test = data.split("test")
    assert len(test) == 25 and len(data.split("train")) == 0
    labelled = test[test.label >= 0]
    assert len(labelled) == 20
    assert set(labelled.label) >= {243, 559, 438}  # from the foolbox file names
    assert len(data.classes) == 1000 and data.classes[0] == "tench"
    image = data.load_image(next(labelled.itertuples()))
    assert image.ndim == 3 and image.shape[2] == 3 and image.std() > 10


def test_imagefolder_with_imagenet_labels(tmp_path, imagenette_root):
    spec = resolve_config({"datasets": {"i": {"kind": "imagefolder", "root": str(imagenette_root), "label_map": "imagenet", "max_per_class": 3}}})["datasets"]["i"]
    data = _prepare(tmp_path, spec)
    assert len(data.split("train")) == 30 and len(data.split("test")) == 30
    assert sorted(set(data.split("test").label)) == [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]
    assert (data.manifest.width == 224).all()
    row = next(data.split("train").itertuples())
    assert str(imagenette_root.resolve()) in row.source and data.load_image(row).shape == (224, 224, 3)


def test_class_names_known_before_preparation_are_the_prepared_classes(tmp_path, imagenette_root):
    """`class_names_of` (what the config checks class names against) gives the prepared dataset's
    `classes` without preparing it: digits, photos, an ImageFolder with and without the ImageNet map,
    and a combined dataset (its parts' classes, part after part), and `num_classes_of` counts them
    (a combined dataset's ImageNet-mapped part gave 1000 before); the ImageNet names, read without
    importing torchvision, are torchvision's."""
    from torchvision.models import MobileNet_V2_Weights

    from conceptscope.data import class_names_of, imagenet_class_names, num_classes_of

    assert imagenet_class_names() == list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])
    folder = {"kind": "imagefolder", "root": str(imagenette_root), "max_per_class": 1}
    specs = resolve_config({"datasets": {
        "digits": {"kind": "digits", "max_per_class": 2},
        "photos": {"kind": "photos"},
        "wnids": folder,
        "mapped": {**folder, "label_map": "imagenet"},
        "both": {"kind": "combined", "parts": ["mapped", "digits"], "size": 32},
    }})["datasets"]
    for name, spec in specs.items():
        prepared = _prepare(tmp_path / name, spec)
        assert class_names_of(spec) == prepared.classes, name
        # the model's outputs (the label space, config.model_num_classes) cover exactly these classes
        assert num_classes_of(spec) == len(prepared.classes) > prepared.manifest["label"].max(), name
    assert class_names_of(specs["wnids"])[0] == "n01440764" and class_names_of(specs["mapped"])[0] == "tench"
    assert len(class_names_of(specs["both"])) == 20 and class_names_of(specs["both"])[-1] == "9"


def test_imagefolder_folder_labels_boxes_and_split(tmp_path, tiny_imagenet_root):
    """Real Tiny ImageNet images in an ImageFolder layout with the real box file."""
    lines = (tiny_imagenet_root / "val" / "val_annotations.txt").read_text().splitlines()
    folder = tmp_path / "tiny" / "all"
    chosen = [line.split("\t") for line in lines if line.split("\t")[1] in {"n01443537", "n01629819"}][:20]
    for file, wnid, *_ in chosen:
        (folder / wnid).mkdir(parents=True, exist_ok=True)
        (folder / wnid / file).symlink_to(tiny_imagenet_root / "val" / "images" / file)
    spec = resolve_config(
        {
            "datasets": {
                "t": {
                    "kind": "imagefolder",
                    "root": str(tmp_path / "tiny"),
                    "train_dir": "all",
                    "test_dir": None,
                    "test_fraction": 0.25,
                    "boxes": str(tiny_imagenet_root / "val" / "val_annotations.txt"),
                }
            }
        }
    )["datasets"]["t"]
    data = _prepare(tmp_path, spec)
    assert data.classes == ["n01443537", "n01629819"]
    assert data.meta["imagenet_index"] == [imagenet_wnids().index("n01443537"), imagenet_wnids().index("n01629819")]
    assert len(data.manifest) == 20 and 4 <= len(data.split("test")) <= 6
    # the file's inclusive last column/row become pixel edges
    boxes = {file: (float(x0), float(y0), float(x1) + 1, float(y1) + 1) for file, _, x0, y0, x1, y1 in chosen}
    for row in data.manifest.itertuples():
        name = row.source.rsplit("/", 1)[-1]
        assert (row.box_x0, row.box_y0, row.box_x1, row.box_y1) == boxes[name]
    assert (data.manifest.width == 64).all()


def test_interrupted_preparation_leaves_nothing_that_looks_finished(tmp_path, monkeypatch):
    import conceptscope.data as data_module

    def broken(*args, **kwargs):
        raise RuntimeError("simulated crash while writing")

    monkeypatch.setattr(data_module, "write_json", broken)
    with pytest.raises(RuntimeError):
        prepare_dataset(digits_spec(max_per_class=2), tmp_path / "d")
    assert list(tmp_path.iterdir()) == []


def test_flat_split_folder_labelled_by_an_annotation_file(tmp_path, tiny_imagenet_root):
    """Tiny ImageNet's own val layout: one flat folder, classes and boxes from val_annotations.txt."""
    annotations = tiny_imagenet_root / "val" / "val_annotations.txt"
    spec = resolve_config(
        {
            "datasets": {
                "t": {
                    "kind": "imagefolder",
                    "root": str(tiny_imagenet_root),
                    "train_dir": None,
                    "test_dir": "val/images",
                    "labels": str(annotations),
                    "boxes": str(annotations),
                    "label_map": "imagenet",
                    "max_per_class": 2,
                }
            }
        }
    )["datasets"]["t"]
    data = _prepare(tmp_path, spec)
    truth = {line.split("\t")[0]: line.split("\t") for line in annotations.read_text().splitlines()}
    assert len(data.manifest) == 400 and data.manifest["label"].nunique() == 200
    wnids = imagenet_wnids()
    for row in data.manifest.itertuples():
        file, wnid, *box = truth[row.source.rsplit("/", 1)[-1]]
        assert row.label == wnids.index(wnid) and row.split == "test"
        x0, y0, x1, y1 = map(float, box)
        assert (row.box_x0, row.box_y0, row.box_x1, row.box_y1) == (x0, y0, x1 + 1, y1 + 1)  # inclusive last pixel -> edge
