"""The building blocks of the presets: the published vision towers and LLM configs as dicts.

Each function returns a fresh dict, so presets never share nested objects (no torch here).
"""

from __future__ import annotations


# The InternVL special tokens appended to every LLM tokenizer (see the Qwen2.5 tokenizer dump
# in the InternVL3-1B notebook: ids 151665..151673 are <img> … </box>).
_INTERNVL_EXTRA_TOKENS = 9


def vit_300m(**overrides) -> dict:
    """InternViT-300M-448px (also -V2_5): 24 layers, width 1024, LayerNorm, qkv bias.

    Verified against the vision_config of OpenGVLab/InternVL2-1B/config.json (copy in
    github.com/tothelast/simlingo_qcar2_integration pretrained/InternVL2-1B/config.json) and
    the InternVL2-8B config.json copy in the valora model_config module.
    """
    cfg = {
        "architectures": ["InternVisionModel"],
        "model_type": "intern_vit_6b",
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "num_channels": 3,
        "image_size": 448,
        "patch_size": 14,
        "qkv_bias": True,
        "qk_normalization": False,
        "norm_type": "layer_norm",
        "layer_norm_eps": 1e-06,
        "hidden_act": "gelu",
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "drop_path_rate": 0.0,
        "use_flash_attn": True,
    }
    cfg.update(overrides)
    return cfg


def vit_6b(**overrides) -> dict:
    """InternViT-6B-448px-V1-2/V1-5/V2_5 as used in the chat models: the 48-layer encoder with
    its last 3 layers dropped (45 layers), width 3200, 25 heads, RMSNorm, qk-norm, no qkv bias.

    Verified against the vision_config of OpenGVLab/InternVL2-26B/config.json (copy in the
    valora model_config module); V1-2/V1-5 use the same shape (InternVL 1.5 report, Table 1).
    """
    cfg = {
        "architectures": ["InternVisionModel"],
        "model_type": "intern_vit_6b",
        "hidden_size": 3200,
        "intermediate_size": 12800,
        "num_hidden_layers": 45,
        "num_attention_heads": 25,
        "num_channels": 3,
        "image_size": 448,
        "patch_size": 14,
        "qkv_bias": False,
        "qk_normalization": True,
        "norm_type": "rms_norm",
        "layer_norm_eps": 1e-06,
        "hidden_act": "gelu",
        "initializer_factor": 0.1,
        "initializer_range": 1e-10,
        "drop_path_rate": 0.0,
        "use_flash_attn": True,
    }
    cfg.update(overrides)
    return cfg


def internlm2(name_or_path: str, *, hidden: int, inter: int, layers: int, heads: int,
              kv_heads: int, rope_factor: float, rope_theta=1000000,
              vocab: int = 92544 + _INTERNVL_EXTRA_TOKENS) -> dict:
    """An InternLM2/2.5 llm_config (InternLM2ForCausalLM, fused wqkv, no bias, untied head)."""
    return {
        "_name_or_path": name_or_path,
        "architectures": ["InternLM2ForCausalLM"],
        "model_type": "internlm2",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-05,
        "rope_theta": rope_theta,
        "rope_scaling": {"factor": rope_factor, "type": "dynamic"},
        "bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
    }


def qwen2(name_or_path: str, *, hidden: int, inter: int, layers: int, heads: int,
          kv_heads: int, vocab: int, rope_scaling=None, max_window_layers: int | None = None,
          eos: int = 151645) -> dict:
    """A Qwen2/Qwen2.5 llm_config (q/k/v carry a bias; InternVL unties the head)."""
    cfg = {
        "_name_or_path": name_or_path,
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "sliding_window": 32768,
        "max_window_layers": layers if max_window_layers is None else max_window_layers,
        "bos_token_id": 151643,
        "eos_token_id": eos,
    }
    if rope_scaling is not None:
        cfg["rope_scaling"] = rope_scaling
    return cfg


def yi34b_hermes(vocab: int = 64000) -> dict:
    """NousResearch/Nous-Hermes-2-Yi-34B llm_config (LlamaForCausalLM, GQA 56/8).

    Verified: hidden 7168, inter 20480, 60 layers, 56/8 heads, rope_theta 5e6, eps 1e-5,
    vocab 64000 from NousResearch/Nous-Hermes-2-Yi-34B/config.json (copies on the HF hub, e.g.
    neuralmagic/Nous-Hermes-2-Yi-34B-pruned50); eos 7 and the LlamaForCausalLM / 4096-position
    fields from the head of OpenGVLab/InternVL-Chat-V1-2/config.json.  Yi's tokenizer already
    holds <|im_start|>/<|im_end|>; whether InternVL grew the embedding for its own tokens could
    not be read (the tail of that file was not reachable), so vocab stays 64000 (±9 rows is
    0.002 % of the count).
    """
    return {
        "_name_or_path": "NousResearch/Nous-Hermes-2-Yi-34B",
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 7168,
        "intermediate_size": 20480,
        "num_hidden_layers": 60,
        "num_attention_heads": 56,
        "num_key_value_heads": 8,
        "vocab_size": vocab,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-05,
        "rope_theta": 5000000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 7,
        "pad_token_id": 0,
    }


# Phi-3-mini-128k-instruct as first released (April 2024), which Mini-InternVL-Chat-4B-V1-5
# (May 2024) and InternVL2-4B (July 2024) were built on: LongRoPE ("su") with 48 long and 48
# short factors (head_dim 96 / 2).  Verified against two independent copies of that file's
# rope_scaling: diffusers tests/pipelines/omnigen (Phi-3-vision-128k transformer_config) and
# mlx-vlm tests (phi3_v).  The June 2024 refresh of Phi-3-mini-128k has different factors
# (long_factor starting 1.07…) and type "longrope"; transformers treats "su" as "longrope".
_PHI3_128K_LONG_FACTOR = [
    1.0299999713897705, 1.0499999523162842, 1.0499999523162842, 1.0799999237060547,
    1.2299998998641968, 1.2299998998641968, 1.2999999523162842, 1.4499999284744263,
    1.5999999046325684, 1.6499998569488525, 1.8999998569488525, 2.859999895095825,
    3.68999981880188, 5.419999599456787, 5.489999771118164, 5.489999771118164,
    9.09000015258789, 11.579999923706055, 15.65999984741211, 15.769999504089355,
    15.789999961853027, 18.360000610351562, 21.989999771118164, 23.079999923706055,
    30.009998321533203, 32.35000228881836, 32.590003967285156, 35.56000518798828,
    39.95000457763672, 53.840003967285156, 56.20000457763672, 57.95000457763672,
    59.29000473022461, 59.77000427246094, 59.920005798339844, 61.190006256103516,
    61.96000671386719, 62.50000762939453, 63.3700065612793, 63.48000717163086,
    63.48000717163086, 63.66000747680664, 63.850006103515625, 64.08000946044922,
    64.760009765625, 64.80001068115234, 64.81001281738281, 64.81001281738281,
]
_PHI3_128K_SHORT_FACTOR = [
    1.05, 1.05, 1.05, 1.1, 1.1, 1.1, 1.2500000000000002, 1.2500000000000002,
    1.4000000000000004, 1.4500000000000004, 1.5500000000000005, 1.8500000000000008,
    1.9000000000000008, 2.000000000000001, 2.000000000000001, 2.000000000000001,
    2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001,
    2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001,
    2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001,
    2.000000000000001, 2.000000000000001, 2.000000000000001, 2.000000000000001,
    2.1000000000000005, 2.1000000000000005, 2.2, 2.3499999999999996,
    2.3499999999999996, 2.3499999999999996, 2.3499999999999996, 2.3999999999999995,
    2.3999999999999995, 2.6499999999999986, 2.6999999999999984, 2.8999999999999977,
    2.9499999999999975, 3.049999999999997, 3.049999999999997, 3.049999999999997,
]


def phi3_mini_128k() -> dict:
    """microsoft/Phi-3-mini-128k-instruct llm_config (Phi3ForCausalLM: fused qkv_proj and
    gate_up_proj, MHA 32/32, no bias).  Shape verified against the HF config.json head
    (hidden 3072, inter 8192, 32 layers, 32/32 heads, 131072 positions, original 4096,
    eps 1e-5).  vocab 32020 = Phi-3's 32011 tokens + InternVL's 9 (Phi-3 pads its own head
    to 32064; InternVL resizes to the tokenizer) — per published base, not read from the
    InternVL file."""
    return {
        "_name_or_path": "microsoft/Phi-3-mini-128k-instruct",
        "architectures": ["Phi3ForCausalLM"],
        "model_type": "phi3",
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32020,
        "hidden_act": "silu",
        "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "rope_scaling": {
            "long_factor": list(_PHI3_128K_LONG_FACTOR),
            "short_factor": list(_PHI3_128K_SHORT_FACTOR),
            "type": "su",
        },
        "sliding_window": 262144,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 32000,
        "pad_token_id": 32000,
    }


def qwen25(name_or_path: str, *, hidden: int, inter: int, layers: int, heads: int,
           kv_heads: int) -> dict:
    """A Qwen2.5 llm_config as InternVL 2.5/3 ship it: vocab 151674 (151665 + InternVL's 9),
    dynamic rope factor 2.0, untied head (see the InternVL3-1B config dump)."""
    return qwen2(name_or_path, hidden=hidden, inter=inter, layers=layers, heads=heads,
                 kv_heads=kv_heads, vocab=151674,
                 rope_scaling={"factor": 2.0, "rope_type": "dynamic", "type": "dynamic"})


def internlm3_8b() -> dict:
    """internlm/internlm3-8b-instruct llm_config (InternLM3ForCausalLM: Llama-style q/k/v/o and
    gate/up/down keys, GQA 32/2, head_dim 128, dynamic rope factor 6.0, no bias).  Shape per
    its published config.json; transformers has InternLM3 natively (models/internlm3)."""
    return {
        "_name_or_path": "internlm/internlm3-8b-instruct",
        "architectures": ["InternLM3ForCausalLM"],
        "model_type": "internlm3",
        "hidden_size": 4096,
        "intermediate_size": 10240,
        "num_hidden_layers": 48,
        "num_attention_heads": 32,
        "num_key_value_heads": 2,
        "head_dim": 128,
        "vocab_size": 128512,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-05,
        "rope_theta": 50000000,
        "rope_scaling": {"factor": 6.0, "rope_type": "dynamic"},
        "qkv_bias": False,
        "bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
    }


def qwen3(name_or_path: str, *, hidden: int, inter: int, layers: int, heads: int,
          kv_heads: int) -> dict:
    """A Qwen3 dense llm_config (Qwen3ForCausalLM: head_dim 128, q/k RMSNorm, no bias, vocab
    151936 — Qwen3's padded vocab already has room for InternVL's 9 tokens).  InternVL3.5
    unties the head even where the base ties it (0.6B/1.7B/4B): the published totals (1.06B,
    2.35B, 4.73B) are only reached with a separate head."""
    return {
        "_name_or_path": name_or_path,
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": 128,
        "vocab_size": 151936,
        "hidden_act": "silu",
        "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000,
        "attention_bias": False,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
    }


def qwen3_moe(name_or_path: str, *, hidden: int, inter: int, moe_inter: int, layers: int,
              heads: int, kv_heads: int, experts: int = 128, top_k: int = 8) -> dict:
    """A Qwen3-MoE llm_config (Qwen3MoeForCausalLM: every layer sparse, 128 experts, top-8,
    normalised top-k weights, head_dim 128, untied head)."""
    return qwen3(name_or_path, hidden=hidden, inter=inter, layers=layers, heads=heads,
                 kv_heads=kv_heads) | {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "moe_intermediate_size": moe_inter,
        "num_experts": experts,
        "num_experts_per_tok": top_k,
        "norm_topk_prob": True,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "router_aux_loss_coef": 0.001,
    }


def gpt_oss_20b() -> dict:
    """openai/gpt-oss-20b llm_config (GptOssForCausalLM: 24 layers alternating 128-token
    sliding and full attention, 64/8 heads of 64, a learned sink logit per head, biases on
    q/k/v/o, 32 experts top-4 with biases, YaRN rope x32 from 4096).  Per its config.json;
    InternVL3.5-GPT-OSS keeps the experts in bf16 (the release's MXFP4 is not used)."""
    return {
        "_name_or_path": "openai/gpt-oss-20b",
        "architectures": ["GptOssForCausalLM"],
        "model_type": "gpt_oss",
        "hidden_size": 2880,
        "intermediate_size": 2880,
        "num_hidden_layers": 24,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "num_local_experts": 32,
        "num_experts_per_tok": 4,
        "vocab_size": 201088,
        "hidden_act": "silu",
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-05,
        "rope_theta": 150000,
        "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                         "truncate": False, "original_max_position_embeddings": 4096},
        "sliding_window": 128,
        "layer_types": ["sliding_attention", "full_attention"] * 12,
        "attention_bias": True,
        "swiglu_limit": 7.0,
        "router_aux_loss_coef": 0.9,
        "tie_word_embeddings": False,
        "eos_token_id": 200002,
        "pad_token_id": 199999,
    }


def chat(vision: dict, llm: dict, *, template: str, ps_version: str = "v2",
         dynamic: bool = True, max_patch: int = 12, thumbnail: bool | None = None,
         force_image_size: int | None = None, downsample_ratio: float = 0.5) -> dict:
    """The InternVLChatConfig top level around a vision and an llm block."""
    return {
        "architectures": ["InternVLChatModel"],
        "model_type": "internvl_chat",
        "template": template,
        "select_layer": -1,
        "force_image_size": vision["image_size"] if force_image_size is None else force_image_size,
        "downsample_ratio": downsample_ratio,
        "ps_version": ps_version,
        "dynamic_image_size": dynamic,
        "use_thumbnail": dynamic if thumbnail is None else thumbnail,
        "min_dynamic_patch": 1,
        "max_dynamic_patch": max_patch,
        "vision_config": vision,
        "llm_config": llm,
    }
