"""Transformer layers as spatial maps: one adapter every method shares.

A transformer layer outputs tokens (N, T, D): a class token, optional register tokens ("Vision
Transformers Need Registers", Darcet et al. 2024) and the h x w patch tokens in row-major order. The
methods read (N, C, h, w) maps, so a token layer is viewed through three identity modules attached to
it: `grid` sees the patch tokens as a map (N, D, h, w), `cls` the class token (N, D) and `registers`
the register tokens as a 1 x R map (N, D, 1, R). Whatever a hook on a view returns goes back into the
token sequence, so reading, replacing (the shifting test) and differentiating (Grad-CAM, attributions)
a token layer work as for a conv layer:

    layout = TokenLayout(cls=1, registers=0, grid=(14, 14))
    set_token_layout(model, layout)
    get_layer(model, "encoder.layers.encoder_layer_11")       # its `grid` view: (N, 768, 14, 14)
    get_layer(model, "encoder.layers.encoder_layer_11.cls")   # the class token: (N, 768)

A module whose output is not a token sequence of the layout (a conv stem, the class head) passes
through its `grid` view unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx
from torch import nn

VIEWS = ("grid", "cls", "registers")
_ATTR = "token_layout"


@dataclass(frozen=True)
class TokenLayout:
    """Token order of a transformer layer: `cls` class tokens, then `registers`, then the patch grid
    (h, w) in row-major order (torchvision's ViT: cls 1, registers 0, grid image_size / patch_size)."""

    cls: int
    registers: int
    grid: tuple[int, int]

    def __post_init__(self):
        if self.cls not in (0, 1):
            raise ValueError(f"token layout: cls must be 0 or 1, got {self.cls}")
        if self.registers < 0:
            raise ValueError(f"token layout: registers must be >= 0, got {self.registers}")
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise ValueError(f"token layout: grid must be (h, w) with h, w >= 1, got {self.grid}")
        object.__setattr__(self, "grid", (int(self.grid[0]), int(self.grid[1])))

    @classmethod
    def from_config(cls, spec: dict) -> "TokenLayout":
        return cls(cls=int(spec.get("cls", 1)), registers=int(spec.get("registers", 0)), grid=tuple(spec["grid"]))

    def to_dict(self) -> dict:
        return {"cls": self.cls, "registers": self.registers, "grid": list(self.grid)}

    @property
    def n_prefix(self) -> int:
        """Tokens before the patch grid."""
        return self.cls + self.registers

    @property
    def n_tokens(self) -> int:
        return self.n_prefix + self.grid[0] * self.grid[1]

    def describe(self) -> str:
        return f"{self.cls} class + {self.registers} register + {self.grid[0]}x{self.grid[1]} patch tokens = {self.n_tokens}"

    def is_tokens(self, output) -> bool:
        """Whether `output` is a token sequence (N, T, D) of this layout."""
        return _is_tokens(output, self.n_tokens)

    def to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens (N, T, D) -> map (N, D, h, w); patch t = y * w + x goes to position (y, x)."""
        return _patch_map(tokens, self.n_prefix, *self.grid)

    def to_tokens(self, grid_map: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """Map (N, D, h, w) and prefix tokens (N, n_prefix, D) -> tokens (N, T, D); inverse of to_map."""
        return unview(grid_map, prefix)

    def split(self, tokens: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """(class token (N, D) or None, registers (N, D, 1, R) or None, patch map (N, D, h, w))."""
        cls_token = tokens[:, 0] if self.cls else None
        registers = tokens[:, self.cls:self.n_prefix].transpose(1, 2).unsqueeze(2) if self.registers else None
        return cls_token, registers, self.to_map(tokens)

    def join(self, cls_token, registers, grid_map: torch.Tensor) -> torch.Tensor:
        """Inverse of split. Parts with one image are repeated to the batch of the others: a hook on
        one view may return a batch of copies of a one-image batch (Ablation-CAM's ablated maps)."""
        parts = []
        if cls_token is not None:
            parts.append(cls_token.unsqueeze(1))
        if registers is not None:
            parts.append(registers.squeeze(2).transpose(1, 2))
        parts.append(grid_map.flatten(2).transpose(1, 2))
        n = max(len(part) for part in parts)
        return torch.cat([part.expand(n, -1, -1) if len(part) == 1 else part for part in parts], dim=1)


class TokenView(nn.Module):
    """Identity: the point where hooks see (and may replace) one view of a token layer."""

    def __init__(self, view: str):
        super().__init__()
        self.view = view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return self.view


def _token_hook(module: nn.Module, inputs, output):
    """Forward hook of a viewed layer: its output, rebuilt from what its views return."""
    if isinstance(output, torch.fx.Proxy) or isinstance(output, tuple) and isinstance(output[0], torch.fx.Proxy):
        return None  # torch.fx tracing runs hooks on proxies: trace the layer's own computation only
    layout: TokenLayout = module.token_views.layout
    views = module.token_views
    rest = ()
    if isinstance(output, tuple):  # e.g. nn.MultiheadAttention: (tokens, attention weights)
        output, rest = output[0], tuple(output[1:])
    if layout.is_tokens(output):
        cls_token, registers, grid_map = layout.split(output)
        cls_token = views.cls(cls_token) if cls_token is not None else None
        registers = views.registers(registers) if registers is not None else None
        new = layout.join(cls_token, registers, views.grid(grid_map))
    else:
        new = views.grid(output)
    return (new, *rest) if rest else new


class _Views(nn.Module):
    def __init__(self, layout: TokenLayout):
        super().__init__()
        self.layout = layout
        self.grid, self.cls, self.registers = (TokenView(v) for v in VIEWS)


def set_token_layout(model: nn.Module, layout: TokenLayout | None) -> nn.Module:
    """Declare `model`'s token layout (None: not a transformer); views are attached by get_layer."""
    setattr(model, _ATTR, layout)
    return model


def token_layout(model: nn.Module) -> TokenLayout | None:
    return getattr(model, _ATTR, None)


def viewed_layer(model: nn.Module, module: nn.Module, view: str = "grid") -> nn.Module:
    """The `view` module of `module` (a submodule of `model`), attached on first use."""
    layout = token_layout(model)
    if layout is None:
        raise ValueError("the model has no token layout")
    if view not in VIEWS:
        raise ValueError(f"unknown token view {view!r}; expected one of {VIEWS}")
    views = getattr(module, "token_views", None)
    if views is None:
        module.register_forward_hook(_token_hook)
    if views is None or views.layout != layout:
        # a plain attribute keeps the views out of named_modules and state_dict
        object.__setattr__(module, "token_views", _Views(layout))
    return getattr(module.token_views, view)


# plain functions of plain arguments: TokenLayout's methods, and torch.fx graphs (split_at_layer)


def _is_tokens(output, n_tokens: int) -> bool:
    return isinstance(output, torch.Tensor) and output.ndim == 3 and output.shape[1] == n_tokens


def _patch_map(tokens: torch.Tensor, n_prefix: int, height: int, width: int) -> torch.Tensor:
    n, _, d = tokens.shape
    return tokens[:, n_prefix:].transpose(1, 2).reshape(n, d, height, width)


def view_map(output, n_prefix: int, n_tokens: int, height: int, width: int):
    """A layer's output as its `grid` view sees it: the patch map of a token sequence, else unchanged."""
    output = output[0] if isinstance(output, tuple) else output
    return _patch_map(output, n_prefix, height, width) if _is_tokens(output, n_tokens) else output


def view_prefix(output, n_prefix: int, n_tokens: int):
    """The tokens before the patch grid (N, n_prefix, D), or None when `output` is not a token sequence."""
    output = output[0] if isinstance(output, tuple) else output
    return output[:, :n_prefix] if _is_tokens(output, n_tokens) else None


def unview(grid_map: torch.Tensor, prefix):
    """Inverse of (view_map, view_prefix): the token sequence, or the map itself without a prefix."""
    if prefix is None:
        return grid_map
    return torch.cat([prefix, grid_map.flatten(2).transpose(1, 2)], dim=1)
