"""Benchmark `nave`: seconds per image for NAVE with K = 5 on 224x224 inputs, and class-wide clustering of 500 images.

    .venv/bin/python benchmarks/nave.py [--images 20] [--classwide 500]

The real ImageNet MobileNetV2 on real Imagenette images (224x224), NAVE over the 14x14 expansion conv
of block 13 and the last conv layer (features.13.conv.0 + features.18, 1,856 dims per pixel):

- `seconds_per_image_k5_224`: one image end to end - forward pass, Algorithm 1 on the default grid
  (the larger map, 14x14, the paper's advice) and k-means (K = 5, k-means++, sklearn) - averaged over
  `--images` validation images; the forward and clustering parts are reported too;
- `seconds_per_image_k5_grid224`: the same with the clustering grid upsampled to the full 224x224
  (50,176 pixel vectors per image), features.18 only (1,280 dims), over 3 images: the cost of
  clustering at input resolution instead of nearest-neighbour upsampling the labels;
- `classwide_seconds_500`: class-wide clustering (Sec. 4.3, K = 10) of the first `--classwide`
  training images of one class: features for all of them (14x14 grid, 98,000 pixel vectors),
  k-means fitted on a seeded subset of at most 100,000 pixels (the pipeline's default
  `nave.classwide.max_fit_pixels`; here all fit), every pixel assigned; plus the forward passes and
  the peak memory of the process.

Writes benchmarks/results/nave.json.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["features.13.conv.0", "features.18"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20, help="validation images timed one by one")
    parser.add_argument("--classwide", type=int, default=500, help="training images of one class clustered together")
    args = parser.parse_args()

    from conceptscope.activations import LayerRecorder
    from conceptscope.config import resolve_config
    from conceptscope.data import ImageDataset, PreparedDataset, prepare_dataset
    from conceptscope.methods.nave import ActivationClustering
    from conceptscope.models import build_transform, pretrained_model, resolve_preprocess
    from conceptscope.utils import configure_process

    configure_process(2)
    torch.manual_seed(0)
    spec = resolve_config({"datasets": {"inet": {"kind": "imagefolder", "root": str(ROOT.parent / "shared" / "data" / "imagenette"),
                                                 "train_dir": "train", "test_dir": "val", "label_map": "imagenet"}}})["datasets"]["inet"]
    tmp = Path(tempfile.mkdtemp(prefix="nave-bench-"))
    data = PreparedDataset(prepare_dataset(spec, tmp / "inet", "inet"))
    preprocess = resolve_preprocess("mobilenet_v2", {})
    model = pretrained_model("mobilenet_v2")
    transform = build_transform(preprocess)

    def maps_of(rows, layers=LAYERS, batch=32):
        out = {layer: [] for layer in layers}
        dataset = ImageDataset(data, rows, transform)
        for start in range(0, len(rows), batch):
            x = torch.stack([dataset[i][0] for i in range(start, min(start + batch, len(rows)))])
            with LayerRecorder(model, layers) as rec, torch.no_grad():
                model(x)
            for layer in layers:
                out[layer].append(rec.outputs[layer].numpy())
        return [np.concatenate(out[layer]) for layer in layers]

    # one image at a time, end to end
    val = data.split("test").sample(n=args.images, random_state=0)
    forward, cluster = [], []
    nave = ActivationClustering(n_clusters=5, seed=0)
    for i in range(len(val)):
        t0 = time.perf_counter()
        maps = maps_of(val.iloc[i : i + 1])
        t1 = time.perf_counter()
        labels = nave.fit_predict(maps)
        t2 = time.perf_counter()
        forward.append(t1 - t0)
        cluster.append(t2 - t1)
    assert labels.shape == (1, 14, 14)
    full_grid = []
    nave224 = ActivationClustering(n_clusters=5, seed=0, resolution=224)
    for i in range(min(3, len(val))):
        t0 = time.perf_counter()
        maps = maps_of(val.iloc[i : i + 1], ["features.18"])
        nave224.fit_predict(maps)
        full_grid.append(time.perf_counter() - t0)

    # class-wide: the first N training images of the largest class
    train = data.split("train")
    cls = int(train["label"].value_counts().idxmax())
    rows = train[train["label"] == cls].head(args.classwide)
    t0 = time.perf_counter()
    maps = maps_of(rows)
    t1 = time.perf_counter()
    classwide = ActivationClustering(n_clusters=10, seed=0, max_fit_pixels=100_000)
    labels = classwide.fit_predict(maps)
    t2 = time.perf_counter()
    assert labels.shape == (len(rows), 14, 14)
    write_results("nave", {
        "seconds_per_image_k5_224": round(float(np.mean(forward) + np.mean(cluster)), 4),
        "forward_seconds_per_image": round(float(np.mean(forward)), 4),
        "cluster_seconds_per_image_k5": round(float(np.mean(cluster)), 4),
        "images_timed": len(val),
        "grid": "14x14 (features.13.conv.0 + features.18, 1856 dims)",
        "seconds_per_image_k5_grid224": round(float(np.mean(full_grid)), 3),
        "classwide_seconds_500": round(t2 - t1, 2),
        "classwide_forward_seconds": round(t1 - t0, 2),
        "classwide_images": len(rows),
        "classwide_pixels": int(labels.size),
        "classwide_max_fit_pixels": 100_000,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    })


if __name__ == "__main__":
    main()
