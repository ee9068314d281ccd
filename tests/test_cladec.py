"""ClaDec and RefAE (Schneider & Vlachos) on the real MNIST digits: the library core (issue 7, in progress)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conceptscope.methods.cladec import ClaDec, Decoder, RefAE, cladec_loss, mean_reconstruction_error, reconstruction_error
from conceptscope.models import build_model, build_transform, resolve_preprocess


@pytest.fixture(scope="module")
def digits_loader(shortcut_digits):
    dataset = shortcut_digits.torch_dataset("test", build_transform(resolve_preprocess("vgg_small", {})))
    return DataLoader(dataset, batch_size=50, shuffle=False)


@pytest.mark.parametrize("arch, layer", [("vgg_small", "features.3"), ("vgg_small", "features.7"), ("resnet_small", "layer1"), ("resnet_small", "layer3")])
def test_decoder_depth_follows_the_map_size_and_returns_the_input_size(arch, layer):
    from conceptscope.activations import LayerRunner

    model = build_model(arch, 10, 1, seed=0).eval()
    code = LayerRunner(model, layer).activations(torch.rand(2, 1, 28, 28))
    decoder = Decoder(code.shape[1:], (1, 28, 28))
    assert decoder(code).shape == (2, 1, 28, 28)
    n_up = sum(isinstance(m, torch.nn.ConvTranspose2d) and m.stride == (2, 2) for m in decoder.modules())
    assert n_up == int(np.ceil(np.log2(28 / code.shape[-1])))  # 28 -> 0, 7 -> 2, 4 -> 3, 1 -> 5 upsamplings
    assert Decoder((10,), (1, 28, 28))(torch.rand(3, 10)).shape == (3, 1, 28, 28)  # a fully connected code


def test_equation_1_is_the_per_pixel_squared_error_on_the_0_1_scale_plus_alpha_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    x01, x_hat01 = torch.rand(2, 3, 4, 4, generator=generator), torch.rand(2, 3, 4, 4, generator=generator)
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.5, 0.25, 0.2]).view(1, 3, 1, 1)
    x, x_hat = (x01 - mean) / std, (x_hat01 - mean) / std  # what the models see
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0])
    ce = float(torch.nn.functional.cross_entropy(logits, labels))
    squared = ((x01 - x_hat01) ** 2).flatten(1).mean(1)  # by hand: the mean over pixels and channels on [0, 1]
    assert torch.allclose(reconstruction_error(x, x_hat, std.flatten().tolist()), squared, atol=1e-6)
    for alpha in (0.0, 0.9, 0.999):
        expected = (1 - alpha) * float(squared.mean()) + alpha * ce
        assert float(cladec_loss(x, x_hat, logits, labels, alpha, std.flatten().tolist())) == pytest.approx(expected, rel=1e-5)
    assert reconstruction_error(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)).tolist() == [1.0]  # no std: the inputs' own units
    with pytest.raises(ValueError, match="alpha"):
        ClaDec(alpha=1.5)


def test_the_training_loss_is_in_the_unit_of_the_reported_error(digits_loader):
    # a learning rate too small to move the decoder: the first epoch's loss is the initial decoder's
    # error, which mean_reconstruction_error reports per pixel on the [0, 1] scale (std 0.5: a quarter of it in input units)
    model = build_model("vgg_small", 10, 1, seed=0).eval()
    cladec = ClaDec(epochs=1, lr=1e-12, seed=0, input_std=[0.5], progress=False).fit(model, "features.7", digits_loader)
    images = torch.cat([x for x, *_ in digits_loader])
    by_hand = float((((images - cladec.reconstruct(images)) * 0.5) ** 2).mean())
    assert cladec.loss_history_[0] == pytest.approx(by_hand, rel=1e-4)
    assert mean_reconstruction_error(cladec, digits_loader) == pytest.approx(by_hand, rel=1e-4)


def test_fit_leaves_the_callers_model_as_it_was_also_on_error(digits_loader):
    model = build_model("vgg_small", 10, 1, seed=0).train()
    model.features[0].requires_grad_(False)  # a partly frozen model in train mode
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    assert not all(flags.values()) and any(flags.values())
    cladec = ClaDec(alpha=0.5, epochs=1, seed=0, progress=False).fit(model, "features.5", digits_loader)  # CE through the classifier
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags and model.training
    assert not any(p.requires_grad for p in cladec.encoder_.parameters())  # the decoder's encoder stays frozen
    with pytest.raises(ValueError, match="exceed"):
        ClaDec(epochs=1, channels=(0, 999), progress=False).fit(model, "features.5", digits_loader)
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags and model.training


def test_the_paper_recipe_trains_c_eval_with_sgd_and_two_step_decays(digits_loader):
    from conceptscope.methods.cladec import PAPER_EVAL_TRAIN, evaluation_accuracy, reconstructed_dataset, step_decay_epochs, train_sgd_classifier

    assert PAPER_EVAL_TRAIN == {"optimizer": "sgd", "epochs": 64, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 128,
                                "schedule": "step"}
    assert step_decay_epochs(64) == [29, 58]
    sgd_options = {k: v for k, v in PAPER_EVAL_TRAIN.items() if k != "optimizer"}
    images, labels, ids = (torch.cat(parts)[:100] for parts in zip(*digits_loader))
    digits = torch.utils.data.TensorDataset(images, labels, ids)  # decoded once: 64 epochs of 100 digits

    def linear(seed):  # a fast stand-in for the classifier's architecture
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))

    log = train_sgd_classifier(linear(0), digits, **sgd_options, progress=False)
    assert log["lr"].tolist() == pytest.approx([0.1] * 29 + [0.01] * 29 + [0.001] * 6)  # one batch of 100 per epoch
    assert log["loss"].iloc[-1] < 0.5 * log["loss"].iloc[0]
    # one plain SGD step (no momentum, no decay) is w - lr * gradient
    start = linear(0)
    gradient = torch.autograd.grad(torch.nn.functional.cross_entropy(start(images), labels), start[1].weight)[0]
    stepped = copy.deepcopy(start)
    train_sgd_classifier(stepped, digits, epochs=1, batch_size=100, lr=0.5, momentum=0.0, weight_decay=0.0, schedule="constant", progress=False)
    assert torch.allclose(stepped[1].weight, start[1].weight - 0.5 * gradient, atol=1e-6)
    # evaluation_accuracy with optimizer "sgd" is that trainer on the reconstructions of the training images
    loader = DataLoader(digits, batch_size=50)
    cladec = ClaDec(epochs=1, seed=0, progress=False).fit(build_model("vgg_small", 10, 1, seed=0).eval(), "features.3", loader)
    fresh = linear(1)
    twin = copy.deepcopy(fresh)
    accuracy = evaluation_accuracy(cladec, fresh, loader, loader, **{**PAPER_EVAL_TRAIN, "epochs": 3})
    test = reconstructed_dataset(cladec, loader)
    train_sgd_classifier(twin, test, **{**sgd_options, "epochs": 3}, progress=False)
    with torch.no_grad():
        assert accuracy == pytest.approx(float((twin(test.tensors[0]).argmax(1) == test.tensors[1]).double().mean()))
    with pytest.raises(ValueError, match="sgd"):
        evaluation_accuracy(cladec, linear(1), loader, loader, epochs=1, optimizer="adam", schedule="step")


def test_cladec_learns_to_reconstruct_from_a_frozen_layer_and_refae_trains_its_encoder(digits_loader):
    model = build_model("resnet_small", 10, 1, seed=0).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cladec = ClaDec(epochs=20, seed=0, progress=False).fit(model, "layer2", digits_loader)
    assert cladec.loss_history_[-1] < cladec.loss_history_[0]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the classifier stays frozen
    images = torch.cat([x for x, *_ in digits_loader])
    mean_image_error = float(reconstruction_error(images, images.mean(0, keepdim=True).expand_as(images)).mean())
    assert mean_reconstruction_error(cladec, digits_loader) < 0.5 * mean_image_error
    again = ClaDec(epochs=20, seed=0, progress=False).fit(model, "layer2", digits_loader)
    assert mean_reconstruction_error(again, digits_loader) == pytest.approx(mean_reconstruction_error(cladec, digits_loader), rel=1e-5)
    reference = RefAE(epochs=20, seed=0, progress=False).fit(model, "layer2", digits_loader)
    assert reference.loss_history_[-1] < reference.loss_history_[0]
    # the RefAE's encoder is trained with the decoder (reconstruction only); ClaDec's stays the classifier's
    assert all(p.requires_grad for p in reference.encoder_.parameters())
    assert not any(p.requires_grad for p in cladec.encoder_.parameters())
    assert mean_reconstruction_error(reference, digits_loader) < 0.5 * mean_image_error


def test_refae_starts_from_the_architecture_not_from_the_classifiers_training(digits_loader):
    """The RefAE's encoder is the architecture freshly initialised: nothing of the trained classifier
    survives. A ViT's class token and position embedding belong to no module with reset_parameters,
    so re-initialising a copy is refused by name; built anew at the seed, two differently trained
    classifiers of one architecture get the same RefAE."""
    from conceptscope.methods.cladec import reinitialised_copy

    trained = []
    for seed in (1, 2):
        vit = build_model("vit_small", 10, 1, seed=seed, options={"depth": 1, "dim": 16, "heads": 2})
        with torch.no_grad():
            vit.pos_embed.add_(1.0)  # "trained": far from any initialisation
        trained.append(vit.eval())
    with pytest.raises(ValueError, match=r"\['cls_token', 'pos_embed'\]"):
        reinitialised_copy(trained[0], 0)
    with pytest.raises(ValueError, match="pos_embed"):
        RefAE(epochs=1, seed=0, progress=False).fit(trained[0], "blocks.0", digits_loader)
    encoders = []
    for vit in trained:
        fresh = build_model("vit_small", 10, 1, seed=0, options={"depth": 1, "dim": 16, "heads": 2}).eval()
        start = fresh.pos_embed.detach().clone()
        reference = RefAE(epochs=1, seed=0, progress=False).fit(vit, "blocks.0", digits_loader, fresh_model=fresh)
        assert (start - vit.pos_embed.detach()).abs().min() > 0.5  # not the classifier's
        encoders.append({k: v.detach().clone() for k, v in reference.encoder_.state_dict().items()})
    assert encoders[0].keys() == encoders[1].keys() and all(torch.equal(encoders[0][k], encoders[1][k]) for k in encoders[0])
    # a CNN's copy is re-initialised whole: every conv and batch-norm parameter reset, none kept
    resnet = build_model("resnet_small", 10, 1, seed=1)
    with torch.no_grad():
        for param in resnet.parameters():
            param.add_(1.0)
    copy_ = reinitialised_copy(resnet, 0)
    assert all((a - b).abs().max() > 0.5 for a, b in zip(copy_.parameters(), resnet.parameters()))


@pytest.fixture(scope="module")
def trained_resnet(shortcut_digits):
    """A ResNet trained on the digits (10 epochs), its ClaDec and RefAE at layer3 (20 epochs each), and the training loader."""
    from conceptscope.training import train_classifier

    train_set = shortcut_digits.torch_dataset("train", build_transform(resolve_preprocess("resnet_small", {})))
    train_loader = DataLoader(train_set, batch_size=50, shuffle=False)
    model = build_model("resnet_small", 10, 1, seed=0)
    train_classifier(model, train_set, epochs=10, seed=0, progress=False)
    cladec = ClaDec(epochs=20, seed=0, input_std=[0.5], progress=False).fit(model, "layer3", train_loader)
    refae = RefAE(epochs=20, seed=0, input_std=[0.5], progress=False).fit(model, "layer3", train_loader)
    return model.eval(), cladec, refae, train_loader


@pytest.mark.long  # decoders and classifiers trained to learn: opt-in, the default suite keeps its 15-minute budget
def test_evaluation_classifier_learns_the_task_from_reconstructions(trained_resnet, digits_loader):
    from conceptscope.methods.cladec import evaluation_accuracy, fidelity, reconstructed_dataset

    model, cladec, refae, train_loader = trained_resnet
    data = reconstructed_dataset(cladec, digits_loader)
    assert data.tensors[0].shape == (len(digits_loader.dataset), 1, 28, 28) and len(data.tensors[1]) == len(data.tensors[2])
    accuracy = {name: evaluation_accuracy(r, build_model("resnet_small", 10, 1, seed=1), train_loader, digits_loader, epochs=10)
                for name, r in (("cladec", cladec), ("refae", refae))}
    assert min(accuracy.values()) > 0.3  # far above chance (0.1): the reconstructions carry the digits' classes
    row = fidelity(cladec, refae, accuracy["cladec"], accuracy["refae"], digits_loader)
    assert row["delta_acc"] == pytest.approx(accuracy["cladec"] - accuracy["refae"])
    assert row["delta_rec"] == pytest.approx(row["rec_cladec"] - row["rec_refae"]) and row["rec_refae"] > 0
    # the RefAE's encoder is trained for reconstruction, the classifier's discards what the class does
    # not need: the RefAE reconstructs better (Tables 2-3, delta_rec > 0)
    assert row["rec_refae"] < row["rec_cladec"]


@pytest.mark.long
def test_occluding_the_most_relevant_square_costs_more_accuracy_than_the_least(trained_resnet, digits_loader):
    from conceptscope.methods.cladec_analysis import cladec_occlusion_relevance, extreme_occlusions, occluded_predictions, occlusion_boxes

    model, cladec, _, train_loader = trained_resnet
    images, labels = (torch.cat(parts) for parts in list(zip(*digits_loader))[:2])
    boxes = occlusion_boxes(28, 28)
    fill = float(torch.cat([x for x, *_ in train_loader]).mean())  # the training images' mean pixel (Sec. 6.6)
    relevance = cladec_occlusion_relevance(cladec, images, boxes, fill)
    least, most = extreme_occlusions(relevance.numpy(), np.random.default_rng(0))
    accuracy = {name: float((occluded_predictions(model, images, boxes, choice, fill) == labels.numpy()).mean())
                for name, choice in (("least", least), ("most", most))}
    assert accuracy["most"] < accuracy["least"] - 0.1, accuracy  # Tables 7-8: ClaDec's relevance finds what the classifier needs


def test_refae_at_a_one_by_one_layer_with_batch_norm(digits_loader):
    model = build_model("vgg_small", 10, 1, seed=0).eval()  # features.7: 512 x 1 x 1 after a batch norm
    reference = RefAE(epochs=1, seed=0, progress=False).fit(model, "features.7", digits_loader)
    assert reference.reconstruct(next(iter(digits_loader))[0][:2]).shape == (2, 1, 28, 28)


def test_saved_reconstructors_rebuild_on_the_architecture_with_their_own_encoder(tmp_path, digits_loader):
    from conceptscope.methods.cladec import load_reconstructor

    model = build_model("resnet_small", 10, 1, seed=0).eval()
    images = next(iter(digits_loader))[0][:4]
    subset = ClaDec(epochs=1, seed=0, channels=(0, 8), progress=False).fit(model, "layer2", digits_loader)
    assert subset.decoder_.body[0].in_channels == 8  # only the first 8 of layer2's 64 channels are decoded
    reference = RefAE(epochs=1, seed=0, progress=False).fit(model, "layer2", digits_loader)
    other = build_model("resnet_small", 10, 1, seed=5).eval()  # same architecture, other weights
    for name, reconstructor in (("subset", subset), ("refae", reference)):
        reconstructor.save(tmp_path / f"{name}.pt", note=name)
        loaded = load_reconstructor(tmp_path / f"{name}.pt", other)
        assert loaded.meta == {"note": name} and loaded.loss_history_ == reconstructor.loss_history_
        # the saved encoder replaces the architecture's weights: the RefAE's own, the classifier's for ClaDec
        assert torch.allclose(loaded.reconstruct(images), reconstructor.reconstruct(images), atol=1e-6)
    assert load_reconstructor(tmp_path / "subset.pt", other).channels == (0, 8)
    with pytest.raises(ValueError, match="exceed"):
        ClaDec(epochs=1, channels=(0, 999), progress=False).fit(model, "layer2", digits_loader)


def test_occlusion_grid_matches_the_paper_and_ties_are_broken_at_random():
    from conceptscope.methods.cladec_analysis import extreme_occlusions, occlude, occlusion_boxes

    boxes = occlusion_boxes(32, 32)
    assert len(boxes) == 16 and set((boxes[:, 2] - boxes[:, 0]).tolist()) == {12}
    assert sorted(set(boxes[:, 0].tolist())) == [0, 7, 13, 20]  # the paper's 0, 6, 12, 20 up to rounding
    image = torch.zeros(1, 3, 32, 32)
    covered = occlude(image, boxes[5], torch.tensor([1.0, 2.0, 3.0]))
    assert covered[0, :, 7:19, 7:19].mean((1, 2)).tolist() == [1.0, 2.0, 3.0] and covered.sum() == 144 * 6 and image.sum() == 0
    rng = np.random.default_rng(0)
    least, most = extreme_occlusions(np.array([[3.0, 1.0, 2.0, 5.0]]), rng)
    assert least.tolist() == [1] and most.tolist() == [3]
    least, most = extreme_occlusions(np.ones((400, 16)), rng)  # constant relevance: any box, at random
    assert len(set(least.tolist())) == 16 and (least != most).mean() > 0.8


def test_grad_cam_equals_the_definition_and_is_constant_on_a_one_by_one_layer():
    from conceptscope.attribution import grad_cam
    from conceptscope.models import get_layer

    model = build_model("resnet_small", 10, 1, seed=0).eval()
    images = torch.rand(3, 1, 28, 28)
    targets = torch.tensor([1, 4, 7])
    saved = {}
    handle = get_layer(model, "layer2").register_forward_hook(lambda m, i, o: saved.update(a=o))
    logits = model(images)
    handle.remove()
    grads = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), saved["a"])[0]
    cam = torch.relu((grads.mean((2, 3), keepdim=True) * saved["a"]).sum(1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=(28, 28), mode="bilinear", align_corners=False)[:, 0].detach()
    low, high = cam.flatten(1).min(1).values[:, None, None], cam.flatten(1).max(1).values[:, None, None]
    assert torch.allclose(grad_cam(model, images, "layer2", targets), (cam - low) / (high - low), atol=1e-5)
    flat = grad_cam(build_model("vgg_small", 10, 1, seed=0).eval(), images, "features.7", targets)
    assert flat.shape == (3, 28, 28) and (flat == 0).all()  # a 1x1 map says nothing about where


def test_cladec_relevance_follows_the_strokes_of_the_digit(digits_loader):
    from conceptscope.methods.cladec_analysis import box_errors, cladec_occlusion_relevance, occlusion_boxes

    model = build_model("resnet_small", 10, 1, seed=0).eval()
    cladec = ClaDec(epochs=15, seed=0, progress=False).fit(model, "layer1", digits_loader)
    images = next(iter(digits_loader))[0][:20]
    boxes = occlusion_boxes(28, 28)
    fill = float(images.mean())
    relevance = cladec_occlusion_relevance(cladec, images, boxes, fill)
    assert relevance.shape == (20, 16) and (relevance >= 0).all()
    # occluding the centre (where the strokes are) changes the reconstruction more than the black corners
    centre, corners = relevance[:, [5, 6, 9, 10]].mean(), relevance[:, [0, 3, 12, 15]].mean()
    assert centre > 2 * corners
    ink = (images > 0).float().flatten(2).sum(2)[:, 0]
    assert np.corrcoef(relevance.sum(1).numpy(), ink.numpy())[0, 1] > 0  # more ink to cover, more relevance
    targets, reconstructions = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    reconstructions[1, 0, :2, :2] = 3.0
    assert box_errors(reconstructions, targets, np.array([[0, 0, 2, 2], [0, 0, 2, 2]]), std=[0.5]).tolist() == [0.25, 2.25]


def test_twins_share_one_refae_and_other_archs_train_their_own(tmp_path):
    """Rule train_reconstructor: a shortcut net and its clean twin (same architecture, training sets
    that differ only in the shortcut) share one RefAE, trained for the first and copied for the
    other; a model of another architecture, or one trained on other data, trains its own (the dry
    run's job inputs)."""
    import subprocess
    import sys

    import yaml

    from conftest import ROOT

    config = yaml.safe_load((ROOT / "configs" / "test.yaml").read_text())
    config["models"]["vgg_clean"] = {**config["models"]["vgg_shortcut"], "train_dataset": "digits", "eval_datasets": ["digits_shortcut"]}
    config["models"]["vgg_small_data"] = {**config["models"]["vgg_clean"], "train_dataset": "digits_small"}
    config["datasets"]["digits_small"] = {"kind": "digits", "max_per_class": 6}
    config["cladec"]["models"] = ["vgg_shortcut", "vgg_clean", "vgg_small_data", "resnet_clean"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--configfile", "config.yaml", "-n"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    inputs = {}  # RefAE job's model -> its input line
    for block in run.stdout.split("rule train_reconstructor:")[1:]:
        lines = dict(line.strip().split(": ", 1) for line in block.splitlines()[:3] if ": " in line)
        if "/refae/" in lines.get("output", ""):
            inputs[lines["output"].split("/")[3]] = lines["input"]
    assert sorted(inputs) == ["resnet_clean", "vgg_clean", "vgg_shortcut", "vgg_small_data"]
    # the first of the twins in the run's model order trains it (the safe-dumped config lists vgg_clean first)
    assert "results-test/cladec/digits_shortcut/vgg_clean/features.7/refae/reconstructor.pt" in inputs["vgg_shortcut"]
    assert all("reconstructor.pt" not in inputs[m] for m in ("vgg_clean", "vgg_small_data", "resnet_clean"))


def test_a_copied_reconstructor_is_the_same_reconstructor_with_its_own_meta_and_losses(tmp_path, digits_loader):
    from conceptscope.methods.cladec import copy_reconstructor, load_reconstructor

    model = build_model("vgg_small", 10, 1, seed=0).eval()
    reference = RefAE(epochs=1, seed=0, progress=False).fit(model, "features.7", digits_loader, fresh_model=build_model("vgg_small", 10, 1, seed=0))
    reference.save(tmp_path / "a.pt", model="vgg_shortcut", seconds=3.0)
    losses = copy_reconstructor(tmp_path / "a.pt", tmp_path / "b.pt", model="vgg_clean")
    a, b = (torch.load(tmp_path / name, weights_only=True) for name in ("a.pt", "b.pt"))
    assert b["meta"] == {"model": "vgg_clean", "seconds": 3.0, "copied_from": str(tmp_path / "a.pt")}
    for part in ("encoder", "decoder"):
        assert a[part].keys() == b[part].keys() and all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    images = next(iter(digits_loader))[0]
    loaded = load_reconstructor(tmp_path / "b.pt", build_model("vgg_small", 10, 1, seed=5))
    assert torch.equal(loaded.reconstruct(images), reference.reconstruct(images))
    assert losses == pytest.approx(reference.loss_history_) and len(losses) == 1
