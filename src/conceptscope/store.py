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
    `inner_rows`: {array name: n}: those arrays are written sharded, one shard file per `chunk_rows`
    rows holding inner chunks of n rows, so that a single row costs one small read (`RowReader`: the
    exact re-ranking of an approximate crop index reads its candidates so).
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
        inner_rows: dict[str, int] | None = None,
    ):
        self.path = Path(path)
        self.n_rows = int(n_rows)
        self.chunk_rows = max(1, int(chunk_rows))
        for name, rows in (inner_rows or {}).items():
            if rows < 1 or self.chunk_rows % rows:
                raise StoreError(f"inner_rows of {name!r} = {rows} must be a positive divisor of chunk_rows = {self.chunk_rows}")
        self.inner_rows = inner_rows or {}
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
        row = sample.shape[1:]
        layout = {"chunks": (self.chunk_rows, *row)}
        if name in self.inner_rows:
            layout = {"shards": (self.chunk_rows, *row), "chunks": (self.inner_rows[name], *row)}
        self.arrays[name] = self.group.create_array(
            name,
            shape=(self.n_rows, *row),
            **layout,
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


_MISSING = np.uint64(2**64 - 1)


class RowReader:
    """Scattered rows of a Zarr array, read cheaply: the candidates of an exact re-ranking.

    Zarr decodes a whole chunk for any row of it, at about half a millisecond of overhead per
    chunk. For an array on local disk written sharded with small inner chunks (`RowStoreWriter`
    with `inner_rows`), this reader instead reads each needed inner chunk by its byte range, found
    in the shard's index as the Zarr v3 sharding codec lays it out (index at the end of the shard
    file: an (offset, nbytes) pair of little-endian uint64 per inner chunk, then a CRC32C), and
    decodes it here (raw little-endian bytes, optionally zstd). Any other layout is read through
    `array.oindex`, which gives the same values more slowly.

        reader = RowReader(store.vectors)
        block = reader.read(np.array([17, 3, 902_114]))    # rows in the order given
    """

    def __init__(self, array: zarr.Array):
        self.array = array
        self._indexes: dict[int, np.ndarray] = {}
        self._layout = self._sharded_layout(array)

    @staticmethod
    def _sharded_layout(array: zarr.Array) -> dict | None:
        meta = array.metadata.to_dict()
        codecs = meta.get("codecs", [])
        root = getattr(array.store, "root", None)
        key = meta.get("chunk_key_encoding", {})
        if root is None or len(codecs) != 1 or codecs[0]["name"] != "sharding_indexed" or key.get("name") != "default":
            return None
        conf = codecs[0]["configuration"]
        inner = [c["name"] for c in conf["codecs"]]
        if conf.get("index_location", "end") != "end" or inner not in (["bytes"], ["bytes", "zstd"]):
            return None
        if conf["codecs"][0].get("configuration", {}).get("endian", "little") != "little":
            return None
        if [c["name"] for c in conf["index_codecs"]] != ["bytes", "crc32c"]:
            return None
        shard_shape, inner_shape = array.shards, tuple(conf["chunk_shape"])
        if any(s != i for s, i in zip(shard_shape[1:], inner_shape[1:])):  # rows only are split
            return None
        return {
            "dir": Path(root) / array.path,
            "separator": key.get("configuration", {}).get("separator", "/"),
            "shard_rows": shard_shape[0],
            "inner_rows": inner_shape[0],
            "inner_shape": inner_shape,
            "zstd": inner == ["bytes", "zstd"],
        }

    @property
    def fast(self) -> bool:
        """Whether rows are read by byte range (sharded layout) rather than through Zarr."""
        return self._layout is not None

    def _shard_path(self, shard: int) -> Path:
        layout = self._layout
        key = layout["separator"].join(["c", str(shard), *("0" * (self.array.ndim - 1))])
        return layout["dir"] / key

    def _shard_index(self, shard: int, handle) -> np.ndarray:
        if shard not in self._indexes:
            n_inner = self._layout["shard_rows"] // self._layout["inner_rows"]
            size = n_inner * 16
            handle.seek(-(size + 4), 2)
            raw = handle.read(size)
            self._indexes[shard] = np.frombuffer(raw, "<u8").reshape(n_inner, 2)
        return self._indexes[shard]

    def read_range(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1 (a bulk read: whole shards by byte range, or a Zarr slice)."""
        return self.read(np.arange(start, min(stop, self.array.shape[0]))) if self.fast else self.array[start:stop]

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The given rows (any order, repeats allowed) as one NumPy array, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1 or (len(rows) and (rows.min() < 0 or rows.max() >= self.array.shape[0])):
            raise IndexError(f"rows must be a 1-D array of indexes below {self.array.shape[0]}")
        if not self.fast:
            unique, inverse = np.unique(rows, return_inverse=True)
            return self.array.oindex[unique][inverse] if len(rows) else np.empty((0, *self.array.shape[1:]), self.array.dtype)
        layout = self._layout
        out = np.empty((len(rows), *self.array.shape[1:]), self.array.dtype)
        inner_rows, per_shard = layout["inner_rows"], layout["shard_rows"] // layout["inner_rows"]
        order = np.argsort(rows, kind="stable")
        chunks = rows[order] // inner_rows
        starts = np.flatnonzero(np.r_[True, chunks[1:] != chunks[:-1]])
        stops = np.r_[starts[1:], len(rows)]
        decode = _zstd_decoder() if layout["zstd"] else bytes
        dtype = self.array.dtype.newbyteorder("<")
        shard, handle = None, None
        try:
            for begin, end in zip(starts, stops):
                chunk, picked = int(chunks[begin]), order[begin:end]
                if chunk // per_shard != shard:
                    if handle is not None:
                        handle.close()
                    shard = chunk // per_shard
                    path = self._shard_path(shard)
                    handle = open(path, "rb") if path.is_file() else None  # a shard never written: fill value
                offset, nbytes = self._shard_index(shard, handle)[chunk % per_shard] if handle else (_MISSING, 0)
                if offset == _MISSING:
                    out[picked] = self.array.fill_value
                    continue
                handle.seek(int(offset))
                block = np.frombuffer(decode(handle.read(int(nbytes))), dtype).reshape(layout["inner_shape"])
                out[picked] = block[rows[picked] - chunk * inner_rows]
        finally:
            if handle is not None:
                handle.close()
        return out


def _zstd_decoder():
    """One zstd codec's decode for a whole read (not one codec per inner chunk)."""
    from numcodecs import Zstd

    return Zstd().decode


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
    def vector_reader(self) -> "RowReader":
        """Rows of `vectors` by byte range where the store is sharded (see `RowReader`)."""
        if not hasattr(self, "_vector_reader"):
            self._vector_reader = RowReader(self.vectors)
        return self._vector_reader

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
