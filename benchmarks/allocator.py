"""Benchmark `allocator`: forward passes with glibc's default malloc vs freed memory kept for reuse.

    .venv/bin/python benchmarks/allocator.py [--passes 5] [--note TEXT]   # about 3 minutes on 2 cores

The packaged ImageNet MobileNetV2 on random 224 px batches of 128 images (the `predict` batch) and
288 (32 images x 9 crops, an `extract_crop_vectors` batch), 2 torch threads, each setting in a fresh
process, the settings interleaved batch size by batch size:

- `default`: glibc's malloc as it comes (large blocks mmap()ed and unmapped again);
- `in_process`: `conceptscope.utils.keep_freed_memory()` (mallopt: no mmap, trim threshold 2 GiB);
- `environment`: `conceptscope.utils.MALLOC_ENVIRONMENT` in the process's environment, as the
  Snakefile sets it for every job.

Figures per batch size b and setting s: `seconds_b<b>_<s>` (median of the passes after the first
two, which grow the heap), `faults_b<b>_<s>` (minor page faults of those passes, median), and
`speedup_b<b>_<s>` = default seconds / setting seconds. Writes benchmarks/results/allocator.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results  # noqa: E402

from conceptscope.utils import MALLOC_ENVIRONMENT  # noqa: E402

PASSES = textwrap.dedent(
    """
    import json, resource, sys, time
    import torch
    from conceptscope.models import pretrained_model
    from conceptscope.utils import keep_freed_memory
    setting, batch, passes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    made = keep_freed_memory() if setting == "in_process" else False
    torch.set_num_threads(2)
    model = pretrained_model("mobilenet_v2")
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    seconds, faults = [], []
    with torch.no_grad():
        for _ in range(passes):
            before, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            model(x)
            seconds.append(time.perf_counter() - start)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"made": made, "seconds": seconds, "faults": faults}))
    """
)
SETTINGS = ("default", "in_process", "environment")
WARM_UP = 2  # passes that grow the heap, left out of the figures


def run(setting: str, batch: int, passes: int, extra_env: dict | None = None) -> dict:
    """`passes` forward passes in a fresh process under `setting` (malloc variables of this process's
    environment removed, `extra_env` added): whether keep_freed_memory() made its setting, and the
    seconds and minor page faults of each pass. Also used by tests/test_allocator.py."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if setting == "environment":
        env.update(MALLOC_ENVIRONMENT)
    env.update(extra_env or {})
    out = subprocess.run([sys.executable, "-c", PASSES, setting, str(batch), str(passes)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passes", type=int, default=5, help="timed passes per setting (after two warm-up passes)")
    parser.add_argument("--note", default="", help="conditions of the run (e.g. other jobs on the machine)")
    args = parser.parse_args()
    figures: dict = {"passes": args.passes, "note": args.note}
    for batch in (128, 288):
        results = {setting: run(setting, batch, WARM_UP + args.passes) for setting in SETTINGS}
        if not results["in_process"]["made"]:
            sys.exit("keep_freed_memory() made no setting (not glibc?)")
        seconds = {setting: statistics.median(result["seconds"][WARM_UP:]) for setting, result in results.items()}
        for setting, result in results.items():
            figures[f"seconds_b{batch}_{setting}"] = round(seconds[setting], 3)
            figures[f"faults_b{batch}_{setting}"] = int(statistics.median(result["faults"][WARM_UP:]))
            if setting != "default":
                figures[f"speedup_b{batch}_{setting}"] = round(seconds["default"] / seconds[setting], 2)
    write_results("allocator", figures)


if __name__ == "__main__":
    main()
