"""Synthetic Activation-Maximisation Signals (s-AMS, DORA Def. 6) by feature visualisation.

Bykov et al., "DORA", TMLR 2023, Sec. 3.2: an s-AMS of representation f_i is an image that
maximises f_i, found by gradient ascent from random noise with the Feature Visualisation method of
Olah et al. 2017 (as implemented in the lucid/lucent libraries):

- the image is parametrised by its Fourier spectrum (`FourierImage`): each frequency is scaled by
  1/f so that the optimisation favours smooth images; the spectrum starts as small normal noise;
  irfft2 maps it to pixels; 3-channel images go through ImageNet's colour decorrelation; a sigmoid
  keeps pixels in [0, 1];
- before every step each image is randomly padded, shifted, scaled and rotated
  (`RandomTransforms`), so that the signal cannot rely on exact pixel positions;
- Adam (lr 0.05) maximises the representation for m steps.

A representation is a scalar function of the input: a channel of a layer (its map spatially
mean-pooled) or an output logit (`representation_outputs`). The optimisation is batched: one batch
holds many images, image b maximising representation reps[b]. Every (representation, signal) pair
draws its initial spectrum and its transforms from its own seeded random stream, so the signals do
not depend on the batch size or on which other representations are in the same run.

    signals = synthetic_ams(model, "features.18", range(1280), n_signals=3, steps=500,
                            image_shape=(3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    acts = signal_activations(model, "features.18", signals, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    dist = synthetic_distances(acts)            # EA_s (Def. 7), conceptscope.methods.dora
    save_signals(signals, "figures/sams", [f"unit_{i}" for i in range(1280)])
"""

from __future__ import annotations

import operator
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from ..models import fit_input, get_layer
from ..utils import atomic_path

# paper Sec. 5.1 / 5.3: EA_s with n = 3 s-AMS per representation and m = 500 optimisation steps
# (Sec. 6 uses n = 5, m = 500)
N_SIGNALS = 3
STEPS = 500
# lucent's render_vis defaults: Adam with lr 0.05; spectrum initialised with sd 0.01; 1/f scaling
LR = 0.05
INIT_SD = 0.01
DECAY_POWER = 1.0
# lucid/lucent: square root (via SVD) of ImageNet's colour correlation; columns normalised in use
COLOR_CORRELATION_SVD_SQRT = ((0.26, 0.09, 0.02), (0.27, 0.00, -0.05), (0.27, -0.09, 0.03))
# lucid/lucent divide the irfft2 output by 4; larger values reduce saturation
FOURIER_MAGIC = 4.0
# lucent's standard_transforms are tuned for 224 px images
REFERENCE_SIZE = 224


class FeatureVisError(ValueError):
    """Arguments of the s-AMS generation that cannot be used (index out of range, bad shape, ...)."""


# --------------------------------------------------------------------------------------------
# Representations


class _StopForward(Exception):
    """Raised by the capture hook: the layers after the visualised one need not run."""


def representation_outputs(model: nn.Module, layer: str | None, images: torch.Tensor) -> torch.Tensor:
    """The scalar representations (N, k) of `layer` on normalised `images` (N, C, H, W), differentiable.

    A layer output (N, C, h, w) is spatially mean-pooled to (N, C); an (N, C) output is used as it
    is; `layer=None` means the model's output (logits). The forward pass stops at the layer; a
    module called more than once contributes its first call.
    """
    images = fit_input(model, images)  # a ViT takes one input size; the random transforms change it
    if layer is None:
        output = model(images)
    else:
        captured: list[torch.Tensor] = []

        def hook(module, inputs, output):
            captured.append(output[0] if isinstance(output, (tuple, list)) else output)
            raise _StopForward

        handle = get_layer(model, layer).register_forward_hook(hook)
        try:
            model(images)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise FeatureVisError(f"layer {layer!r} is not called in the model's forward pass")
        output = captured[0]
    if output.ndim == 4:
        return output.mean(dim=(2, 3))
    if output.ndim == 2:
        return output
    name = "the model output" if layer is None else f"layer {layer!r}"
    raise FeatureVisError(f"{name} has shape {tuple(output.shape)}; representations need (N, C, h, w) or (N, C)")


# --------------------------------------------------------------------------------------------
# Image parametrisation and transforms


def _rfft2_freqs(height: int, width: int) -> np.ndarray:
    """|frequency| (H, W//2+1) of every rfft2 coefficient of an H x W image, in cycles per pixel."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    return np.sqrt(fx * fx + fy * fy)


class FourierImage(nn.Module):
    """A batch of images (B, C, H, W) in [0, 1], parametrised by their 1/f-scaled Fourier spectrum.

    Olah et al. 2017 / lucent `fft_image` + `to_valid_rgb`: spectrum (B, C, H, W//2+1) complex,
    initialised as normal noise times `sd`, each frequency f multiplied by 1/max(f, 1/max(H, W))^decay_power,
    irfft2 (orthonormal) to pixels, divided by 4; with `decorrelate` (default: when C == 3) the
    channels are mixed by ImageNet's colour correlation; a sigmoid maps to [0, 1].
    `generators` (one per image) make every image's initial spectrum reproducible on its own.
    """

    def __init__(
        self,
        batch: int,
        channels: int,
        height: int,
        width: int,
        *,
        sd: float = INIT_SD,
        decay_power: float = DECAY_POWER,
        decorrelate: bool | None = None,
        generators: Sequence[torch.Generator] | None = None,
    ):
        super().__init__()
        decorrelate = channels == 3 if decorrelate is None else decorrelate
        if decorrelate and channels != 3:
            raise FeatureVisError(f"colour decorrelation needs 3 channels, the image has {channels}")
        shape = (channels, height, width // 2 + 1, 2)  # last axis: real and imaginary part
        if generators is None:
            spectrum = torch.randn(batch, *shape)
        elif len(generators) != batch:
            raise FeatureVisError(f"{len(generators)} generators for a batch of {batch} images")
        else:
            spectrum = torch.stack([torch.randn(shape, generator=g) for g in generators])
        self.spectrum = nn.Parameter(spectrum * sd)
        scale = 1.0 / np.maximum(_rfft2_freqs(height, width), 1.0 / max(height, width)) ** decay_power
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32)[None, None, :, :, None])
        color = torch.tensor(COLOR_CORRELATION_SVD_SQRT)
        self.register_buffer("color", color / color.norm(dim=0).max())
        self.decorrelate = decorrelate
        self.size = (height, width)

    def forward(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.scale * self.spectrum)
        image = torch.fft.irfft2(spectrum, s=self.size, norm="ortho") / FOURIER_MAGIC
        if self.decorrelate:
            image = torch.einsum("bchw,dc->bdhw", image, self.color)
        return torch.sigmoid(image)


@dataclass(frozen=True)
class RandomTransforms:
    """Random transforms applied to every image before each optimisation step (lucent's standard_transforms).

    Constant padding by `pad` pixels with grey 0.5; a shift by the sum of one uniform integer draw
    in [-j, j] per entry of `jitter` (lucent: jitter 8, then 4); a zoom by a factor drawn from
    `scales`; a rotation by an angle (degrees) drawn from `angles` (lucent: -10..10, 0 more often).
    Shift, zoom and rotation are applied as one bilinear affine resampling per image (grid_sample).
    The defaults are lucent's for 224 px images; `for_image` scales the pixel amounts to other sizes.
    """

    pad: int = 12
    jitter: tuple[int, ...] = (8, 4)
    scales: tuple[float, ...] = tuple(1 + (i - 5) / 50 for i in range(11))
    angles: tuple[float, ...] = tuple(range(-10, 11)) + (0,) * 5

    def __post_init__(self):
        if self.pad < 0 or any(j < 0 for j in self.jitter):
            raise FeatureVisError(f"transform pad {self.pad} and jitter {self.jitter} must be >= 0 pixels")
        if not self.scales or not self.angles or min(self.scales) <= 0:
            raise FeatureVisError(f"transform scales {self.scales} must be positive and angles {self.angles} non-empty")

    @classmethod
    def for_image(cls, height: int, width: int) -> "RandomTransforms":
        """The default transforms with padding and jitter scaled to the image (at least 1 pixel each)."""
        factor = min(height, width) / REFERENCE_SIZE
        default = cls()
        return cls(pad=max(1, round(default.pad * factor)), jitter=tuple(max(1, round(j * factor)) for j in default.jitter))

    def draw(self, generator: torch.Generator, steps: int) -> torch.Tensor:
        """Transform parameters (steps, 4): shift x, shift y (pixels), zoom, angle (radians)."""
        shift = torch.zeros(steps, 2)
        for j in self.jitter:
            shift += torch.randint(-j, j + 1, (steps, 2), generator=generator)
        zoom = torch.tensor(self.scales)[torch.randint(len(self.scales), (steps,), generator=generator)]
        angle = torch.tensor(self.angles, dtype=torch.float32)[torch.randint(len(self.angles), (steps,), generator=generator)]
        return torch.cat([shift, zoom[:, None], torch.deg2rad(angle)[:, None]], dim=1)

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """`images` (B, C, H, W) padded and resampled with per-image `params` (B, 4) from `draw`."""
        images = F.pad(images, (self.pad,) * 4, value=0.5)
        height, width = images.shape[-2:]
        shift_x, shift_y, zoom, angle = params.to(images).unbind(dim=1)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        # output -> input sampling positions in normalised coordinates ([-1, 1] along each axis)
        theta = torch.stack([
            torch.stack([cos, -sin * height / width, -2 * shift_x / width], dim=1),
            torch.stack([sin * width / height, cos, -2 * shift_y / height], dim=1),
        ], dim=1)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


# --------------------------------------------------------------------------------------------
# s-AMS generation


def _pair_generator(seed: int, representation: int, signal: int) -> torch.Generator:
    """The random stream of one (representation, signal) pair: independent of batching."""
    state = np.random.SeedSequence([seed, representation, signal]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) >> 1)


@contextmanager
def _frozen(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode with parameters that need no gradient; both restored afterwards."""
    training = model.training
    requires_grad = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), requires_grad):
            p.requires_grad_(flag)
        model.train(training)


def _normalisation(values: Sequence[float], channels: int, name: str) -> torch.Tensor:
    values = [float(v) for v in np.atleast_1d(values)]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise FeatureVisError(f"{name} has {len(values)} values for images with {channels} channels")
    if name == "std" and min(values) <= 0:
        raise FeatureVisError(f"std must be positive, got {values}")
    return torch.tensor(values, dtype=torch.float32)[None, :, None, None]


def _check_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise FeatureVisError(f"image_shape must be (channels, height, width) with positive sizes, got {tuple(image_shape)}")
    return tuple(int(s) for s in image_shape)


def _n_representations(model: nn.Module, layer: str | None, image_shape: tuple[int, int, int], device) -> int:
    """k, the number of representations of `layer`, from one forward pass on a grey image."""
    grey = torch.full((1, *image_shape), 0.5, device=device)
    try:
        with torch.no_grad():
            return representation_outputs(model, layer, grey).shape[1]
    except RuntimeError as err:
        raise FeatureVisError(
            f"the model cannot run on images of shape {image_shape} (check image_shape against the model's "
            f"preprocess channels and input_size): {str(err).splitlines()[0]}"
        ) from err


def _check_representations(representations: Iterable[int], k: int, layer: str | None) -> list[int]:
    try:
        reps = [operator.index(r) for r in representations]
    except TypeError as err:
        raise FeatureVisError(f"representations must be integer indices, got {representations!r}") from err
    if not reps:
        raise FeatureVisError("no representations to visualise")
    name = "the model output" if layer is None else f"layer {layer!r}"
    for r in reps:
        if not 0 <= r < k:
            raise FeatureVisError(f"representation {r} is out of range: {name} has {k} representations (0..{k - 1})")
    return reps


def synthetic_ams(
    model: nn.Module,
    layer: str | None,
    representations: Iterable[int],
    *,
    mean: Sequence[float],
    std: Sequence[float],
    n_signals: int = N_SIGNALS,
    steps: int = STEPS,
    image_shape: Sequence[int] = (3, 224, 224),
    lr: float = LR,
    batch_size: int = 32,
    transforms: RandomTransforms | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> torch.Tensor:
    """s-AMS (len(representations), n_signals, C, H, W) in pixel space [0, 1] (DORA Def. 6).

    Signal s of representation r maximises r's output (`representation_outputs` of `layer`; None =
    logits) on the image normalised with `mean`/`std` (the model's preprocess), starting from a
    `FourierImage` and taking `steps` Adam steps with learning rate `lr`, each on a freshly
    `RandomTransforms`-ed copy (default: `RandomTransforms.for_image(H, W)`). Defaults: n = 3
    signals and m = 500 steps (DORA Sec. 5.1/5.3), lr 0.05 (lucent). All (representation, signal)
    pairs are optimised `batch_size` images at a time with loss -sum_b act[b, reps[b]]; the model is
    moved to `device` and run in eval mode without parameter gradients (both restored afterwards).
    Each pair's initial spectrum and transforms come from a stream seeded by (seed, r, s): the same
    seed gives the same signals on CPU, whatever the batch size.
    """
    for name, value in (("n_signals", n_signals), ("steps", steps), ("batch_size", batch_size)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise FeatureVisError(f"{name} must be a positive integer, got {value!r}")
    if not lr > 0:
        raise FeatureVisError(f"lr must be positive, got {lr!r}")
    if seed < 0:
        raise FeatureVisError(f"seed must be >= 0, got {seed}")
    channels, height, width = image_shape = _check_shape(image_shape)
    mean_t = _normalisation(mean, channels, "mean").to(device)
    std_t = _normalisation(std, channels, "std").to(device)
    transforms = transforms or RandomTransforms.for_image(height, width)
    model = model.to(device)
    with _frozen(model):
        k = _n_representations(model, layer, image_shape, device)
        reps = _check_representations(representations, k, layer)
        pairs = [(r, s) for r in reps for s in range(n_signals)]
        signals = torch.empty(len(pairs), *image_shape)
        starts = range(0, len(pairs), batch_size)
        for batch_index, start in enumerate(tqdm(starts, desc="s-AMS", disable=not progress, leave=False)):
            batch = pairs[start : start + batch_size]
            generators = [_pair_generator(seed, r, s) for r, s in batch]
            image = FourierImage(len(batch), *image_shape, generators=generators).to(device)
            params = torch.stack([transforms.draw(g, steps) for g in generators], dim=1).to(device)  # (steps, B, 4)
            targets = torch.tensor([r for r, _ in batch], device=device)
            rows = torch.arange(len(batch), device=device)
            optimiser = torch.optim.Adam(image.parameters(), lr=lr)
            step_bar = tqdm(range(steps), desc=f"s-AMS steps (batch {batch_index + 1}/{len(starts)})", unit="step", disable=not progress, leave=False)
            for step in step_bar:
                optimiser.zero_grad(set_to_none=True)
                pixels = transforms.apply(image(), params[step])
                acts = representation_outputs(model, layer, (pixels - mean_t) / std_t)
                (-acts[rows, targets].sum()).backward()
                optimiser.step()
            with torch.no_grad():
                signals[start : start + len(batch)] = image().cpu()
    return signals.reshape(len(reps), n_signals, *image_shape)


@torch.no_grad()
def signal_activations(
    model: nn.Module,
    layer: str | None,
    signals: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> np.ndarray:
    """All k representations of `layer` on the signals (R, n, C, H, W) [0, 1] -> activations (R, n, k).

    With R = k (every representation's s-AMS, in order) this is the input of EA_s (Def. 7,
    `conceptscope.methods.dora.synthetic_distances`). The model's training mode is restored afterwards.
    """
    if signals.ndim != 5:
        raise FeatureVisError(f"signals must be (representations, n_signals, C, H, W), got shape {tuple(signals.shape)}")
    if batch_size < 1:
        raise FeatureVisError(f"batch_size must be a positive integer, got {batch_size!r}")
    n_reps, n_signals, channels = signals.shape[:3]
    mean_t = _normalisation(mean, channels, "mean").to(device)
    std_t = _normalisation(std, channels, "std").to(device)
    flat = signals.reshape(-1, *signals.shape[2:])
    model = model.to(device)
    with _frozen(model):
        acts = [
            representation_outputs(model, layer, (flat[i : i + batch_size].to(device) - mean_t) / std_t).float().cpu()
            for i in tqdm(range(0, len(flat), batch_size), desc="s-AMS activations", unit="batch", disable=not progress, leave=False)
        ]
    return torch.cat(acts).reshape(n_reps, n_signals, -1).numpy()


# --------------------------------------------------------------------------------------------
# Figures

_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def save_signals(signals: torch.Tensor, out_dir: str | Path, names: Sequence[str], *, gap: int = 2) -> list[Path]:
    """Write `out_dir/{name}.png` per representation: its n signals side by side, `gap` white pixels apart.

    `signals` (R, n, C, H, W) in [0, 1] with C = 1 (greyscale PNG) or 3 (RGB); `names` (R,) are file
    stems (letters, digits, `.`, `_`, `-`). Returns the written paths, in order.
    """
    if signals.ndim != 5 or signals.shape[2] not in (1, 3):
        raise FeatureVisError(f"signals must be (representations, n_signals, 1 or 3 channels, H, W), got shape {tuple(signals.shape)}")
    if len(names) != len(signals):
        raise FeatureVisError(f"{len(names)} names for {len(signals)} representations' signals")
    bad = [n for n in names if not _SAFE_NAME.match(str(n))]
    if bad or len(set(names)) != len(names):
        raise FeatureVisError(f"signal file names must be unique and use only letters, digits, '.', '_', '-'; got {bad or 'duplicates'}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_signals, channels, height, width = signals.shape[1:]
    pixels = (signals.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).cpu().numpy()
    paths = []
    for name, images in zip(names, pixels):
        strip = np.full((height, n_signals * width + (n_signals - 1) * gap, channels), 255, dtype=np.uint8)
        for i, image in enumerate(images):
            strip[:, i * (width + gap) : i * (width + gap) + width] = image
        path = out_dir / f"{name}.png"
        with atomic_path(path) as tmp:
            Image.fromarray(strip[..., 0] if channels == 1 else strip).save(tmp, format="PNG")
        paths.append(path)
    return paths
