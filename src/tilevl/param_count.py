"""The number of parameters of the model an official config.json dict describes, in pure Python.

Used by `tilevl info` and to check each preset against its published size (no torch here).
"""

from __future__ import annotations

from tilevl.errors import ConfigError

def _need(cfg: dict, key: str, where: str):
    try:
        return cfg[key]
    except KeyError:
        raise ConfigError(f"{where} is missing key {key!r}") from None


def count_vision_parameters(vision: dict) -> int:
    """Parameters of an InternVisionModel (embeddings + encoder; it has no final norm)."""
    w = "vision_config"
    h = _need(vision, "hidden_size", w)
    inter = _need(vision, "intermediate_size", w)
    layers = _need(vision, "num_hidden_layers", w)
    patch = _need(vision, "patch_size", w)
    image = _need(vision, "image_size", w)
    channels = vision.get("num_channels", 3)
    norm_type = vision.get("norm_type", "rms_norm")
    if norm_type not in ("layer_norm", "rms_norm"):
        raise ConfigError(f"vision_config.norm_type must be 'layer_norm' or 'rms_norm', got {norm_type!r}")
    norm = 2 * h if norm_type == "layer_norm" else h  # LayerNorm has a bias, RMSNorm not

    grid = image // patch
    embeddings = (
        channels * patch * patch * h + h  # patch conv weight + bias
        + h  # class embedding
        + (grid * grid + 1) * h  # position embedding (patches + CLS)
    )
    per_layer = (
        h * 3 * h + (3 * h if _need(vision, "qkv_bias", w) else 0)  # fused qkv
        + h * h + h  # proj
        + (2 * h if _need(vision, "qk_normalization", w) else 0)  # q_norm, k_norm weights
        + 2 * norm  # norm1, norm2
        + 2 * h  # ls1, ls2
        + h * inter + inter  # fc1
        + inter * h + h  # fc2
    )
    return embeddings + layers * per_layer


def count_projector_parameters(cfg: dict) -> int:
    """Parameters of mlp1: LayerNorm(C) -> Linear(C, D) -> GELU -> Linear(D, D), C = vit*r^-2."""
    vit = _need(_need(cfg, "vision_config", "config"), "hidden_size", "vision_config")
    llm = _need(_need(cfg, "llm_config", "config"), "hidden_size", "llm_config")
    ratio = cfg.get("downsample_ratio", 0.5)
    c = vit * round(1 / ratio) ** 2
    return 2 * c + (c * llm + llm) + (llm * llm + llm)


def count_llm_parameters(llm: dict) -> int:
    """Parameters of the causal LM a transformers-style config describes.

    Llama-family layout (Llama, Qwen2, Phi-3, InternLM2/3) plus Qwen3 (q/k RMSNorm), Qwen3-MoE
    (router + experts in sparse layers) and GPT-OSS (attention sinks, biased router/experts).
    """
    w = "llm_config"
    arch = (llm.get("architectures") or [""])[0]
    model_type = llm.get("model_type", "")
    h = _need(llm, "hidden_size", w)
    inter = _need(llm, "intermediate_size", w)
    layers = _need(llm, "num_hidden_layers", w)
    heads = _need(llm, "num_attention_heads", w)
    kv = llm.get("num_key_value_heads") or heads
    vocab = _need(llm, "vocab_size", w)
    head_dim = llm.get("head_dim") or h // heads
    q_out = heads * head_dim
    kv_out = kv * head_dim
    qk_norm = sinks = 0

    if model_type == "qwen2" or arch == "Qwen2ForCausalLM":
        qkv_bias = True  # Qwen2 puts a bias on q/k/v and none on o
        o_bias = mlp_bias = False
    elif model_type == "internlm2" or arch == "InternLM2ForCausalLM":
        qkv_bias = o_bias = mlp_bias = bool(llm.get("bias", False))
    elif model_type == "internlm3" or arch == "InternLM3ForCausalLM":
        # transformers reads InternLM3's qkv_bias as attention_bias (q/k/v/o), bias as mlp_bias
        qkv_bias = o_bias = bool(llm.get("qkv_bias", llm.get("attention_bias", False)))
        mlp_bias = bool(llm.get("bias", llm.get("mlp_bias", False)))
    elif model_type in ("llama", "phi3") or arch in ("LlamaForCausalLM", "Phi3ForCausalLM"):
        qkv_bias = o_bias = bool(llm.get("attention_bias", False))
        mlp_bias = bool(llm.get("mlp_bias", False))
    elif model_type in ("qwen3", "qwen3_moe") or arch in ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM"):
        qkv_bias = o_bias = bool(llm.get("attention_bias", False))
        mlp_bias = False
        qk_norm = 2 * head_dim  # q_norm, k_norm over each head
    elif model_type == "gpt_oss" or arch == "GptOssForCausalLM":
        qkv_bias = o_bias = bool(llm.get("attention_bias", True))
        mlp_bias = False
        sinks = heads  # one learned sink logit per attention head
    else:
        raise ConfigError(
            f"llm_config: cannot count parameters of architecture {arch!r} / model_type "
            f"{model_type!r}; known: Qwen2ForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM, "
            "GptOssForCausalLM, InternLM2ForCausalLM, InternLM3ForCausalLM, LlamaForCausalLM, "
            "Phi3ForCausalLM")

    attn = h * (q_out + 2 * kv_out) + (q_out + 2 * kv_out if qkv_bias else 0)
    attn += q_out * h + (h if o_bias else 0) + qk_norm + sinks
    # gate + up + down; Phi-3 packs gate/up into one matrix, same count
    dense_mlp = 3 * h * inter + ((2 * inter + h) if mlp_bias else 0)
    total_mlp = sum(_mlp_parameters(llm, i, h, dense_mlp) for i in range(layers))
    embed = vocab * h
    head = 0 if llm.get("tie_word_embeddings", False) else vocab * h
    return embed + layers * (attn + 2 * h) + total_mlp + h + head  # 2 RMSNorms/layer, final norm


def _mlp_parameters(llm: dict, layer: int, h: int, dense: int) -> int:
    """The feed-forward block of decoder layer `layer`: dense, or a router plus experts."""
    w = "llm_config"
    model_type = llm.get("model_type", "")
    if model_type == "gpt_oss":
        experts = _need(llm, "num_local_experts", w)
        inter = _need(llm, "intermediate_size", w)
        router = experts * h + experts
        return router + experts * (h * 2 * inter + 2 * inter + inter * h + h)
    if model_type == "qwen3_moe":
        experts = llm.get("num_experts") or _need(llm, "num_local_experts", w)
        step = llm.get("decoder_sparse_step", 1)
        if layer in (llm.get("mlp_only_layers") or []) or not (experts > 0 and (layer + 1) % step == 0):
            return dense
        moe_inter = _need(llm, "moe_intermediate_size", w)
        return experts * h + experts * 3 * h * moe_inter
    return dense


def count_parameters(cfg: dict) -> int:
    """Total parameter count of the InternVLChatModel a config dict describes (pure Python)."""
    vision = _need(cfg, "vision_config", "config")
    llm = _need(cfg, "llm_config", "config")
    return count_vision_parameters(vision) + count_projector_parameters(cfg) + count_llm_parameters(llm)
