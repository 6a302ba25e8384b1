"""InternViT, the vision encoder of InternVL (300M with LayerNorm; 6B with RMSNorm + QK-norm).

Parameter names equal the official checkpoint's `vision_model.*` keys, so loading the
official layout is a plain `load_state_dict`. Reads top to bottom: embeddings, block, tower.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tilevl.config import VisionConfig


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 (as InternViT-6B does), scaled in the input dtype."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def make_norm(norm_type: str, hidden_size: int, eps: float) -> nn.Module:
    if norm_type == "rms_norm":
        return RMSNorm(hidden_size, eps=eps)
    return nn.LayerNorm(hidden_size, eps=eps)


class DropPath(nn.Module):
    """Stochastic depth: drops a whole residual branch per sample while training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class VisionEmbeddings(nn.Module):
    """Patch conv + class token + absolute positions re-interpolated to the patch grid."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.embed_dim = cfg.hidden_size
        self.grid = cfg.image_size // cfg.patch_size  # side of the stored position grid
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, cfg.hidden_size))
        self.patch_embedding = nn.Conv2d(
            cfg.num_channels, cfg.hidden_size, kernel_size=cfg.patch_size, stride=cfg.patch_size
        )
        self.position_embedding = nn.Parameter(torch.zeros(1, self.grid * self.grid + 1, cfg.hidden_size))

    def _patch_positions(self, height: int, width: int) -> torch.Tensor:
        """Positions of the patches for a `height`×`width` grid: [1, H*W, D]."""
        pos = self.position_embedding[:, 1:, :]
        if (height, width) == (self.grid, self.grid):
            return pos  # bicubic at scale 1 is the identity: skip the work
        dtype = pos.dtype
        # Interpolate in fp32 with align_corners=False, as the official code does.
        pos = pos.float().reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=(height, width), mode="bicubic", align_corners=False)
        return pos.reshape(1, -1, height * width).permute(0, 2, 1).to(dtype)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] pixels → [B, 1 + (H/p)(W/p), D] tokens (CLS first)."""
        dtype = self.patch_embedding.weight.dtype
        patches = self.patch_embedding(pixel_values.to(dtype))  # [B, D, h, w]
        batch, _, h, w = patches.shape
        patches = patches.flatten(2).transpose(1, 2)  # [B, h*w, D]
        cls = self.class_embedding.expand(batch, 1, -1).to(dtype)
        pos = torch.cat([self.position_embedding[:, :1, :], self._patch_positions(h, w)], dim=1)
        return torch.cat([cls, patches], dim=1) + pos.to(dtype)


class VisionAttention(nn.Module):
    """Multi-head self-attention with a fused qkv and optional QK-norm.

    QK-norm is an RMSNorm over the whole hidden size before the head split, whatever the
    tower's `norm_type` (the 6B tower's choice, kept by transformers too).
    """

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.dropout = cfg.attention_dropout
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.qk_normalization = cfg.qk_normalization
        if cfg.qk_normalization:
            self.q_norm = RMSNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
            self.k_norm = RMSNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # each [B, N, C]
        if self.qk_normalization:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0
        )  # [B, heads, N, head_dim]
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class VisionMLP(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisionLayer(nn.Module):
    """Pre-norm block: h + ls1·attn(norm1(h)), then h + ls2·mlp(norm2(h))."""

    def __init__(self, cfg: VisionConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        self.attn = VisionAttention(cfg)
        self.mlp = VisionMLP(cfg)
        self.norm1 = make_norm(cfg.norm_type, cfg.hidden_size, cfg.layer_norm_eps)
        self.norm2 = make_norm(cfg.norm_type, cfg.hidden_size, cfg.layer_norm_eps)
        self.ls1 = nn.Parameter(cfg.initializer_factor * torch.ones(cfg.hidden_size))
        self.ls2 = nn.Parameter(cfg.initializer_factor * torch.ones(cfg.hidden_size))
        self.drop_path1 = DropPath(drop_path)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.drop_path1(self.attn(self.norm1(h).to(h.dtype)) * self.ls1)
        return h + self.drop_path2(self.mlp(self.norm2(h).to(h.dtype)) * self.ls2)


class VisionEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        n = cfg.num_hidden_layers
        rates = [cfg.drop_path_rate * i / max(n - 1, 1) for i in range(n)]  # linspace(0, rate, n)
        self.layers = nn.ModuleList([VisionLayer(cfg, rates[i]) for i in range(n)])
        self.gradient_checkpointing = False


class InternVisionModel(nn.Module):
    """InternViT: pixels [B, 3, S, S] → token features [B, 1 + (S/p)², D]. No final norm."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = VisionEmbeddings(cfg)
        self.encoder = VisionEncoder(cfg)

    def forward(self, pixel_values: torch.Tensor, select_layer: int = -1) -> torch.Tensor:
        """Run the tower up to `select_layer` and return that layer's output.

        Args:
            pixel_values: [B, 3, H, W] normalised tiles.
            select_layer: which hidden state to return, counted from the end as upstream's
                `hidden_states[select_layer]` (−1 = the last layer). Later layers are skipped
                rather than computed and thrown away.
        Returns:
            [B, 1 + (H/p)(W/p), D], the CLS token first.
        """
        layers = self.encoder.layers
        stop = len(layers) + 1 + select_layer  # hidden_states has len(layers)+1 entries
        h = self.embeddings(pixel_values)
        for layer in layers[:stop]:
            if self.encoder.gradient_checkpointing and self.training and h.requires_grad:
                h = checkpoint(layer, h, use_reentrant=False)
            else:
                h = layer(h)
        return h

    def init_weights(self, std: float = 0.02) -> None:
        """Random initialisation (truncated normal weights, zero biases, unit norms)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.embeddings.class_embedding, std=std)
        nn.init.trunc_normal_(self.embeddings.position_embedding, std=std)
        for layer in self.encoder.layers:
            nn.init.constant_(layer.ls1, self.config.initializer_factor)
            nn.init.constant_(layer.ls2, self.config.initializer_factor)
