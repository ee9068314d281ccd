# Activations: one forward pass per (dataset, model) records every configured layer into Zarr;
# crop vectors (the concepts paper's 3x3 grid crops) likewise, streamed chunk by chunk.
rule extract_activations:
    input:
        unpack(lambda w: {"data": dataset_dir(w.dataset), **model_files(w.model)}),
        predictions=lambda w: predictions_if(selection_of(w.model), w.dataset, w.model),
    output:
        directory(result("activations", "{dataset}", "{model}")),
    log:
        result("logs", "extract_activations", "{dataset}", "{model}.log"),
    cache: "omit-software"
    conda:
        "../envs/conceptscope.yaml"
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime=720,
    params:
        layers=lambda w: MODELS[w.model]["layers"],
        selection=lambda w: selection_of(w.model),
        seed=config["seed"],
        store={k: v for k, v in config["activations"].items() if k != "selection"},
        device=config["device"],
    script:
        "../workflow_scripts/extract_activations.py"


rule extract_crop_vectors:
    input:
        unpack(lambda w: {"data": dataset_dir(w.dataset), **model_files(w.model)}),
        predictions=lambda w: predictions_if(config["crops"]["selection"], w.dataset, w.model),
    output:
        directory(result("crops", "{dataset}", "{model}")),
    log:
        result("logs", "extract_crop_vectors", "{dataset}", "{model}.log"),
    cache: "omit-software"
    conda:
        "../envs/conceptscope.yaml"
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime=1440,
    params:
        layers=lambda w: MODELS[w.model]["layers"],
        crops=lambda w: crop_store_settings(w.dataset),
        seed=config["seed"],
        device=config["device"],
    script:
        "../workflow_scripts/extract_crop_vectors.py"


rule build_crop_index:
    input:
        crops=result("crops", "{dataset}", "{model}"),
    output:
        index=result("index", "{dataset}", "{model}", "{layer}.faiss"),
        info=result("index", "{dataset}", "{model}", "{layer}.faiss.json"),
    log:
        result("logs", "build_crop_index", "{dataset}", "{model}", "{layer}.log"),
    cache: "omit-software"
    conda:
        "../envs/conceptscope.yaml"
    threads: config["threads"]
    resources:
        mem_mb=index_build_mem_mb,
        runtime=720,
    params:
        index=config["index"],
    script:
        "../workflow_scripts/build_crop_index.py"
