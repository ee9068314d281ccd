"""Class contrasting (Herdt & Otero Baguer, "Concept Based Explanations and Class Contrasting", Sec. 5).

Why does the model predict class A over class B? Per class, keep the hidden-layer activation
vectors of the positions whose attribution for the class is at least 0.25 x the image's maximum
(filter only, Sec. 5.1.1). For a pair of classes, a linear classifier (one linear layer with a
scalar bias and a sigmoid, BCE, SGD lr 0.01, 100 full-batch epochs) separates A's vectors from B's;
its weight vector is the hyperplane normal, pointing from B towards A. Contrast concepts are the
NMF concepts of x' = max(w.x + b, 0) x over the images predicted as A (Sec. 5.1.2). The shifting
test (Sec. 5.2.1, Table 3, `shifting.py`) moves the activations of images of B along the normal and
records the best softmax for A over ten fixed offsets.

The paper trains ~1M such classifiers one at a time (App. B: 35 h on a GPU). `ContrastHyperplanes`
trains all pairs at once: the vectors of each class are multiplied by the weights of every pair that
class is in (one matrix product per class and epoch instead of one matrix-vector product per pair),
which is the same arithmetic as the one-pair loop (`train_pair_reference`, kept for tests and the
benchmark) and gives the same weights up to floating-point rounding.

    vectors = {c: cutoff_vectors(acts_c, attrs_c)[0] for c, (acts_c, attrs_c) in per_class.items()}
    planes = ContrastHyperplanes(seed=0).fit(vectors)
    w, b = planes.hyperplane(a, b)          # w.x + b > 0: predictive for a rather than b
    scored = contrast_weighted_vectors(acts_of_a, w, b)
"""

from __future__ import annotations

import math
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import zarr
from torch import nn
from tqdm.auto import tqdm

from ..utils import float32_array

# Sec. 5.1.1: positions below 0.25 x the image's maximum attribution are dropped.
CUTOFF = 0.25
# Sec. 5.1.1: 100 full-batch epochs of SGD with learning rate 0.01.
EPOCHS = 100
LEARNING_RATE = 0.01
# Sec. 5.2.1 / App. D.3: ten fixed offsets along the (unnormalised) hyperplane normal, the same for
# all classes and layers; these are the values of the authors' shifting-test script.
SHIFT_OFFSETS = (0.0, 0.5, 1.0, 2.0, 10.0, 15.0, 20.0, 35.0, 50.0, 200.0)
# Sec. 5.2.1: each class is a start class B with 10 random targets A, repeated 5 times.
SHIFT_TARGETS = 10
SHIFT_REPEATS = 5


def cutoff_vectors(activations, attributions, cutoff: float = CUTOFF) -> tuple[np.ndarray, np.ndarray]:
    """The unscaled activation vectors of the positions the class relies on (Sec. 5.1.1).

    activations, attributions: (N, C, h, w). The attribution is averaged over channels; a position
    is kept when its score is positive and at least `cutoff` x the highest score of its image.
    Returns (vectors (M, C), positions (M, 3) = image, y, x).
    """
    activations, attributions = float32_array(activations), float32_array(attributions)
    if activations.ndim != 4 or activations.shape != attributions.shape:
        raise ValueError(
            f"activations and attributions must both be (N, C, h, w) of the same shape, got {activations.shape} and {attributions.shape}"
        )
    if not 0 <= cutoff <= 1:
        raise ValueError(f"cutoff must be in [0, 1] (a share of the image's maximum attribution), got {cutoff}")
    scores = attributions.mean(axis=1)  # (N, h, w)
    peak = scores.reshape(len(scores), -1).max(axis=1, initial=-np.inf)[:, None, None]
    positions = np.argwhere((scores > 0) & (scores >= cutoff * peak))
    image, y, x = positions.T
    return activations[image, :, y, x].astype(np.float32, copy=False), positions


def contrast_weighted_vectors(activations, weight, bias) -> tuple[np.ndarray, np.ndarray]:
    """The scored vectors of Sec. 5.1.2: x' = max(w.x + b, 0) x for every position with w.x + b > 0.

    activations: (N, C, h, w); weight: (C,); bias: scalar. Returns (vectors (M, C), positions (M, 3)).
    """
    activations = float32_array(activations)
    weight = float32_array(weight).reshape(-1)
    if activations.ndim != 4 or activations.shape[1] != len(weight):
        raise ValueError(f"activations must be (N, C, h, w) with C = {len(weight)} (the hyperplane's size), got {activations.shape}")
    z = np.einsum("nchw,c->nhw", activations, weight) + float(bias)
    positions = np.argwhere(z > 0)
    image, y, x = positions.T
    return (activations[image, :, y, x] * z[image, y, x][:, None]).astype(np.float32, copy=False), positions


# --------------------------------------------------------------------------------------------
# Pairwise linear classifiers


def pair_init(a: int, b: int, n_features: int, seed: int) -> tuple[np.ndarray, float]:
    """Initial (weight (C,), bias) of the classifier for the ordered pair (a, b).

    The distribution of torch.nn.Linear(C, 1) (uniform in +-1/sqrt(C)), drawn from a generator keyed
    by (seed, a, b): a pair starts from the same point however the pairs are batched or chunked.
    """
    bound = 1.0 / math.sqrt(n_features)
    rng = np.random.default_rng([int(seed), int(a), int(b)])
    values = rng.uniform(-bound, bound, n_features + 1)
    return values[:n_features].astype(np.float32), float(values[n_features])


def train_pair_reference(
    positives,
    negatives,
    weight0,
    bias0: float,
    *,
    epochs: int = EPOCHS,
    lr: float = LEARNING_RATE,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, float, float, float]:
    """One classifier as the paper trains it (Sec. 5.1.1): nn.Linear + sigmoid/BCE, full-batch SGD.

    positives (label 1) and negatives (label 0): (N_a, C), (N_b, C). Returns (weight (C,), bias,
    accuracy, loss) after training; accuracy and loss are measured with the final weights.
    """
    x = torch.cat([torch.as_tensor(float32_array(positives)), torch.as_tensor(float32_array(negatives))]).to(device, dtype)
    y = torch.cat([torch.ones(len(positives)), torch.zeros(len(negatives))]).to(device, dtype)
    linear = nn.Linear(x.shape[1], 1).to(device, dtype)
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(np.asarray(weight0)).reshape(1, -1))
        linear.bias.fill_(float(bias0))
    optimizer = torch.optim.SGD(linear.parameters(), lr=lr)
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(linear(x).squeeze(1), y)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits = linear(x).squeeze(1)
        accuracy = float(((logits > 0).to(dtype) == y).to(torch.float64).mean())
        loss = float(F.binary_cross_entropy_with_logits(logits, y))
    return linear.weight.detach().reshape(-1).cpu().numpy(), float(linear.bias.detach()), accuracy, loss


def all_pairs(classes: Sequence[int], ordered: bool = False) -> np.ndarray:
    """(P, 2) class pairs (a, b), a != b: every ordered pair, or a < b when unordered."""
    classes = [int(c) for c in classes]
    return np.asarray(
        [(a, b) for a in classes for b in classes if (a != b if ordered else a < b)], dtype=np.int64
    ).reshape(-1, 2)


class ContrastHyperplanes:
    """Linear classifiers separating the cutoff vectors of every pair of classes (Sec. 5.1.1).

    Parameters are the paper's: `epochs` full-batch steps of SGD with learning rate `lr` on the mean
    binary cross-entropy of a linear layer with a scalar bias. `ordered=False` trains each unordered
    pair once and answers (b, a) with the negated classifier of (a, b) (BCE is symmetric under
    swapping the labels and negating the logits); `ordered=True` trains both directions, each from
    its own initialisation, as the paper's 1M classifiers do. `seed` fixes the initialisations
    (`pair_init`). Pairs are trained `chunk_pairs` at a time (memory: about 4 x chunk_pairs x C
    floats plus the class vectors), on `device` (default: CUDA when present).

    Learned: classes_ (K,), pairs_ (P, 2) with the classifier predicting pairs_[:, 0] (label 1)
    against pairs_[:, 1], coef_ (P, C), intercept_ (P,), accuracy_ (P,), loss_ (P,), n_vectors_ (K,).
    """

    def __init__(
        self,
        *,
        epochs: int = EPOCHS,
        lr: float = LEARNING_RATE,
        ordered: bool = False,
        seed: int = 0,
        chunk_pairs: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        progress: bool = True,
    ):
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if chunk_pairs is not None and chunk_pairs < 1:
            raise ValueError(f"chunk_pairs must be >= 1, got {chunk_pairs}")
        self.epochs = epochs
        self.lr = lr
        self.ordered = ordered
        self.seed = seed
        self.chunk_pairs = chunk_pairs
        self.device = device
        self.dtype = dtype
        self.progress = progress
        self._lookup: dict[tuple[int, int], int] | None = None

    def fit(self, class_vectors: Mapping[int, np.ndarray], pairs: np.ndarray | None = None) -> "ContrastHyperplanes":
        """Train the classifier of every pair (default: `all_pairs` of the classes given).

        class_vectors: class -> (N_c, C) cutoff vectors; a class with no vector is left out of the
        default pairs (its pairs are listed nowhere) and refused in explicit `pairs`. Fewer than two
        classes with vectors give no pair (empty results), not an error.
        """
        vectors = {int(c): float32_array(v) for c, v in class_vectors.items()}
        widths = {v.shape[1] for v in vectors.values() if v.ndim == 2}
        if any(v.ndim != 2 for v in vectors.values()) or len(widths) > 1:
            raise ValueError(f"class vectors must all be (N_c, C) with one C; got shapes { {c: v.shape for c, v in vectors.items()} }")
        usable = sorted(c for c, v in vectors.items() if len(v))
        pairs = all_pairs(usable, self.ordered) if pairs is None else np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        missing = sorted({int(c) for c in pairs.ravel()} - set(usable))
        if missing:
            raise ValueError(f"pairs name classes without cutoff vectors: {missing[:10]}")
        n_features = widths.pop() if widths else 0
        device = torch.device(self.device) if self.device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        on_device = {c: torch.as_tensor(vectors[c]).to(device, self.dtype) for c in usable}
        coef = np.empty((len(pairs), n_features), np.float32)
        intercept, accuracy, loss = (np.empty(len(pairs), np.float64) for _ in range(3))
        with tqdm(total=len(pairs), desc="pair classifiers", unit="pair", disable=not self.progress) as bar:
            for rows in self._chunks(pairs):
                w, b, acc, bce = self._fit_chunk(on_device, pairs[rows], n_features, device)
                coef[rows], intercept[rows], accuracy[rows], loss[rows] = w, b, acc, bce
                bar.update(len(rows))
        self.classes_ = np.asarray(sorted(vectors), dtype=np.int64)
        self.n_vectors_ = np.asarray([len(vectors[c]) for c in self.classes_], dtype=np.int64)
        self.pairs_, self.coef_, self.intercept_, self.accuracy_, self.loss_ = pairs, coef, intercept, accuracy, loss
        self._lookup = None
        return self

    def _chunks(self, pairs: np.ndarray) -> Iterator[np.ndarray]:
        """Row indices of `pairs` per chunk: blocks of classes (I x J), so that each class in a chunk
        is in about sqrt(chunk_pairs) of its pairs (wide matrix products, few per epoch)."""
        if not len(pairs):
            return
        if self.chunk_pairs is None or len(pairs) <= self.chunk_pairs:
            yield np.arange(len(pairs))
            return
        classes = np.unique(pairs)
        side = max(1, int(math.isqrt(self.chunk_pairs)))
        block = np.searchsorted(classes, pairs) // side  # (P, 2) block of each class
        keys = block[:, 0] * (block.max() + 1) + block[:, 1]
        order = np.argsort(keys, kind="stable")
        bounds = np.flatnonzero(np.diff(keys[order])) + 1
        for rows in np.split(order, bounds):
            yield from (rows[i : i + self.chunk_pairs] for i in range(0, len(rows), self.chunk_pairs))

    def _fit_chunk(self, vectors: dict[int, torch.Tensor], pairs: np.ndarray, n_features: int, device) -> tuple:
        """Train the pairs of one chunk together: per epoch, two matrix products per class."""
        inits = [pair_init(a, b, n_features, self.seed) for a, b in pairs]
        weight = torch.as_tensor(np.stack([w for w, _ in inits])).to(device, self.dtype)  # (P, C)
        bias = torch.as_tensor([b for _, b in inits]).to(device, self.dtype)  # (P,)
        sizes = torch.as_tensor([len(vectors[int(a)]) + len(vectors[int(b)]) for a, b in pairs]).to(device, self.dtype)
        # per class: the chunk's pairs it is in, and its label in each (1 as the pair's first class)
        groups = []
        for c in np.unique(pairs):
            first, second = np.flatnonzero(pairs[:, 0] == c), np.flatnonzero(pairs[:, 1] == c)
            members = torch.as_tensor(np.r_[first, second]).to(device)
            labels = torch.cat([torch.ones(len(first)), torch.zeros(len(second))]).to(device, self.dtype)
            groups.append((vectors[int(c)], members, labels, 1.0 / sizes[members]))
        epochs = tqdm(range(self.epochs), desc=f"pair classifiers: epochs ({len(pairs)} pairs)", unit="epoch", disable=not self.progress, leave=False)
        for _ in epochs:
            grad_w, grad_b = torch.zeros_like(weight), torch.zeros_like(bias)
            for x, members, labels, scale in groups:
                logits = x @ weight[members].T + bias[members]  # (N_c, m)
                residual = (torch.sigmoid(logits) - labels) * scale  # d(mean BCE)/d(logit)
                grad_w.index_add_(0, members, residual.T @ x)
                grad_b.index_add_(0, members, residual.sum(dim=0))
            weight -= self.lr * grad_w
            bias -= self.lr * grad_b
        correct, bce = torch.zeros_like(bias), torch.zeros_like(bias)
        for x, members, labels, _ in groups:
            logits = x @ weight[members].T + bias[members]
            correct.index_add_(0, members, ((logits > 0).to(self.dtype) == labels).to(self.dtype).sum(dim=0))
            bce.index_add_(0, members, F.binary_cross_entropy_with_logits(logits, labels.expand_as(logits), reduction="none").sum(dim=0))
        sizes = sizes.double()
        return (weight.float().cpu().numpy(), bias.double().cpu().numpy(), (correct.double() / sizes).cpu().numpy(),
                (bce.double() / sizes).cpu().numpy())

    def _row(self, a: int, b: int) -> tuple[int, float]:
        """(row of the classifier that answers (a, b), sign to apply to it)."""
        if self._lookup is None:
            self._lookup = {(int(p), int(q)): i for i, (p, q) in enumerate(self.pairs_)}
        if (a, b) in self._lookup:
            return self._lookup[(a, b)], 1.0
        if not self.ordered and (b, a) in self._lookup:
            return self._lookup[(b, a)], -1.0
        raise KeyError(f"no classifier for classes ({a}, {b}); trained classes: {self.classes_.tolist()[:20]}")

    def hyperplane(self, a: int, b: int) -> tuple[np.ndarray, float]:
        """(w (C,), bias) with w.x + bias > 0 where x is predictive for class a rather than b."""
        i, sign = self._row(a, b)
        return sign * np.asarray(self.coef_[i]), sign * float(self.intercept_[i])

    def pair_accuracy(self, a: int, b: int) -> float:
        """Training accuracy of the classifier that answers (a, b) (no weight row is read)."""
        return float(self.accuracy_[self._row(a, b)[0]])

    # Storage: a Zarr group; `load` reads the weights row by row on demand (1000 classes: 0.5M x C)
    def save(self, path, attrs: dict | None = None) -> None:
        """Write the trained classifiers to a new Zarr group at `path` (complete once written)."""
        group = zarr.open_group(str(path), mode="w-", zarr_format=3)
        group.attrs.update({**(attrs or {}), "ordered": self.ordered, "epochs": self.epochs, "lr": self.lr, "seed": self.seed, "complete": False})
        for name in ("classes", "n_vectors", "pairs", "coef", "intercept", "accuracy", "loss"):
            data = np.asarray(getattr(self, f"{name}_"))
            chunks = (max(1, min(len(data), 4096 if data.ndim == 1 else 1024)), *data.shape[1:])
            group.create_array(name, shape=data.shape, chunks=chunks, dtype=data.dtype, fill_value=0)[...] = data
        group.attrs["complete"] = True

    @classmethod
    def load(cls, path) -> "ContrastHyperplanes":
        """Open classifiers written by `save`; coef_ stays a lazy Zarr array (rows read by `hyperplane`)."""
        group = zarr.open_group(str(path), mode="r")
        if group.attrs.get("complete") is not True:
            raise ValueError(f"{path}: the classifiers' writer did not finish; rerun the job that trains them")
        attrs = group.attrs
        planes = cls(epochs=int(attrs["epochs"]), lr=float(attrs["lr"]), ordered=bool(attrs["ordered"]), seed=int(attrs["seed"]), progress=False)
        for name in ("classes", "n_vectors", "pairs", "intercept", "accuracy", "loss"):
            setattr(planes, f"{name}_", group[name][...])
        planes.coef_ = group["coef"]
        planes.attrs = dict(attrs)
        planes._lookup = None
        return planes
