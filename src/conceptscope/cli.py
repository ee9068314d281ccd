"""`conceptscope`: look up what to put in config.yaml, and inspect what the pipeline wrote.

    conceptscope models                      # architectures valid as `models.<name>.arch`
    conceptscope layers mobilenet_v2 --filter features.1   # layer names for `layers:`, shapes, >= 0
    conceptscope layers torchvision:vit_b_16                # a transformer: token layers (T, D), their (D, h, w) maps
    conceptscope layers vit_small --arch-option registers=4 # an arch built with `arch_options`
    conceptscope datasets                    # dataset kinds for `datasets.<name>.kind`
    conceptscope store results/activations/photos/mobilenet_v2/features.18.zarr
    conceptscope config --configfile config.yaml

User errors (unknown arch, missing file, invalid config, unfinished store) print one line on stderr
and exit with status 2; nothing is downloaded and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from .discovery import CliError, human_size, input_shape_text, dataset_kinds, layer_table, store_info

EXIT_USER_ERROR = 2


def _user_errors() -> tuple[type[BaseException], ...]:
    from .config import ConfigError
    from .models import ModelError
    from .store import StoreError

    return (CliError, ConfigError, ModelError, StoreError, FileNotFoundError)


def _table(rows: Sequence[Sequence[Any]], indent: str = "") -> str:
    """Rows of cells as left-aligned columns (the last column is not padded)."""
    rows = [[str(cell) for cell in row] for row in rows]
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(max(len(r) for r in rows))]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) if i < len(row) - 1 else cell for i, cell in enumerate(row)]
        lines.append(indent + "  ".join(cells).rstrip())
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# models


def cmd_models(args: argparse.Namespace) -> int:
    import torchvision

    from .models import ARCHS, ModelError

    rows = [("arch", "input", "packaged weights", "description")]
    for name, arch in ARCHS.items():
        if arch.packaged_weights is None:
            weights = "no"
        else:
            try:
                arch.packaged_weights()
                weights = "yes"
            except ModelError:
                weights = "yes (package not installed)"
        rows.append((name, input_shape_text(arch.preprocess), weights, arch.description))
    print(_table(rows))
    names = torchvision.models.list_models(module=torchvision.models)
    print()
    print(f"torchvision:<name>  any of torchvision's {len(names)} classification models, e.g. torchvision:resnet18 "
          f"(input {input_shape_text(ARCHS['mobilenet_v2'].preprocess)}; no packaged weights)")
    if args.torchvision:
        print("  " + "\n  ".join(", ".join(names[i : i + 8]) for i in range(0, len(names), 8)))
    else:
        print("  list them with: conceptscope models --torchvision")
    print("weights: train (on train_dataset) | random | packaged | a path to a state-dict file")
    return 0


# --------------------------------------------------------------------------------------------
# layers


def _arch_options(pairs: Sequence[str] | None) -> dict:
    """`KEY=VALUE` strings -> {KEY: VALUE}, each value read as YAML (as config.yaml's arch_options: `4` is a number)."""
    import yaml

    options = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--arch-option expects KEY=VALUE (e.g. registers=4), got {pair!r}")
        try:
            options[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise CliError(f"--arch-option {pair!r}: the value is not valid YAML") from None
    return options


def cmd_layers(args: argparse.Namespace) -> int:
    options = _arch_options(args.arch_option)
    rows, info, layout = layer_table(args.arch, num_classes=args.num_classes, channels=args.channels, input_size=args.input_size,
                                     options=options)
    if args.kind == "conv":  # what activation stores hold: (C, h, w) maps, a transformer's token layers read as maps
        rows = [r for r in rows if r["shape"] is not None and len(r["shape"]) == 3 or r.get("tokens")]
    if args.filter:
        rows = [r for r in rows if args.filter in r["layer"]]
    if args.json:
        listing = {"arch": args.arch, "input": info, "layers": rows}
        if options or layout is not None:
            listing.update(arch_options=options, layout=layout)
        print(json.dumps(listing, indent=1))
        return 0
    size = info["input_size"]
    what = "layers"
    if args.kind == "conv":
        what = "layers with (C, h, w) maps" + (" or token maps" if layout is not None else "")
    print(f"{args.arch}: input {info['channels']} x {size} x {size}, {info['num_classes']} classes; "
          f"{len(rows)} {what}" + (f" matching {args.filter!r}" if args.filter else ""))
    if options:
        print("arch options: " + ", ".join(f"{key}={value}" for key, value in options.items()))
    if layout is not None:
        from .tokens import TokenLayout

        print(f"tokens: {TokenLayout.from_config(layout).describe()}")
    if not rows:
        return 0
    table = [("layer", "type", "output", *(("map",) if layout is not None else ()), ">= 0", "")]
    for r in rows:
        shape = "not called" if r["shape"] is None else str(tuple(r["shape"]))
        nonneg = "" if r["nonneg"] is None else ("yes" if r["nonneg"] else "no")
        notes = (["overwritten in place later"] if r["inplace_modified"] else []) + ([f"runs {r['calls']} times"] if r["calls"] > 1 else [])
        if layout is not None:
            notes = [f"{view.rpartition('.')[2]} {tuple(view_shape)}" for view, view_shape in r["views"].items()] + notes
            map_cell = ("" if r["map"] is None else str(tuple(r["map"])),)
        table.append((r["layer"], r["type"], shape, *(map_cell if layout is not None else ()), nonneg, "; ".join(notes)))
    print(_table(table))
    if layout is not None and any(r.get("tokens") for r in rows):
        h, w = layout["grid"]
        views = [view for view, n in (("LAYER.cls the class token (D,)", layout["cls"]),
                                      ("LAYER.registers the registers (D, 1, R)", layout["registers"])) if n]
        print(f"map: how the methods read a token layer (`layers: [LAYER]`): its {h}x{w} patch tokens as a (D, {h}, {w}) map, "
              "the other tokens dropped" + (f"; {', '.join(views)}" if views else ""))
    print(">= 0: the layer's output is non-negative (it ends in a ReLU); the concepts and contrast methods (NMF) need that"
          + ("; for a token layer: its patch map" if layout is not None else ""))
    if any(r["inplace_modified"] for r in rows):
        print("overwritten in place later: a following in-place op (e.g. ReLU6(inplace=True)) changes this output "
              "after it is computed; the activation store keeps a copy, a hook of your own must clone it")
    if any(r["calls"] > 1 for r in rows):
        print("runs N times: the module is reused in the forward pass; a stored map holds its last call")
    return 0


# --------------------------------------------------------------------------------------------
# datasets


def cmd_datasets(args: argparse.Namespace) -> int:
    import textwrap

    kinds = dataset_kinds()
    width = max(len(k["kind"]) for k in kinds) + 2
    for k in kinds:
        lines = textwrap.wrap(k["description"], 100 - width) or [""]
        print(k["kind"].ljust(width) + lines[0])
        for line in lines[1:]:
            print(" " * width + line)
        print(" " * width + "own keys: " + (", ".join(k["keys"]) if k["keys"] else "none"))
    print(f"every kind: {', '.join(kinds[0]['common_keys'])} (schemas/config.schema.yaml has each key's meaning and default)")
    return 0


# --------------------------------------------------------------------------------------------
# store


def cmd_store(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.is_dir() and not (path / "zarr.json").exists() and any(path.glob("*.zarr")):
        stores = sorted(path.glob("*.zarr"))  # a folder of stores: one line each
        rows = [("store", "kind", "rows", "main array", "dtype")]
        for sub in stores:
            try:
                info = store_info(sub)
            except _user_errors() as err:
                rows.append((sub.name, f"error: {err}", "", "", ""))
                continue
            main = next(iter(n for n in ("activations", "vectors") if n in info["arrays"]), next(iter(info["arrays"]), ""))
            arr = info["arrays"].get(main, {"shape": "", "dtype": ""})
            rows.append((sub.name, info["kind"], info.get("rows", ""), f"{main} {tuple(arr['shape'])}", arr["dtype"]))
        print(_table(rows))
        return 0
    info = store_info(path)
    if args.json:
        print(json.dumps(info, indent=1, default=str))
        return 0
    attrs = info["attrs"]
    print(f"store     {info['path']}")
    print(f"kind      {info['kind']} (complete)")
    counts = [f"{info['rows']} rows"] if "rows" in info else []
    counts += [f"{info[k]} {k}" for k in ("images", "classes") if k in info]
    counts += [info["per_class"]] if "per_class" in info else []
    if counts:
        print(f"rows      {', '.join(counts)}")
    print(f"on disk   {human_size(info['bytes_on_disk'])}")
    print("arrays")
    print(_table([(name, str(tuple(a["shape"])), a["dtype"], f"chunks {tuple(a['chunks'])}", a["compressors"])
                  for name, a in info["arrays"].items()], indent="  "))
    print("provenance")
    skip = {"kind", "complete", "n_rows"}
    rows = [(f"{key}:", json.dumps(value, default=str) if isinstance(value, (dict, list)) else value)
            for key, value in attrs.items() if key not in skip and key != "versions"]
    if "versions" in attrs:
        rows.append(("versions:", ", ".join(f"{k} {v}" for k, v in attrs["versions"].items())))
    print(_table(rows, indent="  "))
    return 0


# --------------------------------------------------------------------------------------------
# config


def jobs_by_method(config: dict) -> dict[str, list[tuple[str, str, list[str]]]]:
    """(dataset, model, layers) each method block of a resolved config runs on (the rules' own selection)."""
    from .config import cluscam_layers, cluscam_pairs, dora_layers, dora_pairs, method_jobs, method_pairs, nave_layer_sets

    out = {}
    for block in ("concepts", "contrast", "cladec"):
        jobs = method_jobs(config, block)
        out[block] = [(ds, m, [layer for d, n, layer in jobs if (d, n) == (ds, m)]) for ds, m in method_pairs(config, block)]
    out["nave"] = [(ds, m, ["+".join(s) for s in nave_layer_sets(config, m)]) for ds, m in method_pairs(config, "nave")]
    out["dora"] = [(ds, m, dora_layers(config, m)) for ds, m in dora_pairs(config)]
    out["cluscam"] = [(ds, m, cluscam_layers(config, m)) for ds, m in cluscam_pairs(config)]
    return out


def _describe_dataset(spec: dict) -> str:
    text = spec["kind"]
    if spec["kind"] == "imagefolder":
        text += f" {spec['root']}"
    if spec["kind"] == "combined":
        text += " of " + " + ".join(p["kind"] if isinstance(p, dict) else str(p) for p in spec["parts"])
    if spec.get("max_per_class"):
        text += f", at most {spec['max_per_class']} per class"
    if spec.get("shortcut"):
        s = spec["shortcut"]
        text += f"; shortcut: {s['pattern']} {s['size']} px on {s['fraction']:.0%} of class {s['class']}'s training images"
    return text


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from .config import ConfigError, resolve_config

    path = Path(args.configfile)
    if not path.is_file():
        raise CliError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise CliError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
    try:
        config = resolve_config(raw if raw is not None else {}, base_dir=Path.cwd())
    except ConfigError as err:
        raise CliError(f"{path}: {err}") from None
    if args.full:
        print(yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=120), end="")
        return 0
    print(f"{path}: valid")
    print(f"results: {config['results']}   device: {config['device']}   seed: {config['seed']}")
    print("datasets")
    print(_table([(name, _describe_dataset(spec)) for name, spec in config["datasets"].items()], indent="  ") or "  (none)")
    print("models")
    rows = []
    for name, spec in config["models"].items():
        weights = f"train on {spec['train_dataset']}" if spec["weights"] == "train" else spec["weights"]
        rows.append((name, spec["arch"], f"weights: {weights}", f"eval: {', '.join(spec['eval_datasets'])}",
                     f"layers: {', '.join(spec['layers']) or '-'}"))
    print(_table(rows, indent="  ") or "  (none)")
    print("methods (dataset / model: layers)")
    rows = []
    for block, jobs in jobs_by_method(config).items():
        if not jobs:
            rows.append((block, "-"))
        for i, (ds, m, layers) in enumerate(jobs):
            rows.append((block if i == 0 else "", f"{ds} / {m}: {', '.join(layers)}"))
    print(_table(rows, indent="  "))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Exit 0 when every table and every other output of the two runs is identical (timings aside), 1 otherwise."""
    from .compare import TIMING_COLUMNS, UNCOMPARED_FOLDERS, compare_outputs, compare_tables

    tables = compare_tables(args.first, args.second)
    for name in tables["tables"]:
        print(f"  {'DIFFERENT' if name in tables['different'] else 'identical'}  {name}"
              + (f": {tables['different'][name]}" if name in tables["different"] else ""))
    outputs = compare_outputs(args.first, args.second) if (Path(args.first) / "tables").is_dir() else None
    for key, label in (("only_first", args.first), ("only_second", args.second)):
        for name in tables[key] + [n for n in (outputs or {}).get(key, []) if not n.startswith("tables/")]:
            print(f"  ONLY IN   {label}: {name}")
    for name, why in (outputs or {}).get("different", {}).items():
        if not name.startswith("tables/"):  # the tables are listed above
            print(f"  DIFFERENT {name}: {why}")
    same = not any(r[k] for r in filter(None, (tables, outputs)) for k in ("different", "only_first", "only_second"))
    print(f"{len(tables['tables']) - len(tables['different'])} of {len(tables['tables'])} tables identical "
          f"({tables['values']} values compared exactly; timing columns {', '.join(sorted(TIMING_COLUMNS))} left out)")
    if outputs:
        print(f"{len(outputs['files']) - len(outputs['different'])} of {len(outputs['files'])} output files identical "
              f"(bytes, or content without timings; {'/, '.join(UNCOMPARED_FOLDERS)}/ left out)")
    print("the runs are identical" if same else "the runs differ")
    return 0 if same else 1


# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conceptscope",
        description="Look up architectures, layers and dataset kinds for config.yaml; inspect stores the pipeline wrote.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("models", help="architectures valid as models.<name>.arch")
    p.add_argument("--torchvision", action="store_true", help="also list the torchvision model names")
    p.set_defaults(run=cmd_models)

    p = sub.add_parser("layers", help="layer names of an architecture (for `layers:`), output shapes, non-negativity")
    p.add_argument("arch", help="an arch name, e.g. mobilenet_v2, vgg_small, torchvision:resnet18")
    p.add_argument("--kind", choices=("conv", "all"), default="conv",
                   help="conv (default): layers with (C, h, w) maps, what activation stores hold (a transformer's token layers "
                        "included, read as (D, h, w) patch maps); all: every named module")
    p.add_argument("--filter", metavar="SUBSTR", help="only layer names containing SUBSTR")
    p.add_argument("--input-size", type=int,
                   help="input side in pixels (default: the arch's, as preprocess.input_size, or --arch-option image_size)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="input channels (default: the arch's, as preprocess.channels)")
    p.add_argument("--num-classes", type=int, help="output classes (default: 10 for the small nets, 1000 otherwise)")
    p.add_argument("--arch-option", action="append", metavar="KEY=VALUE",
                   help="an architecture option, as models.<name>.arch_options (repeatable), e.g. registers=4 for vit_small")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=cmd_layers)

    p = sub.add_parser("datasets", help="dataset kinds valid as datasets.<name>.kind")
    p.set_defaults(run=cmd_datasets)

    p = sub.add_parser("store", help="shape, chunks and provenance of an activation / crop store (or a folder of them)")
    p.add_argument("path", help="a .zarr store written by the pipeline, e.g. results/activations/photos/mobilenet_v2/features.18.zarr")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=cmd_store)

    p = sub.add_parser("config", help="validate a config and show what the pipeline will run")
    p.add_argument("--configfile", default="config.yaml", help="config file (default: config.yaml); relative paths in it are taken from the working directory")
    p.add_argument("--full", action="store_true", help="print the whole resolved config (every default filled in) as YAML")
    p.set_defaults(run=cmd_config)

    p = sub.add_parser("compare", help="are two runs' tables and outputs identical? (reproducibility; exit 1 when not)")
    p.add_argument("first", help="a results folder, e.g. results (or a tables/ folder: the tables only)")
    p.add_argument("second", help="the other run's results folder")
    p.set_defaults(run=cmd_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except _user_errors() as err:
        message = str(err) if not isinstance(err, FileNotFoundError) else f"{err.strerror}: {err.filename}"
        print(f"conceptscope {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # e.g. `conceptscope layers ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
