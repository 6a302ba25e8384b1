"""The vision-to-language bridge: drop CLS, pixel shuffle, then the MLP `mlp1`.

Pixel shuffle with ratio 0.5 folds each 2×2 block of patch features into one token with 4×
the channels, so a 448² tile gives 256 tokens instead of 1024.
"""

from __future__ import annotations

import torch
from torch import nn


def pixel_shuffle(x: torch.Tensor, ratio: float = 0.5, version: str = "v2") -> torch.Tensor:
    """Fold spatial blocks into channels: [B, W, H, C] → [B, W·r, H·r, C/r²].

    Args:
        x: features on the patch grid.
        ratio: `downsample_ratio` (0.5 → 4× fewer tokens).
        version: "v2" (V1-5 onwards, what transformers implements) or "v1" (V1-2): the same
            channels, with the two spatial axes of the result transposed.
    Returns:
        The shuffled features.
    """
    n, w, h, c = x.shape
    x = x.reshape(n, w, int(h * ratio), int(c / ratio))
    x = x.permute(0, 2, 1, 3).reshape(n, int(h * ratio), int(w * ratio), int(c / (ratio * ratio)))
    if version == "v2":
        x = x.permute(0, 2, 1, 3)
    return x.contiguous()


class Projector(nn.Sequential):
    """LayerNorm → Linear → GELU → Linear; indices 0, 1, 3 are the official `mlp1.*` keys."""

    def __init__(self, vit_hidden: int, llm_hidden: int, downsample_ratio: float = 0.5) -> None:
        in_dim = vit_hidden * int(1 / downsample_ratio) ** 2
        super().__init__(
            nn.LayerNorm(in_dim),
            nn.Linear(in_dim, llm_hidden),
            nn.GELU(),
            nn.Linear(llm_hidden, llm_hidden),
        )


def vit_tokens_to_grid(features: torch.Tensor) -> torch.Tensor:
    """[T, 1 + g², D] tower output → [T, g, g, D] patch grid (the CLS token dropped)."""
    patches = features[:, 1:, :]
    side = int(round(patches.shape[1] ** 0.5))
    if side * side != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} patch tokens do not form a square grid")
    return patches.reshape(patches.shape[0], side, side, -1)
