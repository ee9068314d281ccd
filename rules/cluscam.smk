# ClusCAM (clustered saliency) and the CAM baselines: per model x dataset x layer x method, the maps of
# a seeded image subset with their faithfulness metrics (and the watermark mass on watermarked test
# images); ClusCAM's K/temperature sweep; side-by-side figures; the tables.
from conceptscope.config import cluscam_layers, cluscam_pairs


def cluscam_jobs():
    return [(ds, m, layer) for ds, m in cluscam_pairs(config) for layer in cluscam_layers(config, m)]


def cluscam_dir(*parts):
    return result("cluscam", "{dataset}", "{model}", "{cam_layer}", *parts)


def cluscam_options(method):
    """A method's keyword arguments from the config (ClusCAM's and RISE's settings, the seed)."""
    opts = config["cluscam"]
    if method == "cluscam":
        return dict(opts["cluscam"], seed=config["seed"])
    if method == "rise":
        return dict(opts["rise"], seed=config["seed"])
    return {}


def cluscam_limit(method):
    opts = config["cluscam"]
    return opts["costly"]["max_images"] if method in opts["costly"]["methods"] else opts["max_images"]


def cluscam_sweeps():
    sweep = config["cluscam"]["sweep"]
    return cluscam_jobs() if sweep["n_clusters"] or sweep["temperature"] else []


wildcard_constraints:
    cam_layer=_alternatives(re.escape(layer) for _, _, layer in cluscam_jobs()),
    method=_alternatives(config["cluscam"]["methods"]),


rule cluscam_saliency:
    input:
        data=dataset_dir("{dataset}"),
        **model_files("{model}"),
    output:
        per_image=cluscam_dir("{method}", "per_image.csv"),
        watermark=cluscam_dir("{method}", "watermark.csv"),
        maps=cluscam_dir("{method}", "maps.npz"),
    params:
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
    log:
        result("logs", "cluscam_saliency", "{dataset}", "{model}", "{cam_layer}", "{method}.log"),
    threads: 2
    resources:
        mem_mb=8000,
        runtime=lambda w: 1440 if w.method in config["cluscam"]["costly"]["methods"] else 480,
    script:
        "../workflow_scripts/cluscam_saliency.py"


rule cluscam_sweep:
    input:
        data=dataset_dir("{dataset}"),
        **model_files("{model}"),
    output:
        cluscam_dir("sweep.csv"),
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
    log:
        result("logs", "cluscam_sweep", "{dataset}", "{model}", "{cam_layer}.log"),
    threads: 2
    resources:
        mem_mb=8000,
        runtime=720,
    script:
        "../workflow_scripts/cluscam_sweep.py"


rule cluscam_figure:
    input:
        data=dataset_dir("{dataset}"),
        info=model_files("{model}")["info"],
        maps=[cluscam_dir(method, "maps.npz") for method in config["cluscam"]["methods"]],
    output:
        result("figures", "cluscam", "{dataset}", "{model}", "{cam_layer}.png"),
    params:
        methods=config["cluscam"]["methods"],
    log:
        result("logs", "cluscam_figure", "{dataset}", "{model}", "{cam_layer}.log"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow_scripts/cluscam_figure.py"


rule summarize_cluscam:
    input:
        per_image=[result("cluscam", ds, m, layer, method, "per_image.csv") for ds, m, layer in cluscam_jobs() for method in config["cluscam"]["methods"]],
        watermark=[result("cluscam", ds, m, layer, method, "watermark.csv") for ds, m, layer in cluscam_jobs() for method in config["cluscam"]["methods"]],
        sweep=[result("cluscam", ds, m, layer, "sweep.csv") for ds, m, layer in cluscam_sweeps()],
        figures=[result("figures", "cluscam", ds, m, f"{layer}.png") for ds, m, layer in cluscam_jobs() if config["cluscam"]["figures"]],
    output:
        faithfulness=result("tables", "cluscam_faithfulness.csv"),
        watermark=result("tables", "cluscam_watermark.csv"),
        object_size=result("tables", "cluscam_object_size.csv"),
        sweep=result("tables", "cluscam_sweep.csv"),
    params:
        jobs=[{"model": m, "dataset": ds, "layer": layer, "method": method} for ds, m, layer in cluscam_jobs() for method in config["cluscam"]["methods"]],
        sweep_jobs=[{"model": m, "dataset": ds, "layer": layer} for ds, m, layer in cluscam_sweeps()],
        costly_methods=[m for m in config["cluscam"]["costly"]["methods"] if m in config["cluscam"]["methods"]],
        object_size_bins=config["cluscam"]["object_size_bins"],
    log:
        result("logs", "summarize_cluscam.log"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow_scripts/summarize_cluscam.py"
