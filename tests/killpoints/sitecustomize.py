"""Fault injection for the test suite: kill a whole Snakemake run (SIGKILL to its process group, as a
power cut or a node failure would) from inside one job, at a chosen point of its work.

Loaded at start-up by every Python process whose PYTHONPATH holds this folder.
$CONCEPTSCOPE_KILL lists kill points, "<rule>:<point>:<n>,<rule>:<point>:<n>,...". In a job of one of
those rules (Snakemake runs a rule's script as `.snakemake/scripts/tmp*.<rule>.py`) whose kill is not
yet in $CONCEPTSCOPE_KILL_LOG, the whole run is killed the n-th time the job reaches the point:

  zarr_write      a write into a Zarr array has finished (chunks are on disk, the store is not complete)
  faiss_write     faiss.write_index wrote a file; the file is then cut to half its length (a write cut short)
  optimizer_step  a torch optimiser has taken a step (training is under way; nothing is saved yet)

So each rule is killed once, whichever order the scheduler runs the jobs in.
Before it kills, it appends "<rule> <point> <n> <detail>" to $CONCEPTSCOPE_KILL_LOG, so the test
knows the kill came from where it asked. Nothing here changes what the job computes.
"""

import importlib.abc
import os
import signal
import sys

_SPEC = os.environ.get("CONCEPTSCOPE_KILL", "")


def _kill(rule: str, point: str, n: int, detail: str) -> None:
    with open(os.environ["CONCEPTSCOPE_KILL_LOG"], "a") as log:
        log.write(f"{rule} {point} {n} {detail}\n")
        log.flush()
        os.fsync(log.fileno())
    os.killpg(os.getpgrp(), signal.SIGKILL)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Call `patch(module)` once the module `name` has been imported (before anyone uses it)."""

    def __init__(self, name, patch):
        self.name, self.patch = name, patch

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                break
        else:
            return None
        execute, patch = spec.loader.exec_module, self.patch

        def exec_module(module):
            execute(module)
            patch(module)

        spec.loader.exec_module = exec_module
        return spec


def _install(rule: str, point: str, n: int) -> None:
    count = [0]

    def reached(detail: str) -> None:
        count[0] += 1
        if count[0] == n:
            _kill(rule, point, n, detail)

    if point == "zarr_write":
        def patch(module):
            setitem = module.Array.__setitem__

            def counted(self, selection, value):
                setitem(self, selection, value)
                reached(str(self.store_path))

            module.Array.__setitem__ = counted

        sys.meta_path.insert(0, _AfterImport("zarr.core.array", patch))
    elif point == "faiss_write":
        def patch(module):
            write = module.write_index

            def cut_short(index, path, *args):
                write(index, path, *args)
                size = os.path.getsize(path)
                os.truncate(path, size // 2)
                reached(f"{path} {size // 2}/{size} bytes")

            module.write_index = cut_short

        sys.meta_path.insert(0, _AfterImport("faiss", patch))
    elif point == "optimizer_step":
        def patch(module):
            module.register_optimizer_step_post_hook(lambda optimizer, args, kwargs: reached(type(optimizer).__name__))

        sys.meta_path.insert(0, _AfterImport("torch.optim.optimizer", patch))
    else:
        raise ValueError(f"CONCEPTSCOPE_KILL: unknown point {point!r} (zarr_write, faiss_write, optimizer_step)")


def _killed_before(rule: str) -> bool:
    try:
        with open(os.environ["CONCEPTSCOPE_KILL_LOG"]) as log:
            return any(line.split()[0] == rule for line in log if line.strip())
    except FileNotFoundError:
        return False


if _SPEC and sys.argv:
    for _entry in _SPEC.split(","):
        _rule, _point, _n = _entry.split(":")
        if os.path.basename(sys.argv[0]).endswith(f".{_rule}.py") and not _killed_before(_rule):
            _install(_rule, _point, int(_n))
