"""Crop index on real MobileNetV2 crop vectors of real photos: exactness, filters, persistence, figures."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conceptscope.activations import select_images
from conceptscope.config import resolve_config
from conceptscope.crops import extract_crop_vectors
from conceptscope.data import PreparedDataset, prepare_dataset
from conceptscope.crop_search import CropIndex, brute_force_search
from conceptscope.index import IndexParams, build_crop_index, choose_type, index_info, save_index
from conceptscope.models import pretrained_model, resolve_preprocess
from conceptscope.store import CropStore
from conceptscope.viz import crop_grid, crop_image, tile_position


@pytest.fixture(scope="module")
def real_crops(tmp_path_factory):
    """25 photos x grids 2,3,4 (29 cells each) at MobileNetV2 features.14 and features.18."""
    root = tmp_path_factory.mktemp("index")
    prepare_dataset(resolve_config({"datasets": {"p": {"kind": "photos"}}})["datasets"]["p"], root / "photos", "photos")
    data = PreparedDataset(root / "photos")
    model = pretrained_model("mobilenet_v2")
    rows = select_images(data.split("test"))
    paths = extract_crop_vectors(model.eval(), data, rows, ["features.14", "features.18"], resolve_preprocess("mobilenet_v2", {}), root / "crops", mode="cells", grids=[2, 3, 4], chunk_rows=100, progress=False)
    return data, CropStore(paths["features.18"]), CropStore(paths["features.14"])


def _queries(store, n=6, seed=0):
    rng = np.random.default_rng(seed)
    vectors = store.vectors[:].astype(np.float32)
    # concept-like directions: sums of a few random crop vectors, plus one crop vector itself
    mix = np.stack([vectors[rng.choice(len(vectors), 5, replace=False)].sum(0) for _ in range(n - 1)] + [vectors[7]])
    return vectors, mix


def test_exact_index_matches_numpy_bruteforce(real_crops):
    _, store, _ = real_crops
    vectors, queries = _queries(store)
    index = build_crop_index(store, IndexParams(type="auto"), progress=False)
    assert index.ntotal == 725 and choose_type(IndexParams(), 725) == "flat"
    scores, rows = CropIndex(index, store.image_ids).search(queries, m=8)
    ref_scores, ref_rows = brute_force_search(vectors, queries, m=8)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
    assert rows[-1, 0] == 7 and scores[-1, 0] == pytest.approx(1.0, abs=1e-5)


def test_ivf_scanning_every_list_is_exact_and_builds_reproducibly(real_crops):
    _, store, _ = real_crops
    vectors, queries = _queries(store)
    params = IndexParams(type="ivf_flat", nlist=8, nprobe=8, train_size=400, seed=3)
    first = CropIndex(build_crop_index(store, params, progress=False), store.image_ids, params).search(queries, 8)
    second = CropIndex(build_crop_index(store, params, progress=False), store.image_ids, params).search(queries, 8)
    np.testing.assert_array_equal(first[1], second[1])
    np.testing.assert_array_equal(first[1], brute_force_search(vectors, queries, 8)[1])
    # scanning a single list is approximate: it must miss some of the exact neighbours
    narrow = CropIndex(build_crop_index(store, params, progress=False), store.image_ids, IndexParams(type="ivf_flat", nprobe=1)).search(queries, 8)[1]
    assert (narrow != first[1]).any()


@pytest.mark.parametrize("kind", ["flat", "ivf_flat", "hnsw"])
def test_exclusion_filter_removes_images_and_keeps_the_best_of_the_rest(real_crops, kind):
    _, store, _ = real_crops
    vectors, queries = _queries(store)
    image_ids = store.image_ids
    excluded = np.unique(image_ids)[:10]
    params = IndexParams(type=kind, nlist=8, nprobe=8, train_size=400, ef_search=400)
    crop_index = CropIndex(build_crop_index(store, params, progress=False), image_ids, params)
    scores, rows = crop_index.search(queries, m=8, exclude_images=excluded)
    assert not np.isin(image_ids[rows], excluded).any()
    allowed = np.flatnonzero(~np.isin(image_ids, excluded))
    ref_scores, ref_rows = brute_force_search(vectors[allowed], queries, 8)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-4)
    if kind != "hnsw":
        np.testing.assert_array_equal(rows, allowed[ref_rows])


def test_one_crop_per_image(real_crops):
    _, store, _ = real_crops
    vectors, queries = _queries(store)
    image_ids = store.image_ids
    crop_index = CropIndex(build_crop_index(store, IndexParams(type="flat"), progress=False), image_ids)
    scores, rows = crop_index.search(queries, m=8, one_per_image=True)
    for r in rows:
        assert len(set(image_ids[r])) == 8
    # reference: walk the exact ranking, keep each image's best crop
    ref_scores, ref_rows = brute_force_search(vectors, queries, len(vectors))
    for q in range(len(queries)):
        seen, expected = set(), []
        for row in ref_rows[q]:
            if image_ids[row] not in seen:
                seen.add(image_ids[row])
                expected.append(row)
        np.testing.assert_array_equal(rows[q], expected[:8])
    # combined with exclusion, and asking for more images than exist: padded with -1
    scores, rows = crop_index.search(queries[:1], m=30, one_per_image=True, exclude_images=np.unique(image_ids)[:20])
    assert (rows[0, :5] >= 0).all() and (rows[0, 5:] == -1).all() and np.isneginf(scores[0, 5:]).all()


def test_saved_index_reloads_with_its_parameters(real_crops, tmp_path):
    _, store, _ = real_crops
    _, queries = _queries(store)
    params = IndexParams(type="ivf_sq8", nlist=8, nprobe=3, train_size=500)
    index = build_crop_index(store, params, progress=False)
    save_index(index, tmp_path / "i.faiss", index_info(index, params, store))
    before = CropIndex(index, store.image_ids, params).search(queries, 8)
    loaded = CropIndex.open(tmp_path / "i.faiss", store)
    assert loaded.params.nprobe == 3 and loaded.params.type == "ivf_sq8"
    after = loaded.search(queries, 8)
    np.testing.assert_array_equal(before[1], after[1])
    with pytest.raises(FileNotFoundError, match="no crop index"):
        CropIndex.open(tmp_path / "missing.faiss", store)


def test_index_rejects_mismatched_ids(real_crops):
    _, store, other = real_crops
    index = build_crop_index(other, IndexParams(type="flat"), progress=False)
    with pytest.raises(ValueError, match="image ids"):
        CropIndex(index, store.image_ids[:10])


def test_crop_grid_shows_the_boxed_crops(real_crops, tmp_path):
    data, store, _ = real_crops
    _, queries = _queries(store)
    scores, rows = CropIndex(build_crop_index(store, IndexParams(type="flat"), progress=False), store.image_ids).search(queries[:3], 4)
    image = crop_grid(data, store, rows, row_labels=["a", "b", "c"], scores=scores, tile=48)
    assert image.size == (110 + 4 * 52 + 4, 3 * (48 + 14 + 4) + 4)
    left, top = tile_position(1, 2, tile=48, with_scores=True)
    tile = np.asarray(image)[top : top + 48, left : left + 48]
    row = rows[1, 2]
    expected = np.asarray(crop_image(data, int(store.image_ids[row]), store["box"][row], 48))
    np.testing.assert_array_equal(tile, expected)
    # a crop is a part of its photo: it differs from the whole photo resized
    whole = Image.fromarray(data.load_image(next(data.manifest[data.manifest.image_id == store.image_ids[row]].itertuples()))).convert("RGB").resize((48, 48))
    assert np.abs(np.asarray(whole).astype(int) - expected).mean() > 5


def test_a_pool_cuts_each_crop_from_its_image_decoding_each_image_once(real_crops, monkeypatch):
    """CropPool.crop (the concept figures' tiles) equals crop_image, through a small cache of decoded
    images that keeps the most recently used: an image is decoded again only once evicted."""
    from conceptscope.methods.concept_crops import CropPool

    data, store, _ = real_crops
    image_ids = store.image_ids
    rows = [0, 1, 30, 31, 0, 60, 90, 2, 120, 700]  # 29 crops per photo
    ids = [int(image_ids[r]) for r in rows]
    assert len(set(ids)) == 6 and ids[0] == ids[1] == ids[4] == ids[7] and ids[2] == ids[3]
    expected = [np.asarray(crop_image(data, i, store["box"][r], 40)) for r, i in zip(rows, ids)]
    pool = CropPool("photos", data, store, None, np.zeros(len(store), np.int64), None, image_ids)
    pool.IMAGE_CACHE = 3
    decoded = []
    load_image = data.load_image
    monkeypatch.setattr(data, "load_image", lambda row: decoded.append(int(row.image_id)) or load_image(row))
    for row, tile in zip(rows, expected):
        np.testing.assert_array_equal(np.asarray(pool.crop(row, 40)), tile)
    # least recently used out: the third image evicts none, the fourth the second, the fifth the third
    assert decoded == [ids[i] for i in (0, 2, 5, 6, 8, 9)]
    assert list(pool._images) == ids[7:]
    # boxes come from whole chunks of the store kept in a small cache: every row's box is the store's,
    # across chunk boundaries and after evictions
    pool.BOX_BLOCKS = 2
    boxes = store["box"][:]
    for row in [*range(len(store)), 0, len(store) - 1, 70]:
        np.testing.assert_array_equal(pool.box(row), boxes[row])
    assert len(pool._box_blocks) == 2


def test_pq_with_refinement_respects_filters_and_reranks_near_exactly(real_crops):
    _, store, _ = real_crops
    vectors, queries = _queries(store)
    image_ids = store.image_ids
    excluded = np.unique(image_ids)[:5]
    # every list scanned and every candidate re-ranked: only the 8-bit codes separate it from exact
    params = IndexParams(type="ivf_pq_refine", nlist=8, nprobe=8, pq_m=64, refine_k_factor=100, train_size=700)
    crop_index = CropIndex(build_crop_index(store, params, progress=False), image_ids, params)
    scores, rows = crop_index.search(queries, m=8, exclude_images=excluded)
    assert not np.isin(image_ids[rows], excluded).any()
    allowed = np.flatnonzero(~np.isin(image_ids, excluded))
    ref_scores, ref_rows = brute_force_search(vectors[allowed], queries, 8)
    recall = np.mean([len(set(r) & set(allowed[e])) / 8 for r, e in zip(rows, ref_rows)])
    assert recall >= 0.9
    np.testing.assert_allclose(scores, ref_scores, atol=0.02)
    with pytest.raises(ValueError, match="pq_m = 48 must divide"):
        build_crop_index(store, IndexParams(type="ivf_pq_refine", pq_m=48, nlist=8), progress=False)


@pytest.fixture(scope="module")
def sharded_crops(real_crops, tmp_path_factory):
    """The same crops written sharded in 4-row inner chunks: uncompressed and zstd."""
    data = real_crops[0]
    model = pretrained_model("mobilenet_v2")
    rows = select_images(data.split("test"))
    stores = {}
    for compression in ("none", "zstd"):
        out = tmp_path_factory.mktemp(f"sharded-{compression}")
        paths = extract_crop_vectors(model.eval(), data, rows, ["features.18"], resolve_preprocess("mobilenet_v2", {}), out / "crops", mode="cells", grids=[2, 3, 4], chunk_rows=100, compression=compression, inner_rows=4, progress=False)
        stores[compression] = CropStore(paths["features.18"])
    return stores


def test_sharded_store_reads_single_rows_by_byte_range(real_crops, sharded_crops):
    _, plain, _ = real_crops
    expected = plain.vectors[:]
    rows = np.random.default_rng(0).choice(len(expected), 60)  # unordered, with repeats
    assert not plain.vector_reader.fast
    np.testing.assert_array_equal(plain.vector_reader.read(rows), expected[rows])
    for store in sharded_crops.values():
        assert store.vectors.shards == (100, 1280) and store.vectors.chunks == (4, 1280)
        assert store.vector_reader.fast
        np.testing.assert_array_equal(store.vector_reader.read(rows), expected[rows])
        np.testing.assert_array_equal(store.vector_reader.read_range(90, 725), expected[90:])  # the last shard is partial
        np.testing.assert_array_equal(store.vectors[:], expected)  # Zarr reads what the byte ranges give
    with pytest.raises(IndexError, match="below 725"):
        sharded_crops["none"].vector_reader.read(np.array([725]))


def test_rerank_index_scores_its_results_exactly_from_the_store(sharded_crops):
    store = sharded_crops["none"]
    vectors, queries = _queries(store)
    image_ids = store.image_ids
    excluded = np.isin(image_ids, np.unique(image_ids)[:5])
    params = IndexParams(type="ivf_pq_rerank", nlist=8, nprobe=8, pq_m=64, refine_k_factor=100, exact_k_factor=2, train_size=700)
    index = build_crop_index(store, params, progress=False)
    approximate = CropIndex(index, image_ids, params).search(queries, m=8, exclude_rows=excluded, one_per_image=True)
    exact = CropIndex(index, image_ids, params, store.vector_reader.read).search(queries, m=8, exclude_rows=excluded, one_per_image=True)
    allowed = np.flatnonzero(~excluded)
    # the exact one-per-image top 8 over the admissible crops
    sims = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (vectors[allowed] / np.linalg.norm(vectors[allowed], axis=1, keepdims=True)).T
    for q, (scores, rows) in enumerate(zip(*exact)):
        assert not excluded[rows].any() and len(set(image_ids[rows])) == 8
        np.testing.assert_allclose(scores, sims[q, np.searchsorted(allowed, rows)], rtol=0, atol=1e-5)  # exact scores
        order = allowed[np.argsort(-sims[q], kind="stable")]
        _, first = np.unique(image_ids[order], return_index=True)
        best = order[np.sort(first)][:8]
        assert len(set(rows) & set(best)) >= 7
    # without the exact stage the scores are the 4-bit codes' approximations
    assert np.abs(approximate[0] - exact[0]).max() > 1e-3
    # a saved rerank index reopens with its store's vectors for the exact stage
    path = store.path.parent / "rerank.faiss"
    save_index(index, path, index_info(index, params, store))
    reopened = CropIndex.open(path, store)
    assert reopened.exact_rows is not None
    np.testing.assert_array_equal(reopened.search(queries, m=8, exclude_rows=excluded, one_per_image=True)[1], exact[1])


def test_auto_shards_exactly_the_stores_that_get_a_rerank_index():
    from conceptscope.config import ConfigError
    from conceptscope.index import store_inner_rows

    assert choose_type(IndexParams(), 11_500_000) == "ivf_pq_rerank"
    assert store_inner_rows("auto", 11_500_000, IndexParams()) == 16
    assert store_inner_rows("auto", 199_999, IndexParams()) is None
    assert store_inner_rows("auto", 11_500_000, IndexParams(type="hnsw")) is None
    assert store_inner_rows(8, 10, IndexParams()) == 8
    with pytest.raises(ConfigError, match="crops.inner_rows"):
        resolve_config({"crops": {"inner_rows": 7, "chunk_rows": 100}})


def test_pq_codes_default_to_fast_scan_for_the_rerank_index_and_must_divide_the_dimension():
    from conceptscope.index import factory_string, pq_codes

    assert pq_codes("ivf_pq_rerank", 1280, IndexParams()) == (256, 4)  # 0.8 bits a dimension, SIMD-scanned
    assert pq_codes("ivf_pq", 1280, IndexParams()) == (64, 8)
    assert pq_codes("ivf_pq_rerank", 576, IndexParams()) == (96, 4)  # the largest divisor of 576 up to 115
    assert pq_codes("ivf_pq", 1280, IndexParams(pq_m=128, pq_nbits=4)) == (128, 4)
    assert factory_string("ivf_pq_rerank", 11_500_000, IndexParams(nlist=4096), 1280) == "IVF4096_HNSW32,PQ256x4fs,Refine(SQ6)"
    # the search defaults of each type: the rerank index probes a 32nd of its sqrt(n) lists
    from conceptscope.index import default_nlist, search_settings

    assert default_nlist(11_500_000, "ivf_pq_rerank") == 4096 and default_nlist(11_500_000) == 16384
    assert search_settings(IndexParams(), "ivf_pq_rerank", 4096) == (128, 16)
    assert search_settings(IndexParams(), "ivf_pq_refine", 4096) == (64, 128)
    assert search_settings(IndexParams(nprobe=32, refine_k_factor=4), "ivf_pq_rerank", 4096) == (32, 4)
    with pytest.raises(ValueError, match="pq_m = 100 must divide the vector dimension 1280"):
        pq_codes("ivf_pq", 1280, IndexParams(pq_m=100))
    with pytest.raises(ValueError, match="pq_nbits = 6"):
        IndexParams(pq_nbits=6)


def test_exact_stage_reads_a_few_crops_of_each_of_the_best_images():
    from conceptscope.crop_search import _best_of_images

    image_ids = np.array([0, 0, 0, 0, 1, 1, 2, 3])
    # candidates ranked by the in-RAM codes: image 0 fills the head of the list
    candidates = np.array([[0, 1, 2, 3, 4, 6, 5, 7], [4, 0, 5, 1, 6, -1, -1, -1]])
    kept, complete = _best_of_images(candidates, image_ids, images=3, per_image=2)
    np.testing.assert_array_equal(kept, [[0, 1, 4, 6, 5, -1], [4, 0, 5, 1, 6, -1]])
    assert complete  # the first list holds 3 images, the second ended
    kept, complete = _best_of_images(candidates[:1], image_ids, images=5, per_image=1)
    np.testing.assert_array_equal(kept, [[0, 4, 6, 7, -1]])
    assert not complete  # only 4 images in a list that did not end: the caller widens it
