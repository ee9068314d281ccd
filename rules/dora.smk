# DORA (representation analysis): per model x dataset x layer, the representations' activations on
# the evaluation images (own forward pass: mean-pooled channels or logits), every data-aware distance
# (EA_n pair-/layer-wise, Minkowski, Pearson, Spearman), optional synthetic AMS and EA_s, and the
# analysis (outlier detectors, atlas, Mantel against WordNet, anomaly AUC, probing); the tables.
wildcard_constraints:
    rep_layer=_alternatives(re.escape(layer) for _, _, layer in dora_jobs()),


rule dora_representations:
    input:
        **model_files("{model}"),
        data=dataset_dir("{dataset}"),
    output:
        dora_dir("representations.npz"),
    log:
        result("logs", "dora_representations", "{dataset}", "{model}", "{rep_layer}.log"),
    conda:
        "../envs/conceptscope.yaml"
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        split=config["dora"]["split"],
        max_images=config["dora"]["max_images"],
        logit_classes=config["dora"]["logit_classes"],
        batch_size=config["dora"]["batch_size"],
        seed=config["seed"],
        device=config["device"],
    script:
        "../workflow_scripts/dora_representations.py"


rule dora_distances:
    input:
        dora_dir("representations.npz"),
    output:
        distances=dora_dir("distances.npz"),
        ams=dora_dir("n_ams.csv"),
    log:
        result("logs", "dora_distances", "{dataset}", "{model}", "{rep_layer}.log"),
    conda:
        "../envs/conceptscope.yaml"
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        n=config["dora"]["n"],
        d=config["dora"]["d"],
        p=config["dora"]["minkowski_p"],
        seed=config["seed"],
    script:
        "../workflow_scripts/dora_distances.py"


rule dora_sams:
    input:
        **model_files("{model}"),
        representations=dora_dir("representations.npz"),
    output:
        sams=dora_dir("sams.npz"),
        figure=report(
            result("figures", "dora", "{dataset}", "{model}", "{rep_layer}_sams.png"),
            caption="../report/captions/dora_sams.rst",
            category="6. DORA",
            subcategory="{model}",
            labels={"figure": "synthetic AMS", "dataset": "{dataset}", "layer": "{rep_layer}"},
        ),
    log:
        result("logs", "dora_sams", "{dataset}", "{model}", "{rep_layer}.log"),
    conda:
        "../envs/conceptscope.yaml"
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime=1440,
    params:
        sams=config["dora"]["sams"],
        seed=config["seed"],
        device=config["device"],
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
        atlas=report(
            result("figures", "dora", "{dataset}", "{model}", "{rep_layer}_atlas.png"),
            caption="../report/captions/dora_atlas.rst",
            category="6. DORA",
            subcategory="{model}",
            labels={"figure": "representation atlas", "dataset": "{dataset}", "layer": "{rep_layer}"},
        ),
    log:
        result("logs", "dora_analysis", "{dataset}", "{model}", "{rep_layer}.log"),
    conda:
        "../envs/conceptscope.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        outliers=config["dora"]["outliers"],
        mantel=config["dora"]["mantel"],
        atlas=config["dora"]["atlas"],
        anomaly_classes=lambda w: config["dora"]["anomaly_classes"].get(w.dataset, []),
        probing_top=config["dora"]["probing_top"],
        seed=config["seed"],
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
    log:
        result("logs", "summarize_dora.log"),
    localrule: True
    conda:
        "../envs/conceptscope.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        jobs=[{"dataset": ds, "model": m, "layer": layer} for ds, m, layer in dora_jobs()],
    script:
        "../workflow_scripts/summarize_dora.py"
