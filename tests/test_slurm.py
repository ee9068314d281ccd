"""The real workflow through a real SLURM (profiles/slurm): data, model and activation store of one model.

Needs a running SLURM whose jobs see this file system (scripts/slurm_up.sh starts a one-node cluster
of this host); skipped otherwise. Run it with `bash scripts/slurm_test.sh`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

pytestmark = pytest.mark.slurm

START_HINT = (
    "SLURM not running here: start it with `bash scripts/slurm_up.sh` (needs root and apt), "
    "then run `bash scripts/slurm_test.sh`"
)
USABLE_STATES = {"idle", "mixed", "allocated", "completing"}
DATASET, MODEL, LAYER = "photos", "mobilenet_v2", "features.18"
RULES = ("prepare_dataset", "import_model", "extract_activations")
RUN_TIMEOUT_S = 1800


def slurm_problem() -> str | None:
    """Why SLURM cannot run jobs here (None when a node is usable)."""
    for tool in ("sinfo", "sbatch", "squeue", "scancel"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found"
    try:
        out = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "`sinfo` does not respond"
    if out.returncode != 0:
        return f"`sinfo` failed: {(out.stderr or out.stdout).strip()[:300]}"
    states = {line.strip() for line in out.stdout.splitlines() if line.strip()}
    if not states & USABLE_STATES:
        return f"no usable node (sinfo node states: {sorted(states) or 'none'})"
    return None


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    problem = slurm_problem()
    if problem:
        pytest.skip(f"{START_HINT} ({problem})")
    workdir = tmp_path_factory.mktemp("slurm")
    config = yaml.safe_load((ROOT / "configs" / "test.yaml").read_text())
    config["results"] = "results"
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    targets = [
        f"results/data/{DATASET}",
        f"results/models/{MODEL}/weights.pt",
        f"results/models/{MODEL}/model.json",
        f"results/activations/{DATASET}/{MODEL}",
    ]
    # Snakefile from the project, everything else (.snakemake, results, SLURM logs) in workdir;
    # the jobs run with this environment (sbatch --export=ALL), so this interpreter's bin comes first
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    cmd = [
        sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--configfile", "config.yaml",
        "--profile", str(ROOT / "profiles" / "slurm"),
        "--jobs", "3",
        "--slurm-init-seconds-before-status-checks", "2",
        "--slurm-keep-successful-logs",
        *targets,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.terminate()  # Snakemake cancels its SLURM jobs on SIGTERM
        output, _ = proc.communicate(timeout=120)
        pytest.fail(f"the SLURM run took over {RUN_TIMEOUT_S} s:\n{output[-5000:]}")
    (workdir / "snakemake.out").write_text(output)
    assert proc.returncode == 0, output[-6000:]
    return workdir, output


def test_slurm_run_writes_the_stores(slurm_run):
    from conceptscope.data import PreparedDataset
    from conceptscope.store import open_activations

    workdir, _ = slurm_run
    results = workdir / "results"
    data = PreparedDataset(results / "data" / DATASET)
    assert len(data.split("test")) > 0
    assert (results / "models" / MODEL / "weights.pt").stat().st_size > 0
    store = open_activations(results, DATASET, MODEL, LAYER)  # raises unless its writer finished
    assert len(store) > 0
    # MobileNetV2's last feature block: 1280 channels on a 7 x 7 grid for 224 px inputs
    assert store.activations.shape == (len(store), 1280, 7, 7)
    assert set(store.image_ids.tolist()) <= set(data.manifest["image_id"].tolist())

def test_jobs_went_through_slurm(slurm_run):
    workdir, output = slurm_run
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", output)
    assert len(submitted) == len(RULES), output[-4000:]
    logdir = workdir / ".snakemake" / "slurm_logs"
    for rule in RULES:
        logs = list((logdir / f"rule_{rule}").rglob("*.log"))
        assert len(logs) == 1, f"no SLURM log of rule {rule} under {logdir}"
        # one SLURM job per rule: its log is named after the job id Snakemake got from sbatch
        assert logs[0].stem in {jobid for jobid, _ in submitted}
        text = logs[0].read_text()
        # the job step inside the SLURM allocation ran this rule and finished it
        assert f"rule {rule}:" in text and "Finished job" in text, text[-3000:]
