"""End-to-end: the tiny config through Snakemake, then the DAG's rerun behaviour."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT, run_tiny_config


def snakemake(workdir, *args, configfile="config.yaml", env=None):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--configfile", configfile, *args]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env)


def planned_jobs(workdir, configfile="config.yaml") -> dict[str, int]:
    """Jobs a dry run would execute, by rule (from Snakemake's job stats table)."""
    run = snakemake(workdir, "-n", "--quiet", "rules", configfile=configfile)
    assert run.returncode == 0, run.stdout + run.stderr
    counts = {}
    for line in run.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "job"):
            counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pipeline")
    # no network at run time: every Python process of the run (Snakemake and each job) loads
    # tests/netblock/sitecustomize.py, which fails and records any connection beyond this machine
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "tests" / "netblock"), os.environ.get("PYTHONPATH")])),
               CONCEPTSCOPE_NETLOG=str(workdir / "network.log"))
    run, config = run_tiny_config(workdir, "test.yaml", env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return workdir, config


def test_tiny_run_writes_models_table(finished_run):
    workdir, config = finished_run
    table = pd.read_csv(workdir / "results" / "tables" / "models.csv")
    expected_cols = ["model", "train_dataset", "dataset", "split", "top1", "top1_non_shortcut", "shortcut_rate"]
    assert all(c in table.columns for c in expected_cols)
    pairs = set(zip(table.model, table.dataset, table.split))
    assert pairs == {
        ("vgg_shortcut", "digits_shortcut", "test"),
        ("vgg_shortcut", "digits_shortcut", "test_watermarked"),
        ("resnet_clean", "digits_shortcut", "test"),
        ("resnet_clean", "digits_shortcut", "test_watermarked"),
        ("mobilenet_v2", "photos", "test"),
    }
    mobilenet = table[table.model == "mobilenet_v2"].iloc[0]
    assert mobilenet.top1 >= 0.8 and pd.isna(mobilenet.shortcut_rate)
    assert table[table.model == "vgg_shortcut"].shortcut_rate.notna().all()
    preds = pd.read_parquet(workdir / "results" / "predictions" / "digits_shortcut" / "vgg_shortcut.parquet")
    assert set(preds.split) == {"train", "test", "test_watermarked"} and len(preds) == 360
    log = pd.read_csv(workdir / "results" / "models" / "vgg_shortcut" / "train_log.csv")
    assert list(log.columns) == ["epoch", "loss", "train_acc"]


def test_the_run_made_no_network_access(finished_run):
    workdir, _ = finished_run
    loaded = (workdir / "network.log.loaded").read_text().splitlines()
    # the guard was in every job's interpreter (e.g. each activation extraction), and nothing tried the network
    assert sum("extract_activations.py" in line for line in loaded) == 3 and len(loaded) > 50
    assert not (workdir / "network.log").exists(), (workdir / "network.log").read_text()


def test_rerun_has_nothing_to_do(finished_run):
    workdir, _ = finished_run
    assert planned_jobs(workdir) == {}


def test_adding_a_model_schedules_only_its_jobs(finished_run):
    workdir, config = finished_run
    extended = dict(config, models={**config["models"], "vgg_clean": {"arch": "vgg_small", "train_dataset": "digits", "eval_datasets": ["digits_shortcut"], "layers": ["features.7"], "train": {"epochs": 1}}})
    (workdir / "config.yaml").write_text(yaml.safe_dump(extended))
    model_jobs = {"train_model": 1, "predict": 1, "extract_activations": 1, "extract_crop_vectors": 1, "build_crop_index": 1, "summarize_models": 1,
                  "extract_concepts": 1, "concept_crops": 1, "summarize_concepts": 1, "extract_contrast_vectors": 1, "train_contrast_hyperplanes": 1,
                  "run_shifting_test": 1, "extract_contrast_concepts": 1, "contrast_crops": 1, "summarize_contrast": 1, "all": 1,
                  # the report's pages of the tables that change (models 1, concepts 2, contrast 4) and the shortcut summary (+1)
                  "render_table_page": 8, "summarize_shortcut": 1}
    try:
        assert planned_jobs(workdir) == model_jobs
        changed = yaml.safe_load(yaml.safe_dump(config))
        changed["models"]["resnet_clean"]["train"]["lr"] = 0.01
        (workdir / "config.yaml").write_text(yaml.safe_dump(changed))
        # resnet_clean's, and nobody else's: its model jobs but contrast's (not at its layer in the tiny config) ...
        contrast = ("extract_contrast_vectors", "train_contrast_hyperplanes", "run_shifting_test", "extract_contrast_concepts", "contrast_crops",
                    "summarize_contrast")
        own = {rule: n for rule, n in model_jobs.items() if rule not in contrast}
        # ... its ClaDec variants (refae and alpha 0; the sweep is at the VGG's layer)
        cladec_jobs = {"train_reconstructor": 2, "evaluate_reconstructor": 2, "cladec_occlusion": 1, "cladec_figure": 1, "cladec_watermark": 1,
                       "summarize_cladec": 1}
        # its NAVE segments, class-wide clusters and figure; the baselines list the images of its store
        nave_jobs = {"segment_nave": 1, "segment_baseline": 2, "nave_classwide": 1, "nave_figure": 1, "summarize_nave": 1}
        # and the report pages of its tables (models 1, concepts 2, ClaDec 6, NAVE 3) and of the shortcut summary
        assert planned_jobs(workdir) == {**own, **cladec_jobs, **nave_jobs, "render_table_page": 1 + 2 + 6 + 3 + 1}
    finally:
        (workdir / "config.yaml").write_text(yaml.safe_dump(config))


def test_changing_one_stage_parameter_schedules_only_that_stage(finished_run):
    workdir, config = finished_run
    crops_follow = {"concept_crops": 3, "summarize_concepts": 1, "contrast_crops": 2, "summarize_contrast": 1}  # contrast: 2 of 3 layers
    cases = [
        # NAVE reads the stores, so its jobs follow them
        ("activations", "dtype", "float16", {"extract_activations": 3, "segment_nave": 2, "segment_baseline": 4, "nave_classwide": 2,
                                             "nave_figure": 2, "summarize_nave": 1}),
        ("index", "type", "hnsw", {"build_crop_index": 3, **crops_follow}),
        # the index is built from the crop vectors, so it follows them, and the concepts' crops follow both
        ("crops", "grids", [2, 3], {"extract_crop_vectors": 3, "build_crop_index": 3, **crops_follow}),
        # showing concepts is separate from extracting them: the NMF and attribution do not rerun
        ("concepts", "top_m", 3, crops_follow),
        ("concepts", "max_images", 4, {"extract_concepts": 3, "concept_crops": 3, "summarize_concepts": 1}),
        # the shifting test and the contrast concepts use the trained classifiers; neither retrains them
        ("contrast", "shift", {"offsets": [0.0, 5.0]}, {"run_shifting_test": 2, "summarize_contrast": 1}),
        ("contrast", "n_concepts", 2, {"extract_contrast_concepts": 2, "contrast_crops": 2, "summarize_contrast": 1}),
        ("contrast", "epochs", 50, {"train_contrast_hyperplanes": 2, "run_shifting_test": 2, "extract_contrast_concepts": 2,
                                    "contrast_crops": 2, "summarize_contrast": 1}),
        # a new alpha trains and evaluates only its decoder (at the sweep's layer)
        ("cladec", "sweep", {"alphas": [0.9, 0.5], "layers": ["features.7"]}, {"train_reconstructor": 1, "evaluate_reconstructor": 1,
                                                                               "cladec_watermark": 1, "summarize_cladec": 1}),
        ("cladec", "occlusion", {"grid": 3}, {"cladec_occlusion": 2, "summarize_cladec": 1}),
        ("cladec", "eval_train", {"epochs": 2}, {"evaluate_reconstructor": 6, "summarize_cladec": 1}),
        # a new K segments each NAVE pair once more, with its SLIC twin; the figures keep showing the first K
        ("nave", "k", [3, 4], {"segment_nave": 2, "segment_baseline": 2, "summarize_nave": 1}),
        ("nave", "classwide", {"enabled": True, "k": 5, "classes": [0, 3], "max_images": 6}, {"nave_classwide": 2, "summarize_nave": 1}),
        ("nave", "baselines", {"felzenszwalb": {"scale": 50.0}}, {"segment_baseline": 2, "nave_figure": 2, "summarize_nave": 1}),
        # DORA: the detectors read the distances; the s-AMS are generated once per layer
        ("dora", "outliers", {"contamination": 0.2, "n_neighbors": 5}, {"dora_analysis": 2, "summarize_dora": 1}),
        ("dora", "sams", {"enabled": True, "n_signals": 1, "steps": 4, "batch_size": 8, "max_representations": 4, "figures": 4},
         {"dora_sams": 2, "dora_analysis": 2, "summarize_dora": 1}),
        ("dora", "n", 3, {"dora_distances": 2, "dora_analysis": 2, "summarize_dora": 1}),
        # ClusCAM: a baseline's setting reruns that baseline alone; the sweep and the size bins are separate
        ("cluscam", "rise", {"n_masks": 32}, {"cluscam_saliency": 1, "cluscam_figure": 1, "summarize_cluscam": 1}),
        ("cluscam", "sweep", {"n_clusters": [2], "temperature": [0.1], "max_images": 3}, {"cluscam_sweep": 1, "summarize_cluscam": 1}),
        ("cluscam", "object_size_bins", [0.2], {"summarize_cluscam": 1}),
    ]
    # a dry run is mostly the Python start-up: cases whose expected jobs share no rule are changed
    # together in one config (their plans must add up exactly), two such dry runs at a time
    groups: list[list[int]] = []
    for i, (section, key, _, jobs) in enumerate(cases):
        for group in groups:
            if all(not set(jobs) & set(cases[j][3]) and (section, key) != cases[j][:2] for j in group):
                group.append(i)
                break
        else:
            groups.append([i])
    files = []
    for g, group in enumerate(groups):
        changed = yaml.safe_load(yaml.safe_dump(config))
        for section, key, value, _ in (cases[i] for i in group):
            changed.setdefault(section, {})[key] = value
        files.append(f"changed_{g}.yaml")
        (workdir / files[-1]).write_text(yaml.safe_dump(changed))
    with ThreadPoolExecutor(max_workers=2) as pool:
        planned = list(pool.map(lambda name: planned_jobs(workdir, name), files))
    for group, plan in zip(groups, planned):
        expected = {"all": 1}
        for i in group:
            expected.update(cases[i][3])
        # the report follows every table: the changed stage's table pages and the shortcut summary
        report = {rule: plan.pop(rule, 0) for rule in ("render_table_page", "summarize_shortcut")}
        assert plan == expected, [cases[i][:2] for i in group]
        assert report["summarize_shortcut"] == 1 and report["render_table_page"] >= 2, report


def test_stores_of_the_tiny_run_are_complete_and_readable(finished_run):
    from conceptscope.store import open_activations, open_crops

    workdir, config = finished_run
    acts = open_activations(workdir / "results", "digits_shortcut", "vgg_shortcut", "features.7")
    assert acts.activations.shape == (120, 512, 1, 1) and acts.attrs["selection"]["split"] == "test"
    crops = open_crops(workdir / "results", "photos", "mobilenet_v2", "features.18")
    assert crops.vectors.shape == (25 * 9, 1280) and crops.attrs["mode"] == "cells"
    from conceptscope.crop_search import CropIndex

    index = CropIndex.open(workdir / "results" / "index" / "photos" / "mobilenet_v2" / "features.18.faiss", crops)
    scores, rows = index.search(crops.vectors[:3], m=4)
    assert (rows[:, 0] == [0, 1, 2]).all() and index.index.ntotal == 225


def test_concept_tables_figures_and_the_stricter_variant(finished_run):
    from PIL import Image

    workdir, config = finished_run
    results = workdir / "results"
    table = pd.read_csv(results / "tables" / "concepts_prediction_test.csv")
    assert list(table.columns[:8]) == ["model", "dataset", "layer", "attribution", "n_concepts", "exclude_target", "avg_pred", "pct_target"]
    jobs = {(m, spec["eval_datasets"][0] if spec.get("eval_datasets") else spec["train_dataset"], layer) for m, spec in config["models"].items() for layer in spec["layers"]}
    assert set(table[["model", "dataset", "layer"]].itertuples(index=False, name=None)) == jobs
    assert sorted(table["n_concepts"].unique()) == [1, 2, 4]  # the figure's n and the sweep
    assert table["avg_pred"].between(0, 1).all() and table["pct_target"].between(0, 100).all()
    # the real MobileNetV2's stitched concept crops are its class far above chance (1 in 1000), as the paper's Table 1
    real = table[(table.model == "mobilenet_v2") & ~table.exclude_target.astype(bool)]
    assert len(real) == 3 and (real.avg_pred > 0.2).all() and (real.pct_target > 25).all()
    folder = results / "concepts" / "photos" / "mobilenet_v2" / "features.18" / "crops"
    tests = pd.read_csv(folder / "prediction_test.csv")
    crops = pd.read_parquet(folder / "top_crops.parquet")
    explained = tests["class"].unique()
    assert len(explained) == 19  # the photos' labelled classes
    # the stricter variant never shows a crop predicted as the class, as retrieved or as stitched (paper Table 2)
    strict = crops[crops["variant"] == "excluded"]
    assert len(strict) and not (strict["crop_pred"] == strict["class"]).any()
    assert not (strict["stitched_pred"] == strict["class"]).any()
    allowed = crops[crops["variant"] == "allowed"]
    shown_as_class = (allowed["stitched_pred"] == allowed["class"]) | (allowed["crop_pred"] == allowed["class"])
    assert shown_as_class.any()  # so the filter above had something to remove
    assert (crops.groupby(["class", "n_concepts", "variant", "concept"])["score"].apply(lambda s: s.is_monotonic_decreasing)).all()
    sweeps = sorted(p.name for p in (results / "figures" / "concepts_sweep").glob("*.png"))
    assert sweeps == sorted(f"{ds}_{m}.png" for m, ds, _ in jobs)
    figures = sorted((folder / "figures").glob("*.png"))
    assert len(figures) == len(tests.loc[tests["status"] == "ok", "class"].unique())
    with Image.open(figures[0]) as image:
        assert image.width > 4 * 80 and image.height > 2 * 4 * 80


def test_pooled_search_equals_brute_force_over_the_union(finished_run):
    import numpy as np

    from conceptscope.crop_search import brute_force_search
    from conceptscope.methods.concept_crops import CropPool, search_pools

    workdir, _ = finished_run
    r = workdir / "results"
    open_pool = lambda name: CropPool.open(  # noqa: E731
        name, r / "data" / "photos", r / "crops" / "photos" / "mobilenet_v2", r / "index" / "photos" / "mobilenet_v2" / "features.18.faiss",
        r / "predictions" / "photos" / "mobilenet_v2.parquet", "features.18",
    )
    pools = [open_pool("a"), open_pool("b")]  # the same crops twice: every hit comes in pairs
    vectors = pools[0].store.vectors[:]
    queries = vectors[[3, 50, 100]] + 0.01
    hits = search_pools(pools, queries, m=6)
    scores, rows = brute_force_search(vectors, queries, m=3)
    np.testing.assert_allclose(hits.scores[:, ::2], scores, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(hits.scores[:, 1::2], scores, rtol=1e-4, atol=1e-5)
    assert (hits.rows[:, ::2] == rows).all() and set(np.unique(hits.pool)) == {0, 1}
    target = int(pools[0].image_pred[rows[0, 0]])
    for images in (False, True):
        strict = search_pools(pools[:1], queries, m=3, exclude_target=target, exclude_images=images)
        keep = ~pools[0].excluded(target, images)
        scores, kept_rows = brute_force_search(vectors[keep], queries, m=3)
        assert (strict.rows == np.flatnonzero(keep)[kept_rows]).all()
    assert pools[0].excluded(target, True).sum() > pools[0].excluded(target).sum()


def test_contrast_tables_classifiers_and_shifting_test(finished_run):
    import numpy as np

    from conceptscope.methods.contrast import ContrastHyperplanes
    from conceptscope.store import ClassVectorStore

    workdir, config = finished_run
    results = workdir / "results"
    shifting = pd.read_csv(results / "tables" / "contrast_shifting_test.csv")
    assert list(shifting.columns[:6]) == ["model", "dataset", "layer", "default_pred_mean", "shifted_pred_mean", "shifted_pred_std"]
    photos = shifting[shifting["model"] == "mobilenet_v2"].iloc[0]
    assert photos["default_pred_mean"] < 0.01 < 0.3 < photos["shifted_pred_mean"]
    assert photos["n_repeats"] == 2 and photos["pairs_per_repeat"] == 18 * 3  # 3 targets per start class
    pairs = pd.read_csv(results / "tables" / "contrast_pairs.csv").set_index("model")
    assert pairs.loc["mobilenet_v2", "n_pairs"] == 18 * 17 // 2 and pairs.loc["mobilenet_v2", "accuracy_min"] > 0.9
    # the one-epoch digit net predicts a single class: nothing to contrast, said in the table, not a crash
    assert sorted(pairs.index) == ["mobilenet_v2", "vgg_shortcut"] and pairs.loc["vgg_shortcut", "n_pairs"] == 0
    folder = results / "contrast" / "photos" / "mobilenet_v2" / "features.18"
    store = ClassVectorStore(folder / "vectors.zarr")
    planes = ContrastHyperplanes.load(folder / "hyperplanes.zarr")
    assert planes.classes_.tolist() == sorted(c for c, n in store.counts.items() if n)
    trained = pd.read_parquet(folder / "pairs.parquet")
    assert trained["accuracy"].between(0, 1).all() and len(trained) == len(planes.pairs_)
    a, b = planes.pairs_[0]
    w, bias = planes.hyperplane(a, b)
    assert (store.vectors(a) @ w + bias > 0).mean() > 0.9 and (store.vectors(b) @ w + bias < 0).mean() > 0.9
    tests = pd.read_csv(results / "tables" / "contrast_prediction_test.csv")
    mine = tests[tests["model"] == "mobilenet_v2"]
    assert len(mine) == 2 * 18 and mine["against"].notna().all() and (mine["class"] != mine["against"]).all()
    assert mine["target_prob"].between(0, 1).all() and mine["against_prob"].between(0, 1).all()
    figures = sorted((folder / "concepts" / "crops" / "figures").glob("class_*_vs_*.png"))
    assert len(figures) == 18
    assert (results / "figures" / "contrast_shifting" / "photos_mobilenet_v2.png").is_file()
    offsets = pd.read_csv(folder / "shifting" / "offsets.csv")
    assert sorted(offsets["offset"].unique()) == sorted(config["contrast"].get("shift", {}).get("offsets", [0.0, 0.5, 1.0, 2.0, 10.0, 15.0, 20.0, 35.0, 50.0, 200.0]))
    assert np.isfinite(offsets["pred"]).all()


def test_cladec_tables_figures_and_reconstructors(finished_run):
    import json

    from PIL import Image

    workdir, config = finished_run
    results = workdir / "results"
    layers = pd.read_csv(results / "tables" / "cladec_layers.csv")
    assert list(layers.columns[:10]) == ["model", "dataset", "layer", "alpha", "rec_cladec", "rec_refae", "delta_rec", "acc_cladec", "acc_refae", "delta_acc"]
    assert set(zip(layers["model"], layers["layer"])) == {("vgg_shortcut", "features.7"), ("resnet_clean", "layer3")}
    assert (layers[["rec_cladec", "rec_refae"]] > 0).all().all() and layers[["acc_cladec", "acc_refae"]].stack().between(0, 1).all()
    assert (layers["delta_rec"] - (layers["rec_cladec"] - layers["rec_refae"])).abs().max() < 1e-12
    assert (layers["epochs"] == 2).all() and (layers["eval_epochs"] == 1).all()
    alphas = pd.read_csv(results / "tables" / "cladec_alpha.csv")
    # the sweep, the untrained classifier and the subsets run at the sweep's layer only (cladec.sweep.layers)
    assert alphas.groupby("model")["alpha"].apply(sorted).to_dict() == {"vgg_shortcut": [0.0, 0.9]}
    untrained = pd.read_csv(results / "tables" / "cladec_untrained.csv")
    assert sorted(zip(untrained["model"], untrained["classifier"])) == [("vgg_shortcut", "trained"), ("vgg_shortcut", "untrained")]
    subsets = pd.read_csv(results / "tables" / "cladec_subsets.csv")
    assert sorted(zip(subsets["model"], subsets["channels"])) == [("vgg_shortcut", "0-63"), ("vgg_shortcut", "all")]
    assert {f"rec_class_{c}" for c in range(10)} <= set(subsets.columns)
    occlusion = pd.read_csv(results / "tables" / "cladec_occlusion.csv")
    assert sorted(occlusion["method"]) == ["cladec", "cladec", "gradcam", "gradcam"]
    assert occlusion[["acc_most_relevant_occluded", "acc_least_relevant_occluded"]].stack().between(0, 1).all()
    # vgg_shortcut's features.7 map is 1x1: Grad-CAM is constant there, on every image
    flat = occlusion[(occlusion["model"] == "vgg_shortcut") & (occlusion["method"] == "gradcam")].iloc[0]
    assert flat["n_constant_relevance"] == flat["n_images"]
    watermark = pd.read_csv(results / "tables" / "cladec_watermark.csv").set_index(["model", "variant"])
    assert watermark.loc[("vgg_shortcut", "cladec_a0"), "model_trained_with_shortcut"]
    assert not watermark.loc[("resnet_clean", "cladec_a0"), "model_trained_with_shortcut"]
    assert (watermark["box_error"] > 0).all() and (watermark["n_images"] > 0).all()
    assert watermark["watermark_kept"].notna().all() and (watermark["watermark_kept"].abs() < 1.5).all()
    folder = results / "cladec" / "digits_shortcut" / "vgg_shortcut" / "features.7"
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["cladec_a0", "cladec_a0.9", "cladec_c64", "cladec_untrained", "refae"]
    evaluation = json.loads((folder / "cladec_c64" / "evaluation.json").read_text())
    assert evaluation["channels"] == [0, 64] and "acc_eval" not in evaluation  # subsets are not given a C_eval
    history = pd.read_csv(folder / "refae" / "history.csv")
    assert history["epoch"].tolist() == [1, 2]
    figure = Image.open(results / "figures" / "cladec" / "digits_shortcut" / "vgg_shortcut" / "features.7.png")
    assert figure.width > 4 * 64 and figure.height > 2 * 4 * 64  # test and watermarked panels, 4 rows each


def test_nave_tables_segments_and_figures(finished_run):
    from PIL import Image

    from conceptscope.store import RowStore

    workdir, config = finished_run
    results = workdir / "results"
    table = pd.read_csv(results / "tables" / "nave_object_extraction.csv")
    assert list(table.columns[:8]) == ["model", "weights", "train_dataset", "dataset", "layers", "method", "clustering", "k"]
    assert {"strategy", "ap50", "n_images", "ap50_small_objects", "n_small_objects"} <= set(table.columns)
    # digit ink boxes: some cover under half of the 28x28 frame, none more than all of it
    assert (table.n_small_objects > 0).all() and (table.n_small_objects <= table.n_images).all()
    # the digits carry object boxes (their ink extent); the photos have none, so only the digits are scored
    assert set(table.model) == {"resnet_clean"} and set(table.dataset) == {"digits_shortcut"}
    assert set(zip(table.method, table.strategy)) == {(m, s) for m in ("nave", "nave_classwide", "slic", "felzenszwalb") for s in ("outer", "inner")}
    assert table.ap50.between(0, 1).all() and (table.n_images[table.method == "nave"] == 120).all()
    nave = table.set_index(["method", "strategy"]).ap50
    assert nave["nave", "outer"] > 0.5  # a trained digit model separates the digit from the black background
    assert (nave["nave", "inner"] <= nave["nave", "outer"]) and (nave["slic", "inner"] <= nave["slic", "outer"])
    marks = pd.read_csv(results / "tables" / "nave_watermark.csv")
    assert set(marks.model) == {"resnet_clean"} and marks.covered_rate.between(0, 1).all() and (marks.n_images[marks.method == "nave"] == 120).all()
    segments = RowStore(results / "nave" / "digits_shortcut" / "resnet_clean" / "layer3" / "k3_kmeans" / "segments.zarr")
    labels = segments["labels"][:]
    assert labels.shape == (120, 7, 7) and labels.max() == 2 and (labels.reshape(120, -1).max(axis=1) == 2).all()
    photos = RowStore(results / "nave" / "photos" / "mobilenet_v2" / "features.18" / "k3_kmeans" / "segments.zarr")
    assert photos["labels"].shape == (25, 7, 7) and photos.attrs["layers"] == ["features.18"]
    for figure in ("segments.png", "classwide_layer3.png"):
        with Image.open(results / "figures" / "nave" / "digits_shortcut" / "resnet_clean" / figure) as image:
            assert image.width > 3 * 112 and image.height > 4 * 112


def test_dora_tables_and_figures(finished_run):
    from PIL import Image

    workdir, _ = finished_run
    results = workdir / "results"
    outliers = pd.read_csv(results / "tables" / "dora_outliers.csv")
    assert list(outliers.columns[:3]) == ["dataset", "model", "layer"]
    assert set(zip(outliers.model, outliers.dataset, outliers.layer)) == {
        ("vgg_shortcut", "digits_shortcut", "features.7"), ("mobilenet_v2", "photos", "logits")}
    assert set(zip(outliers.distance, outliers["mode"].fillna(""))) == {
        ("ea_n", "pairwise"), ("ea_n", "layerwise"), ("ea_s", "pairwise"), ("ea_s", "layerwise"), ("minkowski", ""), ("pearson", ""), ("spearman", "")}
    assert set(outliers.detector) == {"abod", "feature_bagging", "iforest", "lof", "ocsvm"}
    # every detector ranks every representation once per distance: 1..k; EA_s covers the 4-representation subset
    for (_, _, layer, distance, mode, _), group in outliers.groupby(["dataset", "model", "layer", "distance", "mode", "detector"], dropna=False):
        assert sorted(group["rank"])[0] == 1 and group["rank"].max() <= len(group) == group.n_representations.iloc[0]
        assert len(group) == (4 if distance == "ea_s" else {"features.7": 512, "logits": len(group)}[layer])
    # the photos' 19 ImageNet classes: Mantel against each WordNet baseline, the digits have none
    mantel = pd.read_csv(results / "tables" / "dora_mantel.csv")
    assert set(mantel.model) == {"mobilenet_v2"} and set(mantel.baseline) == {"shortest_path", "leacock_chodorow", "wu_palmer"}
    assert mantel.mantel_r.between(-1, 1).all() and mantel.p_value.between(0.01, 1).all()
    assert (mantel.n_representations[mantel.distance == "ea_n"] == 19).all()
    # the two dog logits as the known anomalies: an AUC per detector x distance, for the logits only
    anomaly = pd.read_csv(results / "tables" / "dora_anomaly.csv")
    assert set(zip(anomaly.model, anomaly.layer)) == {("mobilenet_v2", "logits")} and anomaly.auc.between(0, 1).all()
    assert (anomaly.repeats[anomaly.detector.isin(["iforest", "feature_bagging"])] == 2).all() and (anomaly.n_anomalies == 2).all()
    # probing on the watermarked twins
    # (the 1-epoch tiny model has not learned the shortcut, so the AUCs are near chance: they are
    # checked against scikit-learn on the stored twins, and the twins against their clean images)
    from sklearn.metrics import roc_auc_score

    probing = pd.read_csv(results / "tables" / "dora_probing.csv")
    assert set(probing.model) == {"vgg_shortcut"} and set(probing.auc_rank) == {1, 2, 3}
    reps = np.load(results / "dora" / "digits_shortcut" / "vgg_shortcut" / "features.7" / "representations.npz")
    marked, clean = reps["acts_marked"], reps["acts"][reps["twin"]]
    labels = np.r_[np.ones(len(marked)), np.zeros(len(clean))]
    top = probing[probing.layer == "features.7"].drop_duplicates("representation")
    assert len(top) == 3 and top.probing_auc.is_monotonic_decreasing
    for rep, auc in zip(top.representation, top.probing_auc):
        assert auc == pytest.approx(roc_auc_score(labels, np.r_[marked[:, rep], clean[:, rep]]))
    # channels standardised over the clean images, so no few large channels dominate the correlation
    marked, clean = [(a - reps["acts"].mean(axis=0)) / (reps["acts"].std(axis=0) + 1e-9) for a in (marked, clean)]
    same = [np.corrcoef(m, c)[0, 1] for m, c in zip(marked, clean)]
    other = [np.corrcoef(m, c)[0, 1] for m, c in zip(marked, np.roll(clean, 1, axis=0))]
    assert np.mean(same) > np.mean(other) + 0.3
    for kind in ("atlas", "sams"):
        with Image.open(results / "figures" / "dora" / "digits_shortcut" / "vgg_shortcut" / f"features.7_{kind}.png") as image:
            assert image.width > 200


def test_cluscam_tables_maps_and_figure(finished_run):
    import torch
    from PIL import Image

    from conceptscope.data import ImageDataset, PreparedDataset
    from conceptscope.methods.saliency import explain_and_score
    from conceptscope.models import build_transform, load_model

    workdir, config = finished_run
    results, opts = workdir / "results", config["cluscam"]
    job = results / "cluscam" / "digits_shortcut" / "vgg_shortcut" / "features.3"
    methods = ["cluscam", "gradcam", "scorecam", "ablationcam", "rise", "occlusion"]
    faithfulness = pd.read_csv(results / "tables" / "cluscam_faithfulness.csv")
    assert list(faithfulness.columns[:10]) == ["model", "dataset", "layer", "method", "subset", "images", "deletion_auc", "insertion_auc",
                                               "average_drop", "increase_in_confidence"]
    main, costly = (faithfulness[faithfulness.subset == s].set_index("method") for s in ("main", "costly"))
    # the costly methods only on the small subset, where every method is scored on the same images
    assert set(main.index) == {"cluscam", "gradcam", "ablationcam", "occlusion"} and (main.images == opts["max_images"]).all()
    assert set(costly.index) == set(methods) and (costly.images == opts["costly"]["max_images"]).all()
    assert faithfulness[["deletion_auc", "insertion_auc"]].stack().between(0, 1).all()
    assert faithfulness.average_drop.between(0, 100).all() and faithfulness.increase_in_confidence.between(0, 100).all()
    per_image = {m: pd.read_csv(job / m / "per_image.csv") for m in methods}
    assert set(per_image["scorecam"].image_id) < set(per_image["gradcam"].image_id)
    assert set(per_image["rise"].image_id) == set(per_image["scorecam"].image_id)
    assert costly.loc["gradcam", "deletion_auc"] == pytest.approx(
        per_image["gradcam"].set_index("image_id").loc[per_image["scorecam"].image_id, "deletion_auc"].mean())

    # the job's numbers are the library's on the same images and targets (preprocessing, layer, class)
    data = PreparedDataset(results / "data" / "digits_shortcut")
    model, info = load_model(results / "models" / "vgg_shortcut")
    stored = per_image["gradcam"]
    rows = data.manifest.set_index("image_id").loc[stored.image_id].reset_index()
    images = torch.stack([image for image, _, _ in ImageDataset(data, rows, build_transform(info["preprocess"]))])
    with torch.no_grad():
        assert model(images).argmax(1).tolist() == stored.target.tolist()
    maps, scores = explain_and_score(model, images, "features.3", "gradcam", torch.tensor(stored.target.to_numpy()),
                                     steps=opts["faithfulness"]["steps"])
    # the job runs batches of cluscam.batch_size images, this one all at once: float32 convolutions of
    # other batch shapes differ in the last bits, which the drop of a small probability shows at 1e-5
    for metric in ("deletion_auc", "insertion_auc", "average_drop"):
        assert scores[metric] == pytest.approx(stored[metric].to_numpy(), abs=1e-4), metric
    # the mass inside the object box, by hand: 28 px digits are not resized, so boxes stay in pixels
    boxes = rows[["box_x0", "box_y0", "box_x1", "box_y1"]].to_numpy()
    by_hand = [m[int(np.ceil(y0 - 0.5)):int(np.ceil(y1 - 0.5)), int(np.ceil(x0 - 0.5)):int(np.ceil(x1 - 0.5))].sum() / m.sum()
               for m, (x0, y0, x1, y1) in zip(maps.double().numpy(), boxes)]
    assert stored.mass_in_object.to_numpy() == pytest.approx(by_hand, abs=1e-6)

    # the watermark table: every method on the watermarked twins, the 6 x 6 box of a 28 x 28 frame
    watermark = pd.read_csv(results / "tables" / "cluscam_watermark.csv").set_index("method")
    assert set(watermark.index) == set(methods) and watermark.box_fraction.to_numpy() == pytest.approx(36 / 784)
    assert watermark.mass_in_box.between(0, 1).all() and watermark.ratio.to_numpy() == pytest.approx(watermark.mass_in_box / watermark.box_fraction)
    marks = pd.read_csv(job / "cluscam" / "watermark.csv")
    assert set(data.manifest.set_index("image_id").loc[marks.image_id, "split"]) == {"test_watermarked"}

    sizes = pd.read_csv(results / "tables" / "cluscam_object_size.csv")
    assert set(sizes.size_bin) <= {"<0.1", "0.1-0.3", ">=0.3"}
    assert sizes.groupby("method").images.sum().to_dict() == faithfulness.groupby("method").images.max().to_dict()
    sweep = pd.read_csv(results / "tables" / "cluscam_sweep.csv")
    assert set(zip(sweep.n_clusters, sweep.temperature)) == {(2, 0.5), (4, 0.5), (10, 0.1)} and (sweep.images == 3).all()

    stored_maps = [np.load(job / m / "maps.npz") for m in methods]
    assert all(np.array_equal(s["image_id"], stored_maps[0]["image_id"]) for s in stored_maps) and len(stored_maps[0]["image_id"]) == 3
    assert all(s["maps"].shape == (3, 28, 28) and 0 <= s["maps"].min() and s["maps"].max() <= 1 for s in stored_maps)
    with Image.open(results / "figures" / "cluscam" / "digits_shortcut" / "vgg_shortcut" / "features.3.png") as figure:
        assert figure.width > 7 * 112 and figure.height > 3 * 112


def _report_figures(results) -> set:
    """Every PNG figure the tiny run wrote: figures/ and the concept and contrast crop figures."""
    return {p for p in results.rglob("*.png") if "figures" in p.relative_to(results).parts}


def test_shortcut_summary_reads_each_method_from_its_table(finished_run):
    from conceptscope.report import read_tables, shortcut_pairs, shortcut_summary, verdict

    workdir, config = finished_run
    tables = read_tables(sorted((workdir / "results" / "tables").glob("*.csv")))
    # the tiny run has no same-architecture twin of vgg_shortcut (its table is empty); a clean VGG would be one
    assert shortcut_pairs(config["models"], config["datasets"]) == []
    twin = {"arch": "vgg_small", "train_dataset": "digits", "eval_datasets": ["digits_shortcut"]}
    assert shortcut_pairs({**config["models"], "vgg_clean": twin}, config["datasets"]) == [("vgg_shortcut", "vgg_clean", "digits_shortcut")]
    written = pd.read_csv(workdir / "results" / "tables" / "shortcut_summary.csv")
    assert list(written.columns) == ["model", "clean_twin", "dataset", "method", "measure", "layer", "shortcut_model", "clean_model",
                                     "chance", "n_clean", "noise_floor", "verdict"]
    # across architectures, to read every measure from the real tables (the VGG is the one with the shortcut)
    summary = shortcut_summary(tables, [("vgg_shortcut", "resnet_clean", "digits_shortcut")])
    # each row's verdict is the stated criterion applied to its own values
    for row in summary.itertuples():
        assert row.verdict == verdict(row.shortcut_model, row.clean_model, row.chance, row.n_clean)
    assert set(summary.verdict) <= {"detected", "not detected", "no clean twin value"}
    by = summary.set_index(["method", "measure", "layer"])
    models = tables["models"].set_index(["model", "split"])
    rate = by.xs("prediction", level="method").iloc[0]
    assert rate.shortcut_model == pytest.approx(models.loc[("vgg_shortcut", "test_watermarked"), "shortcut_rate"])
    assert rate.clean_model == pytest.approx(models.loc[("resnet_clean", "test_watermarked"), "shortcut_rate"])
    cam = tables["cluscam_watermark"].set_index("method")
    for method in cam.index:
        row = by.xs(method, level="method").iloc[0]
        assert row.shortcut_model == pytest.approx(cam.loc[method, "ratio"]) and pd.isna(row.clean_model)
    # the shortcut class's concepts, each model on its own (the 1-epoch tiny models may have none for it)
    for column, model in (("shortcut_model", "vgg_shortcut"), ("clean_model", "resnet_clean")):
        for method in ("concepts", "contrast"):
            marks = tables[f"{method}_watermark"]
            expected = marks[(marks.model == model) & marks.shortcut_class.isin([True, "True"])].groupby("layer").share_overlapping_watermark.mean()
            got = summary[summary.method == method].set_index("layer")[column].dropna()
            assert got.to_dict() == pytest.approx(expected.to_dict())
    assert {"prediction", "cladec", "nave", "dora", "cluscam"} <= set(summary.method)
    # ClaDec: the main decoder (alpha 0 here, not the sweep's 0.9 nor RefAE) of each model's layer
    cladec = tables["cladec_watermark"].set_index(["model", "variant"])
    kept = by.xs(("cladec", "watermark kept in the ClaDec reconstruction"), level=("method", "measure"))
    assert kept.shortcut_model.dropna().tolist() == pytest.approx([cladec.loc[("vgg_shortcut", "cladec_a0"), "watermark_kept"]])
    assert kept.clean_model.dropna().tolist() == pytest.approx([cladec.loc[("resnet_clean", "cladec_a0"), "watermark_kept"]])
    probing = tables["dora_probing"]
    assert by.xs("dora", level="method").shortcut_model.max() == pytest.approx(probing[probing.model == "vgg_shortcut"].probing_auc.max())
    # the chance level of each kind of measure: a share 0, a ratio to the box's share 1, an AUC 0.5
    chance = summary.set_index(["method", "measure"])["chance"]
    assert (chance.xs("dora").xs("best probing AUC of a representation (watermarked vs clean twins)") == 0.5).all()
    assert (chance.xs("gradcam") == 1.0).all() and (chance.xs("prediction") == 0.0).all()


def test_report_opens_in_chromium_with_every_figure_and_table(finished_run):
    from conceptscope.browser import browser_check

    workdir, _ = finished_run
    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (bash scripts/install.sh installs them as root)")
    run = snakemake(workdir, "--report", "report.html")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = workdir / "results"
    tables = sorted(p.stem for p in (results / "tables").glob("*.csv"))
    status = browser_check(workdir / "report.html", screenshots=ROOT / "test-artifacts" / "report")
    assert status["failures"] == []
    # every figure and every table of the run is in the report, and each displays in the browser
    assert status["figures"] == status["figures_loaded"] == len(_report_figures(results))
    assert status["pages"] == status["pages_loaded"] == len(tables) and "shortcut_summary" in tables
    assert status["captions"] == status["results"]
    front = status["front_page_text"]
    assert "The planted shortcut, method by method" in front and "vgg_shortcut" in front and "Accuracy" in front
    assert (ROOT / "test-artifacts" / "report" / "front_page.png").stat().st_size > 10_000


@pytest.mark.parametrize("window", [(1400, 1000), (1920, 1080)])
def test_report_front_page_reads_in_a_browser_window(finished_run, window):
    """At a laptop's and a desktop's window size every table, figure and the title of the front page
    is displayed whole: not under Snakemake's workflow graph, not cut off at the page's top or left."""
    from conceptscope.browser import front_page_layout

    workdir, config = finished_run
    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (bash scripts/install.sh installs them as root)")
    report = workdir / "report.html"
    if not report.exists():
        run = snakemake(workdir, "--report", "report.html")
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    shot = ROOT / "test-artifacts" / "report" / f"front_page_{window[0]}x{window[1]}.png"
    status = front_page_layout(report, window, screenshot=shot)
    assert status["problems"] == []
    # the models and accuracy tables, and one figure for each method the tiny run has
    methods = {"concepts", "contrast", "cladec", "nave", "dora", "cluscam"} & set(config)
    assert status["tables"] >= 2 and status["figures"] == len([m for m in methods if config[m].get("models") != []])
    assert shot.stat().st_size > 10_000


# Each expensive rule's job killed once during the second run: the n-th time the job reaches the point,
# tests/killpoints/sitecustomize.py SIGKILLs the whole run (Snakemake and its jobs), as a power cut would.
KILLS = [
    ("extract_activations", "zarr_write", 6),  # an activation store half written (in its second chunk)
    ("build_crop_index", "faiss_write", 1),  # a FAISS index file cut short
    ("train_reconstructor", "optimizer_step", 5),  # a ClaDec decoder or RefAE in its second epoch
    ("dora_sams", "optimizer_step", 3),  # s-AMS being optimised
]


def _temporaries(results: Path) -> list[Path]:
    return [p for p in results.rglob(".*.tmp-*")]


def test_a_second_run_killed_in_each_expensive_rule_gives_identical_outputs(finished_run, tmp_path):
    """Interruption and reproducibility together. The same config is run again from nothing, in another
    directory, and the run is killed (SIGKILL to Snakemake and its jobs) inside an activation
    extraction, a FAISS index build, a decoder's training and an s-AMS generation, each time then
    unlocked and resumed. What a killed job leaves is only a hidden temporary, never its output; and
    once finished, every output equals the uninterrupted first run's: the tables value for value,
    the stores, indexes and weights byte for byte, the other files in content (timings aside)."""
    import signal

    from conceptscope.cli import main as cli
    from conceptscope.compare import compare_outputs, compare_tables

    workdir, config = finished_run
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    results, log = tmp_path / "results", tmp_path / "kills.log"
    # the report's table pages are renderings of the tables, which are compared: this run omits them
    run_args = ["--cores", "2", "--max-threads", "1", "--omit-from", "render_table_page"]
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--configfile", "config.yaml", *run_args]
    # every kill point is armed in every run until its rule has been killed once: the scheduler's
    # job order differs between runs, so the rules are killed in whichever order their jobs come
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "tests" / "killpoints"), os.environ.get("PYTHONPATH")])),
               CONCEPTSCOPE_KILL=",".join(f"{rule}:{point}:{n}" for rule, point, n in KILLS), CONCEPTSCOPE_KILL_LOG=str(log))
    kills: list[str] = []
    for _ in range(len(KILLS)):
        run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, start_new_session=True)
        assert run.returncode == -signal.SIGKILL, f"killed {len(kills)} of {len(KILLS)} rules, then the run was not killed: " + run.stderr[-2000:]
        new = log.read_text().splitlines()[len(kills):]
        assert new, "the run was killed, but not by a kill point"
        kills += new
        # a killed writer leaves a hidden `.name.tmp-*` beside its output, and the output does not exist
        temporaries = _temporaries(results)
        for temporary in temporaries:
            assert not temporary.with_name(temporary.name[1 : temporary.name.index(".tmp-")]).exists(), temporary
        for rule, point, n, written, *rest in (line.split() for line in new):
            if point in ("zarr_write", "faiss_write"):  # the write that was cut short went into a temporary
                assert any(t.name in written for t in temporaries), (written, temporaries)
            if point == "faiss_write":
                assert (tmp_path / written).stat().st_size == int(rest[0].split("/")[0])
        unlock = snakemake(tmp_path, "--unlock")
        assert unlock.returncode == 0, unlock.stderr[-2000:]
        if len(kills) == len(KILLS):
            break
    assert sorted(line.split()[:3] for line in kills) == sorted([rule, point, str(n)] for rule, point, n in KILLS), kills
    run = snakemake(tmp_path, *run_args)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert not _temporaries(results), "a stale temporary survived the rerun"

    tables = compare_tables(workdir / "results", results)
    assert tables["different"] == {} and not tables["only_first"] and not tables["only_second"]
    assert len(tables["tables"]) >= 20 and tables["values"] > 5000  # a few tables are empty in the tiny run
    outputs = compare_outputs(workdir / "results", results)
    assert outputs["different"] == {} and not outputs["only_first"] and not outputs["only_second"]
    compared = outputs["files"]
    for kind in ("activations/", "crops/", "index/", "cladec/", "dora/"):
        assert sum(name.startswith(kind) for name in compared) >= 3, kind
    assert len(compared) > 400
    for pattern in ("models/*/weights.pt", "index/*/*/*.faiss", "activations/*/*/*.zarr/*/c/**/*"):
        files = [p for p in sorted((workdir / "results").glob(pattern)) if p.is_file()]
        assert files, pattern
        for path in files:
            twin = results / path.relative_to(workdir / "results")
            assert path.read_bytes() == twin.read_bytes(), f"{path.relative_to(workdir)} differs between the two runs"
    assert cli(["compare", str(workdir / "results"), str(results)]) == 0


def test_compare_sees_a_changed_value_in_each_kind_of_output(tmp_path):
    """`compare_outputs` and `conceptscope compare`: one changed value in a table, a JSON file, a torch
    checkpoint, a NumPy archive or a store chunk is a difference; timings and the logs are not."""
    import shutil

    import torch

    from conceptscope.cli import main as cli
    from conceptscope.compare import compare_outputs, compare_tables

    first = tmp_path / "first"
    (first / "tables").mkdir(parents=True)
    pd.DataFrame({"model": ["a", "b"], "top1": [0.5, 0.75], "seconds": [1.0, 2.0]}).to_csv(first / "tables" / "models.csv", index=False)
    (first / "m").mkdir()
    (first / "m" / "info.json").write_text('{"n": 3, "loss": [0.5, 0.25], "seconds": 1.5}')
    torch.save({"decoder": {"w": torch.arange(6.0)}, "meta": {"seconds": 3.0}}, first / "m" / "reconstructor.pt")
    np.savez(first / "m" / "sams.npz", signals=np.linspace(0, 1, 8), seconds=np.array(2.0))
    (first / "m" / "store.zarr" / "c").mkdir(parents=True)
    (first / "m" / "store.zarr" / "c" / "0").write_bytes(bytes(range(64)))
    (first / "logs").mkdir()
    (first / "logs" / "job.log").write_text("took 3 s")

    def changed(edit) -> Path:
        second = tmp_path / f"second{len(list(tmp_path.iterdir()))}"
        shutil.copytree(first, second)
        edit(second)
        return second

    def retime(second: Path) -> None:  # other timings and logs only
        table = pd.read_csv(second / "tables" / "models.csv")
        table["seconds"] += 1
        table.to_csv(second / "tables" / "models.csv", index=False)
        (second / "m" / "info.json").write_text('{"n": 3, "loss": [0.5, 0.25], "seconds": 9.5}')
        torch.save({"decoder": {"w": torch.arange(6.0)}, "meta": {"seconds": 4.0}}, second / "m" / "reconstructor.pt")
        np.savez(second / "m" / "sams.npz", signals=np.linspace(0, 1, 8), seconds=np.array(5.0))
        (second / "logs" / "job.log").write_text("took 4 s")

    same = changed(retime)
    assert compare_outputs(first, same)["different"] == {} and len(compare_outputs(first, same)["files"]) == 5
    assert cli(["compare", str(first), str(same)]) == 0

    def csv(second):
        table = pd.read_csv(second / "tables" / "models.csv")
        table.loc[1, "top1"] += 1e-12
        table.to_csv(second / "tables" / "models.csv", index=False)

    edits = {
        "tables/models.csv": (csv, "column 'top1' row 1"),
        "m/info.json": (lambda s: (s / "m" / "info.json").write_text('{"n": 3, "loss": [0.5, 0.2500001], "seconds": 1.5}'), "loss[1]"),
        "m/reconstructor.pt": (lambda s: torch.save({"decoder": {"w": torch.arange(6.0) + (torch.arange(6) == 4)}, "meta": {"seconds": 3.0}},
                                                    s / "m" / "reconstructor.pt"), "decoder.w: 1 of 6 values differ"),
        "m/sams.npz": (lambda s: np.savez(s / "m" / "sams.npz", signals=np.linspace(0, 1, 8).astype(np.float32), seconds=np.array(2.0)),
                       "signals: arrays differ (float64[8] vs float32[8])"),
        "m/store.zarr/c/0": (lambda s: (s / "m" / "store.zarr" / "c" / "0").write_bytes(bytes(range(63)) + b"\0"), "the bytes differ"),
    }
    for name, (edit, why) in edits.items():
        second = changed(edit)
        result = compare_outputs(first, second)
        assert list(result["different"]) == [name] and why in result["different"][name], (name, result["different"])
        assert cli(["compare", str(first), str(second)]) == 1
    assert list(compare_tables(first, changed(csv))["different"]) == ["models.csv"]
    missing = changed(lambda s: (s / "m" / "sams.npz").unlink())
    assert compare_outputs(first, missing)["only_first"] == ["m/sams.npz"] and cli(["compare", str(first), str(missing)]) == 1
