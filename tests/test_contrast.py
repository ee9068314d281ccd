"""Class contrasting (Herdt & Otero Baguer, Sec. 5) on real photos and the real ImageNet MobileNetV2.

The batched all-pairs trainer is checked against the paper's one-pair procedure (nn.Linear + BCE +
torch SGD, a separate implementation) on real cutoff vectors; the hyperplanes by their orientation
and the shifting test by moving real images' activations to another class.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conceptscope.activations import LayerRunner, split_at_layer
from conceptscope.attribution import layer_attribution
from conceptscope.methods.contrast import (
    ContrastHyperplanes,
    all_pairs,
    contrast_weighted_vectors,
    cutoff_vectors,
    pair_init,
    train_pair_reference,
)
from conceptscope.methods.shifting import iter_shift_results, shift_predictions, shifting_plan, shifting_summary
from conceptscope.models import build_model

GOOSE, JEEP = 99, 609  # ImageNet classes of two foolbox photos (each predicted for one photo)


@pytest.fixture(scope="module")
def class_vectors(photos):
    """Cutoff vectors at features.18 per predicted class of the photos (grad x act: one backward pass)."""
    predicted = photos["logits"].argmax(1).numpy()
    attributions = layer_attribution(photos["model"], photos["images"], "features.18", torch.as_tensor(predicted), "grad_x_act").numpy()
    acts = photos["acts"]["features.18"]
    vectors = {}
    for cls in np.unique(predicted):
        rows = np.flatnonzero(predicted == cls)
        vectors[int(cls)] = cutoff_vectors(acts[rows], attributions[rows])[0]
    return {"vectors": vectors, "attributions": attributions, "predicted": predicted}


def test_cutoff_keeps_unscaled_vectors_of_positions_near_the_image_maximum(photos, class_vectors):
    acts, attributions = photos["acts"]["features.18"][:4], class_vectors["attributions"][:4]
    vectors, positions = cutoff_vectors(acts, attributions, cutoff=0.25)
    scores = attributions.mean(axis=1)
    peak = scores.reshape(4, -1).max(axis=1)
    expected = (scores > 0) & (scores >= 0.25 * peak[:, None, None])
    assert len(vectors) == expected.sum() and 0 < len(vectors) < scores.size
    image, y, x = positions.T
    assert expected[image, y, x].all()
    np.testing.assert_array_equal(vectors, acts[image, :, y, x])  # filtered, not scaled (Sec. 5.1.1)
    # a stricter cutoff keeps a subset; cutoff 0 keeps every positive position
    assert len(cutoff_vectors(acts, attributions, cutoff=0.6)[0]) < len(vectors) < len(cutoff_vectors(acts, attributions, cutoff=0.0)[0])
    assert len(cutoff_vectors(acts, attributions, cutoff=0.0)[0]) == (scores > 0).sum()
    with pytest.raises(ValueError, match="cutoff"):
        cutoff_vectors(acts, attributions, cutoff=1.5)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-7), (torch.float32, 2e-5)])
def test_all_pairs_batched_equal_the_one_pair_reference(class_vectors, dtype, tolerance):
    vectors = class_vectors["vectors"]
    assert len(vectors) >= 15 and all(v.shape[1] == 1280 for v in vectors.values())
    planes = ContrastHyperplanes(seed=7, dtype=dtype, chunk_pairs=40, progress=False).fit(vectors)
    assert len(planes.pairs_) == len(vectors) * (len(vectors) - 1) // 2
    rng = np.random.default_rng(0)
    for i in rng.choice(len(planes.pairs_), 12, replace=False):
        a, b = planes.pairs_[i]
        w0, b0 = pair_init(a, b, 1280, seed=7)
        weight, bias, accuracy, loss = train_pair_reference(vectors[a], vectors[b], w0, b0, dtype=dtype)
        assert np.abs(weight - planes.coef_[i]).max() <= tolerance * np.abs(weight).max()
        assert bias == pytest.approx(planes.intercept_[i], abs=tolerance)
        assert accuracy == pytest.approx(planes.accuracy_[i], abs=1e-12)
        assert loss == pytest.approx(planes.loss_[i], rel=1e-4)
        assert np.abs(weight - w0).max() > 100 * tolerance  # training moved the weights
    # chunking changes nothing: each pair starts from its own seeded initialisation
    whole = ContrastHyperplanes(seed=7, dtype=dtype, progress=False).fit(vectors)
    np.testing.assert_allclose(whole.coef_, planes.coef_, atol=tolerance)
    assert not np.allclose(ContrastHyperplanes(seed=8, dtype=dtype, epochs=1, progress=False).fit(vectors).coef_,
                           ContrastHyperplanes(seed=7, dtype=dtype, epochs=1, progress=False).fit(vectors).coef_)


def test_hyperplanes_point_towards_the_first_class_and_reverse_by_negation(class_vectors, tmp_path):
    vectors = class_vectors["vectors"]
    planes = ContrastHyperplanes(progress=False).fit(vectors)
    assert planes.accuracy_.min() > 0.9  # one photo per class: linearly separable at 1280 channels
    for a, b in [(GOOSE, JEEP), (JEEP, GOOSE)]:
        w, bias = planes.hyperplane(a, b)
        assert (vectors[a] @ w + bias).mean() > 0 > (vectors[b] @ w + bias).mean()
    w_ab, b_ab = planes.hyperplane(GOOSE, JEEP)
    w_ba, b_ba = planes.hyperplane(JEEP, GOOSE)
    np.testing.assert_array_equal(w_ab, -w_ba)
    assert b_ab == -b_ba and planes.pair_accuracy(GOOSE, JEEP) == planes.pair_accuracy(JEEP, GOOSE)
    with pytest.raises(KeyError, match="no classifier"):
        planes.hyperplane(GOOSE, 5)
    # ordered training: both directions, each from its own start
    some = {c: vectors[c] for c in sorted(vectors)[:4]}
    ordered = ContrastHyperplanes(ordered=True, progress=False).fit(some)
    assert len(ordered.pairs_) == 12 and set(map(tuple, ordered.pairs_)) == set(map(tuple, all_pairs(sorted(some), ordered=True)))
    # round trip through the Zarr store
    planes.save(tmp_path / "planes.zarr", {"layer": "features.18"})
    loaded = ContrastHyperplanes.load(tmp_path / "planes.zarr")
    np.testing.assert_array_equal(loaded.hyperplane(JEEP, GOOSE)[0], w_ba)
    np.testing.assert_array_equal(loaded.accuracy_, planes.accuracy_)
    assert loaded.attrs["layer"] == "features.18"


def test_fewer_than_two_classes_give_no_pair_and_bad_input_is_refused(class_vectors):
    one = {GOOSE: class_vectors["vectors"][GOOSE], 3: np.zeros((0, 1280), np.float32)}
    planes = ContrastHyperplanes(progress=False).fit(one)
    assert planes.pairs_.shape == (0, 2) and planes.coef_.shape == (0, 1280)
    with pytest.raises(ValueError, match="without cutoff vectors"):
        ContrastHyperplanes(progress=False).fit(one, pairs=[(GOOSE, 3)])
    with pytest.raises(ValueError, match="one C"):
        ContrastHyperplanes(progress=False).fit({1: np.ones((3, 4)), 2: np.ones((3, 5))})
    with pytest.raises(ValueError, match="epochs"):
        ContrastHyperplanes(epochs=0)


def test_contrast_scores_keep_the_a_side_scaled_by_the_distance(photos, class_vectors):
    planes = ContrastHyperplanes(progress=False).fit(class_vectors["vectors"])
    acts = photos["acts"]["features.18"]
    goose = int(np.flatnonzero(class_vectors["predicted"] == GOOSE)[0])
    w, bias = planes.hyperplane(GOOSE, JEEP)
    vectors, positions = contrast_weighted_vectors(acts[[goose]], w, bias)
    z = np.einsum("chw,c->hw", acts[goose], w) + bias
    assert len(vectors) == (z > 0).sum() > 0
    _, y, x = positions.T
    np.testing.assert_allclose(vectors, acts[goose][:, y, x].T * z[y, x][:, None], rtol=1e-5)
    assert (vectors >= 0).all()


@pytest.mark.parametrize("arch, layer, n_saved", [("mobilenet_v2", "features.18", 0), ("mobilenet_v2", "features.13.conv.0", 1),
                                                  ("resnet_small", "layer2", 0), ("vgg_small", "features.5", 0)])
def test_running_on_from_a_layer_equals_the_full_forward_pass(photos, arch, layer, n_saved):
    if arch == "mobilenet_v2":
        model, images = photos["model"], photos["images"][:3]
    else:
        model, images = build_model(arch, 10, 1, seed=0).eval(), torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        expected = model(images)
    for runner in (LayerRunner(model, layer), _untraced(model, layer)):
        acts, saved = runner.head(images)
        # a residual block's first conv: its input is still needed after the layer, so the head passes it on
        assert len(saved) == (n_saved if runner.traced else 1)
        torch.testing.assert_close(runner.tail(acts, saved), expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(runner.tail(2 * acts, saved), expected)  # the replacement is used
    head, tail = split_at_layer(model, layer)
    assert sum(p.numel() for p in head.parameters()) + sum(p.numel() for p in tail.parameters()) == sum(p.numel() for p in model.parameters())


def _untraced(model, layer) -> LayerRunner:
    """A runner that takes the fallback path (hook + full forward pass), as for an untraceable model."""
    runner = LayerRunner(model, layer)
    runner.split = None
    return runner


def test_shifting_along_the_normal_moves_the_prediction_to_the_target(photos, class_vectors):
    planes = ContrastHyperplanes(progress=False).fit(class_vectors["vectors"])
    runner = LayerRunner(photos["model"], "features.18")
    predicted, classes = class_vectors["predicted"], [int(c) for c in planes.classes_]
    images_of = {c: photos["images"][torch.as_tensor(np.flatnonzero(predicted == c))] for c in classes}
    pairs = [(b, a) for b in classes for a in classes if a != b]
    results = list(iter_shift_results(runner, images_of, planes, pairs, progress=False))
    assert [(r.start, r.target) for r in results] == pairs
    default = np.mean([r.default_probs.mean() for r in results])
    shifted = np.mean([r.shifted_probs.mean() for r in results])
    # one photo per class makes weak classifiers, yet the normal points to A for most pairs
    assert default < 0.01 and shifted > 0.5
    first = results[0]
    assert first.offsets[0] == 0 and first.shifted_probs.mean() == first.probs.mean(axis=1).max()
    assert first.default_probs.mean() == pytest.approx(float(torch.softmax(photos["logits"], 1)[predicted == first.start, first.target].mean()), abs=1e-6)
    # moving the other way (away from A) never makes an A of B
    b, a = pairs[0]
    away = shift_predictions(runner, images_of[b], -planes.hyperplane(a, b)[0], a)
    assert away.max() < 0.01


def test_shifting_plan_draws_distinct_targets_per_start_and_is_seeded():
    classes = list(range(30))
    plan = shifting_plan(classes, n_targets=10, n_repeats=5, seed=3)
    assert len(plan) == 5 and all(len(pairs) == 300 for pairs in plan)
    for pairs in plan:
        for start in classes:
            targets = [a for b, a in pairs if b == start]
            assert len(set(targets)) == 10 and start not in targets
    assert plan == shifting_plan(classes, n_targets=10, n_repeats=5, seed=3)
    assert plan[0] != plan[1] and plan != shifting_plan(classes, n_targets=10, n_repeats=5, seed=4)
    few = shifting_plan([1, 2, 3], n_targets=10, n_repeats=2)
    assert all(sorted(pairs) == [(1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2)] for pairs in few)


def test_shifting_summary_is_table_3_mean_and_std_over_the_drawn_pairs():
    """Table 3's bracketed std is over the per-pair best values, not over images: a pair of nine
    images spread over 0 and 1 counts once, as in the authors' summary script."""
    pairs = pd.DataFrame(
        [(0, 1, 1, 0.0, 1.0, 0.0, 2.0, 1.0), (0, 2, 9, 0.2, 0.5, 0.5, 10.0, 0.9), (1, 0, 1, 0.1, 0.0, 0.0, 0.0, 0.8),
         (1, 2, 1, 0.1, 0.9, 0.0, 50.0, 1.0), (2, 0, 4, 0.7, 0.123, 0.3, 1.0, 0.5)],  # the last pair is never drawn
        columns=["start", "target", "n_images", "default_pred", "shifted_pred", "shifted_pred_image_std", "best_offset", "pair_accuracy"],
    )
    plan = pd.DataFrame([(0, 0, 1), (0, 0, 2), (1, 1, 0), (1, 1, 2)], columns=["repeat", "start", "target"])
    row = shifting_summary(pairs, plan)
    # shifted: repeat 0 pairs [1.0, 0.5] (mean 0.75, std 0.25), repeat 1 [0.0, 0.9] (mean 0.45, std 0.45)
    assert row["shifted_pred_mean"] == pytest.approx(0.6)
    assert row["shifted_pred_repeat_std"] == pytest.approx(0.15)
    assert row["shifted_pred_std"] == pytest.approx(0.35)  # over all 12 images of those pairs it would be 0.491
    # default: repeat 0 [0.0, 0.2], repeat 1 [0.1, 0.1]
    assert row["default_pred_mean"] == pytest.approx(0.1)
    assert row["default_pred_repeat_std"] == pytest.approx(0.0)
    assert row["default_pred_std"] == pytest.approx(0.05)
    assert row["n_repeats"] == 2 and row["pairs_per_repeat"] == 2 and row["n_start_classes"] == 2
    assert row["median_best_offset"] == pytest.approx(6.0) and row["mean_pair_accuracy"] == pytest.approx(0.925)
    assert shifting_summary(pairs, plan.iloc[:0]) == {}


def test_class_vector_store_round_trip_and_incomplete_store_refused(tmp_path, class_vectors):
    from conceptscope.store import ClassVectorStore, StoreError

    vectors = class_vectors["vectors"][GOOSE]
    store = ClassVectorStore.create(tmp_path / "v.zarr", {"layer": "features.18"})
    store.add(GOOSE, vectors, np.full(len(vectors), 7), np.zeros((len(vectors), 2)))
    store.add(3, np.zeros((0, vectors.shape[1])), [], np.zeros((0, 2)))
    with pytest.raises(StoreError, match="already"):
        store.add(GOOSE, vectors, np.full(len(vectors), 7), np.zeros((len(vectors), 2)))
    with pytest.raises(StoreError, match="incomplete"):
        ClassVectorStore(tmp_path / "v.zarr")  # the writer has not closed it
    store.close()
    done = ClassVectorStore(tmp_path / "v.zarr")
    assert done.counts == {GOOSE: len(vectors), 3: 0} and done.attrs["layer"] == "features.18"
    np.testing.assert_array_equal(done.vectors(GOOSE), vectors)
    assert (done.image_ids(GOOSE) == 7).all() and done.vectors(3).shape == (0, vectors.shape[1])
    with pytest.raises(StoreError, match="no vectors of class 5"):
        done.vectors(5)
