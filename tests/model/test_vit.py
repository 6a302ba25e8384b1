"""InternViT details that parity with transformers does not reach."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tilevl.config import VisionConfig
from tilevl.model.vit import InternVisionModel, RMSNorm


def _vit(**kw) -> InternVisionModel:
    cfg = VisionConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                       intermediate_size=64, image_size=56, patch_size=14, **kw)
    torch.manual_seed(0)
    vit = InternVisionModel(cfg)
    vit.init_weights()
    return vit.eval()


def test_positions_interpolated_like_the_official_code():
    """A 28px tile on a tower trained at 56px: bicubic fp32 resample of the 4×4 grid to 2×2."""
    vit = _vit()
    pos = vit.embeddings.position_embedding
    official = F.interpolate(
        pos[:, 1:].float().reshape(1, 4, 4, -1).permute(0, 3, 1, 2), size=(2, 2), mode="bicubic", align_corners=False
    ).reshape(1, -1, 4).permute(0, 2, 1)
    torch.testing.assert_close(vit.embeddings._patch_positions(2, 2), official)
    assert vit(torch.randn(1, 3, 28, 28)).shape == (1, 1 + 4, 32)
    # At the stored size the positions are used as they are (bicubic at scale 1 is the identity).
    same = F.interpolate(pos[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2), size=(4, 4), mode="bicubic",
                         align_corners=False).reshape(1, -1, 16).permute(0, 2, 1)
    torch.testing.assert_close(vit.embeddings._patch_positions(4, 4), same)


def test_select_layer_equals_hidden_states_of_the_full_run():
    vit = _vit()
    x = torch.randn(2, 3, 56, 56)
    hidden = [vit.embeddings(x)]
    for layer in vit.encoder.layers:
        hidden.append(layer(hidden[-1]))
    for select in (-1, -2, -4):
        torch.testing.assert_close(vit(x, select_layer=select), hidden[select])


def test_qk_norm_is_over_the_whole_hidden_size():
    vit = _vit(qk_normalization=True, norm_type="rms_norm", qkv_bias=False)
    attn = vit.encoder.layers[0].attn
    assert attn.q_norm.weight.shape == (32,) and isinstance(vit.encoder.layers[0].norm1, RMSNorm)
    assert attn.qkv.bias is None


def test_rms_norm_computes_in_fp32():
    norm = RMSNorm(8)
    x = (torch.randn(3, 8) * 300).to(torch.bfloat16)
    ref = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)
    assert torch.equal(norm(x), ref.to(torch.bfloat16) * norm.weight)


def test_drop_path_only_while_training():
    vit = _vit(drop_path_rate=0.5)
    rates = [layer.drop_path1.p for layer in vit.encoder.layers]
    assert rates[0] == 0.0 and abs(rates[-1] - 0.5) < 1e-9  # linspace(0, rate, layers)
    x = torch.randn(4, 3, 56, 56)
    torch.testing.assert_close(vit(x), vit(x))
    vit.train()
    torch.manual_seed(1)
    a = vit(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, vit(x))


def test_gradient_checkpointing_gives_the_same_gradients():
    vit = _vit()
    vit.train()
    x = torch.randn(2, 3, 56, 56, requires_grad=True)
    vit(x).square().sum().backward()
    plain = [p.grad.clone() for p in vit.parameters()]
    vit.zero_grad()
    vit.encoder.gradient_checkpointing = True
    vit(x).square().sum().backward()
    for a, p in zip(plain, vit.parameters()):
        torch.testing.assert_close(p.grad, a)
