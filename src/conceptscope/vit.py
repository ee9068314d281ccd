"""A small vision transformer for the 28 px digits, with optional register tokens.

    model = ViTSmall(num_classes=10, in_channels=1, patch_size=4, depth=4, registers=4)

The ViT of Dosovitskiy et al. (2021) at digit scale: a patch embedding (a conv with stride = patch
size), a class token, learned position embeddings of the class and patch tokens, `depth` pre-norm
encoder blocks (multi-head self-attention, then an MLP) and a final LayerNorm; the head reads the
class token. `registers` > 0 adds that many learned register tokens after the class token, without
position embeddings, dropped at the output (Darcet et al., "Vision Transformers Need Registers",
2024). Token order: class, registers, patches in row-major order (the model's TokenLayout).

The MLP uses ReLU (the ViT paper: GELU) so that `blocks.K.mlp.act` (N, T, mlp_ratio x dim) is
non-negative and its patch map qualifies for the concept methods' NMF without a shift.

Layers: `patch_embed` (conv map), `blocks.K` (tokens), inside each block `norm1`, `attn`, `norm2`,
`mlp.fc1`, `mlp.act`, `mlp.fc2`; `norm` (tokens), `head`.
"""

from __future__ import annotations

import torch
from torch import nn

from .tokens import TokenLayout, set_token_layout


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU(inplace=False)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm encoder block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViTSmall(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, *, image_size: int = 28, patch_size: int = 4, dim: int = 64,
                 depth: int = 4, heads: int = 4, mlp_ratio: int = 2, registers: int = 0):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"arch_options.patch_size {patch_size} does not divide image_size {image_size}")
        if dim % heads:
            raise ValueError(f"arch_options.heads {heads} does not divide dim {dim}")
        if min(patch_size, dim, depth, heads, mlp_ratio) < 1 or registers < 0:
            raise ValueError("arch_options: patch_size, dim, depth, heads and mlp_ratio must be >= 1, registers >= 0")
        self.image_size, self.patch_size, self.n_registers = image_size, patch_size, registers
        side = image_size // patch_size
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + side * side, dim) * 0.02)
        self.register_tokens = nn.Parameter(torch.randn(1, registers, dim) * 0.02) if registers else None
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        set_token_layout(self, TokenLayout(cls=1, registers=registers, grid=(side, side)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        torch._assert(images.shape[-1] == self.image_size, "vit_small: input width differs from arch_options.image_size")
        torch._assert(images.shape[-2] == self.image_size, "vit_small: input height differs from arch_options.image_size")
        patches = self.patch_embed(images).flatten(2).transpose(1, 2)  # (N, h*w, dim), row-major
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        x = torch.cat([cls, patches], dim=1) + self.pos_embed
        if self.register_tokens is not None:
            registers = self.register_tokens.expand(patches.shape[0], -1, -1)
            x = torch.cat([x[:, :1], registers, x[:, 1:]], dim=1)
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])
