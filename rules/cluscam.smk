# ClusCAM (clustered saliency) and the CAM baselines: per model x dataset x layer x method, the maps of
# a seeded image subset with their faithfulness metrics (and the watermark mass on watermarked test
# images); ClusCAM's K/temperature sweep; side-by-side figures; the tables.
wildcard_constraints:
    cam_layer=_alternatives(re.escape(layer) for _, _, layer in cluscam_jobs()),
    method=_alternatives(config["cluscam"]["methods"]),


rule cluscam_saliency:
    input:
        **model_files("{model}"),
        data=dataset_dir("{dataset}"),
    output:
        per_image=cluscam_dir("{method}", "per_image.csv"),
        watermark=cluscam_dir("{method}", "watermark.csv"),
        maps=cluscam_dir("{method}", "maps.npz"),
    log:
        result("logs", "cluscam_saliency", "{dataset}", "{model}", "{cam_layer}", "{method}.log"),
    conda:
        "../envs/conceptscope.yaml"
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime=lambda w: 1440 if w.method in config["cluscam"]["costly"]["methods"] else 480,
    params:
        # ClusCAM: cluscam.cluscam (n_clusters, drop_fraction, temperature, rescale_centroids) and the seed
        options=lambda w: cluscam_options(w.method),
        max_images=lambda w: cluscam_limit(w.method),
        split=config["cluscam"]["split"],
        target=config["cluscam"]["target"],
        steps=config["cluscam"]["faithfulness"]["steps"],
        deletion_baseline=config["cluscam"]["faithfulness"]["deletion_baseline"],
        insertion_baseline=config["cluscam"]["faithfulness"]["insertion_baseline"],
        batch_size=config["cluscam"]["batch_size"],
        figures=config["cluscam"]["figures"],
        seed=config["seed"],
        device=config["device"],
    script:
        "../workflow_scripts/cluscam_saliency.py"


rule cluscam_sweep:
    input:
        **model_files("{model}"),
        data=dataset_dir("{dataset}"),
    output:
        cluscam_dir("sweep.csv"),
    log:
        result("logs", "cluscam_sweep", "{dataset}", "{model}", "{cam_layer}.log"),
    conda:
        "../envs/conceptscope.yaml"
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime=720,
    params:
        cluscam=config["cluscam"]["cluscam"],
        sweep=config["cluscam"]["sweep"],
        max_images=config["cluscam"]["max_images"],
        split=config["cluscam"]["split"],
        steps=config["cluscam"]["faithfulness"]["steps"],
        deletion_baseline=config["cluscam"]["faithfulness"]["deletion_baseline"],
        insertion_baseline=config["cluscam"]["faithfulness"]["insertion_baseline"],
        batch_size=config["cluscam"]["batch_size"],
        seed=config["seed"],
        device=config["device"],
    script:
        "../workflow_scripts/cluscam_sweep.py"


rule cluscam_figure:
    input:
        data=dataset_dir("{dataset}"),
        info=model_files("{model}")["info"],
        maps=[cluscam_dir(method, "maps.npz") for method in config["cluscam"]["methods"]],
    output:
        report(
            result("figures", "cluscam", "{dataset}", "{model}", "{cam_layer}.png"),
            caption="../report/captions/cluscam_figure.rst",
            category="7. ClusCAM",
            subcategory="{model}",
            labels={"figure": "saliency maps", "dataset": "{dataset}", "layer": "{cam_layer}"},
        ),
    log:
        result("logs", "cluscam_figure", "{dataset}", "{model}", "{cam_layer}.log"),
    conda:
        "../envs/conceptscope.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        methods=config["cluscam"]["methods"],
    script:
        "../workflow_scripts/cluscam_figure.py"


rule summarize_cluscam:
    input:
        per_image=[
            result("cluscam", ds, m, layer, method, "per_image.csv")
            for ds, m, layer in cluscam_jobs()
            for method in config["cluscam"]["methods"]
        ],
        watermark=[
            result("cluscam", ds, m, layer, method, "watermark.csv")
            for ds, m, layer in cluscam_jobs()
            for method in config["cluscam"]["methods"]
        ],
        sweep=[result("cluscam", ds, m, layer, "sweep.csv") for ds, m, layer in cluscam_sweeps()],
        figures=[result("figures", "cluscam", ds, m, f"{layer}.png") for ds, m, layer in cluscam_jobs() if config["cluscam"]["figures"]],
    output:
        faithfulness=result("tables", "cluscam_faithfulness.csv"),
        watermark=result("tables", "cluscam_watermark.csv"),
        object_size=result("tables", "cluscam_object_size.csv"),
        sweep=result("tables", "cluscam_sweep.csv"),
    log:
        result("logs", "summarize_cluscam.log"),
    localrule: True
    conda:
        "../envs/conceptscope.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        jobs=[
            {"model": m, "dataset": ds, "layer": layer, "method": method}
            for ds, m, layer in cluscam_jobs()
            for method in config["cluscam"]["methods"]
        ],
        sweep_jobs=[{"model": m, "dataset": ds, "layer": layer} for ds, m, layer in cluscam_sweeps()],
        costly_methods=[m for m in config["cluscam"]["costly"]["methods"] if m in config["cluscam"]["methods"]],
        object_size_bins=config["cluscam"]["object_size_bins"],
    script:
        "../workflow_scripts/summarize_cluscam.py"
