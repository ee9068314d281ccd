"""Benchmark `contrast`: all-pairs linear classifiers, batched against the paper's one-pair loop.

    .venv/bin/python benchmarks/contrast.py [--classes 200] [--images 50] [--sample-pairs 200]
    .venv/bin/python benchmarks/contrast.py --classes 1000     # ImageNet's 1000 classes, 499,500 pairs

The paper (App. B) trains its ~1M pair classifiers one at a time: 35 h on an RTX 2080Ti. Here the
pairs' classifiers come from real cutoff vectors: the Tiny ImageNet val images (50 per class, 200
ImageNet classes, ../shared/data/tiny-imagenet-200) through the real ImageNet MobileNetV2 at its
last conv layer (features.18, 7x7x1280), gradient x activation for the image's class (the paper's
App. D.2 finds it as good as DeepLift at the penultimate layer, and it is one backward pass), cutoff
0.25 x the image's maximum (Sec. 5.1.1). Vectors are computed once and cached. Deviation, for speed:
the classes are the images' labels, not the model's predictions; this changes the vector counts a
little, not the training arithmetic.

Timed side by side in one run, same vectors, same initialisations, same device (CPU, float32):
- `ContrastHyperplanes.fit` over all K(K-1)/2 unordered pairs (100 full-batch SGD epochs each);
- `train_pair_reference` (nn.Linear + BCE + torch SGD, one pair at a time, as the paper) on a seeded
  random sample of `--sample-pairs` pairs, scaled to all pairs by the sample's mean time per pair;
- max_weight_abs_diff: the largest |w_batched - w_reference| over the sampled pairs.
Writes benchmarks/results/contrast.json (contrast_<K>.json for more than 200 classes), including the
floating-point work per pair and the rate both reach, from which the note projects to a GPU.

More classes than Tiny ImageNet's 200 (`--classes 1000`): class 200 + j is real class j mod 200's
vectors with their 1280 channels permuted by a seeded permutation of its own, each value scaled by a
seeded factor in [0.8, 1.25]. Each stand-in class keeps a real class's vector count, sparsity,
non-negativity and value distribution, which fix the trainer's cost (full-batch epochs: the work is
set by the sizes alone); its separability from the other classes is not ImageNet's, so the training
accuracies of those pairs say nothing about real classes.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache"
TINY = ROOT.parent / "shared" / "data" / "tiny-imagenet-200"
LAYER = "features.18"


def tiny_imagenet():
    """Tiny ImageNet val (200 classes x 50 images, labels as ImageNet indices), prepared once."""
    from conceptscope.config import resolve_config
    from conceptscope.data import PreparedDataset, prepare_dataset

    out = CACHE / "tiny_imagenet_val"
    if not (out / "manifest.parquet").exists():
        spec = {"kind": "imagefolder", "root": str(TINY), "train_dir": None, "test_dir": "val/images",
                "labels": str(TINY / "val" / "val_annotations.txt"), "label_map": "imagenet"}
        prepare_dataset(resolve_config({"datasets": {"tiny": spec}})["datasets"]["tiny"], out, "tiny_imagenet")
    return PreparedDataset(out)


def class_vectors(n_classes: int, n_images: int) -> dict[int, np.ndarray]:
    """Cutoff vectors at features.18 per class (cached as .npz)."""
    path = CACHE / f"contrast-vectors-tiny-{n_classes}x{n_images}.npz"
    if path.exists():
        saved = np.load(path)
        return {int(k[1:]): saved[k] for k in saved.files}
    from conceptscope.activations import LayerRecorder
    from conceptscope.attribution import layer_attribution
    from conceptscope.data import ImageDataset
    from conceptscope.methods.contrast import cutoff_vectors
    from conceptscope.models import build_transform, pretrained_model, resolve_preprocess
    from tqdm.auto import tqdm

    data = tiny_imagenet()
    rows = data.split("test")
    classes = sorted(rows["label"].unique())[:n_classes]
    rows = rows[rows["label"].isin(classes)].groupby("label", sort=True, group_keys=False).head(n_images)
    preprocess = resolve_preprocess("mobilenet_v2", {})
    model = pretrained_model("mobilenet_v2")
    dataset = ImageDataset(data, rows, build_transform(preprocess))
    vectors: dict[int, list[np.ndarray]] = {}
    for start in tqdm(range(0, len(dataset), 32), desc="cutoff vectors"):
        items = [dataset[i] for i in range(start, min(start + 32, len(dataset)))]
        images = torch.stack([x for x, _, _ in items])
        labels = torch.as_tensor([y for _, y, _ in items])
        with torch.no_grad(), LayerRecorder(model, [LAYER]) as recorder:
            model(images)
        attributions = layer_attribution(model, images, LAYER, labels, "grad_x_act").numpy()
        acts = recorder.outputs[LAYER].numpy()
        for i, label in enumerate(labels.tolist()):
            vectors.setdefault(label, []).append(cutoff_vectors(acts[i : i + 1], attributions[i : i + 1])[0])
    merged = {c: np.concatenate(v) for c, v in vectors.items()}
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{f"c{c}": v for c, v in merged.items()})
    return merged


REAL_CLASSES = 200  # Tiny ImageNet


def stand_in_classes(real: dict[int, np.ndarray], n_classes: int, seed: int) -> dict[int, np.ndarray]:
    """`real` extended to `n_classes` classes: class K + j is real class j mod K's vectors with channels
    permuted and values scaled per class (seeded; see the module docstring). Real classes stay as they are."""
    keys = sorted(real)
    out = dict(real)
    rng = np.random.default_rng(seed)
    for j in range(n_classes - len(keys)):
        source = real[keys[j % len(keys)]]
        permutation = rng.permutation(source.shape[1])
        scale = np.exp(rng.uniform(np.log(0.8), np.log(1.25), size=source.shape)).astype(source.dtype)
        out[max(keys) + 1 + j] = source[:, permutation] * scale
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--sample-pairs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from conceptscope.methods.contrast import EPOCHS, ContrastHyperplanes, all_pairs, pair_init, train_pair_reference

    vectors = class_vectors(min(args.classes, REAL_CLASSES), args.images)
    if args.classes > REAL_CLASSES:
        vectors = stand_in_classes(vectors, args.classes, args.seed)
    counts = np.array([len(v) for v in vectors.values()])
    n_features = next(iter(vectors.values())).shape[1]
    pairs = all_pairs(sorted(vectors))
    print(f"{len(vectors)} classes, {counts.sum()} vectors ({counts.mean():.0f} per class), {len(pairs)} pairs")

    rng = np.random.default_rng(args.seed)
    sample = pairs[np.sort(rng.choice(len(pairs), min(args.sample_pairs, len(pairs)), replace=False))]
    # the reference loop on the sample first, then the batched trainer on all pairs (same process, same threads)
    started = time.perf_counter()
    reference = {}
    for a, b in sample:
        w0, b0 = pair_init(a, b, n_features, args.seed)
        reference[(int(a), int(b))] = train_pair_reference(vectors[a], vectors[b], w0, b0)
    loop_sample_seconds = time.perf_counter() - started
    per_pair_loop = loop_sample_seconds / len(sample)

    started = time.perf_counter()
    planes = ContrastHyperplanes(seed=args.seed, chunk_pairs=20000, device="cpu").fit(vectors)
    allpairs_seconds = time.perf_counter() - started

    weight_diff = max(float(np.abs(planes.hyperplane(a, b)[0] - ref[0]).max()) for (a, b), ref in reference.items())
    accuracy_diff = max(abs(planes.pair_accuracy(a, b) - ref[2]) for (a, b), ref in reference.items())
    sizes = np.array([len(vectors[a]) + len(vectors[b]) for a, b in pairs], dtype=np.float64)
    sample_sizes = np.array([len(vectors[a]) + len(vectors[b]) for a, b in sample], dtype=np.float64)
    # forward (x.w) and backward (X^T r) per epoch: 2 x 2 x N x C floating-point operations per pair
    flops_all = float(EPOCHS * 4 * n_features * sizes.sum())
    flops_sample = float(EPOCHS * 4 * n_features * sample_sizes.sum())
    onepair_loop_seconds = per_pair_loop * len(pairs) * (sizes.mean() / sample_sizes.mean())
    figures = {
        "n_classes": len(vectors),
        "n_pairs": len(pairs),
        "n_features": n_features,
        "vectors_per_class_mean": float(counts.mean()),
        "allpairs_seconds": allpairs_seconds,
        "onepair_loop_seconds": onepair_loop_seconds,
        "onepair_loop_sample_pairs": len(sample),
        "onepair_loop_sample_seconds": loop_sample_seconds,
        "onepair_seconds_per_pair": per_pair_loop,
        "allpairs_speedup": onepair_loop_seconds / allpairs_seconds,
        "max_weight_abs_diff": weight_diff,
        "max_accuracy_abs_diff": accuracy_diff,
        "allpairs_gflops_per_second": flops_all / allpairs_seconds / 1e9,
        "onepair_gflops_per_second": flops_sample / loop_sample_seconds / 1e9,
        "training_accuracy_mean": float(planes.accuracy_.mean()),
        "threads": args.threads,
        "epochs": EPOCHS,
        "real_classes": min(args.classes, REAL_CLASSES),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    write_results("contrast" if args.classes <= REAL_CLASSES else f"contrast_{args.classes}", figures)


if __name__ == "__main__":
    main()
