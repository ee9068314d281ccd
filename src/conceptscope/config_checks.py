"""Per-method checks of a resolved config: what the schema cannot say (a layer set's K against its
pixels, a method's models and layers, class names against a dataset's labels, splits a method needs).

`check_methods(config)` runs them all; `conceptscope.config.resolve_config` calls it, so a bad
method block stops before any job runs, with one message naming the key.
"""

from __future__ import annotations

from .config import (
    ConfigError,
    _check_layer_names,
    cluscam_layers,
    dora_layers,
    dora_pairs,
    dora_sams_enabled,
    layer_map_shapes,
    method_pairs,
    model_num_classes,
    nave_layer_sets,
)


def check_methods(config: dict) -> None:
    """Every method block's checks, and the selections the stores use, in the order a user reads them."""
    splits = config["predict"]["splits"]
    for name, spec in config["models"].items():
        if spec["selection"]:
            _check_selection(f"models.{name}.selection", spec["selection"], splits)
    _check_selection("activations.selection", config["activations"]["selection"], splits)
    _check_selection("crops.selection", config["crops"]["selection"], splits)
    _check_concepts(config)
    _check_contrast(config)
    _check_cladec(config)
    _check_nave(config)
    _check_dora(config)
    _check_cluscam(config)


def _check_selection(key: str, selection: dict, predict_splits: list[str]) -> None:
    from .data import split_names

    if selection["by"] != "prediction":
        return
    needed = split_names(selection["split"])
    missing = [s for s in needed if s not in predict_splits]
    if missing:
        raise ConfigError(f"config key '{key}.by': selecting by predicted class needs predictions of split(s) {missing}; add them to predict.splits")


def _check_method(config: dict, block: str) -> list[str]:
    """A method block's models, datasets, layers, classes and split against the rest of the config.

    Returns the models the block explains.
    """
    from .data import split_names

    opts = config[block]
    models, splits = config["models"], config["predict"]["splits"]
    for i, name in enumerate(opts["models"] or []):
        if name not in models:
            raise ConfigError(f"config key '{block}.models[{i}]': unknown model {name!r}; models are {sorted(models)}")
        if not models[name]["layers"]:
            raise ConfigError(f"config key '{block}.models[{i}]': model {name!r} has no `layers` to explain")
    chosen = [m for m in (models if opts["models"] is None else opts["models"]) if models[m]["layers"]]
    pools = opts.get("crop_pools") if block == "concepts" else None
    for key, names in (("datasets", opts["datasets"]), ("crop_pools", pools)):
        for i, ds in enumerate(names or []):
            if ds not in config["datasets"]:
                raise ConfigError(f"config key '{block}.{key}[{i}]': unknown dataset {ds!r}; datasets are {sorted(config['datasets'])}")
            # explained datasets pair with the models that evaluate on them; crop pools must serve every model
            lacking = [m for m in chosen if ds not in models[m]["eval_datasets"]]
            if lacking and (key == "crop_pools" or len(lacking) == len(chosen)):
                raise ConfigError(
                    f"config key '{block}.{key}[{i}]': dataset {ds!r} is not an eval dataset of model(s) {lacking}; "
                    "add it to their eval_datasets (its predictions, crops and index are needed)"
                )
    if not chosen:
        return chosen
    for i, layer in enumerate(opts.get("layers") or []):
        if not any(layer in models[m]["layers"] for m in chosen):
            raise ConfigError(f"config key '{block}.layers[{i}]': {layer!r} is not among the `layers` of model(s) {chosen}")
    if "classes" not in opts:  # a method that does not pick images by predicted class
        return chosen
    split_keys = [(f"{block}.split", opts["split"])]
    for ds, split in opts["dataset_splits"].items():
        if ds not in config["datasets"]:
            raise ConfigError(f"config key '{block}.dataset_splits.{ds}': unknown dataset {ds!r}; datasets are {sorted(config['datasets'])}")
        split_keys.append((f"{block}.dataset_splits.{ds}", split))
    for ds, _ in method_pairs(config, block):  # every explained dataset has images in one of its splits at least
        split = opts["dataset_splits"].get(ds, opts["split"])
        key = f"{block}.dataset_splits.{ds}" if ds in opts["dataset_splits"] else f"{block}.split"
        if not set(split_names(split)) & _splits_of(config["datasets"][ds]):
            raise ConfigError(
                f"config key '{key}': dataset {ds!r} has no images in split(s) {split_names(split)} (it has {sorted(_splits_of(config['datasets'][ds]))}); "
                f"name its split(s) in {block}.dataset_splits.{ds}"
            )
    if block == "contrast" and opts["shift"]["split"] is not None:
        split_keys.append(("contrast.shift.split", opts["shift"]["split"]))
    for key, split in split_keys:
        missing = [s for s in split_names(split) if s not in splits]
        if missing:
            raise ConfigError(
                f"config key '{key}': images are chosen by predicted class, which needs predictions of split(s) {missing}; add them to predict.splits"
            )
    for m in chosen:
        n_classes = model_num_classes(models[m], config["datasets"])
        for i, cls in enumerate(opts["classes"] or []):
            if cls >= n_classes:
                raise ConfigError(f"config key '{block}.classes[{i}]': class {cls} is not an output of model {m!r} ({n_classes} classes)")
    return chosen


def _check_concepts(config: dict) -> None:
    """The `concepts` block against the models, datasets and predictions it refers to."""
    from .data import split_names

    for name in config["crops"]["dataset_modes"]:
        if name not in config["datasets"]:
            raise ConfigError(f"config key 'crops.dataset_modes.{name}': unknown dataset {name!r}; datasets are {sorted(config['datasets'])}")
    inner, chunk = config["crops"]["inner_rows"], config["crops"]["chunk_rows"]
    if isinstance(inner, int) and chunk % inner:
        raise ConfigError(f"config key 'crops.inner_rows': expected a divisor of crops.chunk_rows = {chunk}, got {inner}")
    if not _check_method(config, "concepts"):
        return
    splits = config["predict"]["splits"]
    crop_splits = split_names(config["crops"]["selection"]["split"])
    missing = [s for s in crop_splits if s not in splits]
    if missing:
        raise ConfigError(
            f"config key 'crops.selection.split': the concepts' stricter test excludes crops of images predicted as the class, "
            f"which needs predictions of split(s) {missing}; add them to predict.splits"
        )


def _check_contrast(config: dict) -> None:
    """The `contrast` block: as `concepts`, plus its concept pairs and offsets."""
    chosen = _check_method(config, "contrast")
    opts = config["contrast"]
    for i, (a, b) in enumerate(opts["concept_pairs"] or []):
        if a == b:
            raise ConfigError(f"config key 'contrast.concept_pairs[{i}]': [{a}, {b}] contrasts a class with itself; give two different classes")
        for m in chosen:
            n_classes = model_num_classes(config["models"][m], config["datasets"])
            if max(a, b) >= n_classes:
                raise ConfigError(f"config key 'contrast.concept_pairs[{i}]': class {max(a, b)} is not an output of model {m!r} ({n_classes} classes)")
        if opts["classes"] is not None and not {a, b} <= set(opts["classes"]):
            raise ConfigError(f"config key 'contrast.concept_pairs[{i}]': [{a}, {b}] uses a class outside contrast.classes {opts['classes']}")
    if chosen and opts["classes"] is not None and len(set(opts["classes"])) < 2:
        raise ConfigError(f"config key 'contrast.classes': contrasting needs at least two classes, got {opts['classes']}")


def _splits_of(spec: dict) -> set[str]:
    """The splits a prepared dataset of this spec can have: test, train where it has training images,
    test_watermarked where it plants a shortcut."""
    if spec["kind"] == "combined":  # its parts decide; none is refused here
        return {"train", "test", "test_watermarked"}
    return {"test"} | ({"train"} if _has_train_split(spec) else set()) | ({"test_watermarked"} if spec.get("shortcut") else set())


def _has_train_split(spec: dict) -> bool:
    """Whether a prepared dataset of this spec has training images."""
    if spec["kind"] == "photos":
        return False
    return spec["kind"] != "imagefolder" or spec.get("train_dir") is not None or spec.get("test_dir") is None


def _check_cladec(config: dict) -> None:
    """The `cladec` block: models, datasets (with training images) and layers, and the sweep layers."""
    chosen = _check_method(config, "cladec")
    opts, models = config["cladec"], config["models"]
    for m in chosen:
        for ds in opts["datasets"] or models[m]["eval_datasets"]:
            if ds in models[m]["eval_datasets"] and not _has_train_split(config["datasets"][ds]):
                key = "cladec.datasets" if opts["datasets"] else f"models.{m}.eval_datasets"
                raise ConfigError(
                    f"config key '{key}': ClaDec trains decoders on the training images of dataset {ds!r}, which has none; "
                    "pick datasets with a train split in cladec.datasets"
                )
    layers = [layer for m in chosen for layer in models[m]["layers"] if opts["layers"] is None or layer in opts["layers"]]
    for i, layer in enumerate(opts["sweep"]["layers"] or []):
        if layer not in layers:
            raise ConfigError(f"config key 'cladec.sweep.layers[{i}]': {layer!r} is not among the cladec layers {sorted(set(layers))}")
    if len(set(opts["sweep"]["alphas"])) != len(opts["sweep"]["alphas"]):
        raise ConfigError(f"config key 'cladec.sweep.alphas': values repeat in {opts['sweep']['alphas']}")


def _check_nave(config: dict) -> None:
    """The `nave` block: models, datasets, layer sets, and settings that cannot run."""
    from .methods.nave import WARD_MAX_PIXELS, clustering_grid

    chosen = _check_method(config, "nave")
    opts, models = config["nave"], config["models"]
    for i, layer_set in enumerate(opts["layer_sets"] or []):
        if len(set(layer_set)) != len(layer_set):
            raise ConfigError(f"config key 'nave.layer_sets[{i}]': a layer repeats in {layer_set}")
        if chosen and not any(set(layer_set) <= set(models[m]["layers"]) for m in chosen):
            raise ConfigError(
                f"config key 'nave.layer_sets[{i}]': no NAVE model has all of {layer_set} among its `layers` "
                f"({ {m: models[m]['layers'] for m in chosen} })"
            )
    for m in chosen:
        if not nave_layer_sets(config, m):
            raise ConfigError(f"config key 'nave.layer_sets': none of the sets applies to model {m!r} (layers {models[m]['layers']})")
    for key in ("k", "clustering", "strategies"):
        if len(set(opts[key])) != len(opts[key]):
            raise ConfigError(f"config key 'nave.{key}': values repeat in {opts[key]}")
    k = max(opts["k"])  # the schema keeps the list non-empty
    for m in chosen:  # each image is clustered on its own: K cannot exceed the grid's pixels
        for layer_set in nave_layer_sets(config, m):
            shapes = layer_map_shapes(models[m], config["datasets"], layer_set)
            if shapes is None:
                continue
            grid = clustering_grid(list(shapes.values()), opts["resolution"])
            if grid[0] * grid[1] < k:
                raise ConfigError(
                    f"config key 'nave.k': K={k} exceeds the {grid[0]}x{grid[1]} = {grid[0] * grid[1]} pixels that "
                    f"{m!r} layers {layer_set} give to cluster; expected K <= {grid[0] * grid[1]}, or set nave.resolution"
                )
    classwide = opts["classwide"]
    if classwide["max_fit_pixels"] < classwide["k"]:
        raise ConfigError(f"config key 'nave.classwide.max_fit_pixels': {classwide['max_fit_pixels']} pixels cannot make {classwide['k']} clusters")
    if classwide["clustering"] == "ward" and classwide["max_fit_pixels"] > WARD_MAX_PIXELS:
        raise ConfigError(
            f"config key 'nave.classwide.max_fit_pixels': Ward keeps a pixels x pixels distance matrix; "
            f"use at most {WARD_MAX_PIXELS} pixels with clustering ward"
        )


def _check_block_models(config: dict, block: str, label: str) -> None:
    """A block's `models`, `datasets` and per-model `layers` (DORA, ClusCAM) against the config."""
    opts, models, datasets = config[block], config["models"], config["datasets"]
    for i, name in enumerate(opts["models"]):
        if name not in models:
            raise ConfigError(f"config key '{block}.models[{i}]': unknown model {name!r}; models are {sorted(models)}")
    if len(set(opts["models"])) != len(opts["models"]):
        raise ConfigError(f"config key '{block}.models': models repeat in {opts['models']}")
    for i, ds in enumerate(opts["datasets"] or []):
        if ds not in datasets:
            raise ConfigError(f"config key '{block}.datasets[{i}]': unknown dataset {ds!r}; datasets are {sorted(datasets)}")
        if opts["models"] and not any(ds in models[m]["eval_datasets"] for m in opts["models"]):
            raise ConfigError(f"config key '{block}.datasets[{i}]': dataset {ds!r} is not an eval dataset of any {label} model {opts['models']}")
    for name, layers in opts["layers"].items():
        if name not in opts["models"]:
            raise ConfigError(f"config key '{block}.layers.{name}': {name!r} is not one of {block}.models {opts['models']}")
        if len(set(layers)) != len(layers):
            raise ConfigError(f"config key '{block}.layers.{name}': layers repeat in {layers}")
        _check_layer_names(models[name], datasets, layers, f"{block}.layers.{name}")


def _check_class_names(key: str, names: list[str], name: str, spec: dict) -> None:
    """Each of `names` a class name of the dataset spec (with the closest names where one is not)."""
    import difflib

    from .data import class_names_of

    known = class_names_of(spec)
    for i, wanted in enumerate(names):
        if wanted not in known:
            close = difflib.get_close_matches(wanted, known, n=3)
            hint = f"did you mean {close}?" if close else f"its classes are {known[:5]}{' ...' if len(known) > 5 else ''}"
            raise ConfigError(f"config key '{key}[{i}]': {wanted!r} is not a class name of dataset {name!r} ({len(known)} classes); {hint}")


def _check_dora(config: dict) -> None:
    """The `dora` block: models, datasets, per-model layers, anomaly classes and settings that cannot run."""
    _check_block_models(config, "dora", "DORA")
    opts, datasets = config["dora"], config["datasets"]
    for ds, names in opts["anomaly_classes"].items():
        if ds not in datasets:
            raise ConfigError(f"config key 'dora.anomaly_classes.{ds}': unknown dataset {ds!r}; datasets are {sorted(datasets)}")
        _check_class_names(f"dora.anomaly_classes.{ds}", names, ds, datasets[ds])
    detectors = opts["outliers"]["detectors"]
    if len(set(detectors)) != len(detectors):
        raise ConfigError(f"config key 'dora.outliers.detectors': detectors repeat in {detectors}")
    if opts["d"] is not None and opts["max_images"] is not None and opts["max_images"] < opts["n"] * opts["d"]:
        raise ConfigError(
            f"config key 'dora.max_images': {opts['max_images']} images cannot hold n={opts['n']} n-AMS blocks of d={opts['d']} "
            f"images ({opts['n'] * opts['d']} needed); raise it or lower dora.n / dora.d"
        )
    sams_models = opts["sams"]["models"]
    if sams_models is not None:
        dora_models = sorted({model for _, model in dora_pairs(config)})
        unknown = [m for m in sams_models if m not in dora_models]
        if unknown:
            raise ConfigError(f"config key 'dora.sams.models': {unknown} are not DORA models; expected some of {dora_models}")
    if opts["atlas"]["distance"].startswith("ea_s") and not all(dora_sams_enabled(config, m) for _, m in dora_pairs(config)):
        raise ConfigError(f"config key 'dora.atlas.distance': {opts['atlas']['distance']!r} needs s-AMS of every DORA model; "
                          "set dora.sams.enabled: true (and dora.sams.models: null) or pick a data-aware distance")
    _check_dora_layers(config)


def _check_dora_layers(config: dict) -> None:
    """DORA's layers give one scalar per channel or logit (a token layer: its patch map's or, as
    `LAYER.cls`, its class token's dimensions), and each
    dataset's classes must be outputs of the model whose logits are read (`dora.dataset_logits`)."""
    from .data import class_names_of, imagenet_wnids
    from .methods.dora import dataset_logits

    models, datasets = config["models"], config["datasets"]
    for dataset, model in dora_pairs(config):
        layers = dora_layers(config, model)
        for layer, shape in (layer_map_shapes(models[model], datasets, [x for x in layers if x != "logits"]) or {}).items():
            if len(shape) not in (1, 3):
                raise ConfigError(
                    f"config key 'dora.layers.{model}': layer {layer!r} gives maps of shape {tuple(shape)}; DORA's representations are "
                    "the channels of a (C, h, w) map or a (C,) vector"
                )
        if "logits" in layers:
            classes, wnids = class_names_of(datasets[dataset]), imagenet_wnids()
            index = [wnids.index(c) for c in classes] if set(classes) <= set(wnids) else None
            try:
                dataset_logits(classes, index, model_num_classes(models[model], datasets), f"model {model!r} on dataset {dataset!r}")
            except ValueError as error:
                raise ConfigError(f"config key 'dora.layers.{model}': logits: {error}") from None


def _check_cluscam(config: dict) -> None:
    """The `cluscam` block: models, datasets, per-model layers, size bins."""
    _check_block_models(config, "cluscam", "ClusCAM")
    opts, models = config["cluscam"], config["models"]
    for i, name in enumerate(opts["models"]):
        if not models[name]["layers"] and name not in opts["layers"]:
            raise ConfigError(f"config key 'cluscam.models[{i}]': model {name!r} has no `layers`; name its feature-map layers in cluscam.layers.{name}")
    if len(set(opts["methods"])) != len(opts["methods"]):
        raise ConfigError(f"config key 'cluscam.methods': methods repeat in {opts['methods']}")
    bins = opts["object_size_bins"]
    if list(bins) != sorted(set(bins)):
        raise ConfigError(f"config key 'cluscam.object_size_bins': edges must increase strictly, got {bins}")
    wanted = [("cluscam.sweep.n_clusters", max(opts["sweep"]["n_clusters"], default=0))]
    if "cluscam" in opts["methods"]:
        wanted.append(("cluscam.cluscam.n_clusters", opts["cluscam"]["n_clusters"]))
    for name in opts["models"]:  # ClusCAM clusters a layer's feature maps: K cannot exceed their number
        layers = [layer for layer in cluscam_layers(config, name) if layer != "logits"]
        for layer, shape in (layer_map_shapes(models[name], config["datasets"], layers) or {}).items():
            for key, k in wanted:
                if k > shape[0]:
                    raise ConfigError(f"config key '{key}': K={k} exceeds the {shape[0]} feature maps of {name!r} layer {layer!r}; expected K <= {shape[0]}")
