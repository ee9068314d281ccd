"""Freed memory kept for reuse: repeated forward passes stop faulting in fresh pages (conceptscope.utils.keep_freed_memory)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from allocator import run  # noqa: E402  (the benchmark's passes, in a fresh process per setting)

BATCH, PASSES = 16, 6


@pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc tunables")
def test_repeated_passes_reuse_freed_memory():
    default = run("default", BATCH, PASSES)
    kept = run("in_process", BATCH, PASSES)
    environment = run("environment", BATCH, PASSES)
    # glibc's default: every pass faults activations in again. How many depends on the CPU's kernels
    # (which buffers cross glibc's adaptive mmap threshold): from a third of the first pass's pages
    # to about as many
    assert min(default["faults"][2:]) > 0.2 * default["faults"][0], default
    # kept: once the first passes have grown the heap, passes take (almost) no new pages; the heap
    # may still grow now and then (glibc splits aligned blocks), so the passes are judged together
    assert kept["made"] is True
    for result in (kept, environment):
        assert min(result["faults"][2:]) < 0.05 * default["faults"][0], (result, default)
        assert sum(result["faults"][1:]) < 0.3 * sum(default["faults"][1:]), (result, default)


def test_settings_in_the_environment_win():
    assert run("in_process", BATCH, 1, {"MALLOC_MMAP_MAX_": "65536"})["made"] is False
