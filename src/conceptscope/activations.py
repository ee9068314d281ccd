"""Hidden-layer activations: forward hooks on several layers in one pass, streamed into Zarr stores.

    rows = select_images(data.split("test"), per_class=50)
    extract_activations(model, data, rows, ["features.14", "features.18"], transform, out_dir)
"""

from __future__ import annotations

import operator
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch import fx, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import tokens
from .data import ImageDataset, PreparedDataset
from .models import get_layer
from .tokens import token_layout
from .store import RowStoreWriter, layer_store_name, provenance
from .utils import atomic_path

SELECT_BY = ("label", "prediction")


def select_images(
    rows: pd.DataFrame,
    *,
    per_class: int | None = None,
    by: str = "label",
    predictions: pd.DataFrame | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Manifest rows to store: all of them, or a seeded random sample of `per_class` per label or per
    predicted class.

    `by="prediction"` groups by the model's predicted class (the concept methods' choice: the paper
    explains what the model *predicts* as A); `predictions` must then hold image_id and pred.
    A class with more than `per_class` images gets a uniform sample drawn with `seed` (not the first
    ones in manifest order, which would hold every false positive of the lower-numbered classes and
    none of the higher ones); the same seed and rows give the same sample. The result keeps manifest
    order and gains a `group` column (the class it was selected for).
    """
    if by not in SELECT_BY:
        raise ValueError(f"unknown selection 'by' {by!r}; expected one of {SELECT_BY}")
    rows = rows.copy()
    if by == "prediction":
        if predictions is None:
            raise ValueError("selection by prediction needs the model's predictions")
        pred = predictions.drop_duplicates("image_id").set_index("image_id")["pred"]
        missing = ~rows["image_id"].isin(pred.index)
        if missing.any():
            raise ValueError(f"{int(missing.sum())} selected images have no prediction (predict that split first)")
        rows["group"] = rows["image_id"].map(pred).astype(np.int64)
    else:
        rows["group"] = rows["label"].astype(np.int64)
    rows = rows.sort_values("image_id", kind="stable")
    if per_class:
        # one permutation of all rows, then the first `per_class` of each group in that order
        rank = np.random.default_rng(seed).permutation(len(rows))
        keep = pd.Series(rank, index=rows.index).groupby(rows["group"].to_numpy()).rank(method="first") <= per_class
        rows = rows[keep.to_numpy()]
    return rows.reset_index(drop=True)


class LayerRecorder:
    """Forward hooks that keep the latest output of each named layer (a detached copy)."""

    def __init__(self, model: nn.Module, layers: Sequence[str]):
        self.model = model
        self.layers = list(layers)
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = []

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if isinstance(output, (tuple, list)):
                output = output[0]
            # a copy: a later in-place op (ReLU6(inplace=True) after a BatchNorm, `out += identity`)
            # would otherwise change the recorded values
            self.outputs[name] = output.detach().clone()

        return hook

    def __enter__(self) -> "LayerRecorder":
        for name in self.layers:
            self._handles.append(get_layer(self.model, name).register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@contextmanager
def _writers(out_dir: Path, layers: Sequence[str], n_rows: int, attrs: dict, **store_kw) -> Iterator[dict[str, RowStoreWriter]]:
    writers = {}
    try:
        for layer in layers:
            writers[layer] = RowStoreWriter(out_dir / layer_store_name(layer), n_rows, attrs={**attrs, "layer": layer}, **store_kw)
        yield writers
        for writer in writers.values():
            writer.close()
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise


@torch.no_grad()
def _check_finite(acts: np.ndarray, layer: str, image_ids: np.ndarray, dtype: str) -> None:
    """Refuse activations (B, ...) that hold NaN or inf, or that the store's float16 cannot hold."""
    finite = np.isfinite(acts.reshape(len(acts), -1)).all(axis=1)
    if not finite.all():
        raise ValueError(f"layer {layer!r} gives NaN or inf activations for image ids {image_ids[~finite][:5].tolist()}; "
                         "check the model's weights and the preprocessing (nothing was stored)")
    limit = float(np.finfo(np.float16).max)
    if dtype == "float16" and acts.size and float(np.abs(acts).max()) > limit:
        raise ValueError(f"layer {layer!r} has activations up to {float(np.abs(acts).max()):.4g}, beyond float16's {limit:g}; "
                         "set activations.dtype to float32")


def extract_activations(
    model: nn.Module,
    data: PreparedDataset,
    rows: pd.DataFrame,
    layers: Sequence[str],
    transform,
    out_dir: str | Path,
    *,
    dtype: str = "float32",
    batch_size: int = 32,
    chunk_images: int = 32,
    compression: str = "zstd",
    compression_level: int = 1,
    device: torch.device | str = "cpu",
    attrs: dict | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """One forward pass over `rows`, writing `out_dir/{layer}.zarr` for every layer.

    Each store holds `activations` (N, C, h, w) in `dtype`, chunked by `chunk_images` images, plus
    `image_id`, `label` and `group`. `out_dir` is written atomically: it appears only when every
    layer's store is complete.
    """
    if not len(rows):
        raise ValueError(f"no images selected from {data.path} for activations; check the selection settings")
    model = model.to(device).eval()
    subset = ImageDataset(data, rows, transform)
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=0)
    groups = rows["group"].to_numpy() if "group" in rows else rows["label"].to_numpy()
    attrs = provenance("activations", dtype=dtype, n_images=len(rows), **(attrs or {}))
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        store_kw = dict(chunk_rows=chunk_images, dtypes={"activations": dtype}, compression=compression, compression_level=compression_level)
        with LayerRecorder(model, layers) as recorder, _writers(tmp, layers, len(rows), attrs, **store_kw) as writers:
            start = 0
            for images, labels, image_ids in tqdm(loader, desc="activations", disable=not progress, leave=False):
                model(images.to(device))
                stop = start + len(labels)
                for layer, writer in writers.items():
                    acts = recorder.outputs[layer].float().cpu().numpy()
                    _check_finite(acts, layer, image_ids.numpy(), dtype)
                    writer.append(
                        activations=acts,
                        image_id=image_ids.numpy().astype(np.int64),
                        label=labels.numpy().astype(np.int64),
                        group=groups[start:stop].astype(np.int64),
                    )
                start = stop
    return {layer: out_dir / layer_store_name(layer) for layer in layers}


# --------------------------------------------------------------------------------------------
# Running a model from a hidden layer on (shifted activations)


class _LayerLeafTracer(fx.Tracer):
    def __init__(self, layer: str):
        super().__init__()
        self.layer = layer

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return qualified_name == self.layer or super().is_leaf_module(module, qualified_name)


def split_at_layer(model: nn.Module, layer: str) -> tuple[fx.GraphModule, fx.GraphModule] | None:
    """`model` cut at `layer` into (head, tail), or None where it cannot be traced.

    head(images) returns (layer output, *saved) and tail(layer output, *saved) the logits, where
    `saved` are the values computed before the layer that are still needed after it (e.g. the input
    of a residual block whose first conv is the layer). On a transformer the layer output is its
    map as get_layer's view sees it, and the first of `saved` the tokens before the patch grid.
    Built with torch.fx; None for models with data-dependent control flow, a layer called more than
    once, or a transformer layer with a tuple output or a `.cls` / `.registers` view.
    """
    get_layer(model, layer)
    layout = token_layout(model)
    if layout is not None and layer not in dict(model.named_modules()):
        return None  # a `.cls` / `.registers` view: the caller falls back to a full forward pass
    try:
        traced = fx.GraphModule(model, _LayerLeafTracer(layer).trace(model))
    except Exception:  # untraceable control flow: the caller falls back to a full forward pass
        return None
    nodes = list(traced.graph.nodes)
    cuts = [i for i, n in enumerate(nodes) if n.op == "call_module" and n.target == layer]
    if len(cuts) != 1:
        return None
    before, after = nodes[: cuts[0] + 1], nodes[cuts[0] + 1 :]
    call, inside = before[-1], set(before)
    if layout is not None and any(user.target is operator.getitem and isinstance(user.args[1], int) for user in call.users):
        return None  # a tuple output (e.g. attention, out[0]): the full forward pass keeps its other parts
    needed_after = [n for n in before[:-1] if any(user not in inside for user in n.users)]
    head, tail = fx.Graph(), fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in before:
        env[node] = head.node_copy(node, lambda n: env[n])
    saved = [n for n in needed_after if n.op != "get_attr"]
    if layout is None:
        head.output((env[call], *(env[n] for n in saved)))
        env = {call: tail.placeholder("layer_output")}
    else:  # a transformer: the head gives the layer's map (its grid view) and the tokens before the grid
        shape = (layout.n_prefix, layout.n_tokens, *layout.grid)
        layer_map = head.call_function(tokens.view_map, (env[call], *shape))
        prefix = head.call_function(tokens.view_prefix, (env[call], *shape[:2]))
        head.output((layer_map, prefix, *(env[n] for n in saved)))
        layer_output, prefix = tail.placeholder("layer_output"), tail.placeholder("token_prefix")
        env = {call: tail.call_function(tokens.unview, (layer_output, prefix))}
    for i, node in enumerate(saved):
        env[node] = tail.placeholder(f"saved_{i}")
    for node in [n for n in needed_after if n.op == "get_attr"] + after:  # parameters are read, not passed
        env[node] = tail.node_copy(node, lambda n: env[n])
    parts = []
    for graph in (head, tail):
        part = fx.GraphModule(traced, graph)
        part.delete_all_unused_submodules()
        parts.append(part.eval())
    return parts[0], parts[1]


class LayerRunner:
    """Run a model up to `layer` (head) and on from it with replaced activations (tail).

    Uses `split_at_layer` where the model traces, so moving activations costs only the tail;
    otherwise the head records the layer with a hook and the tail reruns the whole model with
    the layer's output replaced.
    """

    def __init__(self, model: nn.Module, layer: str):
        self.model, self.layer = model, layer
        self.split = split_at_layer(model, layer)

    @property
    def traced(self) -> bool:
        return self.split is not None

    def head(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """(the layer's activations, what the tail needs besides them)."""
        with torch.no_grad():
            if self.split is not None:
                out = self.split[0](images)
                return out[0], tuple(out[1:])
            with LayerRecorder(self.model, [self.layer]) as recorder:
                self.model(images)
            return recorder.outputs[self.layer], (images,)

    def tail(self, activations: torch.Tensor, saved: tuple) -> torch.Tensor:
        """The logits with the layer's output replaced by `activations` (`saved` from `head`)."""
        with torch.no_grad():
            if self.split is not None:
                return self.split[1](activations, *saved)
            handle = get_layer(self.model, self.layer).register_forward_hook(lambda module, inputs, output: activations)
            try:
                return self.model(*saved)
            finally:
                handle.remove()

    def activations(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(images)[0]

    def logits(self, images: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
        """The model's logits for `images` with the layer's output replaced by `activations`."""
        return self.tail(activations, self.head(images)[1])
