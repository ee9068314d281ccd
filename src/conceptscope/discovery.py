"""What the `conceptscope` command looks up: an architecture's layers (names, output shapes, whether
non-negative), the dataset kinds, and what a store on disk holds. The functions return plain data;
`conceptscope.cli` prints it. Nothing is downloaded and nothing is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def input_shape_text(preprocess: dict) -> str:
    size = preprocess.get("input_size")
    shape = f"{preprocess['channels']} x {size} x {size}" if size else f"{preprocess['channels']} x H x W"
    return shape + (f" (resize {preprocess['resize']})" if preprocess.get("resize") else "")


def _fingerprint(tensor) -> tuple[float, float, float]:
    """(min, max, sum) of a tensor: changes when a later in-place op overwrites it."""
    if not tensor.numel():
        return (0.0, 0.0, 0.0)
    t = tensor.double()
    return float(t.min()), float(t.max()), float(t.sum())


def layer_table(arch: str, *, num_classes: int | None = None, channels: int | None = None, input_size: int | None = None,
                seed: int = 0, options: dict | None = None) -> tuple[list[dict], dict, dict | None]:
    """Every named module of `arch` with its output shape (C, h, w) or (C,) on a dummy forward pass.

    The model is built on the CPU with fresh weights (nothing is downloaded) and `options` (config
    `arch_options`), and run in eval mode on two seeded standard-normal images of the input size
    (default: the arch's, or `options["image_size"]`). `nonneg` is whether the module's output was
    >= 0 everywhere, i.e. it ends in a ReLU (or pools / clamps one): any other layer of a freshly
    initialised network has negative values on such input. The concepts and contrast methods (NMF)
    need non-negative layers; shapes do not depend on the weights. `inplace_modified`: a later
    in-place operation (e.g. torchvision's ReLU6(inplace=True) after a BatchNorm) overwrites the
    output; the activation store keeps a copy taken before it, a hook of your own that keeps the
    tensor does not. `calls`: how often the module ran (a store keeps the last call).

    On a transformer (a model with a token layout, tokens.py) a token layer's `shape` is its raw
    (T, D); `tokens` repeats it, `map` is the patch map (D, h, w) the methods read (for a conv layer
    its own (C, h, w), else None), `views` the shapes of its `LAYER.cls` (D,) and `LAYER.registers`
    (D, 1, R) views where the layout has those tokens, and `nonneg` is that of the patch map.
    Returns (rows, preprocess with num_classes, token layout as a dict with n_tokens, or None).
    """
    import torch

    from .models import ModelError, build_model, get_arch, resolve_preprocess
    from .tokens import token_layout

    options = options or {}
    if input_size is None and isinstance(options.get("image_size"), int):
        input_size = options["image_size"]
    if input_size is not None and input_size < 8:
        raise CliError(f"--input-size must be at least 8 pixels (as preprocess.input_size), got {input_size}")
    preprocess = resolve_preprocess(arch, {"channels": channels, "input_size": input_size})
    size = preprocess.get("input_size")
    if not size:
        raise CliError(f"arch {arch!r} has no fixed input size; give one with --input-size")
    if num_classes is None:
        num_classes = 10 if get_arch(arch).preprocess["channels"] == 1 else 1000
    try:
        model = build_model(arch, num_classes, preprocess["channels"], seed=seed, options=options).eval()
    except ModelError:  # an unknown option: its own message names the valid ones
        raise
    except (TypeError, ValueError) as err:  # the architecture refuses an option's value
        raise CliError(f"{arch} with arch options {options}: {err}") from None
    layout = token_layout(model)
    modules = {name: module for name, module in model.named_modules() if name}
    seen: dict[str, dict] = {}

    def hook(name):
        def record(module, inputs, output):
            if isinstance(output, (tuple, list)):
                output = output[0]
            if not isinstance(output, torch.Tensor):
                return
            row = seen.setdefault(name, {"calls": 0, "nonneg": True})
            is_tokens = layout is not None and layout.is_tokens(output)
            read = layout.to_map(output) if is_tokens else output  # a token layer is read as its patch map
            low = float(read.min()) if read.numel() else 0.0
            row.update(calls=row["calls"] + 1, shape=tuple(output.shape[1:]), low=low, check=_fingerprint(output), tensor=output,
                       is_tokens=is_tokens)
            row["nonneg"] = row["nonneg"] and low >= 0

        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in modules.items()]
    images = torch.randn(2, preprocess["channels"], size, size, generator=torch.Generator().manual_seed(seed))
    try:
        with torch.no_grad():
            logits = model(images)
    except Exception as err:  # e.g. a too small input, or a model that needs a fixed size (ViT)
        message = (str(err).splitlines() or [type(err).__name__])[0]
        raise CliError(f"{arch} cannot run on {input_shape_text(preprocess)} images: {message}") from None
    finally:
        for handle in handles:
            handle.remove()
    rows = []
    for name, module in modules.items():
        rec = seen.get(name)
        row = {"layer": name, "type": type(module).__name__, "shape": None, "nonneg": None, "calls": 0, "inplace_modified": False}
        if rec is not None:
            row.update(shape=rec["shape"], nonneg=rec["nonneg"], calls=rec["calls"], inplace_modified=_fingerprint(rec["tensor"]) != rec["check"])
        if layout is not None:
            is_tokens = rec is not None and rec["is_tokens"]
            shape = row["shape"]
            row["tokens"] = shape if is_tokens else None
            row["map"] = (shape[1], *layout.grid) if is_tokens else (shape if shape is not None and len(shape) == 3 else None)
            views = {}
            if is_tokens and layout.cls:
                views[f"{name}.cls"] = (shape[1],)
            if is_tokens and layout.registers:
                views[f"{name}.registers"] = (shape[1], 1, layout.registers)
            row["views"] = views
        rows.append(row)
    layout_info = {**layout.to_dict(), "n_tokens": layout.n_tokens} if layout is not None else None
    return rows, {**preprocess, "num_classes": int(logits.shape[1])}, layout_info


def dataset_kinds() -> list[dict]:
    """The dataset kinds of the config schema: name, description, the keys only that kind uses."""
    import re

    from .config import load_schema
    from .data import DATASET_KINDS

    spec = load_schema()["$defs"]["dataset"]["properties"]
    kinds = spec["kind"]["enum"]
    text = " ".join(spec["kind"]["description"].split())
    described = dict(re.findall(r"`(\w+)`: (.*?)(?=;? `\w+`:|$)", text))
    own: dict[str, list[str]] = {kind: [] for kind in kinds}
    common = []
    for key, prop in spec.items():
        if key == "kind":
            continue
        first = " ".join(str(prop.get("description", "")).split()).split(".")[0]
        owners = [k for k in kinds if first.startswith(f"{k} only")]
        for k in owners:
            own[k].append(key)
        if not owners:
            common.append(key)
    out = []
    for kind in kinds:
        out.append({
            "kind": kind,
            "description": described.get(kind, "").rstrip(";. "),
            "keys": own[kind],
            "common_keys": common,
            "implemented": kind in DATASET_KINDS,
        })
    return out


def _codecs(array) -> str:
    names = []
    for codec in getattr(array, "compressors", None) or ():
        name = type(codec).__name__.removesuffix("Codec").lower()
        if name == "blosc":
            name = f"blosc-{getattr(codec, 'cname', '')}".rstrip("-")
            name = name.replace("BloscCname.", "")
        level = getattr(codec, "level", None) if hasattr(codec, "level") else getattr(codec, "clevel", None)
        names.append(f"{name} {level}" if level is not None else name)
    return ", ".join(names) or "none"


def _disk_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _unfinished_hint(path: Path) -> str:
    """Where a killed writer of `path` left its temporary (the pipeline renames a store when complete)."""
    for parent, name in ((path.parent, path.name), (path.parent.parent, path.parent.name)):
        if parent.is_dir() and any(parent.glob(f".{name}.tmp-*")):
            return f"; only the unfinished temporary {parent}/.{name}.tmp-* is there (its job did not finish: rerun it)"
    return ""


def store_info(path: str | Path) -> dict:
    """Shape, dtype, chunks, rows, images and provenance of a store the pipeline wrote (read-only).

    Opened with the library's readers, so a store whose writer did not finish is refused (StoreError).
    """
    import numpy as np
    import zarr

    from .store import ActivationStore, ClassVectorStore, CropStore, RowStore, StoreError, open_complete

    path = Path(path)
    if not path.exists():
        raise StoreError(f"no store at {path}{_unfinished_hint(path)}")
    if not (path / "zarr.json").is_file():
        raise StoreError(f"{path} is not a Zarr store (no zarr.json)")
    attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    kind = attrs.get("kind", "?")
    info: dict[str, Any] = {"path": str(path), "kind": kind}
    if "n_rows" in attrs:  # activations, crop vectors, NAVE segments: row stores
        reader = {"activations": ActivationStore, "crop_vectors": CropStore}.get(kind, RowStore)
        store = reader(path)  # refuses an unfinished store
        info["rows"] = len(store)
        arrays = {name: store[name] for name in sorted(store.group.array_keys())}
        if "image_id" in arrays:
            info["images"] = int(len(np.unique(arrays["image_id"][:])))
        if "label" in arrays:
            info["classes"] = int(len(np.unique(arrays["label"][:])))
    elif "classes" in attrs and "counts" in attrs:  # per-class vector sets (contrast cutoff vectors)
        store = ClassVectorStore(path)
        info["classes"] = len(store.classes)
        info["rows"] = int(sum(store.counts.values()))
        if store.counts:
            info["per_class"] = f"{min(store.counts.values())}-{max(store.counts.values())} rows per class; arrays of the first class shown"
        arrays = {f"c{c}/{name}": store.group[f"c{c}/{name}"] for c in store.classes[:1] for name in ("vectors", "image_id", "position")}
    else:
        group = open_complete(path)
        arrays = {name: group[name] for name in sorted(group.array_keys())}
    info["arrays"] = {
        name: {"shape": list(a.shape), "dtype": str(a.dtype), "chunks": list(a.chunks), "compressors": _codecs(a)}
        for name, a in arrays.items()
    }
    info["bytes_on_disk"] = _disk_size(path)
    info["attrs"] = {k: v for k, v in attrs.items() if k not in ("classes", "counts")}
    return info
