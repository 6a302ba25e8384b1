"""GPU-only paths: bf16 on CUDA, device maps over the visible GPUs, 8-bit loading.

Skipped without CUDA (see conftest); the same loading code is covered on CPU elsewhere.
"""

from __future__ import annotations

import pytest
import torch

import tilevl
from tilevl.checkpoint.placement import split_model_device_map

pytestmark = pytest.mark.gpu


def _prompt(model, tiles=2):
    ids = torch.cat([torch.tensor([[5, 6]]), torch.full((1, model.num_image_token * tiles), model.img_context_token_id)], 1)
    return ids, torch.randn(tiles, 3, model.config.image_size, model.config.image_size)


def test_bf16_on_cuda_matches_cpu(tmp_path, tiny_model):
    tilevl.save_model(tiny_model, tmp_path / "m")
    gpu = tilevl.load_model(tmp_path / "m", dtype=torch.bfloat16, device="cuda")
    assert gpu.device.type == "cuda" and gpu.dtype == torch.bfloat16
    ids, pixels = _prompt(gpu)
    with torch.no_grad():
        a = gpu(ids.cuda(), pixels.cuda()).logits.float().cpu()
        b = tiny_model(ids, pixels).logits
    torch.testing.assert_close(a, b, atol=5e-2, rtol=5e-2)


def test_device_map_dispatch(tmp_path, tiny_model):
    tilevl.save_model(tiny_model, tmp_path / "m")
    device_map = split_model_device_map(tiny_model.config.num_llm_layers, torch.cuda.device_count())
    model = tilevl.load_model(tmp_path / "m", device_map=device_map)
    ids, pixels = _prompt(model)
    with torch.no_grad():
        torch.testing.assert_close(model(ids.cuda(), pixels.cuda()).logits.cpu(), tiny_model(ids, pixels).logits,
                                   atol=1e-4, rtol=1e-4)


def test_eight_bit_loading(tmp_path, tiny_model):
    pytest.importorskip("bitsandbytes")
    tilevl.save_model(tiny_model, tmp_path / "m")
    model = tilevl.load_model(tmp_path / "m", load_in_8bit=True)
    ids, pixels = _prompt(model)
    with torch.no_grad():
        out = model(ids.cuda(), pixels.cuda()).logits
    assert torch.isfinite(out).all()
