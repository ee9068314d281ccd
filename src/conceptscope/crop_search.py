"""Crop retrieval over a built index (`index.py`): the top m dataset crops of a concept vector by
cosine similarity, with the filters the concept methods need (excluded images or crops, one crop per
image) applied inside the FAISS search, and the exact re-ranking stage of `ivf_pq_rerank`.

    crops = CropIndex.open("results/index/imagenette/mobilenet_v2/features.18.faiss", store)
    scores, rows = crops.search(concepts, m=8, exclude_images=predicted_as_class, one_per_image=True)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

import faiss
import numpy as np

from .index import IndexParams, choose_type, normalise, set_search_params
from .store import CropStore


class CropIndex:
    """Top-m crop retrieval by cosine similarity, with the filters the concept methods need.

    `exact_rows`: a function from crop-store rows to their vectors (`CropStore.vector_reader.read`);
    given one, the index's best `exact_k_factor` * m candidates (with one crop per image: the best
    `exact_per_image` crops of each of the best `exact_k_factor` * m images) are re-ranked by their
    exact cosine similarity, so scores and order are those of an exact scan over the candidates.
    """

    def __init__(
        self,
        index: faiss.Index,
        image_ids: np.ndarray,
        params: IndexParams | None = None,
        exact_rows: Callable[[np.ndarray], np.ndarray] | None = None,
    ):
        if index.ntotal != len(image_ids):
            raise ValueError(f"index holds {index.ntotal} vectors, but {len(image_ids)} image ids were given")
        self.index = index
        self.image_ids = np.asarray(image_ids)
        self.params = params or IndexParams()
        self.exact_rows = exact_rows
        self.nprobe, self.k_factor = set_search_params(index, self.params)

    @classmethod
    def open(cls, path: str | Path, store: CropStore, params: IndexParams | None = None) -> "CropIndex":
        """Load a saved index and the image ids of its crop store (and its vectors, for `ivf_pq_rerank`)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no crop index at {path}")
        info_path = path.with_suffix(path.suffix + ".json")
        saved = IndexParams(**json.loads(info_path.read_text())["params"]) if info_path.is_file() else None
        params = params or saved or IndexParams()
        index = faiss.read_index(str(path))
        exact = store.vector_reader.read if choose_type(params, index.ntotal) == "ivf_pq_rerank" else None
        return cls(index, store.image_ids, params, exact)

    def _search(self, queries: np.ndarray, k: int, params) -> tuple[np.ndarray, np.ndarray]:
        if self.exact_rows is None:
            return self.index.search(queries, k, params=params)
        wide = min(self.index.ntotal, k * max(1, self.params.exact_k_factor))
        _, candidates = self.index.search(queries, wide, params=params)
        return exact_rerank(queries, candidates, self.exact_rows, k)

    def _search_parameters(self, excluded: np.ndarray | None):
        selector = None
        if excluded is not None:  # packed first, then inverted: 8x fewer bytes to invert
            self._bitmap = np.invert(np.packbits(excluded, bitorder="little"))  # kept alive during the search
            selector = faiss.IDSelectorBitmap(len(excluded), faiss.swig_ptr(self._bitmap))
        ivf = faiss.try_extract_index_ivf(self.index)
        if isinstance(faiss.downcast_index(self.index), faiss.IndexRefine):
            base = faiss.SearchParametersIVF(sel=selector, nprobe=self.nprobe)
            self._base_params = base  # the refine parameters do not own it
            return faiss.IndexRefineSearchParameters(k_factor=self.k_factor, base_index_params=base)
        if ivf is not None:
            return faiss.SearchParametersIVF(sel=selector, nprobe=self.nprobe)
        if getattr(faiss.downcast_index(self.index), "hnsw", None) is not None:
            return faiss.SearchParametersHNSW(sel=selector, efSearch=self.params.ef_search)
        return faiss.SearchParameters(sel=selector) if selector is not None else None

    def search(
        self,
        queries: np.ndarray,
        m: int = 8,
        *,
        exclude_images: Iterable[int] | None = None,
        exclude_rows: np.ndarray | None = None,
        one_per_image: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(k, C) query vectors -> (scores, rows), each (k, m): cosine similarity and crop-store row.

        `exclude_images`: image ids whose crops never appear (e.g. images predicted as the class
        being explained). `exclude_rows`: crops that never appear, as a boolean mask over the rows
        or as row numbers (e.g. crops predicted as that class on their own). The filters act inside
        the index search (a FAISS ID selector), so the result is the top m among the admissible
        crops. `one_per_image`: at most one crop per image in each result row.
        Missing results (fewer admissible crops than m) are row -1, score -inf.
        """
        queries = normalise(np.atleast_2d(queries))
        excluded = None
        if exclude_images is not None:
            images = np.fromiter(exclude_images, dtype=self.image_ids.dtype)
            if len(images):
                excluded = np.isin(self.image_ids, images)
        if exclude_rows is not None:
            exclude_rows = np.asarray(exclude_rows)
            if exclude_rows.dtype == bool and exclude_rows.shape != self.image_ids.shape:
                raise ValueError(f"exclude_rows mask has shape {exclude_rows.shape}, the index holds {len(self.image_ids)} crops")
            if exclude_rows.dtype == bool:
                if exclude_rows.any():
                    excluded = exclude_rows if excluded is None else excluded | exclude_rows
            elif len(exclude_rows):
                excluded = np.zeros(len(self.image_ids), bool) if excluded is None else excluded
                excluded[exclude_rows] = True
        params = self._search_parameters(excluded)
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is not None:  # few queries: spread the probed lists over the threads, not the queries
            ivf.parallel_mode = 1 if len(queries) < faiss.omp_get_max_threads() else 0
        if not one_per_image:
            scores, rows = self._search(queries, m, params)
            return _pad(scores, rows)
        if self.exact_rows is not None:
            return self._search_images(queries, m, params)
        k = min(self.index.ntotal, 4 * m)
        while True:
            scores, rows = self._search(queries, k, params)
            out_scores, out_rows, complete = _first_per_image(scores, rows, self.image_ids, m)
            if complete or k >= self.index.ntotal:
                return _pad(out_scores, out_rows)
            k = min(self.index.ntotal, 4 * k)

    def _search_images(self, queries: np.ndarray, m: int, params) -> tuple[np.ndarray, np.ndarray]:
        """One crop per image with the exact stage: the best `exact_k_factor` * m images by the
        in-RAM codes, each with its best `exact_per_image` crops, re-ranked exactly.

        Crops of one image are near neighbours of each other, so a candidate list ranked by codes
        is mostly a few images' crops; reading all of them from the store would spend the exact
        stage on crops that cannot enter a one-per-image result. The list is widened (x4) until
        it holds the wanted number of images or every admissible crop.
        """
        images = m * max(1, self.params.exact_k_factor)
        per_image = max(1, self.params.exact_per_image)
        pool = min(self.index.ntotal, 4 * images * per_image)
        while True:
            _, candidates = self.index.search(queries, pool, params=params)
            kept, complete = _best_of_images(candidates, self.image_ids, images, per_image)
            if complete or pool >= self.index.ntotal:
                break
            pool = min(self.index.ntotal, 4 * pool)
        scores, rows = exact_rerank(queries, kept, self.exact_rows, kept.shape[1])
        out_scores, out_rows, _ = _first_per_image(scores, rows, self.image_ids, m)
        return _pad(out_scores, out_rows)


def _best_of_images(candidates: np.ndarray, image_ids: np.ndarray, images: int, per_image: int) -> tuple[np.ndarray, bool]:
    """Per query, the first `per_image` candidates of each of the first `images` images in the
    list (-1 padded), and whether every list held that many images or ended (a -1)."""
    kept = np.full((len(candidates), images * per_image), -1, np.int64)
    complete = True
    for q, row_list in enumerate(candidates):
        taken: dict = {}
        j = 0
        for row in row_list:
            if row < 0:
                break
            image = image_ids[row]
            count = taken.get(image, 0)
            if count == per_image or (count == 0 and len(taken) == images):
                continue
            taken[image] = count + 1
            kept[q, j] = row
            j += 1
        else:
            complete &= len(taken) == images
    return kept, complete


def exact_rerank(queries: np.ndarray, candidates: np.ndarray, exact_rows: Callable[[np.ndarray], np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's candidate rows (-1: none) ordered by exact cosine similarity, the best k kept.

    The candidates' vectors are read once (`exact_rows`), normalised, and scored against the
    (normalised) queries; ties keep the candidates' order.
    """
    valid = candidates >= 0
    unique, inverse = np.unique(candidates[valid], return_inverse=True)
    vectors = normalise(exact_rows(unique)) if len(unique) else np.empty((0, queries.shape[1]), np.float32)
    position = np.full(candidates.shape, -1, np.int64)
    position[valid] = inverse
    sims = np.einsum("qkd,qd->qk", vectors[np.maximum(position, 0)], queries)
    sims[~valid] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(sims, order, axis=1)
    rows = np.where(np.isfinite(scores), np.take_along_axis(candidates, order, axis=1), -1)
    if rows.shape[1] < k:  # fewer candidates than k (a small index): pad as FAISS does
        pad = k - rows.shape[1]
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
    return scores.astype(np.float32), rows


def _pad(scores: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.where(rows < 0, -np.inf, scores).astype(np.float32)
    return scores, rows.astype(np.int64)


def _first_per_image(scores, rows, image_ids, m):
    out_scores = np.full((len(rows), m), -np.inf, np.float32)
    out_rows = np.full((len(rows), m), -1, np.int64)
    complete = True
    for q in range(len(rows)):
        seen, j = set(), 0
        for score, row in zip(scores[q], rows[q]):
            if row < 0:
                break
            image = image_ids[row]
            if image in seen:
                continue
            seen.add(image)
            out_scores[q, j], out_rows[q, j] = score, row
            j += 1
            if j == m:
                break
        complete &= j == m
    return out_scores, out_rows, complete


def brute_force_search(vectors: np.ndarray, queries: np.ndarray, m: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-m by a NumPy scan (vectors need not be normalised): the reference."""
    sims = normalise(queries) @ normalise(vectors).T
    rows = np.argsort(-sims, axis=1, kind="stable")[:, :m]
    return np.take_along_axis(sims, rows, axis=1), rows
