"""Freed memory kept for reuse: repeated forward passes stop faulting in fresh pages (conceptscope.utils.keep_freed_memory)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conceptscope.utils import MALLOC_ENVIRONMENT

PASSES = textwrap.dedent(
    """
    import json, resource, sys
    import torch, torchvision
    from conceptscope.utils import keep_freed_memory
    made = keep_freed_memory() if sys.argv[1] == "keep" else False
    torch.set_num_threads(1)
    model = torchvision.models.mobilenet_v2().eval()
    x = torch.randn(16, 3, 224, 224)
    faults = []
    with torch.no_grad():
        for _ in range(6):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            model(x)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"made": made, "faults": faults}))
    """
)


def page_faults(mode: str, extra_env: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(extra_env or {})
    out = subprocess.run([sys.executable, "-c", PASSES, mode], env=env, capture_output=True, text=True, check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="glibc malloc tunables")
def test_repeated_passes_reuse_freed_memory():
    default = page_faults("default")
    kept = page_faults("keep")
    environment = page_faults("default", MALLOC_ENVIRONMENT)
    # glibc's default: every pass faults its activations in again (about as many as the first pass)
    assert min(default["faults"][2:]) > 0.5 * default["faults"][0], default
    # kept: once the first passes have grown the heap, passes take (almost) no new pages; the heap
    # may still grow now and then (glibc splits aligned blocks), so the passes are judged together
    assert kept["made"] is True
    for result in (kept, environment):
        assert min(result["faults"][2:]) < 0.05 * default["faults"][0], (result, default)
        assert sum(result["faults"][1:]) < 0.3 * sum(default["faults"][1:]), (result, default)


def test_settings_in_the_environment_win():
    result = page_faults("keep", {"MALLOC_MMAP_MAX_": "65536"})
    assert result["made"] is False
