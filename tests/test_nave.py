"""NAVE: Algorithm 1 on a real ImageNet model and real photos, segment boxes, the extraction proxy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conceptscope.methods.nave import (
    ActivationClustering,
    box_iou,
    correct_localization,
    felzenszwalb_segments,
    inner_box,
    nave_features,
    outer_box,
    score_segments,
    select_segment,
    select_segment_mask,
    slic_segments,
    upsample_labels,
)
from conceptscope.models import build_frame_transform, build_transform, frame_boxes


def test_features_follow_algorithm_1():
    rng = np.random.default_rng(0)
    deep, shallow = rng.normal(size=(2, 8, 4, 4)).astype(np.float32), rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    features, size = nave_features([deep, shallow])
    assert size == (8, 8) and features.shape == (2, 64, 11)
    up = F.interpolate(torch.from_numpy(deep), size=(8, 8), mode="bicubic", align_corners=False)
    expected = up.reshape(2, 8, 64).transpose(1, 2)
    expected = expected / expected.norm(dim=2, keepdim=True) / 9  # unit length, then / (1 + C)
    np.testing.assert_allclose(features[..., :8], expected.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(features[..., 8:], axis=2), 1 / 4, rtol=1e-5)
    assert nave_features([deep], (2, 2))[0].shape == (2, 4, 8)


def _brute_inner(mask):
    best = 0
    for y0, y1 in itertools.combinations(range(mask.shape[0] + 1), 2):
        for x0, x1 in itertools.combinations(range(mask.shape[1] + 1), 2):
            if mask[y0:y1, x0:x1].all():
                best = max(best, (y1 - y0) * (x1 - x0))
    return best


def test_inner_box_is_the_largest_inscribed_rectangle():
    mask = np.zeros((6, 7), bool)
    mask[1:5, 1:3] = True  # an L: a 4x2 bar and a 2x5 foot
    mask[3:5, 1:6] = True
    assert outer_box(mask) == (1, 1, 6, 5)
    assert inner_box(mask) == (1, 3, 6, 5)  # the foot, area 10 > the bar's 8
    rng = np.random.default_rng(1)
    for _ in range(30):
        mask = rng.random((6, 6)) < 0.7
        box = inner_box(mask)
        if box is None:
            continue
        x0, y0, x1, y1 = box
        assert mask[y0:y1, x0:x1].all() and (x1 - x0) * (y1 - y0) == _brute_inner(mask)
    assert inner_box(np.zeros((3, 3), bool)) is None and outer_box(np.zeros((3, 3), bool)) is None


def test_select_segment_in_an_upsampled_frame():
    labels = np.zeros((7, 7), int)
    labels[2:5, 1:4] = 1
    targets = np.array([[32, 64, 128, 160]])  # exactly segment 1 at 32 px per cell
    for strategy in ("outer", "inner"):
        hit = select_segment(labels, targets, strategy, frame=(224, 224))
        assert hit.segment == 1 and hit.box == (32, 64, 128, 160) and hit.iou == pytest.approx(1.0)
    # a frame that is not a multiple of the map: the same answer on the nearest-upsampled labels
    hit = select_segment(labels, targets * 100 / 224, "outer", frame=(100, 100))
    assert hit.segment == 1 and hit.iou > 0.9
    assert select_segment(labels, np.array([[np.nan] * 4]), "outer").segment == -1
    assert correct_localization([0.4, 0.6, 0.5, 0.9]) == 0.5  # strictly above 0.5
    assert box_iou((0, 0, 2, 2), (1, 0, 3, 2)) == pytest.approx(1 / 3)


def test_mask_selection_finds_a_watermark_segment_that_boxes_miss():
    # a 14x14 label map shown at 28 px: segment 1 is the 8x8 watermark square plus a thin stroke to
    # the edge, as when a cluster holds the watermark and a digit stroke of the same features
    labels = np.zeros((14, 14), int)
    labels[2:6, 2:6] = 1  # the square (pixels 4..12)
    labels[3, 6:14] = 1  # the stroke
    labels[8:, :] = 2
    mark = np.array([[4, 4, 12, 12]], float)
    assert select_segment(labels, mark, "outer", frame=(28, 28)).iou < 0.5  # the stroke stretches the box
    hit = select_segment_mask(labels, mark, frame=(28, 28))
    assert hit.segment == 1 and hit.iou == pytest.approx(64 / (64 + 2 * 16))
    # the square split between two segments: the better one holds half of it, and nothing else
    split = labels.copy()
    split[2:6, 4:6] = 3
    hit = select_segment_mask(split, mark, frame=(28, 28))
    assert hit.segment == 3 and hit.iou == pytest.approx(0.5)
    rows = score_segments(labels, (28, 28), ["outer", "inner"], {"object": np.array([[0, 16, 28, 28]], float), "watermark": mark})
    assert [(r["target"], r["strategy"]) for r in rows] == [("object", "outer"), ("object", "inner"), ("watermark", "outer"), ("watermark", "inner"), ("watermark", "mask")]


def test_upsample_labels_is_nearest_neighbour():
    labels = np.arange(4).reshape(2, 2)
    assert upsample_labels(labels, (4, 4)).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]


def test_frame_boxes_follow_the_model_transform():
    """A bright rectangle in a 96x64 image lands where frame_boxes says after resize 80 + crop 56."""
    preprocess = {"channels": 3, "resize": 80, "input_size": 56, "mean": [0.5] * 3, "std": [0.5] * 3}
    image = np.zeros((64, 96, 3), np.uint8)
    image[20:50, 30:70] = 255
    framed = np.asarray(build_frame_transform(preprocess)(Image.fromarray(image)))
    assert framed.shape == (56, 56, 3)
    rows, cols = np.flatnonzero(framed[..., 0].max(axis=1) > 128), np.flatnonzero(framed[..., 0].max(axis=0) > 128)
    x0, y0, x1, y1 = frame_boxes(np.array([[30, 20, 70, 50]]), 96, 64, preprocess)[0]
    assert abs(x0 - cols[0]) <= 1 and abs(x1 - cols[-1] - 1) <= 1 and abs(y0 - rows[0]) <= 1 and abs(y1 - rows[-1] - 1) <= 1


@pytest.fixture(scope="module")
def composite(photos):
    """Two real photos side by side (cat | coffee cup, 256 px: a seam between map columns), MobileNetV2's maps."""
    from skimage import data as skdata

    from conceptscope.activations import LayerRecorder

    left = np.asarray(Image.fromarray(skdata.chelsea()).resize((128, 256)))
    right = np.asarray(Image.fromarray(skdata.coffee()).resize((128, 256)))
    image = np.concatenate([left, right], axis=1)
    preprocess = {"channels": 3, "resize": None, "input_size": None, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    x = build_transform(preprocess)(Image.fromarray(image))[None]
    model = photos["model"]
    with LayerRecorder(model, ["features.13.conv.0", "features.18"]) as rec, torch.no_grad():
        model(x)
    return image, {name: out.numpy() for name, out in rec.outputs.items()}


def test_nave_splits_a_two_photo_composite_at_the_seam(composite):
    image, maps = composite
    labels = ActivationClustering(n_clusters=2, seed=0).fit_predict([maps["features.18"]])[0]  # (8, 8)
    halves = np.zeros_like(labels)
    halves[:, 4:] = 1
    assert max((labels == halves).mean(), (labels != halves).mean()) > 0.9, labels
    for strategy in ("outer", "inner"):
        hit = select_segment(labels, np.array([[0, 0, 128, 256]]), strategy, frame=(256, 256))
        assert hit.iou > 0.7, (strategy, hit)
    # two layers, K = 5: every segment stays (almost) on one side of the seam
    labels = ActivationClustering(n_clusters=5, seed=0).fit_predict([maps["features.13.conv.0"], maps["features.18"]])[0]
    halves = np.zeros_like(labels)
    halves[:, labels.shape[1] // 2 :] = 1
    purity = sum(max(((labels == s) & (halves == h)).sum() for h in (0, 1)) for s in np.unique(labels)) / labels.size
    assert purity > 0.9, purity
    # the baselines on the same image, with the same selection
    for segments in (slic_segments(image, n_segments=2), felzenszwalb_segments(image, scale=400)):
        assert segments.shape == (256, 256)
        assert select_segment(segments, np.array([[0, 0, 128, 256]]), "outer").iou > 0


def test_kmeans_is_repeatable_under_a_seed_and_ward_is_deterministic(composite):
    _, maps = composite
    maps = [maps["features.13.conv.0"], maps["features.18"]]
    first = ActivationClustering(n_clusters=5, seed=3).fit_predict(maps)
    assert np.array_equal(first, ActivationClustering(n_clusters=5, seed=3).fit_predict(maps))
    assert first.max() == 4 and first[0, 0, 0] == 0  # renumbered by first appearance
    ward = ActivationClustering(n_clusters=5, method="ward").fit_predict(maps)
    assert np.array_equal(ward, ActivationClustering(n_clusters=5, method="ward", seed=9).fit_predict(maps))


def test_class_wide_clustering_shares_ids_and_bounds_the_fit(photos):
    maps = photos["acts"]["features.18"][:6]  # (6, 1280, 7, 7): six real photos
    full = ActivationClustering(n_clusters=4, seed=0).fit_predict([maps])
    assert full.shape == (6, 7, 7) and set(np.unique(full)) == {0, 1, 2, 3}
    # a subset fit assigns every pixel to its nearest centre; with all pixels it is the full fit
    same = ActivationClustering(n_clusters=4, seed=0, max_fit_pixels=6 * 49).fit_predict([maps])
    assert np.array_equal(full, same)
    sub = ActivationClustering(n_clusters=4, seed=0, max_fit_pixels=100)
    labels = sub.fit_predict([maps])
    assert labels.shape == (6, 7, 7) and sub.cluster_centers_.shape == (4, 1280)
    per_image = ActivationClustering(n_clusters=3, seed=0).segment_images([maps])
    assert per_image.shape == (6, 7, 7) and all(len(np.unique(p)) == 3 for p in per_image)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="unknown clustering"):
        ActivationClustering(method="dbscan")
    with pytest.raises(ValueError, match="Ward clustering of"):
        ActivationClustering(method="ward").fit_predict([np.ones((1, 2, 150, 150), np.float32)])
    with pytest.raises(ValueError, match="unknown box strategy"):
        select_segment(np.zeros((2, 2), int), np.array([[0, 0, 1, 1]]), "middle")
