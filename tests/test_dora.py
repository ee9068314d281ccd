"""DORA distances, outlier detection and probing on hand-made activations with known answers."""

import os

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from conceptscope.data import imagenet_wnids
from conceptscope.methods.dora import (
    OUTLIER_DETECTORS,
    atlas_embedding,
    data_distances,
    dataset_logits,
    extreme_activation_distance,
    minkowski_distance,
    natural_ams,
    outlier_ranks,
    outlier_scores,
    pearson_distance,
    probing_auc,
    rav_means,
    roc_auc,
    spearman_distance,
    standardize,
    synthetic_distances,
)

R2 = 1 / np.sqrt(2)


@pytest.mark.parametrize(
    "mu, pairwise, layerwise",
    [
        # each representation's AMS activate the other as much as itself: collinear RAVs
        ([[1.0, 1.0], [1.0, 1.0]], 0.0, 0.0),
        # each is silent on the other's AMS: orthogonal
        ([[1.0, 0.0], [0.0, 1.0]], R2, R2),
        # each is pushed down by the other's AMS: opposite RAVs
        ([[1.0, -1.0], [-1.0, 1.0]], 1.0, 1.0),
        # r_12 = (2, 0), r_21 = (1, 1): 45 degrees; rows (2, 0) and (1, 1) also 45 degrees
        ([[2.0, 0.0], [1.0, 1.0]], np.sqrt(1 - np.cos(np.pi / 4)) * R2, np.sqrt(1 - np.cos(np.pi / 4)) * R2),
    ],
)
def test_ea_distance_known_angles(mu, pairwise, layerwise):
    assert extreme_activation_distance(np.array(mu), "pairwise")[0, 1] == pytest.approx(pairwise, abs=1e-7)
    assert extreme_activation_distance(np.array(mu), "layerwise")[0, 1] == pytest.approx(layerwise, abs=1e-7)


def _ea_reference(mu, mode):
    """Def. 5 written out with a double loop."""
    k = len(mu)
    out = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            if i == j:
                continue
            a, b = (np.array([mu[i, i], mu[i, j]]), np.array([mu[j, i], mu[j, j]])) if mode == "pairwise" else (mu[i], mu[j])
            cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
            out[i, j] = np.sqrt(1 - cos) / np.sqrt(2)
    return out


@pytest.mark.parametrize("mode", ["pairwise", "layerwise"])
def test_ea_vectorised_matches_definition(mode):
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(9, 9))
    dist = extreme_activation_distance(mu, mode)
    np.testing.assert_allclose(dist, _ea_reference(mu, mode), atol=1e-7)
    if mode == "pairwise":  # the pair-wise distance is symmetric by construction (r_ij . r_ji)
        np.testing.assert_allclose(dist, dist.T, atol=1e-12)


def test_natural_ams_are_block_argmaxes():
    rng = np.random.default_rng(1)
    acts = rng.normal(size=(60, 4))
    ams = natural_ams(acts, n=3, d=20, seed=5)
    blocks = np.random.default_rng(5).permutation(60)[:60].reshape(3, 20)
    for t in range(3):
        for i in range(4):
            assert ams[t, i] in blocks[t]
            assert acts[ams[t, i], i] == acts[blocks[t], i].max()
    with pytest.raises(ValueError, match="need 80 images"):
        natural_ams(acts, n=4, d=20)


def test_rav_means_chunked_equals_direct():
    rng = np.random.default_rng(2)
    acts = rng.normal(size=(100, 12))
    ams = natural_ams(acts, n=5, d=20)
    direct = np.stack([acts[ams[:, i]].mean(axis=0) for i in range(12)])
    np.testing.assert_allclose(rav_means(acts, ams, chunk_elements=70), direct)


def test_ea_n_finds_twin_and_opposite_representations():
    """A representation, its noisy twin, its mirror image and an unrelated one (real-valued, N=2000)."""
    rng = np.random.default_rng(3)
    base = rng.normal(size=2000)
    acts = np.stack([base, base + 0.05 * rng.normal(size=2000), -base, rng.normal(size=2000)], axis=1)
    dist = data_distances(acts, n=20, d=100, seed=0)
    for name in ("ea_n_pairwise", "ea_n_layerwise", "pearson", "spearman"):
        d = dist[name]
        assert d[0, 1] < 0.1, name  # twins
        assert d[0, 2] > 0.9, name  # mirror images
        assert d[0, 1] < d[0, 3] < d[0, 2], name
    assert dist["minkowski"][0, 1] < dist["minkowski"][0, 3] < dist["minkowski"][0, 2]


def test_baselines_match_scipy():
    rng = np.random.default_rng(4)
    acts = standardize(rng.gamma(2.0, size=(50, 6)))
    rho = spearmanr(acts).statistic
    np.testing.assert_allclose(spearman_distance(acts), np.sqrt(1 - rho) / np.sqrt(2) * (1 - np.eye(6)), atol=1e-12)
    np.testing.assert_allclose(pearson_distance(acts), np.sqrt(np.clip(1 - np.corrcoef(acts.T), 0, None)) / np.sqrt(2) * (1 - np.eye(6)), atol=1e-12)
    manual = np.abs(acts[:, :, None] - acts[:, None, :]).sum(axis=0)
    np.testing.assert_allclose(minkowski_distance(acts, 1), manual)
    np.testing.assert_allclose(minkowski_distance(acts, 2), np.sqrt(((acts[:, :, None] - acts[:, None, :]) ** 2).sum(axis=0)), atol=1e-9)


def test_standardize_and_constant_representations():
    acts = np.c_[np.arange(10.0), np.full(10, 3.0), np.arange(10.0) ** 2]
    std = standardize(acts)
    np.testing.assert_allclose(std[:, [0, 2]].mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(std[:, [0, 2]].std(axis=0, ddof=1), 1)
    assert (std[:, 1] == 0).all()
    assert pearson_distance(std)[0, 1] == pytest.approx(R2)  # constant: orthogonal to everything
    with pytest.raises(ValueError, match="NaN or inf"):
        standardize(np.c_[np.arange(3.0), [0, np.nan, 1]])


def test_synthetic_distances_from_signal_activations():
    # 3 representations, 2 signals each: signals of 0 and 1 excite both, signals of 2 only itself
    acts = np.zeros((3, 2, 3))
    acts[0] = [[5, 5, 0], [4, 4, 0]]
    acts[1] = [[5, 5, 0], [6, 6, 0]]
    acts[2] = [[0, 0, 7], [0, 0, 5]]
    dist = synthetic_distances(acts)
    assert dist["ea_s_pairwise"][0, 1] == pytest.approx(0.0, abs=1e-7)
    assert dist["ea_s_layerwise"][0, 2] == pytest.approx(R2)


def test_layerwise_ea_s_uses_every_representation_of_the_layer_when_only_some_have_signals():
    # 6 representations, signals for 3 of them (columns 1, 3, 4): Def. 7's layer-wise RAV of a
    # signalled representation is its signals' mean activation of all 6 representations
    rng = np.random.default_rng(0)
    acts = rng.random((3, 4, 6))
    acts[:, :, [1, 3, 4]] = np.array([1.0, 2.0, 3.0])  # on the 3 signalled columns every row is the same
    acts[0][:, [0, 2, 5]], acts[1][:, [0, 2, 5]] = 10.0, 0.0  # off them, 0's signals excite the layer, 1's do not
    positions = np.array([1, 3, 4])
    dist = synthetic_distances(acts, positions)
    mu = acts.mean(axis=1)
    for i in range(3):
        for j in range(3):
            cos = mu[i] @ mu[j] / np.linalg.norm(mu[i]) / np.linalg.norm(mu[j])
            assert dist["ea_s_layerwise"][i, j] == pytest.approx(0.0 if i == j else np.sqrt(1 - cos) / np.sqrt(2), abs=1e-7)
    # restricted to the signalled columns the rows would be identical (distance 0): the full layer tells them apart
    assert dist["ea_s_layerwise"][0, 1] > 0.05
    np.testing.assert_allclose(dist["ea_s_pairwise"], extreme_activation_distance(mu[:, positions], "pairwise"))
    # with signals for every representation it is the square case
    full = rng.random((4, 2, 4))
    np.testing.assert_allclose(synthetic_distances(full)["ea_s_layerwise"], synthetic_distances(full, np.arange(4))["ea_s_layerwise"])
    with pytest.raises(ValueError, match="distinct columns"):
        synthetic_distances(acts, np.array([1, 1, 4]))


def test_dataset_logits_match_classes_to_outputs_or_refuse():
    # one output per class: the class's own index
    np.testing.assert_array_equal(dataset_logits(list("abc"), None, 3), [0, 1, 2])
    # a 1000-output ImageNet model on a folder of 3 wnids: their ImageNet-1k indices, not 0, 1, 2
    wnids = imagenet_wnids()
    classes = [wnids[5], wnids[300], wnids[999]]
    np.testing.assert_array_equal(dataset_logits(classes, [5, 300, 999], 1000), [5, 300, 999])
    with pytest.raises(ValueError, match="not ImageNet-1k wnids"):
        dataset_logits(["cat", "dog"], None, 1000, "dataset 'pets'")
    with pytest.raises(ValueError, match="10 outputs and the dataset 3 classes"):
        dataset_logits(list("abc"), None, 10)


def test_roc_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 4, size=(40, 3)).astype(float)
    labels = rng.random(40) < 0.4
    for j in range(3):
        assert roc_auc(scores, labels)[j] == pytest.approx(roc_auc_score(labels, scores[:, j]))
    marked, clean = rng.normal(1.0, 1.0, size=(30, 2)), rng.normal(0.0, 1.0, size=(30, 2))
    marked[:, 1] = clean[:, 1]  # representation 1 cannot tell the versions apart
    auc = probing_auc(marked, clean)
    assert auc[0] > 0.7 and auc[1] == pytest.approx(0.5)


@pytest.mark.parametrize("scale", [1.0, 1000.0])
@pytest.mark.parametrize("detector", OUTLIER_DETECTORS)
def test_outlier_detectors_find_a_separate_block(detector, scale):
    """40 representations in one tight group, 4 far from it and from each other (as the digit logits
    among Tiny ImageNet's): every detector ranks the 4 on top, whatever the distance's scale (an L1
    distance over thousands of images is in the thousands)."""
    rng = np.random.default_rng(6)
    points = np.r_[rng.normal(0, 0.3, size=(40, 5)), rng.normal(0, 0.3, size=(4, 5)) + 4 * np.eye(5)[:4]]
    dist = scale * np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    scores, flags = outlier_scores(dist, detector, contamination=0.1, n_neighbors=10, seed=0)
    truth = np.r_[np.zeros(40, bool), np.ones(4, bool)]
    assert roc_auc(scores, truth) > 0.95
    assert set(np.flatnonzero(outlier_ranks(scores) <= 4)) == {40, 41, 42, 43} or detector == "iforest"
    assert flags.dtype == bool and flags.shape == (44,)


def test_outlier_scores_validate():
    dist = np.ones((5, 5)) - np.eye(5)
    with pytest.raises(ValueError, match="unknown outlier detector 'knn'"):
        outlier_scores(dist, "knn")
    with pytest.raises(ValueError, match="n_neighbors must be between 1 and k - 1 = 4"):
        outlier_scores(dist, "lof", n_neighbors=20)
    with pytest.raises(ValueError, match="contamination"):
        outlier_scores(dist, "lof", contamination=0.7, n_neighbors=2)


def test_atlas_kernels_are_compiled_once_and_read_back_with_the_same_atlas(tmp_path):
    """UMAP's numba kernels are compiled by the first process and written to the cache folder; the next
    process reads them back instead of compiling, and gets the same atlas."""
    import json
    import subprocess
    import sys

    code = (
        "import json, numba, numpy as np, umap.layouts, umap.umap_\n"
        "from conceptscope.methods.dora import atlas_embedding\n"
        "kernels = {n: k for m in (umap.umap_, umap.layouts) for n, k in vars(m).items() if isinstance(k, numba.core.registry.CPUDispatcher)}\n"
        "at_import = {n for n, k in kernels.items() if k.signatures}  # explicit signatures compile when umap is imported\n"
        "points = np.random.default_rng(3).normal(size=(24, 3))\n"
        "xy = atlas_embedding(np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1)), n_neighbors=5, seed=0)\n"
        "print(json.dumps({'xy': xy.tolist(), 'read': sorted(n for n, k in kernels.items() if k.stats.cache_hits),\n"
        "                  'compiled': sorted(n for n, k in kernels.items() if k.stats.cache_misses and n not in at_import)}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"} | {"CONCEPTSCOPE_CACHE": str(tmp_path)}
    runs = []
    for _ in range(2):
        run = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, env=env)
        assert run.returncode == 0, run.stderr[-2000:]
        runs.append(json.loads(run.stdout.splitlines()[-1]))
    graph = {"smooth_knn_dist", "compute_membership_strengths"}  # the fuzzy graph's kernels: most of the compile time
    assert graph <= set(runs[0]["compiled"]) and list((tmp_path / "numba").rglob("*.nbi"))
    assert runs[1]["compiled"] == [] and graph <= set(runs[1]["read"])
    assert runs[1]["xy"] == runs[0]["xy"]


def test_atlas_keeps_groups_apart():
    rng = np.random.default_rng(7)
    points = np.r_[rng.normal(0, 0.2, size=(20, 3)), rng.normal(0, 0.2, size=(20, 3)) + 5]
    dist = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1))
    xy = atlas_embedding(dist, n_neighbors=8, seed=0)
    within = np.linalg.norm(xy[:20] - xy[:20].mean(0), axis=1).mean()
    between = np.linalg.norm(xy[:20].mean(0) - xy[20:].mean(0))
    assert xy.shape == (40, 2) and between > 3 * within
