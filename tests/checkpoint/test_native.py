"""Parity with transformers' own InternVL: load its checkpoints, export ours back to it."""

from __future__ import annotations

import pytest
import torch
from transformers import InternVLConfig, InternVLForConditionalGeneration

import tilevl
from tilevl.checkpoint.loader import read_config

IMAGE_TOKEN = 120
TILE = 56  # 4×4 patches of 14 px → 4 visual tokens per tile after pixel shuffle


def _native_model(variant: str) -> InternVLForConditionalGeneration:
    """A tiny random transformers InternVL, perturbed so zero/constant inits are not trivial."""
    if variant == "6b-style":  # RMSNorm + QK-norm + layer scale, no qkv bias, Qwen2 text, tied head
        vision = dict(norm_type="rms_norm", use_qk_norm=True, attention_bias=False, num_hidden_layers=2)
        text = dict(model_type="qwen2", tie_word_embeddings=True)
        top = dict(tie_word_embeddings=True, vision_feature_layer=-1)
    else:  # 300M-style: LayerNorm + qkv bias, Llama text, separate head, an earlier layer
        vision = dict(norm_type="layer_norm", use_qk_norm=False, attention_bias=True, num_hidden_layers=3)
        text = dict(model_type="llama", tie_word_embeddings=False)
        top = dict(tie_word_embeddings=False, vision_feature_layer=-2)
    config = InternVLConfig(
        vision_config=dict(
            hidden_size=32, num_attention_heads=2, intermediate_size=64, image_size=TILE,
            patch_size=14, layer_scale_init_value=0.1, **vision,
        ),
        text_config=dict(
            hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=96, vocab_size=128, max_position_embeddings=256, **text,
        ),
        image_token_id=IMAGE_TOKEN,
        image_seq_length=4,
        downsample_ratio=0.5,
        **top,
    )
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _inputs(tiles: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    text = torch.randint(0, 100, (1, 7), generator=g)
    ids = torch.cat([text[:, :3], torch.full((1, 4 * tiles), IMAGE_TOKEN), text[:, 3:]], dim=1)
    pixels = torch.randn(tiles, 3, TILE, TILE, generator=g)
    return ids, pixels


@pytest.mark.parametrize("variant", ["6b-style", "300m-style"])
def test_native_checkpoint_matches_transformers(tmp_path, variant):
    ref = _native_model(variant)
    ref.save_pretrained(tmp_path / "native")
    ours = tilevl.load_model(tmp_path / "native")
    assert ours.img_context_token_id == IMAGE_TOKEN
    ids, pixels = _inputs()

    with torch.no_grad():
        expected = ref(input_ids=ids, pixel_values=pixels).logits
        got = ours(ids, pixels).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)

    ref_tokens = ref.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=20, do_sample=False)
    our_tokens = ours.generate(ids, pixels, max_new_tokens=20, do_sample=False)
    assert our_tokens.tolist() == ref_tokens[:, ids.shape[1]:].tolist()
    assert our_tokens.shape[1] == 20

    # Export ours to the native layout and let transformers load it: same numbers again.
    tilevl.save_model(ours, tmp_path / "exported", layout="native")
    back = InternVLForConditionalGeneration.from_pretrained(tmp_path / "exported").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids, pixel_values=pixels).logits, expected, atol=1e-4, rtol=1e-4)
    back_tokens = back.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=20, do_sample=False)
    assert back_tokens.tolist() == ref_tokens.tolist()


def test_native_config_reads_select_layer_and_tie(tmp_path):
    _native_model("300m-style").save_pretrained(tmp_path / "m")
    config, layout = read_config(tmp_path / "m")
    assert layout == "native"
    assert config.select_layer == -2
    assert config.vision.qkv_bias and not config.vision.qk_normalization
    assert config.llm["tie_word_embeddings"] is False
    assert config.num_image_token == 4


def test_official_model_saved_natively_loads_in_both(tmp_path, tiny_model):
    """Our model → native → transformers and → tilevl again: logits unchanged."""
    ids = torch.cat([torch.tensor([[5, 6, 7]]), torch.full((1, 8), tiny_model.img_context_token_id)], 1)
    pixels = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        expected = tiny_model(ids, pixels).logits
    tilevl.save_model(tiny_model, tmp_path / "n", layout="native")
    again = tilevl.load_model(tmp_path / "n")
    hf = InternVLForConditionalGeneration.from_pretrained(tmp_path / "n").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids, pixels).logits, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(hf(input_ids=ids, pixel_values=pixels).logits, expected, atol=1e-4, rtol=1e-4)


def test_v1_pixel_shuffle_cannot_be_exported_natively(tmp_path, tiny_model):
    tiny_model.config = tiny_model.config.replace(ps_version="v1")
    with pytest.raises(tilevl.CheckpointError, match="ps_version v1"):
        tilevl.save_model(tiny_model, tmp_path / "n", layout="native")
    assert not (tmp_path / "n").exists()
