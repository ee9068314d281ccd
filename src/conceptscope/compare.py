"""Reproducibility: two runs' outputs compared exactly, wall-clock timings aside (`conceptscope compare`).

Tables are compared value for value without the columns that time the methods; every other output
file byte for byte, or, where the bytes differ, by content.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

TIMING_COLUMNS = frozenset({"seconds", "seconds_sem", "train_seconds", "seconds_per_image", "seconds_per_image_sem"})


def _plain(value):
    """A numpy scalar as the Python value it holds (for messages)."""
    return value.item() if hasattr(value, "item") else value


def _frame_difference(x: pd.DataFrame, y: pd.DataFrame) -> tuple[str | None, int]:
    """What differs between two tables, exactly, timing columns aside (None when nothing), and the values compared."""
    if list(x.columns) != list(y.columns):
        return f"columns differ: {list(x.columns)} vs {list(y.columns)}", 0
    x, y = (t.drop(columns=[c for c in t.columns if c in TIMING_COLUMNS]) for t in (x, y))
    if x.shape != y.shape:
        return f"shape {x.shape} vs {y.shape}", 0
    unequal = ~((x == y) | (x.isna() & y.isna()))
    if not unequal.any().any():
        return None, x.size
    column = unequal.any().idxmax()
    row = int(unequal[column].to_numpy().argmax())
    first_value, second_value = (_plain(t[column].iloc[row]) for t in (x, y))
    return (f"{int(unequal.to_numpy().sum())} value(s) differ, first in column {column!r} "
            f"row {row}: {first_value!r} vs {second_value!r}"), x.size


def compare_tables(first: str | Path, second: str | Path) -> dict:
    """The CSV tables of two runs' `tables/` folders (or two results folders) compared value for value.

    Exact comparison (no tolerance) of every column except those that time the methods
    (`TIMING_COLUMNS`: wall-clock seconds differ between runs). Returns {"tables": names compared,
    "values": values compared, "different": {name: what differs}, "only_first": [...], "only_second": [...]}.
    """
    folders = []
    for root in (Path(first), Path(second)):
        folder = root / "tables" if (root / "tables").is_dir() else root
        if not folder.is_dir():
            raise FileNotFoundError(f"no tables folder at {root} (expected a results folder or its tables/)")
        folders.append({p.name: p for p in sorted(folder.glob("*.csv"))})
    a, b = folders
    result = {"tables": [], "values": 0, "different": {}, "only_first": sorted(set(a) - set(b)), "only_second": sorted(set(b) - set(a))}
    for name in sorted(set(a) & set(b)):
        result["tables"].append(name)
        difference, values = _frame_difference(pd.read_csv(a[name]), pd.read_csv(b[name]))
        result["values"] += values
        if difference:
            result["different"][name] = difference
    return result


# Not compared by `compare_outputs`: the jobs' logs and the report's pages (they show wall-clock times).
UNCOMPARED_FOLDERS = ("logs", "report")


def _value_difference(x, y, where: str) -> str | None:
    """The first difference between two loaded values (dicts, lists, tensors, arrays, scalars), exactly;
    entries named in TIMING_COLUMNS are left out."""
    import numpy as np

    if isinstance(x, dict) and isinstance(y, dict):
        if set(x) != set(y):
            return f"{where or 'top level'}: keys {sorted(map(str, set(x) ^ set(y)))} are in only one"
        return next((d for k in x if k not in TIMING_COLUMNS and (d := _value_difference(x[k], y[k], f"{where}.{k}" if where else str(k)))), None)
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        if len(x) != len(y):
            return f"{where}: lengths {len(x)} vs {len(y)}"
        return next((d for i, (a, b) in enumerate(zip(x, y)) if (d := _value_difference(a, b, f"{where}[{i}]"))), None)
    if hasattr(x, "detach") and hasattr(y, "detach"):  # torch tensors
        x, y = x.detach().cpu().numpy(), y.detach().cpu().numpy()
    if isinstance(x, np.ndarray) and isinstance(y, np.ndarray):
        if x.shape != y.shape or x.dtype != y.dtype:
            return f"{where}: arrays differ ({x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)})"
        unequal = (x != y) & ~((x != x) & (y != y)) if x.dtype.kind in "fc" else x != y  # NaN equals NaN here
        return f"{where}: {int(np.sum(unequal))} of {x.size} values differ" if np.any(unequal) else None
    if type(x) is not type(y) or not (x == y or (x != x and y != y)):  # NaN equals NaN here
        return f"{where}: {_plain(x)!r} vs {_plain(y)!r}"
    return None


def _load_output(path: Path):
    """A file's content for comparison by value: JSON, torch (weights only) and NumPy archives; None: compare bytes."""
    import json

    if path.suffix == ".json":
        return json.loads(path.read_text())
    if path.suffix == ".pt":
        import torch

        return torch.load(path, map_location="cpu", weights_only=True)
    if path.suffix == ".npz":
        import numpy as np

        with np.load(path) as archive:
            return {key: archive[key] for key in archive.files}
    return None


def compare_outputs(first: str | Path, second: str | Path) -> dict:
    """Every output file of two runs' results folders compared exactly, wall-clock timings aside.

    Files outside `logs/` and `report/` (UNCOMPARED_FOLDERS): the same bytes; or, where the bytes
    differ, the same content: CSV tables value for value without their TIMING_COLUMNS, JSON, torch
    checkpoints and NumPy archives entry for entry without entries so named (tensors and arrays
    exactly, NaN equal to NaN). Zarr stores are compared file by file (chunks bytewise, metadata as JSON).
    Returns {"files": paths compared, "different": {path: what differs}, "only_first": [...], "only_second": [...]}.
    """
    listings = []
    for root in (Path(first), Path(second)):
        if not root.is_dir():
            raise FileNotFoundError(f"no results folder at {root}")
        listings.append({str(p.relative_to(root)): p for p in sorted(root.rglob("*"))
                         if p.is_file() and p.relative_to(root).parts[0] not in UNCOMPARED_FOLDERS})
    a, b = listings
    result = {"files": [], "different": {}, "only_first": sorted(set(a) - set(b)), "only_second": sorted(set(b) - set(a))}
    for name in sorted(set(a) & set(b)):
        result["files"].append(name)
        if a[name].read_bytes() == b[name].read_bytes():
            continue
        if a[name].suffix == ".csv":
            difference = _frame_difference(pd.read_csv(a[name]), pd.read_csv(b[name]))[0]
        else:
            content = _load_output(a[name])
            difference = "the bytes differ" if content is None else _value_difference(content, _load_output(b[name]), "")
        if difference:
            result["different"][name] = difference
    return result
