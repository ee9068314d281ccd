"""Config validation: defaults, and one clear error naming the key for every kind of mistake."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import yaml

from conceptscope.config import ConfigError, load_schema, resolve_config, validate_schema

from conftest import ROOT, SHARED_DATA


def default_config() -> dict:
    return yaml.safe_load((ROOT / "config.yaml").read_text())


def test_default_config_resolves_with_defaults_filled():
    config = resolve_config(default_config(), base_dir=ROOT)
    assert config["models"]["vgg_shortcut"]["train"]["epochs"] >= 1
    assert config["models"]["vgg_shortcut"]["preprocess"] == {"channels": None, "resize": None, "input_size": None, "mean": None, "std": None}
    assert config["models"]["vgg_shortcut"]["eval_datasets"] == ["digits_shortcut"]
    assert config["datasets"]["digits_shortcut"]["shortcut"]["pattern"] == "checker"
    assert config["datasets"]["digits"]["shortcut"] is None
    assert config["predict"]["top_k"] == 5


def test_register_config_trains_the_default_runs_clean_vit_and_its_register_twin():
    """configs/vit-registers.yaml resolves, its `vit_clean` is the default run's model (same arch,
    options, data and training: the same weights), and the twin differs only in its registers."""
    registers = resolve_config(yaml.safe_load((ROOT / "configs" / "vit-registers.yaml").read_text()), base_dir=ROOT)
    default = resolve_config(default_config(), base_dir=ROOT)
    same = ("arch", "arch_options", "train_dataset", "train", "preprocess")
    assert {k: registers["models"]["vit_clean"][k] for k in same} == {k: default["models"]["vit_clean"][k] for k in same}
    assert registers["seed"] == default["seed"] and registers["datasets"]["digits"] == default["datasets"]["digits"]
    twin = registers["models"]["vit_clean_reg4"]
    assert twin["arch_options"] == {**registers["models"]["vit_clean"]["arch_options"], "registers": 4}
    assert {k: twin[k] for k in same if k != "arch_options"} == {k: registers["models"]["vit_clean"][k] for k in same if k != "arch_options"}
    assert registers["nave"]["models"] == ["vit_clean", "vit_clean_reg4"]


def test_every_schema_key_has_description_and_default():
    schema = load_schema()

    def walk(node, path):
        for name, sub in node.get("properties", {}).items():
            assert sub.get("description"), f"{path}{name} has no description"
            required = node.get("required", [])
            assert "default" in sub or name in required, f"{path}{name} has no default"
            walk(sub, f"{path}{name}.")
        for sub in node.get("$defs", {}).values():
            walk(sub, path)

    walk(schema, "")


def test_snakemake_validate_accepts_resolved_config():
    from snakemake.utils import validate

    config = resolve_config(default_config(), base_dir=ROOT)
    before = copy.deepcopy(config)
    validate(config, str(ROOT / "schemas" / "config.schema.yaml"))
    assert config == before


def _error(raw: dict, base=ROOT) -> str:
    with pytest.raises(ConfigError) as info:
        resolve_config(raw, base_dir=base)
    return str(info.value)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c.update(reslts="x"), ["'<top level>'", "reslts"]),
        (lambda c: c["datasets"]["digits"].update(max_per_clas=3), ["datasets.digits", "max_per_clas", "max_per_class"]),
        (lambda c: c["models"]["vgg_shortcut"].setdefault("train", {}).update(epochs="ten"), ["models.vgg_shortcut.train.epochs", "expected integer", "'ten'"]),
        (lambda c: c["models"]["vgg_shortcut"].setdefault("train", {}).update(epochs=0), ["models.vgg_shortcut.train.epochs", ">= 1"]),
        (lambda c: c["datasets"]["digits"].update(kind="mnist"), ["datasets.digits.kind", "expected one of"]),
        (lambda c: c["datasets"]["digits_shortcut"]["shortcut"].update(fraction=1.5), ["datasets.digits_shortcut.shortcut.fraction", "<= 1"]),
        (lambda c: c["datasets"]["digits_shortcut"]["shortcut"].update(pattern="star"), ["shortcut.pattern", "checker"]),
        (lambda c: c["datasets"]["digits_shortcut"]["shortcut"].update({"class": 10}), ["datasets.digits_shortcut.shortcut.class", "below 10"]),
        (lambda c: c["models"]["vgg_clean"].update(train_dataset="digitz"), ["models.vgg_clean.train_dataset", "digitz", "digits_shortcut"]),
        (lambda c: c["models"]["vgg_clean"].update(eval_datasets=["nope"]), ["models.vgg_clean.eval_datasets", "nope"]),
        (lambda c: c["models"]["vgg_clean"].update(arch="vgg99"), ["models.vgg_clean.arch", "vgg99"]),
        (lambda c: c["models"]["vgg_clean"].update(arch="torchvision:resnet999"), ["models.vgg_clean.arch", "resnet999"]),
        (lambda c: c["models"]["vgg_clean"].update(layers=["features.99"]), ["models.vgg_clean.layers", "features.99"]),
        (lambda c: c["models"]["mobilenet_v2"].update(layers=["features18"]), ["models.mobilenet_v2.layers", "features.18"]),
        (lambda c: c["models"]["vgg_clean"].update(weights="packaged"), ["models.vgg_clean.weights", "no packaged weights"]),
        (lambda c: c["models"]["mobilenet_v2"].update(weights="missing/weights.pth"), ["models.mobilenet_v2.weights", "does not exist"]),
        (lambda c: c["models"]["vgg_clean"].pop("arch"), ["models.vgg_clean", "missing required", "arch"]),
        (lambda c: c["datasets"]["photos"].update(shortcut={"class": 1}), ["datasets.photos.shortcut", "no training images"]),
        (lambda c: c["datasets"]["digits"].update(root="/data"), ["datasets.digits.root", "imagefolder"]),
        (lambda c: c["datasets"].update(inet={"kind": "imagefolder", "root": "no/such/dir"}), ["datasets.inet.root", "does not exist"]),
        (lambda c: c["datasets"].update(inet={"kind": "imagefolder"}), ["datasets.inet.root", "needs the path"]),
        (lambda c: c["models"]["vgg_clean"].update(preprocess={"channels": 2}), ["models.vgg_clean.preprocess.channels", "expected one of"]),
        (lambda c: c["models"].update({"bad name": {"arch": "vgg_small"}}), ["models", "bad name"]),
        (lambda c: c.update(concepts={"models": ["vgg_nope"]}), ["concepts.models[0]", "vgg_nope", "vgg_clean"]),
        (lambda c: c.update(concepts={"crop_pools": ["digits"]}), ["concepts.crop_pools[0]", "'digits'", "eval dataset"]),
        (lambda c: c.update(concepts={"datasets": ["nowhere"]}), ["concepts.datasets[0]", "nowhere"]),
        (lambda c: c.update(concepts={"classes": [10], "models": ["vgg_clean"]}), ["concepts.classes[0]", "10 classes"]),
        (lambda c: c.update(concepts={"max_images": 0}), ["concepts.max_images", ">= 1"]),
        (lambda c: c.update(concepts={"attribution": "lime"}), ["concepts.attribution", "deeplift"]),
        (lambda c: c.update(concepts={"attribution_options": {"noise": 1}}), ["concepts.attribution_options", "noise"]),
        (lambda c: c.update(predict={"splits": ["test"]}), ["concepts.split", "train"]),
        (lambda c: c["models"]["vgg_clean"].update(layers=[]) or c.update(concepts={"models": ["vgg_clean"]}), ["concepts.models[0]", "no `layers`"]),
        (lambda c: c["datasets"].update(tiny={"kind": "imagefolder", "root": ".", "test_dir": None, "train_dir": ".", "labels": "no/such.txt"}), ["datasets.tiny.labels", "does not exist"]),
        (lambda c: c.update(contrast={"models": ["vgg_nope"]}), ["contrast.models[0]", "vgg_nope"]),
        (lambda c: c.update(contrast={"layers": ["layer9"]}), ["contrast.layers[0]", "layer9"]),
        (lambda c: c.update(contrast={"concept_pairs": [[3, 3]]}), ["contrast.concept_pairs[0]", "itself"]),
        (lambda c: c.update(contrast={"concept_pairs": [[0, 10]], "models": ["vgg_clean"]}), ["contrast.concept_pairs[0]", "10 classes"]),
        (lambda c: c.update(contrast={"concept_pairs": [[0, 1, 2]]}), ["contrast.concept_pairs.0", "too long"]),
        (lambda c: c.update(contrast={"classes": [1, 2], "concept_pairs": [[1, 3]]}), ["contrast.concept_pairs[0]", "contrast.classes"]),
        (lambda c: c.update(contrast={"classes": [4]}), ["contrast.classes", "at least two"]),
        (lambda c: c.update(contrast={"cutoff": 1.5}), ["contrast.cutoff", "<= 1"]),
        (lambda c: c.update(contrast={"shift": {"offsets": []}}), ["contrast.shift.offsets"]),
        (lambda c: c.update(predict={"splits": ["test"]}, concepts={"models": []}, contrast={"shift": {"split": "train"}}), ["contrast.split", "train"]),
        (lambda c: c.update(predict={"splits": ["train"]}, concepts={"models": []}, contrast={"models": ["vgg_shortcut"], "split": "train", "shift": {"split": "test"}}), ["contrast.shift.split", "test"]),
        (lambda c: c.update(cladec={"models": ["vgg_nope"]}), ["cladec.models[0]", "vgg_nope"]),
        (lambda c: c.update(cladec={"models": ["mobilenet_v2"]}), ["models.mobilenet_v2.eval_datasets", "'photos'", "training images"]),
        (lambda c: c.update(cladec={"models": ["vgg_clean"], "layers": ["features.3"], "sweep": {"layers": ["features.7"]}}), ["cladec.sweep.layers[0]", "features.7"]),
        (lambda c: c.update(cladec={"models": ["vgg_clean"], "sweep": {"alphas": [0.9, 0.9]}}), ["cladec.sweep.alphas", "repeat"]),
        (lambda c: c.update(cladec={"alpha": 1.5}), ["cladec.alpha", "<= 1"]),
        (lambda c: c.update(cladec={"eval_train": {"epochs": 0}}), ["cladec.eval_train.epochs", ">= 1"]),
        (lambda c: c.update(cladec={"occlusion": {"size": 0}}), ["cladec.occlusion.size"]),
        (lambda c: c.update(nave={"models": ["resnet_nope"]}), ["nave.models[0]", "resnet_nope"]),
        (lambda c: c.update(nave={"models": ["vgg_clean"], "layer_sets": [["features.3", "layer3"]]}), ["nave.layer_sets[0]", "no NAVE model"]),
        (lambda c: c.update(nave={"models": ["vgg_clean"], "layer_sets": [["features.3", "features.3"]]}), ["nave.layer_sets[0]", "repeats"]),
        (lambda c: c.update(nave={"k": [1]}), ["nave.k.0", ">= 2"]),
        (lambda c: c.update(nave={"clustering": ["dbscan"]}), ["nave.clustering.0", "kmeans"]),
        (lambda c: c.update(nave={"strategies": ["outer", "outer"]}), ["nave.strategies", "repeat"]),
        (lambda c: c.update(nave={"classwide": {"clustering": "ward", "max_fit_pixels": 100000}}), ["nave.classwide.max_fit_pixels", "Ward"]),
        (lambda c: c.update(cluscam={"models": ["resnet_nope"]}), ["cluscam.models[0]", "resnet_nope"]),
        (lambda c: c.update(cluscam={"models": ["vgg_clean"], "layers": {"vgg_shortcut": ["features.3"]}}), ["cluscam.layers.vgg_shortcut", "not one of cluscam.models"]),
        (lambda c: c.update(cluscam={"methods": ["gradcam++"]}), ["cluscam.methods.0", "cluscam"]),
        (lambda c: c.update(cluscam={"cluscam": {"drop_fraction": 1.0}}), ["cluscam.cluscam.drop_fraction", "< 1"]),
        (lambda c: c.update(cluscam={"object_size_bins": [0.3, 0.1]}), ["cluscam.object_size_bins", "increase"]),
        # wrong types, unknown names, negative sizes, missing layers, classes and paths (issue: config fuzzing)
        (lambda c: c.update(models=["vgg_shortcut"]), ["'models'", "expected object"]),
        (lambda c: c.update(datasets="digits"), ["'datasets'", "expected object"]),
        (lambda c: c.update(seed="zero"), ["'seed'", "expected integer", "'zero'"]),
        (lambda c: c.update(device="tpu"), ["'device'", "'auto', 'cpu', 'cuda'"]),
        (lambda c: c.update(results=""), ["'results'", "non-empty"]),
        (lambda c: c["nave"].update(kk=3), ["'nave'", "unknown key(s) ['kk']"]),
        (lambda c: c.update(activations={"batch_size": -1}), ["activations.batch_size", ">= 1", "-1"]),
        (lambda c: c.update(crops={"grids": [0]}), ["crops.grids.0", ">= 1"]),
        (lambda c: c.update(crops={"dataset_modes": {"digitz": "masked"}}), ["crops.dataset_modes.digitz", "unknown dataset"]),
        (lambda c: c.update(crops={"dataset_modes": {"digits": "resized"}}), ["crops.dataset_modes.digits", "'masked'"]),
        (lambda c: c.update(concepts={"split": ["train", "val"]}), ["concepts.split.1", "'test_watermarked'"]),
        (lambda c: c.update(contrast={"split": []}), ["contrast.split"]),
        (lambda c: c.update(concepts={"by": "guess"}), ["concepts.by", "'prediction'"]),
        (lambda c: c["dora"].update(n=-2), ["dora.n", ">= 1"]),
        (lambda c: c["cluscam"].update(max_images=0), ["cluscam.max_images", ">= 1"]),
        (lambda c: c["dora"].update(layers={"resnet_shortcut": ["layer9"]}), ["dora.layers.resnet_shortcut", "'layer9' not found", "layer3"]),
        (lambda c: c["cluscam"].update(layers={"resnet_shortcut": ["layer7"]}), ["cluscam.layers.resnet_shortcut", "'layer7' not found"]),
        (lambda c: c.update(contrast={"classes": [0, 42]}), ["contrast.classes[1]", "class 42", "10 classes"]),
        (lambda c: c["datasets"].update(inet={"kind": "imagefolder", "root": "../shared/data/imagenette", "boxes": "no/such.txt"}),
         ["datasets.inet.boxes", "does not exist"]),
        (lambda c: c["datasets"]["digits"].update(max_per_class=-5), ["datasets.digits.max_per_class", ">= 1"]),
        (lambda c: c["datasets"]["digits_shortcut"]["shortcut"].update(size=100), ["datasets.digits_shortcut.shortcut.size", "28x28"]),
        (lambda c: c.update(predict={"splits": ["validation"]}), ["predict.splits.0", "'validation'"]),
        (lambda c: c["models"]["resnet_shortcut"].update(selection={"split": "val"}), ["models.resnet_shortcut.selection.split", "'val'"]),
        (lambda c: c["models"]["vgg_clean"].update(layers="features.3"), ["models.vgg_clean.layers", "expected array"]),
        (lambda c: c["models"]["vgg_clean"].update(train={"lr": -0.1}), ["models.vgg_clean.train.lr", "> 0"]),
        (lambda c: c["cladec"].update(layers=["layer3"]), ["cladec.layers[0]", "'layer3'", "vgg_shortcut"]),
        (lambda c: c.update(index={"type": "annoy"}), ["index.type", "'annoy'", "hnsw"]),
        (lambda c: c["concepts"].update(n_concepts=0), ["concepts.n_concepts", ">= 1"]),
        # K larger than what there is to cluster: a layer's pixels (NAVE) or its feature maps (ClusCAM)
        (lambda c: c.update(nave={"models": ["resnet_shortcut"], "layer_sets": [["layer3"]], "k": [5, 60]}),
         ["nave.k", "K=60", "7x7 = 49 pixels", "'resnet_shortcut'", "K <= 49"]),
        (lambda c: c.update(nave={"models": ["resnet_shortcut"], "layer_sets": [["layer2", "layer3"]], "resolution": 2}), ["nave.k", "2x2 = 4 pixels"]),
        (lambda c: c["cluscam"].update(cluscam={"n_clusters": 200}), ["cluscam.cluscam.n_clusters", "K=200", "128 feature maps", "'layer3'"]),
        (lambda c: c["cluscam"].update(sweep={"n_clusters": [2, 500]}), ["cluscam.sweep.n_clusters", "K=500", "K <= 128"]),
        (lambda c: c["dora"]["sams"].update(max_representations=2), ["dora.sams.max_representations", ">= 3"]),
        (lambda c: c["dora"]["sams"].update(models=["resnet_shortcut", "vgg_clean"]), ["dora.sams.models", "['vgg_clean']", "not DORA models", "mobilenet_v2"]),
        (lambda c: c["dora"].update(atlas={"distance": "ea_s_pairwise"}), ["dora.atlas.distance", "s-AMS of every DORA model", "dora.sams.models: null"]),
        (lambda c: c.update(threads=0), ["'threads'", ">= 1"]),
        # DORA's known anomalies are class names of the dataset (checked against its label space, not prepared)
        (lambda c: c["dora"].update(anomaly_classes={"photos": ["dalmatian", "bull mastif"]}),
         ["dora.anomaly_classes.photos[1]", "'bull mastif'", "1000 classes", "did you mean", "'bull mastiff'"]),
        (lambda c: c["dora"].update(anomaly_classes={"digits": ["3", "three"]}), ["dora.anomaly_classes.digits[1]", "'three'", "10 classes"]),
        (lambda c: c["dora"].update(anomaly_classes={"digitz": ["3"]}), ["dora.anomaly_classes.digitz", "unknown dataset", "digits_shortcut"]),
        (lambda c: c["datasets"].update(inet={"kind": "imagefolder", "root": "../shared/data/imagenette"})
         or c["dora"].update(anomaly_classes={"inet": ["tench"]}), ["dora.anomaly_classes.inet[0]", "'tench'", "n01440764"]),
        # per-dataset splits of the concept methods: known datasets, and splits each explained dataset has
        (lambda c: c["concepts"].update(dataset_splits={"digitz": "train"}), ["concepts.dataset_splits.digitz", "unknown dataset"]),
        (lambda c: c["contrast"].update(split=["train", "test_watermarked"], dataset_splits={}), ["contrast.split", "'photos'", "['train', 'test_watermarked']",
                                                             "contrast.dataset_splits.photos"]),
        (lambda c: c["concepts"]["dataset_splits"].update(photos="train"), ["concepts.dataset_splits.photos", "no images in split(s) ['train']"]),
        # DORA reads a class's logit: a 10-output model has none for ImageNet's 1000 classes
        (lambda c: c["models"]["resnet_shortcut"].update(eval_datasets=["digits_shortcut", "photos"])
         or c["dora"]["layers"].update(resnet_shortcut=["layer3", "logits"]),
         ["dora.layers.resnet_shortcut", "10 outputs and the dataset 1000 classes", "one output per class"]),
        # a transformer's token layout that does not fit its token layers' token count
        (lambda c: c["models"].update(vit={"arch": "torchvision:vit_b_16", "weights": "random", "eval_datasets": ["photos"],
                                          "layers": ["encoder.layers.encoder_layer_0"], "tokens": {"grid": [16, 16]}}),
         ["models.vit.tokens", "'encoder.layers.encoder_layer_0'", "outputs 197 tokens", "= 257 tokens"]),
        (lambda c: c["models"].update(vit={"arch": "vit_small", "train_dataset": "digits", "layers": ["blocks.1"],
                                          "tokens": {"cls": 1, "registers": 2, "grid": [7, 7]}}),
         ["models.vit.tokens", "'blocks.1'", "outputs 50 tokens", "= 52 tokens"]),
        (lambda c: c["models"].update(vit={"arch": "vit_small", "train_dataset": "digits", "layers": ["blocks.1.clss"]}),
         ["models.vit.layers", "'blocks.1.clss'", "blocks.1.cls"]),
        (lambda c: c["models"].update(vit={"arch": "vit_small", "train_dataset": "digits", "layers": ["blocks.1"],
                                          "arch_options": {"patch": 4}}),
         ["models.vit", "arch_options ['patch']", "patch_size"]),
    ],
)
def test_bad_config_names_key_and_expectation(mutate, expected):
    raw = default_config()
    mutate(raw)
    message = _error(raw)
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "\n" not in message


def test_imagefolder_paths_resolved_against_base_dir(imagenette_root):
    raw = {"datasets": {"inet": {"kind": "imagefolder", "root": "data/imagenette", "label_map": "imagenet"}}}
    config = resolve_config(raw, base_dir=SHARED_DATA.parent)
    assert config["datasets"]["inet"]["root"] == str(imagenette_root.resolve())
    missing_split = {"datasets": {"inet": {"kind": "imagefolder", "root": str(imagenette_root), "test_dir": "test"}}}
    assert "datasets.inet.test_dir" in _error(missing_split)


def test_schema_rejects_non_mapping():
    with pytest.raises(ConfigError, match="mapping"):
        validate_schema(["not", "a", "mapping"])


@pytest.mark.parametrize("mutate, key", [
    (lambda c: c["models"]["vgg_clean"].update(layers=["features.42"]), "models.vgg_clean.layers"),
    (lambda c: c["dora"].update(layers={"resnet_shortcut": ["layer9"]}), "dora.layers.resnet_shortcut"),
    (lambda c: c["datasets"]["digits_shortcut"]["shortcut"].update(size=100), "datasets.digits_shortcut.shortcut.size"),
    (lambda c: c["nave"].update(k=[5, 500]), "nave.k"),
])
def test_snakemake_stops_before_any_job_with_one_clear_message(tmp_path, mutate, key):
    raw = default_config()
    raw["results"] = str(tmp_path / "results")
    mutate(raw)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--configfile", "bad.yaml", "--cores", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert f"invalid configuration: config key '{key}'" in output, output[-2000:]
    assert not (tmp_path / "results").exists()
    # nothing but Snakemake's own run log was written
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert [p for p in written if not p.startswith(".snakemake/log/")] == ["bad.yaml"]


def test_model_structures_are_cached_exactly_and_spare_torchvision(tmp_path, monkeypatch):
    """The config check reads module names and map shapes from a cache: what it reads back equals a
    freshly built model's (names, and each module's output shape on a forward pass), a new process with
    the cache warm resolves a config with a torchvision model without importing torchvision, and a
    file whose key does not match (another torch, say) is recomputed, not trusted."""
    import json
    import subprocess
    import sys

    import torch

    from conceptscope import config as cfg
    from conceptscope.activations import LayerRecorder
    from conceptscope.models import build_model, layer_names

    cache = tmp_path / "cache"
    monkeypatch.setenv("CONCEPTSCOPE_CACHE", str(cache))
    cfg._model_structure.cache_clear()
    try:
        for arch, classes, channels, size in [("vgg_small", 10, 1, 28), ("resnet_small", 10, 1, 28), ("mobilenet_v2", 1000, 3, 224)]:
            computed = cfg._model_structure(arch, classes, channels, size)
            cfg._model_structure.cache_clear()
            assert cfg._model_structure(arch, classes, channels, size) == computed, arch  # read back from the file
            model = build_model(arch, classes, channels).eval()
            assert computed["names"] == layer_names(model)
            chosen = computed["names"][:: max(1, len(computed["names"]) // 7)]
            with LayerRecorder(model, chosen) as recorder, torch.no_grad():
                model(torch.zeros(1, channels, size, size))
            assert {name: computed["shapes"][name] for name in chosen} == {name: tuple(out.shape[1:]) for name, out in recorder.outputs.items()}
        files = sorted(cache.glob("structure-*.json"))
        assert len(files) == 3

        # a warm cache: a new process resolves the tiny config (MobileNetV2 among its models) without torchvision
        code = ("import sys, yaml; from conceptscope.config import resolve_config; "
                f"resolve_config(yaml.safe_load(open({str(ROOT / 'configs' / 'test.yaml')!r}))); print('torchvision' in sys.modules)")
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "CONCEPTSCOPE_CACHE": str(cache)})
        assert run.returncode == 0 and run.stdout.strip() == "False", run.stdout + run.stderr[-2000:]

        # a file written for another torch is not used: the structure is computed again (and correct)
        entry = json.loads(files[0].read_text())
        entry["key"]["torch"], entry["names"] = "0.0.1", ["not", "a", "model"]
        files[0].write_text(json.dumps(entry))
        cfg._model_structure.cache_clear()
        arch = entry["key"]["arch"]
        again = cfg._model_structure(arch, entry["key"]["num_classes"], entry["key"]["channels"], entry["key"]["size"])
        assert again["names"] == layer_names(build_model(arch, entry["key"]["num_classes"], entry["key"]["channels"]))
        assert json.loads(files[0].read_text())["key"]["torch"] != "0.0.1"  # rewritten
    finally:
        cfg._model_structure.cache_clear()
