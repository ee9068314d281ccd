# DORA (representation analysis): per model x dataset x layer, the representations' activations on
# the evaluation images (own forward pass: mean-pooled channels or logits), every data-aware distance
# (EA_n pair-/layer-wise, Minkowski, Pearson, Spearman), optional synthetic AMS and EA_s, and the
# analysis (outlier detectors, atlas, Mantel against WordNet, anomaly AUC, probing); the tables.
from conceptscope.config import dora_layers, dora_pairs


def dora_jobs():
    return [(ds, m, layer) for ds, m in dora_pairs(config) for layer in dora_layers(config, m)]


def dora_dir(*parts):
    return result("dora", "{dataset}", "{model}", "{rep_layer}", *parts)


def dora_analysis_inputs(w):
    inputs = {"representations": dora_dir("representations.npz"), "distances": dora_dir("distances.npz")}
    if config["dora"]["sams"]["enabled"]:
        inputs["sams"] = dora_dir("sams.npz")
    return {key: path.format(**dict(w.items())) for key, path in inputs.items()}


wildcard_constraints:
    rep_layer=_alternatives(re.escape(layer) for _, _, layer in dora_jobs()),


rule dora_representations:
    input:
        data=dataset_dir("{dataset}"),
        **model_files("{model}"),
    output:
        dora_dir("representations.npz"),
    params:
        split=config["dora"]["split"],
        max_images=config["dora"]["max_images"],
        logit_classes=config["dora"]["logit_classes"],
        batch_size=config["dora"]["batch_size"],
        seed=config["seed"],
        device=config["device"],
    log:
        result("logs", "dora_representations", "{dataset}", "{model}", "{rep_layer}.log"),
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
    script:
        "../workflow_scripts/dora_representations.py"


rule dora_distances:
    input:
        dora_dir("representations.npz"),
    output:
        distances=dora_dir("distances.npz"),
        ams=dora_dir("n_ams.csv"),
    params:
        n=config["dora"]["n"],
        d=config["dora"]["d"],
        p=config["dora"]["minkowski_p"],
        seed=config["seed"],
    log:
        result("logs", "dora_distances", "{dataset}", "{model}", "{rep_layer}.log"),
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    script:
        "../workflow_scripts/dora_distances.py"


rule dora_sams:
    input:
        representations=dora_dir("representations.npz"),
        **model_files("{model}"),
    output:
        sams=dora_dir("sams.npz"),
        figure=result("figures", "dora", "{dataset}", "{model}", "{rep_layer}_sams.png"),
    params:
        sams=config["dora"]["sams"],
        seed=config["seed"],
        device=config["device"],
    log:
        result("logs", "dora_sams", "{dataset}", "{model}", "{rep_layer}.log"),
    threads: 2
    resources:
        mem_mb=8000,
        runtime=1440,
    script:
        "../workflow_scripts/dora_sams.py"


rule dora_analysis:
    input:
        unpack(dora_analysis_inputs),
    output:
        outliers=dora_dir("outliers.csv"),
        mantel=dora_dir("mantel.csv"),
        anomaly=dora_dir("anomaly.csv"),
        probing=dora_dir("probing.csv"),
        atlas=result("figures", "dora", "{dataset}", "{model}", "{rep_layer}_atlas.png"),
    params:
        outliers=config["dora"]["outliers"],
        mantel=config["dora"]["mantel"],
        atlas=config["dora"]["atlas"],
        anomaly_classes=lambda w: config["dora"]["anomaly_classes"].get(w.dataset, []),
        probing_top=config["dora"]["probing_top"],
        seed=config["seed"],
    log:
        result("logs", "dora_analysis", "{dataset}", "{model}", "{rep_layer}.log"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    script:
        "../workflow_scripts/dora_analysis.py"


rule summarize_dora:
    input:
        outliers=[result("dora", ds, m, layer, "outliers.csv") for ds, m, layer in dora_jobs()],
        mantel=[result("dora", ds, m, layer, "mantel.csv") for ds, m, layer in dora_jobs()],
        anomaly=[result("dora", ds, m, layer, "anomaly.csv") for ds, m, layer in dora_jobs()],
        probing=[result("dora", ds, m, layer, "probing.csv") for ds, m, layer in dora_jobs()],
    output:
        mantel=result("tables", "dora_mantel.csv"),
        anomaly=result("tables", "dora_anomaly.csv"),
        outliers=result("tables", "dora_outliers.csv"),
        probing=result("tables", "dora_probing.csv"),
    params:
        jobs=[{"dataset": ds, "model": m, "layer": layer} for ds, m, layer in dora_jobs()],
    log:
        result("logs", "summarize_dora.log"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow_scripts/summarize_dora.py"
