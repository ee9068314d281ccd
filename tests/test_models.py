"""Model registry: every entry builds and runs, layers resolve, weights load from real files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conceptscope.models import (
    ModelError,
    build_model,
    build_transform,
    get_layer,
    load_model,
    load_state_dict,
    pretrained_model,
    resolve_preprocess,
    save_model,
    weights_file,
)


@pytest.mark.parametrize("arch, size, channels", [("vgg_small", 28, 1), ("resnet_small", 28, 1), ("mobilenet_v2", 224, 3), ("torchvision:resnet18", 64, 3)])
def test_every_arch_builds_and_classifies(arch, size, channels):
    model = build_model(arch, num_classes=7, in_channels=channels, seed=0).eval()
    with torch.no_grad():
        assert model(torch.randn(2, channels, size, size)).shape == (2, 7)


def test_vgg_small_follows_cladec_table_1():
    model = build_model("vgg_small", 10, 1).eval()
    convs = [m for m in model.features.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 128, 256, 256, 512, 512]
    assert [c.stride[0] for c in convs] == [2, 2, 1, 2, 1, 2, 1, 2]
    shapes = {}
    hooks = [get_layer(model, f"features.{i}").register_forward_hook(lambda m, i, o, k=i: shapes.__setitem__(k, o.shape)) for i in range(8)]
    model(torch.zeros(1, 1, 28, 28))
    for hook in hooks:
        hook.remove()
    assert shapes[0][-1] == 14 and shapes[7][-1] == 1
    assert model.fc[1].out_features == 256


def test_unknown_layer_suggests_close_names():
    model = build_model("mobilenet_v2", 1000, 3)
    with pytest.raises(ModelError, match="features.18"):
        get_layer(model, "features18")


def test_packaged_mobilenet_classifies_real_photos():
    import importlib.util
    from pathlib import Path

    model = pretrained_model("mobilenet_v2")
    transform = build_transform(resolve_preprocess("mobilenet_v2", {}))
    folder = Path(list(importlib.util.find_spec("foolbox").submodule_search_locations)[0]) / "data"
    files = sorted(folder.glob("imagenet_0[0-4]_*.jpg"))
    batch = torch.stack([transform(Image.open(f)) for f in files])
    with torch.no_grad():
        preds = model(batch).argmax(1).tolist()
    labels = [int(f.stem.split("_")[-1]) for f in files]
    assert sum(p == y for p, y in zip(preds, labels)) >= 4


def test_file_weights_roundtrip_and_mismatch(tmp_path):
    model = build_model("torchvision:resnet18", 5, 3, seed=1).eval()
    torch.save(model.state_dict(), tmp_path / "r18.pth")
    other = build_model("torchvision:resnet18", 5, 3, seed=2).eval()
    load_state_dict(other, weights_file("torchvision:resnet18", str(tmp_path / "r18.pth")))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), other(x))
    with pytest.raises(ModelError, match="does not fit"):
        load_state_dict(build_model("vgg_small", 5, 1), tmp_path / "r18.pth")
    with pytest.raises(ModelError, match="does not exist"):
        weights_file("vgg_small", str(tmp_path / "nope.pth"))


def test_save_and_load_model_directory(tmp_path):
    preprocess = resolve_preprocess("vgg_small", {})
    model = build_model("vgg_small", 10, 1, seed=3).eval()
    save_model(model, tmp_path / "m", {"arch": "vgg_small", "num_classes": 10, "preprocess": preprocess})
    loaded, info = load_model(tmp_path / "m")
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert info["preprocess"]["channels"] == 1


def test_preprocess_overrides_and_grey_to_rgb():
    pre = resolve_preprocess("mobilenet_v2", {"resize": 64, "input_size": 56})
    assert pre["input_size"] == 56 and pre["mean"] == [0.485, 0.456, 0.406]
    tensor = build_transform(pre)(Image.fromarray(np.full((80, 100), 128, np.uint8)))
    assert tensor.shape == (3, 56, 56)
    with pytest.raises(ModelError, match="mean"):
        resolve_preprocess("vgg_small", {"channels": 3, "mean": [0.1, 0.2]})


@pytest.mark.parametrize("preprocess", [
    {"channels": 3, "resize": 256, "input_size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    {"channels": 1, "resize": None, "input_size": 28, "mean": [0.5], "std": [0.5]},
    {"channels": 3, "resize": 48, "input_size": 97, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.3, 0.4]},  # crop larger than the image: padding
    {"channels": 3, "resize": None, "input_size": None, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
])
def test_transforms_give_torchvisions_pixels_on_real_photos(preprocess, imagenette_root, tiny_imagenet_root):
    """Our torchvision-free transforms (importing torchvision costs each job ~1.7 s) must give exactly
    the tensors of torchvision's Grayscale/RGB, Resize(BILINEAR, antialias), CenterCrop, ToTensor, Normalize."""
    from torchvision import transforms as T

    from conceptscope.models import build_frame_transform

    steps = [T.Grayscale(1) if preprocess["channels"] == 1 else T.Lambda(lambda im: im.convert("RGB"))]
    if preprocess["resize"]:
        steps.append(T.Resize(preprocess["resize"], interpolation=T.InterpolationMode.BILINEAR, antialias=True))
    if preprocess["input_size"]:
        steps.append(T.CenterCrop(preprocess["input_size"]))
    reference_frame = T.Compose(steps)
    reference = T.Compose([reference_frame, T.ToTensor(), T.Normalize(preprocess["mean"], preprocess["std"])])
    paths = sorted((imagenette_root / "val").rglob("*.JPEG"))[:6] + sorted((tiny_imagenet_root / "val").rglob("*.JPEG"))[:3]
    images = [Image.open(path) for path in paths]
    images += [images[0].convert("L"), images[0].convert("CMYK"), images[0].crop((0, 0, 301, 157))]  # greyscale, CMYK, odd landscape
    ours, ours_frame = build_transform(preprocess), build_frame_transform(preprocess)
    for image in images:
        expected = reference(image)
        got = ours(image)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert torch.equal(got, expected), f"transform differs from torchvision's on a {image.mode} {image.size} image"
        assert np.array_equal(np.asarray(ours_frame(image)), np.asarray(reference_frame(image)))
