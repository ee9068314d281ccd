"""DORA (Bykov et al., "DORA: Exploring Outlier Representations in Deep Neural Networks", TMLR 2023):
distances between the representations of one layer, the representation atlas, and outlier detection.

A representation is a scalar function of the input: a channel of a layer (its map spatially
mean-pooled) or an output logit (Def. 1). On an evaluation set of N images a layer of k
representations gives an activation matrix `acts: (N, k)`.

- Natural Activation-Maximisation Signals (Def. 3): a seeded permutation of the N images is cut into
  n blocks of d images; in every block each representation's most activating image is one of its
  n-AMS (`natural_ams`, indices (n, k)).
- Representation activation vectors (Def. 4): mu[i, j] = mean activation of representation j on the
  n AMS of representation i (`rav_means`, (k, k)); with synthetic AMS the same matrix comes from the
  model's activations on the generated signals (Def. 7).
- Extreme-Activation distance (Def. 5, 7): pair-wise, the angle between (mu_ii, mu_ij) and
  (mu_ji, mu_jj); layer-wise, the angle between the rows mu_i* and mu_j*; d = sqrt(1 - cos) / sqrt(2).
  EA_n uses standardised activations (Eq. 2), EA_s the raw ones (Sec. 3.2).
- Baselines (Sec. 3): Minkowski (p), Pearson and Spearman distances on standardised activations.

    acts = standardize(representations)                                   # (N, k)
    ams = natural_ams(acts, n=50, d=200, seed=0)                          # (n, k) image indices
    dist = extreme_activation_distance(rav_means(acts, ams), mode="layerwise")
    scores = outlier_scores(dist, "lof", contamination=0.01, n_neighbors=20)

Everything is vectorised over representations: k = 2048 takes no Python double loop.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable

import numpy as np
from scipy.spatial.distance import cdist
from scipy.stats import rankdata
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

EA_MODES = ("pairwise", "layerwise")
# paper Sec. 5.3: the hyperparameters of the Mantel comparison (Table 1)
N_AMS = 50
AMS_DEPTH = 200
MINKOWSKI_P = 1


def standardize(acts: np.ndarray) -> np.ndarray:
    """Activations (N, k) with every column at mean 0 and standard deviation 1 (Eq. 2, ddof=1).

    A representation that is constant on the data carries no information: it becomes all zeros, so
    every distance treats it as orthogonal to the others (logged).
    """
    acts = _check_acts(acts)
    centred = acts - acts.mean(axis=0, keepdims=True)
    std = centred.std(axis=0, ddof=1, keepdims=True)
    constant = std[0] <= 1e-12 * np.maximum(1.0, np.abs(acts).max(axis=0))
    if constant.any():
        log.warning("%d of %d representations are constant on the data (e.g. %s): they are set to 0",
                    int(constant.sum()), acts.shape[1], np.flatnonzero(constant)[:5].tolist())
    std[0, constant] = 1.0
    centred[:, constant] = 0.0
    return centred / std


def _check_acts(acts: np.ndarray) -> np.ndarray:
    acts = np.asarray(acts, dtype=np.float64)
    if acts.ndim != 2 or acts.shape[0] < 2 or acts.shape[1] < 2:
        raise ValueError(f"activations must be (N images, k representations) with N, k >= 2, got shape {acts.shape}")
    if not np.isfinite(acts).all():
        bad = np.flatnonzero(~np.isfinite(acts).all(axis=0))
        raise ValueError(f"activations contain NaN or inf (representations {bad[:5].tolist()}); check the model and the store")
    return acts


def natural_ams(acts: np.ndarray, n: int = N_AMS, d: int = AMS_DEPTH, seed: int = 0) -> np.ndarray:
    """n-AMS (Def. 3): image indices (n, k); entry (t, i) is representation i's argmax in block t.

    The blocks are n disjoint sets of d images from a seeded permutation of the N images (stored
    images are ordered by class, so consecutive blocks would each hold only a few classes).
    """
    acts = np.asarray(acts)
    n_images = acts.shape[0]
    if n < 1 or d < 1:
        raise ValueError(f"n-AMS need n >= 1 blocks of depth d >= 1, got n={n}, d={d}")
    if n * d > n_images:
        raise ValueError(f"n-AMS with n={n} blocks of d={d} images need {n * d} images; only {n_images} are available (lower dora.n or dora.d)")
    blocks = np.random.default_rng(seed).permutation(n_images)[: n * d].reshape(n, d)
    local = np.stack([acts[block].argmax(axis=0) for block in blocks])  # (n, k)
    return np.take_along_axis(blocks, local, axis=1)


def rav_means(acts: np.ndarray, ams: np.ndarray, chunk_elements: int = 50_000_000, progress: bool = True) -> np.ndarray:
    """mu (k, k) of Def. 4: mu[i, j] = mean over representation i's AMS of representation j's activation.

    `acts: (N, k)`, `ams: (n, k)` image indices. Computed in chunks of representations so the
    (n, chunk, k) gather stays within `chunk_elements` numbers.
    """
    acts = np.asarray(acts, dtype=np.float64)
    n, k = ams.shape
    if k != acts.shape[1]:
        raise ValueError(f"AMS are given for {k} representations, the activations have {acts.shape[1]}")
    step = max(1, chunk_elements // max(1, n * k))
    mu = np.empty((k, k))
    for start in tqdm(range(0, k, step), desc=f"RAV means ({k} representations)", unit="chunk", disable=not progress, leave=False):
        mu[start : start + step] = acts[ams[:, start : start + step]].mean(axis=0)
    return mu


def _angle_distance(cos: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(1.0 - cos, 0.0, 2.0)) / np.sqrt(2.0)


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den > 0)
    return out


def extreme_activation_distance(mu: np.ndarray, mode: str = "layerwise") -> np.ndarray:
    """EA distance (Def. 5/7) from RAV means: `mu (k, k)`, or AMS activations `(k, n, k)` averaged here.

    pairwise: r_ij = (mu_ii, mu_ij), r_ji = (mu_ji, mu_jj); layerwise: r_i* = mu[i]. The distance is
    sqrt(1 - cos(r, r')) / sqrt(2), in [0, 1]; a zero vector counts as orthogonal (cos 0).
    """
    mu = np.asarray(mu, dtype=np.float64)
    if mu.ndim == 3:
        mu = mu.mean(axis=1)
    if mu.ndim != 2 or mu.shape[0] != mu.shape[1]:
        raise ValueError(f"RAV means must be a square (k, k) matrix (or AMS activations (k, n, k)), got shape {mu.shape}")
    if mode == "pairwise":
        diag = np.diag(mu)
        # r_ij . r_ji = mu_ii mu_ji + mu_ij mu_jj
        dot = diag[:, None] * mu.T + mu * diag[None, :]
        norm_ij = np.sqrt(diag[:, None] ** 2 + mu**2)
        norm_ji = np.sqrt(mu.T**2 + diag[None, :] ** 2)
        cos = _safe_divide(dot, norm_ij * norm_ji)
    elif mode == "layerwise":
        return _rows_angle_distance(mu)
    else:
        raise ValueError(f"unknown EA mode {mode!r}; expected one of {list(EA_MODES)}")
    dist = _angle_distance(cos)
    np.fill_diagonal(dist, 0.0)
    return dist


def minkowski_distance(acts: np.ndarray, p: float = MINKOWSKI_P) -> np.ndarray:
    """Minkowski distance (Eq. 3) between the columns of standardised activations (N, k)."""
    if p < 1:
        raise ValueError(f"Minkowski p must be >= 1, got {p}")
    columns = np.ascontiguousarray(np.asarray(acts, dtype=np.float64).T)
    if p == 1:
        return cdist(columns, columns, "cityblock")
    if p == 2:
        sq = (columns**2).sum(axis=1)
        return np.sqrt(np.clip(sq[:, None] + sq[None, :] - 2.0 * columns @ columns.T, 0.0, None)) * (1 - np.eye(len(columns)))
    return cdist(columns, columns, "minkowski", p=p)


def _correlation_distance(acts: np.ndarray) -> np.ndarray:
    acts = np.asarray(acts, dtype=np.float64)
    centred = acts - acts.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(centred, axis=0)
    rho = _safe_divide(centred.T @ centred, norms[:, None] * norms[None, :])
    dist = _angle_distance(rho)
    np.fill_diagonal(dist, 0.0)
    return dist


def pearson_distance(acts: np.ndarray) -> np.ndarray:
    """Pearson distance (Eq. 4): sqrt(1 - rho) / sqrt(2) between the columns of (N, k)."""
    return _correlation_distance(acts)


def spearman_distance(acts: np.ndarray) -> np.ndarray:
    """Spearman distance (Eq. 5): the Pearson distance of the columns' ranks (ties averaged)."""
    return _correlation_distance(rankdata(np.asarray(acts), axis=0))


def ea_n_distances(acts: np.ndarray, n: int = N_AMS, d: int = AMS_DEPTH, seed: int = 0, progress: bool = True) -> dict[str, np.ndarray]:
    """EA_n in both modes on standardised activations, plus the n-AMS used: {'pairwise', 'layerwise', 'ams'}."""
    acts = standardize(acts)
    ams = natural_ams(acts, n, d, seed)
    mu = rav_means(acts, ams, progress=progress)
    return {mode: extreme_activation_distance(mu, mode) for mode in EA_MODES} | {"ams": ams}


def data_distances(acts: np.ndarray, *, n: int = N_AMS, d: int = AMS_DEPTH, p: float = MINKOWSKI_P, seed: int = 0,
                   progress: bool = True) -> dict[str, np.ndarray]:
    """Every data-aware distance of the paper on raw activations (N, k), by table name.

    Keys: ea_n_pairwise, ea_n_layerwise, minkowski, pearson, spearman (Sec. 5.3 settings by default).
    """
    std = standardize(acts)
    mu = rav_means(std, natural_ams(std, n, d, seed), progress=progress)
    out = {f"ea_n_{mode}": extreme_activation_distance(mu, mode) for mode in EA_MODES}
    out["minkowski"] = minkowski_distance(std, p)
    out["pearson"] = pearson_distance(std)
    out["spearman"] = spearman_distance(std)
    return out


def synthetic_distances(sams_activations: np.ndarray, positions: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """EA_s (Def. 7) in both modes from the raw activations of the s-AMS, between the representations
    that have signals.

    `sams_activations`: (R, n, k), every representation of the layer (k columns) on the n signals of
    each of R representations; `positions` (R,): the column of each signal's own representation
    (None: R = k and row i's own column is i). Pair-wise, the distance of i and j needs mu_ii, mu_ij,
    mu_ji and mu_jj; layer-wise, it is the angle between the full RAVs mu_i* over all k
    representations of the layer (Def. 7), also when only R < k of them have signals.
    """
    sams_activations = np.asarray(sams_activations, dtype=np.float64)
    if sams_activations.ndim != 3:
        raise ValueError(f"s-AMS activations must be (R signalled representations, n signals, k), got shape {sams_activations.shape}")
    n_signalled, _, k = sams_activations.shape
    positions = np.arange(k) if positions is None else np.asarray(positions, dtype=np.int64)
    if positions.shape != (n_signalled,) or (positions < 0).any() or (positions >= k).any() or len(set(positions.tolist())) != n_signalled:
        raise ValueError(f"positions must be {n_signalled} distinct columns in [0, {k}), one per signalled representation; got {positions.tolist()[:10]}")
    mu = sams_activations.mean(axis=1)  # (R, k): the RAVs over the whole layer
    return {"ea_s_pairwise": extreme_activation_distance(mu[:, positions], "pairwise"),
            "ea_s_layerwise": _rows_angle_distance(mu)}


def _rows_angle_distance(rows: np.ndarray) -> np.ndarray:
    """(R, R) layer-wise EA distance between the rows of (R, k) RAVs (k may exceed R)."""
    norms = np.linalg.norm(rows, axis=1)
    dist = _angle_distance(_safe_divide(rows @ rows.T, norms[:, None] * norms[None, :]))
    np.fill_diagonal(dist, 0.0)
    return dist


def dataset_logits(classes: list[str], imagenet_index: list[int] | None, n_outputs: int, where: str = "dataset") -> np.ndarray:
    """The model output (logit) of each dataset class (len(classes),): the class's own index where
    the model has one output per class, its ImageNet-1k index where a 1000-output model meets ImageNet
    classes (`imagenet_index`, e.g. a folder of wnids); anything else is refused, since the logit read
    for a class would be another class's."""
    if n_outputs == len(classes):
        return np.arange(n_outputs)
    if n_outputs == 1000 and imagenet_index is not None and len(imagenet_index) == len(classes):
        return np.asarray(imagenet_index, dtype=np.int64)
    hint = ("its classes are not ImageNet-1k wnids: name the class folders by wnid (or set label_map: imagenet)" if n_outputs == 1000
            else "expected a model with one output per class of the dataset")
    raise ValueError(f"{where}: the model has {n_outputs} outputs and the dataset {len(classes)} classes (e.g. {list(classes[:3])}), "
                     f"so no logit can be matched to a class; {hint}")


# --------------------------------------------------------------------------------------------
# Outlier representations (Sec. 4, 5.4)


def _pyod(name: str) -> Callable[..., object]:
    from pyod.models.abod import ABOD
    from pyod.models.feature_bagging import FeatureBagging
    from pyod.models.iforest import IForest
    from pyod.models.lof import LOF
    from pyod.models.ocsvm import OCSVM

    return {
        "abod": lambda c, nn, seed: ABOD(contamination=c, n_neighbors=nn),
        "feature_bagging": lambda c, nn, seed: FeatureBagging(base_estimator=LOF(n_neighbors=nn), contamination=c, random_state=seed),
        "iforest": lambda c, nn, seed: IForest(contamination=c, random_state=seed),
        "lof": lambda c, nn, seed: LOF(n_neighbors=nn, contamination=c),
        "ocsvm": lambda c, nn, seed: OCSVM(contamination=c),
    }[name]


OUTLIER_DETECTORS = ("abod", "feature_bagging", "iforest", "lof", "ocsvm")
# paper Sec. 6.1: LOF with contamination 0.01 (the top 1 %) and 20 neighbours
CONTAMINATION = 0.01
N_NEIGHBORS = 20


def outlier_scores(distance: np.ndarray, detector: str = "lof", *, contamination: float = CONTAMINATION,
                   n_neighbors: int = N_NEIGHBORS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Outlier scores (k,) (higher = more anomalous) and outlier flags (k,) of the representations.

    The detector (pyod) sees each representation as the row of its distances to all others, the
    distance matrix alone (Sec. 5.4), scaled by its largest entry. `n_neighbors` is used by LOF, ABOD
    and Feature Bagging's LOFs; `seed` by Isolation Forest and Feature Bagging.
    """
    if detector not in OUTLIER_DETECTORS:
        raise ValueError(f"unknown outlier detector {detector!r}; expected one of {list(OUTLIER_DETECTORS)}")
    distance = np.asarray(distance, dtype=np.float64)
    k = distance.shape[0]
    if distance.ndim != 2 or distance.shape[1] != k:
        raise ValueError(f"a distance matrix must be square, got shape {distance.shape}")
    if not 0 < contamination <= 0.5:
        raise ValueError(f"contamination must be in (0, 0.5], got {contamination}")
    if not 1 <= n_neighbors < k:
        raise ValueError(f"n_neighbors must be between 1 and k - 1 = {k - 1} for {k} representations, got {n_neighbors}")
    # the scale of a distance is arbitrary (an L1 sum over thousands of images is in the thousands):
    # divided by its largest entry, so OCSVM's RBF kernel (gamma 1/k) does not flatten to zero and give
    # every representation the same score; ABOD, LOF, Feature Bagging and Isolation Forest do not
    # depend on the scale
    largest = np.abs(distance[np.isfinite(distance)]).max(initial=0.0)
    model = _pyod(detector)(contamination, n_neighbors, seed)
    model.fit(distance / largest if largest > 0 else distance)
    scores = np.asarray(model.decision_scores_, dtype=np.float64)
    if detector == "abod":  # pyod's ABOD scores are negated angle variances, may be -inf for duplicates
        scores = np.nan_to_num(scores, nan=np.nanmax(scores[np.isfinite(scores)], initial=0.0), neginf=np.nanmin(scores[np.isfinite(scores)], initial=0.0))
    return scores, np.asarray(model.labels_, dtype=bool)


def outlier_ranks(scores: np.ndarray) -> np.ndarray:
    """Rank (1 = most anomalous) of every representation by its outlier score; ties share the best rank."""
    return rankdata(-np.asarray(scores), method="min").astype(np.int64)


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """AUC-ROC of each column of `scores` (M, k) (or a vector (M,)) for the boolean labels (M,).

    The Mann-Whitney statistic with average ranks for ties (equals sklearn's roc_auc_score),
    vectorised over columns.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    vector = scores.ndim == 1
    scores = scores[:, None] if vector else scores
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes; got {n_pos} positives and {n_neg} negatives")
    ranks = rankdata(scores, axis=0)
    auc = (ranks[positives].sum(axis=0) - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return auc[0] if vector else auc


def probing_auc(acts_marked: np.ndarray, acts_clean: np.ndarray) -> np.ndarray:
    """AUC-ROC (k,) of each representation for telling watermarked images (positives) from their clean
    twins (App. A.2.1): 1 means it always fires more on the watermarked version."""
    acts_marked, acts_clean = np.asarray(acts_marked), np.asarray(acts_clean)
    if acts_marked.ndim != 2 or acts_marked.shape[1] != acts_clean.shape[1]:
        raise ValueError(f"probing needs (N, k) activations of both versions, got {acts_marked.shape} and {acts_clean.shape}")
    labels = np.r_[np.ones(len(acts_marked), bool), np.zeros(len(acts_clean), bool)]
    return roc_auc(np.vstack([acts_marked, acts_clean]), labels)


@functools.lru_cache(maxsize=None)
def _umap():
    """The umap package, with its numba kernels compiled once and then read from the cache folder
    (utils.cache_dir()/numba): UMAP compiles them on its first call in each process, about 10 s of
    every DORA analysis job. numba's cache is keyed by the kernel's source file, numba's version and
    the CPU, so an upgraded umap compiles afresh. A $NUMBA_CACHE_DIR that is set is kept."""
    import numba
    import umap
    import umap.layouts
    import umap.spectral
    import umap.umap_
    import umap.utils

    from ..utils import cache_dir

    folder = cache_dir()
    if folder is not None:
        numba.config.CACHE_DIR = numba.config.CACHE_DIR or str(folder / "numba")
        for module in (umap.umap_, umap.layouts, umap.spectral, umap.utils):
            for kernel in vars(module).values():
                if isinstance(kernel, numba.core.registry.CPUDispatcher):
                    kernel.enable_caching()  # what @njit(cache=True) does
    return umap


def atlas_embedding(distance: np.ndarray, *, n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0) -> np.ndarray:
    """2-D representation atlas (k, 2): UMAP on the precomputed distance matrix (Sec. 4)."""
    umap = _umap()
    distance = np.asarray(distance, dtype=np.float64)
    k = distance.shape[0]
    reducer = umap.UMAP(n_neighbors=min(n_neighbors, k - 1), min_dist=min_dist, metric="precomputed",
                        random_state=seed, n_jobs=1, init="random" if k < 16 else "spectral")
    return reducer.fit_transform(distance)
