"""Small shared helpers: devices, seeds, atomic writes, provenance."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np

# torch is imported where it is used: table and report jobs need these helpers without paying for it


def float32_array(array) -> np.ndarray:
    """A tensor or array-like as a float32 NumPy array (detached, on the CPU)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    return np.asarray(array, dtype=np.float32)


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` -> CUDA when available, else CPU; `cuda` fails clearly when no GPU is present."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but no CUDA GPU is available; use 'auto' or 'cpu'")
    return torch.device(device)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator seeded the same way."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def set_threads(threads: int | None) -> None:
    """Limit torch's intra-op threads, and the BLAS / OpenMP pools of NumPy and scikit-learn, to what the scheduler granted."""
    if threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=max(1, int(threads)))
        torch = sys.modules.get("torch")  # a job that has not imported torch does not use it
        if torch is not None:
            torch.set_num_threads(max(1, int(threads)))


# glibc mallopt() parameters (malloc.h), and the same settings as environment variables for new
# processes, where the trim threshold is not capped at 2 GiB as mallopt()'s int argument is
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
MALLOC_ENVIRONMENT = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40)}
_ENVIRONMENT_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of returning it to the kernel.

    torch's CPU allocator takes every tensor from malloc, and glibc serves blocks above its mmap
    threshold (32 MiB at most) with fresh mmap()ed pages that the kernel zeroes page by page on first
    touch and takes back on free. Every batch then faults its activations in again: a 128-image
    MobileNetV2 forward pass at 224 px takes 3 million page faults (benchmarks/results/allocator.json).
    With mmap off (M_MMAP_MAX = 0) and the heap not trimmed, the next batch reuses the last one's
    pages; the process keeps its peak memory until it exits, which a job's `mem_mb` provides for.

    Set here, in a running process, the trim threshold is capped at 2 GiB, so a pass that frees more
    still returns memory; the workflow therefore also puts MALLOC_ENVIRONMENT into its jobs'
    environment (Snakefile), where no cap applies. Returns whether the setting was made: not off
    glibc, nor when the environment sets malloc's tunables itself.
    """
    if sys.platform != "linux" or any(name in os.environ for name in _ENVIRONMENT_SETTINGS):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def configure_process(threads: int | None) -> None:
    """A compute job's process settings: the scheduler's thread count, and freed memory kept for reuse."""
    keep_freed_memory()
    set_threads(threads)


def _temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write to; rename it onto `path` only on success.

    Works for files and directories. An interrupted writer leaves only a hidden `.name.tmp-*`
    sibling, never something at `path` that looks finished.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a killed writer of this output
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    tmp = _temporary_sibling(path)
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def cache_dir() -> Path | None:
    """Where conceptscope keeps what it can recompute (model structures, compiled UMAP kernels):
    $CONCEPTSCOPE_CACHE, else $XDG_CACHE_HOME/conceptscope or ~/.cache/conceptscope; None when
    $CONCEPTSCOPE_CACHE is `off`."""
    chosen = os.environ.get("CONCEPTSCOPE_CACHE")
    if chosen == "off":
        return None
    if chosen:
        return Path(chosen).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "conceptscope"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically, pretty-printed and key-sorted (stable bytes for stable inputs)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def _torchvision_version() -> str:
    """torchvision's full version (e.g. '0.29.1+cu130') read from its version.py: importing the package costs ~1.7 s."""
    import importlib.util
    import re

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return "not installed"
    text = (Path(list(spec.submodule_search_locations)[0]) / "version.py").read_text()
    found = re.search(r"^__version__ = ['\"]([^'\"]+)['\"]", text, re.M)
    return found.group(1) if found else "unknown"


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape numerical results, for provenance attributes."""
    import torch

    versions = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torchvision": _torchvision_version(),
    }
    from . import __version__

    versions["conceptscope"] = __version__
    return versions
