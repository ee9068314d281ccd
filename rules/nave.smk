# NAVE (activation clustering): image-wise segments per model x dataset x layer set x K x clustering,
# read from the activation store; SLIC / Felzenszwalb baselines on the same images; class-wide
# clusters (Sec. 4.3); overlay figures; the object-extraction and watermark tables. A new K or layer
# set adds only its jobs. The baselines see only the images (in the model's input frame), but run
# per model: the model's store says which images.
wildcard_constraints:
    layers=_alternatives(re.escape(name) for name in NAVE_SETS),
    k=r"[0-9]+",
    clustering="kmeans|ward",
    baseline=r"slic_k[0-9]+|felzenszwalb",


rule segment_nave:
    input:
        unpack(nave_inputs),
    output:
        segments=directory(nave_dir("{layers}", "k{k}_{clustering}", "segments.zarr")),
        boxes=nave_dir("{layers}", "k{k}_{clustering}", "boxes.csv"),
    log:
        result("logs", "segment_nave", "{dataset}", "{model}", "{layers}", "k{k}_{clustering}.log"),
    conda:
        "../envs/conceptscope.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        layers=lambda w: NAVE_SETS[w.layers],
        k=lambda w: int(w.k),
        clustering=lambda w: w.clustering,
        resolution=config["nave"]["resolution"],
        n_init=config["nave"]["n_init"],
        max_images=config["nave"]["max_images"],
        strategies=config["nave"]["strategies"],
        seed=config["seed"],
    script:
        "../workflow_scripts/segment_nave.py"


rule segment_baseline:
    input:
        unpack(nave_inputs),
    output:
        segments=directory(nave_dir("baselines", "{baseline}", "segments.zarr")),
        boxes=nave_dir("baselines", "{baseline}", "boxes.csv"),
    log:
        result("logs", "segment_baseline", "{dataset}", "{model}", "{baseline}.log"),
    conda:
        "../envs/conceptscope.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        method=lambda w: baseline_spec(w.baseline)[0],
        options=lambda w: baseline_spec(w.baseline)[1],
        layer=lambda w: MODELS[w.model]["layers"][0],
        max_images=config["nave"]["max_images"],
        strategies=config["nave"]["strategies"],
    script:
        "../workflow_scripts/segment_baseline.py"


rule nave_classwide:
    input:
        unpack(nave_inputs),
        imagewise=first_imagewise("segments.zarr"),
    output:
        segments=directory(nave_dir("{layers}", "classwide", "segments.zarr")),
        boxes=nave_dir("{layers}", "classwide", "boxes.csv"),
        figure=report(
            result("figures", "nave", "{dataset}", "{model}", "classwide_{layers}.png"),
            caption="../report/captions/nave_classwide.rst",
            category="5. NAVE",
            subcategory="{model}",
            labels={"figure": "class-wide segments", "dataset": "{dataset}", "layer": "{layers}"},
        ),
    log:
        result("logs", "nave_classwide", "{dataset}", "{model}", "{layers}.log"),
    conda:
        "../envs/conceptscope.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        layers=lambda w: NAVE_SETS[w.layers],
        k=config["nave"]["classwide"]["k"],
        clustering=config["nave"]["classwide"]["clustering"],
        classes=config["nave"]["classwide"]["classes"],
        max_images=config["nave"]["classwide"]["max_images"],
        max_fit_pixels=config["nave"]["classwide"]["max_fit_pixels"],
        max_images_stored=config["nave"]["max_images"],
        resolution=config["nave"]["resolution"],
        strategies=config["nave"]["strategies"],
        seed=config["seed"],
        figure_classes=4,
        figure_images=4,
    script:
        "../workflow_scripts/nave_classwide.py"


rule nave_figure:
    input:
        unpack(nave_inputs),
        segments=lambda w: [str(Path(d, "segments.zarr")) for _, d in nave_figure_inputs(w)],
        boxes=lambda w: [str(Path(d, "boxes.csv")) for _, d in nave_figure_inputs(w)],
    output:
        report(
            result("figures", "nave", "{dataset}", "{model}", "segments.png"),
            caption="../report/captions/nave_figure.rst",
            category="5. NAVE",
            subcategory="{model}",
            labels={"figure": "segments", "dataset": "{dataset}", "layer": "all layer sets"},
        ),
    log:
        result("logs", "nave_figure", "{dataset}", "{model}.log"),
    conda:
        "../envs/conceptscope.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        names=lambda w: [name for name, _ in nave_figure_inputs(w)],
        layer=lambda w: MODELS[w.model]["layers"][0],
        n_images=config["nave"]["figures"],
    script:
        "../workflow_scripts/nave_figure.py"


rule summarize_nave:
    input:
        boxes=[path for path, _ in nave_runs()],
        data=[dataset_dir(ds) for ds in sorted({ds for ds, _ in nave_pairs()})],
        info=[model_files(m)["info"] for m in sorted({m for _, m in nave_pairs()})],
        figures=[result("figures", "nave", ds, model, "segments.png") for ds, model in nave_pairs()] if config["nave"]["figures"] else [],
    output:
        extraction=result("tables", "nave_object_extraction.csv"),
        watermark=result("tables", "nave_watermark.csv"),
        registers=result("tables", "nave_registers.csv"),
    log:
        result("logs", "summarize_nave.log"),
    localrule: True
    conda:
        "../envs/conceptscope.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        runs=[meta for _, meta in nave_runs()],
        datasets=sorted({ds for ds, _ in nave_pairs()}),
        models=sorted({m for _, m in nave_pairs()}),
        iou_threshold=config["nave"]["iou_threshold"],
        small_object_share=0.5,
    script:
        "../workflow_scripts/summarize_nave.py"
