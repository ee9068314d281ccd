"""The prediction test of class concepts (Herdt & Otero Baguer, Sec. 4.3): the top crop of each of a
class's concepts, stacked in height, is classified; the softmax of the class and whether it is the
argmax say whether the concepts carry what the model needs to predict the class."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..models import build_transform, fit_input

# Sec. 4.2: dataset crops of 74 x 74 pixels (a 3 x 3 grid of the 224 x 224 input).
CROP_SIZE = 74


def _as_image(crop) -> Image.Image:
    if isinstance(crop, Image.Image):
        return crop
    array = np.asarray(crop)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ValueError(f"crops must be PIL images or uint8 arrays (H, W) or (H, W, 3), got {array.dtype} {array.shape}")
    return Image.fromarray(array)


def stitch_crops(crops: Sequence[Image.Image | np.ndarray], size: int = CROP_SIZE) -> Image.Image:
    """One crop per concept, each resized to size x size, concatenated in the height dimension.

    Sec. 4.3: "we first combine the dataset visualization for each of the n concepts into a single
    image, by concatenating them in the height dimension" - the result is size wide and n * size
    high, concept 1 on top. size defaults to the paper's 74 px crops (Sec. 4.2); for other models use
    input_size // grid. Greyscale crops give a greyscale image, anything else RGB.
    """
    if not len(crops):
        raise ValueError("no crops to stitch")
    images = [_as_image(crop) for crop in crops]
    mode = "L" if all(image.mode == "L" for image in images) else "RGB"
    canvas = Image.new(mode, (size, size * len(images)))
    for i, image in enumerate(images):
        canvas.paste(image.convert(mode).resize((size, size), Image.BILINEAR), (0, i * size))
    return canvas


def stitch_transform(preprocess: dict):
    """The model's preprocessing without resize and centre crop: the stitched image is fed whole,
    at its own size (size x n*size), as the crops in crops mode are."""
    return build_transform({**preprocess, "resize": None, "input_size": None})


@dataclass(frozen=True)
class PredictionTest:
    """The model's verdict on stitched explanation images (the columns of the paper's Table 1)."""

    target: np.ndarray  # (k,)
    target_prob: np.ndarray  # (k,) softmax probability of the target class ("average pred")
    predicted: np.ndarray  # (k,) argmax class
    probs: np.ndarray | None = None  # (k, classes) the whole softmax

    @property
    def predicts_target(self) -> np.ndarray:
        """(k,) whether the target is the majority class ("predicts target class")."""
        return self.predicted == self.target


@torch.no_grad()
def prediction_test(
    model: nn.Module,
    transform,
    images: Image.Image | np.ndarray | Sequence[Image.Image | np.ndarray],
    target: int | Sequence[int],
) -> PredictionTest:
    """Softmax probability of `target` and the argmax class for each stitched image (Sec. 4.3).

    `transform` maps a PIL image to the model's input tensor; use `stitch_transform(preprocess)`
    so that no crop of the stitched image is cut away. Images may differ in size.
    """
    if isinstance(images, (Image.Image, np.ndarray)):
        images = [images]
    images = [_as_image(image) for image in images]
    targets = np.broadcast_to(np.asarray(target, dtype=np.int64), (len(images),)).copy()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    probs, predicted = [], []
    try:
        for image in images:  # one at a time: stitched images of different n differ in size
            # a model with a fixed input size (ViT) gets the stitched image resized to it
            logits = model(fit_input(model, transform(image).unsqueeze(0).to(device)))[0].float()
            probs.append(torch.softmax(logits, dim=0).cpu().numpy())
            predicted.append(int(logits.argmax()))
    finally:
        model.train(was_training)
    target_prob = np.array([p[t] for p, t in zip(probs, targets)], dtype=np.float64)
    return PredictionTest(target=targets, target_prob=target_prob, predicted=np.asarray(predicted, dtype=np.int64), probs=np.stack(probs))
