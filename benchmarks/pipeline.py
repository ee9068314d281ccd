"""Benchmark `pipeline`: the default run (config.yaml) cold in a fresh directory, a no-op rerun, the report.

    .venv/bin/python benchmarks/pipeline.py [--config config.yaml] [--keep DIR] [--compare OTHER_RUN_DIR]

Figures: default_cold_seconds (every method, `--cores all`), noop_rerun_seconds, report_seconds
(`snakemake --report report.html`), report_mb, and what headless Chromium showed of that report
(report_figures / report_figures_loaded, report_pages / report_pages_loaded, report_failures). The
run's tables/models.csv and tables/shortcut_summary.csv are copied next to the JSON; screenshots of
the report go to test-artifacts/pipeline-report/.
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
    from conceptscope.browser import browser_check

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, default=ROOT / "config.yaml")
    parser.add_argument("--keep", type=Path, help="run here (kept) instead of in a temporary directory")
    parser.add_argument("--compare", type=Path, help="an earlier run's working directory: compare its tables and outputs with this run's")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        config = args.config.resolve()
        cold = timed_snakemake(workdir, config)
        noop = timed_snakemake(workdir, config)
        report = timed_snakemake(workdir, config, "--report", "report.html")
        status = browser_check(workdir / "report.html", screenshots=ROOT / "test-artifacts" / "pipeline-report")
        RESULTS_DIR.mkdir(exist_ok=True)
        for table in ("models", "shortcut_summary"):
            shutil.copy(workdir / "results" / "tables" / f"{table}.csv", RESULTS_DIR / f"pipeline_{table}.csv")
        figures = {"default_cold_seconds": round(cold, 1), "noop_rerun_seconds": round(noop, 1), "report_seconds": round(report, 1),
                   "report_mb": round((workdir / "report.html").stat().st_size / 2**20, 1)}
        figures.update({f"report_{key}": status[key] for key in ("results", "figures", "figures_loaded", "pages", "pages_loaded", "captions")})
        figures["report_failures"] = len(status["failures"])
        if args.compare:
            from conceptscope.compare import compare_outputs, compare_tables

            same = compare_tables(args.compare / "results", workdir / "results")
            n = len(same["tables"])
            figures["reproduced_tables"] = f"{n - len(same['different'])}/{n} identical"
            figures["reproduced_values_compared"] = same["values"]
            figures["reproduced_differences"] = same["different"]
            outputs = compare_outputs(args.compare / "results", workdir / "results")
            n = len(outputs["files"])
            figures["reproduced_outputs"] = f"{n - len(outputs['different'])}/{n} identical"
            figures["reproduced_output_differences"] = {**outputs["different"], **{name: "only in one run" for key in ("only_first", "only_second")
                                                                                    for name in outputs[key]}}
    write_results("pipeline", figures)


if __name__ == "__main__":
    main()
