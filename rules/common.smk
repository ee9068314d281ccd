# Shared helpers: result paths, wildcard constraints and input functions.
import re

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

    return {
        "arch": spec["arch"],
        "weights": spec["weights"],
        "num_classes": model_num_classes(spec, DATASETS),
        "preprocess": spec["preprocess"],
        "train": spec["train"] if spec["weights"] == "train" else None,
        "train_dataset": spec["train_dataset"],
    }


def explained_pairs():
    """(dataset, model) pairs whose hidden layers are stored: models with `layers`, on their eval datasets."""
    return [(ds, model) for ds, model in eval_pairs() if MODELS[model]["layers"]]


def method_pairs(block="concepts"):
    """(dataset, model) pairs a method explains (`{block}.models` x `{block}.datasets`)."""
    opts = config[block]
    return [
        (ds, model)
        for ds, model in explained_pairs()
        if (opts["models"] is None or model in opts["models"]) and (opts["datasets"] is None or ds in opts["datasets"])
    ]


def method_jobs(block="concepts"):
    """(dataset, model, layer) a method runs on (`{block}.layers` picks among each model's layers)."""
    wanted = config[block]["layers"]
    return [(ds, model, layer) for ds, model in method_pairs(block) for layer in MODELS[model]["layers"] if wanted is None or layer in wanted]


def concept_pairs():
    return method_pairs("concepts")


def concept_jobs():
    return method_jobs("concepts")


def crop_pools(dataset):
    return config["concepts"]["crop_pools"] or [dataset]


def all_targets():
    targets = [result("tables", "models.csv")]
    for ds, model in explained_pairs():
        targets += [result("activations", ds, model), result("crops", ds, model)]
        targets += [result("index", ds, model, f"{layer}.faiss") for layer in MODELS[model]["layers"]]
    if concept_jobs():
        targets.append(result("tables", "concepts_prediction_test.csv"))
    if method_jobs("contrast"):
        targets.append(result("tables", "contrast_shifting_test.csv"))
    if method_jobs("cladec"):
        targets.append(result("tables", "cladec_layers.csv"))
    if method_pairs("nave"):
        targets.append(result("tables", "nave_object_extraction.csv"))
    if config["dora"]["models"]:
        targets.append(result("tables", "dora_mantel.csv"))
    if config["cluscam"]["models"]:
        targets.append(result("tables", "cluscam_faithfulness.csv"))
    return targets
