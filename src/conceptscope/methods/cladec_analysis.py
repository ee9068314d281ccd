"""What ClaDec explanations are used for: occlusion relevance from the change of the reconstruction
(Sec. 6.6, Tables 7-8), and how much of a planted watermark a reconstruction keeps.

    relevance = cladec_occlusion_relevance(decoder, images, occlusion_boxes(28, 28), fill)   # Sec. 6.6
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from .cladec import Reconstructor


# Sec. 6.6: 12 x 12 squares on 32 x 32 images (0.375 of the side), upper-left corners 0, 6, 12, 20:
# a 4 x 4 grid of 16 occlusions, filled with the mean pixel of the training data.
OCCLUSION_SIZE = 12 / 32
OCCLUSION_GRID = 4


def occlusion_boxes(height: int, width: int, *, size: float = OCCLUSION_SIZE, grid: int = OCCLUSION_GRID) -> np.ndarray:
    """(grid * grid, 4) squares (y0, x0, y1, x1): side round(size * min(height, width)), corners evenly
    spaced from 0 to the far edge (0, 7, 13, 20 for 32 px, the paper's 0, 6, 12, 20 up to rounding)."""
    if not 0 < size <= 1 or grid < 1:
        raise ValueError(f"occlusion size must be in (0, 1] and grid >= 1, got {size} and {grid}")
    side = max(1, int(round(size * min(height, width))))
    ys = np.round(np.linspace(0, height - side, grid)).astype(int)
    xs = np.round(np.linspace(0, width - side, grid)).astype(int)
    return np.array([(y, x, y + side, x + side) for y in ys for x in xs], dtype=np.int64)


def occlude(images: torch.Tensor, box: Sequence[int], fill: torch.Tensor | float) -> torch.Tensor:
    """A copy of `images` with the square `box` (y0, x0, y1, x1) set to `fill` (a value or one per channel)."""
    y0, x0, y1, x1 = (int(v) for v in box)
    out = images.clone()
    fill = torch.as_tensor(fill, dtype=images.dtype, device=images.device)
    out[:, :, y0:y1, x0:x1] = fill.view(1, -1, 1, 1) if fill.ndim else fill
    return out


def box_sums(maps: torch.Tensor, boxes: np.ndarray) -> torch.Tensor:
    """(N, K) sums of per-pixel maps (N, H, W) inside each box."""
    return torch.stack([maps[:, y0:y1, x0:x1].sum(dim=(1, 2)) for y0, x0, y1, x1 in boxes], dim=1)


@torch.no_grad()
def cladec_occlusion_relevance(reconstructor: Reconstructor, images: torch.Tensor, boxes: np.ndarray, fill) -> torch.Tensor:
    """R(O) = sum over the occluded pixels of ||X_E^occ - X_E||^2 (Sec. 6.6): (N, K) for the K boxes."""
    reference = reconstructor.reconstruct(images).cpu()
    relevance = []
    for box in boxes:
        occluded = reconstructor.reconstruct(occlude(images, box, fill)).cpu()
        y0, x0, y1, x1 = box
        relevance.append(((occluded - reference)[:, :, y0:y1, x0:x1] ** 2).flatten(1).sum(1))
    return torch.stack(relevance, dim=1)


def extreme_occlusions(relevance, rng: np.random.Generator, rtol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the index of a least and of a most relevant occlusion; ties (within `rtol`) are
    broken uniformly at random (Sec. 6.6), so a constant relevance picks two independent random boxes."""
    relevance = np.asarray(relevance, dtype=np.float64)
    picks = []
    for extreme in (relevance.min(1), relevance.max(1)):
        chosen = np.empty(len(relevance), dtype=np.int64)
        for i, (row, value) in enumerate(zip(relevance, extreme)):
            candidates = np.flatnonzero(np.isclose(row, value, rtol=rtol, atol=0.0))
            chosen[i] = candidates[rng.integers(len(candidates))]
        picks.append(chosen)
    return picks[0], picks[1]


@torch.no_grad()
def occluded_predictions(model: nn.Module, images: torch.Tensor, boxes: np.ndarray, choice: np.ndarray, fill, batch_size: int = 256) -> np.ndarray:
    """The model's predicted classes for the images, each with its chosen box occluded."""
    device = next(model.parameters()).device
    occluded = images.clone()
    for k in np.unique(choice):
        rows = torch.as_tensor(np.flatnonzero(choice == k))
        occluded[rows] = occlude(images[rows], boxes[k], fill)
    return torch.cat([model(x.to(device)).argmax(1).cpu() for x in occluded.split(batch_size)]).numpy()


# --------------------------------------------------------------------------------------------
# A planted watermark in the reconstructions


def box_errors(reconstructions: torch.Tensor, targets: torch.Tensor, boxes: np.ndarray, std: Sequence[float] | None = None) -> np.ndarray:
    """(N,) mean squared error per pixel inside each image's own box (x0, y0, x1, y1 in pixels, as the
    dataset manifest records watermarks), on the [0, 1] scale when `std` is given."""
    errors = pixel_maps(reconstructions, targets, std)
    out = np.empty(len(errors))
    for i, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, dtype=np.int64)):
        out[i] = float(errors[i, y0:y1, x0:x1].mean())
    return out


def pixel_maps(reconstructions: torch.Tensor, targets: torch.Tensor, std: Sequence[float] | None = None) -> torch.Tensor:
    """(N, H, W) squared error per pixel, averaged over channels (on the [0, 1] scale with `std`)."""
    difference = (reconstructions - targets).cpu()
    if std is not None:
        difference = difference * torch.as_tensor(std, dtype=difference.dtype).view(1, -1, 1, 1)
    return (difference**2).mean(dim=1)


def watermark_kept(reconstructed_marked: torch.Tensor, reconstructed_clean: torch.Tensor, marked: torch.Tensor, clean: torch.Tensor,
                   boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How much of a stamped watermark a reconstruction carries, per image: (num, den) with
    num = <R(X_wm) - R(X), X_wm - X> and den = ||X_wm - X||^2 over the box (x0, y0, x1, y1) and channels.

    num / den is the share of the watermark's signal (its projection) that appears in the
    reconstruction: 1 when the watermark is reproduced, 0 when the reconstruction ignores it, 0.5 for
    a one-pixel checker reproduced as its mean grey. Pool over images as sum(num) / sum(den).
    """
    signal = (marked - clean).cpu()
    response = (reconstructed_marked - reconstructed_clean).cpu()
    num, den = np.empty(len(signal)), np.empty(len(signal))
    for i, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, dtype=np.int64)):
        s, r = signal[i, :, y0:y1, x0:x1], response[i, :, y0:y1, x0:x1]
        num[i], den[i] = float((s * r).sum()), float((s * s).sum())
    return num, den
