"""A killed extraction job never leaves a store that looks finished; the rerun is byte-identical."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from conftest import ROOT, SHARED_DATA

CONFIG = {
    "results": "results",
    "device": "cpu",
    "predict": {"splits": ["test"]},
    "datasets": {"inet": {"kind": "imagefolder", "root": str(SHARED_DATA / "imagenette"), "train_dir": None, "test_dir": "val", "label_map": "imagenet", "max_per_class": 8}},
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
