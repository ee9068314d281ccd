"""Activation and crop-vector stores on a real pretrained model and real photos / digits."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from PIL import Image

from conceptscope.activations import LayerRecorder, extract_activations, select_images
from conceptscope.config import resolve_config
from conceptscope.crops import cell_bins, cell_boxes, extract_crop_vectors, view_box
from conceptscope.data import ImageDataset, PreparedDataset, prepare_dataset
from conceptscope.models import build_model, build_transform, pretrained_model, resolve_preprocess
from conceptscope.store import CropStore, RowStore, RowStoreWriter, StoreError, open_activations

LAYERS = ["features.14", "features.18"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    out = tmp_path_factory.mktemp("photos") / "photos"
    prepare_dataset(resolve_config({"datasets": {"p": {"kind": "photos"}}})["datasets"]["p"], out, "photos")
    return PreparedDataset(out)


@pytest.fixture(scope="module")
def mobilenet():
    model = pretrained_model("mobilenet_v2")
    return model.eval(), resolve_preprocess("mobilenet_v2", {})


def _direct(model, data, rows, transform, layer, batch_size=None):
    """The layer's output on `rows`, by the model's forward pass over batches of `batch_size` images
    (all at once by default). The same batches give the same bits; other batch sizes can round
    differently (CPU kernels are chosen by batch shape and thread count)."""
    images = torch.stack([transform(Image.fromarray(data.load_image(r))) for r in rows.itertuples()])
    outputs = []
    for batch in images.split(batch_size or len(images)):
        with torch.no_grad(), LayerRecorder(model, [layer]) as recorder:
            model(batch)
        outputs.append(recorder.outputs[layer].numpy())
    return np.concatenate(outputs)


def test_stored_activations_equal_a_direct_forward_pass(tmp_path, photos, mobilenet):
    model, preprocess = mobilenet
    transform = build_transform(preprocess)
    rows = select_images(photos.split("test"))
    paths = extract_activations(model, photos, rows, LAYERS, transform, tmp_path / "acts", chunk_images=8, batch_size=5, progress=False, attrs={"dataset": "photos", "model": "mnv2", "preprocess": preprocess})
    for layer in LAYERS:
        store = RowStore(paths[layer])
        acts = store["activations"]
        assert acts.shape[0] == 25 and acts.chunks[0] == 8
        np.testing.assert_array_equal(acts[:], _direct(model, photos, rows, transform, layer, batch_size=5))
        np.testing.assert_allclose(acts[:], _direct(model, photos, rows, transform, layer), rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(store["image_id"][:], rows["image_id"].to_numpy())
        attrs = store.attrs
        assert attrs["layer"] == layer and attrs["dataset"] == "photos" and attrs["model"] == "mnv2"
        assert attrs["preprocess"]["input_size"] == 224 and "torch" in attrs["versions"] and "zarr" in attrs["versions"]
        assert attrs["complete"] is True
        assert type(acts.compressors[0]).__name__ == "ZstdCodec"
    assert tuple(RowStore(paths["features.18"])["activations"].shape[1:]) == (1280, 7, 7)


def test_recorded_output_is_not_changed_by_a_later_in_place_op(photos, mobilenet):
    """features.1.conv.0.1 is a BatchNorm whose output the next ReLU6(inplace=True) overwrites."""
    model, preprocess = mobilenet
    rows = select_images(photos.split("test")).head(2)
    recorded = _direct(model, photos, rows, build_transform(preprocess), "features.1.conv.0.1")
    batch = torch.stack([build_transform(preprocess)(Image.fromarray(photos.load_image(r))) for r in rows.itertuples()])
    with torch.no_grad():
        stem = model.features[1].conv[0]
        expected = stem[1](stem[0](model.features[0](batch)))  # conv, BatchNorm: before the ReLU6
    assert expected.min() < 0
    np.testing.assert_allclose(recorded, expected.numpy(), atol=1e-5)


def test_nan_activations_and_float16_overflow_are_refused_and_nothing_is_stored(tmp_path, photos, mobilenet):
    model, preprocess = mobilenet
    rows = select_images(photos.split("test")).head(4)
    transform = build_transform(preprocess)
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.features[18][0].weight[7, 0, 0, 0] = float("nan")  # channel 7 of the last conv
    first_batch = rows.image_id.tolist()[:2]  # the run stops at the first batch that has them
    with pytest.raises(ValueError, match=re.escape(f"layer 'features.18' gives NaN or inf activations for image ids {first_batch}")):
        extract_activations(broken, photos, rows, ["features.18"], transform, tmp_path / "nan", batch_size=2, progress=False)
    loud = copy.deepcopy(model)
    with torch.no_grad():
        loud.features[17].conv[2].weight *= 1e6  # block 17's projection (no ReLU after it): finite in float32, not in float16
    with pytest.raises(ValueError, match="beyond float16"):
        extract_activations(loud, photos, rows, ["features.17"], transform, tmp_path / "f16", dtype="float16", progress=False)
    assert not (tmp_path / "nan").exists() and not (tmp_path / "f16").exists()


def test_float16_store_and_dask_reader(tmp_path, photos, mobilenet):
    model, preprocess = mobilenet
    transform = build_transform(preprocess)
    rows = select_images(photos.split("test")).head(6)
    path = extract_activations(model, photos, rows, ["features.18"], transform, tmp_path / "acts", dtype="float16", chunk_images=4, progress=False)["features.18"]
    store = RowStore(path)
    assert store["activations"].dtype == np.float16
    lazy = store.dask("activations")
    assert lazy.chunks[0] == (4, 2)
    direct = _direct(model, photos, rows, transform, "features.18")
    np.testing.assert_array_equal(lazy.compute(), direct.astype(np.float16))
    np.testing.assert_allclose(float(lazy.mean(dtype="float32").compute()), direct.mean(), rtol=1e-3)  # float16 sums overflow: reduce in float32


def test_open_by_dataset_model_layer(tmp_path, shortcut_digits):
    model = build_model("vgg_small", 10, 1, seed=0).eval()
    rows = select_images(shortcut_digits.split("test"), per_class=2)
    extract_activations(model, shortcut_digits, rows, ["features.3"], build_transform(resolve_preprocess("vgg_small", {})), tmp_path / "activations" / "digits" / "vgg", progress=False)
    store = open_activations(tmp_path, "digits", "vgg", "features.3")
    assert store.activations.shape == (20, 128, 4, 4) and len(store) == 20
    with pytest.raises(StoreError, match="no store"):
        open_activations(tmp_path, "digits", "vgg", "features.4")


def test_selection_per_class_by_label_and_by_prediction(shortcut_digits):
    test = shortcut_digits.split("test")
    by_label = select_images(test, per_class=3)
    assert len(by_label) == 30 and (by_label.groupby("group").size() == 3).all()
    assert (by_label["group"] == by_label["label"]).all()
    preds = test[["image_id"]].assign(pred=np.where(test["label"].to_numpy() < 5, 7, 1))
    by_pred = select_images(test, per_class=4, by="prediction", predictions=preds)
    assert sorted(by_pred["group"].unique()) == [1, 7] and len(by_pred) == 8
    assert set(by_pred[by_pred.group == 7].label) <= {0, 1, 2, 3, 4}
    with pytest.raises(ValueError, match="no prediction"):
        select_images(test, by="prediction", predictions=preds.head(3))


def test_selection_per_class_is_a_seeded_sample_not_the_first_images(shortcut_digits):
    # ids run by split then label: the first images predicted as a class would hold every false
    # positive of the lower-numbered classes and none of the higher ones
    test = shortcut_digits.split("test")
    preds = test[["image_id"]].assign(pred=np.where(test["label"].to_numpy() < 5, 7, 1))
    picked = select_images(test, per_class=10, by="prediction", predictions=preds, seed=0)
    as_7 = picked[picked.group == 7]
    assert len(as_7) == 10 and as_7["label"].nunique() >= 3  # the first 10 would all be label 0
    assert picked.equals(select_images(test, per_class=10, by="prediction", predictions=preds, seed=0))
    assert not picked.equals(select_images(test, per_class=10, by="prediction", predictions=preds, seed=1))
    assert picked["image_id"].is_monotonic_increasing  # manifest order kept
    # nested: a smaller cap takes a subset of a larger one's sample with the same seed
    small = select_images(test, per_class=4, by="prediction", predictions=preds, seed=0)
    assert set(small.image_id) <= set(picked.image_id)
    assert len(select_images(test, by="prediction", predictions=preds)) == len(test)  # no cap: all


def test_split_lists_and_all(shortcut_digits):
    from conceptscope.data import DatasetError, split_names

    assert split_names("all") == ["train", "test"] and split_names(["train", "test_watermarked"]) == ["train", "test_watermarked"]
    assert split_names(["all", "test", "test_watermarked"]) == ["train", "test", "test_watermarked"]
    both = shortcut_digits.split(["train", "test_watermarked"])
    assert set(both["split"]) == {"train", "test_watermarked"}
    assert len(both) == len(shortcut_digits.split("train")) + len(shortcut_digits.split("test_watermarked"))
    assert both["image_id"].is_monotonic_increasing
    with pytest.raises(DatasetError, match="unknown split 'val'"):
        shortcut_digits.split(["train", "val"])


def _cell_means_by_loops(acts: np.ndarray, grid: int) -> np.ndarray:
    n, c, h, w = acts.shape
    out = []
    for y0, y1 in cell_bins(h, grid):
        for x0, x1 in cell_bins(w, grid):
            out.append(acts[:, :, y0:y1, x0:x1].mean(axis=(2, 3)))
    return np.stack(out, axis=1)  # (N, g*g, C)


@pytest.mark.parametrize("grids", [[3], [2, 3, 7]])
def test_cells_vectors_equal_the_cell_means(tmp_path, photos, mobilenet, grids):
    model, preprocess = mobilenet
    rows = select_images(photos.split("test")).head(7)
    path = extract_crop_vectors(model, photos, rows, ["features.18"], preprocess, tmp_path / "crops", mode="cells", grids=grids, chunk_rows=10, batch_size=3, progress=False)["features.18"]
    store = CropStore(path)
    per_image = sum(g * g for g in grids)
    assert store.vectors.shape == (7 * per_image, 1280)
    acts = _direct(model, photos, rows, build_transform(preprocess), "features.18")
    expected = np.concatenate([_cell_means_by_loops(acts, g) for g in grids], axis=1).reshape(-1, 1280)
    np.testing.assert_allclose(store.vectors[:], expected, rtol=1e-5, atol=1e-5)  # float32 sums in another order: 2e-6 seen
    np.testing.assert_array_equal(store.image_ids, np.repeat(rows["image_id"].to_numpy(), per_image))
    grid_col = store["grid"][:].reshape(7, per_image)[0]
    assert grid_col.tolist() == sum(([g] * g * g for g in grids), [])
    # the 3x3 cells of a 7x7 map cover the model's view of the image, row-major
    boxes = store["box"][:].reshape(7, per_image, 4)[0]
    first = rows.iloc[0]
    view = view_box(first.width, first.height, preprocess)
    offset = grids.index(3) and sum(g * g for g in grids[: grids.index(3)])
    grid3 = boxes[offset : offset + 9]
    assert grid3[0, 0] == pytest.approx(view[0]) and grid3[0, 1] == pytest.approx(view[1])
    assert grid3[8, 2] == pytest.approx(view[2]) and grid3[8, 3] == pytest.approx(view[3])
    assert (grid3[1:3, 0] > grid3[0:2, 0]).all() and (grid3[3, 1] > grid3[0, 1])


def test_cells_on_maps_smaller_than_the_grid(tmp_path, shortcut_digits):
    model = build_model("vgg_small", 10, 1, seed=0).eval()
    rows = select_images(shortcut_digits.split("test"), per_class=1)
    preprocess = resolve_preprocess("vgg_small", {})
    path = extract_crop_vectors(model, shortcut_digits, rows, ["features.7"], preprocess, tmp_path / "c", mode="cells", grids=[3], progress=False)["features.7"]
    vectors = CropStore(path).vectors[:].reshape(10, 9, 512)
    # a 1x1 map: every cell is the whole map
    np.testing.assert_allclose(vectors, np.repeat(vectors[:, :1], 9, axis=1))


def test_crops_mode_passes_each_resized_crop_through_the_model(tmp_path, photos, mobilenet):
    model, preprocess = mobilenet
    rows = select_images(photos.split("test")).head(2)
    path = extract_crop_vectors(model, photos, rows, ["features.18"], preprocess, tmp_path / "crops", mode="crops", grids=[3], batch_size=1, progress=False)["features.18"]
    store = CropStore(path)
    assert store.vectors.shape == (18, 1280)
    row = rows.iloc[1]
    image = Image.fromarray(photos.load_image(next(rows.iloc[1:2].itertuples())))
    view = view_box(image.width, image.height, preprocess)
    box = cell_boxes(view, 3)[5]
    np.testing.assert_allclose(store["box"][9 + 5], box)
    crop = image.crop(tuple(int(round(v)) for v in box)).resize((224, 224), Image.BILINEAR)
    tensor = build_transform({**preprocess, "resize": None, "input_size": None})(crop)
    with torch.no_grad(), LayerRecorder(model, ["features.18"]) as recorder:
        model(tensor[None])
    np.testing.assert_allclose(store.vectors[9 + 5], recorder.outputs["features.18"].mean(dim=(2, 3))[0].numpy(), rtol=1e-4, atol=1e-5)
    assert store["image_id"][9] == row.image_id


def test_masked_mode_keeps_each_crop_in_place_and_at_its_scale(tmp_path, shortcut_digits):
    model = build_model("resnet_small", 10, 1, seed=0).eval()
    rows = select_images(shortcut_digits.split("test_watermarked"), per_class=1).head(3)
    preprocess = resolve_preprocess("resnet_small", {})
    paths = extract_crop_vectors(model, shortcut_digits, rows, ["layer3"], preprocess, tmp_path / "m", mode="masked", grids=[3], batch_size=2, progress=False)
    store = CropStore(paths["layer3"])
    view = ImageDataset(shortcut_digits, rows, build_transform(preprocess))[2][0]  # (1, 28, 28), normalised
    x0, y0, x1, y1 = (int(round(v)) for v in cell_boxes((0, 0, 28, 28), 3)[4])  # the centre cell
    inside = torch.zeros_like(view)
    inside[:, y0:y1, x0:x1] = view[:, y0:y1, x0:x1]
    with torch.no_grad(), LayerRecorder(model, ["layer3"]) as recorder:
        logits = model(inside[None])
    np.testing.assert_allclose(store.vectors[2 * 9 + 4], recorder.outputs["layer3"].mean(dim=(2, 3))[0].numpy(), rtol=1e-4, atol=1e-5)
    assert store.predicted[2 * 9 + 4] == logits.argmax().item()
    # not the resized crop of `crops` mode
    resized = CropStore(extract_crop_vectors(model, shortcut_digits, rows, ["layer3"], preprocess, tmp_path / "r", mode="crops", grids=[3], progress=False)["layer3"])
    assert not np.allclose(resized.vectors[2 * 9 + 4], store.vectors[2 * 9 + 4], atol=1e-3)
    np.testing.assert_array_equal(store["box"][:], resized["box"][:])  # the same boxes of the original image


def test_view_box_inverts_resize_and_centre_crop():
    pre = {"resize": 256, "input_size": 224}
    x0, y0, x1, y1 = view_box(500, 375, pre)
    # shorter side 375 -> 256 (scale 375/256); crop 224 centred
    assert y1 - y0 == pytest.approx(224 * 375 / 256, abs=1.0) and x1 - x0 == pytest.approx(224 * 375 / 256, abs=1.0)
    assert (x0 + x1) / 2 == pytest.approx(250, abs=1.5) and (y0 + y1) / 2 == pytest.approx(187.5, abs=1.5)
    assert view_box(28, 28, {"resize": None, "input_size": 28}) == (0.0, 0.0, 28.0, 28.0)


def test_incomplete_store_is_never_taken_as_finished(tmp_path):
    writer = RowStoreWriter(tmp_path / "s.zarr", 10, chunk_rows=4)
    writer.append(x=np.ones((6, 3), np.float32))
    writer.abort()
    with pytest.raises(StoreError, match="incomplete"):
        RowStore(tmp_path / "s.zarr")
    writer = RowStoreWriter(tmp_path / "t.zarr", 10, chunk_rows=4)
    writer.append(x=np.ones((6, 3), np.float32))
    with pytest.raises(StoreError, match="6 rows written, 10 declared"):
        writer.close()
    with pytest.raises(StoreError, match="incomplete"):
        RowStore(tmp_path / "t.zarr")


def test_writer_streams_chunk_aligned_blocks(tmp_path):
    data = np.arange(50 * 3, dtype=np.float32).reshape(50, 3)
    writer = RowStoreWriter(tmp_path / "s.zarr", 50, chunk_rows=8, compression="lz4")
    for start in range(0, 50, 7):  # batches that do not align with chunks
        writer.append(x=data[start : start + 7], ids=np.arange(start, min(start + 7, 50)))
    writer.close()
    store = RowStore(tmp_path / "s.zarr")
    np.testing.assert_array_equal(store["x"][:], data)
    np.testing.assert_array_equal(store.numpy("ids", np.array([3, 49])), [3, 49])
    assert store["x"].chunks == (8, 3)
