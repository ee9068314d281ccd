# NAVE (activation clustering): image-wise segments per model x dataset x layer set x K x clustering,
# read from the activation store; SLIC / Felzenszwalb baselines on the same images; class-wide
# clusters (Sec. 4.3); overlay figures; the object-extraction and watermark tables. A new K or layer
# set adds only its jobs. The baselines see only the images (in the model's input frame), but run
# per model: the model's store says which images.
from conceptscope.config import nave_layer_sets


def nave_pairs():
    return method_pairs("nave")


def nave_set_name(layers):
    return "+".join(layers)


NAVE_SETS = {nave_set_name(s): s for _, m in nave_pairs() for s in nave_layer_sets(config, m)}


def nave_sets(model):
    return [nave_set_name(s) for s in nave_layer_sets(config, model)]


def nave_settings():
    """(K, clustering) of every image-wise run; the first is the one figures show."""
    return [(k, c) for k in config["nave"]["k"] for c in config["nave"]["clustering"]]


def nave_baselines():
    opts = config["nave"]["baselines"]
    names = [f"slic_k{k}" for k in config["nave"]["k"]] if opts["slic"]["enabled"] else []
    return names + (["felzenszwalb"] if opts["felzenszwalb"]["enabled"] else [])


def baseline_spec(name):
    """A baseline name as (method, options)."""
    opts = config["nave"]["baselines"]
    if name.startswith("slic_k"):
        return "slic", {"n_segments": int(name[len("slic_k") :]), "compactness": opts["slic"]["compactness"], "sigma": opts["slic"]["sigma"]}
    return "felzenszwalb", {key: opts["felzenszwalb"][key] for key in ("scale", "sigma", "min_size")}


def nave_dir(*parts):
    return result("nave", "{dataset}", "{model}", *parts)


def nave_inputs(w):
    return {"data": dataset_dir(w.dataset), "info": model_files(w.model)["info"], "store": result("activations", w.dataset, w.model)}


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
    params:
        layers=lambda w: NAVE_SETS[w.layers],
        k=lambda w: int(w.k),
        clustering=lambda w: w.clustering,
        resolution=config["nave"]["resolution"],
        n_init=config["nave"]["n_init"],
        max_images=config["nave"]["max_images"],
        strategies=config["nave"]["strategies"],
        seed=config["seed"],
    log:
        result("logs", "segment_nave", "{dataset}", "{model}", "{layers}", "k{k}_{clustering}.log"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    script:
        "../workflow_scripts/segment_nave.py"


rule segment_baseline:
    input:
        unpack(nave_inputs),
    output:
        segments=directory(nave_dir("baselines", "{baseline}", "segments.zarr")),
        boxes=nave_dir("baselines", "{baseline}", "boxes.csv"),
    params:
        method=lambda w: baseline_spec(w.baseline)[0],
        options=lambda w: baseline_spec(w.baseline)[1],
        layer=lambda w: MODELS[w.model]["layers"][0],
        max_images=config["nave"]["max_images"],
        strategies=config["nave"]["strategies"],
    log:
        result("logs", "segment_baseline", "{dataset}", "{model}", "{baseline}.log"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    script:
        "../workflow_scripts/segment_baseline.py"


def first_imagewise(*name):
    k, clustering = nave_settings()[0]
    return nave_dir("{layers}", f"k{k}_{clustering}", *name)


rule nave_classwide:
    input:
        unpack(nave_inputs),
        imagewise=first_imagewise("segments.zarr"),
    output:
        segments=directory(nave_dir("{layers}", "classwide", "segments.zarr")),
        boxes=nave_dir("{layers}", "classwide", "boxes.csv"),
        figure=result("figures", "nave", "{dataset}", "{model}", "classwide_{layers}.png"),
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
    log:
        result("logs", "nave_classwide", "{dataset}", "{model}", "{layers}.log"),
    threads: 1
    resources:
        mem_mb=8000,
        runtime=240,
    script:
        "../workflow_scripts/nave_classwide.py"


def nave_figure_inputs(w):
    k, clustering = nave_settings()[0]
    runs = [(f"NAVE {name} K={k}", result("nave", w.dataset, w.model, name, f"k{k}_{clustering}")) for name in nave_sets(w.model)]
    runs += [(b, result("nave", w.dataset, w.model, "baselines", b)) for b in nave_baselines() if b in (f"slic_k{k}", "felzenszwalb")]
    return runs


rule nave_figure:
    input:
        unpack(nave_inputs),
        segments=lambda w: [str(Path(d, "segments.zarr")) for _, d in nave_figure_inputs(w)],
        boxes=lambda w: [str(Path(d, "boxes.csv")) for _, d in nave_figure_inputs(w)],
    output:
        result("figures", "nave", "{dataset}", "{model}", "segments.png"),
    params:
        names=lambda w: [name for name, _ in nave_figure_inputs(w)],
        layer=lambda w: MODELS[w.model]["layers"][0],
        n_images=config["nave"]["figures"],
    log:
        result("logs", "nave_figure", "{dataset}", "{model}.log"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    script:
        "../workflow_scripts/nave_figure.py"


def nave_runs():
    """Every scored segmentation: (boxes.csv, the table row's identity)."""
    runs = []
    for ds, model in nave_pairs():
        spec = MODELS[model]
        base = {"model": model, "weights": spec["weights"], "train_dataset": spec["train_dataset"] or "", "dataset": ds}
        for name in nave_sets(model):
            for k, clustering in nave_settings():
                runs.append((result("nave", ds, model, name, f"k{k}_{clustering}", "boxes.csv"), {**base, "layers": name, "method": "nave", "clustering": clustering, "k": k}))
            if config["nave"]["classwide"]["enabled"]:
                cw = config["nave"]["classwide"]
                runs.append((result("nave", ds, model, name, "classwide", "boxes.csv"), {**base, "layers": name, "method": "nave_classwide", "clustering": cw["clustering"], "k": cw["k"]}))
        for b in nave_baselines():
            method, options = baseline_spec(b)
            runs.append((result("nave", ds, model, "baselines", b, "boxes.csv"), {**base, "layers": "", "method": method, "clustering": "", "k": options.get("n_segments", "")}))
    return runs


rule summarize_nave:
    input:
        boxes=[path for path, _ in nave_runs()],
        data=[dataset_dir(ds) for ds in sorted({ds for ds, _ in nave_pairs()})],
        info=[model_files(m)["info"] for m in sorted({m for _, m in nave_pairs()})],
        figures=[result("figures", "nave", ds, model, "segments.png") for ds, model in nave_pairs()] if config["nave"]["figures"] else [],
    output:
        extraction=result("tables", "nave_object_extraction.csv"),
        watermark=result("tables", "nave_watermark.csv"),
    params:
        runs=[meta for _, meta in nave_runs()],
        datasets=sorted({ds for ds, _ in nave_pairs()}),
        models=sorted({m for _, m in nave_pairs()}),
        iou_threshold=config["nave"]["iou_threshold"],
        small_object_share=0.5,
    log:
        result("logs", "summarize_nave.log"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    script:
        "../workflow_scripts/summarize_nave.py"
