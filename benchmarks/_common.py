"""Shared by the benchmark scripts: machine/library facts and the results file."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import psutil

    from conceptscope.utils import library_versions

    return {
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "versions": library_versions(),
    }


def write_results(topic: str, figures: dict) -> Path:
    """benchmarks/results/<topic>.json: flat figure -> number mapping plus machine facts."""
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{topic}.json"
    path.write_text(json.dumps({**figures, "machine": machine()}, indent=2, sort_keys=True) + "\n")
    print(json.dumps(figures, indent=2))
    return path
