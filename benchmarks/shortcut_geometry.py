"""Benchmark `shortcut_geometry`: why the concept crops of a 28 px shortcut net do or do not show its watermark.

    .venv/bin/python benchmarks/shortcut_geometry.py RESULTS_DIR    # a finished default run's results/

For each digit model of the default run (the shortcut-trained VGG and ResNet and their clean twins)
and each stored layer, the shortcut class's NMF concepts (Sec. 4.1: attribution-weighted vectors of
100 images the model predicts as the class) are shown by their top 8 crops (Sec. 4.2) from a pool of
100 random images per class, with each of the three crop geometries (`crops`: resized to the input;
`masked`: kept in place at its own scale; `cells`: grid cells of the image's map). Recorded: the
share of top crops overlapping the watermark, the cosine of each concept with the watermark
direction (mean pooled activation of the watermarked test twins minus the clean ones), and the share
for that direction itself (the best a concept could do with that geometry).
Results: benchmarks/results/shortcut_geometry.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from _common import write_results

MODELS = {"vgg_shortcut": ["features.3", "features.5", "features.7"], "vgg_clean": ["features.3", "features.5", "features.7"],
          "resnet_shortcut": ["layer2", "layer3"], "resnet_clean": ["layer2", "layer3"]}
MODES = ("crops", "masked", "cells")


def pooled(model, data, rows, transform, layers) -> dict[str, np.ndarray]:
    from conceptscope.activations import LayerRecorder
    from conceptscope.data import ImageDataset

    out = {layer: [] for layer in layers}
    loader = torch.utils.data.DataLoader(ImageDataset(data, rows, transform), batch_size=250)
    with torch.no_grad(), LayerRecorder(model, layers) as recorder:
        for images, _, _ in loader:
            model(images)
            for layer in layers:
                out[layer].append(recorder.outputs[layer].mean(dim=(2, 3)).numpy())
    return {layer: np.concatenate(parts) for layer, parts in out.items()}


def main() -> None:
    from conceptscope.activations import select_images
    from conceptscope.crops import extract_crop_vectors
    from conceptscope.data import ImageDataset, PreparedDataset
    from conceptscope.methods.concept_crops import boxes_overlap
    from conceptscope.methods.concepts import ConceptExtractor, attribution_weighted_vectors, iter_class_samples
    from conceptscope.models import build_transform, load_model
    from conceptscope.store import CropStore, layer_store_name

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = PreparedDataset(args.results / "data" / "digits_shortcut")
    cls = data.shortcut_class
    marks = data.manifest.set_index("image_id")[["wm_x0", "wm_y0", "wm_x1", "wm_y1"]]
    pool = select_images(data.split("all"), per_class=100, seed=0)
    figures, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for name, layers in MODELS.items():
            model, info = load_model(args.results / "models" / name)
            transform = build_transform(info["preprocess"])
            direction = {layer: (m - c).mean(0) for layer, m, c in zip(layers, *(pooled(model, data, data.split(s), transform, layers).values()
                                                                               for s in ("test_watermarked", "test")))}
            preds = pd.read_parquet(args.results / "predictions" / "digits_shortcut" / f"{name}.parquet")
            chosen = select_images(data.split(["train", "test_watermarked"]), per_class=100, by="prediction", predictions=preds, seed=0)
            chosen = chosen[chosen.group == cls]
            stores = {}
            for mode in MODES:
                out = Path(tmp) / name / mode
                extract_crop_vectors(model, data, pool, layers, info["preprocess"], out, mode=mode, grids=[3], progress=False)
                stores[mode] = {layer: CropStore(out / layer_store_name(layer)) for layer in layers}
            for layer in layers:
                sample = next(iter_class_samples(model, ImageDataset(data, chosen, transform), np.full(len(chosen), cls), layer,
                                                 preprocess=info["preprocess"], progress=False))
                vectors, _ = attribution_weighted_vectors(sample.activations, sample.attributions)
                concepts = ConceptExtractor(4, seed=0).fit_vectors(vectors)
                d = direction[layer]
                cosine = concepts.components_ @ d / (np.linalg.norm(concepts.components_, axis=1) * np.linalg.norm(d) + 1e-12)
                for mode in MODES:
                    store = stores[mode][layer]
                    crops = np.asarray(store.vectors[:], np.float32)
                    crops /= np.linalg.norm(crops, axis=1, keepdims=True) + 1e-12
                    on_mark = boxes_overlap(np.asarray(store["box"][:]), marks.loc[store.image_ids].to_numpy())
                    top = lambda q: np.argsort(-(crops @ (q / (np.linalg.norm(q) + 1e-12))))[:8]  # noqa: E731
                    share = float(np.mean([on_mark[top(c)].mean() for c in concepts.components_]))
                    rows.append({"model": name, "layer": layer, "mode": mode, "concept_crops_on_watermark": round(share, 3),
                                 "direction_crops_on_watermark": float(on_mark[top(d)].mean()),
                                 "max_concept_cosine_with_watermark": round(float(cosine.max()), 3),
                                 "pool_crops_on_watermark": round(float(on_mark.mean()), 3)})
                    print(rows[-1])
                    figures[f"{name}.{layer}.{mode}.concept_crops_on_watermark"] = round(share, 3)
                figures[f"{name}.{layer}.max_concept_cosine_with_watermark"] = round(float(cosine.max()), 3)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    write_results("shortcut_geometry", {"rows": rows, **figures})


if __name__ == "__main__":
    main()
