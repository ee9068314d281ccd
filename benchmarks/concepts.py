"""Benchmark `concepts`: seconds per class for class concepts, extraction + visualisation.

    .venv/bin/python benchmarks/concepts.py [--classes 3] [--images 100]

The paper (App. C, RTX 2080Ti): extracting the NMF concepts of 1000 classes takes 15 h (54 s per
class, 500 images each), visualising them another 14 h ("around 50 seconds per class"), dominated
by comparing each concept with the 11.5M crops. Here, on this CPU, with the real ImageNet
MobileNetV2 at its last conv layer (features.18):

- extraction: the images of `--classes` Imagenette classes that the model predicts as them (the
  first `--images` per class among the training images), one DeepLift pass over all of them (white
  baseline), then NMF with n = 4 per class - the `extract_concepts` job's work;
- visualisation: for each class, the top-8 crops of each concept, once allowing any crop and once
  excluding crops of images predicted as the class, from the benchmark's crop index over 1.2M real
  crop vectors (all 13,394 Imagenette images, grids 2-6, made by benchmarks/index.py and cached),
  the two stitched prediction tests and the class figure - the `concept_crops` job's work.

Writes benchmarks/results/concepts.json: seconds_per_class (extraction + visualisation), both
parts, and the projection to 1000 classes (extraction scaled linearly to the paper's 500 images).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402
from index import CACHE, LAYER, ROOT, crop_store  # noqa: E402

GRIDS = [2, 3, 4, 5, 6]


def predictions(model, data, preprocess) -> pd.DataFrame:
    """MobileNetV2's predictions on every benchmark image (computed once, cached)."""
    from conceptscope.evaluation import predict
    from conceptscope.models import build_transform

    path = CACHE / "imagenette-mobilenet_v2-predictions.parquet"
    real = ROOT / "results-real"
    if not path.exists() and (real / "predictions" / "imagenette" / "mobilenet_v2.parquet").exists():
        # the real-data run predicted the same images: reuse them if its manifest is the same
        theirs = pd.read_parquet(real / "data" / "imagenette" / "manifest.parquet", columns=["image_id", "source"])
        if theirs.equals(data.manifest[["image_id", "source"]].reset_index(drop=True)):
            pd.read_parquet(real / "predictions" / "imagenette" / "mobilenet_v2.parquet").to_parquet(path, index=False)
    if not path.exists():
        transform = build_transform(preprocess)
        frames = [predict(model, data.torch_dataset(split, transform), batch_size=64, top_k=1, store_logits=False) for split in ("train", "test")]
        pd.concat(frames, ignore_index=True).to_parquet(path, index=False)
    return pd.read_parquet(path, columns=["image_id", "pred"])


def crop_index(store):
    """The IVF-PQ + refine index over the 1.2M crop vectors (built once, cached)."""
    import faiss

    from conceptscope.index import IndexParams, build_crop_index, index_info, save_index

    path = CACHE / f"index-grids{'-'.join(map(str, GRIDS))}.faiss"
    params = IndexParams()
    if not path.exists():
        index = build_crop_index(store, params)
        save_index(index, path, index_info(index, params, store))
    return path, faiss.read_index(str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=3, help="classes timed (default 3)")
    parser.add_argument("--images", type=int, default=100, help="images per class, S (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from conceptscope.activations import select_images
    from conceptscope.data import ImageDataset
    from conceptscope.methods.concept_crops import CropPool, concept_figure, search_pools, stitch_hits
    from conceptscope.methods.concepts import ConceptExtractor, attribution_weighted_vectors, iter_class_samples
    from conceptscope.methods.prediction_test import prediction_test, stitch_transform
    from conceptscope.models import build_transform, pretrained_model, resolve_preprocess
    from conceptscope.utils import configure_process

    configure_process(2)
    data, store = crop_store(GRIDS)
    model = pretrained_model("mobilenet_v2")
    preprocess = resolve_preprocess("mobilenet_v2", {})
    preds = predictions(model, data, preprocess)
    index_path, _ = crop_index(store)
    pool = CropPool.open("imagenette", data.path, store.path.parent, index_path, preds, LAYER)

    classes = sorted(data.manifest["label"].unique())[: args.classes]
    rows = select_images(data.split("train"), per_class=args.images, by="prediction", predictions=preds)
    rows = rows[rows["group"].isin(classes)].sort_values(["group", "image_id"], kind="stable")
    dataset = ImageDataset(data, rows, build_transform(preprocess))

    started = time.perf_counter()
    concepts = {}
    for sample in iter_class_samples(model, dataset, rows["group"].to_numpy(), LAYER, preprocess=preprocess, batch_size=32, seed=args.seed, progress=False):
        vectors, _ = attribution_weighted_vectors(sample.activations, sample.attributions)
        concepts[sample.target] = ConceptExtractor(4, seed=args.seed).fit_vectors(vectors)
    extraction = (time.perf_counter() - started) / len(classes)

    transform = stitch_transform(preprocess)
    started = time.perf_counter()
    verdicts = []
    with tempfile.TemporaryDirectory() as tmp:
        for target, fit in concepts.items():
            panels = {}
            for variant, exclude in (("allowed", None), ("excluded", target)):
                hits = search_pools([pool], fit.components_, 8, exclude_target=exclude)
                panels[variant] = hits
                with torch.no_grad():
                    verdicts.append(prediction_test(model, transform, stitch_hits([pool], hits, 74), target).predicts_target[0])
            concept_figure([pool], panels, fit.importance_, title=f"class {target}").save(Path(tmp) / f"{target}.png")
    visualisation = (time.perf_counter() - started) / len(classes)

    per_class = extraction + visualisation
    extraction_500 = extraction * 500 / args.images
    figures = {
        "seconds_per_class": round(per_class, 2),
        "extraction_seconds_per_class": round(extraction, 2),
        "visualisation_seconds_per_class": round(visualisation, 2),
        "images_per_class": args.images,
        "classes_timed": len(classes),
        "crops_in_index": len(pool),
        "projected_hours_1000_classes": round(1000 * per_class / 3600, 2),
        "projected_hours_1000_classes_500_images": round(1000 * (extraction_500 + visualisation) / 3600, 2),
        "paper_seconds_per_class_gpu": 104,  # 54 s extraction + ~50 s visualisation (App. C)
        "prediction_tests_passed": int(np.sum(verdicts)),
        "prediction_tests": len(verdicts),
    }
    write_results("concepts", figures)


if __name__ == "__main__":
    main()
