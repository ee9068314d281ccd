"""ClaDec (Schneider & Vlachos, "Explaining classifiers by constructing familiar concepts"): decoders of
classifier layers and the RefAE reference and their fidelity evaluation; occlusion relevance and the
watermark measures are in `cladec_analysis.py`.

A decoder D is trained on the frozen classifier's activations L(X) at one layer to reconstruct the
input X, with the loss of Eq. 1: (1 - alpha) * mean_i (X_i - D(L(X))_i)^2 + alpha * CE(C(D(L(X))), Y),
the squared error averaged over pixels and channels on the [0, 1] pixel scale (the authors' code: an
MSE on [0, 1] images), so the paper's alphas (0.9, 0.99, 0.999) weigh the same two terms. Images
enter the models normalised, (x - mean) / std per channel; the error of a difference is rescaled by
std (the mean cancels). Every reconstruction error here is in that unit: the mean squared error per
pixel on the [0, 1] scale (in the inputs' own units where no std is given).
The reference auto-encoder (RefAE) has the same architecture: an encoder of the classifier's
architecture up to the layer (freshly initialised) and the same decoder, trained jointly for
reconstruction only (Sec. 3, Fig. 1). Differences between the two reconstructions that the RefAE
does not show are attributed to the classifier.

The decoder follows the paper's Table 1: 5x5 transposed convolutions with stride 2 (256, 128, 64,
32 channels, a ReLU after each) ending in the image's channels; a layer with a larger map uses only
the last, lower ones (Sec. 6, "the highest deconvolutional layers ... have to be removed"). Where
the input size is not the map size times a power of two, the output is resized to the input size.

    decoder = ClaDec(alpha=0.0, epochs=8, input_std=[0.5]).fit(model, "features.7", loader)
    reconstructions = decoder.reconstruct(images)
    reference = RefAE(epochs=8, input_std=[0.5]).fit(model, "features.7", loader)
    row = fidelity(decoder, reference, acc_cladec, acc_refae, test_loader)   # Tables 2-5
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..activations import split_at_layer

_log = logging.getLogger(__name__)

# Table 1: the decoder's transposed convolutions, from the code towards the image.
DECODER_WIDTHS = (256, 128, 64, 32)
KERNEL = 5
# Sec. 6: reconstruction models trained with Adam for 64 epochs.
EPOCHS = 64


class Decoder(nn.Module):
    """Maps a layer's activations (N, C, h, w) or (N, C) to images (N, c, H, W) (paper Table 1)."""

    def __init__(self, code_shape: Sequence[int], image_shape: Sequence[int], widths: Sequence[int] = DECODER_WIDTHS):
        super().__init__()
        channels, *spatial = code_shape
        height, width = spatial if spatial else (1, 1)
        out_channels, self.out_h, self.out_w = image_shape
        n_up = max(0, math.ceil(math.log2(max(self.out_h / height, self.out_w / width))))
        layers: list[nn.Module] = []
        if n_up == 0:  # a map as large as the image: one stride-1 layer to the image's channels
            layers.append(nn.ConvTranspose2d(channels, out_channels, KERNEL, stride=1, padding=KERNEL // 2))
        else:
            chosen = list(widths)[-(n_up - 1) :] if n_up > 1 else []
            chosen = [widths[0]] * (n_up - 1 - len(chosen)) + chosen  # deeper codes than Table 1: repeat its first width
            sizes = [channels, *chosen, out_channels]
            for i, (c_in, c_out) in enumerate(zip(sizes[:-1], sizes[1:])):
                layers.append(nn.ConvTranspose2d(c_in, c_out, KERNEL, stride=2, padding=KERNEL // 2, output_padding=1))
                if i < len(sizes) - 2:
                    layers.append(nn.ReLU(inplace=True))
        self.body = nn.Sequential(*layers)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        if code.ndim == 2:
            code = code[:, :, None, None]
        out = self.body(code)
        if out.shape[-2:] != (self.out_h, self.out_w):
            out = F.interpolate(out, size=(self.out_h, self.out_w), mode="bilinear", align_corners=False)
        return out


def reconstruction_error(images: torch.Tensor, reconstructions: torch.Tensor, std: Sequence[float] | None = None) -> torch.Tensor:
    """(N,) mean squared error per pixel (the first term of Eq. 1), over pixels and channels: on the
    [0, 1] pixel scale when `std` (the normalisation's per-channel standard deviations) is given,
    else in the inputs' own units."""
    difference = images - reconstructions
    if std is not None:
        difference = difference * torch.as_tensor(std, dtype=difference.dtype, device=difference.device).view(1, -1, 1, 1)
    return (difference**2).flatten(1).mean(dim=1)


def cladec_loss(images, reconstructions, logits_of_reconstructions, labels, alpha: float, std: Sequence[float] | None = None) -> torch.Tensor:
    """Eq. 1, averaged over the batch: (1 - alpha) * per-pixel squared error (on the [0, 1] scale with
    `std`, see `reconstruction_error`) + alpha * cross-entropy of C(x_hat)."""
    loss = (1 - alpha) * reconstruction_error(images, reconstructions, std).mean()
    if alpha > 0:
        loss = loss + alpha * F.cross_entropy(logits_of_reconstructions, labels)
    return loss


class Reconstructor:
    """Shared training loop of ClaDec and RefAE: Adam over (images, labels, ...) batches.

    `input_std`: the per-channel standard deviations of the inputs' normalisation (the model's
    preprocess std), so that the loss and every reported error are per-pixel squared errors on the
    [0, 1] scale (Eq. 1); None where the inputs are the [0, 1] pixels themselves.
    """

    def __init__(self, *, epochs: int = EPOCHS, lr: float = 1e-3, seed: int = 0, input_std: Sequence[float] | None = None,
                 device: torch.device | str | None = None, progress: bool = True):
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        if input_std is not None and not all(v > 0 for v in input_std):
            raise ValueError(f"input_std must be positive per-channel standard deviations, got {input_std}")
        self.epochs, self.lr, self.seed, self.device, self.progress = epochs, lr, seed, device, progress
        self.input_std = None if input_std is None else [float(v) for v in input_std]

    def _device(self, model: nn.Module) -> torch.device:
        return torch.device(self.device) if self.device is not None else next(model.parameters()).device

    def _train(self, parameters, step, loader: Iterable, device) -> list[float]:
        optimizer = torch.optim.Adam(parameters, lr=self.lr)
        history = []
        for epoch in tqdm(range(self.epochs), desc=type(self).__name__, disable=not self.progress):
            total, count = 0.0, 0
            batches = tqdm(loader, desc=f"{type(self).__name__} epoch {epoch + 1}/{self.epochs}", unit="batch", disable=not self.progress, leave=False)
            for images, labels, *_ in batches:
                images, labels = images.to(device), torch.as_tensor(labels).to(device)
                loss = step(images, labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total, count = total + loss.item() * len(images), count + len(images)
            history.append(total / max(count, 1))
            _log.info("%s epoch %d/%d: loss %.5g", type(self).__name__, epoch + 1, self.epochs, history[-1])
        return history

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        self.encoder_.eval()
        self.decoder_.eval()
        device = next(self.decoder_.parameters()).device
        return self.decoder_(self._encode(images.to(device)))

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder_(images)[0]

    def save(self, path, **meta) -> None:
        """Encoder and decoder weights with what `load_reconstructor` needs to rebuild them (atomic)."""
        from ..utils import atomic_path

        state = {
            "kind": type(self).__name__, "layer": self.layer_, "code_shape": list(self.code_shape_), "image_shape": list(self.image_shape_),
            "alpha": getattr(self, "alpha", None), "channels": getattr(self, "channels", None),
            "epochs": self.epochs, "lr": self.lr, "seed": self.seed, "input_std": self.input_std, "loss_history": list(self.loss_history_),
            "encoder": {k: v.cpu() for k, v in self.encoder_.state_dict().items()},
            "decoder": {k: v.cpu() for k, v in self.decoder_.state_dict().items()}, "meta": meta,
        }
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def _build_decoder(self, layer: str, code: torch.Tensor, image_shape: Sequence[int], device) -> None:
        self.layer_, self.code_shape_, self.image_shape_ = layer, tuple(code.shape[1:]), tuple(image_shape)
        self.decoder_ = Decoder(self.code_shape_, self.image_shape_).to(device)


def copy_reconstructor(source, path, **meta) -> list[float]:
    """Copy a saved reconstructor to `path` (atomic) with `meta` entries replaced (and `copied_from`
    the source); returns its loss per epoch."""
    from ..utils import atomic_path

    state = torch.load(source, map_location="cpu", weights_only=True)
    state["meta"] = {**state.get("meta", {}), **meta, "copied_from": str(source)}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return list(state["loss_history"])


def load_reconstructor(path, model: nn.Module, device: torch.device | str = "cpu") -> "ClaDec | RefAE":
    """A saved ClaDec or RefAE, rebuilt on `model`'s architecture (its weights are replaced by the saved
    encoder's, so a RefAE or an untrained-classifier ClaDec loads onto the explained model too)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    kinds = {"ClaDec": ClaDec, "RefAE": RefAE}
    if state.get("kind") not in kinds:
        raise ValueError(f"{path} is not a saved ClaDec or RefAE (kind {state.get('kind')!r})")
    kwargs = {"alpha": state["alpha"], "channels": state["channels"]} if state["kind"] == "ClaDec" else {}
    # input_std: absent from files saved without one (their losses and errors are in the inputs' units)
    reconstructor = kinds[state["kind"]](epochs=state["epochs"], lr=state["lr"], seed=state["seed"], input_std=state.get("input_std"),
                                         progress=False, **kwargs)
    split = split_at_layer(copy.deepcopy(model), state["layer"])
    if split is None:
        raise ValueError(f"cannot cut the model at {state['layer']!r} with torch.fx")
    reconstructor.encoder_ = split[0]
    reconstructor.encoder_.load_state_dict(state["encoder"])
    reconstructor.encoder_.to(device).eval().requires_grad_(False)
    reconstructor.layer_, reconstructor.code_shape_, reconstructor.image_shape_ = state["layer"], tuple(state["code_shape"]), tuple(state["image_shape"])
    reconstructor.decoder_ = Decoder(reconstructor.code_shape_, reconstructor.image_shape_)
    reconstructor.decoder_.load_state_dict(state["decoder"])
    reconstructor.decoder_.to(device).eval()
    reconstructor.loss_history_ = state["loss_history"]
    reconstructor.meta = state["meta"]
    return reconstructor


class ClaDec(Reconstructor):
    """A decoder of the frozen classifier's `layer` (Eq. 1; `alpha` = 0 is the paper's default).

    `channels` = (start, stop) decodes only that subset of the layer's channels (Sec. 6.4).
    Learned: encoder_ (a frozen copy of the classifier up to the layer), decoder_, loss_history_ (per epoch, in the unit of Eq. 1).
    """

    def __init__(self, *, alpha: float = 0.0, channels: tuple[int, int] | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1] (Eq. 1), got {alpha}")
        if channels is not None and not (0 <= channels[0] < channels[1]):
            raise ValueError(f"channels must be (start, stop) with 0 <= start < stop, got {channels}")
        self.alpha, self.channels = alpha, None if channels is None else (int(channels[0]), int(channels[1]))

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        code = self.encoder_(images)[0]
        if self.channels is None:
            return code
        start, stop = self.channels
        if stop > code.shape[1]:
            raise ValueError(f"channels {self.channels} exceed the layer's {code.shape[1]} channels")
        return code[:, start:stop]

    def fit(self, model: nn.Module, layer: str, loader: Iterable, image_shape: Sequence[int] | None = None) -> "ClaDec":
        """Train the decoder on `model`'s activations at `layer`. The classifier is frozen as a copy
        (eval mode, no gradients for its weights): `model` itself, its requires_grad flags and its
        train/eval mode stay as they were, and the encoder_ does not change when `model` trains later."""
        device = self._device(model)
        classifier = copy.deepcopy(model).to(device).eval().requires_grad_(False)
        split = split_at_layer(classifier, layer)
        if split is None:
            raise ValueError(f"cannot cut the model at {layer!r} with torch.fx; ClaDec needs the classifier up to the layer")
        self.encoder_ = split[0].to(device).eval().requires_grad_(False)
        images, _, *_ = next(iter(loader))
        torch.manual_seed(self.seed)
        with torch.no_grad():
            code = self._encode(images[:1].to(device))
        self._build_decoder(layer, code, image_shape or images.shape[1:], device)

        def step(x, y):
            with torch.no_grad():
                code = self._encode(x)
            x_hat = self.decoder_(code)
            logits = classifier(x_hat) if self.alpha > 0 else None  # gradients flow through the frozen classifier
            return cladec_loss(x, x_hat, logits, y, self.alpha, self.input_std)

        self.decoder_.train()
        self.loss_history_ = self._train(self.decoder_.parameters(), step, loader, device)
        return self


def reinitialised_copy(model: nn.Module, seed: int) -> nn.Module:
    """A deep copy of `model` with every parameter re-initialised (seeded) by its module's
    `reset_parameters` (or `_reset_parameters`, as nn.MultiheadAttention names it).

    Raises ValueError naming the parameters whose module has neither: a copy would keep their trained
    values, so it would not be an untrained model of the architecture.
    """
    torch.manual_seed(seed)
    fresh = copy.deepcopy(model)
    kept = []
    for name, module in fresh.named_modules():
        reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
        if reset is not None:
            reset()
        elif module._parameters:
            kept += [f"{name}.{key}" if name else key for key, value in module._parameters.items() if value is not None]
    covered = {id(p) for m in fresh.modules() if hasattr(m, "reset_parameters") or hasattr(m, "_reset_parameters") for p in m.parameters()}
    kept = [name for name in kept if id(fresh.get_parameter(name)) not in covered]
    if kept:
        raise ValueError(f"cannot re-initialise {type(model).__name__} by copying it: parameter(s) {kept} belong to modules without "
                         "reset_parameters and would keep their trained values; pass fresh_model (the architecture built anew)")
    return fresh


class RefAE(Reconstructor):
    """The reference auto-encoder: the classifier's architecture up to `layer`, freshly initialised,
    and the same decoder, trained jointly for reconstruction only (Sec. 3).

    Learned: encoder_, decoder_, loss_history_.
    """

    def fit(self, model: nn.Module, layer: str, loader: Iterable, image_shape: Sequence[int] | None = None, fresh_model: nn.Module | None = None) -> "RefAE":
        """`fresh_model`: an untrained model of the classifier's architecture, e.g. the architecture
        built anew at a seed (the pipeline's choice). Default: a deep copy of `model` with every
        module re-initialised by its reset_parameters; refused where a parameter's module has none
        (a ViT's class token and position embedding), as the copy would keep the trained values."""
        if fresh_model is None:
            fresh_model = reinitialised_copy(model, self.seed)
        split = split_at_layer(fresh_model, layer)
        if split is None:
            raise ValueError(f"cannot cut the model at {layer!r} with torch.fx; RefAE needs the architecture up to the layer")
        device = self._device(model)
        self.encoder_ = split[0].to(device).eval().requires_grad_(True)
        images, _, *_ = next(iter(loader))
        with torch.no_grad():  # probe the code's shape in eval mode (batch norm on one 1x1 map cannot train)
            code = self._encode(images[:1].to(device))
        self.encoder_.train()
        torch.manual_seed(self.seed)
        self._build_decoder(layer, code, image_shape or images.shape[1:], device)

        def step(x, y):
            return reconstruction_error(x, self.decoder_(self._encode(x)), self.input_std).mean()

        self.decoder_.train()
        self.loss_history_ = self._train([*self.encoder_.parameters(), *self.decoder_.parameters()], step, loader, device)
        return self


def mean_reconstruction_error(reconstructor: Reconstructor, loader: Iterable) -> float:
    """Mean over images of the per-pixel squared error (the Rec columns of Tables 2-5): on the [0, 1]
    scale with the reconstructor's input_std, the unit of its training loss (`reconstruction_error`)."""
    errors = []
    for images, *_ in loader:
        errors.append(reconstruction_error(images, reconstructor.reconstruct(images).cpu(), reconstructor.input_std).numpy())
    return float(np.concatenate(errors).mean())


def reconstructed_dataset(reconstructor: Reconstructor, loader: Iterable, progress: bool = False) -> torch.utils.data.TensorDataset:
    """(reconstruction, label, image_id) for every item of `loader`, on the CPU (what C_eval trains on)."""
    parts: list[list[torch.Tensor]] = [[], [], []]
    for images, labels, ids in tqdm(loader, desc=f"{type(reconstructor).__name__} reconstructions", unit="batch", disable=not progress, leave=False):
        parts[0].append(reconstructor.reconstruct(images).cpu())
        parts[1].append(torch.as_tensor(labels))
        parts[2].append(torch.as_tensor(ids))
    return torch.utils.data.TensorDataset(*(torch.cat(p) for p in parts))


# Sec. 5 (experimental setup): the classifiers, those for evaluation included, are trained with SGD
# for 64 epochs from a learning rate of 0.1, decayed twice by 0.1. Momentum 0.9, weight decay 1e-4,
# batch size 128 and the decays after epochs 29 and 58 (of 64) are those of the authors' code.
PAPER_EVAL_TRAIN = {"optimizer": "sgd", "epochs": 64, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 128, "schedule": "step"}
STEP_DECAYS = (29 / 64, 58 / 64)  # where the "step" schedule multiplies the learning rate by 0.1, as shares of the epochs
OPTIMIZERS = ("adam", "sgd")


def step_decay_epochs(epochs: int) -> list[int]:
    """The epochs after which the `step` schedule multiplies the learning rate by 0.1 (29 and 58 of 64)."""
    return sorted({round(share * epochs) for share in STEP_DECAYS} - {0, epochs})


def train_sgd_classifier(model: nn.Module, train_set, *, epochs: int = 64, batch_size: int = 128, lr: float = 0.1, momentum: float = 0.9,
                         weight_decay: float = 1e-4, schedule: str = "step", seed: int = 0, device: torch.device | str = "cpu",
                         progress: bool = True) -> "pd.DataFrame":
    """Train `model` in place with SGD (momentum, weight decay) and cross-entropy; the paper's C_eval
    recipe by default (Sec. 5). `schedule`: `step` multiplies the learning rate by 0.1 after the
    `step_decay_epochs`, `cosine` anneals it to 0 over all steps, `constant` keeps it. Returns the
    per-epoch log (epoch, loss, train_acc, lr: the epoch's first learning rate), seeded as
    `training.train_classifier` (shuffling, initialisation)."""
    import pandas as pd
    from torch.utils.data import DataLoader

    from ..utils import seed_everything

    if schedule not in ("step", "cosine", "constant"):
        raise ValueError(f"unknown schedule {schedule!r} for SGD; expected step, cosine or constant")
    generator = seed_everything(seed)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator, num_workers=0)
    model.to(device).train()
    optimiser = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    decays, total_steps = step_decay_epochs(epochs), epochs * len(loader)
    log = []
    for epoch in tqdm(range(epochs), desc="C_eval (SGD)", disable=not progress):
        total, correct, seen, first_lr = 0.0, 0, 0, None
        for step, (images, labels, *_) in enumerate(loader, start=epoch * len(loader)):
            if schedule == "cosine":
                factor = 0.5 * (1 + math.cos(math.pi * step / total_steps))
            else:
                factor = 0.1 ** sum(epoch >= d for d in decays) if schedule == "step" else 1.0
            for group in optimiser.param_groups:
                group["lr"] = lr * factor
            first_lr = lr * factor if first_lr is None else first_lr
            images, labels = images.to(device), torch.as_tensor(labels).to(device)
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total, seen = total + loss.item() * len(labels), seen + len(labels)
            correct += int((logits.argmax(1) == labels).sum())
        log.append({"epoch": epoch + 1, "loss": total / max(seen, 1), "train_acc": correct / max(seen, 1), "lr": first_lr})
    model.eval()
    return pd.DataFrame(log)


def evaluation_accuracy(
    reconstructor: Reconstructor,
    fresh_model: nn.Module,
    train_loader: Iterable,
    test_loader: Iterable,
    *,
    epochs: int = 8,
    seed: int = 0,
    optimizer: str = "adam",
    progress: bool = False,
    **train_options,
) -> float:
    """Accuracy of C_eval (Sec. 5): `fresh_model` (the classifier's architecture, untrained) trained on
    the reconstructions of the training images and tested on those of the test images.
    `optimizer` "adam": `train_options` (batch_size, lr, weight_decay, schedule) go to
    `training.train_classifier`, C_eval trained as the pipeline's classifiers; "sgd": they (and
    momentum, schedule "step") go to `train_sgd_classifier`, the paper's recipe (`PAPER_EVAL_TRAIN`)."""
    from ..training import train_classifier

    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown C_eval optimizer {optimizer!r}; expected one of {OPTIMIZERS}")
    if optimizer == "adam" and ("momentum" in train_options or train_options.get("schedule") == "step"):
        raise ValueError("momentum and the 'step' schedule are SGD options: set optimizer 'sgd' for C_eval")
    device = next(reconstructor.decoder_.parameters()).device
    train = train_classifier if optimizer == "adam" else train_sgd_classifier
    train(fresh_model, reconstructed_dataset(reconstructor, train_loader, progress), epochs=epochs, seed=seed, device=device, progress=progress, **train_options)
    test = reconstructed_dataset(reconstructor, test_loader, progress)
    with torch.no_grad():
        predicted = torch.cat([fresh_model(x.to(device)).argmax(1).cpu() for x in test.tensors[0].split(256)])
    return float((predicted == test.tensors[1]).double().mean())


def fidelity(cladec: ClaDec, refae: RefAE, acc_cladec: float, acc_refae: float, test_loader: Iterable) -> dict[str, float]:
    """The columns of Tables 2-5: reconstruction errors (see `mean_reconstruction_error`) and ΔRec,
    evaluation accuracies and ΔAcc."""
    rec_cladec, rec_refae = mean_reconstruction_error(cladec, test_loader), mean_reconstruction_error(refae, test_loader)
    return {"rec_cladec": rec_cladec, "rec_refae": rec_refae, "delta_rec": rec_cladec - rec_refae,
            "acc_cladec": acc_cladec, "acc_refae": acc_refae, "delta_acc": acc_cladec - acc_refae}
