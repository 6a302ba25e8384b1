"""InternLM2 → Llama conversion against an independent reference of InternLM2's forward.

The reference below follows InternLM2's modeling code (packed `wqkv` split per kv group,
rotate_half rotary with linear / dynamic-NTK scaling, SwiGLU), written from scratch.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tilevl.checkpoint.internlm2 import (
    convert_internlm2_key,
    internlm2_config_to_llama,
    internlm2_keys,
    internlm2_state_dict_to_llama,
    is_internlm2,
    llama_state_dict_to_internlm2,
)
from tilevl.errors import CheckpointError, ConfigError


def tiny_internlm2_config(**overrides) -> dict:
    cfg = {
        "architectures": ["InternLM2ForCausalLM"],
        "model_type": "internlm2",
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "vocab_size": 101,
        "max_position_embeddings": 16,
        "bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
        "hidden_act": "silu",
        "attn_implementation": "eager",
    }
    cfg.update(overrides)
    return cfg


# ---- reference InternLM2 (independent of transformers' Llama) ----------------------------


def _rms_norm(x, weight, eps):
    variance = x.pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps))


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotary_cos_sin(cfg, head_dim, seq_len):
    """cos/sin of shape (seq_len, head_dim), as InternLM2's rotary classes build their cache."""
    base = cfg["rope_theta"]
    positions = torch.arange(seq_len, dtype=torch.float32)
    scaling = cfg.get("rope_scaling")
    max_pos = cfg["max_position_embeddings"]
    if scaling and scaling["type"] == "dynamic" and seq_len > max_pos:
        factor = scaling["factor"]
        base = base * ((factor * seq_len / max_pos) - (factor - 1)) ** (head_dim / (head_dim - 2))
    if scaling and scaling["type"] == "linear":
        positions = positions / scaling["factor"]
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
    freqs = torch.einsum("i,j->ij", positions, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def reference_internlm2_logits(sd: dict, cfg: dict, input_ids: torch.Tensor) -> torch.Tensor:
    """InternLM2ForCausalLM forward (eager attention, no cache) from an InternLM2 state dict."""
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hidden = cfg["hidden_size"]
    head_dim, groups = hidden // heads, heads // kv_heads
    eps = cfg["rms_norm_eps"]
    bsz, seq = input_ids.shape
    x = sd["model.tok_embeddings.weight"][input_ids]  # (b, q, hidden)
    cos, sin = _rotary_cos_sin(cfg, head_dim, seq)  # (q, d)
    causal = torch.full((seq, seq), float("-inf")).triu(1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms_norm(x, sd[p + "attention_norm.weight"], eps)
        qkv = nn.functional.linear(h, sd[p + "attention.wqkv.weight"], sd.get(p + "attention.wqkv.bias"))
        # 'b q (h gs d) -> b q h gs d' with gs = groups + 2: queries, then key, then value
        qkv = qkv.view(bsz, seq, kv_heads, groups + 2, head_dim)
        q = qkv[..., :groups, :].reshape(bsz, seq, heads, head_dim).transpose(1, 2)
        k = qkv[..., -2, :].transpose(1, 2)  # (b, kv_heads, q, d)
        v = qkv[..., -1, :].transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k = k.repeat_interleave(groups, dim=1)  # kv head j serves query heads j*groups ...
        v = v.repeat_interleave(groups, dim=1)
        scores = q @ k.transpose(2, 3) / math.sqrt(head_dim) + causal
        attn = torch.softmax(scores, dim=-1) @ v  # (b, heads, q, d)
        attn = attn.transpose(1, 2).reshape(bsz, seq, hidden)
        x = x + nn.functional.linear(attn, sd[p + "attention.wo.weight"], sd.get(p + "attention.wo.bias"))
        h = _rms_norm(x, sd[p + "ffn_norm.weight"], eps)
        gate = nn.functional.silu(h @ sd[p + "feed_forward.w1.weight"].T)
        x = x + (gate * (h @ sd[p + "feed_forward.w3.weight"].T)) @ sd[p + "feed_forward.w2.weight"].T
    x = _rms_norm(x, sd["model.norm.weight"], eps)
    return x @ sd["output.weight"].T


def random_internlm2_state_dict(cfg: dict, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hidden, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    head_dim = hidden // heads
    shapes = {
        "model.tok_embeddings.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
        "output.weight": (vocab, hidden),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes[p + "attention.wqkv.weight"] = ((heads + 2 * kv_heads) * head_dim, hidden)
        shapes[p + "attention.wo.weight"] = (hidden, hidden)
        if cfg["bias"]:
            shapes[p + "attention.wqkv.bias"] = ((heads + 2 * kv_heads) * head_dim,)
            shapes[p + "attention.wo.bias"] = (hidden,)
        shapes[p + "feed_forward.w1.weight"] = (inter, hidden)
        shapes[p + "feed_forward.w3.weight"] = (inter, hidden)
        shapes[p + "feed_forward.w2.weight"] = (hidden, inter)
        shapes[p + "attention_norm.weight"] = (hidden,)
        shapes[p + "ffn_norm.weight"] = (hidden,)
    sd = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            sd[name] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        else:
            sd[name] = torch.randn(shape, generator=gen) / math.sqrt(shape[-1])
    return sd


def llama_from_internlm2(sd: dict, cfg: dict):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**internlm2_config_to_llama(cfg))
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config).eval()
    missing, unexpected = model.load_state_dict(internlm2_state_dict_to_llama(sd, cfg), strict=False)
    assert not unexpected and not missing
    return model


# ---- tests -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, seq_len",
    [
        ({}, 9),
        ({"bias": True}, 9),
        ({"num_key_value_heads": 4}, 7),  # plain multi-head attention
        ({"num_key_value_heads": 1}, 7),  # multi-query attention
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, 12),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, 12),  # within max_position_embeddings
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, 27),  # beyond: NTK base grows
    ],
)
def test_converted_llama_matches_reference_internlm2(overrides, seq_len):
    cfg = tiny_internlm2_config(**overrides)
    sd = random_internlm2_state_dict(cfg)
    ids = torch.randint(0, cfg["vocab_size"], (2, seq_len), generator=torch.Generator().manual_seed(1))
    expected = reference_internlm2_logits(sd, cfg, ids)
    with torch.no_grad():
        got = llama_from_internlm2(sd, cfg)(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_dynamic_scaling_is_honoured_past_max_position_embeddings():
    # Guards against rope_parameters being dropped: a long input must differ from unscaled rope.
    cfg = tiny_internlm2_config(rope_scaling={"type": "dynamic", "factor": 4.0})
    sd = random_internlm2_state_dict(cfg)
    ids = torch.randint(0, cfg["vocab_size"], (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        scaled = llama_from_internlm2(sd, cfg)(input_ids=ids).logits
        plain = llama_from_internlm2(sd, {**cfg, "rope_scaling": None})(input_ids=ids).logits
    assert not torch.allclose(scaled, plain, atol=1e-4)
    torch.testing.assert_close(scaled, reference_internlm2_logits(sd, cfg, ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
def test_round_trip_is_bit_identical(bias):
    cfg = tiny_internlm2_config(bias=bias)
    sd = random_internlm2_state_dict(cfg)
    back = llama_state_dict_to_internlm2(internlm2_state_dict_to_llama(sd, cfg), cfg)
    assert set(back) == set(sd) == set(internlm2_keys(cfg["num_hidden_layers"], bias=bias))
    for name, tensor in sd.items():
        assert torch.equal(back[name], tensor), name
    llama = internlm2_state_dict_to_llama(sd, cfg)
    again = internlm2_state_dict_to_llama(back, cfg)
    assert set(again) == set(llama) and all(torch.equal(again[k], llama[k]) for k in llama)


def test_prefix_and_streaming_form():
    cfg = tiny_internlm2_config()
    sd = {f"language_model.{k}": v for k, v in random_internlm2_state_dict(cfg).items()}
    whole = internlm2_state_dict_to_llama(sd, cfg, prefix="language_model.")
    streamed = {}
    for name, tensor in sd.items():
        streamed.update(convert_internlm2_key(name, tensor, cfg, prefix="language_model."))
    assert set(whole) == set(streamed)
    assert "language_model.model.layers.1.self_attn.k_proj.weight" in whole
    assert whole["language_model.lm_head.weight"] is sd["language_model.output.weight"]
    q = whole["language_model.model.layers.0.self_attn.q_proj.weight"]
    assert q.shape == (64, 64) and q.is_contiguous()
    assert convert_internlm2_key("model.layers.0.attention.rotary_emb.inv_freq", torch.ones(8), cfg) == []
    back = llama_state_dict_to_internlm2(whole, cfg, prefix="language_model.")
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_unknown_or_malformed_keys_raise():
    cfg = tiny_internlm2_config()
    with pytest.raises(CheckpointError, match="model.layers.0.attention.wk.weight"):
        convert_internlm2_key("model.layers.0.attention.wk.weight", torch.ones(2), cfg)
    with pytest.raises(CheckpointError, match="vision_model.embeddings"):
        internlm2_state_dict_to_llama({"vision_model.embeddings": torch.ones(1)}, cfg, prefix="language_model.")
    with pytest.raises(CheckpointError, match="rows"):
        convert_internlm2_key("model.layers.0.attention.wqkv.weight", torch.ones(10, 64), cfg)
    with pytest.raises(CheckpointError, match="model.layers.0.self_attn.rotary"):
        llama_state_dict_to_internlm2({"model.layers.0.self_attn.rotary.weight": torch.ones(1)}, cfg)
    with pytest.raises(CheckpointError, match="v_proj"):
        llama_state_dict_to_internlm2(
            {"model.layers.0.self_attn.q_proj.weight": torch.ones(64, 64),
             "model.layers.0.self_attn.k_proj.weight": torch.ones(32, 64)},
            cfg,
        )


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"rope_scaling": {"type": "yarn", "factor": 2.0}}, "rope_scaling.type"),
        ({"rope_scaling": {"type": "dynamic", "factor": 0.5}}, "rope_scaling.factor"),
        ({"rope_pos_id_version": "v2pe"}, "rope_pos_id_version"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"hidden_act": "no_such_act"}, "hidden_act"),
        ({"hidden_size": None}, "hidden_size"),
    ],
)
def test_unsupported_config_raises_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        internlm2_config_to_llama(tiny_internlm2_config(**overrides))


def test_config_conversion_values():
    from transformers import AutoConfig

    cfg = tiny_internlm2_config(bias=True, rope_theta=1e6, rope_scaling={"type": "dynamic", "factor": 2.0})
    d = internlm2_config_to_llama(cfg)
    assert d["attention_bias"] is True and d["mlp_bias"] is False
    assert d["head_dim"] == 16 and d["num_key_value_heads"] == 2
    config = AutoConfig.for_model("llama", **d)
    assert config.rope_parameters == {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6}
    # keys a config leaves out take InternLM2Config's defaults (bias=True, rope_theta=1e4)
    sparse = {k: cfg[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")}
    d = internlm2_config_to_llama(sparse)
    assert d["attention_bias"] is True and d["rope_parameters"]["rope_theta"] == 10000.0
    assert d["num_key_value_heads"] == 4 and d["vocab_size"] == 103168


def test_is_internlm2_reads_architecture_not_names():
    assert is_internlm2({"architectures": ["InternLM2ForCausalLM"]})
    assert is_internlm2({"model_type": "internlm2"})
    assert not is_internlm2({"architectures": ["Qwen2ForCausalLM"], "_name_or_path": "internlm2-chat-1_8b"})
    assert not is_internlm2({})
