# ClaDec (Schneider & Vlachos): decoders of frozen classifier layers, the RefAE reference, evaluation
# classifiers on their reconstructions (Tables 2-6), channel subsets (Sec. 6.4), occlusion relevance
# against Grad-CAM (Tables 7-8) and figures (Figs. 6-9). One job trains one reconstructor (a
# "variant": refae, cladec_a<alpha>, cladec_untrained, cladec_c<k channels>) and one evaluates it,
# so a new alpha in the sweep trains only its decoder.


def cladec_training_settings():
    return {key: config["cladec"][key] for key in ("max_images", "epochs", "lr", "batch_size")}


def cladec_jobs():
    return method_jobs("cladec")


def cladec_sweep_layers(model):
    """The layers of a model where the sweep, the untrained classifier and the subsets run."""
    layers = [layer for ds, m, layer in cladec_jobs() if m == model]
    wanted = config["cladec"]["sweep"]["layers"]
    if wanted is None:
        return layers[-1:]
    return [layer for layer in layers if layer in wanted]


def main_variant():
    return f"cladec_a{config['cladec']['alpha']:g}"


def cladec_variants(model, layer):
    """Reconstructors of one model x layer: the RefAE and the main decoder, plus the sweep's."""
    opts = config["cladec"]
    variants = ["refae", main_variant()]
    if layer in cladec_sweep_layers(model):
        variants += [f"cladec_a{alpha:g}" for alpha in opts["sweep"]["alphas"] if f"cladec_a{alpha:g}" not in variants]
        variants += ["cladec_untrained"] if opts["untrained"] else []
        variants += [f"cladec_c{k}" for k in opts["subsets"]]
    return variants


def variant_spec(variant):
    """What a variant name means: kind, alpha, channels, untrained."""
    if variant == "refae":
        return {"kind": "refae", "alpha": None, "channels": None, "untrained": False}
    alpha = config["cladec"]["alpha"]
    if variant.startswith("cladec_a"):
        alpha = float(variant[len("cladec_a") :])
    channels = [0, int(variant[len("cladec_c") :])] if variant.startswith("cladec_c") else None
    return {"kind": "cladec", "alpha": alpha, "channels": channels, "untrained": variant == "cladec_untrained"}


def cladec_eval_train(model):
    """How C_eval trains: the model's own `train` block, with the keys `cladec.eval_train` sets."""
    return {**MODELS[model]["train"], **{k: v for k, v in config["cladec"]["eval_train"].items() if v is not None}}


def cladec_dir(*parts):
    return result("cladec", "{dataset}", "{model}", "{layer}", *parts)


wildcard_constraints:
    variant=r"refae|cladec_a[0-9.e+-]+|cladec_untrained|cladec_c[0-9]+",


rule train_reconstructor:
    input:
        unpack(lambda w: {"data": dataset_dir(w.dataset), **model_files(w.model)}),
    output:
        reconstructor=cladec_dir("{variant}", "reconstructor.pt"),
        history=cladec_dir("{variant}", "history.csv"),
    params:
        variant=lambda w: variant_spec(w.variant),
        training=cladec_training_settings(),
        seed=config["seed"],
        device=config["device"],
    log:
        result("logs", "train_reconstructor", "{dataset}", "{model}", "{layer}", "{variant}.log"),
    threads: 2
    resources:
        mem_mb=8000,
        runtime=1440,
    script:
        "../workflow_scripts/train_reconstructor.py"


rule evaluate_reconstructor:
    input:
        unpack(lambda w: {"data": dataset_dir(w.dataset), **model_files(w.model)}),
        reconstructor=cladec_dir("{variant}", "reconstructor.pt"),
    output:
        cladec_dir("{variant}", "evaluation.json"),
    params:
        variant=lambda w: variant_spec(w.variant),
        # C_eval is trained for every variant but the channel subsets (Sec. 6.4 is about their reconstructions)
        eval_train=lambda w: None if w.variant.startswith("cladec_c") else cladec_eval_train(w.model),
        max_images=config["cladec"]["max_images"],
        max_test_images=config["cladec"]["max_test_images"],
        batch_size=config["cladec"]["batch_size"],
        seed=config["seed"],
        device=config["device"],
    log:
        result("logs", "evaluate_reconstructor", "{dataset}", "{model}", "{layer}", "{variant}.log"),
    threads: 2
    resources:
        mem_mb=8000,
        runtime=1440,
    script:
        "../workflow_scripts/evaluate_reconstructor.py"


rule cladec_occlusion:
    input:
        unpack(lambda w: {"data": dataset_dir(w.dataset), **model_files(w.model)}),
        reconstructor=lambda w: cladec_dir(main_variant(), "reconstructor.pt").format(**w),
    output:
        cladec_dir("occlusion.csv"),
    params:
        occlusion=config["cladec"]["occlusion"],
        max_images=config["cladec"]["max_images"],
        max_test_images=config["cladec"]["max_test_images"],
        batch_size=config["cladec"]["batch_size"],
        seed=config["seed"],
        device=config["device"],
    log:
        result("logs", "cladec_occlusion", "{dataset}", "{model}", "{layer}.log"),
    threads: 2
    resources:
        mem_mb=8000,
        runtime=720,
    script:
        "../workflow_scripts/cladec_occlusion.py"


rule cladec_figure:
    input:
        unpack(lambda w: {"data": dataset_dir(w.dataset), **model_files(w.model)}),
        refae=cladec_dir("refae", "reconstructor.pt"),
        cladec=lambda w: cladec_dir(main_variant(), "reconstructor.pt").format(**w),
    output:
        result("figures", "cladec", "{dataset}", "{model}", "{layer}.png"),
    params:
        n_images=config["cladec"]["figures"],
        seed=config["seed"],
        device=config["device"],
    log:
        result("logs", "cladec_figure", "{dataset}", "{model}", "{layer}.log"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    script:
        "../workflow_scripts/cladec_figure.py"


rule cladec_watermark:
    input:
        unpack(lambda w: {"data": dataset_dir(w.dataset), **model_files(w.model)}),
        reconstructors=lambda w: [cladec_dir(v, "reconstructor.pt").format(**w) for v in cladec_variants(w.model, w.layer)],
    output:
        cladec_dir("watermark.csv"),
    params:
        variants=lambda w: cladec_variants(w.model, w.layer),
        max_test_images=config["cladec"]["max_test_images"],
        batch_size=config["cladec"]["batch_size"],
        seed=config["seed"],
        device=config["device"],
    log:
        result("logs", "cladec_watermark", "{dataset}", "{model}", "{layer}.log"),
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    script:
        "../workflow_scripts/cladec_watermark.py"


def cladec_evaluations():
    return [
        result("cladec", ds, model, layer, variant, "evaluation.json")
        for ds, model, layer in cladec_jobs()
        for variant in cladec_variants(model, layer)
    ]


rule summarize_cladec:
    input:
        evaluations=cladec_evaluations(),
        occlusion=[result("cladec", ds, model, layer, "occlusion.csv") for ds, model, layer in cladec_jobs()] if config["cladec"]["occlusion"]["enabled"] else [],
        figures=[result("figures", "cladec", ds, model, f"{layer}.png") for ds, model, layer in cladec_jobs()] if config["cladec"]["figures"] else [],
        # datasets with a planted shortcut: how much of the watermark each reconstructor keeps
        watermark=[result("cladec", ds, model, layer, "watermark.csv") for ds, model, layer in cladec_jobs() if DATASETS[ds].get("shortcut")],
    output:
        layers=result("tables", "cladec_layers.csv"),
        alphas=result("tables", "cladec_alpha.csv"),
        untrained=result("tables", "cladec_untrained.csv"),
        subsets=result("tables", "cladec_subsets.csv"),
        occlusion=result("tables", "cladec_occlusion.csv"),
        watermark=result("tables", "cladec_watermark.csv"),
    params:
        main_variant=main_variant(),
        train_datasets={model: MODELS[model]["train_dataset"] for model in sorted({m for _, m, _ in cladec_jobs()})},
        shortcut_datasets=[ds for ds, spec in DATASETS.items() if spec.get("shortcut")],
    log:
        result("logs", "summarize_cladec.log"),
    script:
        "../workflow_scripts/summarize_cladec.py"
