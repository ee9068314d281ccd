"""Class concepts (Herdt & Otero Baguer, Sec. 4) on real photos and the real ImageNet MobileNetV2.

Attribution is checked by the identities it must satisfy (the target logit, the white-image
baseline), NMF by recovering planted concepts, and the prediction test by its layout and softmax.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image
from torch.utils.data import ConcatDataset

from conceptscope.attribution import AttributionError, layer_attribution, resolve_baseline
from conceptscope.methods.concepts import ConceptExtractor, attribution_weighted_vectors, iter_class_samples, sample_class
from conceptscope.methods.prediction_test import prediction_test, stitch_crops, stitch_transform
from conceptscope.models import build_transform

GOOSE, JEEP, CONVERTIBLE = 99, 609, 511  # ImageNet classes of the foolbox photos


def _index_of_prediction(photos, cls: int) -> int:
    return int(np.flatnonzero(photos["logits"].argmax(1).numpy() == cls)[0])


# --------------------------------------------------------------------------------------------
# Attribution


def test_grad_x_act_at_the_last_conv_layer_sums_to_the_target_logit(photos):
    # After features.18 MobileNetV2 is average pooling and a linear layer, so sum(grad x act) is
    # exactly logit_t - bias_t: wrong for any class other than the requested one.
    model, images, logits = photos["model"], photos["images"][:3], photos["logits"][:3]
    bias = model.classifier[1].bias.detach()
    for target in (GOOSE, 7):
        total = layer_attribution(model, images, "features.18", target, method="grad_x_act").sum(dim=(1, 2, 3))
        torch.testing.assert_close(total, logits[:, target] - bias[target], rtol=1e-4, atol=1e-4)
    per_image = torch.tensor([GOOSE, 7, 500])
    total = layer_attribution(model, images, "features.18", per_image, method="grad_x_act").sum(dim=(1, 2, 3))
    torch.testing.assert_close(total, logits[torch.arange(3), per_image] - bias[per_image], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layer", ["features.18", "features.12"])
def test_deeplift_sums_to_the_logit_difference_from_a_white_image(photos, layer):
    # DeepLift's summation-to-delta against the paper's baseline, a white image after normalisation
    # (Sec. 4.1). At features.12 it holds only if every ReLU6 downstream gets the rescale rule.
    model, preprocess, images = photos["model"], photos["preprocess"], photos["images"][5:7]
    white = resolve_baseline("white", images, preprocess)
    mean, std = torch.tensor(preprocess["mean"]), torch.tensor(preprocess["std"])
    torch.testing.assert_close(white[0, :, 0, 0], (1 - mean) / std)
    with torch.no_grad():
        before = model(images)
        expected = before[:, GOOSE] - model(white)[0, GOOSE]
    attributions = layer_attribution(model, images, layer, GOOSE, preprocess=preprocess)
    torch.testing.assert_close(attributions.sum(dim=(1, 2, 3)), expected, rtol=1e-3, atol=2e-3)
    # the model is handed back unchanged: same modules, inplace flags and outputs
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU6)]
    assert len(relus) == 35 and all(m.inplace for m in relus)
    with torch.no_grad():
        torch.testing.assert_close(model(images), before)


def test_deeplift_on_a_resnet_that_reuses_its_relu_modules(photos):
    # torchvision ResNet blocks call one `relu` module several times, which plain captum refuses.
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    images = torch.nn.functional.interpolate(photos["images"][:2], size=64)
    reference = resolve_baseline("white", images, photos["preprocess"])
    attributions = layer_attribution(model, images, "layer2", 3, preprocess=photos["preprocess"])
    with torch.no_grad():
        expected = model(images)[:, 3] - model(reference)[0, 3]
    torch.testing.assert_close(attributions.sum(dim=(1, 2, 3)), expected, rtol=1e-3, atol=1e-4)
    with pytest.raises(AttributionError, match="called 2 times"):
        layer_attribution(model, images, "layer1.0.relu", 3, preprocess=photos["preprocess"])


def test_smoothgrad_noise_is_fixed_by_the_seed_and_options_are_checked(photos):
    model, preprocess, images = photos["model"], photos["preprocess"], photos["images"][:2]
    def smoothgrad(seed):
        return layer_attribution(model, images, "features.18", GOOSE, "deeplift_smoothgrad", n_samples=2, seed=seed, preprocess=preprocess)

    first, again, other = smoothgrad(0), smoothgrad(0), smoothgrad(1)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, other)
    with pytest.raises(AttributionError, match="does not use \\['n_samples'\\]"):
        layer_attribution(model, images, "features.18", GOOSE, method="deeplift", n_samples=4, preprocess=preprocess)
    with pytest.raises(AttributionError, match="needs the model's preprocessing"):
        layer_attribution(model, images, "features.18", GOOSE)
    with pytest.raises(AttributionError, match="unknown attribution method"):
        layer_attribution(model, images, "features.18", GOOSE, method="lrp")


# --------------------------------------------------------------------------------------------
# Concept extraction


def test_nmf_recovers_concepts_planted_in_real_activations(photos):
    # Four real feature vectors (spatial means of four photos at features.18) are the planted
    # concepts; every position mixes at most two of them. With unit attribution the scored
    # vectors are exactly these mixtures, and NMF must reconstruct them and find the concepts.
    acts = photos["acts"]["features.18"]
    planted = acts[[5, 8, 21, 23]].mean(axis=(2, 3))  # (4, 1280), non-negative
    rng = np.random.default_rng(0)
    n_images, size = 6, 7
    weights = np.zeros((n_images * size * size, 4), np.float32)
    for row in weights:
        row[rng.choice(4, size=rng.integers(1, 3), replace=False)] = rng.uniform(0.2, 1.0, size=1)
    mixtures = weights @ planted
    activations = mixtures.reshape(n_images, size, size, -1).transpose(0, 3, 1, 2)
    concepts = ConceptExtractor(n_concepts=4, max_iter=1000).fit(activations, np.ones_like(activations))
    assert concepts.relative_error_ < 0.01
    assert concepts.components_.shape == (4, 1280) and (concepts.components_ >= 0).all()
    assert concepts.n_vectors_ == n_images * size * size
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    cosine = unit(planted) @ unit(concepts.components_).T
    assert (cosine.max(axis=1) > 0.99).all()
    assert sorted(cosine.argmax(axis=1)) == [0, 1, 2, 3]
    assert concepts.importance_.sum() == pytest.approx(1.0) and (np.diff(concepts.importance_) <= 0).all()


def test_only_positions_with_positive_attribution_are_kept_and_scaled(photos):
    model, images = photos["model"], photos["images"][5:8]
    acts = photos["acts"]["features.18"][5:8]
    attributions = layer_attribution(model, images, "features.18", GOOSE, preprocess=photos["preprocess"]).numpy()
    attributions[1] *= -1  # flips the sign of every position of the second image
    scores = attributions.mean(axis=1)
    vectors, positions = attribution_weighted_vectors(acts, attributions)
    assert len(vectors) == (scores > 0).sum()
    image, y, x = positions[0]
    np.testing.assert_allclose(vectors[0], acts[image, :, y, x] * scores[image, y, x], rtol=1e-6)
    concepts = ConceptExtractor(n_concepts=3).fit(acts, attributions)
    assert concepts.n_vectors_ == len(vectors)
    # the image with negated attribution contributes exactly its former negative positions
    assert (positions[:, 0] == 1).sum() == (scores[1] > 0).sum() < (scores[1] < 0).sum()


def test_a_layer_with_negative_activations_is_refused(photos):
    acts = photos["acts"]["features.14"]  # a linear bottleneck: no ReLU after it
    assert acts.min() < 0
    with pytest.raises(ValueError, match=r"layer 'features.14' has negative values \(min -.*needs a layer after a ReLU"):
        ConceptExtractor().fit(acts, np.ones_like(acts), layer="features.14")
    with pytest.raises(ValueError, match="features.14' has negative values"):
        ConceptExtractor(n_concepts=2).fit_class(
            photos["model"], photos["dataset"], "features.14", GOOSE, preprocess=photos["preprocess"], progress=False
        )


def test_class_sample_follows_the_prediction_and_is_bounded(photos):
    dataset, model, preprocess = photos["dataset"], photos["model"], photos["preprocess"]
    jeep_photos = np.flatnonzero(photos["labels"] == JEEP)
    assert len(jeep_photos) == 2
    # one jeep photo is predicted as a convertible: it belongs to the convertible's sample
    jeep = sample_class(model, dataset, "features.18", JEEP, preprocess=preprocess, progress=False)
    convertible = sample_class(model, dataset, "features.18", CONVERTIBLE, preprocess=preprocess, progress=False)
    assert len(jeep.image_ids) == len(convertible.image_ids) == 1
    assert jeep.labels[0] == convertible.labels[0] == JEEP
    # the photos twice: max_images stops the scan, and batching does not change the numbers
    twice = ConcatDataset([dataset, dataset])
    goose = _index_of_prediction(photos, GOOSE)
    small = sample_class(model, twice, "features.18", GOOSE, max_images=1, batch_size=4, preprocess=preprocess, progress=False)
    assert small.n_scanned == 4 * (goose // 4 + 1) and len(small.image_ids) == 1
    both = sample_class(model, twice, "features.18", GOOSE, max_images=5, batch_size=25, preprocess=preprocess, progress=False)
    assert len(both.image_ids) == 2 and both.n_scanned == 50
    np.testing.assert_allclose(both.activations[0], photos["acts"]["features.18"][goose], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(both.attributions[0], small.attributions[0], rtol=1e-4, atol=1e-6)


def test_fit_class_explains_the_images_predicted_as_the_class(photos):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's ConvergenceWarning at the paper's 200 iterations
        twice = ConcatDataset([photos["dataset"]] * 2)
        concepts = ConceptExtractor(n_concepts=4, max_images=3).fit_class(
            photos["model"], twice, "features.18", GOOSE, preprocess=photos["preprocess"], batch_size=8, progress=False
        )
    goose = photos["dataset"][_index_of_prediction(photos, GOOSE)][2]
    assert list(concepts.image_ids_) == [goose, goose] and concepts.n_images_ == 2
    assert concepts.components_.shape == (4, 1280) and (concepts.components_ >= 0).all()
    assert 0 < concepts.relative_error_ < 0.5 and 0 < concepts.kept_fraction_ <= 1


def test_all_classes_in_one_pass_equal_one_class_at_a_time(photos):
    """The pipeline's pass over all classes (batches crossing class boundaries, one target per
    image) gives each class exactly what a separate per-class pass gives."""
    model, dataset, preprocess = photos["model"], photos["dataset"], photos["preprocess"]
    few = 8  # the first 8 photos, each twice: every class has >= 2 images
    predicted = np.tile(photos["logits"].argmax(1).numpy()[:few], 2)
    order = np.argsort(predicted, kind="stable")
    rows = pd.concat([dataset.rows.iloc[:few], dataset.rows.iloc[:few]]).iloc[order]
    grouped = type(dataset)(dataset.dataset, rows, dataset.transform)
    samples = list(iter_class_samples(model, grouped, predicted[order], "features.18", batch_size=3, preprocess=preprocess, progress=False))
    assert [s.target for s in samples] == sorted(set(predicted.tolist()))
    assert sum(len(s.image_ids) for s in samples) == 2 * few
    # classes whose images straddle a batch boundary, and the last class
    starts = np.cumsum([0] + [len(s.image_ids) for s in samples])
    checked = [s for s, a, b in zip(samples, starts[:-1], starts[1:]) if a // 3 != (b - 1) // 3][:2]
    assert checked, "no class straddles a batch boundary: the test would not test it"
    checked.append(samples[-1])
    for sample in checked:
        alone = sample_class(model, grouped, "features.18", sample.target, preprocess=preprocess, progress=False)
        assert list(sample.image_ids) == list(alone.image_ids)
        np.testing.assert_allclose(sample.activations, alone.activations, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(sample.attributions, alone.attributions, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="grouped by target class"):
        iter_class_samples(model, dataset, np.tile([GOOSE, JEEP], 13)[: len(dataset)], "features.18", progress=False)
    with pytest.raises(ValueError, match="targets for"):
        iter_class_samples(model, dataset, [GOOSE], "features.18", progress=False)


def test_nmf_sweep_reconstructs_better_with_more_concepts_and_refuses_empty_input(photos):
    acts = photos["acts"]["features.18"][:6]
    attrs = layer_attribution(photos["model"], photos["images"][:6], "features.18", GOOSE, preprocess=photos["preprocess"]).numpy()
    vectors, _ = attribution_weighted_vectors(acts, attrs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        errors = [ConceptExtractor(n).fit_vectors(vectors).relative_error_ for n in (1, 4, 16)]
        full = ConceptExtractor(20, max_iter=1000, init="nndsvda").fit_vectors(vectors[:20])
    assert errors[0] > errors[1] > errors[2]
    assert full.relative_error_ < 0.05  # as many components as vectors: NMF reproduces its input
    with pytest.raises(ValueError, match="only 0 positions have positive attribution"):
        ConceptExtractor(4).fit_vectors(np.zeros((0, 1280), np.float32))
    with pytest.raises(ValueError, match="NaN or inf"):
        ConceptExtractor(1).fit_vectors(np.full((4, 8), np.nan, np.float32))


# --------------------------------------------------------------------------------------------
# Prediction test


def test_stitched_image_stacks_one_crop_per_concept_top_to_bottom():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (250, 250, 0)]
    crops = [  # different sizes, PIL and numpy
        Image.new("RGB", (30, 50), colours[0]),
        np.full((100, 100, 3), colours[1], np.uint8),
        Image.new("RGB", (74, 74), colours[2]),
        Image.new("RGB", (10, 10), colours[3]),
    ]
    stitched = stitch_crops(crops)
    assert stitched.mode == "RGB" and stitched.size == (74, 4 * 74)  # (width, height)
    pixels = np.asarray(stitched)
    for i, colour in enumerate(colours):
        assert (pixels[i * 74 : (i + 1) * 74] == colour).all()
    grey = stitch_crops([np.full((9, 9), 10 * i, np.uint8) for i in range(3)], size=9)
    assert grey.mode == "L" and grey.size == (9, 27) and np.asarray(grey)[18:, :].max() == 20
    with pytest.raises(ValueError, match="no crops"):
        stitch_crops([])


def test_prediction_test_reports_the_softmax_of_the_target(photos):
    model, preprocess, data = photos["model"], photos["preprocess"], photos["data"]
    goose = _index_of_prediction(photos, GOOSE)
    photo = Image.fromarray(data.load_image(next(data.split("test").iloc[[goose]].itertuples(index=False))))
    result = prediction_test(model, build_transform(preprocess), [photo, photo], [GOOSE, 7])
    probs = torch.softmax(photos["logits"][goose], 0)
    np.testing.assert_allclose(result.target_prob, [probs[GOOSE], probs[7]], rtol=1e-4)
    assert list(result.predicts_target) == [True, False] and list(result.predicted) == [GOOSE, GOOSE]
    # the stitched image is fed whole, at its own size: four crops of the goose photo
    width, height = photo.size
    crops = [photo.crop((x, y, x + width // 2, y + height // 2)) for y in (0, height // 2) for x in (0, width // 2)]
    stitched = stitch_crops(crops)
    assert stitch_transform(preprocess)(stitched).shape == (3, 4 * 74, 74)
    single = prediction_test(model, stitch_transform(preprocess), stitched, GOOSE)
    assert single.target_prob.shape == (1,) and 0 <= single.target_prob[0] <= 1


# --------------------------------------------------------------------------------------------
# The stricter prediction test sees the crops as they are stitched (Sec. 4.3, Figure 4)


def test_the_stricter_variant_excludes_crops_the_model_sees_as_the_class_when_stitched(photos, tmp_path):
    """Figure 4: with the crops predicted as A excluded, the one-concept stitched image, one such
    crop, is never predicted as A. In `crops` mode a crop is retrieved (and classified for the store)
    resized to 224 px but stitched at 74 px, where MobileNetV2 may see A in it; those crops are
    excluded too, so exclusion describes the image that is tested."""
    from conceptscope.crops import extract_crop_vectors
    from conceptscope.crop_search import CropIndex
    from conceptscope.index import IndexParams, build_crop_index
    from conceptscope.methods.concept_crops import CropPool, StitchedCropClassifier, hit_records, search_pools, stitch_hits
    from conceptscope.store import CropStore

    model, preprocess, data = photos["model"], photos["preprocess"], photos["data"]
    rows = data.split("test").iloc[:3]  # 27 crops (a 224 px pass each); most change class at 74 px
    path = extract_crop_vectors(model, data, rows, ["features.18"], preprocess, tmp_path / "crops", mode="crops", grids=[3], progress=False)["features.18"]
    store = CropStore(path)
    image_pred = pd.Series(photos["logits"].argmax(1).numpy(), index=photos["dataset"].rows["image_id"]).reindex(store.image_ids).to_numpy()
    pool = CropPool("photos", data, store, CropIndex(build_crop_index(store, IndexParams(type="flat"), progress=False), store.image_ids),
                    image_pred, store.predicted, store.image_ids)
    transform = stitch_transform(preprocess)
    stitched = StitchedCropClassifier(model, transform, size=74, batch_size=32)
    shown = stitched(pool, np.arange(len(store)))
    # crops the model sees as a class only at 74 px: neither their photo nor the 224 px crop is that class
    tricky = np.flatnonzero((shown != pool.image_pred) & (shown != pool.crop_pred))
    assert len(tricky) >= 3, "the photos should have crops whose class changes with the crop's size"
    vectors = store.vectors[:]
    for row in tricky[:3]:
        target = int(shown[row])
        tile = pool.crop(row, 74)
        np.testing.assert_array_equal(np.asarray(stitch_crops([tile], size=74)), np.asarray(tile))  # the one-concept test image
        assert prediction_test(model, transform, tile, target).predicted[0] == target  # what the classifier said, unbatched
        # the filters known from the store admit the crop itself first (cosine 1 with its own vector) ...
        assert search_pools([pool], vectors[row], m=3, exclude_target=target).rows[0, 0] == row
        # ... the stricter variant does not: no hit is the class at 74 px, so neither is the test image
        strict = search_pools([pool], vectors[row], m=3, exclude_target=target, stitched=stitched)
        assert row not in strict.rows and (strict.rows >= 0).all()
        records = hit_records([pool], strict, stitched)
        assert (records["stitched_pred"] != target).all() and (records["crop_pred"] != target).all()
        whole = hit_records([pool], search_pools([pool], vectors[row], m=3, exclude_target=target, exclude_images=True, stitched=stitched), stitched)
        assert (whole["image_pred"] != target).all() and (whole["stitched_pred"] != target).all()
        np.testing.assert_array_equal(records["stitched_pred"], shown[records["row"]])
        assert prediction_test(model, transform, stitch_hits([pool], strict, 74), target).predicted[0] != target
    # without exclusion the classifier only records; crops are classified once (cached)
    allowed = search_pools([pool], vectors[tricky[:2]], m=3, stitched=stitched)
    assert (allowed.rows[:, 0] == tricky[:2]).all()
    assert len(stitched._cache[id(pool)][1]) == len(store)


def test_concept_importance_shares_per_class_and_pair(tmp_path):
    from conceptscope.methods.concept_crops import concept_importance

    path = tmp_path / "components.npz"
    np.savez(path, classes=np.array([0, 3]), importance_n2=np.array([[3.0, 1.0], [np.nan, np.nan]]), components_n2=np.zeros((2, 2, 5)))
    frame = concept_importance(path, 2)
    assert frame[["class", "concept"]].values.tolist() == [[0, 1], [0, 2], [3, 1], [3, 2]]
    np.testing.assert_allclose(frame["importance_share"].to_numpy()[:2], [0.75, 0.25])
    assert frame["importance_share"].iloc[2:].isna().all()  # a class without concepts
    np.savez(path, classes=np.array([0]), against=np.array([4]), importance_n1=np.array([[2.0]]))
    assert concept_importance(path, 1)[["class", "against", "concept", "importance_share"]].values.tolist() == [[0, 4, 1, 1.0]]
