"""Preprocessing: a PIL image -> the frame a model sees (colour mode, resize, centre crop) -> a normalised
tensor, and boxes in original pixels mapped into that frame. Plain PIL + torch, equal to torchvision's
Resize / CenterCrop / ToTensor / Normalize pixel for pixel (tests/test_models.py), without importing
torchvision in jobs that do not need it.

    transform = build_transform(resolve_preprocess("mobilenet_v2", {}))   # models.resolve_preprocess
    tensor = transform(Image.open(path))                                    # (3, 224, 224)
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


class FrameTransform:
    """PIL image -> PIL image as the model sees it: colour mode, resize, centre crop (before normalising).

    The same pixels as torchvision's `Grayscale(1)` or RGB conversion, `Resize(resize, BILINEAR,
    antialias=True)` (shorter side to `resize`, the longer one truncated) and `CenterCrop(input_size)`
    (offset round((size - crop) / 2), zero padding when the crop is larger), without importing
    torchvision, which costs every job about 1.7 s; a test checks the equality on real photos.
    """

    def __init__(self, preprocess: dict):
        self.mode = "L" if preprocess["channels"] == 1 else "RGB"
        self.resize, self.crop = preprocess.get("resize"), preprocess.get("input_size")

    def __call__(self, image: Image.Image) -> Image.Image:
        image = image.convert(self.mode)
        if self.resize:
            height, width = frame_size(image.width, image.height, {"resize": self.resize})
            if (height, width) != (image.height, image.width):
                image = image.resize((width, height), Image.BILINEAR)
        if self.crop:
            image = _center_crop(image, self.crop)
        return image


def crop_offset(size: int, crop: int) -> int:
    """Where torchvision's CenterCrop(crop) starts along a side of `size` pixels: round((size - crop) / 2),
    or, when the crop is larger, minus the zero padding it adds before that side ((crop - size) // 2)."""
    return int(round((size - crop) / 2.0)) if size >= crop else -((crop - size) // 2)


def _center_crop(image: Image.Image, crop: int) -> Image.Image:
    left, top = crop_offset(image.width, crop), crop_offset(image.height, crop)
    return image.crop((left, top, left + crop, top + crop))  # PIL fills what lies outside the image with zeros


class Transform:
    """PIL image -> normalised float tensor (C, H, W): the frame transform, scaling to [0, 1]
    (torchvision's ToTensor) and (x - mean) / std per channel (Normalize)."""

    def __init__(self, preprocess: dict):
        self.frame = FrameTransform(preprocess)
        self.mean = torch.as_tensor(preprocess["mean"], dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.as_tensor(preprocess["std"], dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        pixels = np.array(self.frame(image), dtype=np.uint8, copy=True)
        tensor = torch.from_numpy(pixels.reshape(pixels.shape[0], pixels.shape[1], -1)).permute(2, 0, 1).contiguous()
        return tensor.to(torch.float32).div(255).sub_(self.mean).div_(self.std)


def build_frame_transform(preprocess: dict) -> FrameTransform:
    """PIL image -> PIL image as the model sees it (colour mode, resize, centre crop), before normalising."""
    return FrameTransform(preprocess)


def build_transform(preprocess: dict) -> Transform:
    """PIL image -> normalised float tensor (C, input_size, input_size)."""
    return Transform(preprocess)


def frame_size(width: int, height: int, preprocess: dict) -> tuple[int, int]:
    """(H, W) of an image of `width` x `height` pixels after the preprocessing's resize and crop."""
    if preprocess.get("input_size"):
        return preprocess["input_size"], preprocess["input_size"]
    if preprocess.get("resize"):
        short, long = sorted((width, height))
        side = (preprocess["resize"], int(preprocess["resize"] * long / short))
        return (side[0], side[1]) if height <= width else (side[1], side[0])
    return height, width


def frame_boxes(boxes: np.ndarray, width: int, height: int, preprocess: dict) -> np.ndarray:
    """Boxes (M, 4) as (x0, y0, x1, y1) in original pixels -> the same boxes in the model's input frame.

    Follows torchvision's Resize (shorter side to `resize`, the longer one truncated) and CenterCrop
    (offset round((size - crop) / 2), or centred padding when the crop is larger); clipped to the frame.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    new_w, new_h = width, height
    if preprocess.get("resize"):
        new_h, new_w = frame_size(width, height, {"resize": preprocess["resize"]})
        boxes[:, [0, 2]] *= new_w / width
        boxes[:, [1, 3]] *= new_h / height
    if preprocess.get("input_size"):
        crop = preprocess["input_size"]
        for axis, size in ((0, new_w), (1, new_h)):
            boxes[:, [axis, axis + 2]] -= crop_offset(size, crop)
        new_w = new_h = crop
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, new_w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, new_h)
    return boxes
