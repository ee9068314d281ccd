# Class contrasting (concepts paper, Sec. 5): per-class cutoff vectors, all-pairs linear classifiers,
# the shifting test (Table 3) and contrast concepts shown and tested like class concepts. The
# attribution pass, the training and the tests are separate jobs: changing the shifting test's
# offsets or the concept pairs retrains nothing.


def contrast_settings(*keys):
    return {key: config["contrast"][key] for key in keys}


rule extract_contrast_vectors:
    input:
        unpack(lambda w: {"data": dataset_dir(w.dataset), **model_files(w.model)}),
        predictions=result("predictions", "{dataset}", "{model}.parquet"),
    output:
        vectors=directory(result("contrast", "{dataset}", "{model}", "{layer}", "vectors.zarr")),
        classes=result("contrast", "{dataset}", "{model}", "{layer}", "vectors.csv"),
    params:
        contrast=contrast_settings("classes", "split", "max_images", "cutoff", "attribution", "attribution_options", "batch_size"),
        seed=config["seed"],
        device=config["device"],
    log:
        result("logs", "extract_contrast_vectors", "{dataset}", "{model}", "{layer}.log"),
    threads: 2
    resources:
        mem_mb=16000,
        runtime=1440,
    script:
        "../workflow_scripts/extract_contrast_vectors.py"


rule train_contrast_hyperplanes:
    input:
        vectors=result("contrast", "{dataset}", "{model}", "{layer}", "vectors.zarr"),
    output:
        hyperplanes=directory(result("contrast", "{dataset}", "{model}", "{layer}", "hyperplanes.zarr")),
        pairs=result("contrast", "{dataset}", "{model}", "{layer}", "pairs.parquet"),
    params:
        contrast=contrast_settings("epochs", "lr", "ordered", "chunk_pairs"),
        seed=config["seed"],
        device=config["device"],
    log:
        result("logs", "train_contrast_hyperplanes", "{dataset}", "{model}", "{layer}.log"),
    threads: 2
    resources:
        mem_mb=16000,
        runtime=1440,
    script:
        "../workflow_scripts/train_contrast_hyperplanes.py"


rule run_shifting_test:
    input:
        unpack(lambda w: {"data": dataset_dir(w.dataset), **model_files(w.model)}),
        predictions=result("predictions", "{dataset}", "{model}.parquet"),
        hyperplanes=result("contrast", "{dataset}", "{model}", "{layer}", "hyperplanes.zarr"),
    output:
        directory(result("contrast", "{dataset}", "{model}", "{layer}", "shifting")),
    params:
        shift=config["contrast"]["shift"],
        split=config["contrast"]["split"],
        batch_size=config["contrast"]["batch_size"],
        seed=config["seed"],
        device=config["device"],
    log:
        result("logs", "run_shifting_test", "{dataset}", "{model}", "{layer}.log"),
    threads: 2
    resources:
        mem_mb=8000,
        runtime=720,
    script:
        "../workflow_scripts/run_shifting_test.py"


rule extract_contrast_concepts:
    input:
        unpack(lambda w: {"data": dataset_dir(w.dataset), **model_files(w.model)}),
        predictions=result("predictions", "{dataset}", "{model}.parquet"),
        hyperplanes=result("contrast", "{dataset}", "{model}", "{layer}", "hyperplanes.zarr"),
    output:
        components=result("contrast", "{dataset}", "{model}", "{layer}", "concepts", "components.npz"),
        pairs=result("contrast", "{dataset}", "{model}", "{layer}", "concepts", "pairs.csv"),
    params:
        contrast=contrast_settings("split", "max_images", "concept_pairs", "n_concepts", "batch_size"),
        seed=config["seed"],
        device=config["device"],
    log:
        result("logs", "extract_contrast_concepts", "{dataset}", "{model}", "{layer}.log"),
    threads: 2
    resources:
        mem_mb=8000,
        runtime=720,
    script:
        "../workflow_scripts/extract_contrast_concepts.py"


rule contrast_crops:
    input:
        unpack(lambda w: {"data": dataset_dir(w.dataset), **model_files(w.model)}),
        unpack(pool_inputs),
        components=result("contrast", "{dataset}", "{model}", "{layer}", "concepts", "components.npz"),
    output:
        directory(result("contrast", "{dataset}", "{model}", "{layer}", "concepts", "crops")),
    params:
        concepts={**crop_settings(), "n_concepts": config["contrast"]["n_concepts"], "sweep": []},
        pools=lambda w: crop_pools(w.dataset),
        grids=config["crops"]["grids"],
        device=config["device"],
    log:
        result("logs", "contrast_crops", "{dataset}", "{model}", "{layer}.log"),
    threads: 2
    resources:
        mem_mb=8000,
        runtime=720,
    script:
        "../workflow_scripts/concept_crops.py"


rule summarize_contrast:
    input:
        shifting=[result("contrast", ds, model, layer, "shifting") for ds, model, layer in method_jobs("contrast")],
        pairs=[result("contrast", ds, model, layer, "pairs.parquet") for ds, model, layer in method_jobs("contrast")],
        hyperplanes=[result("contrast", ds, model, layer, "hyperplanes.zarr") for ds, model, layer in method_jobs("contrast")],
        tests=[result("contrast", ds, model, layer, "concepts", "crops") for ds, model, layer in method_jobs("contrast")],
        data=[dataset_dir(ds) for ds, _ in method_pairs("contrast")],
    output:
        shifting=result("tables", "contrast_shifting_test.csv"),
        pairs=result("tables", "contrast_pairs.csv"),
        tests=result("tables", "contrast_prediction_test.csv"),
        watermark=result("tables", "contrast_watermark.csv"),
        offsets=directory(result("figures", "contrast_shifting")),
    params:
        jobs=[{"dataset": ds, "model": model, "layer": layer} for ds, model, layer in method_jobs("contrast")],
        n_concepts=config["contrast"]["n_concepts"],
        results=RESULTS,
        shortcut_classes={ds: (spec["shortcut"] or {}).get("class") for ds, spec in DATASETS.items()},
    log:
        result("logs", "summarize_contrast.log"),
    script:
        "../workflow_scripts/summarize_contrast.py"
