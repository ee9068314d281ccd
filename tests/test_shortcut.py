"""The planted shortcut is found by the methods, on three shortcut settings, and not on the clean twin.

For each setting (the default checker on class 0, a cross of another size on class 3, a smaller
checker on class 7) a small ResNet is trained on real digits (150 or 100 per class) with the
watermark on every training image of the class and, as its clean twin, on the same digits without it. The ground truth is
checked first: the shortcut model predicts the class for most watermarked digits of other classes,
the clean twin for few. Then each method's shortcut measure, computed with the library as the
pipeline computes it, must pass the report's verdict (`report.verdict`: excess over chance at least
2x the clean twin's), and the clean twin's must fail it against the shortcut model's, so replacing
the shortcut model by its clean twin fails the test:

- class concepts (concepts paper Sec. 4.1-4.2): the share of the top masked crops of the class's
  NMF concepts that overlap the watermark; chance is the share of the pool's crops that do;
- Grad-CAM of the predicted class (the saliency jobs' default target): its mass in the watermark box
  over the box's share of the frame; chance 1.

NAVE and DORA are not asserted here: they do not single out the watermark for the shortcut model
in the default run either. Nor is ClaDec: it detects the shortcut at the VGG's 1x1 layer of the
default run, but a decoder of this ResNet's 7x7 last stage reconstructs the watermark for both nets
(measured 0.29 vs 0.31 of its signal on the 6 px setting). docs/shortcut.md has the evidence.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conceptscope.activations import select_images
from conceptscope.crops import extract_crop_vectors
from conceptscope.data import ImageDataset, PreparedDataset, prepare_dataset
from conceptscope.evaluation import predict, summarize_predictions
from conceptscope.methods.concept_crops import boxes_overlap
from conceptscope.methods.concepts import ConceptExtractor, attribution_weighted_vectors, iter_class_samples
from conceptscope.methods.saliency import gradcam
from conceptscope.models import build_model, build_transform, resolve_preprocess
from conceptscope.report import verdict
from conceptscope.store import CropStore
from conceptscope.training import train_classifier

from conftest import digits_spec

# setting -> (watermark, digits per class: 80 % of them for training; the clean twin sees as many)
SETTINGS = {
    "checker8_class0": ({"class": 0, "pattern": "checker", "size": 8}, 150),
    "cross10_class3": ({"class": 3, "pattern": "cross", "size": 10}, 150),
    "checker6_class7": ({"class": 7, "pattern": "checker", "size": 6}, 100),
}


def _trained(data, transform):
    model = build_model("resnet_small", 10, 1, seed=0)
    train_classifier(model, ImageDataset(data, data.split("train"), transform), epochs=3, seed=0, progress=False)
    return model.eval()


@pytest.fixture(scope="module")
def clean_twin(tmp_path_factory):
    """The clean twin for a number of digits per class: the same ResNet trained on the same digits without a watermark."""
    transform = build_transform(resolve_preprocess("resnet_small", {}))
    twins = {}

    def twin(per_class):
        if per_class not in twins:
            root = tmp_path_factory.mktemp(f"clean{per_class}")
            prepare_dataset(digits_spec(max_per_class=per_class), root, "clean")
            twins[per_class] = _trained(PreparedDataset(root), transform)
        return twins[per_class], transform

    return twin


# the default suite takes the 6 px checker on class 7 (size and class other than the default run's);
# the default run's own watermark and the cross are opt-in (`-m long`: about 3 minutes more on one core)
@pytest.fixture(scope="module", params=[pytest.param(name, marks=[] if name == "checker6_class7" else pytest.mark.long) for name in sorted(SETTINGS)])
def twins(request, tmp_path_factory, clean_twin):
    """(watermarked data, shortcut model, clean twin, shortcut class, transform, digits per class) for one setting."""
    root = tmp_path_factory.mktemp(request.param)
    watermark, per_class = SETTINGS[request.param]
    shortcut = {**watermark, "fraction": 1.0, "seed": 0}
    prepare_dataset(digits_spec(max_per_class=per_class, shortcut=shortcut), root, request.param)
    data = PreparedDataset(root)
    clean, transform = clean_twin(per_class)
    return data, _trained(data, transform), clean, shortcut["class"], transform, per_class


def _measures(data, model, cls, transform, per_class, tmp_path) -> dict[str, float]:
    """The shortcut rate and each method's shortcut measure for one model (larger: more watermark),
    with `concepts_chance`, the value of a concept blind to the watermark."""
    preds = predict(model, ImageDataset(data, data.manifest, transform), progress=False).assign(split=data.manifest["split"].to_numpy())
    rate = summarize_predictions(preds, cls).set_index("split").loc["test_watermarked", "shortcut_rate"]
    marks = data.manifest.set_index("image_id")[["wm_x0", "wm_y0", "wm_x1", "wm_y1"]]
    preprocess = resolve_preprocess("resnet_small", {})
    # class concepts: the images predicted as the class among those that carry the shortcut, their
    # attribution-filtered NMF concepts (from 2/5 as many images as the digits per class), the top 8
    # masked crops of each in a pool of 1/5 as many images per class
    rows = select_images(data.split(["train", "test_watermarked"]), per_class=per_class * 2 // 5, by="prediction", predictions=preds, seed=0)
    rows = rows[rows.group == cls]
    sample = next(iter_class_samples(model, ImageDataset(data, rows, transform), np.full(len(rows), cls), "layer3",
                                     preprocess=preprocess, progress=False))
    vectors, _ = attribution_weighted_vectors(sample.activations, sample.attributions)
    concepts = ConceptExtractor(4, seed=0).fit_vectors(vectors).components_
    pool = select_images(data.split("all"), per_class=per_class // 5, seed=0)
    store = CropStore(extract_crop_vectors(model, data, pool, ["layer3"], preprocess, tmp_path / "crops", mode="masked", grids=[3],
                                           progress=False)["layer3"])
    crop_vectors = store.vectors[:] / (np.linalg.norm(store.vectors[:], axis=1, keepdims=True) + 1e-12)
    on_mark = boxes_overlap(store["box"][:], marks.loc[store.image_ids].to_numpy())
    top = np.argsort(-(concepts @ crop_vectors.T), axis=1)[:, :8]
    # Grad-CAM of the predicted class on 3 watermarked test digits per class
    marked = data.split("test_watermarked").groupby("label").head(3)
    x = torch.stack([ImageDataset(data, marked, transform)[i][0] for i in range(len(marked))])
    with torch.no_grad():
        predicted = model(x).argmax(1)
    maps = gradcam(model, x, "layer3", predicted).detach().numpy().reshape(len(marked), 28, 28)
    ratios = []
    for saliency, (x0, y0, x1, y1) in zip(maps, marked[["wm_x0", "wm_y0", "wm_x1", "wm_y1"]].to_numpy()):
        share = saliency[y0:y1, x0:x1].sum() / max(saliency.sum(), 1e-12)
        ratios.append(share / ((x1 - x0) * (y1 - y0) / 28**2))
    return {"shortcut_rate": float(rate), "concepts": float(on_mark[top].mean()), "concepts_chance": float(on_mark.mean()),
            "gradcam": float(np.mean(ratios))}


def test_each_method_finds_the_planted_shortcut_and_not_on_the_clean_twin(twins, tmp_path):
    data, shortcut_model, clean_model, cls, transform, per_class = twins
    found = _measures(data, shortcut_model, cls, transform, per_class, tmp_path / "s")
    clean = _measures(data, clean_model, cls, transform, per_class, tmp_path / "c")
    print(f"class {cls}:", pd.DataFrame({"shortcut": found, "clean": clean}).to_string(), sep="\n")
    # the ground truth: the shortcut model uses the watermark, its clean twin does not
    assert found["shortcut_rate"] >= 0.5 and clean["shortcut_rate"] <= 0.1, (found["shortcut_rate"], clean["shortcut_rate"])
    chance = {"concepts": found["concepts_chance"], "gradcam": 1.0}  # the same crop pool for both models
    for name in chance:
        assert verdict(found[name], clean[name], chance[name], np.nan) == "detected", (name, found[name], clean[name], chance[name])
        assert verdict(clean[name], found[name], chance[name], np.nan) == "not detected", name
