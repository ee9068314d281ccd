"""Class concepts (Herdt & Otero Baguer, "Concept Based Explanations and Class Contrasting", Sec. 4).

Why does the model predict class A? Take up to 500 images the model predicts as A, record a hidden
layer's activations and their attribution for A, keep each spatial position with positive
attribution scaled by that attribution, and factorise all kept activation vectors with NMF into n
concepts (Sec. 4.1). Concepts are shown as their most similar dataset crops (Sec. 4.2, `crop_search.py`)
and tested by stitching one crop per concept into a single image that the model should predict as
A (Sec. 4.3, `prediction_test.py`).

    sample = sample_class(model, dataset, "features.18", target=388, preprocess=preprocess)
    concepts = ConceptExtractor(n_concepts=4).fit(sample.activations, sample.attributions, layer="features.18")
    image = stitch_crops([top_crop(k) for k in range(4)])
    result = prediction_test(model, stitch_transform(preprocess), image, target=388)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..activations import LayerRecorder
from ..attribution import get_attribution_method, layer_attribution
from ..utils import float32_array

# Sec. 4.1 / 4.3: four concepts for the penultimate layer; Sec. 4.1 and App. D.1: 500 images.
N_CONCEPTS = 4
MAX_IMAGES = 500


def check_non_negative(activations: np.ndarray, layer: str | None = None) -> None:
    """Raise if `activations` (N, C, h, w) hold negative values: NMF needs post-ReLU layers (Sec. 3)."""
    lowest = float(activations.min()) if activations.size else 0.0
    if lowest < 0:
        image, channel, y, x = np.unravel_index(int(activations.argmin()), activations.shape)
        where = f"layer {layer!r}" if layer else "these activations"
        raise ValueError(
            f"{where} has negative values (min {lowest:.4g} at image {image}, channel {channel}, position ({y}, {x})); "
            "the concepts method factorises activations with NMF and needs a layer after a ReLU "
            "(paper Sec. 3), e.g. a block output that ends in a ReLU rather than a linear bottleneck"
        )


def attribution_weighted_vectors(activations, attributions) -> tuple[np.ndarray, np.ndarray]:
    """The scored activation vectors of Sec. 4.1: (vectors (M, C), positions (M, 3) = image, y, x).

    The attribution is averaged over channels to give one score per spatial position; positions
    with a score <= 0 are dropped and the C-dim activation vector of every other position is
    multiplied by its score.
    """
    activations, attributions = float32_array(activations), float32_array(attributions)
    if activations.ndim != 4 or activations.shape != attributions.shape:
        raise ValueError(
            f"activations and attributions must both be (N, C, h, w) of the same shape, "
            f"got {activations.shape} and {attributions.shape}"
        )
    scores = attributions.mean(axis=1)  # (N, h, w)
    positions = np.argwhere(scores > 0)
    image, y, x = positions.T
    vectors = activations[image, :, y, x] * scores[image, y, x][:, None]
    return vectors.astype(np.float32, copy=False), positions


class ConceptExtractor:
    """The n concepts a model uses for one class: NMF of attribution-scored activations (Sec. 4.1).

    Parameters (defaults from the paper):
      n_concepts   NMF components; 4 for the penultimate layer (Sec. 4.1, 4.3, Fig. 4)
      attribution  method for `fit_class` ("deeplift", Sec. 4.1; App. D.2 also tests
                   "grad_x_act" and "deeplift_smoothgrad"); see conceptscope.attribution
      max_images   images per class, 500 (Sec. 4.1; App. D.1: 100 already works about as well);
                   `fit` uses a seeded random subset when given more
      seed         subset choice, NMF initialisation and SmoothGrad noise
      init, solver, beta_loss, tol, max_iter
                   sklearn NMF settings; the paper uses "the default parameters" (Sec. 4.1), which
                   are these defaults
      attribution_options
                   options for `layer_attribution` in `fit_class` (baseline, n_samples, noise_std)

    Learned: components_ (n, C) concept vectors, most important first (non-negative; compare them
    by cosine similarity, their scale is arbitrary); importance_ (n,) share of the reconstructed
    scored activations each concept carries (sums to 1); reconstruction_err_ (Frobenius norm of
    X - WH) and relative_error_ (divided by the norm of X); n_images_, n_vectors_ (kept positions),
    kept_fraction_, n_iter_, image_indices_ (rows of the input that were used).
    """

    def __init__(
        self,
        n_concepts: int = N_CONCEPTS,
        attribution: str = "deeplift",
        max_images: int = MAX_IMAGES,
        seed: int = 0,
        *,
        init: str | None = None,
        solver: str = "cd",
        beta_loss: str | float = "frobenius",
        tol: float = 1e-4,
        max_iter: int = 200,
        attribution_options: dict | None = None,
    ):
        if int(n_concepts) < 1:
            raise ValueError(f"n_concepts must be >= 1, got {n_concepts}")
        if int(max_images) < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        allowed = get_attribution_method(attribution).options - {"seed"}  # the seed is `seed`
        unknown = sorted(set(attribution_options or {}) - allowed)
        if unknown:
            raise ValueError(f"attribution_options {unknown} are not options of {attribution!r} (it takes {sorted(allowed)})")
        self.n_concepts = int(n_concepts)
        self.attribution = attribution
        self.max_images = int(max_images)
        self.seed = int(seed)
        self.init = init
        self.solver = solver
        self.beta_loss = beta_loss
        self.tol = tol
        self.max_iter = max_iter
        self.attribution_options = dict(attribution_options or {})

    def fit(self, activations, attributions, *, layer: str | None = None) -> "ConceptExtractor":
        """Learn the concepts from activations (N, C, h, w) >= 0 and their attributions (N, C, h, w).

        `layer` only names the layer in error messages.
        """
        activations, attributions = float32_array(activations), float32_array(attributions)
        if activations.ndim != 4 or activations.shape != attributions.shape:
            raise ValueError(
                f"activations and attributions must both be (N, C, h, w) of the same shape, "
                f"got {activations.shape} and {attributions.shape}"
            )
        if len(activations) == 0:
            raise ValueError("no images to fit concepts on")
        check_non_negative(activations, layer)
        indices = np.arange(len(activations))
        if len(indices) > self.max_images:
            indices = np.sort(np.random.default_rng(self.seed).choice(len(indices), self.max_images, replace=False))
            activations, attributions = activations[indices], attributions[indices]
        vectors, _ = attribution_weighted_vectors(activations, attributions)
        self.fit_vectors(vectors, n_positions=activations.shape[0] * activations.shape[2] * activations.shape[3], n_images=len(indices))
        self.image_indices_ = indices
        return self

    def fit_vectors(self, vectors, *, n_positions: int | None = None, n_images: int | None = None) -> "ConceptExtractor":
        """Learn the concepts from scored activation vectors (M, C) >= 0 (`attribution_weighted_vectors`).

        Lets several NMF sizes share one attribution pass (the Figure 4 sweep over n). `n_positions`
        (all spatial positions the vectors were kept from) and `n_images` only fill kept_fraction_ and n_images_.
        """
        vectors = float32_array(vectors)
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be (M, C), got shape {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise ValueError("scored activation vectors hold NaN or inf (check the layer's activations and attributions)")
        if len(vectors) and float(vectors.min()) < 0:
            raise ValueError("scored activation vectors must be non-negative (NMF); the layer is not post-ReLU")
        if len(vectors) < self.n_concepts:
            raise ValueError(
                f"only {len(vectors)} positions have positive attribution, fewer than n_concepts={self.n_concepts}; "
                "use more images or fewer concepts"
            )
        if not np.any(vectors > 0):
            raise ValueError("every scored activation vector is zero: the kept positions have no activation to factorise")
        from sklearn.decomposition import NMF  # here, not at the top: jobs that only search crops skip sklearn's ~1 s import

        nmf = NMF(
            n_components=self.n_concepts,
            init=self.init,
            solver=self.solver,
            beta_loss=self.beta_loss,
            tol=self.tol,
            max_iter=self.max_iter,
            random_state=self.seed,
        )
        weights = nmf.fit_transform(vectors)  # (M, n): the "embeddings" the paper does not use
        components = nmf.components_
        mass = weights.sum(axis=0) * components.sum(axis=1)
        order = np.argsort(-mass, kind="stable")
        total = float(mass.sum())
        self.components_ = components[order].astype(np.float32)
        self.importance_ = (mass[order] / total if total > 0 else np.full(self.n_concepts, 1.0 / self.n_concepts)).astype(np.float64)
        self.reconstruction_err_ = float(nmf.reconstruction_err_)
        norm = float(np.linalg.norm(vectors))
        self.relative_error_ = self.reconstruction_err_ / norm if norm > 0 else 0.0
        self.n_iter_ = int(nmf.n_iter_)
        self.n_images_ = n_images
        self.n_vectors_ = len(vectors)
        self.kept_fraction_ = len(vectors) / float(n_positions) if n_positions else float("nan")
        return self

    def fit_class(
        self,
        model: nn.Module,
        dataset: Dataset,
        layer: str,
        target: int,
        *,
        preprocess: dict | None = None,
        batch_size: int = 32,
        progress: bool = True,
    ) -> "ConceptExtractor":
        """Sample the images `model` predicts as `target` (see `sample_class`) and fit on them.

        Also learns image_ids_ (the images used, in dataset order).
        """
        sample = sample_class(
            model,
            dataset,
            layer,
            target,
            method=self.attribution,
            max_images=self.max_images,
            batch_size=batch_size,
            preprocess=preprocess,
            seed=self.seed,
            attribution_options=self.attribution_options,
            progress=progress,
        )
        self.fit(sample.activations, sample.attributions, layer=layer)
        self.image_ids_ = sample.image_ids[self.image_indices_]
        return self


# --------------------------------------------------------------------------------------------
# Images predicted as one class, with activations and attributions


@dataclass(frozen=True)
class ClassSample:
    """Up to S images the model predicts as `target`, with their layer activations and attributions."""

    target: int
    layer: str
    method: str
    image_ids: np.ndarray  # (S,)
    labels: np.ndarray  # (S,) ground truth, kept for reference only (the method ignores it)
    activations: np.ndarray  # (S, C, h, w)
    attributions: np.ndarray  # (S, C, h, w)
    n_scanned: int  # images looked at to find them


def sample_class(
    model: nn.Module,
    dataset: Dataset,
    layer: str,
    target: int,
    *,
    method: str = "deeplift",
    max_images: int = MAX_IMAGES,
    batch_size: int = 32,
    preprocess: dict | None = None,
    seed: int = 0,
    attribution_options: dict | None = None,
    progress: bool = True,
) -> ClassSample:
    """Activations and attributions for `target` of the first `max_images` images predicted as it.

    dataset items are (image tensor, label, image_id), e.g. `ImageDataset`. Selection is by the
    model's argmax prediction, not the label (Sec. 4.1: "we ignore the ground truth label").
    Memory for the computation is bounded by one batch; the scan stops once `max_images` are found.
    The model runs on the device its parameters are on; the results are float32 numpy arrays.
    """
    options = dict(attribution_options or {})
    if "seed" in get_attribution_method(method).options:
        options.setdefault("seed", seed)
    device = next(model.parameters()).device
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    activations, attributions, image_ids, labels = [], [], [], []
    found = scanned = 0
    with tqdm(total=max_images, desc=f"class {target} ({method})", disable=not progress, leave=False) as bar:
        for batch_index, (images, batch_labels, batch_ids) in enumerate(loader):
            images = images.to(device)
            with torch.no_grad(), LayerRecorder(model, [layer]) as recorder:
                predicted = model(images).argmax(dim=1)
            scanned += len(images)
            chosen = torch.nonzero(predicted == target).flatten()[: max_images - found]
            if len(chosen):
                if "seed" in options:
                    # a different noise draw per batch, fixed by the seed
                    options["seed"] = seed + batch_index
                attribution = layer_attribution(model, images[chosen], layer, int(target), method, preprocess=preprocess, **options)
                activations.append(recorder.outputs[layer][chosen].float().cpu().numpy())
                attributions.append(attribution.float().cpu().numpy())
                image_ids.append(np.asarray(batch_ids)[chosen.cpu().numpy()])
                labels.append(np.asarray(batch_labels)[chosen.cpu().numpy()])
                found += len(chosen)
                bar.update(len(chosen))
            if found >= max_images:
                break
    if not found:
        raise ValueError(
            f"none of the {scanned} images is predicted as class {target}; "
            "the concepts of a class are learned from images the model predicts as that class"
        )
    return ClassSample(
        target=int(target),
        layer=layer,
        method=method,
        image_ids=np.concatenate(image_ids).astype(np.int64),
        labels=np.concatenate(labels).astype(np.int64),
        activations=np.concatenate(activations),
        attributions=np.concatenate(attributions),
        n_scanned=scanned,
    )


def iter_class_samples(
    model: nn.Module,
    dataset: Dataset,
    targets: Sequence[int],
    layer: str,
    *,
    method: str = "deeplift",
    batch_size: int = 32,
    preprocess: dict | None = None,
    seed: int = 0,
    attribution_options: dict | None = None,
    progress: bool = True,
) -> Iterator[ClassSample]:
    """Activations and attributions of many classes in one pass, one `ClassSample` per class.

    `dataset` items are (image, label, image_id) sorted so that each class's images are contiguous;
    `targets[i]` is the class item i is explained for (the model's predicted class, from the
    `predict` rule: Sec. 4.1 selects images by prediction). Batches run across class boundaries
    (captum takes one target per image), so a class with few images costs no extra pass; a class
    is yielded as soon as its last image is done, so memory holds one class and one batch.
    """
    targets = np.asarray(targets, dtype=np.int64)
    if len(targets) != len(dataset):
        raise ValueError(f"{len(targets)} targets for {len(dataset)} images")
    starts = np.flatnonzero(np.r_[True, targets[1:] != targets[:-1]])
    if len(np.unique(targets[starts])) != len(starts):
        raise ValueError("images must be grouped by target class (a class appears in two runs)")
    return _class_samples(model, dataset, targets, starts, layer, method, batch_size, preprocess, seed, dict(attribution_options or {}), progress)


def _class_samples(model, dataset, targets, starts, layer, method, batch_size, preprocess, seed, options, progress) -> Iterator[ClassSample]:
    device = next(model.parameters()).device
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    pending: dict[str, list[np.ndarray]] = {"activations": [], "attributions": [], "image_ids": [], "labels": []}
    position = 0
    ends = np.r_[starts[1:], len(targets)]
    next_class = 0

    def flush(cls_index: int) -> ClassSample:
        sample = ClassSample(
            target=int(targets[starts[cls_index]]),
            layer=layer,
            method=method,
            image_ids=np.concatenate(pending["image_ids"]).astype(np.int64),
            labels=np.concatenate(pending["labels"]).astype(np.int64),
            activations=np.concatenate(pending["activations"]),
            attributions=np.concatenate(pending["attributions"]),
            n_scanned=int(ends[cls_index] - starts[cls_index]),
        )
        for value in pending.values():
            value.clear()
        return sample

    with tqdm(total=len(targets), desc=f"attribution {layer} ({method})", disable=not progress) as bar:
        for batch_index, (images, labels, ids) in enumerate(loader):
            batch_targets = torch.tensor(targets[position : position + len(images)])
            images = images.to(device)
            with torch.no_grad(), LayerRecorder(model, [layer]) as recorder:
                model(images)
            if "seed" in get_attribution_method(method).options:
                options["seed"] = seed + batch_index  # a different noise draw per batch, fixed by the seed
            attribution = layer_attribution(model, images, layer, batch_targets, method, preprocess=preprocess, **options)
            acts = recorder.outputs[layer].float().cpu().numpy()
            attrs = attribution.float().cpu().numpy()
            ids, labels = np.asarray(ids), np.asarray(labels)
            offset = 0
            while offset < len(images):
                take = min(len(images) - offset, int(ends[next_class] - (position + offset)))
                part = slice(offset, offset + take)
                pending["activations"].append(acts[part])
                pending["attributions"].append(attrs[part])
                pending["image_ids"].append(ids[part])
                pending["labels"].append(labels[part])
                offset += take
                if position + offset == ends[next_class]:
                    bar.set_postfix_str(f"class {int(targets[starts[next_class]])} ({next_class + 1}/{len(starts)} classes)", refresh=False)
                    yield flush(next_class)
                    next_class += 1
            position += len(images)
            bar.update(len(images))
