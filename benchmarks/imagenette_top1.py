"""Benchmark `imagenette_top1`: 1000-way ImageNet top-1 of the packaged pretrained models on Imagenette val.

    .venv/bin/python benchmarks/imagenette_top1.py [--batch-size 50] [--max-per-class N]   # about 15 min on 2 cores

Every val image of ../shared/data/imagenette (ImageFolder with `label_map: imagenet`, so labels are
ImageNet-1k indices), each model with its registered preprocessing and `weights: packaged`, 2 torch
threads. An image counts as correct when the argmax over all 1000 ImageNet logits is its class (not
restricted to the 10 Imagenette classes).

- `n_images`, `n_classes`: the images scored.
- `top1_efficientnet_lite0`, `top1_mobilenet_v2`: top-1 accuracy (fraction).
- `top1_efficientnet_lite0_imagenet_norm`: EfficientNet-Lite0 fed the ImageNet mean/std that the
  reference package's README shows instead of TensorFlow's (x - 127) / 128 it was trained with: the
  check that our registered preprocessing is the right one.
- `seconds_<model>`: forward passes only (the frames are decoded once and shared: all three use
  resize 256 and a 224 centre crop, so they differ only in the normalisation).

Writes benchmarks/results/imagenette_top1.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

IMAGENETTE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette"
# figure suffix -> (arch, preprocess overrides)
RUNS = {
    "efficientnet_lite0": ("efficientnet_lite0", {}),
    "efficientnet_lite0_imagenet_norm": ("efficientnet_lite0", "imagenet"),
    "mobilenet_v2": ("mobilenet_v2", {}),
}


def imagenette_val(workdir: Path, max_per_class: int | None):
    """The prepared Imagenette val split: (PreparedDataset, its manifest rows)."""
    from conceptscope.config import resolve_config
    from conceptscope.data import PreparedDataset, prepare_dataset

    folder = {"kind": "imagefolder", "root": str(IMAGENETTE), "train_dir": None, "test_dir": "val", "label_map": "imagenet"}
    if max_per_class:
        folder["max_per_class"] = max_per_class
    spec = resolve_config({"datasets": {"imagenette": folder}})["datasets"]["imagenette"]
    prepare_dataset(spec, workdir / "data", "imagenette")
    data = PreparedDataset(workdir / "data")
    return data, data.split("test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--max-per-class", type=int, default=None, help="fewer images, for a quick look: printed, not recorded")
    args = parser.parse_args()

    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from conceptscope.data import ImageDataset
    from conceptscope.models import IMAGENET_MEAN, IMAGENET_STD, build_frame_transform, pretrained_model, resolve_preprocess

    torch.set_num_threads(2)
    models, norms, frames = {}, {}, set()
    for run, (arch, overrides) in RUNS.items():
        preprocess = resolve_preprocess(arch, {"mean": IMAGENET_MEAN, "std": IMAGENET_STD} if overrides == "imagenet" else overrides)
        frames.add((preprocess["channels"], preprocess["resize"], preprocess["input_size"]))
        models[run] = pretrained_model(arch)
        norms[run] = [torch.tensor(preprocess[key], dtype=torch.float32).view(1, -1, 1, 1) for key in ("mean", "std")]
    if len(frames) != 1:
        raise SystemExit(f"the runs need different frames {sorted(frames)}; this script decodes each image once for all")
    frame = build_frame_transform(preprocess)

    def to_pixels(image):  # (3, 224, 224) uint8: the frame every run sees, normalised per run below
        return torch.from_numpy(np.array(frame(image), dtype=np.uint8, copy=True)).permute(2, 0, 1)

    with tempfile.TemporaryDirectory() as tmp:
        data, rows = imagenette_val(Path(tmp), args.max_per_class)
        loader = DataLoader(ImageDataset(data, rows, to_pixels), batch_size=args.batch_size, shuffle=False, num_workers=0)
        correct = {run: 0 for run in RUNS}
        seconds = {run: 0.0 for run in RUNS}
        n_images = 0
        with torch.no_grad():
            for pixels, labels, _ in tqdm(loader, desc="imagenette val", unit="batch"):
                scaled = pixels.to(torch.float32).div(255)
                for run, model in models.items():
                    mean, std = norms[run]
                    start = time.perf_counter()
                    logits = model((scaled - mean) / std)
                    seconds[run] += time.perf_counter() - start
                    correct[run] += int((logits.argmax(1) == labels).sum())
                n_images += len(labels)
        n_classes = int(rows["label"].nunique())

    figures = {"n_images": n_images, "n_classes": n_classes, "threads": torch.get_num_threads()}
    for run in RUNS:
        figures[f"top1_{run}"] = round(correct[run] / n_images, 4)
        figures[f"seconds_{run}"] = round(seconds[run], 1)
    if args.max_per_class:  # a quick look: not the recorded figures
        print(json.dumps({**figures, "max_per_class": args.max_per_class}, indent=2))
    else:
        write_results("imagenette_top1", figures)


if __name__ == "__main__":
    main()
