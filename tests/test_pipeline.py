"""End-to-end: the tiny config through Snakemake, then the DAG's rerun behaviour."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import yaml

from conftest import ROOT


def snakemake(workdir, *args):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--configfile", "config.yaml", *args]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)


def planned_jobs(workdir) -> dict[str, int]:
    """Jobs a dry run would execute, by rule (from Snakemake's job stats table)."""
    run = snakemake(workdir, "-n", "--quiet", "rules")
    assert run.returncode == 0, run.stdout + run.stderr
    counts = {}
    for line in run.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "job"):
            counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pipeline")
    config = yaml.safe_load((ROOT / "configs" / "test.yaml").read_text())
    config["results"] = "results"
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    run = snakemake(workdir, "--cores", "2")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return workdir, config


def test_tiny_run_writes_models_table(finished_run):
    workdir, config = finished_run
    table = pd.read_csv(workdir / "results" / "tables" / "models.csv")
    expected_cols = ["model", "train_dataset", "dataset", "split", "top1", "top1_non_shortcut", "shortcut_rate"]
    assert all(c in table.columns for c in expected_cols)
    pairs = set(zip(table.model, table.dataset, table.split))
    assert pairs == {
        ("vgg_shortcut", "digits_shortcut", "test"),
        ("vgg_shortcut", "digits_shortcut", "test_watermarked"),
        ("resnet_clean", "digits_shortcut", "test"),
        ("resnet_clean", "digits_shortcut", "test_watermarked"),
        ("mobilenet_v2", "photos", "test"),
    }
    mobilenet = table[table.model == "mobilenet_v2"].iloc[0]
    assert mobilenet.top1 >= 0.8 and pd.isna(mobilenet.shortcut_rate)
    assert table[table.model == "vgg_shortcut"].shortcut_rate.notna().all()
    preds = pd.read_parquet(workdir / "results" / "predictions" / "digits_shortcut" / "vgg_shortcut.parquet")
    assert set(preds.split) == {"train", "test", "test_watermarked"} and len(preds) == 360
    log = pd.read_csv(workdir / "results" / "models" / "vgg_shortcut" / "train_log.csv")
    assert list(log.columns) == ["epoch", "loss", "train_acc"]


def test_rerun_has_nothing_to_do(finished_run):
    workdir, _ = finished_run
    assert planned_jobs(workdir) == {}


def test_adding_a_model_schedules_only_its_jobs(finished_run):
    workdir, config = finished_run
    extended = dict(config, models={**config["models"], "vgg_clean": {"arch": "vgg_small", "train_dataset": "digits", "eval_datasets": ["digits_shortcut"], "layers": ["features.7"], "train": {"epochs": 1}}})
    (workdir / "config.yaml").write_text(yaml.safe_dump(extended))
    model_jobs = {"train_model": 1, "predict": 1, "extract_activations": 1, "extract_crop_vectors": 1, "build_crop_index": 1, "summarize_models": 1, "all": 1}
    try:
        assert planned_jobs(workdir) == model_jobs
        changed = yaml.safe_load(yaml.safe_dump(config))
        changed["models"]["resnet_clean"]["train"]["lr"] = 0.01
        (workdir / "config.yaml").write_text(yaml.safe_dump(changed))
        assert planned_jobs(workdir) == model_jobs  # resnet_clean's, and nobody else's
    finally:
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))


def test_changing_one_stage_parameter_schedules_only_that_stage(finished_run):
    workdir, config = finished_run
    try:
        for section, key, value, jobs in [
            ("activations", "dtype", "float16", {"extract_activations": 3}),
            ("index", "type", "hnsw", {"build_crop_index": 3}),
            # the index is built from the crop vectors, so it follows them
            ("crops", "grids", [2, 3], {"extract_crop_vectors": 3, "build_crop_index": 3}),
        ]:
            changed = yaml.safe_load(yaml.safe_dump(config))
            changed.setdefault(section, {})[key] = value
            (workdir / "config.yaml").write_text(yaml.safe_dump(changed))
            assert planned_jobs(workdir) == {**jobs, "all": 1}, (section, key)
    finally:
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))


def test_stores_of_the_tiny_run_are_complete_and_readable(finished_run):
    from conceptscope.store import open_activations, open_crops

    workdir, config = finished_run
    acts = open_activations(workdir / "results", "digits_shortcut", "vgg_shortcut", "features.7")
    assert acts.activations.shape == (120, 512, 1, 1) and acts.attrs["selection"]["split"] == "test"
    crops = open_crops(workdir / "results", "photos", "mobilenet_v2", "features.18")
    assert crops.vectors.shape == (25 * 9, 1280) and crops.attrs["mode"] == "cells"
    from conceptscope.index import CropIndex

    index = CropIndex.open(workdir / "results" / "index" / "photos" / "mobilenet_v2" / "features.18.faiss", crops)
    scores, rows = index.search(crops.vectors[:3], m=4)
    assert (rows[:, 0] == [0, 1, 2]).all() and index.index.ntotal == 225
