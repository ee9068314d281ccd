"""Benchmark `activations`: extraction throughput vs the bare forward pass, and peak memory vs N.

    .venv/bin/python benchmarks/activations.py [--images 480] [--small 256] [--large 1024]

MobileNetV2 (the real IMAGENET1K_V1 weights) on ../shared/data/imagenette val images. Both sides
load and preprocess the same images with the same DataLoader; the extraction also runs hooks on
features.14 and features.18 and streams both layers into compressed Zarr stores. The two are timed
alternately (3 rounds each, median) in one process, so the ratio is robust to the noisy machine.
Peak RSS is measured in a fresh subprocess per size.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGENETTE = ROOT.parent / "shared" / "data" / "imagenette"
LAYERS = ["features.14", "features.18"]


def setup(n_images: int, workdir: Path):
    from conceptscope.activations import select_images
    from conceptscope.config import resolve_config
    from conceptscope.data import PreparedDataset, prepare_dataset
    from conceptscope.models import pretrained_model, resolve_preprocess
    from conceptscope.utils import configure_process

    configure_process(2)  # as a pipeline job: 2 threads, freed memory kept for reuse
    per_class = -(-n_images // 10)
    spec = resolve_config({"datasets": {"i": {"kind": "imagefolder", "root": str(IMAGENETTE), "train_dir": None, "test_dir": "val", "label_map": "imagenet", "max_per_class": per_class}}})["datasets"]["i"]
    prepare_dataset(spec, workdir / "data", "imagenette")
    data = PreparedDataset(workdir / "data")
    rows = select_images(data.split("test")).head(n_images)
    model = pretrained_model("mobilenet_v2")
    return data, rows, model.eval(), resolve_preprocess("mobilenet_v2", {})


def bare_forward(model, data, rows, transform, batch_size: int) -> float:
    import torch
    from torch.utils.data import DataLoader

    from conceptscope.data import ImageDataset

    loader = DataLoader(ImageDataset(data, rows, transform), batch_size=batch_size, shuffle=False, num_workers=0)
    start = time.perf_counter()
    with torch.no_grad():
        for images, _, _ in loader:
            model(images)
    return time.perf_counter() - start


def extract(model, data, rows, transform, batch_size: int, out: Path) -> float:
    from conceptscope.activations import extract_activations

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    extract_activations(model, data, rows, LAYERS, transform, out, batch_size=batch_size, chunk_images=32, progress=False)
    return time.perf_counter() - start


def memory_child(n_images: int) -> None:
    """Run one extraction of n_images and print the process's peak RSS in MB."""
    from conceptscope.models import build_transform

    with tempfile.TemporaryDirectory() as tmp:
        data, rows, model, preprocess = setup(n_images, Path(tmp))
        extract(model, data, rows, build_transform(preprocess), 32, Path(tmp) / "acts")
    print(json.dumps({"n_images": len(rows), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=480)
    parser.add_argument("--small", type=int, default=256)
    parser.add_argument("--large", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return

    from conceptscope.models import build_transform

    with tempfile.TemporaryDirectory() as tmp:
        data, rows, model, preprocess = setup(args.images, Path(tmp))
        transform = build_transform(preprocess)
        bare_forward(model, data, rows.head(32), transform, 32)  # warm-up (allocator, file cache)
        forward_s, extract_s = [], []
        for _ in range(args.rounds):
            forward_s.append(bare_forward(model, data, rows, transform, 32))
            extract_s.append(extract(model, data, rows, transform, 32, Path(tmp) / "acts"))
        store_mb = sum(p.stat().st_size for p in (Path(tmp) / "acts").rglob("*") if p.is_file()) / 2**20

    memory = {}
    for label, n in (("small", args.small), ("large", args.large)):
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(n)], check=True, capture_output=True, text=True)
        memory[label] = json.loads(out.stdout.strip().splitlines()[-1])

    from _common import write_results

    forward, extraction = statistics.median(forward_s), statistics.median(extract_s)
    write_results(
        "activations",
        {
            "n_images": len(rows),
            "forward_images_per_s": round(len(rows) / forward, 2),
            "extract_images_per_s": round(len(rows) / extraction, 2),
            "extract_vs_forward_ratio": round(forward / extraction, 3),
            "forward_seconds_min": round(min(forward_s), 2),
            "forward_seconds_max": round(max(forward_s), 2),
            "extract_seconds_min": round(min(extract_s), 2),
            "extract_seconds_max": round(max(extract_s), 2),
            "store_mb_float32_zstd": round(store_mb, 1),
            "n_images_small": memory["small"]["n_images"],
            "n_images_large": memory["large"]["n_images"],
            "peak_rss_mb_small": round(memory["small"]["peak_rss_mb"], 1),
            "peak_rss_mb_large": round(memory["large"]["peak_rss_mb"], 1),
        },
    )


if __name__ == "__main__":
    main()
