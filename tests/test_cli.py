"""The `conceptscope` command: real architectures, real digit stores written by the library's writers."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import yaml

from conceptscope.activations import extract_activations, select_images
from conceptscope.cli import main
from conceptscope.data import PreparedDataset, prepare_dataset
from conceptscope.models import build_model, build_transform, resolve_preprocess
from conceptscope.store import RowStoreWriter, provenance

from conftest import digits_spec


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def digit_stores(tmp_path_factory):
    """Activation stores of two vgg_small layers on 20 real test digits (2 per class), as the pipeline lays them out."""
    root = tmp_path_factory.mktemp("cli")
    prepare_dataset(digits_spec(max_per_class=4), root / "data" / "digits", "digits")
    data = PreparedDataset(root / "data" / "digits")
    preprocess = resolve_preprocess("vgg_small", {})
    rows = select_images(data.split("test"), per_class=2)
    out = root / "activations" / "digits" / "vgg"
    extract_activations(build_model("vgg_small", 10, 1, seed=0), data, rows, ["features.3", "features.5"], build_transform(preprocess), out,
                        chunk_images=8, progress=False, attrs={"dataset": "digits", "model": "vgg", "preprocess": preprocess})
    return out


def test_models_lists_the_registry(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert {"vgg_small", "resnet_small", "mobilenet_v2", "torchvision:<name>"} <= set(lines)
    assert "1 x 28 x 28" in lines["vgg_small"] and "3 x 224 x 224" in lines["mobilenet_v2"]
    assert " yes " in lines["mobilenet_v2"] and " no " in lines["vgg_small"]  # packaged weights


def test_mobilenet_v2_layers_shapes_and_non_negativity(capsys):
    code, out, _ = run(capsys, "layers", "mobilenet_v2", "--kind", "all", "--json")
    assert code == 0
    listing = json.loads(out)
    by_name = {r["layer"]: r for r in listing["layers"]}
    assert listing["input"]["input_size"] == 224 and listing["input"]["num_classes"] == 1000
    assert by_name["features.18"]["shape"] == [1280, 7, 7] and by_name["features.18"]["nonneg"]
    assert by_name["features.13.conv.0"]["shape"] == [576, 14, 14] and by_name["features.13.conv.0"]["nonneg"]
    assert by_name["features.17"]["nonneg"] is False  # a linear bottleneck: the concepts method refuses it
    assert by_name["classifier.1"]["shape"] == [1000]
    # torchvision's ReLU6(inplace=True) overwrites the BatchNorm output that a hook records
    assert by_name["features.18.1"]["inplace_modified"] and by_name["features.18.1"]["nonneg"] is False
    assert not by_name["features.18"]["inplace_modified"]


def test_small_net_layers_conv_and_all(capsys):
    code, out, _ = run(capsys, "layers", "resnet_small", "--filter", "layer3.1")
    assert code == 0 and out.startswith("resnet_small: input 1 x 28 x 28, 10 classes; 8 layers with (C, h, w) maps matching 'layer3.1'")
    table = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:] if line.startswith("layer3")}
    assert table["layer3.1"] == ["BasicBlock", "(128,", "7,", "7)", "yes"]
    assert table["layer3.1.bn2"] == ["BatchNorm2d", "(128,", "7,", "7)", "no"]
    code, out, _ = run(capsys, "layers", "resnet_small", "--json")
    layers = {r["layer"]: r for r in json.loads(out)["layers"]}
    assert code == 0 and "fc" not in layers  # --kind conv (default): maps only
    assert layers["layer3"]["shape"] == [128, 7, 7] and layers["layer3"]["nonneg"]
    assert layers["layer1.0.bn2"]["nonneg"] is False
    code, out, _ = run(capsys, "layers", "vgg_small", "--kind", "all", "--json")
    layers = {r["layer"]: r for r in json.loads(out)["layers"]}
    assert layers["fc"]["shape"] == [256] and layers["fc"]["nonneg"] and layers["classifier"]["nonneg"] is False
    assert layers["features.7"]["shape"] == [512, 1, 1]


def test_vit_b_16_layers_list_the_encoder_blocks_as_token_maps(capsys):
    code, out, _ = run(capsys, "layers", "torchvision:vit_b_16")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("torchvision:vit_b_16: input 3 x 224 x 224, 1000 classes;")
    assert lines[1] == "tokens: 1 class + 0 register + 14x14 patch tokens = 197"
    table = {line.split()[0]: line.split()[1:] for line in lines[3:] if line.startswith(("encoder", "conv_proj"))}
    blocks = [name for name in table if name.startswith("encoder.layers.encoder_layer_") and name.count(".") == 2]
    assert blocks == [f"encoder.layers.encoder_layer_{k}" for k in range(12)]  # listed by default (--kind conv)
    for name in blocks:  # raw output (T, D), map (D, h, w), >= 0, the class-token view
        assert table[name] == ["EncoderBlock", "(197,", "768)", "(768,", "14,", "14)", "no", "cls", "(768,)"]
    assert table["encoder.layers.encoder_layer_3.mlp.0"][1:6] == ["(197,", "3072)", "(3072,", "14,", "14)"]
    assert table["conv_proj"] == ["Conv2d", "(768,", "14,", "14)", "(768,", "14,", "14)", "no"]  # a conv map: no token views
    assert "heads.head" not in out  # (1000,) logits: no map
    assert "14x14 patch tokens as a (D, 14, 14) map" in out and "LAYER.registers" not in out


def test_vit_small_layers_with_registers_as_json(capsys):
    code, out, _ = run(capsys, "layers", "vit_small", "--arch-option", "registers=4", "--arch-option", "depth=2", "--json")
    assert code == 0
    listing = json.loads(out)
    assert listing["arch_options"] == {"registers": 4, "depth": 2}
    assert listing["layout"] == {"cls": 1, "registers": 4, "grid": [7, 7], "n_tokens": 54}
    layers = {r["layer"]: r for r in listing["layers"]}
    assert "blocks.2" not in layers and "head" not in layers  # depth 2; logits are no map
    block = layers["blocks.1"]
    assert block["shape"] == block["tokens"] == [54, 64] and block["map"] == [64, 7, 7] and block["nonneg"] is False
    assert block["views"] == {"blocks.1.cls": [64], "blocks.1.registers": [64, 1, 4]}
    act = layers["blocks.1.mlp.act"]
    assert act["tokens"] == [54, 128] and act["map"] == [128, 7, 7] and act["nonneg"] is True  # the ReLU MLP: NMF can read it
    assert layers["patch_embed"]["tokens"] is None and layers["patch_embed"]["map"] == [64, 7, 7] and layers["patch_embed"]["views"] == {}

    code, out, err = run(capsys, "layers", "vit_small", "--arch-option", "patch_size=5")
    assert code == 2 and out == "" and "patch_size 5 does not divide image_size 28" in err
    code, _, err = run(capsys, "layers", "vit_small", "--arch-option", "registers")
    assert code == 2 and "KEY=VALUE" in err
    code, _, err = run(capsys, "layers", "vgg_small", "--arch-option", "registers=4")
    assert code == 2 and "takes no arch_options" in err


def test_unknown_arch_is_a_one_line_error(capsys):
    code, out, err = run(capsys, "layers", "vgg_large")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "'vgg_large'" in err and "vgg_small" in err and "Traceback" not in err


def test_datasets_lists_the_schema_kinds(capsys):
    code, out, _ = run(capsys, "datasets")
    assert code == 0
    starts = [line.split()[0] for line in out.splitlines() if line and not line.startswith(" ")]
    assert starts[:4] == ["digits", "photos", "imagefolder", "combined"]
    assert "own keys: root, train_dir, test_dir, label_map, boxes, labels" in out
    assert "own keys: parts, size, channels" in out


def test_store_shows_shape_chunks_images_and_provenance(capsys, digit_stores):
    path = digit_stores / "features.3.zarr"
    code, out, _ = run(capsys, "store", str(path))
    assert code == 0
    assert "kind      activations (complete)" in out
    assert "20 rows, 20 images, 10 classes" in out
    assert "activations  (20, 128, 4, 4)  float32  chunks (8, 128, 4, 4)  zstd 1" in out
    assert "layer:       features.3" in out and "model:       vgg" in out and "torch 2." in out

    code, out, _ = run(capsys, "store", str(path), "--json")
    info = json.loads(out)
    assert code == 0 and info["images"] == 20 and info["arrays"]["activations"]["chunks"] == [8, 128, 4, 4]
    assert info["attrs"]["preprocess"]["input_size"] == 28 and info["attrs"]["complete"] is True

    code, out, _ = run(capsys, "store", str(digit_stores))  # the folder of a model's stores: one line each
    assert code == 0 and "features.3.zarr" in out and "activations (20, 256, 2, 2)" in out


def test_unfinished_or_missing_store_is_refused(capsys, tmp_path):
    writer = RowStoreWriter(tmp_path / "layer.zarr", 10, attrs=provenance("activations", layer="layer"))
    writer.append(activations=np.ones((4, 2, 3, 3), np.float32), image_id=np.arange(4))
    writer.abort()  # a killed job: rows written, never marked complete
    code, out, err = run(capsys, "store", str(tmp_path / "layer.zarr"))
    assert code == 2 and out == "" and "incomplete (its writer did not finish)" in err and "Traceback" not in err

    # what atomic_path leaves when the job is killed: only a hidden temporary beside the final name
    (tmp_path / "activations" / ".vgg.tmp-0123abcd").mkdir(parents=True)
    code, _, err = run(capsys, "store", str(tmp_path / "activations" / "vgg" / "features.3.zarr"))
    assert code == 2 and "no store at" in err and ".vgg.tmp-*" in err


def test_config_summary_and_invalid_config(capsys, tmp_path):
    good = {"datasets": {"digits": {"kind": "digits"}},
            "models": {"vgg": {"arch": "vgg_small", "train_dataset": "digits", "layers": ["features.3", "features.7"]}},
            "nave": {"models": ["vgg"], "layer_sets": [["features.3"]]}}  # features.7 alone is 1x1: too few pixels for K=5
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(good))
    code, out, _ = run(capsys, "config", "--configfile", str(tmp_path / "good.yaml"))
    assert code == 0 and out.startswith(f"{tmp_path / 'good.yaml'}: valid")
    assert "weights: train on digits" in out and "layers: features.3, features.7" in out
    assert "concepts  digits / vgg: features.3, features.7" in out
    assert "nave      digits / vgg: features.3" in out and "cladec    -" in out

    bad = {**good, "models": {"vgg": {**good["models"]["vgg"], "layers": ["features.9"]}}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    code, out, err = run(capsys, "config", "--configfile", str(tmp_path / "bad.yaml"))
    assert code == 2 and out == "" and "config key 'models.vgg.layers'" in err and "'features.9' not found" in err
    code, _, err = run(capsys, "config", "--configfile", str(tmp_path / "missing.yaml"))
    assert code == 2 and "does not exist" in err


def test_console_script_is_registered_and_exits_2():
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "conceptscope"]
    assert script.value == "conceptscope.cli:main"
    executable = Path(sys.executable).parent / "conceptscope"
    command = [str(executable)] if executable.is_file() else [sys.executable, "-m", "conceptscope.cli"]
    done = subprocess.run([*command, "layers", "torchvision:not_a_model"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == "conceptscope layers: error: unknown torchvision classification model 'not_a_model'"
