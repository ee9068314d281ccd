"""Faithfulness of a saliency map: deletion and insertion AUC (RISE), average drop and increase in
confidence (Grad-CAM++), the map's mass in a box; `explain_and_score` runs a method and scores it."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...attribution import _eval_mode, _model_device
from .base import (
    BATCH_SIZE,
    BLUR_KERNEL,
    BLUR_SIGMA,
    FAITHFULNESS_STEPS,
    SaliencyError,
    Target,
    _bar,
    _batches,
    _check_classes,
    _check_inputs,
    _check_positive,
    _check_target_range,
    _prepare,
    _scores,
)
from .cams import get_saliency_method


def _check_saliency(inputs: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
    _check_inputs(inputs)
    saliency = torch.as_tensor(saliency)
    expected = (inputs.shape[0], *inputs.shape[-2:])
    if tuple(saliency.shape) != expected:
        raise SaliencyError(f"saliency must have shape (B, H, W) = {expected} to match inputs {tuple(inputs.shape)}, got {tuple(saliency.shape)}")
    if not torch.isfinite(saliency).all():
        raise SaliencyError("saliency holds NaN or infinite values")
    return saliency


def gaussian_blur(inputs: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Gaussian blur of images (B, C, H, W) as torchvision's `gaussian_blur` computes it: one normalised
    kernel per channel, reflect padding. Written out so a job avoids torchvision's ~1.7 s import."""
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, steps=kernel_size, dtype=inputs.dtype, device=inputs.device)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    kernel1d = pdf / pdf.sum()
    kernel = torch.mm(kernel1d[:, None], kernel1d[None, :]).expand(inputs.shape[1], 1, kernel_size, kernel_size)
    padded = F.pad(inputs, [kernel_size // 2] * 4, mode="reflect")
    return F.conv2d(padded, kernel, groups=inputs.shape[1])


def _baseline_images(inputs: torch.Tensor, baseline: str | float | torch.Tensor) -> torch.Tensor:
    """The image pixels are replaced with (deletion) or start from (insertion): (B, C, H, W)."""
    if isinstance(baseline, torch.Tensor):
        reference = baseline.to(inputs.device, inputs.dtype)
        reference = reference if reference.ndim == 4 else reference.unsqueeze(0)
        if reference.shape[1:] != inputs.shape[1:] or reference.shape[0] not in (1, len(inputs)):
            raise SaliencyError(f"baseline of shape {tuple(baseline.shape)} does not fit inputs of shape {tuple(inputs.shape)}")
        return reference.expand_as(inputs)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(inputs, float(baseline))
    if baseline == "zero":
        return torch.zeros_like(inputs)
    if baseline == "blur":
        return gaussian_blur(inputs, BLUR_KERNEL, BLUR_SIGMA)
    raise SaliencyError(f"unknown baseline {baseline!r}; expected 'zero', 'blur', a float or a tensor (C, H, W) / (1|B, C, H, W)")


def _perturbation_auc(model, inputs, saliency, target, steps, baseline, batch_size, insert: bool, progress: bool = True) -> np.ndarray:
    saliency = _check_saliency(inputs, saliency)
    inputs, classes = _prepare(model, inputs, target)
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise SaliencyError(f"steps must be a positive integer, got {steps!r}")
    _check_positive(batch_size=batch_size)
    reference = _baseline_images(inputs, baseline)
    n_pixels = saliency[0].numel()
    counts = torch.linspace(0, n_pixels, steps + 1, device=inputs.device).round().long()  # pixels changed per step
    fractions = (counts.double() / n_pixels).cpu().numpy()
    aucs = np.empty(len(inputs))
    with _eval_mode(model):
        _check_target_range(model, inputs, classes)
        for b in _bar(range(len(inputs)), "insertion AUC" if insert else "deletion AUC", progress):
            order = torch.argsort(saliency[b].flatten().to(inputs.device), descending=True, stable=True)
            rank = torch.empty_like(order)
            rank[order] = torch.arange(n_pixels, device=inputs.device)
            changed = (rank.view(1, *saliency.shape[1:]) < counts.view(-1, 1, 1))[:, None]  # (steps+1, 1, H, W)
            start, end = (reference[b], inputs[b]) if insert else (inputs[b], reference[b])
            curve = torch.cat([
                _scores(model, torch.where(changed[chunk], end, start), int(classes[b]), batch_size, probability=True)
                for chunk in _batches(steps + 1, batch_size)
            ])
            aucs[b] = np.trapezoid(curve.double().cpu().numpy(), fractions)
    return aucs


def deletion_auc(
    model: nn.Module,
    inputs: torch.Tensor,
    saliency: torch.Tensor,
    target: Target,
    *,
    steps: int = FAITHFULNESS_STEPS,
    baseline: str | float | torch.Tensor = "zero",
    batch_size: int = BATCH_SIZE,
    progress: bool = True,
) -> np.ndarray:
    """Deletion AUC (B,): target probability as pixels, most salient first, are replaced by `baseline`
    in `steps` equal steps; trapezoid area over the deleted fraction 0..1 (lower = more faithful).

    baseline: "zero" (0 after normalisation, the mean colour, as RISE's evaluation code), "blur"
    (Gaussian, kernel 11, sigma 5), a float, or a tensor. Ties in saliency go in pixel order.
    """
    return _perturbation_auc(model, inputs, saliency, target, steps, baseline, batch_size, insert=False, progress=progress)


def insertion_auc(
    model: nn.Module,
    inputs: torch.Tensor,
    saliency: torch.Tensor,
    target: Target,
    *,
    steps: int = FAITHFULNESS_STEPS,
    baseline: str | float | torch.Tensor = "blur",
    batch_size: int = BATCH_SIZE,
    progress: bool = True,
) -> np.ndarray:
    """Insertion AUC (B,): target probability as pixels of the input, most salient first, are put into
    the `baseline` image in `steps` equal steps; trapezoid area over the inserted fraction 0..1
    (higher = more faithful). baseline: default "blur" (RISE's evaluation code), see `deletion_auc`.
    """
    return _perturbation_auc(model, inputs, saliency, target, steps, baseline, batch_size, insert=True, progress=progress)


def _confidence_change(model, inputs, saliency, target, batch_size) -> tuple[np.ndarray, np.ndarray]:
    """Y_c and O_c (B,): target probability on the input and on input * saliency."""
    saliency = _check_saliency(inputs, saliency)
    if saliency.min() < 0 or saliency.max() > 1:
        raise SaliencyError(f"saliency must lie in [0, 1] to multiply the input, got {saliency.min().item():.3g}..{saliency.max().item():.3g}")
    inputs, classes = _prepare(model, inputs, target)
    _check_positive(batch_size=batch_size)
    saliency = saliency.to(inputs.device, inputs.dtype)
    with _eval_mode(model), torch.no_grad():
        both = torch.cat([inputs, inputs * saliency[:, None]])
        logits = torch.cat([model(both[chunk]) for chunk in _batches(len(both), batch_size)])
        _check_classes(classes, logits)
        probs = torch.softmax(logits, 1).gather(1, classes.repeat(2)[:, None])[:, 0].double().cpu().numpy()
    return probs[: len(inputs)], probs[len(inputs) :]


def average_drop(model: nn.Module, inputs: torch.Tensor, saliency: torch.Tensor, target: Target, *, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Per-image drop (B,) max(0, Y_c - O_c) / Y_c x 100 (Grad-CAM++ Sec. 6.1; its mean is "Average Drop %")."""
    original, explained = _confidence_change(model, inputs, saliency, target, batch_size)
    return np.maximum(0.0, original - explained) / original * 100


def increase_in_confidence(model: nn.Module, inputs: torch.Tensor, saliency: torch.Tensor, target: Target, *, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Per-image 100 x [O_c > Y_c] (B,) (Grad-CAM++ Sec. 6.1; its mean is "% Increase in Confidence")."""
    original, explained = _confidence_change(model, inputs, saliency, target, batch_size)
    return (explained > original).astype(np.float64) * 100


def faithfulness(
    model: nn.Module,
    inputs: torch.Tensor,
    saliency: torch.Tensor,
    target: Target,
    *,
    steps: int = FAITHFULNESS_STEPS,
    deletion_baseline: str | float | torch.Tensor = "zero",
    insertion_baseline: str | float | torch.Tensor = "blur",
    batch_size: int = BATCH_SIZE,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """All metrics, per image (B,): deletion_auc, insertion_auc, average_drop, increase_in_confidence."""
    original, explained = _confidence_change(model, inputs, saliency, target, batch_size)
    return {
        "deletion_auc": deletion_auc(model, inputs, saliency, target, steps=steps, baseline=deletion_baseline, batch_size=batch_size, progress=progress),
        "insertion_auc": insertion_auc(model, inputs, saliency, target, steps=steps, baseline=insertion_baseline, batch_size=batch_size, progress=progress),
        "average_drop": np.maximum(0.0, original - explained) / original * 100,
        "increase_in_confidence": (explained > original).astype(np.float64) * 100,
    }


def saliency_mass_in_box(saliency: torch.Tensor, boxes: torch.Tensor | np.ndarray) -> np.ndarray:
    """Share (B,) of each map's total saliency inside its box (x0, y0, x1, y1) in pixels.

    A pixel counts as inside when its centre (x + 0.5, y + 0.5) lies in [x0, x1) x [y0, y1).
    A map with no mass at all gives NaN.
    """
    saliency = torch.as_tensor(saliency).detach().double().cpu()
    boxes = torch.as_tensor(np.asarray(boxes, dtype=np.float64))
    if saliency.ndim != 3 or boxes.shape != (len(saliency), 4):
        raise SaliencyError(f"need saliency (B, H, W) and boxes (B, 4), got {tuple(saliency.shape)} and {tuple(boxes.shape)}")
    ys = torch.arange(saliency.shape[1], dtype=torch.float64)[None, :, None] + 0.5
    xs = torch.arange(saliency.shape[2], dtype=torch.float64)[None, None, :] + 0.5
    x0, y0, x1, y1 = (boxes[:, i, None, None] for i in range(4))
    inside = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    total = saliency.flatten(1).sum(1)
    mass = (saliency * inside).flatten(1).sum(1)
    return torch.where(total > 0, mass / total, torch.full_like(total, float("nan"))).numpy()


def explain_and_score(
    model: nn.Module,
    inputs: torch.Tensor,
    layer: str,
    method: str,
    target: Target,
    *,
    options: dict | None = None,
    steps: int = FAITHFULNESS_STEPS,
    deletion_baseline: str | float | torch.Tensor = "zero",
    insertion_baseline: str | float | torch.Tensor = "blur",
    batch_size: int = BATCH_SIZE,
    score: bool = True,
    progress: bool = True,
) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """One batch through a method by name: maps (B, H, W) on the CPU and per-image columns.

    The columns are `seconds` (the map's share of the batch's wall time, the GPU synchronised) and,
    with `score`, the four `faithfulness` metrics. `options` are the method's keyword arguments
    (e.g. {"n_clusters": 10} for ClusCAM); `batch_size` goes to the methods that batch masked inputs,
    `progress` (progress bars) to the methods with a loop and to the metrics.
    """
    import inspect
    import time

    explain = get_saliency_method(method)
    device = _model_device(model)
    inputs, classes = _prepare(model, inputs, target)
    synchronise = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    synchronise()
    start = time.perf_counter()
    kwargs = dict(options or {})
    accepted = inspect.signature(explain).parameters
    if "batch_size" in accepted:
        kwargs["batch_size"] = batch_size
    if "progress" in accepted:
        kwargs.setdefault("progress", progress)
    maps = explain(model, inputs, layer, classes, **kwargs)
    synchronise()
    columns = {"seconds": np.full(len(inputs), (time.perf_counter() - start) / len(inputs))}
    if score:
        columns.update(faithfulness(model, inputs, maps, classes, steps=steps, deletion_baseline=deletion_baseline,
                                    insertion_baseline=insertion_baseline, batch_size=batch_size, progress=progress))
    return maps.detach().float().cpu(), columns
