# ClaDec (Schneider & Vlachos): decoders of frozen classifier layers, the RefAE reference, evaluation
# classifiers on their reconstructions (Tables 2-6), channel subsets (Sec. 6.4), occlusion relevance
# against Grad-CAM (Tables 7-8) and figures (Figs. 6-9). One job trains one reconstructor (a
# "variant": refae, cladec_a<alpha>, cladec_untrained, cladec_c<k channels>) and one evaluates it,
# so a new alpha in the sweep trains only its decoder.
wildcard_constraints:
    variant=r"refae|cladec_a[0-9.e+-]+|cladec_untrained|cladec_c[0-9]+",


rule train_reconstructor:
    input:
        unpack(lambda w: {"data": dataset_dir(w.dataset), **model_files(w.model)}),
        unpack(refae_copy_input),
    output:
        reconstructor=cladec_dir("{variant}", "reconstructor.pt"),
        history=cladec_dir("{variant}", "history.csv"),
    log:
        result("logs", "train_reconstructor", "{dataset}", "{model}", "{layer}", "{variant}.log"),
    conda:
        "../envs/conceptscope.yaml"
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime=1440,
    params:
        variant=lambda w: variant_spec(w.variant),
        training=cladec_training_settings(),
        seed=config["seed"],
        device=config["device"],
    script:
        "../workflow_scripts/train_reconstructor.py"


rule evaluate_reconstructor:
    input:
        unpack(lambda w: {"data": dataset_dir(w.dataset), **model_files(w.model)}),
        reconstructor=cladec_dir("{variant}", "reconstructor.pt"),
    output:
        cladec_dir("{variant}", "evaluation.json"),
    log:
        result("logs", "evaluate_reconstructor", "{dataset}", "{model}", "{layer}", "{variant}.log"),
    conda:
        "../envs/conceptscope.yaml"
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime=1440,
    params:
        variant=lambda w: variant_spec(w.variant),
        # C_eval is trained for every variant but the channel subsets (Sec. 6.4 is about their reconstructions)
        eval_train=lambda w: None if w.variant.startswith("cladec_c") else cladec_eval_train(w.model),
        max_images=config["cladec"]["max_images"],
        max_test_images=config["cladec"]["max_test_images"],
        batch_size=config["cladec"]["batch_size"],
        seed=config["seed"],
        device=config["device"],
    script:
        "../workflow_scripts/evaluate_reconstructor.py"


rule cladec_occlusion:
    input:
        unpack(lambda w: {"data": dataset_dir(w.dataset), **model_files(w.model)}),
        reconstructor=lambda w: cladec_dir(main_variant(), "reconstructor.pt").format(**w),
    output:
        cladec_dir("occlusion.csv"),
    log:
        result("logs", "cladec_occlusion", "{dataset}", "{model}", "{layer}.log"),
    conda:
        "../envs/conceptscope.yaml"
    threads: config["threads"]
    resources:
        mem_mb=8000,
        runtime=720,
    params:
        occlusion=config["cladec"]["occlusion"],
        max_images=config["cladec"]["max_images"],
        max_test_images=config["cladec"]["max_test_images"],
        batch_size=config["cladec"]["batch_size"],
        seed=config["seed"],
        device=config["device"],
    script:
        "../workflow_scripts/cladec_occlusion.py"


rule cladec_figure:
    input:
        unpack(lambda w: {"data": dataset_dir(w.dataset), **model_files(w.model)}),
        refae=cladec_dir("refae", "reconstructor.pt"),
        cladec=lambda w: cladec_dir(main_variant(), "reconstructor.pt").format(**w),
    output:
        report(
            result("figures", "cladec", "{dataset}", "{model}", "{layer}.png"),
            caption="../report/captions/cladec_figure.rst",
            category="4. ClaDec",
            subcategory="{model}",
            labels={"figure": "reconstructions", "dataset": "{dataset}", "layer": "{layer}"},
        ),
    log:
        result("logs", "cladec_figure", "{dataset}", "{model}", "{layer}.log"),
    conda:
        "../envs/conceptscope.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        n_images=config["cladec"]["figures"],
        seed=config["seed"],
        device=config["device"],
    script:
        "../workflow_scripts/cladec_figure.py"


rule cladec_watermark:
    input:
        unpack(lambda w: {"data": dataset_dir(w.dataset), **model_files(w.model)}),
        reconstructors=lambda w: [cladec_dir(v, "reconstructor.pt").format(**w) for v in cladec_variants(w.model, w.layer)],
    output:
        cladec_dir("watermark.csv"),
    log:
        result("logs", "cladec_watermark", "{dataset}", "{model}", "{layer}.log"),
    conda:
        "../envs/conceptscope.yaml"
    threads: config["threads"]
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        variants=lambda w: cladec_variants(w.model, w.layer),
        max_test_images=config["cladec"]["max_test_images"],
        batch_size=config["cladec"]["batch_size"],
        seed=config["seed"],
        device=config["device"],
    script:
        "../workflow_scripts/cladec_watermark.py"


rule summarize_cladec:
    input:
        evaluations=cladec_evaluations(),
        occlusion=(
            [result("cladec", ds, model, layer, "occlusion.csv") for ds, model, layer in cladec_jobs()]
            if config["cladec"]["occlusion"]["enabled"]
            else []
        ),
        figures=(
            [result("figures", "cladec", ds, model, f"{layer}.png") for ds, model, layer in cladec_jobs()]
            if config["cladec"]["figures"]
            else []
        ),
        # datasets with a planted shortcut: how much of the watermark each reconstructor keeps
        watermark=[
            result("cladec", ds, model, layer, "watermark.csv") for ds, model, layer in cladec_jobs() if DATASETS[ds].get("shortcut")
        ],
    output:
        layers=result("tables", "cladec_layers.csv"),
        alphas=result("tables", "cladec_alpha.csv"),
        untrained=result("tables", "cladec_untrained.csv"),
        subsets=result("tables", "cladec_subsets.csv"),
        occlusion=result("tables", "cladec_occlusion.csv"),
        watermark=result("tables", "cladec_watermark.csv"),
    log:
        result("logs", "summarize_cladec.log"),
    localrule: True
    conda:
        "../envs/conceptscope.yaml"
    params:
        main_variant=main_variant(),
        train_datasets={model: MODELS[model]["train_dataset"] for model in sorted({m for _, m, _ in cladec_jobs()})},
        shortcut_datasets=[ds for ds, spec in DATASETS.items() if spec.get("shortcut")],
    script:
        "../workflow_scripts/summarize_cladec.py"
