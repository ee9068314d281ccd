"""Configuration: JSON-schema validation with one clear message per error, defaults, and semantic checks.

    config = resolve_config(yaml.safe_load(open("config.yaml")))

The Snakefile runs the same checks before the DAG is built (and `snakemake.utils.validate` on the
same schema), so a bad config stops before any job runs and before anything is written.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and what is expected."""


def load_schema(path: str | Path | None = None) -> dict:
    """The config JSON schema (YAML file)."""
    path = Path(path) if path else SCHEMA_PATH
    if not path.is_file():
        raise ConfigError(f"config schema not found at {path}")
    return yaml.safe_load(path.read_text())


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _describe_expected(error: jsonschema.ValidationError) -> str:
    schema = error.schema
    validator = error.validator
    if validator == "type":
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        return "expected " + " or ".join("null" if k == "null" else k for k in kinds)
    if validator == "enum":
        return f"expected one of {schema['enum']}"
    if validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        symbol = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[validator]
        return f"expected a number {symbol} {schema[validator]}"
    if validator == "pattern":
        return f"expected a string matching {schema['pattern']}"
    return error.message


def _format_error(error: jsonschema.ValidationError) -> str:
    """One sentence naming the config key, what is wrong and what is expected."""
    if error.validator == "oneOf" and error.context:
        # `null` or an object: report the error from the object branch, it is the informative one
        deepest = max(error.context, key=lambda e: (len(e.absolute_path), e.validator != "type"))
        return _format_error(deepest)
    key = _key(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        return f"config key '{key}': unknown key(s) {extra}; allowed keys are {allowed}"
    if error.validator == "required":
        missing = [k for k in error.schema["required"] if k not in error.instance]
        return f"config key '{key}': missing required key(s) {missing}"
    if error.validator == "propertyNames":
        return f"config key '{key}': name {error.instance!r} is not allowed; names use letters, digits, '_' and '-'"
    description = error.schema.get("description", "").strip().split(". ")[0]
    hint = f" ({description})" if description else ""
    return f"config key '{key}': {_describe_expected(error)}, got {error.instance!r}{hint}"


def _fill_defaults(instance: Any, schema: dict, root: dict) -> None:
    """Insert schema defaults for missing keys, recursively (objects, their named entries, $refs)."""
    if "$ref" in schema:
        ref = schema["$ref"].split("/")[-1]
        schema = root["$defs"][ref]
    if not isinstance(instance, dict):
        return
    for name, sub in schema.get("properties", {}).items():
        if name not in instance and "default" in sub:
            instance[name] = copy.deepcopy(sub["default"])
        if name in instance:
            _fill_defaults(instance[name], sub, root)
    additional = schema.get("additionalProperties")
    if isinstance(additional, dict):
        for name, value in instance.items():
            if name not in schema.get("properties", {}):
                _fill_defaults(value, additional, root)
    for branch in schema.get("oneOf", []):  # e.g. shortcut: null or an object
        if "$ref" in branch or branch.get("type") == "object":
            _fill_defaults(instance, branch, root)


def validate_schema(config: dict, schema: dict | None = None) -> dict:
    """Check `config` against the schema; return a copy with every default filled in."""
    schema = schema or load_schema()
    if not isinstance(config, dict):
        raise ConfigError(f"the config must be a mapping of keys to values, got {type(config).__name__}")
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (list(map(str, e.absolute_path)), e.validator))
    if errors:
        raise ConfigError(_format_error(errors[0]))
    filled = copy.deepcopy(config)
    _fill_defaults(filled, schema, schema)
    return filled


# --------------------------------------------------------------------------------------------
# Semantic checks: names, files and layers that the schema cannot see

IMAGEFOLDER_ONLY = ("root", "train_dir", "test_dir", "label_map", "boxes", "labels")
COMBINED_ONLY = ("parts", "size", "channels")
COMBINED_SIZE = 64


def _check_dataset(name: str, raw: dict, spec: dict, base: Path) -> None:
    from .data import num_classes_of

    key = f"datasets.{name}"
    if spec["kind"] != "imagefolder":
        given = [k for k in IMAGEFOLDER_ONLY if k in raw]
        if given:
            raise ConfigError(f"config key '{key}.{given[0]}': only used by kind 'imagefolder', this dataset is {spec['kind']!r}")
    else:
        if not spec.get("root"):
            raise ConfigError(f"config key '{key}.root': kind 'imagefolder' needs the path of the image directory")
        root = (base / spec["root"]).expanduser()
        if not root.is_dir():
            raise ConfigError(f"config key '{key}.root': directory {root} does not exist")
        if not spec.get("train_dir") and not spec.get("test_dir"):
            raise ConfigError(f"config key '{key}': set train_dir or test_dir (both are null)")
        for sub in ("train_dir", "test_dir"):
            if spec.get(sub) and not (root / spec[sub]).is_dir():
                raise ConfigError(f"config key '{key}.{sub}': directory {root / spec[sub]} does not exist")
        for file_key in ("boxes", "labels"):
            if spec.get(file_key) and not (base / spec[file_key]).expanduser().is_file():
                raise ConfigError(f"config key '{key}.{file_key}': file {base / spec[file_key]} does not exist")
    shortcut = spec.get("shortcut")
    if shortcut:
        if spec["kind"] == "photos":
            raise ConfigError(f"config key '{key}.shortcut': kind 'photos' has no training images to plant a shortcut in")
        resolved = {**spec, "root": str((base / spec["root"]).expanduser())} if spec.get("root") else spec
        n_classes = num_classes_of(resolved)
        if shortcut["class"] >= n_classes:
            raise ConfigError(f"config key '{key}.shortcut.class': expected a label index below {n_classes}, got {shortcut['class']}")
        if spec["kind"] == "digits" and shortcut["size"] > 28:
            raise ConfigError(f"config key '{key}.shortcut.size': the digits are 28x28 pixels, a {shortcut['size']} px watermark does not fit")


def _combined_parts(name: str, spec: dict, datasets: dict) -> list[dict]:
    """The resolved specs of a combined dataset's parts (names checked)."""
    key = f"datasets.{name}.parts"
    if len(spec.get("parts") or []) < 2:
        raise ConfigError(f"config key '{key}': a combined dataset joins at least 2 datasets, got {spec['parts']}")
    parts = []
    for i, part in enumerate(spec["parts"]):
        if isinstance(part, dict):  # already resolved (a config resolved twice)
            parts.append(part)
            continue
        if part not in datasets:
            raise ConfigError(f"config key '{key}[{i}]': unknown dataset {part!r}; datasets are {sorted(datasets)}")
        if datasets[part]["kind"] in ("combined", "photos") or datasets[part].get("shortcut"):
            raise ConfigError(f"config key '{key}[{i}]': dataset {part!r} cannot be a part (a combined, photos or shortcut dataset)")
        parts.append(dict(datasets[part]))
    return parts


def _check_model(name: str, spec: dict, datasets: dict, base: Path) -> None:
    from .models import ModelError, get_arch, resolve_preprocess, weights_file

    key = f"models.{name}"
    try:
        get_arch(spec["arch"])
    except ModelError as err:
        raise ConfigError(f"config key '{key}.arch': {err}") from None
    for ref_key in ("train_dataset",):
        if spec[ref_key] is not None and spec[ref_key] not in datasets:
            raise ConfigError(f"config key '{key}.{ref_key}': unknown dataset {spec[ref_key]!r}; defined datasets are {sorted(datasets)}")
    for ds in spec["eval_datasets"]:
        if ds not in datasets:
            raise ConfigError(f"config key '{key}.eval_datasets': unknown dataset {ds!r}; defined datasets are {sorted(datasets)}")
    if spec["weights"] == "train" and spec["train_dataset"] is None:
        raise ConfigError(f"config key '{key}.train_dataset': weights 'train' needs the name of a dataset to train on")
    if not spec["eval_datasets"] and spec["train_dataset"] is None:
        raise ConfigError(f"config key '{key}.eval_datasets': name at least one dataset to evaluate on")
    weights = spec["weights"]
    if weights not in ("train", "random", "packaged"):
        weights = str((base / weights).expanduser())
    try:
        weights_file(spec["arch"], weights)
        resolve_preprocess(spec["arch"], spec["preprocess"])
    except ModelError as err:
        raise ConfigError(f"config key '{key}.weights' / '{key}.preprocess': {err}") from None
    if spec["arch_options"] or spec["tokens"]:
        try:
            _structure_of(spec, datasets)  # builds the model with its options and layout
        except ConfigError:
            raise
        except (ModelError, ValueError) as err:
            raise ConfigError(f"config key '{key}.arch_options' / '{key}.tokens': {err}") from None
    _check_layer_names(spec, datasets, spec["layers"], f"{key}.layers")


@functools.lru_cache(maxsize=None)
def _model_structure(arch: str, num_classes: int, channels: int, size: int | None, options: str = "null", tokens: str = "null") -> dict:
    """The module names of a fresh model of the architecture and, with an input size, the output shape
    of each module called on a size x size input (its last call): `shapes` as the methods read them
    ((C, h, w) maps; a transformer's token layers as their patch map (D, h, w), plus `LAYER.cls` (D,)
    and `LAYER.registers` (D, 1, R) where it has those tokens), `raw` as the module returns them.
    `options` and `tokens` are the JSON of the spec's arch_options and tokens; `layout` the token
    layout the model ends up with (None for a CNN).

    Building the model and the forward pass cost about 2 s with torchvision's import, on every
    Snakemake start (each dry run, each SLURM job), so the result is kept in a JSON file keyed by all
    it depends on: the architecture and its arguments, the torch and torchvision versions and the
    source of conceptscope.models. A file that cannot be read or written is recomputed, never trusted.
    """
    import hashlib
    import importlib.metadata

    from . import models, tokens as token_views, vit
    from .utils import _torchvision_version, cache_dir, write_json

    sources = b"".join(Path(m.__file__).read_bytes() for m in (models, token_views, vit))
    key = {"arch": arch, "num_classes": num_classes, "channels": channels, "size": size, "options": options, "tokens": tokens,
           "torch": importlib.metadata.version("torch"), "torchvision": _torchvision_version(), "models_source": hashlib.sha256(sources).hexdigest()}
    folder = cache_dir()
    path = folder / f"structure-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]}.json" if folder else None
    try:
        cached = json.loads(path.read_text()) if path else None
        if cached and cached.get("key") == key:
            return {"names": cached["names"], "layout": cached["layout"],
                    **{k: {name: tuple(shape) for name, shape in cached[k].items()} for k in ("shapes", "raw")}}
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        pass
    import torch

    from .activations import LayerRecorder

    model = models.build_model(arch, num_classes, channels, options=json.loads(options), tokens=json.loads(tokens)).eval()
    names = models.layer_names(model)
    layout = token_views.token_layout(model)
    shapes, raw = {}, {}
    if size:
        images = torch.zeros(1, channels, size, size)
        recorded = {}
        hooks = [module.register_forward_hook(lambda m, i, out, name=name: recorded.__setitem__(name, out)) for name, module in model.named_modules() if name]
        try:
            with torch.no_grad():
                model(images)
        finally:
            for hook in hooks:
                hook.remove()
        for name, out in recorded.items():
            out = out[0] if isinstance(out, (tuple, list)) else out
            if isinstance(out, torch.Tensor):
                raw[name] = tuple(out.shape[1:])
        shapes = dict(raw)
        if layout is not None:
            views = names + [f"{name}.{view}" for name in names for view in ("cls", "registers")]
            with LayerRecorder(model, views) as recorder, torch.no_grad():
                model(images)
                shapes = {name: tuple(output.shape[1:]) for name, output in recorder.outputs.items()}
            names = names + [name for name in views[len(names):] if name in shapes]
    layout = layout.to_dict() if layout is not None else None
    if path:
        try:
            write_json(path, {"key": key, "names": names, "layout": layout, "shapes": {name: list(shape) for name, shape in shapes.items()},
                              "raw": {name: list(shape) for name, shape in raw.items()}})
        except OSError:
            pass
    return {"names": names, "shapes": shapes, "raw": raw, "layout": layout}


def _structure_of(spec: dict, datasets: dict) -> dict:
    from .models import resolve_preprocess

    preprocess = resolve_preprocess(spec["arch"], spec["preprocess"])
    return _model_structure(spec["arch"], model_num_classes(spec, datasets), preprocess["channels"], preprocess.get("input_size") or None,
                            json.dumps(spec.get("arch_options") or None, sort_keys=True), json.dumps(spec.get("tokens"), sort_keys=True))


def _check_layer_names(spec: dict, datasets: dict, layers: list[str], key: str) -> None:
    """Each layer a module of the model spec's architecture (`logits`, the output, always is; on a
    transformer also a token layer's `.cls` / `.registers` view), and a layer that outputs tokens
    (N, T, D) readable as a patch map: T matches the model's token layout (`tokens`)."""
    from .models import unknown_layer
    from .tokens import TokenLayout

    structure = _structure_of(spec, datasets)
    names, layout = structure["names"], structure["layout"]
    model_key = key.rsplit(".", 1)[0]
    for layer in (layer for layer in layers if layer != "logits"):
        if layer not in names:
            raise ConfigError(f"config key '{key}': {unknown_layer(layer, names)}")
        shape = structure["raw"].get(layer)
        if shape is None or len(shape) != 2:
            continue
        if layout is None:
            raise ConfigError(
                f"config key '{key}': layer {layer!r} outputs tokens {tuple(shape)} (T, D) and the model has no token layout; "
                f"state it as {model_key}.tokens: {{cls: 1, registers: 0, grid: [h, w]}} (T = cls + registers + h x w)"
            )
        n_tokens = TokenLayout.from_config(layout).n_tokens
        if shape[0] != n_tokens:
            where = f"{model_key}.tokens" if spec.get("tokens") else f"{model_key}.tokens (the architecture's own layout)"
            raise ConfigError(
                f"config key '{where}': layout cls {layout['cls']} + registers {layout['registers']} + grid "
                f"{layout['grid'][0]}x{layout['grid'][1]} = {n_tokens} tokens, but layer {layer!r} outputs {shape[0]} tokens "
                f"of dim {shape[1]}; expected cls + registers + h x w = {shape[0]}"
            )


def layer_map_shapes(spec: dict, datasets: dict, layers: list[str]) -> dict[str, tuple[int, ...]] | None:
    """The (C, h, w) maps the layers of a model spec give on its input size; None where the input size
    varies (preprocess.input_size null) and so do the maps."""
    shapes = _structure_of(spec, datasets)["shapes"]
    if not shapes:  # no input size to run the forward pass on
        return None
    return {layer: shapes[layer] for layer in layers}


def nave_layer_sets(config: dict, model: str) -> list[list[str]]:
    """The layer sets NAVE clusters for a model: the configured sets it has every layer of, or each layer alone."""
    sets = config["nave"]["layer_sets"]
    layers = config["models"][model]["layers"]
    if sets is None:
        return [[layer] for layer in layers]
    return [list(s) for s in sets if set(s) <= set(layers)]


def model_num_classes(spec: dict, datasets: dict) -> int:
    """Output classes of a model spec: explicit, else the train dataset's, else ImageNet's 1000."""
    from .data import num_classes_of

    if spec.get("num_classes"):
        return int(spec["num_classes"])
    if spec.get("train_dataset") and spec.get("weights") in ("train", "random"):
        return num_classes_of(datasets[spec["train_dataset"]])
    return 1000


def resolve_config(raw: dict, base_dir: str | Path = ".") -> dict:
    """Validate a raw config fully (schema, names, paths, layers) and return it with defaults filled.

    Relative data and weight paths are resolved against `base_dir` (the working directory).
    """
    config = validate_schema(raw)
    base = Path(base_dir)
    for name, spec in config["datasets"].items():
        _check_dataset(name, raw["datasets"][name], spec, base)
        if spec.get("root"):
            spec["root"] = str((base / spec["root"]).expanduser().resolve())
        for file_key in ("boxes", "labels"):
            if spec.get(file_key):
                spec[file_key] = str((base / spec[file_key]).expanduser().resolve())
    for name, spec in config["datasets"].items():
        if spec["kind"] == "combined":
            spec["parts"] = _combined_parts(name, spec, config["datasets"])
            spec["size"] = spec.get("size") or COMBINED_SIZE
            spec["channels"] = spec.get("channels") or 3
            continue
        given = [key for key in COMBINED_ONLY if raw["datasets"][name].get(key) is not None]
        if given:
            raise ConfigError(f"config key 'datasets.{name}.{given[0]}': only used by kind 'combined', this dataset is {spec['kind']!r}")
    for name, spec in config["models"].items():
        _check_model(name, spec, config["datasets"], base)
        if spec["weights"] not in ("train", "random", "packaged"):
            spec["weights"] = str((base / spec["weights"]).expanduser().resolve())
        if not spec["eval_datasets"]:
            spec["eval_datasets"] = [spec["train_dataset"]]
    from .config_checks import check_methods  # it reads the job selection below

    check_methods(config)
    return config


def explained_pairs(config: dict) -> list[tuple[str, str]]:
    """(dataset, model) pairs whose hidden layers are stored: models with `layers`, on their eval datasets, in config order."""
    return [(ds, m) for m, spec in config["models"].items() for ds in spec["eval_datasets"] if spec["layers"]]


def method_pairs(config: dict, block: str) -> list[tuple[str, str]]:
    """(dataset, model) pairs a method reading the activation store explains (`<block>.models` x
    `<block>.datasets`; a model none of whose layers is among the block's `layers` list is left out)."""
    opts = config[block]
    wanted = opts.get("layers")
    return [(ds, m) for ds, m in explained_pairs(config)
            if (opts["models"] is None or m in opts["models"]) and (opts["datasets"] is None or ds in opts["datasets"])
            and (not isinstance(wanted, list) or set(wanted) & set(config["models"][m]["layers"]))]


def method_jobs(config: dict, block: str) -> list[tuple[str, str, str]]:
    """(dataset, model, layer) such a method runs on (`<block>.layers` picks among each model's layers)."""
    wanted = config[block]["layers"]
    return [(ds, m, layer) for ds, m in method_pairs(config, block) for layer in config["models"][m]["layers"]
            if wanted is None or layer in wanted]


def _block_pairs(config: dict, block: str) -> list[tuple[str, str]]:
    """(dataset, model) pairs of a method with its own forward pass: `<block>.models` x their eval
    datasets (`<block>.datasets` filters)."""
    opts, models = config[block], config["models"]
    return [(ds, m) for m in opts["models"] for ds in models[m]["eval_datasets"] if opts["datasets"] is None or ds in opts["datasets"]]


def dora_pairs(config: dict) -> list[tuple[str, str]]:
    """(dataset, model) pairs DORA analyses: `dora.models` x their eval datasets (`dora.datasets` filters)."""
    return _block_pairs(config, "dora")


def dora_layers(config: dict, model: str) -> list[str]:
    """The layers (module names or `logits`) whose representations DORA analyses for a model."""
    return list(config["dora"]["layers"].get(model, ["logits"]))


def dora_sams_enabled(config: dict, model: str) -> bool:
    """Whether DORA generates s-AMS (and EA_s) for a model's layers: `dora.sams.enabled` and the
    model among `dora.sams.models` (null: every DORA model)."""
    sams = config["dora"]["sams"]
    return bool(sams["enabled"]) and (sams["models"] is None or model in sams["models"])


def cluscam_pairs(config: dict) -> list[tuple[str, str]]:
    """(dataset, model) pairs ClusCAM explains: `cluscam.models` x their eval datasets (`cluscam.datasets` filters)."""
    return _block_pairs(config, "cluscam")


def cluscam_layers(config: dict, model: str) -> list[str]:
    """The layers whose feature maps the CAM methods explain for a model: configured, or its last stored layer."""
    layers = config["cluscam"]["layers"].get(model)
    return list(layers) if layers else config["models"][model]["layers"][-1:]


