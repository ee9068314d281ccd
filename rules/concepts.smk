# Class concepts (concepts paper, Sec. 4): attribution-scored NMF per class, shown with crops from
# the crop index and checked with the prediction test. Extraction (attribution passes + NMF) and
# the crop steps are separate jobs, so a new crop pool reruns only the cheap part.


def concept_settings():
    """The `concepts` keys that determine the NMF concepts (not the crops or the test)."""
    keys = ("classes", "split", "max_images", "max_vectors", "n_concepts", "sweep", "attribution", "attribution_options", "batch_size")
    return {key: config["concepts"][key] for key in keys}


def crop_settings():
    keys = ("crop_pools", "top_m", "one_per_image", "stitch_size", "max_figures", "n_concepts", "sweep")
    return {key: config["concepts"][key] for key in keys}


def pool_inputs(w):
    pools = crop_pools(w.dataset)
    return {
        "pool_data": [dataset_dir(ds) for ds in pools],
        "pool_crops": [result("crops", ds, w.model) for ds in pools],
        "pool_index": [result("index", ds, w.model, f"{w.layer}.faiss") for ds in pools],
        "pool_predictions": [result("predictions", ds, f"{w.model}.parquet") for ds in pools],
    }


rule extract_concepts:
    input:
        unpack(lambda w: {"data": dataset_dir(w.dataset), **model_files(w.model)}),
        predictions=result("predictions", "{dataset}", "{model}.parquet"),
    output:
        components=result("concepts", "{dataset}", "{model}", "{layer}", "components.npz"),
        classes=result("concepts", "{dataset}", "{model}", "{layer}", "classes.csv"),
    params:
        concepts=concept_settings(),
        seed=config["seed"],
        device=config["device"],
    log:
        result("logs", "extract_concepts", "{dataset}", "{model}", "{layer}.log"),
    threads: 2
    resources:
        mem_mb=16000,
        runtime=1440,
    script:
        "../workflow_scripts/extract_concepts.py"


rule concept_crops:
    input:
        unpack(lambda w: {"data": dataset_dir(w.dataset), **model_files(w.model)}),
        unpack(pool_inputs),
        components=result("concepts", "{dataset}", "{model}", "{layer}", "components.npz"),
    output:
        directory(result("concepts", "{dataset}", "{model}", "{layer}", "crops")),
    params:
        concepts=crop_settings(),
        pools=lambda w: crop_pools(w.dataset),
        grids=config["crops"]["grids"],
        device=config["device"],
    log:
        result("logs", "concept_crops", "{dataset}", "{model}", "{layer}.log"),
    threads: 2
    resources:
        mem_mb=8000,
        runtime=720,
    script:
        "../workflow_scripts/concept_crops.py"


rule summarize_concepts:
    input:
        tests=[result("concepts", ds, model, layer, "crops") for ds, model, layer in concept_jobs()],
        data=[dataset_dir(ds) for ds, _ in concept_pairs()],
    output:
        table=result("tables", "concepts_prediction_test.csv"),
        watermark=result("tables", "concepts_watermark.csv"),
        sweep=directory(result("figures", "concepts_sweep")),
    params:
        jobs=[{"dataset": ds, "model": model, "layer": layer} for ds, model, layer in concept_jobs()],
        attribution=config["concepts"]["attribution"],
        n_concepts=config["concepts"]["n_concepts"],
        results=RESULTS,
        shortcut_classes={ds: (spec["shortcut"] or {}).get("class") for ds, spec in DATASETS.items()},
    log:
        result("logs", "summarize_concepts.log"),
    script:
        "../workflow_scripts/summarize_concepts.py"
