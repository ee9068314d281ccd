# Models: train the small nets, import pretrained or file weights, predict every evaluation split.


rule train_model:
    input:
        data=lambda w: dataset_dir(MODELS[w.model]["train_dataset"]),
    output:
        **model_files("{model}"),
        log_csv=result("models", "{model}", "train_log.csv"),
    log:
        result("logs", "train_model", "{model}.log"),
    wildcard_constraints:
        model=_alternatives(TRAINED),
    conda:
        "../envs/conceptscope.yaml"
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        spec=lambda w: model_params(w.model),
        device=config["device"],
    script:
        "../workflow_scripts/train_model.py"


rule import_model:
    output:
        **model_files("{model}"),
    log:
        result("logs", "import_model", "{model}.log"),
    wildcard_constraints:
        model=_alternatives(IMPORTED),
    conda:
        "../envs/conceptscope.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        spec=lambda w: model_params(w.model),
    script:
        "../workflow_scripts/import_model.py"


rule predict:
    input:
        **model_files("{model}"),
        data=dataset_dir("{dataset}"),
    output:
        result("predictions", "{dataset}", "{model}.parquet"),
    log:
        result("logs", "predict", "{dataset}", "{model}.log"),
    conda:
        "../envs/conceptscope.yaml"
    threads: config["threads"]
    resources:
        mem_mb=predict_mem_mb,
        runtime=240,
    params:
        predict=config["predict"],
        device=config["device"],
    script:
        "../workflow_scripts/predict.py"


rule summarize_models:
    input:
        predictions=[result("predictions", ds, f"{model}.parquet") for ds, model in eval_pairs()],
    output:
        result("tables", "models.csv"),
    log:
        result("logs", "summarize_models.log"),
    localrule: True
    conda:
        "../envs/conceptscope.yaml"
    params:
        pairs=[{"dataset": ds, "model": model, "train_dataset": MODELS[model]["train_dataset"]} for ds, model in eval_pairs()],
        shortcut_classes={ds: (spec["shortcut"] or {}).get("class") for ds, spec in DATASETS.items()},
    script:
        "../workflow_scripts/summarize_models.py"
