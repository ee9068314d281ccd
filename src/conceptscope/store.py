"""Zarr stores of per-image rows (activation maps, crop vectors): streaming writer and readers.

A store is a Zarr v3 group of arrays that share their first axis (rows: images or crops), chunked
along it and compressed. The writer streams rows in chunk-aligned blocks from a background thread,
so memory is bounded by a chunk and compression overlaps the forward passes. A store is finished
only when its `complete` attribute is true; it is written under a temporary name by its caller
(see `conceptscope.utils.atomic_path`), so an interrupted job never leaves a store that looks done.

    store = open_activations("results", "digits_shortcut", "vgg_shortcut", "features.7")
    acts = store.dask()            # (N, C, h, w), lazily read chunk by chunk
    store.image_ids                # (N,) manifest image ids
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

COMPRESSIONS = ("zstd", "lz4", "none")


class StoreError(ValueError):
    """A store is missing, incomplete or not what the reader expects."""


def _compressors(compression: str, level: int):
    if compression == "zstd":
        return [ZstdCodec(level=level)]
    if compression == "lz4":
        return [BloscCodec(cname="lz4", clevel=level, shuffle="shuffle")]
    if compression == "none":
        return None
    raise StoreError(f"unknown compression {compression!r}; expected one of {COMPRESSIONS}")


def provenance(kind: str, **fields: Any) -> dict[str, Any]:
    """Store attributes that say what a store is and which library versions made it."""
    from .utils import library_versions

    return {"kind": kind, **fields, "versions": {**library_versions(), "zarr": zarr.__version__}}


class RowStoreWriter:
    """Write arrays that share a first axis of `n_rows` rows into a new Zarr group at `path`.

    Rows must be appended in order; each array is created on the first append from the row shape
    and dtype given in `dtypes` (or the data's own). `close()` flushes, then marks the store complete.
    """

    def __init__(
        self,
        path: str | Path,
        n_rows: int,
        *,
        chunk_rows: int = 64,
        dtypes: dict[str, str] | None = None,
        compression: str = "zstd",
        compression_level: int = 1,
        attrs: dict[str, Any] | None = None,
        queue_size: int = 4,
    ):
        self.path = Path(path)
        self.n_rows = int(n_rows)
        self.chunk_rows = max(1, int(chunk_rows))
        self.dtypes = dtypes or {}
        self.compressors = _compressors(compression, compression_level)
        self.group = zarr.open_group(str(self.path), mode="w-", zarr_format=3)
        self.group.attrs.update({**(attrs or {}), "n_rows": self.n_rows, "complete": False})
        self.arrays: dict[str, zarr.Array] = {}
        self._buffers: dict[str, list[np.ndarray]] = {}
        self._buffered = 0
        self._written = 0
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _create(self, name: str, sample: np.ndarray) -> None:
        dtype = np.dtype(self.dtypes.get(name, sample.dtype))
        self.arrays[name] = self.group.create_array(
            name,
            shape=(self.n_rows, *sample.shape[1:]),
            chunks=(self.chunk_rows, *sample.shape[1:]),
            dtype=dtype,
            compressors=self.compressors,
            fill_value=0,
        )

    def append(self, **columns: np.ndarray) -> None:
        """Append the next rows: one array per name, all with the same number of rows."""
        if self._error:
            raise self._error
        lengths = {len(v) for v in columns.values()}
        if len(lengths) != 1:
            raise StoreError(f"appended arrays differ in row count: { {k: len(v) for k, v in columns.items()} }")
        (n,) = lengths
        if self._written + self._buffered + n > self.n_rows:
            raise StoreError(f"{self.path}: more than the declared {self.n_rows} rows appended")
        for name, value in columns.items():
            value = np.asarray(value)
            if name not in self.arrays:
                self._create(name, value)
            self._buffers.setdefault(name, []).append(value.astype(self.arrays[name].dtype, copy=False))
        self._buffered += n
        while self._buffered >= self.chunk_rows:
            self._flush(self.chunk_rows * (self._buffered // self.chunk_rows))

    def _flush(self, n: int) -> None:
        block = {}
        for name, parts in self._buffers.items():
            data = np.concatenate(parts) if len(parts) > 1 else parts[0]
            block[name] = data[:n]
            rest = data[n:]
            self._buffers[name] = [rest] if len(rest) else []
        self._queue.put((self._written, block))
        self._written += n
        self._buffered -= n

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is None:
                start, block = item
                try:
                    for name, data in block.items():
                        self.arrays[name][start : start + len(data)] = data
                except BaseException as err:  # surfaced in append()/close()
                    self._error = err

    def close(self) -> None:
        """Write the remaining rows, wait for the writer thread, and mark the store complete."""
        if self._buffered:
            self._flush(self._buffered)
        self._queue.put(None)
        self._thread.join()
        if self._error:
            raise self._error
        if self._written != self.n_rows:
            raise StoreError(f"{self.path}: {self._written} rows written, {self.n_rows} declared")
        self.group.attrs["complete"] = True

    def abort(self) -> None:
        """Stop the writer thread without marking the store complete."""
        self._queue.put(None)
        self._thread.join()


def open_complete(path: Path, what: str = "store") -> zarr.Group:
    """The Zarr group at `path`, read-only; a missing store, or one whose writer did not finish, is refused."""
    if not (path / "zarr.json").is_file():
        raise StoreError(f"no {what} at {path}")
    group = zarr.open_group(str(path), mode="r")
    if group.attrs.get("complete") is not True:
        raise StoreError(f"store {path} is incomplete (its writer did not finish); rerun the job that makes it")
    return group


class RowStore:
    """Read access to a complete row store: zarr arrays, NumPy slices and dask views."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.group = open_complete(self.path)
        self._arrays: dict[str, zarr.Array] = {}  # opened once: a group lookup costs about a millisecond

    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs)

    def __getitem__(self, name: str) -> zarr.Array:
        if name not in self._arrays:
            if name not in self.group:
                raise StoreError(f"store {self.path} has no array {name!r}; it has {sorted(self.group.array_keys())}")
            self._arrays[name] = self.group[name]
        return self._arrays[name]

    def __len__(self) -> int:
        return int(self.group.attrs["n_rows"])

    def numpy(self, name: str, rows: slice | np.ndarray | None = None) -> np.ndarray:
        """Rows of one array as NumPy (all rows when `rows` is None: mind the size)."""
        array = self[name]
        return array[:] if rows is None else (array.oindex[rows] if isinstance(rows, np.ndarray) else array[rows])

    def dask(self, name: str):
        """A lazy dask array over one array, one dask chunk per Zarr chunk."""
        import dask.array as da

        return da.from_zarr(self[name])


class ActivationStore(RowStore):
    """Activations of one (dataset, model, layer): `activations` (N, C, h, w) plus `image_id`, `label`."""

    @property
    def activations(self) -> zarr.Array:
        return self["activations"]

    @property
    def image_ids(self) -> np.ndarray:
        return self["image_id"][:]

    def dask(self, name: str = "activations"):
        return super().dask(name)


class CropStore(RowStore):
    """Crop vectors of one (dataset, model, layer): `vectors` (M, C) plus `image_id`, `grid`, `cell`, `box`
    and, in `crops` mode (each crop passed through the model on its own), `predicted`: the model's
    class for the crop."""

    @property
    def predicted(self) -> np.ndarray | None:
        """The model's predicted class of each crop, or None where the store has none (`cells` mode)."""
        return self["predicted"][:] if "predicted" in self.group else None

    @property
    def vectors(self) -> zarr.Array:
        return self["vectors"]

    @property
    def image_ids(self) -> np.ndarray:
        return self["image_id"][:]

    def dask(self, name: str = "vectors"):
        return super().dask(name)


def layer_store_name(layer: str) -> str:
    """File name of a layer's store (module names are safe as file names: letters, digits, dots)."""
    return f"{layer}.zarr"


def open_activations(results: str | Path, dataset: str, model: str, layer: str) -> ActivationStore:
    """Open `results/activations/{dataset}/{model}/{layer}.zarr`."""
    return ActivationStore(Path(results) / "activations" / dataset / model / layer_store_name(layer))


def open_crops(results: str | Path, dataset: str, model: str, layer: str) -> CropStore:
    """Open `results/crops/{dataset}/{model}/{layer}.zarr`."""
    return CropStore(Path(results) / "crops" / dataset / model / layer_store_name(layer))


class ClassVectorStore:
    """Per-class sets of activation vectors (e.g. the contrast method's cutoff vectors), one Zarr group.

    Each class is a subgroup `c{class}` with `vectors` (N_c, C), `image_id` (N_c,) and `position`
    (N_c, 2) = (y, x) at the layer; the group's attributes list the classes and their counts and
    say whether the writer finished. Write with `ClassVectorStore.create`, `add` per class, `close`.
    """

    def __init__(self, path: str | Path, *, _group: zarr.Group | None = None):
        self.path = Path(path)
        self.group = open_complete(self.path, "class-vector store") if _group is None else _group

    @classmethod
    def create(cls, path: str | Path, attrs: dict[str, Any] | None = None, compression: str = "zstd") -> "ClassVectorStore":
        group = zarr.open_group(str(path), mode="w-", zarr_format=3)
        group.attrs.update({**(attrs or {}), "classes": [], "counts": [], "complete": False})
        store = cls(path, _group=group)
        store._compressors = _compressors(compression, 1)
        return store

    def add(self, cls: int, vectors: np.ndarray, image_ids: np.ndarray, positions: np.ndarray) -> None:
        """Store one class's vectors (N, C) with the image id and (y, x) of each."""
        vectors = np.asarray(vectors, np.float32)
        if vectors.ndim != 2 or len(image_ids) != len(vectors) or len(positions) != len(vectors):
            raise StoreError(f"class {cls}: vectors must be (N, C) with N image ids and positions, got {vectors.shape}, {len(image_ids)}, {len(positions)}")
        classes = list(self.group.attrs["classes"])
        if int(cls) in classes:
            raise StoreError(f"class {cls} is already in {self.path}")
        sub = self.group.create_group(f"c{int(cls)}")
        for name, data in (("vectors", vectors), ("image_id", np.asarray(image_ids, np.int64)), ("position", np.asarray(positions, np.int32).reshape(-1, 2))):
            chunks = (max(1, min(len(data), 2048)), *data.shape[1:])
            sub.create_array(name, shape=data.shape, chunks=chunks, dtype=data.dtype, compressors=self._compressors, fill_value=0)[...] = data
        self.group.attrs.update({"classes": classes + [int(cls)], "counts": list(self.group.attrs["counts"]) + [len(vectors)]})

    def close(self) -> None:
        self.group.attrs["complete"] = True

    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs)

    @property
    def classes(self) -> list[int]:
        return [int(c) for c in self.group.attrs["classes"]]

    @property
    def counts(self) -> dict[int, int]:
        return dict(zip(self.classes, (int(n) for n in self.group.attrs["counts"])))

    def vectors(self, cls: int) -> np.ndarray:
        if int(cls) not in self.classes:
            raise StoreError(f"store {self.path} has no vectors of class {cls}; it has classes {self.classes[:20]}")
        return self.group[f"c{int(cls)}/vectors"][...]

    def image_ids(self, cls: int) -> np.ndarray:
        return self.group[f"c{int(cls)}/image_id"][...]
