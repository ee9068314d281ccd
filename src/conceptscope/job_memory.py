"""Memory a pipeline job needs, from the size of its data: the `mem_mb` that rules/*.smk declare.

Only the jobs whose memory grows with the data get an estimate; the others' peaks are set by a batch
of images through the model and stay constant in N. Measured peaks (benchmarks/results/
imagenet_shape_50.json, MobileNetV2 at 224 px): DeepLift 4.4 GB at 8 images a batch (13.9 GB at 32),
crop vectors 4.5 GB (32 images x 9 crops), predictions 2.3 GB (128 images), a job's Python, torch and
model 0.7-1.3 GB before any data. An estimate is what the job holds at its peak times MARGIN, plus
BASE_MB.
"""

from __future__ import annotations

from collections.abc import Iterable

BASE_MB = 1500  # Python, torch and a model, before any data
MARGIN = 1.25  # copies made on the way (concatenation, conversion to a table or a tensor)


def _mb(nbytes: float, base_mb: int = BASE_MB) -> int:
    return int(base_mb + MARGIN * nbytes / 2**20)


def contrast_training_mb(counts: Iterable[int], dim: int, *, ordered: bool = False, chunk_pairs: int | None = 20000) -> int:
    """`train_contrast_hyperplanes`: every class's cutoff vectors (`counts` per class, `dim` channels) and
    every pair's weights and scalars in float32, plus one chunk of pairs in training (about 4 x chunk x C
    floats). 1000 classes of ~1,490 vectors (benchmarks/results/contrast_1000.json): 14.1 GB, measured 12.6."""
    counts = [int(n) for n in counts if n]
    pairs = len(counts) * (len(counts) - 1) // 2 * (2 if ordered else 1)
    chunk = min(pairs, chunk_pairs or pairs)
    floats = sum(counts) * dim + pairs * (dim + 4) + 4 * chunk * dim
    return _mb(4 * floats)


def crop_search_mb(pools: Iterable[tuple[int, int]]) -> int:
    """`concept_crops`, `contrast_crops`: each crop pool's FAISS index in RAM (about its file size) and three
    int64 per crop (image, the image's prediction, the crop's); `pools` is (index file bytes, crops) each.
    11.5M crops in the large-N index (~712 bytes a vector): ~12 GB."""
    return _mb(sum(index_bytes + 3 * 8 * n_crops for index_bytes, n_crops in pools))


def prediction_mb(n_images: int, n_classes: int, *, store_logits: bool, top_k: int = 5, batch_mb: int = 8000) -> int:
    """`predict`: a batch through the model (`batch_mb`, constant in N), and every image's row until the table
    is written: the logits (N x classes float32, held about three times: the batches, their concatenation,
    the table) when they are stored, else label, prediction and the top-k classes and probabilities."""
    per_image = 3 * 4 * n_classes if store_logits else 3 * (24 + 12 * top_k)
    return _mb(n_images * per_image, base_mb=batch_mb)


def index_build_mb(n_vectors: int, dim: int, index: dict, read_rows: int) -> int:
    """`build_crop_index`: the index's codes, grown in place as the store is added chunk by chunk
    (FAISS's code arrays reallocate as they grow: 1.5 x their final size covers the peak), the
    float32 training sample (twice, in k-means) and one read of `read_rows` rows (float16, then
    float32 normalised). `index` is the config's `index:` mapping. 11.5M vectors of dim 1280 in
    the default ivf_pq_rerank (11.8 GiB of codes): 21.1 GiB, measured 17.5 (index_11m.json)."""
    from .index import IndexParams, bytes_per_vector, choose_type, training_rows

    params = IndexParams(**index)
    kind = choose_type(params, n_vectors)
    codes = n_vectors * bytes_per_vector(kind, dim, params)
    sample = 0 if kind in ("flat", "hnsw") else 2 * 4 * dim * training_rows(params, n_vectors)
    return int(1.5 * codes / 2**20) + _mb(sample + 6 * dim * read_rows)
