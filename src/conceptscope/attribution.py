"""Hidden-layer attribution by name: DeepLift, gradient x activation and DeepLift + SmoothGrad.

    attr = layer_attribution(model, images, "features.18", target=388, preprocess=preprocess)
    attr = layer_attribution(model, images, "features.18", target=388, method="grad_x_act")

Every method attributes the pre-softmax logit of the target class to the activations of one layer
and returns (B, C_layer, h, w), so callers switch methods by config name (the concepts paper,
Herdt & Otero Baguer, Sec. 4.1 and App. D.2, compares exactly these three).

captum's DeepLift applies its rules only to nonlinearity modules of types it knows, each called
once per forward pass, and breaks on inplace ops. torchvision models violate this: MobileNetV2 has
`ReLU6(inplace=True)` (no rule: captum silently treats it as linear, and summation-to-delta fails),
ResNet blocks call one `relu` module two or three times (captum raises). So every method runs with
inplace switched off, and the DeepLift methods on a temporarily rewritten model (`_deeplift_ready`);
both are undone after the call. Nonlinearities called as functions (`torch.relu(x)`) stay invisible
to captum: DeepLift falls back to the plain gradient there.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from .models import get_layer

Target = int | torch.Tensor

# Paper App. D.2: SmoothGrad with 20 noise samples and Gaussian noise of standard deviation 0.25,
# added to the network input (the normalised image).
SMOOTHGRAD_SAMPLES = 20
SMOOTHGRAD_NOISE_STD = 0.25
# Pixel values (in [0, 1], before normalisation) of the named DeepLift baselines. Paper Sec. 4.1:
# "As baseline for DeepLift we use a white image after normalization."
BASELINE_PIXELS = {"white": 1.0, "black": 0.0}
DEFAULT_BASELINE = "white"
# Noise samples per forward pass are capped so that one pass sees at most this many images.
NOISE_BATCH_IMAGES = 64


class AttributionError(ValueError):
    """An attribution method, its options or the layer it is asked about are not usable."""


# --------------------------------------------------------------------------------------------
# Making a model DeepLift-ready


class ReLU6AsReLUs(nn.Module):
    """ReLU6 written as relu(x) - relu(x - 6), so that DeepLift's rescale rule (which captum has for
    ReLU but not for ReLU6) applies to each part; the output equals ReLU6 up to float rounding."""

    def __init__(self):
        super().__init__()
        self.lower = nn.ReLU()
        self.upper = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Each ReLU gets a tensor of its own: captum hooks the gradient of a nonlinearity's input
        # tensor, so a tensor shared by both paths would have the upper path's gradient overwritten.
        return self.lower(x.clone()) - self.upper(x - 6.0)


class PerCallCopies(nn.Module):
    """A module that the network calls n times per forward, split into n copies used in turn.

    captum stores a nonlinearity's input and output on the module itself, so a module that is
    called several times (torchvision's ResNet blocks reuse `self.relu`) loses all but the last
    call's values. Calls are counted from the start of each forward pass of the whole model.
    """

    def __init__(self, module: nn.Module, n_calls: int):
        super().__init__()
        self.copies = nn.ModuleList(copy.deepcopy(module) for _ in range(n_calls))
        self.calls = 0

    def forward(self, *args, **kwargs):
        module = self.copies[self.calls % len(self.copies)]
        self.calls += 1
        return module(*args, **kwargs)


def _replace_children(model: nn.Module, should_replace: Callable[[nn.Module], nn.Module | None]) -> list[tuple[nn.Module, str, nn.Module]]:
    """Swap every child for which `should_replace` returns a module; return (parent, name, original)."""
    swaps = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            replacement = should_replace(child)
            if replacement is not None:
                setattr(parent, name, replacement)
                swaps.append((parent, name, child))
    return swaps


@torch.no_grad()
def _calls_per_forward(model: nn.Module, example: torch.Tensor) -> dict[nn.Module, int]:
    """How often each module with a DeepLift rule runs in one forward pass of `example`."""
    # The module types captum's DeepLift has a rule for (private in captum, but the only source of
    # truth: a module of any other type is treated as linear, i.e. by its gradient). captum is
    # imported where it is used throughout: jobs that only predict or plot skip its ~1 s import.
    from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

    counts: dict[nn.Module, int] = {}

    def count(module, inputs, output):
        counts[module] = counts.get(module, 0) + 1

    handles = [m.register_forward_hook(count) for m in model.modules() if type(m) in SUPPORTED_NON_LINEAR]
    try:
        model(example)
    finally:
        for handle in handles:
            handle.remove()
    return counts


@contextmanager
def _deeplift_ready(model: nn.Module, example: torch.Tensor) -> Iterator[None]:
    """Rewrite `model` in place so that captum's DeepLift rule reaches every nonlinearity, and undo
    it on exit: ReLU6 becomes two ReLUs, a nonlinearity called several times per forward becomes
    per-call copies. In place rather than on a deep copy, so that no second copy of the weights sits
    on the GPU and layer names keep pointing at the caller's modules. Needs `_without_inplace`.
    """
    swaps: list[tuple[nn.Module, str, nn.Module]] = []
    reset_hook = None
    try:
        swaps += _replace_children(model, lambda m: ReLU6AsReLUs() if type(m) is nn.ReLU6 else None)
        counts = _calls_per_forward(model, example[:1])
        reused = {m: n for m, n in counts.items() if n > 1}
        if reused:
            swaps += _replace_children(model, lambda m: PerCallCopies(m, reused[m]) if m in reused else None)

            def reset_calls(module, inputs):
                for wrapper in module.modules():
                    if isinstance(wrapper, PerCallCopies):
                        wrapper.calls = 0

            reset_hook = model.register_forward_pre_hook(reset_calls)
        yield
    finally:
        if reset_hook is not None:
            reset_hook.remove()
        for parent, name, original in reversed(swaps):
            setattr(parent, name, original)


@contextmanager
def _without_inplace(model: nn.Module) -> Iterator[None]:
    """Switch every inplace flag off for the call, and back on after it. captum keeps a layer's
    output and a nonlinearity's input for the backward pass; an inplace op (torchvision's
    ReLU(inplace=True), ReLU6(inplace=True)) would overwrite them."""
    inplace_modules = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    try:
        for module in inplace_modules:
            module.inplace = False
        yield
    finally:
        for module in inplace_modules:
            module.inplace = True


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Attribute the deterministic network (BatchNorm running statistics, no dropout)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------
# Baselines


def resolve_baseline(baseline: str | float | torch.Tensor, inputs: torch.Tensor, preprocess: dict | None) -> torch.Tensor:
    """The DeepLift reference input (1 or B, C, H, W) in the model's (normalised) input space.

    `baseline` is a name ("white", "black": a constant image before normalisation, which needs
    `preprocess` for its mean and std), "zero" (zeros after normalisation, captum's default), a
    float (a constant after normalisation) or a tensor (C, H, W) or (1|B, C, H, W).
    """
    channels = inputs.shape[1]
    if isinstance(baseline, torch.Tensor):
        reference = baseline if baseline.ndim == 4 else baseline.unsqueeze(0)
        if reference.shape[1:] != inputs.shape[1:] or reference.shape[0] not in (1, len(inputs)):
            raise AttributionError(f"baseline of shape {tuple(baseline.shape)} does not fit inputs of shape {tuple(inputs.shape)}")
        return reference.to(inputs.device, inputs.dtype)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full((1, *inputs.shape[1:]), float(baseline), device=inputs.device, dtype=inputs.dtype)
    if baseline == "zero":
        return torch.zeros((1, *inputs.shape[1:]), device=inputs.device, dtype=inputs.dtype)
    if baseline in BASELINE_PIXELS:
        if preprocess is None or "mean" not in preprocess or "std" not in preprocess:
            raise AttributionError(
                f"baseline {baseline!r} is an image before normalisation and needs the model's preprocessing "
                "(pass preprocess=resolve_preprocess(arch, overrides)), or pass the baseline tensor itself"
            )
        mean, std = (torch.as_tensor(preprocess[key], dtype=inputs.dtype, device=inputs.device) for key in ("mean", "std"))
        if mean.numel() == 1:
            mean, std = mean.expand(channels), std.expand(channels)
        if mean.numel() != channels:
            raise AttributionError(f"preprocess mean/std have {mean.numel()} values, inputs have {channels} channels")
        pixel = (BASELINE_PIXELS[baseline] - mean) / std
        return pixel.view(1, channels, 1, 1).expand(1, *inputs.shape[1:]).contiguous()
    raise AttributionError(f"unknown baseline {baseline!r}; expected one of {sorted(BASELINE_PIXELS) + ['zero']}, a float or a tensor")


# --------------------------------------------------------------------------------------------
# Methods


def _deeplift(model, layer, inputs, target, *, baseline, n_samples, noise_std, seed) -> torch.Tensor:
    from captum.attr import LayerDeepLift

    return LayerDeepLift(model, layer).attribute(inputs, baselines=baseline, target=target)


def _grad_x_act(model, layer, inputs, target, *, baseline, n_samples, noise_std, seed) -> torch.Tensor:
    from captum.attr import LayerGradientXActivation

    return LayerGradientXActivation(model, layer).attribute(inputs, target=target)


def _deeplift_smoothgrad(model, layer, inputs, target, *, baseline, n_samples, noise_std, seed) -> torch.Tensor:
    from captum.attr import LayerDeepLift, NoiseTunnel

    samples_per_pass = max(1, min(n_samples, NOISE_BATCH_IMAGES // len(inputs)))
    # captum draws the noise from torch's global generator: fork it so that `seed` fixes the noise
    # without disturbing the caller's random stream.
    devices = []
    if inputs.device.type == "cuda":
        devices = [inputs.device.index if inputs.device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return NoiseTunnel(LayerDeepLift(model, layer)).attribute(
            inputs,
            nt_type="smoothgrad",
            nt_samples=n_samples,
            nt_samples_batch_size=samples_per_pass,
            stdevs=noise_std,
            baselines=baseline,
            target=target,
        )


@dataclass(frozen=True)
class AttributionMethod:
    """A layer attribution method: the function, and which options of `layer_attribution` it uses."""

    attribute: Callable[..., torch.Tensor]
    options: frozenset[str]
    deeplift_rules: bool  # whether the model must be rewritten for captum's DeepLift hooks


ATTRIBUTION_METHODS: dict[str, AttributionMethod] = {
    "deeplift": AttributionMethod(_deeplift, frozenset({"baseline"}), True),
    "grad_x_act": AttributionMethod(_grad_x_act, frozenset(), False),
    "deeplift_smoothgrad": AttributionMethod(_deeplift_smoothgrad, frozenset({"baseline", "n_samples", "noise_std", "seed"}), True),
}


def get_attribution_method(name: str) -> AttributionMethod:
    """Look up an attribution method by config name."""
    if name not in ATTRIBUTION_METHODS:
        raise AttributionError(f"unknown attribution method {name!r}; expected one of {sorted(ATTRIBUTION_METHODS)}")
    return ATTRIBUTION_METHODS[name]


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def layer_attribution(
    model: nn.Module,
    inputs: torch.Tensor,
    layer: str,
    target: Target,
    method: str = "deeplift",
    *,
    baseline: str | float | torch.Tensor | None = None,
    n_samples: int | None = None,
    noise_std: float | None = None,
    seed: int | None = None,
    preprocess: dict | None = None,
) -> torch.Tensor:
    """Attribution (B, C_layer, h, w) of the target class's pre-softmax logit to `layer`'s output.

    inputs: (B, C, H, W) normalised images; target: one class index or one per image (B,).
    `model` must return logits. It runs in eval mode for the call and is left as it was.
    Options (None = the paper's default; passing one the method does not use is an error):
      baseline   deeplift*: DeepLift reference, default "white" (Sec. 4.1), see `resolve_baseline`
      n_samples  deeplift_smoothgrad: noise samples, default 20 (App. D.2)
      noise_std  deeplift_smoothgrad: std of the Gaussian input noise, default 0.25 (App. D.2)
      seed       deeplift_smoothgrad: seed of the noise, default 0
    `preprocess` (mean, std) turns the named baselines into normalised images.
    """
    spec = get_attribution_method(method)
    given = {"baseline": baseline, "n_samples": n_samples, "noise_std": noise_std, "seed": seed}
    unused = sorted(name for name, value in given.items() if value is not None and name not in spec.options)
    if unused:
        raise AttributionError(f"attribution method {method!r} does not use {unused}; it takes {sorted(spec.options) or 'no options'}")
    if inputs.ndim != 4:
        raise AttributionError(f"inputs must be a batch of images (B, C, H, W), got shape {tuple(inputs.shape)}")
    n_samples = SMOOTHGRAD_SAMPLES if n_samples is None else int(n_samples)
    noise_std = SMOOTHGRAD_NOISE_STD if noise_std is None else float(noise_std)
    if n_samples < 1 or noise_std < 0:
        raise AttributionError(f"n_samples must be >= 1 and noise_std >= 0, got {n_samples} and {noise_std}")
    device = _model_device(model)
    inputs = inputs.to(device)
    if isinstance(target, torch.Tensor):
        target = target.to(device)
        if target.ndim == 0:
            target = int(target)
        elif target.shape != (len(inputs),):
            raise AttributionError(f"target must be one class or one per image ({len(inputs)},), got shape {tuple(target.shape)}")
    reference = None
    if "baseline" in spec.options:
        reference = resolve_baseline(DEFAULT_BASELINE if baseline is None else baseline, inputs, preprocess)
    rules = _deeplift_ready(model, inputs) if spec.deeplift_rules else nullcontext()
    with torch.enable_grad(), _eval_mode(model), _without_inplace(model), rules:
        module = get_layer(model, layer)
        if isinstance(module, PerCallCopies):
            raise AttributionError(
                f"layer {layer!r} is called {len(module.copies)} times per forward pass, so its output is ambiguous; "
                "pick the block that contains it"
            )
        seed = 0 if seed is None else int(seed)
        attributions = spec.attribute(model, module, inputs, target, baseline=reference, n_samples=n_samples, noise_std=noise_std, seed=seed)
    if isinstance(attributions, tuple):
        raise AttributionError(f"layer {layer!r} returns several tensors; pick a layer with a single output")
    return attributions.detach()


def grad_cam(model: nn.Module, inputs: torch.Tensor, layer: str, target: Target) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al.) of `layer` for the target class, upsampled to the input: (B, H, W) in [0, 1].

    The map is ReLU(sum_k mean-gradient_k x activation_k), bilinearly resized to the input size and
    scaled per image to [0, 1] by its minimum and maximum; a constant map (a 1x1 layer, or a dense
    layer's vector) is all zeros, so every region of the image is equally relevant. `model` runs in eval mode for the call.
    """
    from captum.attr import LayerAttribution, LayerGradCam

    if inputs.ndim != 4:
        raise AttributionError(f"inputs must be a batch of images (B, C, H, W), got shape {tuple(inputs.shape)}")
    device = _model_device(model)
    inputs = inputs.to(device)
    if isinstance(target, torch.Tensor):
        target = target.to(device)
    with torch.enable_grad(), _eval_mode(model), _without_inplace(model):
        cam = LayerGradCam(model, get_layer(model, layer)).attribute(inputs, target=target, relu_attributions=True)
    if isinstance(cam, tuple):
        raise AttributionError(f"layer {layer!r} returns several tensors; pick a layer with a single output")
    if cam.ndim == 2:  # a vector layer (N, C), e.g. a dense layer: no spatial extent, a constant map
        return torch.zeros(inputs.shape[0], *inputs.shape[-2:], device=cam.device, dtype=cam.dtype)
    cam = LayerAttribution.interpolate(cam.detach(), tuple(inputs.shape[-2:]), interpolate_mode="bilinear")[:, 0]
    low = cam.flatten(1).min(1).values[:, None, None]
    high = cam.flatten(1).max(1).values[:, None, None]
    span = high - low
    # a map upsampled from one value differs only by interpolation rounding: that is a constant map
    varies = span > 1e-5 * high.abs()
    return torch.where(varies, (cam - low) / span.clamp_min(torch.finfo(cam.dtype).tiny), torch.zeros_like(cam))
