# Class contrasting (concepts paper, Sec. 5): per-class cutoff vectors, all-pairs linear classifiers,
# the shifting test (Table 3) and contrast concepts shown and tested like class concepts. The
# attribution pass, the training and the tests are separate jobs: changing the shifting test's
# offsets or the concept pairs retrains nothing.
rule extract_contrast_vectors:
    input:
        unpack(lambda w: {"data": dataset_dir(w.dataset), **model_files(w.model)}),
        predictions=result("predictions", "{dataset}", "{model}.parquet"),
    output:
        vectors=directory(result("contrast", "{dataset}", "{model}", "{layer}", "vectors.zarr")),
        classes=result("contrast", "{dataset}", "{model}", "{layer}", "vectors.csv"),
    log:
        result("logs", "extract_contrast_vectors", "{dataset}", "{model}", "{layer}.log"),
    conda:
        "../envs/conceptscope.yaml"
    threads: config["threads"]
    resources:
        mem_mb=16000,
        runtime=1440,
    params:
        contrast=lambda w: contrast_settings(
            "classes", "split", "by", "max_images", "cutoff", "attribution", "attribution_options", "batch_size", dataset=w.dataset
        ),
        seed=config["seed"],
        device=config["device"],
    script:
        "../workflow_scripts/extract_contrast_vectors.py"


rule train_contrast_hyperplanes:
    input:
        vectors=result("contrast", "{dataset}", "{model}", "{layer}", "vectors.zarr"),
    output:
        hyperplanes=directory(result("contrast", "{dataset}", "{model}", "{layer}", "hyperplanes.zarr")),
        pairs=result("contrast", "{dataset}", "{model}", "{layer}", "pairs.parquet"),
    log:
        result("logs", "train_contrast_hyperplanes", "{dataset}", "{model}", "{layer}.log"),
    conda:
        "../envs/conceptscope.yaml"
    threads: config["threads"]
    resources:
        mem_mb=contrast_training_mem_mb,
        runtime=1440,
    params:
        contrast=contrast_settings("epochs", "lr", "ordered", "chunk_pairs"),
        seed=config["seed"],
        device=config["device"],
    script:
        "../workflow_scripts/train_contrast_hyperplanes.py"


rule run_shifting_test:
    input:
        unpack(lambda w: {"data": dataset_dir(w.dataset), **model_files(w.model)}),
        predictions=result("predictions", "{dataset}", "{model}.parquet"),
        hyperplanes=result("contrast", "{dataset}", "{model}", "{layer}", "hyperplanes.zarr"),
    output:
        directory(result("contrast", "{dataset}", "{model}", "{layer}", "shifting")),
    log:
        result("logs", "run_shifting_test", "{dataset}", "{model}", "{layer}.log"),
    conda:
        "../envs/conceptscope.yaml"
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime=720,
    params:
        shift=config["contrast"]["shift"],
        split=lambda w: method_split("contrast", w.dataset),
        batch_size=config["contrast"]["batch_size"],
        seed=config["seed"],
        device=config["device"],
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
    log:
        result("logs", "extract_contrast_concepts", "{dataset}", "{model}", "{layer}.log"),
    conda:
        "../envs/conceptscope.yaml"
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime=720,
    params:
        contrast=lambda w: contrast_settings("split", "by", "max_images", "concept_pairs", "n_concepts", "batch_size", dataset=w.dataset),
        seed=config["seed"],
        device=config["device"],
    script:
        "../workflow_scripts/extract_contrast_concepts.py"


rule contrast_crops:
    input:
        unpack(lambda w: {"data": dataset_dir(w.dataset), **model_files(w.model)}),
        unpack(pool_inputs),
        components=result("contrast", "{dataset}", "{model}", "{layer}", "concepts", "components.npz"),
    output:
        report(
            directory(result("contrast", "{dataset}", "{model}", "{layer}", "concepts", "crops")),
            caption="../report/captions/contrast_crops.rst",
            category="3. Class contrasting",
            subcategory="{model}",
            labels={"figure": "contrast concepts {figure}", "dataset": "{dataset}", "layer": "{layer}"},
            patterns=["figures/{figure}.png"],
        ),
    log:
        result("logs", "contrast_crops", "{dataset}", "{model}", "{layer}.log"),
    conda:
        "../envs/conceptscope.yaml"
    threads: config["threads"]
    resources:
        mem_mb=crop_search_mem_mb,
        runtime=720,
    params:
        concepts={**crop_settings(), "n_concepts": config["contrast"]["n_concepts"], "sweep": []},
        pools=lambda w: crop_pools(w.dataset),
        grids=config["crops"]["grids"],
        device=config["device"],
    script:
        "../workflow_scripts/concept_crops.py"


rule summarize_contrast:
    input:
        shifting=[result("contrast", ds, model, layer, "shifting") for ds, model, layer in method_jobs("contrast")],
        pairs=[result("contrast", ds, model, layer, "pairs.parquet") for ds, model, layer in method_jobs("contrast")],
        hyperplanes=[result("contrast", ds, model, layer, "hyperplanes.zarr") for ds, model, layer in method_jobs("contrast")],
        tests=[result("contrast", ds, model, layer, "concepts", "crops") for ds, model, layer in method_jobs("contrast")],
        components=[result("contrast", ds, model, layer, "concepts", "components.npz") for ds, model, layer in method_jobs("contrast")],
        data=[dataset_dir(ds) for ds, _ in method_pairs("contrast")],
    output:
        shifting=result("tables", "contrast_shifting_test.csv"),
        pairs=result("tables", "contrast_pairs.csv"),
        tests=result("tables", "contrast_prediction_test.csv"),
        watermark=result("tables", "contrast_watermark.csv"),
        offsets=report(
            directory(result("figures", "contrast_shifting")),
            caption="../report/captions/contrast_shifting.rst",
            category="3. Class contrasting",
            subcategory="{model}",
            labels={"figure": "shifting test", "dataset": "{dataset}", "layer": "all layers"},
            patterns=[f"{{dataset,{_alternatives(DATASETS)}}}_{{model,{_alternatives(MODELS)}}}.png"],
        ),
    log:
        result("logs", "summarize_contrast.log"),
    localrule: True
    conda:
        "../envs/conceptscope.yaml"
    params:
        jobs=[{"dataset": ds, "model": model, "layer": layer} for ds, model, layer in method_jobs("contrast")],
        n_concepts=config["contrast"]["n_concepts"],
        shortcut_classes={ds: (spec["shortcut"] or {}).get("class") for ds, spec in DATASETS.items()},
    script:
        "../workflow_scripts/summarize_contrast.py"
