"""Benchmark `index_11m`: a crop index over 11.5M vectors (ImageNet's crops per layer) within 24 GB.

    .venv/bin/python benchmarks/index_11m.py [--n 11500000] [--nlist 4096] [--nprobe 128 192]

The vectors have the dimension of a layer the pipeline uses: MobileNetV2 `features.18` (1280
channels, the real IMAGENET1K_V1 weights), cell vectors on grids 2..6 (90 crops an image):

- real: all 13,394 Imagenette images (1.2M crops) and all 10,000 Tiny ImageNet val images (0.9M);
- stand-in, up to `--n`: images of 90 cells drawn from a two-level Gaussian per real class (210
  classes), fitted to that class's real crops: an image vector = class mean + the class's top-16
  principal directions between images + per-dimension residual noise; each cell = its image vector
  + the class's top-16 directions within images + residual noise, scaled by how much cells of that
  grid size vary within an image; clipped at 0 as the layer's ReLU6 output is. Each stand-in class
  has the real class's mean, its main modes of variation, its per-dimension spread and the
  image/cell structure that the one-crop-per-image filter acts on; its only simplification is
  Gaussian tails, which make neighbours less clustered (a harder retrieval) than real crops.

They are written chunk by chunk to a Zarr crop store on disk (`benchmarks/.cache/`, 29 GB, made
once): float16, uncompressed, sharded in 16-row inner chunks, as the pipeline writes crop stores
that get this index (`crops.inner_rows: auto`). The index is the pipeline's `build_crop_index`
(`ivf_pq_rerank`): 4-bit fast-scan PQ codes and 6-bit SQ codes in RAM, the best crops of the best
images re-ranked exactly with their vectors read back from the store. Queries: 4 NMF concepts for each of 20 classes (the concepts
method's concept vectors, over a class's 3x3 crops) and 40 crops of the store, each searched as the
concept method does: excluding the crops of images of its class, one crop per image, m = 8. Ground
truth: an exact scan over the store, chunk by chunk, with the same filters. Recall@8 is the share of
the exact top-8 rows that the index returns; per-concept time is one search call for a class's
concepts (as the pipeline makes it, the filter mask included) divided by their number, and the
single-query time is one call per query. Peak RSS is that of this process (the store is written
by it too, one chunk at a time).
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT.parent / "shared" / "data" / "tiny-imagenet-200"
CACHE = Path(__file__).resolve().parent / ".cache"
GRIDS = [2, 3, 4, 5, 6]
CELLS = sum(g * g for g in GRIDS)
INNER_ROWS = 16
GRID_OF_CELL = np.concatenate([np.full(g * g, g, np.int16) for g in GRIDS])


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def tiny_crop_store():
    """Make (once) and open the crop-vector store of the 10,000 Tiny ImageNet val images."""
    import torch

    from conceptscope.activations import select_images
    from conceptscope.config import resolve_config
    from conceptscope.crops import extract_crop_vectors
    from conceptscope.data import PreparedDataset, prepare_dataset
    from conceptscope.models import pretrained_model, resolve_preprocess
    from conceptscope.store import CropStore

    data_dir, crops_dir = CACHE / "tiny", CACHE / "crops-tiny"
    if not data_dir.exists():
        raw = {"kind": "imagefolder", "root": str(TINY), "train_dir": None, "test_dir": "val/images", "labels": str(TINY / "val" / "val_annotations.txt"), "label_map": "imagenet"}
        prepare_dataset(resolve_config({"datasets": {"t": raw}})["datasets"]["t"], data_dir, "tiny")
    data = PreparedDataset(data_dir)
    if not crops_dir.exists():
        torch.set_num_threads(2)
        model = pretrained_model("mobilenet_v2")
        rows = select_images(data.manifest)
        extract_crop_vectors(model.eval(), data, rows, ["features.18"], resolve_preprocess("mobilenet_v2", {}), crops_dir, mode="cells", grids=GRIDS, dtype="float16", chunk_rows=8192, batch_size=32)
    return data, CropStore(crops_dir / "features.18.zarr")


def real_parts():
    """[(data, store)] of the real crops: Imagenette (train + val) and Tiny ImageNet val."""
    from index import crop_store

    return [crop_store(GRIDS), tiny_crop_store()]


def row_labels(data, store) -> np.ndarray:
    return data.manifest.set_index("image_id").loc[store.image_ids, "label"].to_numpy()


class ClassModel:
    """The two-level Gaussian of one class's crops (see the module docstring)."""

    def __init__(self, vectors: np.ndarray, image_of: np.ndarray, grid: np.ndarray, rank: int, rng):
        # the cells of an image are consecutive rows of a crop store
        starts = np.flatnonzero(np.r_[True, image_of[1:] != image_of[:-1]])
        counts = np.diff(np.r_[starts, len(image_of)])
        means = np.add.reduceat(vectors, starts, axis=0) / counts[:, None]
        self.mean = means.mean(0)
        self.between, self.between_rest = _gaussian(means - self.mean, rank, rng)
        pick = np.sort(rng.choice(len(vectors), size=min(len(vectors), 5000), replace=False))
        within = vectors[pick] - np.repeat(means, counts, axis=0)[pick]
        self.within, self.within_rest = _gaussian(within, rank, rng)
        total = (within**2).sum(1)
        self.grid_scale = {g: np.sqrt(total[grid[pick] == g].mean() / total.mean()) for g in GRIDS}

    def sample(self, n_images: int, rng) -> np.ndarray:
        images = self.mean + _draw(self.between, self.between_rest, n_images, rng)
        cells = np.repeat(images, CELLS, axis=0)
        scale = np.tile(np.concatenate([np.full(g * g, self.grid_scale[g]) for g in GRIDS]), n_images)[:, None]
        cells += scale * _draw(self.within, self.within_rest, n_images * CELLS, rng)
        return np.maximum(cells, 0).astype(np.float16)


def _gaussian(centred: np.ndarray, rank: int, rng):
    """Top-`rank` principal directions scaled by their standard deviations, and the per-dimension
    standard deviation of what they leave."""
    from sklearn.utils.extmath import randomized_svd

    k = min(rank, len(centred) - 1)
    _, s, vt = randomized_svd(centred, k, random_state=int(rng.integers(2**31)))
    directions = (s[:, None] / np.sqrt(len(centred) - 1)) * vt
    rest = centred - (centred @ vt.T) @ vt
    return directions.astype(np.float32), rest.std(0).astype(np.float32)


def _draw(directions, rest, n, rng) -> np.ndarray:
    z = rng.standard_normal((n, len(directions)), dtype=np.float32) @ directions
    return z + rest * rng.standard_normal((n, len(rest)), dtype=np.float32)


def make_store(path: Path, n: int, seed: int, parts):
    """Write the benchmark's crop store (real crops first, then stand-ins) and return it: `vectors`,
    `image_id`, `label` (the image's class), `grid` and `real` (1 for a real crop)."""
    from conceptscope.store import CropStore, RowStoreWriter, provenance

    if (path / "zarr.json").exists():
        store = CropStore(path)
        if len(store) == n:
            return store
        raise SystemExit(f"{path} holds {len(store)} rows, not {n}: remove it to rebuild")
    rng = np.random.default_rng(seed)
    models, labels_real, offset = {}, [], 0
    attrs = provenance("crop_vectors", mode="cells", grids=GRIDS, dtype="float16", benchmark="index_11m", seed=seed)
    writer = RowStoreWriter(path, n, chunk_rows=8192, dtypes={"vectors": "float16"}, compression="none", inner_rows={"vectors": INNER_ROWS}, attrs=attrs)
    start = time.perf_counter()
    for part, (data, store) in enumerate(parts):
        labels, image_ids, grid = row_labels(data, store), store.image_ids, store["grid"][:]
        for label in np.unique(labels):
            rows = np.flatnonzero(labels == label)
            vectors = store.vector_reader.read(rows).astype(np.float32)  # a class's crops: consecutive images
            models[(part, int(label))] = ClassModel(vectors, image_ids[rows], grid[rows], 16, rng)
        step = 8192
        for first in range(0, len(store), step):
            block = slice(first, min(first + step, len(store)))
            writer.append(
                vectors=store.vector_reader.read_range(block.start, block.stop),
                image_id=image_ids[block] + offset,
                label=labels[block].astype(np.int16),
                grid=grid[block].astype(np.int16),
                real=np.ones(block.stop - block.start, np.uint8),
            )
        offset += int(image_ids.max()) + 1
        labels_real.append(labels)
    n_real = sum(len(s) for _, s in parts)
    print(f"{n_real} real crops written, {len(models)} class models fitted in {time.perf_counter() - start:.0f} s")
    keys = list(models)
    written, image = n_real, offset
    images_per_block = 91
    while written < n:
        n_images = min(images_per_block, (n - written + CELLS - 1) // CELLS)
        classes = rng.integers(len(keys), size=n_images)
        vectors = np.concatenate([models[keys[c]].sample(1, rng) for c in classes])[: n - written]
        count = len(vectors)
        writer.append(
            vectors=vectors,
            image_id=np.repeat(np.arange(image, image + n_images), CELLS)[:count],
            label=np.repeat(np.array([keys[c][1] for c in classes], np.int16), CELLS)[:count],
            grid=np.tile(GRID_OF_CELL, n_images)[:count],
            real=np.zeros(count, np.uint8),
        )
        written += count
        image += n_images
        if written // 1_000_000 != (written - count) // 1_000_000:
            print(f"{written:,} rows, {time.perf_counter() - start:.0f} s", flush=True)
    writer.close()
    return CropStore(path)


def concept_queries(store, labels: np.ndarray, classes: list[int], n_random: int, seed: int):
    """4 NMF concepts per class over its real 3x3 crops (the concept vectors), plus random crops;
    the class of each."""
    from sklearn.decomposition import NMF

    rng = np.random.default_rng(seed)
    queries, query_class = [], []
    eligible = (store["grid"][:] == 3) & (store["real"][:] == 1)
    for label in classes:
        rows = np.flatnonzero((labels == label) & eligible)
        rows = np.sort(rng.choice(rows, size=min(3000, len(rows)), replace=False))
        x = store.vector_reader.read(rows).astype(np.float32)
        queries.append(NMF(n_components=4, init="nndsvda", random_state=seed, max_iter=400).fit(x).components_)
        query_class += [label] * 4
    random_rows = np.sort(rng.choice(len(labels), size=n_random, replace=False))
    queries.append(store.vector_reader.read(random_rows).astype(np.float32))
    query_class += list(labels[random_rows])
    return np.concatenate(queries).astype(np.float32), np.array(query_class)


def exact_search(store, queries, query_class, labels, image_ids, m: int, keep: int = 1024):
    """Exact top-m over the store, chunk by chunk: (filtered rows, unfiltered rows), each (q, m).

    Filtered: no crop of an image of the query's class, at most one crop per image (from the best
    `keep` admissible crops of each query, checked to be enough)."""
    from conceptscope.index import normalise

    q = len(queries)
    best = [np.full((q, 0), -np.inf, np.float32), np.full((q, 0), -np.inf, np.float32)]
    best_rows = [np.zeros((q, 0), np.int64), np.zeros((q, 0), np.int64)]
    step = 8192 * 8
    for first in range(0, len(store), step):
        block = normalise(store.vector_reader.read_range(first, first + step))
        plain = queries @ block.T
        filtered = np.where(labels[first : first + len(block)][None, :] == query_class[:, None], -np.inf, plain)
        for variant, sims in enumerate((filtered, plain)):
            width = min(keep if variant == 0 else m, sims.shape[1])
            top = np.argpartition(-sims, width - 1, axis=1)[:, :width]
            scores = np.concatenate([best[variant], np.take_along_axis(sims, top, 1)], 1)
            rows = np.concatenate([best_rows[variant], top + first], 1)
            width = min(keep if variant == 0 else m, scores.shape[1])
            pick = np.argpartition(-scores, width - 1, axis=1)[:, :width]
            best[variant], best_rows[variant] = np.take_along_axis(scores, pick, 1), np.take_along_axis(rows, pick, 1)
    out = []
    for variant in (0, 1):
        order = np.argsort(-best[variant], axis=1, kind="stable")
        rows = np.take_along_axis(best_rows[variant], order, 1)
        if variant == 1:
            out.append(rows[:, :m])
            continue
        filtered = np.full((q, m), -1, np.int64)
        for i in range(q):
            _, first_of_image = np.unique(image_ids[rows[i]], return_index=True)
            firsts = rows[i][np.sort(first_of_image)][:m]
            if len(firsts) < m:
                raise RuntimeError(f"query {i}: fewer than {m} images among its best {keep} crops; raise keep")
            filtered[i] = firsts
        out.append(filtered)
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=11_500_000)
    parser.add_argument("--nlist", type=int, default=4096)
    parser.add_argument("--pq-m", type=int, default=None, help="PQ sub-quantisers (default: the pipeline's, dim / 5 for 4-bit codes)")
    parser.add_argument("--pq-nbits", type=int, default=None, choices=[4, 8], help="bits per sub-quantiser (default: the pipeline's, 4)")
    parser.add_argument("--rerank-codes", default=None, help="the codes that re-rank PQ candidates in RAM (default: the pipeline's)")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[128, 192])
    parser.add_argument("--k-factor", type=int, nargs="+", default=[8, 16, 24])
    parser.add_argument("--exact-k-factor", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--exact-per-image", type=int, nargs="+", default=[3, 4])
    parser.add_argument("--build-only", action="store_true", help="build and save the index, then stop")
    parser.add_argument("--reuse-index", action="store_true",
                        help="search the index this script built and saved before (its build figures come from that build)")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--random-queries", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--topic", default="index_11m")
    parser.add_argument("--threads", type=int, default=0, help="FAISS threads (0: one per core)")
    parser.add_argument("--note", default="", help="a remark stored with the figures (e.g. what else ran on the machine)")
    args = parser.parse_args()

    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)

    from conceptscope.crop_search import CropIndex
    from conceptscope.index import IndexParams, build_crop_index, factory_string, index_info, normalise, save_index

    figures = {"n_vectors_requested": args.n, "search_threads": faiss.omp_get_max_threads(), "note": args.note}
    start = time.perf_counter()
    store = make_store(CACHE / f"store-{args.n}.zarr", args.n, args.seed, real_parts())
    figures["store_seconds_if_made"] = round(time.perf_counter() - start, 1)
    n, dim = store.vectors.shape
    labels, image_ids = store["label"][:], store.image_ids
    disk = sum(f.stat().st_size for f in (store.path / "vectors").rglob("*") if f.is_file())
    print(f"store: {n:,} x {dim}, {disk / 2**30:.1f} GiB of vectors on disk; peak RSS {peak_rss_gb():.2f} GB")

    params = IndexParams(type="ivf_pq_rerank", nlist=args.nlist, pq_m=args.pq_m, pq_nbits=args.pq_nbits, rerank_codes=args.rerank_codes or IndexParams().rerank_codes, seed=args.seed)
    factory = factory_string("ivf_pq_rerank", n, params, dim)
    index_path = CACHE / f"index-{args.n}-{factory.replace(',', '-').replace('(', '').replace(')', '')}.faiss"
    build_record = index_path.with_suffix(".build.json")
    if args.reuse_index and build_record.exists():
        index = faiss.read_index(str(index_path))
        build = json.loads(build_record.read_text())
        figures["index_reused"] = f"{index_path.name}: the build figures are those of the run that built it ({build['built_at']})"
    else:
        rss_before = peak_rss_gb()
        start = time.perf_counter()
        index = build_crop_index(store, params)
        build = {"build_seconds": round(time.perf_counter() - start, 1), "peak_rss_gb_before_build": round(rss_before, 2),
                 "peak_rss_gb_after_build": round(peak_rss_gb(), 2), "built_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        save_index(index, index_path, index_info(index, params, store))
        build_record.write_text(json.dumps(build, indent=1))
        if args.build_only:
            print(json.dumps(build))
            return
    figures["build_seconds"] = build["build_seconds"]
    index_bytes = index_path.stat().st_size
    print(f"index {index_path.name}: built in {figures['build_seconds']} s, {index_bytes / n:.0f} bytes/vector in RAM; peak RSS {peak_rss_gb():.2f} GB")

    # queries: concepts of classes with real crops (Imagenette's 10, then every k-th Tiny ImageNet
    # class), and random crops of the store
    real_rows = int(store["real"][:].sum())
    classes = list(dict.fromkeys(labels[:real_rows].tolist()))
    chosen = classes[:10] + classes[10 :: max(1, (len(classes) - 10) // max(1, args.classes - 10))][: args.classes - 10]
    queries, query_class = concept_queries(store, labels, chosen, args.random_queries, args.seed)
    queries = normalise(queries)
    print(f"{len(queries)} queries ({len(chosen)} classes x 4 concepts + {args.random_queries} crops)")

    start = time.perf_counter()
    exact_filtered, exact_plain = exact_search(store, queries, query_class, labels, image_ids, 8)
    figures["exact_scan_seconds"] = round(time.perf_counter() - start, 1)
    figures["exact_scan_ms_per_query"] = round(1000 * figures["exact_scan_seconds"] / len(queries), 1)
    print(f"exact scan over the store: {figures['exact_scan_seconds']} s for {len(queries)} queries; peak RSS {peak_rss_gb():.2f} GB")

    pred = labels  # the stand-in for "images predicted as the class": the class the crop's image belongs to
    by_class = {}
    for i, c in enumerate(query_class):
        by_class.setdefault(int(c), []).append(i)
    sweep = {}
    for key in itertools.product(args.nprobe, args.k_factor, args.exact_k_factor, args.exact_per_image):
        nprobe, k_factor, exact_k, per_image = key
        run = IndexParams(**{**params.__dict__, "nprobe": nprobe, "refine_k_factor": k_factor, "exact_k_factor": exact_k, "exact_per_image": per_image})
        crop_index = CropIndex(index, image_ids, run, store.vector_reader.read)
        crop_index.search(queries[:2], 8, exclude_rows=pred == query_class[0], one_per_image=True)  # warm-up
        found = np.zeros((len(queries), 8), np.int64)
        batch_times, single_times = [], []
        for c, members in by_class.items():
            t = time.perf_counter()
            _, rows = crop_index.search(queries[members], 8, exclude_rows=pred == c, one_per_image=True)
            batch_times.append((time.perf_counter() - t) / len(members))
            found[members] = rows
        for i, c in enumerate(query_class):
            t = time.perf_counter()
            crop_index.search(queries[i : i + 1], 8, exclude_rows=pred == c, one_per_image=True)
            single_times.append(time.perf_counter() - t)
        plain = np.stack([crop_index.search(q[None], 8)[1][0] for q in queries])
        recall = np.mean([len(set(f) & set(e)) / 8 for f, e in zip(found, exact_filtered)])
        recall_plain = np.mean([len(set(f) & set(e)) / 8 for f, e in zip(plain, exact_plain)])
        sweep[key] = (recall, statistics.mean(batch_times) * 1000, statistics.median(single_times) * 1000, recall_plain)
        print(f"nprobe {nprobe}, k_factor {k_factor}, exact_k_factor {exact_k}, exact_per_image {per_image}: filtered recall@8 {recall:.3f} (unfiltered {recall_plain:.3f}), {sweep[key][1]:.2f} ms/concept, {sweep[key][2]:.2f} ms single query", flush=True)
    good = [key for key, value in sweep.items() if value[0] >= 0.95]
    chosen_key = min(good, key=lambda key: sweep[key][1]) if good else max(sweep, key=lambda key: sweep[key][0])
    recall, batch_ms, single_ms, recall_plain = sweep[chosen_key]
    figures.update(
        {
            "n_vectors": n,
            "n_real_vectors": real_rows,
            "dim": dim,
            "n_queries": len(queries),
            "nlist": args.nlist,
            "factory": factory,
            "rerank_codes": params.rerank_codes,
            "nprobe": chosen_key[0],
            "refine_k_factor": chosen_key[1],
            "exact_k_factor": chosen_key[2],
            "exact_per_image": chosen_key[3],
            "recall_at_8": round(float(recall), 4),
            "recall_at_8_unfiltered": round(float(recall_plain), 4),
            "query_ms_per_concept": round(batch_ms, 2),
            "query_ms_single_filtered": round(single_ms, 2),
            "speedup_vs_exact_scan": round(figures["exact_scan_ms_per_query"] / single_ms, 1),
            "bytes_per_vector_ram": round(index_bytes / n, 1),
            "bytes_per_vector_disk": round(disk / n, 1),
            "index_gb": round(index_bytes / 2**30, 2),
            "store_gb": round(disk / 2**30, 2),
            "peak_rss_gb": round(peak_rss_gb(), 2),
            "peak_rss_gb_before_build": build["peak_rss_gb_before_build"],
            "peak_rss_gb_after_build": build["peak_rss_gb_after_build"],
        }
    )
    fast = [key for key, value in sweep.items() if value[1] <= 20.0]  # the acceptance's 20 ms per concept
    if fast:
        best = max(fast, key=lambda key: sweep[key][0])
        figures["best_within_20ms"] = {"nprobe": best[0], "refine_k_factor": best[1], "exact_k_factor": best[2], "exact_per_image": best[3],
                                       "recall_at_8": round(float(sweep[best][0]), 4), "query_ms_per_concept": round(sweep[best][1], 2)}
    for (nprobe, k_factor, exact_k, per_image), (r, b, s, rp) in sweep.items():
        tag = f"nprobe{nprobe}_k{k_factor}_exact{exact_k}_per_image{per_image}"
        figures[f"recall_at_8_{tag}"] = round(float(r), 4)
        figures[f"recall_at_8_unfiltered_{tag}"] = round(float(rp), 4)
        figures[f"query_ms_per_concept_{tag}"] = round(b, 2)
        figures[f"query_ms_single_{tag}"] = round(s, 2)
    from _common import write_results

    write_results(args.topic, figures)


if __name__ == "__main__":
    main()
