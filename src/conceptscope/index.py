"""FAISS index over crop vectors: cosine nearest-crop retrieval at ImageNet scale.

The concepts paper (Herdt & Otero Baguer, Sec. 4.2, App. B) shows each concept vector by the m = 8
dataset crops of highest cosine similarity, found by a brute-force scan over 11.5M ImageNet crops.
Here the crop vectors are L2-normalised and put in a FAISS inner-product index, so cosine
similarity is the inner product. Index types (one registry, chosen by config or by size):

    flat      exact scan (the default below `exact_below` vectors)
    ivf_flat  inverted lists over k-means cells, full float32 vectors
    ivf_sq8   inverted lists, 8-bit scalar-quantised vectors (4x smaller, near-exact distances)
    ivf_pq    inverted lists, product-quantised codes (`pq_m` sub-quantisers of `pq_nbits` bits;
              4 bits are scanned with FAISS's SIMD fast-scan kernels)
    ivf_pq_refine  ivf_pq codes scanned, the best `refine_k_factor` * m re-ranked with 8-bit codes
              of the full vectors (near-exact ranking, but 8 bits a dimension held in RAM)
    ivf_pq_rerank  4-bit fast-scan PQ codes scanned (dim / 5 sub-quantisers by default), the best
              re-ranked with compact `rerank_codes` in RAM (6 bits a dimension by default), then
              the best few crops of each of the best `exact_k_factor` * m images re-ranked exactly
              with their vectors read back from the crop store (the default above `exact_below`:
              RAM grows by dim / 10 + 3 dim / 4 + 8 bytes a vector, the ranking is exact)
    hnsw      graph index over full vectors

    store = open_crops("results", "imagenette", "mobilenet_v2", "features.18")
    index = build_crop_index(store, params)
    save_index(index, path, index_info(index, params, store))  # searched by crop_search.CropIndex
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import faiss
import numpy as np
from tqdm.auto import tqdm

from .store import CropStore
from .utils import atomic_path, write_json

INDEX_TYPES = ("auto", "flat", "ivf_flat", "ivf_sq8", "ivf_pq", "ivf_pq_refine", "ivf_pq_rerank", "hnsw")


@dataclass
class IndexParams:
    """Index settings; every field is a config key of `index:` (schemas/config.schema.yaml)."""

    type: str = "auto"
    exact_below: int = 200_000
    nlist: int | None = None
    nprobe: int | None = None
    pq_m: int | None = None
    pq_nbits: int | None = None
    refine_k_factor: int | None = None
    rerank_codes: str = "SQ6"
    exact_k_factor: int = 4
    exact_per_image: int = 3
    hnsw_m: int = 32
    coarse: str = "auto"
    ef_search: int = 128
    train_size: int | None = None
    train_iters: int = 10
    seed: int = 0
    gpu: str = "auto"

    def __post_init__(self):
        if self.type not in INDEX_TYPES:
            raise ValueError(f"unknown index type {self.type!r}; expected one of {INDEX_TYPES}")
        if self.pq_nbits not in (None, 4, 8):
            raise ValueError(f"index.pq_nbits = {self.pq_nbits!r}; expected 4, 8 or null")


def choose_type(params: IndexParams, n: int) -> str:
    """`auto`: exact below `exact_below` vectors, IVF-PQ with exact re-ranking from the store above."""
    if params.type != "auto":
        return params.type
    return "flat" if n < params.exact_below else "ivf_pq_rerank"


def store_inner_rows(setting: int | str | None, n_rows: int, params: IndexParams) -> int | None:
    """The crop store's inner-chunk rows (`crops.inner_rows`): `auto` shards the vectors in 16-row
    inner chunks exactly where their index re-ranks candidates read back from the store."""
    if setting != "auto":
        return setting
    return 16 if choose_type(params, n_rows) == "ivf_pq_rerank" else None


def default_nlist(n: int, kind: str = "ivf_flat") -> int:
    """About 4 * sqrt(n) inverted lists (sqrt(n) for ivf_pq_rerank, which probes many of them), a
    power of two, at least 16 and at most n / 39."""
    target = (1 if kind == "ivf_pq_rerank" else 4) * math.sqrt(max(n, 1))
    nlist = 2 ** int(round(math.log2(target)))
    return int(max(16, min(nlist, max(16, n // 39))))


# ivf_pq_rerank's search defaults, measured at 11.5M crops (benchmarks/results/index_11m.json)
RERANK_PROBE_SHARE = 32  # nprobe = nlist / 32
RERANK_K_FACTOR = 16  # PQ candidates per candidate passed to the rerank codes


def search_settings(params: IndexParams, kind: str, nlist: int) -> tuple[int, int]:
    """(nprobe, refine k_factor): the config's, else the defaults of the index type: 64 lists and
    128 for ivf_pq_refine; nlist / 32 lists and 16 for ivf_pq_rerank, whose fast-scan codes make
    probing many lists cheap and whose SQ6 codes need few candidates (docs/scale.md)."""
    rerank = kind == "ivf_pq_rerank"
    nprobe = params.nprobe or (max(1, nlist // RERANK_PROBE_SHARE) if rerank else 64)
    return min(nprobe, nlist), params.refine_k_factor or (RERANK_K_FACTOR if rerank else 128)


def pq_codes(kind: str, dim: int, params: IndexParams) -> tuple[int, int]:
    """(sub-quantisers, bits each) of the PQ codes of an index type over vectors of dimension dim.

    Unset, ivf_pq_rerank scans 4-bit fast-scan codes with about dim / 5 sub-quantisers (0.8 bits
    a dimension: at 11.5M crops the candidates it passes on hold the true neighbours as often as
    8-bit codes of the same size, at half the scan time, docs/scale.md); the other PQ types use
    64 8-bit sub-quantisers. Unset counts become the largest divisor of dim not above them.
    """
    nbits = params.pq_nbits or (4 if kind == "ivf_pq_rerank" else 8)
    if params.pq_m:
        if dim % params.pq_m:
            raise ValueError(f"index.pq_m = {params.pq_m} must divide the vector dimension {dim}")
        return params.pq_m, nbits
    target = max(1, dim // 5) if nbits == 4 else 64
    return max(m for m in range(1, min(target, dim) + 1) if dim % m == 0), nbits


def factory_string(kind: str, n: int, params: IndexParams, dim: int) -> str:
    """The faiss.index_factory description of an index type for n vectors of dimension dim.

    IVF cells are found by an exact scan of the centroids (`coarse: flat`) or, from 1024 lists on
    with `coarse: auto`, by an HNSW graph over them (`hnsw`): the centroid scan dominates the
    latency of a single query otherwise.
    """
    nlist = params.nlist or default_nlist(n, kind)
    coarse = params.coarse if params.coarse != "auto" else ("hnsw" if nlist >= 1024 else "flat")
    ivf = f"IVF{nlist}" + ("_HNSW32" if coarse == "hnsw" else "")
    pq = ""
    if kind.startswith("ivf_pq"):
        m, nbits = pq_codes(kind, dim, params)
        pq = f"PQ{m}" + ("x4fs" if nbits == 4 else "")
    return {
        "flat": "Flat",
        "ivf_flat": f"{ivf},Flat",
        "ivf_sq8": f"{ivf},SQ8",
        "ivf_pq": f"{ivf},{pq}",
        "ivf_pq_refine": f"{ivf},{pq},Refine(SQ8)",
        "ivf_pq_rerank": f"{ivf},{pq},Refine({params.rerank_codes})",
        "hnsw": f"HNSW{params.hnsw_m},Flat",
    }[kind]


def bytes_per_vector(kind: str, dim: int, params: IndexParams) -> float:
    """RAM of one vector in a built index of this type (codes and id), as FAISS stores it."""
    if kind == "flat":
        return 4 * dim
    if kind == "hnsw":
        return 4 * dim + 8 * params.hnsw_m
    if kind in ("ivf_flat", "ivf_sq8"):
        return 8 + (4 * dim if kind == "ivf_flat" else dim)
    m, nbits = pq_codes(kind, dim, params)
    codes = 8 + m * nbits / 8
    if kind == "ivf_pq_refine":
        return codes + dim
    if kind == "ivf_pq_rerank":
        sq_bits = {"SQ4": 4, "SQ6": 6, "SQ8": 8, "SQfp16": 16}.get(params.rerank_codes)
        if sq_bits:
            return codes + dim * sq_bits / 8
        pq = params.rerank_codes.removeprefix("PQ")
        return codes + (int(pq) if pq.isdigit() else 4 * dim)  # unknown codes: at most float32
    return codes


def training_rows(params: IndexParams, n: int) -> int:
    """Sample rows that train an IVF index: `train_size`, else 40 a list (faiss's minimum is 39)."""
    return min(n, params.train_size or 40 * (params.nlist or default_nlist(n, choose_type(params, n))))


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32, contiguous); zero rows stay zero."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _step(store: CropStore) -> int:
    """Rows of one bulk read: a shard where the vectors are sharded, else a chunk."""
    return (store.vectors.shards or store.vectors.chunks)[0]


def _chunks(store: CropStore) -> Iterable[tuple[int, np.ndarray]]:
    step = _step(store)
    for start in range(0, store.vectors.shape[0], step):
        yield start, store.vector_reader.read_range(start, start + step)


def _training_sample(store: CropStore, size: int, seed: int, progress: bool = False) -> np.ndarray:
    """A seeded uniform sample of rows (memory: the sample plus one chunk).

    A sharded store gives the rows directly by byte range; otherwise they are picked from a pass
    over the chunks, since Zarr decodes a whole chunk for any row of it.
    """
    n = store.vectors.shape[0]
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(size, n), replace=False))
    if store.vector_reader.fast:
        return np.concatenate([normalise(store.vector_reader.read(part)) for part in np.array_split(rows, max(1, len(rows) // 65536))])
    parts = []
    for start, block in tqdm(_chunks(store), desc="index training sample", total=math.ceil(n / _step(store)), disable=not progress, leave=False):
        picked = rows[(rows >= start) & (rows < start + len(block))] - start
        if len(picked):
            parts.append(block[picked])
    return normalise(np.concatenate(parts))


def _gpu_wanted(gpu: str) -> bool:
    available = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if gpu == "cuda" and not available:
        raise RuntimeError("index.gpu is 'cuda' but faiss-gpu or a GPU is missing (install the gpu extra)")
    return gpu != "cpu" and available


def build_crop_index(store: CropStore, params: IndexParams | None = None, progress: bool = True) -> faiss.Index:
    """Build an inner-product index over the L2-normalised crop vectors, streamed from the store.

    Training (IVF/PQ) uses `train_size` seeded sample rows (default 40 per list, faiss's minimum is 39)
    and `train_iters` k-means iterations; vectors are added
    chunk by chunk, so memory holds the index, the sample and one chunk.
    """
    params = params or IndexParams()
    n, dim = store.vectors.shape
    kind = choose_type(params, n)
    index = faiss.index_factory(dim, factory_string(kind, n, params, dim), faiss.METRIC_INNER_PRODUCT)
    fast_scan = kind.startswith("ivf_pq") and pq_codes(kind, dim, params)[1] == 4  # no GPU version
    on_gpu = _gpu_wanted(params.gpu) and kind in ("flat", "ivf_flat", "ivf_sq8", "ivf_pq") and not fast_scan
    if on_gpu:
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, 0, index)
    if not index.is_trained:
        sample = _training_sample(store, training_rows(params, n), params.seed, progress)
        configure_training(index, params)
        index.train(sample)
        del sample
    for _, block in tqdm(_chunks(store), desc="index add", total=math.ceil(n / _step(store)), disable=not progress, leave=False):
        index.add(normalise(block))
    if on_gpu:
        index = faiss.index_gpu_to_cpu(index)
    set_search_params(index, params)
    return index


def configure_training(index: faiss.Index, params: IndexParams) -> None:
    """Seed and bound the k-means of IVF (and PQ) training, so builds are reproducible."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.seed = params.seed
        ivf.cp.niter = params.train_iters
    inner = faiss.downcast_index(ivf) if ivf is not None else index
    if hasattr(inner, "do_polysemous_training"):
        # polysemous codes only serve Hamming-distance pre-filtering, which we do not use; their
        # training dominated the build time (52 s for 700 vectors of dim 1280)
        inner.do_polysemous_training = False
    pq = getattr(inner, "pq", None)
    if pq is not None:
        pq.cp.seed = params.seed
        pq.cp.niter = params.train_iters


def set_search_params(index: faiss.Index, params: IndexParams) -> tuple[int, int]:
    """Apply nprobe (IVF) / efSearch (HNSW) / k_factor (refine) to an index; returns (nprobe, k_factor)."""
    ivf = faiss.try_extract_index_ivf(index)
    nprobe, k_factor = search_settings(params, choose_type(params, index.ntotal), ivf.nlist if ivf is not None else 1)
    if ivf is not None:
        ivf.nprobe = nprobe
        quantizer = faiss.downcast_index(ivf.quantizer)
        if isinstance(quantizer, faiss.IndexHNSW):
            quantizer.hnsw.efSearch = max(2 * nprobe, 64)
    refine = faiss.downcast_index(index)
    if isinstance(refine, faiss.IndexRefine):
        refine.k_factor = k_factor
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    if hnsw is not None:
        hnsw.efSearch = params.ef_search
    return nprobe, k_factor


def save_index(index: faiss.Index, path: str | Path, info: dict) -> None:
    """Write `path` (FAISS) and `path.json` (type, parameters, source store) atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    write_json(path.with_suffix(path.suffix + ".json"), info)


def index_info(index: faiss.Index, params: IndexParams, store: CropStore) -> dict:
    n = index.ntotal
    return {
        "type": choose_type(params, n),
        "factory": factory_string(choose_type(params, n), n, params, index.d),
        "ntotal": int(n),
        "dim": int(index.d),
        "params": asdict(params),
        "crop_store": str(store.path),
        "crop_attrs": {k: v for k, v in store.attrs.items() if k != "versions"},
    }
