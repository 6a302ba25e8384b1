"""Pixel shuffle orderings and the projector's official layout."""

from __future__ import annotations

import torch

from tilevl.model.projector import Projector, pixel_shuffle


def _reference_v2(x, r):
    """Upstream's pixel_shuffle, written out step by step."""
    n, w, h, c = x.size()
    x = x.view(n, w, int(h * r), int(c / r)).permute(0, 2, 1, 3).contiguous()
    x = x.view(n, int(h * r), int(w * r), int(c / (r * r)))
    return x.permute(0, 2, 1, 3).contiguous()


def test_v2_matches_upstream_and_gives_4x_fewer_tokens():
    x = torch.randn(2, 32, 32, 8)  # a 448px tile: 32×32 patches
    out = pixel_shuffle(x, 0.5, "v2")
    assert out.shape == (2, 16, 16, 32)  # 256 tokens per tile
    assert torch.equal(out, _reference_v2(x, 0.5))


def test_v1_is_v2_with_spatial_axes_transposed():
    x = torch.randn(1, 8, 8, 4)
    assert torch.equal(pixel_shuffle(x, 0.5, "v1"), pixel_shuffle(x, 0.5, "v2").transpose(1, 2))


def test_each_token_holds_one_2x2_block():
    # Channel = (row, col) index of the patch: each output token must gather a 2×2 block.
    g = 4
    x = torch.stack(torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij"), -1).float()[None]
    out = pixel_shuffle(x, 0.5, "v2")  # [1, 2, 2, 8]
    coords = out[0, 1, 0].view(4, 2).tolist()
    assert sorted(map(tuple, coords)) == [(0.0, 2.0), (0.0, 3.0), (1.0, 2.0), (1.0, 3.0)] or \
        sorted(map(tuple, coords)) == [(2.0, 0.0), (2.0, 1.0), (3.0, 0.0), (3.0, 1.0)]


def test_projector_has_the_official_mlp1_keys():
    keys = set(Projector(32, 48).state_dict())
    assert keys == {"0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"}
    assert Projector(32, 48)[1].in_features == 128
