# Shared helpers: result paths, wildcard constraints and input functions.
import json
import re

import conceptscope.config

RESULTS = config["results"]
DATASETS = config["datasets"]
MODELS = config["models"]
TRAINED = sorted(m for m, spec in MODELS.items() if spec["weights"] == "train")
IMPORTED = sorted(m for m, spec in MODELS.items() if spec["weights"] != "train")


def _alternatives(names):
    """A regex matching exactly the given names (never matches anything when empty)."""
    return "|".join(sorted(set(names))) or "(?!x)x"


wildcard_constraints:
    dataset=_alternatives(DATASETS),
    model=_alternatives(MODELS),
    layer=_alternatives(re.escape(layer) for spec in MODELS.values() for layer in spec["layers"]),


def result(*parts):
    return str(Path(RESULTS, *parts))


def dataset_dir(name):
    return result("data", name)


def dataset_params(name):
    """A dataset's spec as job parameters: the combined-only keys, null for other kinds, left out."""

    def strip(spec):
        spec = {key: value for key, value in spec.items() if not (key in COMBINED_ONLY and value is None)}
        if spec.get("parts"):
            spec["parts"] = [strip(part) for part in spec["parts"]]
        return spec

    return strip(DATASETS[name])


def model_files(name):
    return {"weights": result("models", name, "weights.pt"), "info": result("models", name, "model.json")}


def eval_pairs():
    """(dataset, model) pairs that get predictions, in config order."""
    return [(ds, model) for model, spec in MODELS.items() for ds in spec["eval_datasets"]]


def model_params(name):
    """Everything that determines a model's weights; a change reruns only this model's jobs."""
    spec = MODELS[name]
    from conceptscope.config import model_num_classes

    params = {
        "arch": spec["arch"],
        "weights": spec["weights"],
        "num_classes": model_num_classes(spec, DATASETS),
        "preprocess": spec["preprocess"],
        "train": spec["train"] if spec["weights"] == "train" else None,
        "train_dataset": spec["train_dataset"],
    }
    # only where set: the params of a model without them stay as they were (no rerun)
    params.update({k: spec[k] for k in ("arch_options", "tokens") if spec[k]})
    return params


def explained_pairs():
    """(dataset, model) pairs whose hidden layers are stored: models with `layers`, on their eval datasets."""
    return conceptscope.config.explained_pairs(config)


def method_pairs(block="concepts"):
    """(dataset, model) pairs a method explains (`{block}.models` x `{block}.datasets`)."""
    return conceptscope.config.method_pairs(config, block)


def method_jobs(block="concepts"):
    """(dataset, model, layer) a method runs on (`{block}.layers` picks among each model's layers)."""
    return conceptscope.config.method_jobs(config, block)


def concept_pairs():
    return method_pairs("concepts")


def concept_jobs():
    return method_jobs("concepts")


def crop_pools(dataset):
    return config["concepts"]["crop_pools"] or [dataset]


def method_summaries():
    """The summarize rule of each method this config runs (its tables are the run's tables)."""
    enabled = {
        "summarize_models": True,
        "summarize_concepts": bool(concept_jobs()),
        "summarize_contrast": bool(method_jobs("contrast")),
        "summarize_cladec": bool(method_jobs("cladec")),
        "summarize_nave": bool(method_pairs("nave")),
        "summarize_dora": bool(config["dora"]["models"]),
        "summarize_cluscam": bool(config["cluscam"]["models"]),
    }
    return [name for name, on in enabled.items() if on]


def all_targets():
    """Every store of every explained model, every method's tables, the report's pages and front page."""
    targets = []
    for ds, model in explained_pairs():
        targets += [result("activations", ds, model), result("crops", ds, model)]
        targets += [result("index", ds, model, f"{layer}.faiss") for layer in MODELS[model]["layers"]]
    return targets + report_targets()


# ---- activations (helpers of rules/activations.smk) -------------------------------------------------


def selection_of(model):
    return MODELS[model]["selection"] or config["activations"]["selection"]


def predictions_if(selection, dataset, model):
    """The predictions a selection by predicted class reads (nothing otherwise)."""
    return [result("predictions", dataset, f"{model}.parquet")] if selection["by"] == "prediction" else []


# ---- concepts (helpers of rules/concepts.smk) ----------------------------------------------------


def method_split(block, dataset):
    """The split(s) a method block takes a dataset's images from: its `dataset_splits` entry, else `split`."""
    return config[block]["dataset_splits"].get(dataset, config[block]["split"])


def concept_settings(dataset):
    """The `concepts` keys that determine a dataset's NMF concepts (not the crops or the test)."""
    keys = (
        "classes",
        "split",
        "by",
        "max_images",
        "max_vectors",
        "n_concepts",
        "sweep",
        "attribution",
        "attribution_options",
        "batch_size",
    )
    return {key: method_split("concepts", dataset) if key == "split" else config["concepts"][key] for key in keys}


def crop_store_settings(dataset):
    """The `crops` block as one dataset's crop vectors use it: its own mode from `dataset_modes`."""
    opts = {key: value for key, value in config["crops"].items() if key != "dataset_modes"}
    return {**opts, "mode": config["crops"]["dataset_modes"].get(dataset, opts["mode"])}


def crop_settings():
    keys = ("crop_pools", "top_m", "one_per_image", "exclude_images", "stitch_size", "max_figures", "n_concepts", "sweep")
    return {key: config["concepts"][key] for key in keys}


def pool_inputs(w):
    pools = crop_pools(w.dataset)
    return {
        "pool_data": [dataset_dir(ds) for ds in pools],
        "pool_crops": [result("crops", ds, w.model) for ds in pools],
        "pool_index": [result("index", ds, w.model, f"{w.layer}.faiss") for ds in pools],
        "pool_predictions": [result("predictions", ds, f"{w.model}.parquet") for ds in pools],
    }


# ---- contrast (helpers of rules/contrast.smk) ----------------------------------------------------


def contrast_settings(*keys, dataset=None):
    """`contrast` keys; `split` as it applies to `dataset`."""
    return {key: method_split("contrast", dataset) if key == "split" else config["contrast"][key] for key in keys}


# ---- job memory (resources: mem_mb of the jobs whose memory grows with the data) ---------------
import conceptscope.job_memory


def _written_json(path):
    """A JSON file an upstream job writes, or None before it has run: Snakemake evaluates resources when
    it builds the DAG and again, with every input present, before it runs or submits the job."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None


def contrast_training_mem_mb(wildcards, input):
    """train_contrast_hyperplanes: all cutoff vectors and all pairs' weights (from the vector store's counts)."""
    store = _written_json(Path(input.vectors, "zarr.json"))
    if store is None:
        return 16000
    classes = [c for c, n in zip(store["attributes"]["classes"], store["attributes"]["counts"]) if n]
    if not classes:
        return conceptscope.job_memory.BASE_MB
    dim = _written_json(Path(input.vectors, f"c{classes[0]}", "vectors", "zarr.json"))["shape"][1]
    opts = config["contrast"]
    return conceptscope.job_memory.contrast_training_mb(
        store["attributes"]["counts"], dim, ordered=opts["ordered"], chunk_pairs=opts["chunk_pairs"]
    )


def index_build_mem_mb(wildcards, input):
    """build_crop_index: the index's codes, its training sample and one read of the layer's crop store."""
    meta = _written_json(Path(input.crops, f"{wildcards.layer}.zarr", "vectors", "zarr.json"))
    if meta is None:
        return 16000
    n_vectors, dim = meta["shape"]
    read_rows = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
    return conceptscope.job_memory.index_build_mb(n_vectors, dim, config["index"], read_rows)


def crop_search_mem_mb(wildcards, input):
    """concept_crops, contrast_crops: the crop pools' indexes in RAM (their files and vector counts)."""
    infos = [_written_json(f"{path}.json") for path in input.pool_index]
    if any(info is None for info in infos):
        return 8000
    pools = [(Path(path).stat().st_size, info["ntotal"]) for path, info in zip(input.pool_index, infos)]
    return conceptscope.job_memory.crop_search_mb(pools)


def predict_mem_mb(wildcards, input):
    """predict: a batch, and every predicted image's row (its logits where stored) until the table is written."""
    meta, info = _written_json(Path(input.data, "meta.json")), _written_json(input.info)
    if meta is None or info is None:
        return 8000
    opts = config["predict"]
    n_images = sum(meta["counts"].get(split, 0) for split in opts["splits"])
    return conceptscope.job_memory.prediction_mb(n_images, info["num_classes"], store_logits=opts["store_logits"], top_k=opts["top_k"])


# ---- cladec (helpers of rules/cladec.smk) ------------------------------------------------------


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
    """How C_eval trains: `cladec.eval_train`'s keys over the model's own `train` block (recipe
    model), or over the paper's SGD recipe (recipe paper; evaluate_reconstructor fills in the rest)."""
    opts = {k: v for k, v in config["cladec"]["eval_train"].items() if v is not None}
    train = MODELS[model]["train"]
    return {**(train if opts.get("recipe", "model") == "model" else {"seed": train["seed"]}), **opts}


def refae_owner(dataset, model, layer):
    """The cladec model whose RefAE of (dataset, layer) this model's is: the first, in config order,
    trained from the same architecture (arch, options, token layout, preprocessing, classes) on a
    dataset that differs from this model's at most in its planted shortcut. A RefAE is the
    architecture built anew at the seed and trained on the same images, so a shortcut net and its
    clean twin have the same one: it is trained once and copied."""

    def key(name):
        spec = MODELS[name]
        train = config["datasets"].get(spec["train_dataset"] or "") if spec["weights"] == "train" else None
        if train is None:
            return None
        same = [spec[k] for k in ("arch", "arch_options", "tokens", "preprocess", "num_classes")]
        return json.dumps([*same, {k: v for k, v in train.items() if k != "shortcut"}], sort_keys=True, default=str)

    mine = key(model)
    owners = [m for ds, m, lay in cladec_jobs() if ds == dataset and lay == layer and mine is not None and key(m) == mine]
    return owners[0] if owners else model


def refae_copy_input(w):
    """The RefAE to copy (rule train_reconstructor), where another model of the run owns it."""
    owner = refae_owner(w.dataset, w.model, w.layer) if w.variant == "refae" else w.model
    return {"shared": result("cladec", w.dataset, owner, w.layer, "refae", "reconstructor.pt")} if owner != w.model else {}


def cladec_dir(*parts):
    return result("cladec", "{dataset}", "{model}", "{layer}", *parts)


def cladec_evaluations():
    return [
        result("cladec", ds, model, layer, variant, "evaluation.json")
        for ds, model, layer in cladec_jobs()
        for variant in cladec_variants(model, layer)
    ]


# ---- nave (helpers of rules/nave.smk) --------------------------------------------------------
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
        return "slic", {
            "n_segments": int(name[len("slic_k") :]),
            "compactness": opts["slic"]["compactness"],
            "sigma": opts["slic"]["sigma"],
        }
    return "felzenszwalb", {key: opts["felzenszwalb"][key] for key in ("scale", "sigma", "min_size")}


def nave_dir(*parts):
    return result("nave", "{dataset}", "{model}", *parts)


def nave_inputs(w):
    return {"data": dataset_dir(w.dataset), "info": model_files(w.model)["info"], "store": result("activations", w.dataset, w.model)}


def first_imagewise(*name):
    k, clustering = nave_settings()[0]
    return nave_dir("{layers}", f"k{k}_{clustering}", *name)


def nave_figure_inputs(w):
    k, clustering = nave_settings()[0]
    runs = [(f"NAVE {name} K={k}", result("nave", w.dataset, w.model, name, f"k{k}_{clustering}")) for name in nave_sets(w.model)]
    runs += [(b, result("nave", w.dataset, w.model, "baselines", b)) for b in nave_baselines() if b in (f"slic_k{k}", "felzenszwalb")]
    return runs


def nave_runs():
    """Every scored segmentation: (boxes.csv, the table row's identity)."""
    runs = []
    for ds, model in nave_pairs():
        spec = MODELS[model]
        base = {"model": model, "weights": spec["weights"], "train_dataset": spec["train_dataset"] or "", "dataset": ds}
        for name in nave_sets(model):
            for k, clustering in nave_settings():
                runs.append(
                    (
                        result("nave", ds, model, name, f"k{k}_{clustering}", "boxes.csv"),
                        {**base, "layers": name, "method": "nave", "clustering": clustering, "k": k},
                    )
                )
            if config["nave"]["classwide"]["enabled"]:
                cw = config["nave"]["classwide"]
                runs.append(
                    (
                        result("nave", ds, model, name, "classwide", "boxes.csv"),
                        {**base, "layers": name, "method": "nave_classwide", "clustering": cw["clustering"], "k": cw["k"]},
                    )
                )
        for b in nave_baselines():
            method, options = baseline_spec(b)
            runs.append(
                (
                    result("nave", ds, model, "baselines", b, "boxes.csv"),
                    {**base, "layers": "", "method": method, "clustering": "", "k": options.get("n_segments", "")},
                )
            )
    return runs


# ---- dora (helpers of rules/dora.smk) --------------------------------------------------------
from conceptscope.config import dora_layers, dora_pairs


def dora_jobs():
    return [(ds, m, layer) for ds, m in dora_pairs(config) for layer in dora_layers(config, m)]


def dora_dir(*parts):
    return result("dora", "{dataset}", "{model}", "{rep_layer}", *parts)


def dora_analysis_inputs(w):
    inputs = {"representations": dora_dir("representations.npz"), "distances": dora_dir("distances.npz")}
    if conceptscope.config.dora_sams_enabled(config, w.model):
        inputs["sams"] = dora_dir("sams.npz")
    return {key: path.format(**dict(w.items())) for key, path in inputs.items()}


# ---- cluscam (helpers of rules/cluscam.smk) -----------------------------------------------------
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


# ---- report (helpers of rules/report.smk) ------------------------------------------------------
import yaml

from conceptscope.report import SHORTCUT_TABLES, shortcut_pairs

TABLE_PAGES = yaml.safe_load(Path(workflow.basedir, "report", "tables.yaml").read_text())


def run_tables():
    """Stems of the tables under tables/ that this run writes (outputs of the enabled summarize rules)."""
    names = [Path(path).stem for rule in method_summaries() for path in getattr(rules, rule).output if str(path).endswith(".csv")]
    missing = sorted(set(names) - set(TABLE_PAGES))
    if missing:
        raise WorkflowError(f"report/tables.yaml has no caption for the table(s) {', '.join(missing)}")
    return names


def report_targets():
    return [result("report", "front.rst")] + [result("report", "tables", f"{name}.html") for name in run_tables() + ["shortcut_summary"]]


def front_figures():
    """One figure per method for the front page: of a shortcut-trained model where one runs the method
    (its deepest layer), else of the method's first job. Dicts of method, model, dataset, path; a
    concepts or contrast entry is the job's crop folder, the figure of the shortcut class is taken from it."""
    shortcut = [(model, ds) for model, _, ds in shortcut_pairs(MODELS, DATASETS)]
    drawn = {block: bool(config[block]["figures"]) for block in ("cladec", "nave", "cluscam")}  # figures: 0 draws none
    jobs = {
        "class concepts": [(ds, m, layer, result("concepts", ds, m, layer, "crops")) for ds, m, layer in concept_jobs()],
        "class contrasting": [
            (ds, m, layer, result("contrast", ds, m, layer, "concepts", "crops")) for ds, m, layer in method_jobs("contrast")
        ],
        "ClaDec": [(ds, m, layer, result("figures", "cladec", ds, m, f"{layer}.png")) for ds, m, layer in cladec_jobs() if drawn["cladec"]],
        "NAVE": [(ds, m, "", result("figures", "nave", ds, m, "segments.png")) for ds, m in nave_pairs() if drawn["nave"]],
        "DORA": [(ds, m, layer, result("figures", "dora", ds, m, f"{layer}_atlas.png")) for ds, m, layer in dora_jobs()],
        "ClusCAM": [
            (ds, m, layer, result("figures", "cluscam", ds, m, f"{layer}.png")) for ds, m, layer in cluscam_jobs() if drawn["cluscam"]
        ],
    }
    chosen = []
    for method, runs in jobs.items():
        if not runs:
            continue
        mine = [run for model, ds in shortcut for run in runs if run[:2] == (ds, model)]
        if mine:  # the first shortcut model's deepest layer (a model's layers are listed in order)
            ds, model, layer, path = [run for run in mine if run[:2] == mine[0][:2]][-1]
        else:
            ds, model, layer, path = runs[0]
        chosen.append({"method": method, "model": model, "dataset": ds, "layer": layer, "path": path})
    return chosen


def front_page_path():
    """The front page the run wrote (accuracies and shortcut findings), else the static one."""
    written = Path(result("report", "front.rst")).resolve()
    return str(written) if written.exists() else str(Path(workflow.basedir, "report", "workflow.rst"))
