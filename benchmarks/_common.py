"""Shared by the benchmark scripts: machine/library facts and the results file."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import psutil

    from conceptscope.utils import library_versions

    return {
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "commit": code_commit(),
        "cpu_count": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "versions": library_versions(),
    }


def cpu_model() -> str:
    """The CPU's model name and whether it has AVX-512 (its kernels round differently from AVX2's)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    return f"{name}{', AVX-512' if ' avx512f' in info else ''}"


def code_commit() -> str:
    """The commit the benchmark ran on, with '+changes' when tracked files differ from it."""
    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    if head.returncode:
        return "unknown"
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "src", "workflow_scripts", "rules", "benchmarks/*.py"],
                           cwd=root).returncode
    return head.stdout.strip() + ("+changes" if dirty else "")


def write_results(topic: str, figures: dict) -> Path:
    """benchmarks/results/<topic>.json: flat figure -> number mapping plus machine facts."""
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{topic}.json"
    path.write_text(json.dumps({**figures, "machine": machine()}, indent=2, sort_keys=True) + "\n")
    print(json.dumps(figures, indent=2))
    return path
