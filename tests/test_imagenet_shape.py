"""The ImageNet-shaped run (benchmarks/imagenet_shape.py, configs/imagenet-shape.yaml), small.

The benchmark itself is not part of the test command: here its tree of 1000 wnid folders (real images,
symlinked), the config's plan on that tree (a dry run: every stage of concepts and contrast once, no
other method), the per-job wrapper that measures time and peak memory, and the projection's arithmetic.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, SHARED_DATA

sys.path.insert(0, str(ROOT / "benchmarks"))
import imagenet_shape  # noqa: E402

STAGES = {
    "prepare_dataset", "import_model", "predict", "extract_crop_vectors", "build_crop_index",
    "extract_concepts", "concept_crops", "summarize_concepts",
    "extract_contrast_vectors", "train_contrast_hyperplanes", "run_shifting_test", "extract_contrast_concepts", "contrast_crops",
    "summarize_contrast",
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    if not (SHARED_DATA / "imagenette").is_dir():
        pytest.fail(f"real test data missing: {SHARED_DATA} (../shared/data beside the project root)")
    out = tmp_path_factory.mktemp("shape") / "imagenet-shape"
    info = imagenet_shape.build_tree(out, imagenet_shape.class_subset(1000), per_class=2, val_per_class=1)
    return out, info


def test_tree_has_every_imagenet_wnid_with_real_images(tree):
    from conceptscope.data import imagenet_wnids

    out, info = tree
    wnids = imagenet_wnids()
    for split, n in (("train", 2), ("val", 1)):
        folders = sorted(p.name for p in (out / split).iterdir())
        assert folders == sorted(wnids)
        files = sorted((out / split).glob("*/*"))
        assert len(files) == n * 1000 and all(f.is_symlink() and f.resolve().is_file() for f in files)
        assert all(SHARED_DATA.resolve() in f.resolve().parents for f in files)
    # an Imagenette class and a Tiny ImageNet class hold their own images; the other classes real leftovers
    assert all(f.resolve().parent.name == "n01440764" for f in (out / "train" / "n01440764").iterdir())
    tiny_goldfish = {f.resolve().name for f in (out / "train" / "n01443537").iterdir()}
    annotations = (SHARED_DATA / "tiny-imagenet-200" / "val" / "val_annotations.txt").read_text().splitlines()
    assert tiny_goldfish <= {line.split("\t")[0] for line in annotations if line.split("\t")[1] == "n01443537"}
    assert (info["classes"], info["images"], info["own_class_images"]) == (1000, 3000, 210 * 3)  # 10 + 200 classes have their own
    # distinct real images across classes while the pool lasts (it holds ~23,000)
    assert len({f.resolve() for f in out.glob("*/*/*")}) == 3000
    # built once: a second call returns the recorded tree without touching it
    stamp = (out / "tree.json").stat().st_mtime_ns
    assert imagenet_shape.build_tree(out, imagenet_shape.class_subset(1000), 2, 1) == info
    assert (out / "tree.json").stat().st_mtime_ns == stamp


def test_class_subset_spreads_over_the_label_space():
    from conceptscope.data import imagenet_wnids

    wnids = imagenet_wnids()
    subset = imagenet_shape.class_subset(20)
    assert len(set(subset)) == 20 and subset[0] == wnids[0] and [wnids.index(w) for w in subset][:3] == [0, 50, 100]
    assert imagenet_shape.class_subset(1000) == wnids


def test_config_plans_every_concepts_and_contrast_stage_once(tree, tmp_path):
    """The committed config on a 1000-class tree: one job per stage (14 jobs, whatever the classes),
    nothing of the other methods."""
    out, _ = tree
    config = imagenet_shape.run_config(out, Path("results"), 2)
    committed = yaml.safe_load(imagenet_shape.CONFIG.read_text())
    assert {key: value for key, value in config.items() if key not in ("results", "threads", "datasets")} == {
        key: value for key, value in committed.items() if key not in ("results", "datasets")}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--configfile", "config.yaml", "-n", "--quiet",
                          "rules", "--", *imagenet_shape.targets(Path("results"))], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    planned = {}
    for line in run.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "job"):
            planned[parts[0]] = int(parts[1])
    assert planned == dict.fromkeys(STAGES, 1)


def test_job_monitor_finds_the_rule_time_and_peak_memory(tmp_path):
    """A stand-in job: a process running a Snakemake-generated script that holds its rule's log open,
    allocates ~300 MB and frees it, under a parent process (Snakemake's place)."""
    scripts, logs = tmp_path / ".snakemake" / "scripts", tmp_path / "results" / "logs"
    scripts.mkdir(parents=True)
    (logs / "extract_concepts" / "ds").mkdir(parents=True)
    script = scripts / "tmpab12cd34.extract_concepts.py"
    script.write_text(
        "import logging, time\n"
        f"logging.basicConfig(filename={str(logs / 'extract_concepts' / 'ds' / 'm.log')!r}, level=logging.INFO,"
        " format='%(asctime)s %(message)s')\n"
        "time.sleep(0.3)\nlogging.info('work starts')\n"
        "block = bytearray(300 * 2**20)\nblock[::4096] = b'x' * len(block[::4096])\ndel block\ntime.sleep(0.8)\n"
    )
    spawned = time.time()
    parent = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, {str(script)!r}])"])
    monitor = imagenet_shape.JobMonitor(parent.pid, spawned, logs, interval=0.05)
    monitor.start()
    parent.wait()
    monitor.done.set()
    monitor.join()
    jobs = monitor.jobs()
    assert list(jobs["rule"]) == ["extract_concepts"] and list(jobs["job"]) == ["extract_concepts/ds/m"]
    job = jobs.iloc[0]
    assert 300 < job["peak_rss_mb"] < 450  # the freed block still counts: the high-water mark
    assert 1.0 < job["seconds"] < 1.0 + 2.0 and 0.2 < job["startup_seconds"] < job["seconds"]


def test_projection_covers_every_stage_and_scales_the_measured_rates():
    """Synthetic measurements: each stage 10 s for its items. Network stages are divided by the GPU
    factor (assumed sustained GPU rate over the rate the stage reached here) down to the host's data
    loading; host stages are not."""
    stages = {rule: {"n": 100, "seconds": 10.0} for rule in STAGES}
    stages["extract_contrast_vectors"]["cutoff_vectors_per_image"] = 20.0
    stages["train_contrast_hyperplanes"].update(vectors=20 * 3 * 50, classes=50)
    flops = {"forward": 6e8, "deeplift": 1.8e9}
    nmf = {"images": 500, "vectors": 20000, "nmf_seconds": 10.0, "contrast_images": 60, "contrast_vectors": 2400, "contrast_nmf_seconds": 2.0}
    projected = imagenet_shape.projection(stages, flops, nmf, {"image": 0.0, "crops": 1.0})
    assert STAGES <= set(projected)
    full = imagenet_shape.FULL
    crops = projected["extract_crop_vectors"]
    assert crops["full_items"] == full["crops"] == 1_281_167 * 9 and crops["cpu_seconds"] == pytest.approx(0.1 * full["crops"])
    cpu_rate = 6e8 * 100 / 10.0 / 1e9  # GFLOP/s this stage reached
    assert crops["cpu_gflops_per_second"] == pytest.approx(cpu_rate)
    predict = projected["predict"]
    assert predict["h100_seconds"] == pytest.approx(predict["cpu_seconds"] * cpu_rate / (67_000 * imagenet_shape.GPU_UTILISATION["network"]))
    assert predict["h100_bound"] == "GPU"
    # 1 s of host loading per training image (its 9 crops) is slower than the GPU's share: the floor
    assert crops["h100_seconds"] == crops["host_loading_seconds"] == 1_281_167 and crops["h100_bound"] == "host data loading"
    assert projected["extract_concepts"]["full_items"] == 500 * 1000
    assert projected["prepare_dataset"]["h100_seconds"] == projected["prepare_dataset"]["cpu_seconds"]
    assert projected["extract_concepts_nmf_at_s500"]["cpu_seconds"] == 10.0 * 1000
    train = projected["train_contrast_hyperplanes"]
    assert train["full_items"] == 499_500
    # 100 epochs x 4 C (n_a + n_b) per pair: every class's 60 x 20 vectors in 999 pairs
    assert train["cpu_seconds"] * train["cpu_gflops_per_second"] * 1e9 == pytest.approx(100 * 4 * 1280 * (60 * 20 * 1000) * 999)


def test_job_memory_grows_with_the_data_and_covers_measured_peaks():
    """mem_mb of the jobs whose memory grows with N (conceptscope.job_memory, used by rules/common.smk)."""
    import json

    from conceptscope import job_memory

    # all 499,500 pairs of 1000 classes on this CPU peaked at 12.6 GB (benchmarks/results/contrast_1000.json)
    measured = json.loads((ROOT / "benchmarks" / "results" / "contrast_1000.json").read_text())
    counts = [round(measured["vectors_per_class_mean"])] * measured["n_classes"]
    estimate = job_memory.contrast_training_mb(counts, measured["n_features"], chunk_pairs=20000)
    assert measured["peak_rss_mb"] < estimate < 1.5 * measured["peak_rss_mb"]
    # the 50-class run held 2,588 vectors: the base (measured peak 0.67 GB)
    assert job_memory.contrast_training_mb([52] * 50, 1280) < 1600
    # classes without vectors are in no pair; ordered pairs train twice the weights
    assert job_memory.contrast_training_mb([100, 0, 100], 1280) == job_memory.contrast_training_mb([100, 100], 1280)
    assert job_memory.contrast_training_mb([1000] * 100, 1280, ordered=True) > job_memory.contrast_training_mb([1000] * 100, 1280)
    # the crop pools' indexes: 11.5M crops at ~712 bytes in RAM need more than the old constant 8 GB
    assert job_memory.crop_search_mb([(712 * 11_530_503, 11_530_503)]) > 10_000
    assert job_memory.crop_search_mb([(6_912_045, 1350)]) < 1600  # the 50-class pool (measured peak 1.0 GB)
    # the 11.5M-crop index build (benchmarks/results/index_11m.json): covers the measured peak, by
    # less than half again; a 1,350-crop pool needs little more than the base
    index = json.loads((ROOT / "benchmarks" / "results" / "index_11m.json").read_text())
    settings = {"nlist": index["nlist"], "rerank_codes": index["rerank_codes"]}
    estimate = job_memory.index_build_mb(index["n_vectors"], index["dim"], settings, 8192)
    assert index["peak_rss_gb_after_build"] * 1024 < estimate < 1.5 * index["peak_rss_gb_after_build"] * 1024
    assert job_memory.index_build_mb(1350, 1280, {}, 4096) < 1600
    # ImageNet's 1.33M images: the logits alone are 5.3 GB, held about three times
    with_logits = job_memory.prediction_mb(1_331_167, 1000, store_logits=True)
    assert with_logits > 8000 + 3 * 5000 and job_memory.prediction_mb(1_331_167, 1000, store_logits=False) < 8000 + 400
