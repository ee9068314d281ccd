# Class concepts (concepts paper, Sec. 4): attribution-scored NMF per class, shown with crops from
# the crop index and checked with the prediction test. Extraction (attribution passes + NMF) and
# the crop steps are separate jobs, so a new crop pool reruns only the cheap part.
rule extract_concepts:
    input:
        unpack(lambda w: {"data": dataset_dir(w.dataset), **model_files(w.model)}),
        predictions=result("predictions", "{dataset}", "{model}.parquet"),
    output:
        components=result("concepts", "{dataset}", "{model}", "{layer}", "components.npz"),
        classes=result("concepts", "{dataset}", "{model}", "{layer}", "classes.csv"),
    log:
        result("logs", "extract_concepts", "{dataset}", "{model}", "{layer}.log"),
    conda:
        "../envs/conceptscope.yaml"
    threads: config["threads"]
    resources:
        mem_mb=16000,
        runtime=1440,
    params:
        concepts=lambda w: concept_settings(w.dataset),
        seed=config["seed"],
        device=config["device"],
    script:
        "../workflow_scripts/extract_concepts.py"


rule concept_crops:
    input:
        unpack(lambda w: {"data": dataset_dir(w.dataset), **model_files(w.model)}),
        unpack(pool_inputs),
        components=result("concepts", "{dataset}", "{model}", "{layer}", "components.npz"),
    output:
        report(
            directory(result("concepts", "{dataset}", "{model}", "{layer}", "crops")),
            caption="../report/captions/concept_crops.rst",
            category="2. Class concepts",
            subcategory="{model}",
            labels={"figure": "concepts {figure}", "dataset": "{dataset}", "layer": "{layer}"},
            patterns=["figures/{figure}.png"],
        ),
    log:
        result("logs", "concept_crops", "{dataset}", "{model}", "{layer}.log"),
    conda:
        "../envs/conceptscope.yaml"
    threads: config["threads"]
    resources:
        mem_mb=crop_search_mem_mb,
        runtime=720,
    params:
        concepts=crop_settings(),
        pools=lambda w: crop_pools(w.dataset),
        grids=config["crops"]["grids"],
        device=config["device"],
    script:
        "../workflow_scripts/concept_crops.py"


rule summarize_concepts:
    input:
        tests=[result("concepts", ds, model, layer, "crops") for ds, model, layer in concept_jobs()],
        components=[result("concepts", ds, model, layer, "components.npz") for ds, model, layer in concept_jobs()],
        data=[dataset_dir(ds) for ds, _ in concept_pairs()],
    output:
        table=result("tables", "concepts_prediction_test.csv"),
        watermark=result("tables", "concepts_watermark.csv"),
        sweep=report(
            directory(result("figures", "concepts_sweep")),
            caption="../report/captions/concepts_sweep.rst",
            category="2. Class concepts",
            subcategory="{model}",
            labels={"figure": "prediction test sweep", "dataset": "{dataset}", "layer": "all layers"},
            patterns=[f"{{dataset,{_alternatives(DATASETS)}}}_{{model,{_alternatives(MODELS)}}}.png"],
        ),
    log:
        result("logs", "summarize_concepts.log"),
    localrule: True
    conda:
        "../envs/conceptscope.yaml"
    params:
        jobs=[{"dataset": ds, "model": model, "layer": layer} for ds, model, layer in concept_jobs()],
        attribution=config["concepts"]["attribution"],
        n_concepts=config["concepts"]["n_concepts"],
        shortcut_classes={ds: (spec["shortcut"] or {}).get("class") for ds, spec in DATASETS.items()},
    script:
        "../workflow_scripts/summarize_concepts.py"
