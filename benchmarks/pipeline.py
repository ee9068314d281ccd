"""Benchmark `pipeline`: the default run (config.yaml) cold in a fresh directory, then a no-op rerun.

    .venv/bin/python benchmarks/pipeline.py [--config config.yaml]

Figures: default_cold_seconds, noop_rerun_seconds; the run's tables/models.csv is copied next to
the JSON as pipeline_models.csv.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS_DIR, write_results

ROOT = Path(__file__).resolve().parents[1]


def timed_snakemake(workdir: Path, configfile: Path, *args: str) -> float:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--configfile", str(configfile), "--cores", "all", *args]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=workdir, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, default=ROOT / "config.yaml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        cold = timed_snakemake(workdir, args.config.resolve())
        noop = timed_snakemake(workdir, args.config.resolve())
        RESULTS_DIR.mkdir(exist_ok=True)
        shutil.copy(workdir / "results" / "tables" / "models.csv", RESULTS_DIR / "pipeline_models.csv")
    write_results("pipeline", {"default_cold_seconds": round(cold, 1), "noop_rerun_seconds": round(noop, 1)})


if __name__ == "__main__":
    main()
