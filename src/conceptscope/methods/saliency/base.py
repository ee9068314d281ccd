"""Shared by the saliency methods and their metrics: the papers' defaults, input checks, batching."""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ...attribution import _model_device
from ...models import get_layer

Target = int | torch.Tensor
SaliencyMethod = Callable[..., torch.Tensor]

# ClusCAM defaults: those of the authors' reference code (nxhoang562/ClusCAM, cam/Cluscam.py:
# num_clusters=10, zero_ratio=0.5, temperature=0.5); a temperature below one is what the paper
# argues for (without it the softmax weights of a few clusters are nearly uniform).
CLUSCAM_CLUSTERS = 10
CLUSCAM_DROP_FRACTION = 0.5
CLUSCAM_TEMPERATURE = 0.5
# One k-means++ start, as the reference code gets from scikit-learn's n_init="auto"; fixed here so
# the result does not change with the scikit-learn version.
CLUSCAM_KMEANS_N_INIT = 1
KMEANS_TOL = 1e-4  # scikit-learn's default, relative to the mean per-pixel variance of the upsampled maps
# Masked images per forward pass (ClusCAM, Score-CAM, Ablation-CAM, RISE, occlusion, metrics).
BATCH_SIZE = 32
# RISE (Petsiuk et al. 2018): N masks from a 7 x 7 grid, each cell kept with probability 0.5
# (xplique's defaults, the values usually quoted for the paper's ImageNet experiments).
RISE_MASKS = 4000
RISE_GRID = 7
RISE_KEEP_PROBABILITY = 0.5
# Occlusion (Zeiler & Fergus 2014): a square patch of 1/7 of the shorter side (32 px at 224, about
# one cell of a 7 x 7 feature map), moved by half its side.
OCCLUSION_WINDOW_FRACTION = 1 / 7
# Deletion/insertion: RISE's evaluation code removes 224 px per step at 224 x 224 (224 steps);
# 100 steps of 1 % each need less than half the forward passes (101 points on the curve).
FAITHFULNESS_STEPS = 100
# RISE's evaluation code starts insertion from a Gaussian blur (kernel 11, sigma 5) of the image.
BLUR_KERNEL = 11
BLUR_SIGMA = 5.0


class SaliencyError(ValueError):
    """A saliency method, its inputs or a faithfulness metric's arguments are not usable."""


# --------------------------------------------------------------------------------------------
# Shared helpers


def _bar(iterable, desc: str, progress: bool, unit: str = "image", total: int | None = None):
    """The library's progress bar convention: `progress` switches it, gone when done."""
    return tqdm(iterable, desc=desc, unit=unit, total=total, disable=not progress, leave=False)


def _check_inputs(inputs: torch.Tensor) -> None:
    if not isinstance(inputs, torch.Tensor) or inputs.ndim != 4:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise SaliencyError(f"inputs must be a batch of normalised images (B, C, H, W), got {shape}")
    if inputs.shape[0] == 0:
        raise SaliencyError("inputs hold no images (B = 0)")


def _target_classes(target: Target, n_images: int, device: torch.device) -> torch.Tensor:
    """One class index per image (B,) from an int or a tensor (0-d or (B,))."""
    if isinstance(target, torch.Tensor):
        if target.ndim == 0:
            target = int(target)
        elif target.shape != (n_images,) or target.dtype.is_floating_point:
            raise SaliencyError(f"target must be one class index or one per image ({n_images},) of integers, got {target.dtype} {tuple(target.shape)}")
        else:
            return target.to(device=device, dtype=torch.long)
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
        raise SaliencyError(f"target must be an int or a (B,) LongTensor, got {type(target).__name__}")
    return torch.full((n_images,), int(target), device=device, dtype=torch.long)


@torch.no_grad()
def _check_target_range(model: nn.Module, inputs: torch.Tensor, classes: torch.Tensor) -> None:
    """One forward pass of the first image, to learn the number of classes."""
    _check_classes(classes, model(inputs[:1]))


def _check_classes(classes: torch.Tensor, logits: torch.Tensor) -> None:
    if classes.min() < 0 or classes.max() >= logits.shape[1]:
        raise SaliencyError(f"target classes must lie in [0, {logits.shape[1]}), got {classes.min().item()}..{classes.max().item()}")


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise SaliencyError(f"{name} must be > 0, got {value}")


def _minmax(maps: torch.Tensor, keep_constant: bool = False) -> torch.Tensor:
    """Scale each map (N, H, W) to [0, 1] by its minimum and maximum. A constant map (up to float
    rounding) becomes zeros, or with `keep_constant` keeps its value clipped to [0, 1]."""
    flat = maps.flatten(1)
    low, high = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    span = high - low
    varies = span > 1e-6 * torch.maximum(high.abs(), low.abs()).clamp_min(1e-12)
    constant = maps.clamp(0, 1) if keep_constant else torch.zeros_like(maps)
    return torch.where(varies, (maps - low) / span.clamp_min(torch.finfo(maps.dtype).tiny), constant)


def _upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (N, K, h, w) -> (N, K, H, W), align_corners=False (= cv2.resize, torch default)."""
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


@torch.no_grad()
def _scores(model: nn.Module, images: torch.Tensor, cls: int, batch_size: int, probability: bool) -> torch.Tensor:
    """Target logit (or softmax probability) of class `cls` for every image (N, C, H, W), in chunks: (N,)."""
    out = [images.new_zeros(0)]  # no images (e.g. Score-CAM with only constant maps): no scores
    for chunk in _batches(len(images), batch_size):
        logits = model(images[chunk])
        out.append(torch.softmax(logits, 1)[:, cls] if probability else logits[:, cls])
    return torch.cat(out)


@torch.no_grad()
def _layer_output(model: nn.Module, inputs: torch.Tensor, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's feature maps (B, K, h, w) and the model's logits (B, classes) for `inputs`."""
    captured = []
    handle = get_layer(model, layer).register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        logits = model(inputs)
    finally:
        handle.remove()
    if len(captured) != 1 or not isinstance(captured[0], torch.Tensor):
        raise SaliencyError(f"layer {layer!r} must run once per forward pass and return one tensor")
    acts = captured[0].detach().clone()  # a later inplace op must not change what we keep
    if acts.ndim != 4:
        raise SaliencyError(f"layer {layer!r} returns shape {tuple(acts.shape)}; CAM methods need feature maps (B, K, h, w)")
    return acts, logits


def _prepare(model: nn.Module, inputs: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
    _check_inputs(inputs)
    device = _model_device(model)
    return inputs.to(device), _target_classes(target, len(inputs), device)


# --------------------------------------------------------------------------------------------
# ClusCAM
