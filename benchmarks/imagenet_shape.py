"""Benchmark `imagenet_shape`: class concepts and class contrasting through Snakemake at 1000 classes, stage by stage.

    .venv/bin/python benchmarks/imagenet_shape.py                                   # 1000 classes, 3 train + 1 val each
    .venv/bin/python benchmarks/imagenet_shape.py --classes 20 --per-class 2        # a small shape: minutes
    .venv/bin/python benchmarks/imagenet_shape.py [--cores 2] [--nmf-images 500] [--keep-results]

The real pipeline (configs/imagenet-shape.yaml: the real ImageNet MobileNetV2 at features.18, every
stage of concepts and contrast) on an ImageFolder tree with one folder per ImageNet-1k wnid under
train/ and val/, built once under benchmarks/.cache/ from symlinks to real images of ../shared/data:
each Imagenette or Tiny ImageNet class gets its own images, every other class leftover images of those
sets (Imagenette's 224 px first, then Tiny ImageNet's 64 px), so most labels are not semantically right
and the config takes images by label (`by: label`) so that every class has its images. The tree has
`--per-class` train and `--val-per-class` val images per class; `--classes K < 1000` takes K wnids evenly
spaced over the 1000 (its own tree, benchmarks/.cache/imagenet-shape-<K>x<train>+<val>).

Measured, per Snakemake job (a wrapper, not Snakemake's `benchmark:` directive: the crop-vector and
index rules are eligible for between-workflow caching, which Snakemake does not allow together with a
benchmark file): this script starts Snakemake and polls its process tree every 0.2 s; a job is the
process that runs a Snakemake-generated script and holds its rule's log open
(results/logs/<rule>/...), its seconds run from the process's start to the last poll that saw it, its peak RSS is the kernel's high-water mark (VmHWM)
of that process. Every compute job is given all `--cores` (the config's `threads`), so jobs run one
after another and each stage's time is its own. Items per stage (images, crops, classes, pairs) are
counted from the run's outputs; a stage's per-item rate is its seconds over its items, start-up
(Python, torch, model) included, which at small shapes dominates the rate.

Projection to the full ImageNet run (1,281,167 training + 50,000 val images, 11.5M crops, S = 500
concept images and 60 contrast images per class, 1000 classes, 499,500 pairs) on one GPU: each stage's
measured per-item rate times the full run's items, on this CPU; stages that run the network (forward
or DeepLift passes) and the pair training divided by a CPU -> GPU factor: the GPU's assumed sustained
FLOP rate over the rate this CPU reached in that stage (FLOPs per item counted with torch's
FlopCounterMode on one image), but never below the host's data loading for it (decoding and
transforming the images in the job's one process, timed here per image); every other stage (image
checks, NMF, FAISS build, figures, tables) stays at this CPU's rate. The NMF at the paper's S = 500 is timed here on real scored vectors (DeepLift
over `--nmf-images` Imagenette training images of one class) since the tree has only a few images per
class. The FAISS index at 11.5M vectors is IVF-PQ, not the exact index of the small crop pool: its
build and search time come from benchmarks/results/index_11m.json (measured at that size on this
CPU) where it exists, else from index.json (1.2M vectors), scaled. The load average before and after
the run is recorded: timings on a CPU that other work shares are not this machine's.
Writes benchmarks/results/imagenet_shape.json (imagenet_shape_<K>.json below 1000 classes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache"
SHARED = ROOT.parent / "shared" / "data"
IMAGENETTE = SHARED / "imagenette"
TINY = SHARED / "tiny-imagenet-200"
CONFIG = ROOT / "configs" / "imagenet-shape.yaml"
MODEL, LAYER = "mobilenet_v2", "features.18"

# the full ImageNet-1k run the projection is for (the concepts paper's setting, App. B)
FULL = {"train_images": 1_281_167, "val_images": 50_000, "classes": 1000, "grid_cells": 9, "concept_images_per_class": 500,
        "contrast_images_per_class": 60, "val_images_per_class": 50}
FULL["crops"] = FULL["train_images"] * FULL["grid_cells"]
FULL["pairs"] = FULL["classes"] * (FULL["classes"] - 1) // 2
PAPER_GPU_HOURS = {"extract_concepts": 15, "concept_crops": 14, "extract_contrast_vectors": 3, "train_contrast_hyperplanes": 35}

# The GPU the projection assumes, and how much of its FP32 peak a stage sustains (assumptions, not
# measurements: no GPU here). MobileNetV2's depthwise convolutions are memory-bound: 10% of peak is
# about 6,700 GFLOP/s, ~11,000 forward passes per second at 224 px. The pair training is dense
# matrix products (X w and X^T r over 20,000 pairs at once): half of the FP32 peak.
GPUS = {"h100": 67_000.0, "rtx2080ti": 13_450.0}  # FP32 (non-tensor-core) peak GFLOP/s: H100 SXM, the paper's RTX 2080 Ti
GPU_UTILISATION = {"network": 0.10, "dense": 0.50}


# ---- the ImageFolder tree -----------------------------------------------------------------------


def class_subset(n_classes: int) -> list[str]:
    """`n_classes` ImageNet-1k wnids evenly spaced over the class indices (all 1000 for 1000)."""
    from conceptscope.data import imagenet_wnids

    wnids = imagenet_wnids()
    if not 1 <= n_classes <= len(wnids):
        raise SystemExit(f"--classes must be 1..{len(wnids)}, got {n_classes}")
    return [wnids[i] for i in np.linspace(0, len(wnids), n_classes, endpoint=False).astype(int)]


def real_images() -> tuple[dict[str, dict[str, list[Path]]], list[Path]]:
    """The real images by wnid ({wnid: {"train": [...], "val": [...]}}) and all of them in leftover order
    (Imagenette train, Imagenette val, Tiny ImageNet val: the 224 px photos first)."""
    for path in (IMAGENETTE / "train", IMAGENETTE / "val", TINY / "val" / "val_annotations.txt"):
        if not path.exists():
            raise SystemExit(f"real images missing: {path} (../shared/data beside the project root)")
    own: dict[str, dict[str, list[Path]]] = {}
    ordered = []
    for split in ("train", "val"):
        for folder in sorted(p for p in (IMAGENETTE / split).iterdir() if p.is_dir()):
            files = sorted(f for f in folder.iterdir() if f.suffix.lower() in (".jpeg", ".jpg", ".png"))
            own.setdefault(folder.name, {"train": [], "val": []})[split] += files
            ordered += files
    tiny = pd.read_csv(TINY / "val" / "val_annotations.txt", sep="\t", header=None, usecols=[0, 1], names=["file", "wnid"])
    for wnid, group in tiny.groupby("wnid", sort=True):
        files = [TINY / "val" / "images" / f for f in sorted(group["file"])]
        own.setdefault(wnid, {"train": [], "val": []})
        own[wnid]["val"] += files[:10]  # Tiny ImageNet has only val images: its first 10 serve as val, the rest as train
        own[wnid]["train"] += files[10:]
        ordered += files
    return own, ordered


def build_tree(out: Path, wnids: list[str], per_class: int, val_per_class: int) -> dict:
    """train/<wnid>/ and val/<wnid>/ of symlinks to real images under `out` (built once, atomically)."""
    marker = out / "tree.json"
    if marker.exists():
        return json.loads(marker.read_text())
    own, ordered = real_images()
    taken = {f for w in wnids for split, n in (("train", per_class), ("val", val_per_class)) for f in own.get(w, {}).get(split, [])[:n]}
    leftovers = iter([f for f in ordered if f not in taken] * (1 + (per_class + val_per_class) * len(wnids) // len(ordered)))
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    counts = {"own": 0, "leftover": 0}
    for wnid in wnids:
        for split, n in (("train", per_class), ("val", val_per_class)):
            folder = tmp / split / wnid
            folder.mkdir(parents=True)
            mine = own.get(wnid, {}).get(split, [])[:n]
            counts["own"] += len(mine)
            counts["leftover"] += n - len(mine)
            for i, source in enumerate(mine + [next(leftovers) for _ in range(n - len(mine))]):
                (folder / f"{i:03d}_{source.name}").symlink_to(source.resolve())
    info = {"classes": len(wnids), "per_class": per_class, "val_per_class": val_per_class, "images": counts["own"] + counts["leftover"],
            "own_class_images": counts["own"], "leftover_images": counts["leftover"]}
    (tmp / "tree.json").write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return info


def tree_dir(n_classes: int, per_class: int, val_per_class: int) -> Path:
    if (n_classes, per_class, val_per_class) == (1000, 3, 1):
        return CACHE / "imagenet-shape"  # the config's own root
    return CACHE / f"imagenet-shape-{n_classes}x{per_class}+{val_per_class}"


def run_config(tree: Path, results: Path, cores: int) -> dict:
    """configs/imagenet-shape.yaml with this tree, these results and `cores` threads per job (jobs one at a time)."""
    config = yaml.safe_load(CONFIG.read_text())
    config["datasets"]["imagenet_shape"]["root"] = str(tree)
    config["results"] = str(results)
    config["threads"] = cores
    return config


def targets(results: Path) -> list[str]:
    """The concepts and contrast tables: every stage of both methods for the config's one model."""
    return [str(results / "tables" / "concepts_prediction_test.csv"), str(results / "tables" / "contrast_shifting_test.csv")]


# ---- per-job time and memory --------------------------------------------------------------------


def peak_rss_mb(pid: int) -> float:
    """The process's high-water mark of resident memory (VmHWM), MB; 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class JobMonitor(threading.Thread):
    """Polls a Snakemake process tree for its jobs: a job is a process running one of Snakemake's
    generated scripts (.snakemake/scripts/tmp<id>.<script>.py); its rule and wildcards come from the
    log file it holds open (results/logs/<rule>/<wildcards>.log: concept_crops.py serves two rules),
    else from the script's name. Per job: start (the process's), end (the last poll that saw it), peak
    RSS (VmHWM at that poll), and the offset of its first log record (start-up: imports, model, data)."""

    def __init__(self, pid: int, started: float, logs: Path, interval: float = 0.2):
        import psutil

        super().__init__(daemon=True)
        self.pid, self.logs, self.interval = pid, str(logs.resolve()) + os.sep, interval
        # process start times count from the boot time, which Linux gives in whole seconds: calibrate
        # them on Snakemake's own start (`started`: just before it was spawned)
        self.clock_offset = psutil.Process(pid).create_time() - started
        self.procs: dict[int, dict] = {}
        self.snakemake_peak_mb = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        import psutil

        main = psutil.Process(self.pid)
        while not self.done.is_set():
            try:
                children = main.children(recursive=True)
                self.snakemake_peak_mb = max(self.snakemake_peak_mb, peak_rss_mb(self.pid))
            except psutil.Error:
                break
            now = time.time()
            for proc in children:
                try:
                    record = self.procs.get(proc.pid)
                    if record is None:
                        scripts = [arg for arg in proc.cmdline() if f".snakemake{os.sep}scripts{os.sep}" in arg]
                        if not scripts:
                            continue
                        script = Path(scripts[0]).name.split(".", 1)[1].removesuffix(".py")  # tmp<id>.<script>.py
                        record = self.procs[proc.pid] = {"start": proc.create_time() - self.clock_offset, "script": script, "log": None, "peak_mb": 0.0}
                    if record["log"] is None:
                        logs = [f.path for f in proc.open_files() if f.path.startswith(self.logs)]
                        record["log"] = logs[0] if logs else None
                    record["peak_mb"] = max(record["peak_mb"], peak_rss_mb(proc.pid))
                    record["end"] = now
                except psutil.Error:
                    continue
            time.sleep(self.interval)

    def jobs(self) -> pd.DataFrame:
        rows = []
        for record in self.procs.values():
            job, startup = record["script"], None
            if record["log"]:
                relative = Path(record["log"][len(self.logs) :])
                job = str(relative.with_suffix(""))
                startup = first_record_time(Path(record["log"]))
                startup = None if startup is None else startup - record["start"]
            rows.append({"rule": Path(job).parts[0], "job": job, "start": record["start"], "end": record["end"],
                         "seconds": record["end"] - record["start"], "peak_rss_mb": record["peak_mb"], "startup_seconds": startup})
        return pd.DataFrame(rows, columns=["rule", "job", "start", "end", "seconds", "peak_rss_mb", "startup_seconds"])


def first_record_time(log: Path) -> float | None:
    """Epoch seconds of a job log's first record (`YYYY-mm-dd HH:MM:SS,mmm ...`, local time)."""
    from datetime import datetime

    for line in log.read_text(errors="replace").splitlines():
        try:
            return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
    return None


def run_pipeline(workdir: Path, config: dict, cores: int) -> tuple[pd.DataFrame, dict]:
    """Snakemake on `config` in `workdir` for the concepts and contrast tables; per-job figures and the run's."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    results = Path(config["results"])
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--configfile", "config.yaml", "--cores", str(cores),
           "--", *targets(results)]
    started = time.perf_counter()
    with open(workdir / "snakemake.log", "w") as log:
        spawned = time.time()
        process = subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
        monitor = JobMonitor(process.pid, spawned, results / "logs")
        monitor.start()
        code = process.wait()
        monitor.done.set()
        monitor.join()
    wall = time.perf_counter() - started
    if code:
        raise SystemExit(f"snakemake failed (exit {code}); see {workdir / 'snakemake.log'}")
    jobs = monitor.jobs()
    return jobs, {"snakemake_seconds": wall, "snakemake_peak_rss_mb": monitor.snakemake_peak_mb,
                  "snakemake_overhead_seconds": wall - jobs["seconds"].sum()}


# ---- items per stage, from the run's outputs -----------------------------------------------------


def stage_items(results: Path) -> dict[str, dict]:
    """What each stage processed in this run: {rule: {"item": name, "n": count, ...}}."""
    import zarr

    ds = "imagenet_shape"
    meta = json.loads((results / "data" / ds / "meta.json").read_text())
    n_images = sum(meta["counts"].values())
    predicted = len(pd.read_parquet(results / "predictions" / ds / f"{MODEL}.parquet", columns=["image_id"]))
    crops = zarr.open_group(str(results / "crops" / ds / MODEL / f"{LAYER}.zarr"), mode="r")["vectors"].shape[0]
    concepts = pd.read_csv(results / "concepts" / ds / MODEL / LAYER / "classes.csv")
    concepts = concepts[concepts["n_concepts"] == concepts["n_concepts"].max()]
    vectors = pd.read_csv(results / "contrast" / ds / MODEL / LAYER / "vectors.csv")
    pairs = len(pd.read_parquet(results / "contrast" / ds / MODEL / LAYER / "pairs.parquet"))
    shifting = pd.read_csv(results / "contrast" / ds / MODEL / LAYER / "shifting" / "pairs.csv")
    contrast_pairs = pd.read_csv(results / "contrast" / ds / MODEL / LAYER / "concepts" / "pairs.csv")
    n_classes = int(concepts["class"].nunique())
    return {
        "prepare_dataset": {"item": "image", "n": n_images},
        "import_model": {"item": "model", "n": 1},
        "predict": {"item": "image", "n": predicted},
        "extract_crop_vectors": {"item": "crop", "n": crops},
        "build_crop_index": {"item": "crop", "n": crops},
        "extract_concepts": {"item": "image", "n": int(concepts["n_images"].sum()), "classes": n_classes,
                             "scored_vectors_per_image": float(concepts["n_vectors"].sum() / max(concepts["n_images"].sum(), 1))},
        # the crops, tests and figure of a class are made where it has concepts (a class whose images are not
        # of it can have no position of positive attribution): the rate is per class with concepts
        "concept_crops": {"item": "class", "n": int((concepts["status"] == "ok").sum()), "classes": n_classes},
        "summarize_concepts": {"item": "class", "n": n_classes},
        "extract_contrast_vectors": {"item": "image", "n": int(vectors["n_images"].sum()),
                                     "cutoff_vectors_per_image": float(vectors["n_vectors"].sum() / max(vectors["n_images"].sum(), 1))},
        "train_contrast_hyperplanes": {"item": "pair", "n": pairs, "vectors": int(vectors["n_vectors"].sum()), "classes": int((vectors["n_vectors"] > 0).sum())},
        "run_shifting_test": {"item": "pair_image", "n": int(shifting["n_images"].sum()), "pairs": len(shifting)},
        "extract_contrast_concepts": {"item": "image", "n": int(contrast_pairs["n_images"].sum()), "pairs": len(contrast_pairs)},
        "contrast_crops": {"item": "class_pair", "n": int((contrast_pairs["status"] == "ok").sum()), "pairs": len(contrast_pairs)},
        "summarize_contrast": {"item": "class_pair", "n": len(contrast_pairs)},
    }


# ---- FLOPs, the NMF at S = 500, the projection ---------------------------------------------------


def flops_per_image() -> dict[str, float]:
    """MobileNetV2's FLOPs per 224 px image: a forward pass, and a DeepLift attribution at features.18 (white baseline)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from conceptscope.attribution import layer_attribution
    from conceptscope.models import pretrained_model, resolve_preprocess

    model = pretrained_model(MODEL)
    image = torch.rand(1, 3, 224, 224)
    with FlopCounterMode(display=False) as forward, torch.no_grad():
        model(image)
    with FlopCounterMode(display=False) as deeplift:
        layer_attribution(model, image, LAYER, torch.tensor([0]), "deeplift", preprocess=resolve_preprocess(MODEL, {}))
    return {"forward": float(forward.get_total_flops()), "deeplift": float(deeplift.get_total_flops())}


def tench_dataset():
    """The Imagenette tench training images (one real ImageNet class, 224 px JPEGs), prepared once."""
    from conceptscope.config import resolve_config
    from conceptscope.data import PreparedDataset, prepare_dataset

    out = CACHE / "imagenet-shape-tench"
    if not (out / "manifest.parquet").exists():
        tree = CACHE / "imagenet-shape-tench-tree" / "train" / "n01440764"  # one class: a symlink to its folder
        if not tree.exists():
            tree.parent.mkdir(parents=True, exist_ok=True)
            tree.symlink_to((IMAGENETTE / "train" / "n01440764").resolve())
        spec = {"kind": "imagefolder", "root": str(tree.parent.parent), "train_dir": "train", "test_dir": None, "label_map": "imagenet"}
        prepare_dataset(resolve_config({"datasets": {"tench": spec}})["datasets"]["tench"], out, "imagenet-shape-tench")
    return PreparedDataset(out)


def nmf_at_paper_s(n_images: int, threads: int) -> dict:
    """Seconds of one class's NMF (n = 4) on real DeepLift-scored vectors at features.18 of the first
    `n_images` Imagenette tench training images (the paper's S = 500), and of the first 60 of them (a
    contrast concept's NMF sees about as many vectors); the DeepLift pass's seconds per image."""
    import torch

    from conceptscope.data import ImageDataset
    from conceptscope.methods.concepts import ConceptExtractor, attribution_weighted_vectors, iter_class_samples
    from conceptscope.models import build_transform, pretrained_model, resolve_preprocess

    torch.set_num_threads(threads)
    data = tench_dataset()
    rows = data.manifest.head(n_images)
    model = pretrained_model(MODEL)
    preprocess = resolve_preprocess(MODEL, {})
    started = time.perf_counter()
    # batches of 8, as the config's (32 would peak at ~14 GB here)
    sample = next(iter_class_samples(model.eval(), ImageDataset(data, rows, build_transform(preprocess)), [0] * len(rows), LAYER,
                                     batch_size=8, preprocess=preprocess, progress=False))
    deeplift_seconds = time.perf_counter() - started
    vectors, positions = attribution_weighted_vectors(sample.activations, sample.attributions)
    timed = {}
    for name, subset in (("s", vectors), ("contrast", vectors[positions[:, 0] < FULL["contrast_images_per_class"]])):
        started = time.perf_counter()
        ConceptExtractor(4, seed=0).fit_vectors(subset)
        timed[name] = (len(subset), time.perf_counter() - started)
    return {"images": len(rows), "vectors": timed["s"][0], "nmf_seconds": timed["s"][1], "deeplift_seconds_per_image": deeplift_seconds / len(rows),
            "contrast_images": min(len(rows), FULL["contrast_images_per_class"]), "contrast_vectors": timed["contrast"][0],
            "contrast_nmf_seconds": timed["contrast"][1]}


def host_loading(n_images: int = 100) -> dict[str, float]:
    """Seconds per image that the jobs' data loading takes on the host, one process (their DataLoaders
    have num_workers=0): decode + the model's transform (`image`), and decode + the 3x3 crops each
    resized to 224 px and normalised (`crops`, the crop-vector stage). On Imagenette's 224 px JPEGs;
    ImageNet's own average about 400x350, so decoding them costs more."""
    import torch

    from conceptscope.crops import _CropDataset  # the crop-vector stage's own dataset
    from conceptscope.data import ImageDataset
    from conceptscope.models import build_transform, resolve_preprocess

    torch.set_num_threads(1)
    data = tench_dataset()
    rows = data.manifest.head(n_images)
    preprocess = resolve_preprocess(MODEL, {})
    timed = {}
    for name, dataset in (("image", ImageDataset(data, rows, build_transform(preprocess))),
                          ("crops", _CropDataset(data, rows, preprocess, [3]))):
        started = time.perf_counter()
        for i in range(len(dataset)):
            dataset[i]
        timed[name] = (time.perf_counter() - started) / len(rows)
    return timed


def crop_index_at_full_scale() -> dict:
    """Build seconds and search ms per concept of the crop index over the full run's 11.5M crops, on
    this CPU: measured at that size by benchmarks/index_11m.py where its results exist, else
    index.json's 1.2M-vector index scaled (build linear in N; a query scans nprobe lists of N / nlist
    vectors, nlist ~ 4 sqrt(N) a power of two)."""
    measured = RESULTS_DIR / "index_11m.json"
    if measured.exists():
        index = json.loads(measured.read_text())
        scale = FULL["crops"] / index["n_vectors"]
        return {"build_seconds": index["build_seconds"] * scale, "query_ms_per_concept": index["query_ms_per_concept"],
                "source": f"index_11m.json: measured at {index['n_vectors']:,} vectors",
                "note": f"the pipeline's large-N index: index_11m.json's build of {index['n_vectors']:,} vectors on this CPU"
                        + (f", x {scale:.2f}" if abs(scale - 1) > 0.01 else "")}
    index = json.loads((RESULTS_DIR / "index.json").read_text())
    nlist = 2 ** int(round(np.log2(4 * np.sqrt(FULL["crops"]))))
    per_list = (FULL["crops"] / nlist) / (index["n_vectors"] / index["nlist"])
    return {"build_seconds": index["build_seconds"] * FULL["crops"] / index["n_vectors"], "query_ms_per_concept": index["query_ms_index"] * per_list,
            "source": f"index.json's {index['query_ms_index']} ms at {index['n_vectors']:,} vectors x {per_list:.1f} (vectors per list)",
            "note": f"IVF-PQ: index.json's build of {index['n_vectors']:,} vectors on this CPU, scaled linearly"}


def projection(stages: dict[str, dict], flops: dict[str, float], nmf: dict | None, loading: dict[str, float] | None = None) -> dict[str, dict]:
    """Per stage of the full ImageNet run: its items, seconds on this CPU (the measured rate x the items),
    and on one GPU (network and dense stages: divided by the CPU -> GPU factor, but not below the host's
    data loading, `loading` seconds per image in one process; the rest: as on this CPU)."""
    S, S_contrast, K = FULL["concept_images_per_class"], FULL["contrast_images_per_class"], FULL["classes"]
    index = crop_index_at_full_scale()
    contrast_1000 = json.loads((RESULTS_DIR / "contrast_1000.json").read_text())
    out = {}

    def add(rule, full_items, cpu_seconds, runs_on, note, flops_per_item=None, cpu_gflops=None, loading_seconds=0.0):
        entry = {"full_items": full_items, "cpu_seconds": cpu_seconds, "runs_on": runs_on, "note": note}
        if runs_on in GPU_UTILISATION:
            stage = stages[rule]
            cpu_gflops = cpu_gflops or flops_per_item * stage["n"] / stage["seconds"] / 1e9
            entry["cpu_gflops_per_second"] = cpu_gflops
        if loading_seconds:
            entry["host_loading_seconds"] = loading_seconds
        for gpu, peak in GPUS.items():
            factor = peak * GPU_UTILISATION[runs_on] / cpu_gflops if runs_on in GPU_UTILISATION else 1.0
            entry[f"gpu_factor_{gpu}"] = factor
            entry[f"{gpu}_seconds"] = max(cpu_seconds / factor, loading_seconds)
            entry[f"{gpu}_bound"] = "host data loading" if loading_seconds > cpu_seconds / factor else ("GPU" if factor != 1.0 else "host CPU")
        out[rule] = entry

    loading = loading or {"image": 0.0, "crops": 0.0}

    def cpu_seconds(rule, full_items):
        return stages[rule]["seconds"] / max(stages[rule]["n"], 1) * full_items

    images = FULL["train_images"] + FULL["val_images"]
    add("prepare_dataset", images, cpu_seconds("prepare_dataset", images), "cpu", "every image decoded once (a check of the files)")
    add("import_model", 1, stages["import_model"]["seconds"], "cpu", "one weight file")
    add("predict", images, cpu_seconds("predict", images), "network", "a forward pass per image", flops["forward"],
        loading_seconds=loading["image"] * images)
    add("extract_crop_vectors", FULL["crops"], cpu_seconds("extract_crop_vectors", FULL["crops"]), "network",
        "a forward pass per crop (3x3 grid of every training image, each crop resized to 224 px)", flops["forward"],
        loading_seconds=loading["crops"] * FULL["train_images"])
    # 11.5M vectors: IVF-PQ (index.type auto above exact_below), not the run's exact index
    add("build_crop_index", FULL["crops"], index["build_seconds"], "cpu", index["note"])
    add("extract_concepts", S * K, cpu_seconds("extract_concepts", S * K), "network",
        f"DeepLift per image, S = {S} per class (the stage's measured rate per image; its NMF at a few images per class is in it)",
        flops["deeplift"], loading_seconds=loading["image"] * S * K)
    if nmf:
        add("extract_concepts_nmf_at_s500", K, nmf["nmf_seconds"] * K, "cpu",
            f"sklearn NMF (n = 4) of one class at S = {nmf['images']} ({nmf['vectors']:,} scored vectors), timed here on real vectors")
    queries = 2 * 4  # two variants (any crop; excluding the class) x n = 4 concepts
    for rule in ("concept_crops", "contrast_crops"):
        add(rule, K, cpu_seconds(rule, K) + K * queries * index["query_ms_per_concept"] / 1e3, "cpu",
            f"per class: the measured rate (searches, stitched prediction tests, figure) + {queries} concept searches of "
            f"{index['query_ms_per_concept']:.1f} ms at 11.5M crops ({index['source']})")
    add("summarize_concepts", K, cpu_seconds("summarize_concepts", K), "cpu", "tables and the sweep figure")
    add("extract_contrast_vectors", S_contrast * K, cpu_seconds("extract_contrast_vectors", S_contrast * K), "network",
        f"DeepLift per image, {S_contrast} per class", flops["deeplift"], loading_seconds=loading["image"] * S_contrast * K)
    # pair training FLOPs: 100 epochs x (forward x.w + backward X^T r) = 4 C (n_a + n_b) per epoch and pair
    train = stages["train_contrast_hyperplanes"]
    per_image = stages["extract_contrast_vectors"]["cutoff_vectors_per_image"]
    flops_here = 100 * 4 * 1280 * train["vectors"] * (train["classes"] - 1)  # each class's vectors are in classes - 1 pairs
    flops_full = 100 * 4 * 1280 * (S_contrast * per_image * K) * (K - 1)
    # the better of this run's rate and contrast_1000.json's (all 499,500 pairs on this CPU, 1,490 vectors per class):
    # a small run's rate is mostly start-up
    rate = max(flops_here / train["seconds"] / 1e9, contrast_1000["allpairs_gflops_per_second"])
    add("train_contrast_hyperplanes", FULL["pairs"], flops_full / rate / 1e9, "dense",
        f"{flops_full / 1e12:,.0f} TFLOP: 100 full-batch epochs per pair, {per_image:.1f} cutoff vectors per image measured here x "
        f"{S_contrast} images per class; CPU rate the better of this run's and contrast_1000.json's", cpu_gflops=rate)
    pair_images = K * 10 * 5 * FULL["val_images_per_class"]
    add("run_shifting_test", pair_images, cpu_seconds("run_shifting_test", pair_images), "cpu",
        "per start class 10 targets x 5 repeats, each over the class's 50 val images at 10 offsets (the network's tail from "
        "the layer, and one forward pass per image: not sped up here)")
    add("extract_contrast_concepts", S_contrast * K, cpu_seconds("extract_contrast_concepts", S_contrast * K), "network",
        f"a forward pass over class A's {S_contrast} images per pair (1000 pairs: each class against its most similar)", flops["forward"],
        loading_seconds=loading["image"] * S_contrast * K)
    if nmf:
        add("extract_contrast_concepts_nmf_at_60", K, nmf["contrast_nmf_seconds"] * K, "cpu",
            f"sklearn NMF (n = 4) of {nmf['contrast_vectors']:,} vectors ({nmf['contrast_images']} images) per pair, timed here")
    add("summarize_contrast", K, cpu_seconds("summarize_contrast", K), "cpu", "tables and the shifting figure")
    return out


def compared_with_paper(projected: dict[str, dict]) -> dict[str, dict]:
    """The paper's four timed steps (App. B) beside this pipeline's stages that do that work, projected hours."""
    steps = {
        "extract_concepts": ["extract_concepts", "extract_concepts_nmf_at_s500"],
        "concept_crops": ["concept_crops", "extract_crop_vectors", "build_crop_index"],  # the paper computes the crops in this step
        "extract_contrast_vectors": ["extract_contrast_vectors"],
        "train_contrast_hyperplanes": ["train_contrast_hyperplanes"],
    }
    return {step: {"paper_rtx2080ti_hours": PAPER_GPU_HOURS[step], "stages": rules,
                   **{f"projected_{gpu}_hours": sum(projected[r][f"{gpu}_seconds"] for r in rules if r in projected) / 3600 for gpu in GPUS}}
            for step, rules in steps.items()}


def projected_figures(projected: dict) -> dict:
    return {
        "projection": projected,
        "projected_cpu_hours_full": sum(p["cpu_seconds"] for p in projected.values()) / 3600,
        "projected_gpu_hours_full_h100": sum(p["h100_seconds"] for p in projected.values()) / 3600,
        "projected_gpu_hours_full_rtx2080ti": sum(p["rtx2080ti_seconds"] for p in projected.values()) / 3600,
        "compared_with_paper": compared_with_paper(projected),
    }


def reproject(topic: str) -> None:
    """The stored run's projection recomputed from its measured stages, FLOPs, NMF and loading figures."""
    path = RESULTS_DIR / f"{topic}.json"
    figures = json.loads(path.read_text())
    projected = projection(figures["stages"], figures["flops_per_image"], figures["nmf_at_paper_s"], figures["host_loading_seconds_per_image"])
    figures.update(projected_figures(projected))
    figures.pop("machine", None)
    write_results(topic, figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--per-class", type=int, default=3, help="training images per class")
    parser.add_argument("--val-per-class", type=int, default=1, help="val images per class")
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="cores, and threads of each job (jobs run one at a time)")
    parser.add_argument("--nmf-images", type=int, default=500, help="S of the NMF timing at the paper's scale (0: skip)")
    parser.add_argument("--keep-results", action="store_true", help="keep an earlier run's results (default: run from nothing)")
    parser.add_argument("--note", default="", help="a remark stored with the figures (e.g. what else ran on the machine)")
    parser.add_argument("--reproject", action="store_true",
                        help="recompute only the projection of the stored results from their measured stages (after index_11m.json or contrast_1000.json change)")
    args = parser.parse_args()
    if args.reproject:
        return reproject("imagenet_shape" if args.classes == 1000 else f"imagenet_shape_{args.classes}")

    tree = tree_dir(args.classes, args.per_class, args.val_per_class)
    started = time.perf_counter()
    tree_info = build_tree(tree, class_subset(args.classes), args.per_class, args.val_per_class)
    tree_seconds = time.perf_counter() - started
    workdir = CACHE / f"{tree.name}-run"
    results = workdir / "results"
    if not args.keep_results:
        shutil.rmtree(results, ignore_errors=True)
    load_before = os.getloadavg()[0]
    jobs, run = run_pipeline(workdir, run_config(tree, results, args.cores), args.cores)
    load_after = os.getloadavg()[0]
    jobs.to_csv(workdir / "jobs.csv", index=False)
    stages = stage_items(results)
    for rule, group in jobs.groupby("rule"):
        stage = stages.setdefault(rule, {"item": "job", "n": len(group)})
        stage.update(jobs=len(group), seconds=float(group["seconds"].sum()), peak_rss_mb=float(group["peak_rss_mb"].max()),
                     startup_seconds=float(group["startup_seconds"].sum()) if group["startup_seconds"].notna().all() else None)
        stage["seconds_per_item"] = stage["seconds"] / max(stage["n"], 1)
    missing = [rule for rule, stage in stages.items() if "seconds" not in stage]
    if missing:  # e.g. --keep-results with finished stages: no rates for them
        raise SystemExit(f"no job of {missing} was seen running; run again without --keep-results")
    flops = flops_per_image()
    nmf = nmf_at_paper_s(args.nmf_images, args.cores) if args.nmf_images else None
    loading = host_loading()
    projected = projection(stages, flops, nmf, loading)
    figures = {
        "n_classes": args.classes, "train_images_per_class": args.per_class, "val_images_per_class": args.val_per_class,
        "tree": tree_info, "tree_seconds": tree_seconds, "cores": args.cores, "note": args.note,
        "load_average_1min": {"before": load_before, "after": load_after},
        "config": "configs/imagenet-shape.yaml (root, results and threads set by this script)",
        **run,
        "stages": stages,
        "flops_per_image": flops,
        "nmf_at_paper_s": nmf,
        "host_loading_seconds_per_image": loading,
        "full_run": FULL,
        "gpu_assumptions": {"fp32_peak_gflops": GPUS, "sustained_share_of_peak": GPU_UTILISATION,
                            "note": "no GPU here: a stage that runs the network (or the dense pair training) is projected as its "
                                    "FLOPs at the GPU's FP32 peak x the share; every other stage at this CPU's rate"},
        "run_hours": run["snakemake_seconds"] / 3600,
        "paper_gpu_hours": {**PAPER_GPU_HOURS, "total": sum(PAPER_GPU_HOURS.values()),
                            "note": "Herdt & Otero Baguer App. B, ResNet-50 on one RTX 2080 Ti; crops and index not counted there"},
        **projected_figures(projected),
    }
    write_results("imagenet_shape" if args.classes == 1000 else f"imagenet_shape_{args.classes}", figures)


if __name__ == "__main__":
    main()
