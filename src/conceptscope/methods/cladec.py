"""ClaDec (Schneider & Vlachos, "Explaining classifiers by constructing familiar concepts"): decoders of
classifier layers and the RefAE reference. Work in progress: the library core of issue 7.

A decoder D is trained on the frozen classifier's activations L(X) at one layer to reconstruct the
input X, with the loss of Eq. 1: (1 - alpha) * sum_i (X_i - D(L(X))_i)^2 + alpha * CE(C(D(L(X))), Y).
The reference auto-encoder (RefAE) has the same architecture: an encoder of the classifier's
architecture up to the layer (freshly initialised) and the same decoder, trained jointly for
reconstruction only (Sec. 3, Fig. 1). Differences between the two reconstructions that the RefAE
does not show are attributed to the classifier.

The decoder follows the paper's Table 1: 5x5 transposed convolutions with stride 2 (256, 128, 64,
32 channels, a ReLU after each) ending in the image's channels; a layer with a larger map uses only
the last, lower ones (Sec. 6, "the highest deconvolutional layers ... have to be removed"). Where
the input size is not the map size times a power of two, the output is resized to the input size.

    decoder = ClaDec(alpha=0.0, epochs=8).fit(model, "features.7", loader)
    reconstructions = decoder.reconstruct(images)
    reference = RefAE(epochs=8).fit(model, "features.7", loader)
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .contrast import split_at_layer

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


def reconstruction_error(images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """(N,) summed squared error per image (the first term of Eq. 1)."""
    return ((images - reconstructions) ** 2).flatten(1).sum(dim=1)


def cladec_loss(images, reconstructions, logits_of_reconstructions, labels, alpha: float) -> torch.Tensor:
    """Eq. 1, averaged over the batch: (1 - alpha) * squared error + alpha * cross-entropy of C(x_hat)."""
    loss = (1 - alpha) * reconstruction_error(images, reconstructions).mean()
    if alpha > 0:
        loss = loss + alpha * F.cross_entropy(logits_of_reconstructions, labels)
    return loss


class _Reconstructor:
    """Shared training loop of ClaDec and RefAE: Adam over (images, labels, ...) batches."""

    def __init__(self, *, epochs: int = EPOCHS, lr: float = 1e-3, seed: int = 0, device: torch.device | str | None = None, progress: bool = True):
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        self.epochs, self.lr, self.seed, self.device, self.progress = epochs, lr, seed, device, progress

    def _device(self, model: nn.Module) -> torch.device:
        return torch.device(self.device) if self.device is not None else next(model.parameters()).device

    def _train(self, parameters, step, loader: Iterable, device) -> list[float]:
        optimizer = torch.optim.Adam(parameters, lr=self.lr)
        history = []
        for epoch in tqdm(range(self.epochs), desc=type(self).__name__, disable=not self.progress):
            total, count = 0.0, 0
            for images, labels, *_ in loader:
                images, labels = images.to(device), torch.as_tensor(labels).to(device)
                loss = step(images, labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total, count = total + loss.item() * len(images), count + len(images)
            history.append(total / max(count, 1))
        return history

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        self.encoder_.eval()
        self.decoder_.eval()
        device = next(self.decoder_.parameters()).device
        return self.decoder_(self._encode(images.to(device)))

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder_(images)[0]


class ClaDec(_Reconstructor):
    """A decoder of the frozen classifier's `layer` (Eq. 1; `alpha` = 0 is the paper's default).

    Learned: encoder_ (the classifier up to the layer, frozen), decoder_, loss_history_ (per epoch).
    """

    def __init__(self, *, alpha: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1] (Eq. 1), got {alpha}")
        self.alpha = alpha

    def fit(self, model: nn.Module, layer: str, loader: Iterable, image_shape: Sequence[int] | None = None) -> "ClaDec":
        split = split_at_layer(model, layer)
        if split is None:
            raise ValueError(f"cannot cut the model at {layer!r} with torch.fx; ClaDec needs the classifier up to the layer")
        device = self._device(model)
        model.eval().requires_grad_(False)
        self.encoder_ = split[0].to(device).eval().requires_grad_(False)
        images, _, *_ = next(iter(loader))
        torch.manual_seed(self.seed)
        with torch.no_grad():
            code = self._encode(images[:1].to(device))
        self.decoder_ = Decoder(code.shape[1:], image_shape or images.shape[1:]).to(device)

        def step(x, y):
            with torch.no_grad():
                code = self._encode(x)
            x_hat = self.decoder_(code)
            logits = model(x_hat) if self.alpha > 0 else None  # gradients flow through the frozen classifier
            return cladec_loss(x, x_hat, logits, y, self.alpha)

        self.decoder_.train()
        self.loss_history_ = self._train(self.decoder_.parameters(), step, loader, device)
        return self


class RefAE(_Reconstructor):
    """The reference auto-encoder: the classifier's architecture up to `layer`, freshly initialised,
    and the same decoder, trained jointly for reconstruction only (Sec. 3).

    Learned: encoder_, decoder_, loss_history_.
    """

    def fit(self, model: nn.Module, layer: str, loader: Iterable, image_shape: Sequence[int] | None = None, fresh_model: nn.Module | None = None) -> "RefAE":
        """`fresh_model`: an untrained model of the classifier's architecture (default: a deep copy of
        `model` with every parameter re-initialised by its module's reset_parameters)."""
        if fresh_model is None:
            import copy

            torch.manual_seed(self.seed)
            fresh_model = copy.deepcopy(model)
            for module in fresh_model.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
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
        self.decoder_ = Decoder(code.shape[1:], image_shape or images.shape[1:]).to(device)

        def step(x, y):
            return reconstruction_error(x, self.decoder_(self._encode(x))).mean()

        self.decoder_.train()
        self.loss_history_ = self._train([*self.encoder_.parameters(), *self.decoder_.parameters()], step, loader, device)
        return self


def mean_reconstruction_error(reconstructor: _Reconstructor, loader: Iterable) -> float:
    """Mean over images of the summed squared error (the Rec columns of Tables 2-5)."""
    errors = []
    for images, *_ in loader:
        errors.append(reconstruction_error(images, reconstructor.reconstruct(images).cpu()).numpy())
    return float(np.concatenate(errors).mean())


def reconstructed_dataset(reconstructor: _Reconstructor, loader: Iterable) -> torch.utils.data.TensorDataset:
    """(reconstruction, label, image_id) for every item of `loader`, on the CPU (what C_eval trains on)."""
    parts: list[list[torch.Tensor]] = [[], [], []]
    for images, labels, ids in loader:
        parts[0].append(reconstructor.reconstruct(images).cpu())
        parts[1].append(torch.as_tensor(labels))
        parts[2].append(torch.as_tensor(ids))
    return torch.utils.data.TensorDataset(*(torch.cat(p) for p in parts))


def evaluation_accuracy(
    reconstructor: _Reconstructor,
    fresh_model: nn.Module,
    train_loader: Iterable,
    test_loader: Iterable,
    *,
    epochs: int = 8,
    seed: int = 0,
    progress: bool = False,
) -> float:
    """Accuracy of C_eval (Sec. 5): `fresh_model` (the classifier's architecture, untrained) trained on
    the reconstructions of the training images and tested on those of the test images."""
    from ..training import train_classifier

    device = next(reconstructor.decoder_.parameters()).device
    train_classifier(fresh_model, reconstructed_dataset(reconstructor, train_loader), epochs=epochs, seed=seed, device=device, progress=progress)
    test = reconstructed_dataset(reconstructor, test_loader)
    with torch.no_grad():
        predicted = torch.cat([fresh_model(x.to(device)).argmax(1).cpu() for x in test.tensors[0].split(256)])
    return float((predicted == test.tensors[1]).double().mean())


def fidelity(cladec: ClaDec, refae: RefAE, acc_cladec: float, acc_refae: float, test_loader: Iterable) -> dict[str, float]:
    """The columns of Tables 2-5: reconstruction errors and ΔRec, evaluation accuracies and ΔAcc."""
    rec_cladec, rec_refae = mean_reconstruction_error(cladec, test_loader), mean_reconstruction_error(refae, test_loader)
    return {"rec_cladec": rec_cladec, "rec_refae": rec_refae, "delta_rec": rec_cladec - rec_refae,
            "acc_cladec": acc_cladec, "acc_refae": acc_refae, "delta_acc": acc_cladec - acc_refae}
