"""NAVE (Neuro-Activated Vision Explanations, "Explaining the Impact of Training on Vision Models via
Activation Clustering"): segment images by clustering a frozen model's hidden activations, and the
object-extraction proxy that scores the segments against ground-truth boxes.

Algorithm 1: every chosen layer's map (C, h, w) is upsampled bicubically to a common (H, W), each
pixel's C-vector is L2-normalised and divided by (1 + C), the layers are concatenated per pixel, and
the H*W pixel vectors are clustered into K segments (k-means with k-means++ by default, Sec. 3;
deterministic Ward hierarchical clustering as the alternative). Clustering one image gives an
image-wise explanation; clustering the pixels of all images of a class together gives class-wide
segments whose ids mean the same thing in every image (Sec. 4.3).

    nave = ActivationClustering(n_clusters=5, method="kmeans", seed=0)
    labels = nave.fit_predict([acts_a[i:i+1], acts_b[i:i+1]])      # (1, H, W), one image
    classwide = ActivationClustering(n_clusters=10, max_fit_pixels=100_000).fit_predict([acts_a])
    hit = select_segment(upsample_labels(labels[0], (224, 224)), boxes, "outer")   # Sec. 4.2

Object extraction (Sec. 4.2): for each image, the segment whose box has the largest IoU with a
ground-truth box is selected, and AP@50 is the share of images where that IoU exceeds 0.5. Two boxes
of a segment (its pixels need not be connected):

- outer box: the smallest axis-aligned rectangle that contains every pixel of the segment;
- inner box: the largest-area axis-aligned rectangle that contains only pixels of the segment.

The paper defers the inner box's definition to its supplement, which we do not have. Our reading:
the inner box is the segment's largest inscribed rectangle, so it never covers pixels of other
segments; this makes it stricter than the outer box (the paper's inner-box scores are the lower
ones) and it agrees with the paper's remark that both strategies pick a segment whose outer box
meets a true box: only those segments are candidates here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

# Ward on P pixels keeps a condensed P x P distance matrix (8 bytes each): 20,000 pixels ~ 1.6 GB.
WARD_MAX_PIXELS = 20_000


# --------------------------------------------------------------------------------------------
# Algorithm 1


def clustering_grid(map_shapes: Sequence[Sequence[int]], resolution: int | Sequence[int] | None = None) -> tuple[int, int]:
    """The clustering grid (H, W): `resolution` (one side or (H, W)), or else the largest of the maps' (h, w)."""
    if resolution is not None:
        return (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    return max((tuple(shape[-2:]) for shape in map_shapes), key=lambda hw: hw[0] * hw[1])


def nave_features(maps: Sequence[np.ndarray | torch.Tensor], size: tuple[int, int] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Per-pixel NAVE vectors (N, H*W, sum C) of layer maps [(N, C_i, h_i, w_i), ...], and (H, W) (Algorithm 1, l. 2-10).

    `size` is the clustering grid (H, W); None takes the largest map of the layers (the paper
    recommends the first extracted layer's resolution to avoid upsampling artefacts).
    """
    if not maps:
        raise ValueError("NAVE needs at least one layer's activations")
    tensors = [torch.as_tensor(np.asarray(m) if not torch.is_tensor(m) else m).float() for m in maps]
    for t in tensors:
        if t.ndim != 4:
            raise ValueError(f"layer activations must be (N, C, h, w) maps, got shape {tuple(t.shape)}")
    if len({t.shape[0] for t in tensors}) != 1:
        raise ValueError(f"layers hold different image counts: {[t.shape[0] for t in tensors]}")
    size = clustering_grid([t.shape for t in tensors], size)
    parts = []
    for t in tensors:
        if tuple(t.shape[-2:]) != size:
            t = F.interpolate(t, size=size, mode="bicubic", align_corners=False)
        n, c = t.shape[:2]
        u = t.reshape(n, c, -1).transpose(1, 2)  # (N, H*W, C)
        u = u / u.norm(dim=2, keepdim=True).clamp_min(1e-12)  # zero vectors stay zero
        parts.append(u / (1 + c))
    return torch.cat(parts, dim=2).numpy(), size


def _kmeans(x: np.ndarray, k: int, seed: int, n_init: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():  # fewer distinct pixels than K (e.g. a constant map) is not an error
        warnings.simplefilter("ignore", ConvergenceWarning)
        km = KMeans(n_clusters=k, init="k-means++", n_init=n_init, random_state=seed).fit(x)
    return km.labels_, km.cluster_centers_


def _ward(x: np.ndarray, k: int, seed: int, n_init: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import AgglomerativeClustering

    if len(x) > WARD_MAX_PIXELS:
        raise ValueError(
            f"Ward clustering of {len(x)} pixels needs a {len(x)}^2 distance matrix; lower nave.resolution, "
            f"set max_fit_pixels <= {WARD_MAX_PIXELS}, or use k-means"
        )
    labels = AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(x)
    centers = np.stack([x[labels == c].mean(axis=0) for c in range(labels.max() + 1)])
    return labels, centers


# clustering backends by config name: (pixels (P, D), K, seed, n_init) -> (labels (P,), centres (K', D))
CLUSTERINGS: dict[str, Callable[[np.ndarray, int, int, int], tuple[np.ndarray, np.ndarray]]] = {"kmeans": _kmeans, "ward": _ward}


def _canonical(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relabel clusters 0, 1, ... in order of first appearance (raster order); returns labels, old ids."""
    _, first = np.unique(labels, return_index=True)
    order = labels[np.sort(first)]
    lookup = np.empty(labels.max() + 1, dtype=np.int64)
    lookup[order] = np.arange(len(order))
    return lookup[labels], order


def _nearest_center(x: np.ndarray, centers: np.ndarray, chunk: int = 65536) -> np.ndarray:
    out = np.empty(len(x), dtype=np.int64)
    c_sq = (centers**2).sum(axis=1)
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk]
        out[start : start + chunk] = np.argmin(c_sq[None, :] - 2 * part @ centers.T, axis=1)
    return out


class ActivationClustering:
    """NAVE segmentation (Algorithm 1): cluster per-pixel activation vectors of one or more layers.

    n_clusters: K (paper: 5 per image, 10 class-wide). method: `kmeans` (sklearn, k-means++, the
    paper's default) or `ward` (deterministic agglomerative clustering). resolution: the clustering
    grid (H, W) or one side; None = the largest map among the layers. max_fit_pixels: fit on a
    seeded random subset of at most this many pixel vectors and assign every pixel to the nearest
    cluster centre (bounded memory for class-wide clustering of hundreds of images); None = all.
    progress: progress bars over the images (`segment_images`) and over the image batches of a
    subset fit (`fit_predict` with `max_fit_pixels`).
    """

    def __init__(
        self,
        n_clusters: int = 5,
        method: str = "kmeans",
        resolution: int | tuple[int, int] | None = None,
        n_init: int = 1,
        seed: int = 0,
        max_fit_pixels: int | None = None,
        *,
        progress: bool = True,
    ):
        if n_clusters < 1:
            raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
        if method not in CLUSTERINGS:
            raise ValueError(f"unknown clustering {method!r}; expected one of {sorted(CLUSTERINGS)}")
        if max_fit_pixels is not None and max_fit_pixels < n_clusters:
            raise ValueError(f"max_fit_pixels ({max_fit_pixels}) must be at least n_clusters ({n_clusters})")
        self.n_clusters, self.method, self.resolution = n_clusters, method, resolution
        self.n_init, self.seed, self.max_fit_pixels = n_init, seed, max_fit_pixels
        self.batch_images = 32  # images whose features are built at once when fitting on a subset
        self.progress = progress

    def fit_predict(self, maps: Sequence[np.ndarray | torch.Tensor]) -> np.ndarray:
        """Labels (N, H, W) of one clustering shared by all N images of `maps` [(N, C_i, h_i, w_i), ...].

        N = 1 is the image-wise explanation; N > 1 the class-wide one. Cluster ids are renumbered in
        order of first appearance, so the same partition always gets the same labels.
        """
        n = np.shape(maps[0])[0]
        height, width = clustering_grid([np.shape(m) for m in maps], self.resolution)
        p = height * width
        cluster = CLUSTERINGS[self.method]
        if self.max_fit_pixels is None or n * p <= self.max_fit_pixels:
            features, _ = nave_features(maps, (height, width))
            labels, centers = cluster(features.reshape(n * p, -1), self.n_clusters, self.seed, self.n_init)
        else:  # fit on a seeded pixel subset, then assign all pixels; features built a batch of images at a time
            subset = np.sort(np.random.default_rng(self.seed).choice(n * p, self.max_fit_pixels, replace=False))
            fit = []
            starts = range(0, n, self.batch_images)
            for start in tqdm(starts, desc=f"NAVE features ({n} images)", unit="batch", disable=not self.progress, leave=False):
                features, _ = nave_features([m[start : start + self.batch_images] for m in maps], (height, width))
                flat = features.reshape(-1, features.shape[-1])
                chosen = subset[(subset >= start * p) & (subset < start * p + len(flat))] - start * p
                fit.append(flat[chosen])
            _, centers = cluster(np.concatenate(fit), self.n_clusters, self.seed, self.n_init)
            labels = np.concatenate([
                _nearest_center(nave_features([m[start : start + self.batch_images] for m in maps], (height, width))[0].reshape(-1, centers.shape[1]), centers)
                for start in tqdm(starts, desc=f"NAVE assign ({n} images)", unit="batch", disable=not self.progress, leave=False)
            ])
        labels, order = _canonical(np.asarray(labels))
        self.cluster_centers_ = centers[order]
        self.labels_ = labels.reshape(n, height, width)
        return self.labels_

    def segment_images(self, maps: Sequence[np.ndarray | torch.Tensor]) -> np.ndarray:
        """Image-wise labels (N, H, W): each image of `maps` clustered on its own."""
        n = np.shape(maps[0])[0]
        if not n:
            return np.zeros((0, 1, 1), np.int64)
        images = tqdm(range(n), desc="NAVE images", unit="image", disable=not self.progress, leave=False)
        return np.concatenate([self.fit_predict([m[i : i + 1] for m in maps]) for i in images])


def upsample_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of label maps (..., h, w) to (..., H, W) (the paper's display choice)."""
    labels = np.asarray(labels)
    h, w = labels.shape[-2:]
    rows = np.minimum((np.arange(size[0]) * h) // size[0], h - 1)
    cols = np.minimum((np.arange(size[1]) * w) // size[1], w - 1)
    return labels[..., rows[:, None], cols[None, :]]


# --------------------------------------------------------------------------------------------
# Segment boxes and the object-extraction proxy (Sec. 4.2)

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1) pixel edges: columns x0..x1-1, rows y0..y1-1


def outer_box(mask: np.ndarray) -> Box | None:
    """Smallest axis-aligned rectangle containing every True pixel of `mask` (H, W); None if empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def inner_box(mask: np.ndarray) -> Box | None:
    """Largest-area axis-aligned rectangle of only True pixels in `mask` (H, W); None if empty.

    Row by row, the heights of True runs ending at that row form a histogram whose largest rectangle
    is found with a stack (O(H*W)); ties keep the first found (top-most, then left-most bottom edge).
    """
    box = outer_box(mask)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    sub = np.asarray(mask[y0:y1, x0:x1], dtype=bool)
    heights = np.zeros(sub.shape[1], dtype=np.int64)
    best_area, best = 0, None
    for r, row in enumerate(sub):
        heights = np.where(row, heights + 1, 0)
        if heights.max() * sub.shape[1] <= best_area:
            continue
        stack: list[tuple[int, int]] = []  # (start column, height), heights increasing
        for c, h in enumerate([*heights.tolist(), 0]):
            start = c
            while stack and stack[-1][1] >= h:
                s, sh = stack.pop()
                if sh * (c - s) > best_area:
                    best_area, best = sh * (c - s), (s, r - sh + 1, c, r + 1)
                start = s
            stack.append((start, h))
    bx0, by0, bx1, by1 = best
    return bx0 + x0, by0 + y0, bx1 + x0, by1 + y0


# segment box strategies by config name
BOX_STRATEGIES: dict[str, Callable[[np.ndarray], Box | None]] = {"outer": outer_box, "inner": inner_box}


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes (0 when either is empty)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass(frozen=True)
class Selection:
    """The segment picked for an image: its id (-1: none), its box in the frame, and the best IoU."""

    segment: int
    box: Box | None
    iou: float


def _scaled(box: Box, fy: int, fx: int) -> Box:
    return box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy


def select_segment(labels: np.ndarray, targets: np.ndarray, strategy: str = "outer", frame: tuple[int, int] | None = None) -> Selection:
    """The segment of `labels` (h, w) whose `strategy` box best overlaps one of `targets` (M, 4).

    `targets` are (x0, y0, x1, y1) in the `frame` (H, W) the labels are shown in (None: the labels'
    own size); the labels are upsampled to it by nearest neighbour. Candidates are the segments
    whose outer box meets a target (Sec. 4.2). Returns the segment, its box in the frame, and its
    best IoU with any target.
    """
    if strategy not in BOX_STRATEGIES:
        raise ValueError(f"unknown box strategy {strategy!r}; expected one of {sorted(BOX_STRATEGIES)}")
    labels = np.asarray(labels)
    targets = np.asarray(targets, dtype=np.float64).reshape(-1, 4)
    targets = targets[np.isfinite(targets).all(axis=1)]
    h, w = labels.shape
    frame = tuple(frame) if frame else (h, w)
    if frame[0] % h == 0 and frame[1] % w == 0:  # an integer blow-up: boxes scale exactly
        fy, fx = frame[0] // h, frame[1] // w
    else:
        labels, fy, fx = upsample_labels(labels, frame), 1, 1
    best = Selection(-1, None, 0.0)
    for segment in np.unique(labels):
        mask = labels == segment
        outer = _scaled(outer_box(mask), fy, fx)
        if not any(box_iou(outer, t) > 0 for t in targets):
            continue
        box = outer if strategy == "outer" else _scaled(inner_box(mask), fy, fx)
        iou = max(box_iou(box, t) for t in targets)
        if iou > best.iou:
            best = Selection(int(segment), box, iou)
    return best


def select_segment_mask(labels: np.ndarray, targets: np.ndarray, frame: tuple[int, int] | None = None) -> Selection:
    """The segment of `labels` (h, w) whose pixels best match a target region: the pixel IoU of the
    segment's mask with the filled box (x0, y0, x1, y1) in `frame`, labels upsampled to it by nearest
    neighbour. For a planted watermark (a filled square) this asks whether NAVE gives it a segment of
    its own (the paper's Sec. 4.5.3: "one model's explanation dedicates a single cluster to the watermark"),
    which a box drawn around a segment that also holds digit strokes does not show."""
    labels = np.asarray(labels)
    targets = np.asarray(targets, dtype=np.float64).reshape(-1, 4)
    targets = targets[np.isfinite(targets).all(axis=1)]
    frame = tuple(frame) if frame else labels.shape
    labels = upsample_labels(labels, frame) if labels.shape != frame else labels
    best = Selection(-1, None, 0.0)
    for target in targets:
        region = np.zeros(frame, dtype=bool)
        x0, y0, x1, y1 = (int(round(v)) for v in target)
        region[max(y0, 0):y1, max(x0, 0):x1] = True
        for segment in np.unique(labels[region]):
            mask = labels == segment
            iou = float((mask & region).sum() / (mask | region).sum())
            if iou > best.iou:
                best = Selection(int(segment), outer_box(mask), iou)
    return best


def score_segments(labels: np.ndarray, frame: tuple[int, int], strategies: Sequence[str], targets: dict[str, np.ndarray]) -> list[dict]:
    """One row per target kind (e.g. `object`, `watermark`) x strategy: the selected segment, its box, IoU.

    Target kinds whose boxes are all missing (NaN) or empty are skipped. The watermark also gets a
    `mask` row: the segment whose pixels best match the watermark square (`select_segment_mask`).
    """
    rows = []
    for kind, boxes in targets.items():
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        boxes = boxes[np.isfinite(boxes).all(axis=1) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
        if not len(boxes):
            continue
        for strategy in [*strategies, *(["mask"] if kind == "watermark" else [])]:
            hit = select_segment_mask(labels, boxes, frame) if strategy == "mask" else select_segment(labels, boxes, strategy, frame)
            x0, y0, x1, y1 = hit.box if hit.box is not None else (np.nan,) * 4
            rows.append({"target": kind, "strategy": strategy, "segment": hit.segment, "x0": x0, "y0": y0, "x1": x1, "y1": y1, "iou": hit.iou})
    return rows


def correct_localization(ious: Sequence[float], threshold: float = 0.5) -> float:
    """AP@50 in the paper's sense (the Correct Localization metric of LOST): share of IoUs > threshold."""
    ious = np.asarray(ious, dtype=np.float64)
    return float((ious > threshold).mean()) if len(ious) else float("nan")


# --------------------------------------------------------------------------------------------
# Model-agnostic baselines (scikit-image), applied with the same selection strategies


def slic_segments(image: np.ndarray, n_segments: int = 5, compactness: float = 10.0, sigma: float = 0.0) -> np.ndarray:
    """SLIC superpixels (Achanta et al.) of a uint8 (H, W) or (H, W, 3) image: labels (H, W)."""
    from skimage.segmentation import slic

    channel_axis = -1 if image.ndim == 3 else None
    return slic(image, n_segments=n_segments, compactness=compactness, sigma=sigma, start_label=0, channel_axis=channel_axis)


def felzenszwalb_segments(image: np.ndarray, scale: float = 100.0, sigma: float = 0.8, min_size: int = 50) -> np.ndarray:
    """Felzenszwalb-Huttenlocher graph segmentation of a uint8 (H, W) or (H, W, 3) image: labels (H, W)."""
    from skimage.segmentation import felzenszwalb

    channel_axis = -1 if image.ndim == 3 else None
    return felzenszwalb(image, scale=scale, sigma=sigma, min_size=min_size, channel_axis=channel_axis)


BASELINES: dict[str, Callable[..., np.ndarray]] = {"slic": slic_segments, "felzenszwalb": felzenszwalb_segments}
