"""A killed extraction job never leaves a store that looks finished; the rerun is byte-identical."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT, SHARED_DATA

CONFIG = {
    "results": "results",
    "device": "cpu",
    "predict": {"splits": ["test"]},
    "datasets": {"inet": {"kind": "imagefolder", "root": str(SHARED_DATA / "imagenette"), "train_dir": None, "test_dir": "val", "label_map": "imagenet", "max_per_class": 4}},
    "models": {"mnv2": {"arch": "mobilenet_v2", "weights": "packaged", "eval_datasets": ["inet"], "layers": ["features.14", "features.18"]}},
    "activations": {"chunk_images": 4, "batch_size": 4},
    "concepts": {"models": []},  # extraction only (the concepts and contrast need train predictions)
    "contrast": {"models": []},
}


def _snakemake(workdir: Path, *args: str, **kwargs):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--configfile", "config.yaml", "--cores", "2", *args]
    return subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_killed_extraction_is_not_complete_and_rerun_is_byte_identical(tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for workdir in (clean, killed):
        workdir.mkdir()
        (workdir / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    assert _snakemake(clean).wait() == 0

    proc = _snakemake(killed, start_new_session=True)
    acts_parent = killed / "results" / "activations" / "inet"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if any(acts_parent.glob(".mnv2.tmp-*/features.18.zarr/activations/c/*")):
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the extraction finished before it could be killed"
    # what the killed job left is a hidden temporary, never the output itself
    assert not (acts_parent / "mnv2").exists()
    assert list(acts_parent.glob(".mnv2.tmp-*"))

    assert subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--configfile", "config.yaml", "--unlock"], cwd=killed, capture_output=True).returncode == 0
    assert _snakemake(killed).wait() == 0
    assert not list(acts_parent.glob(".mnv2.tmp-*")), "the stale temporary was not cleaned up"
    for kind in ("activations", "crops"):
        reference = _files(clean / "results" / kind / "inet" / "mnv2")
        rerun = _files(killed / "results" / kind / "inet" / "mnv2")
        assert reference.keys() == rerun.keys()
        assert len(reference) > 10
        different = [name for name in reference if reference[name] != rerun[name]]
        assert not different, different[:5]


# The other expensive rules, each killed while its job runs: the FAISS index build, a ClaDec decoder's
# training and the s-AMS generation (tiny digits, so each job lasts seconds).
SMALL = {
    "results": "results",
    "device": "cpu",
    "datasets": {
        "digits": {"kind": "digits", "max_per_class": 12},
        "digits_shortcut": {"kind": "digits", "max_per_class": 12, "shortcut": {"class": 3, "fraction": 1.0, "size": 6}},
    },
    "models": {"vgg": {"arch": "vgg_small", "train_dataset": "digits_shortcut", "layers": ["features.7"], "train": {"epochs": 1}}},
    "concepts": {"models": []},
    "contrast": {"models": []},
    "cladec": {"models": ["vgg"], "epochs": 30, "batch_size": 16, "sweep": {"alphas": []}},
    "dora": {"models": ["vgg"], "layers": {"vgg": ["features.7"]}, "n": 2,
             "sams": {"enabled": True, "n_signals": 2, "steps": 150, "batch_size": 16, "max_representations": 16, "figures": 2}},
}
TARGETS = {  # rule -> the output its killed job must not leave behind
    "build_crop_index": "results/index/digits_shortcut/vgg/features.7.faiss",
    "train_reconstructor": "results/cladec/digits_shortcut/vgg/features.7/cladec_a0/reconstructor.pt",
    "dora_sams": "results/dora/digits_shortcut/vgg/features.7/sams.npz",
}


def _job_process(workdir: Path, rule: str):
    """The running Python process of a rule's job in this workdir (Snakemake's script copy), if any."""
    import psutil

    for proc in psutil.process_iter(["cmdline", "cwd"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if f".{rule}.py" in cmdline and proc.info["cwd"] == str(workdir):
            return proc
    return None


def _run_watching(workdir: Path, targets: list[str], rule: str | None = None, kill_after: float = 0.0):
    """Run Snakemake for `targets`; with `rule`, kill the whole run once that rule's job has run `kill_after` s.

    Returns (exit code, seconds the watched job ran or None)."""
    proc = _snakemake(workdir, *targets, start_new_session=True)
    seen, ran = None, None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        job = _job_process(workdir, rule) if rule else None
        if job is not None:
            seen = seen or job.create_time()
            ran = time.time() - seen
            if kill_after and ran >= kill_after:
                os.killpg(proc.pid, signal.SIGKILL)
                break
        time.sleep(0.02)
    return proc.wait(), ran


def _npz(path: Path) -> dict:
    with np.load(path) as data:
        return {key: data[key] for key in data.files if key != "seconds"}  # wall-clock seconds differ


@pytest.mark.long  # about 150 s here: opt-in with `pytest -m long`, the default suite stays under 15 minutes
def test_killed_index_decoder_and_sams_jobs_rerun_to_identical_outputs(tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for workdir in (clean, killed):
        workdir.mkdir()
        (workdir / "config.yaml").write_text(yaml.safe_dump(SMALL))
    durations = {}
    for rule, target in TARGETS.items():  # one rule at a time, timing its job
        code, durations[rule] = _run_watching(clean, [target], rule)
        assert code == 0 and (clean / target).exists() and durations[rule], rule

    for rule, target in TARGETS.items():
        # the same target in the other workdir, killed when its job has run half its clean duration
        code, ran = _run_watching(killed, [target], rule, kill_after=0.5 * durations[rule])
        assert code == -signal.SIGKILL and ran, f"{rule}: the job finished before it could be killed"
        assert not (killed / target).exists(), f"{rule}: a killed job left its output"
        assert subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--configfile", "config.yaml", "--unlock"],
                              cwd=killed, capture_output=True).returncode == 0
    assert _snakemake(killed, *TARGETS.values()).wait() == 0
    assert not [p for p in (killed / "results").rglob("*.tmp-*")], "a stale temporary survived the rerun"

    index, decoder, sams = (Path(TARGETS[r]) for r in ("build_crop_index", "train_reconstructor", "dora_sams"))
    assert (clean / index).read_bytes() == (killed / index).read_bytes()
    import torch

    reference, rerun = (torch.load(w / decoder, map_location="cpu", weights_only=True) for w in (clean, killed))
    for part in ("encoder", "decoder"):
        assert reference[part].keys() == rerun[part].keys()
        assert all(torch.equal(reference[part][k], rerun[part][k]) for k in reference[part]), part
    assert reference["loss_history"] == rerun["loss_history"]
    reference, rerun = _npz(clean / sams), _npz(killed / sams)
    assert reference.keys() == rerun.keys() and all(np.array_equal(reference[k], rerun[k]) for k in reference)
