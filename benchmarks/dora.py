"""Benchmark `dora`: EA_n for k = 1280 representations x 10,000 images, and s-AMS seconds per representation.

    .venv/bin/python benchmarks/dora.py [--sams-steps 20] [--sams-reps 8]

- `ea_n_seconds_k1280_n10000`: standardisation, n-AMS (n = 50 blocks of d = 200, the paper's Table 1
  setting), the RAV means and both EA_n modes for an activation matrix of 10,000 images x 1,280
  representations (MobileNetV2's last conv layer, mean-pooled). The matrix is drawn from a gamma
  distribution (post-ReLU-like, non-negative): the cost depends on the shape only. Also k = 2048
  (`ea_n_seconds_k2048_n10000`), the three baselines at k = 1280, and the vectorised pair-wise EA
  against Def. 5 written as a Python double loop over pairs at k = 256 (measured side by side).
- `sams_seconds_per_representation`: feature visualisation (DORA Def. 6) of the real ImageNet
  MobileNetV2's `features.18` channels at 224x224, `--sams-reps` representations x 1 signal batched
  together, `--sams-steps` steps, scaled to the paper's m = 500 steps and n = 3 signals; the
  projection for k = 2048 representations on this CPU, and on a GPU from an assumed throughput
  ratio (no GPU is available here: stated as an assumption, not a measurement).

Writes benchmarks/results/dora.json.
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

PAPER_STEPS, PAPER_SIGNALS = 500, 3
# Assumed forward+backward throughput of an H100 over this 2-core CPU for MobileNetV2 at 224x224 in
# fp32 (a rough order of magnitude: ~2,000 vs ~15 images/s); a projection, not a measurement.
ASSUMED_GPU_SPEEDUP = 130


def ea_n_seconds(k: int, n_images: int = 10_000, n: int = 50, d: int = 200) -> float:
    from conceptscope.methods.dora import extreme_activation_distance, natural_ams, rav_means, standardize

    acts = np.random.default_rng(0).gamma(0.5, size=(n_images, k)).astype(np.float32)
    start = time.perf_counter()
    std = standardize(acts)
    mu = rav_means(std, natural_ams(std, n, d, seed=0))
    for mode in ("pairwise", "layerwise"):
        extreme_activation_distance(mu, mode)
    return time.perf_counter() - start


def loop_vs_vectorised(k: int = 256) -> tuple[float, float, float]:
    """Seconds of Def. 5 as a double loop over pairs vs the vectorised pair-wise EA, and their max difference."""
    from conceptscope.methods.dora import extreme_activation_distance

    mu = np.random.default_rng(1).normal(size=(k, k))
    start = time.perf_counter()
    loop = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            if i != j:
                a, b = np.array([mu[i, i], mu[i, j]]), np.array([mu[j, i], mu[j, j]])
                loop[i, j] = np.sqrt(max(0.0, 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))) / np.sqrt(2)
    loop_seconds = time.perf_counter() - start
    start = time.perf_counter()
    vector = extreme_activation_distance(mu, "pairwise")
    return loop_seconds, time.perf_counter() - start, float(np.abs(loop - vector).max())


def baseline_seconds(k: int = 1280, n_images: int = 10_000) -> dict[str, float]:
    from conceptscope.methods.dora import minkowski_distance, pearson_distance, spearman_distance, standardize

    std = standardize(np.random.default_rng(2).gamma(0.5, size=(n_images, k)))
    out = {}
    for name, fn in (("minkowski_p1", minkowski_distance), ("pearson", pearson_distance), ("spearman", spearman_distance)):
        start = time.perf_counter()
        fn(std)
        out[f"{name}_seconds_k{k}_n{n_images}"] = round(time.perf_counter() - start, 2)
    return out


def sams_seconds(steps: int, reps: int) -> dict[str, float]:
    from conceptscope.methods.feature_vis import synthetic_ams
    from conceptscope.models import pretrained_model, resolve_preprocess

    model = pretrained_model("mobilenet_v2")
    pre = resolve_preprocess("mobilenet_v2", {})
    start = time.perf_counter()
    synthetic_ams(model, "features.18", list(range(reps)), n_signals=1, steps=steps, image_shape=(3, 224, 224),
                  mean=pre["mean"], std=pre["std"], batch_size=reps, seed=0, progress=False)
    seconds = time.perf_counter() - start
    per_step_signal = seconds / (steps * reps)
    per_rep = per_step_signal * PAPER_STEPS * PAPER_SIGNALS
    return {
        "sams_measured_seconds": round(seconds, 2),
        "sams_measured_steps": steps,
        "sams_measured_representations": reps,
        "sams_seconds_per_signal_step": round(per_step_signal, 4),
        "sams_seconds_per_representation": round(per_rep, 1),
        "sams_cpu_hours_k2048": round(per_rep * 2048 / 3600, 1),
        "sams_gpu_hours_k2048_projected": round(per_rep * 2048 / 3600 / ASSUMED_GPU_SPEEDUP, 2),
        "sams_assumed_gpu_speedup": ASSUMED_GPU_SPEEDUP,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sams-steps", type=int, default=20, help="optimisation steps timed")
    parser.add_argument("--sams-reps", type=int, default=8, help="representations optimised together")
    args = parser.parse_args()
    from conceptscope.utils import configure_process

    configure_process(2)
    torch.manual_seed(0)
    figures = {"ea_n_seconds_k1280_n10000": round(ea_n_seconds(1280), 2), "ea_n_seconds_k2048_n10000": round(ea_n_seconds(2048), 2)}
    loop, vector, diff = loop_vs_vectorised()
    figures |= {"pairwise_loop_seconds_k256": round(loop, 3), "pairwise_vectorised_seconds_k256": round(vector, 4),
                "pairwise_vectorised_speedup": round(loop / vector, 1), "pairwise_max_abs_diff": diff}
    figures |= baseline_seconds()
    figures |= sams_seconds(args.sams_steps, args.sams_reps)
    figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    write_results("dora", figures)


if __name__ == "__main__":
    main()
