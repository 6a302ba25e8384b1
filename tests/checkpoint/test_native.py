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


# ---- InternVL3 / InternVL3.5 LLM kinds: Qwen3, Qwen3-MoE, GPT-OSS, InternLM3 ---------------------
_FAMILY_TEXT = {
    "qwen3": dict(model_type="qwen3", head_dim=16),
    "qwen3_moe": dict(model_type="qwen3_moe", head_dim=16, num_experts=4, num_experts_per_tok=2,
                      moe_intermediate_size=32, norm_topk_prob=True),
    # layers alternate 8-token sliding and full attention; prompts are longer than the window
    "gpt_oss": dict(model_type="gpt_oss", head_dim=16, num_local_experts=4, num_experts_per_tok=2,
                    layer_types=["sliding_attention", "full_attention"], sliding_window=8,
                    rope_parameters=dict(rope_type="yarn", rope_theta=150000.0, factor=4.0,
                                         beta_fast=32.0, beta_slow=1.0, truncate=False,
                                         original_max_position_embeddings=64)),
    "internlm3": dict(model_type="internlm3", head_dim=16),
}
FAMILIES = sorted(_FAMILY_TEXT)


def _family_model(family: str) -> InternVLForConditionalGeneration:
    """A tiny random InternVL3/3.5-style transformers model with the given LLM kind."""
    config = InternVLConfig(
        vision_config=dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, image_size=TILE,
                           patch_size=14, layer_scale_init_value=0.1, num_hidden_layers=2),
        text_config=dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=96, vocab_size=128, max_position_embeddings=256,
                         tie_word_embeddings=False, **_FAMILY_TEXT[family]),
        image_token_id=IMAGE_TOKEN, image_seq_length=4, downsample_ratio=0.5, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _tensors(folder) -> dict[str, torch.Tensor]:
    from tilevl.checkpoint.files import iter_tensors, weight_files

    return {key: tensor for key, tensor, _ in iter_tensors(weight_files(folder))}


@pytest.mark.parametrize("family", FAMILIES)
def test_new_family_matches_transformers(tmp_path, family, one_thread):
    """Native checkpoint → tilevl: logits within 1e-4 and the same greedy tokens; exported
    back, transformers reads the same numbers."""
    ref = _family_model(family)
    ref.save_pretrained(tmp_path / "native")
    ours = tilevl.load_model(tmp_path / "native")
    ids, pixels = _inputs()
    with torch.no_grad():
        expected = ref(input_ids=ids, pixel_values=pixels).logits
        torch.testing.assert_close(ours(ids, pixels).logits, expected, atol=1e-4, rtol=1e-4)
    ref_tokens = ref.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=12, do_sample=False)
    our_tokens = ours.generate(ids, pixels, max_new_tokens=12, do_sample=False)
    assert our_tokens.tolist() == ref_tokens[:, ids.shape[1]:].tolist()

    tilevl.save_model(ours, tmp_path / "exported", layout="native")
    back = InternVLForConditionalGeneration.from_pretrained(tmp_path / "exported").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids, pixel_values=pixels).logits, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_new_family_official_native_round_trip_is_exact(tmp_path, family, one_thread):
    """native → official → native gives back every tensor bit for bit; the official layout
    stores Qwen3-MoE experts one key per expert, as InternVL3.5-30B-A3B does."""
    _family_model(family).save_pretrained(tmp_path / "native")
    tilevl.save_model(tilevl.load_model(tmp_path / "native"), tmp_path / "official", layout="official")
    official = _tensors(tmp_path / "official")
    if family == "qwen3_moe":
        assert "language_model.model.layers.1.mlp.experts.3.up_proj.weight" in official
        assert not any(k.endswith("experts.gate_up_proj") for k in official)
    if family == "gpt_oss":  # its checkpoints store the stacked experts, as transformers builds them
        assert "language_model.model.layers.0.mlp.experts.gate_up_proj" in official
        assert "language_model.model.layers.0.self_attn.sinks" in official

    again = tilevl.load_model(tmp_path / "official")
    assert read_config(tmp_path / "official")[1] == "official"
    tilevl.save_model(again, tmp_path / "native2", layout="native")
    first, second = _tensors(tmp_path / "native"), _tensors(tmp_path / "native2")
    assert sorted(first) == sorted(second)
    for key, tensor in first.items():
        assert torch.equal(tensor, second[key]), key
    ids, pixels = _inputs()
    ref = InternVLForConditionalGeneration.from_pretrained(tmp_path / "native").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids, pixels).logits, ref(input_ids=ids, pixel_values=pixels).logits,
                                   atol=1e-4, rtol=1e-4)


def test_stacked_qwen3_moe_experts_load_too(tmp_path):
    """A checkpoint holding transformers' stacked expert tensors (gate_up [E, 2I, H]) loads
    to the same model as the per-expert one."""
    from safetensors.torch import save_file

    _family_model("qwen3_moe").save_pretrained(tmp_path / "native")
    ours = tilevl.load_model(tmp_path / "native")
    stacked = {k: v.contiguous() for k, v in ours.state_dict().items()}
    (tmp_path / "stacked").mkdir()
    tilevl.save_model(ours, tmp_path / "official", layout="official")
    for name in ("config.json", "preprocessor_config.json"):
        (tmp_path / "stacked" / name).write_bytes((tmp_path / "official" / name).read_bytes())
    save_file(stacked, tmp_path / "stacked" / "model.safetensors")
    again = tilevl.load_model(tmp_path / "stacked")
    for key, tensor in ours.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[key]), key


def test_incomplete_experts_are_named(tmp_path):
    from safetensors.torch import save_file

    _family_model("qwen3_moe").save_pretrained(tmp_path / "m")
    tensors = _tensors(tmp_path / "m")
    del tensors["language_model.model.layers.1.mlp.experts.2.gate_proj.weight"]
    save_file(tensors, tmp_path / "m" / "model.safetensors")
    with pytest.raises(tilevl.CheckpointError, match=r"layers\.1\.mlp\.experts.*gate_proj\[2\]"):
        tilevl.load_model(tmp_path / "m")


def test_mxfp4_experts_are_refused_by_name(tmp_path):
    from safetensors.torch import save_file

    _family_model("gpt_oss").save_pretrained(tmp_path / "m")
    tensors = _tensors(tmp_path / "m")
    key = "language_model.model.layers.0.mlp.experts.gate_up_proj"
    tensors[key + "_blocks"] = torch.zeros(4, 8, 2, 16, dtype=torch.uint8)
    del tensors[key]
    save_file(tensors, tmp_path / "m" / "model.safetensors")
    with pytest.raises(tilevl.CheckpointError, match="MXFP4.*gate_up_proj_blocks|gate_up_proj_blocks.*MXFP4"):
        tilevl.load_model(tmp_path / "m")


def test_gpt_oss_runs_eager_attention_when_sdpa_is_asked():
    from tilevl.model.llm import build_llm_config

    text = _family_model("gpt_oss").config.text_config.to_dict()
    assert build_llm_config(text, "sdpa")._attn_implementation == "eager"
    assert build_llm_config({**text, "model_type": "qwen3"}, "sdpa")._attn_implementation == "sdpa"


def test_internlm3_bias_names_map_to_transformers():
    """InternLM3's own `qkv_bias` / `bias` reach transformers (which maps them itself); a
    combination it cannot build is refused naming both."""
    from tilevl.errors import ConfigError
    from tilevl.model.llm import build_llm_config
    from tilevl.presets import get_preset

    llm = get_preset("internvl3-9b")["llm_config"] | dict(num_hidden_layers=1, hidden_size=64,
                                                          num_attention_heads=4, head_dim=16)
    assert build_llm_config(llm).attention_bias is False
    assert build_llm_config(llm | dict(qkv_bias=True, bias=True)).attention_bias is True
    with pytest.raises(ConfigError, match="(?s)internlm3.*qkv_bias.*bias"):
        build_llm_config(llm | dict(qkv_bias=True, bias=False))
