"""InternLM2 ↔ Llama: convert the config and the weights so transformers' Llama runs InternLM2.

InternLM2 is a Llama with renamed modules and a packed, grouped `wqkv`; converting at load
time lets us run it as `LlamaForCausalLM` without the checkpoint's remote code.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from tilevl.errors import CheckpointError, ConfigError

# InternLM2Config's own defaults (configuration_internlm2.py), used for keys a config omits.
_INTERNLM2_DEFAULTS: dict[str, Any] = {
    "vocab_size": 103168,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "use_cache": True,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
    "bias": True,
    "rope_theta": 10000.0,
}
_REQUIRED_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")

# Names below `model.layers.<i>.` that are a plain rename (InternLM2 → Llama).
_LAYER_RENAMES = {
    "attention.wo.weight": "self_attn.o_proj.weight",
    "attention.wo.bias": "self_attn.o_proj.bias",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_TOP_RENAMES = {
    "model.tok_embeddings.weight": "model.embed_tokens.weight",
    "model.norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_RENAMES_BACK = {v: k for k, v in _LAYER_RENAMES.items()}
_TOP_RENAMES_BACK = {v: k for k, v in _TOP_RENAMES.items()}
_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_QKV_NAMES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")


def is_internlm2(llm_config: Mapping[str, Any]) -> bool:
    """Tell whether an `llm_config` describes InternLM2 (from its architecture, never its name).

    Args:
        llm_config: the LLM's config dict (`llm_config` of an InternVL `config.json`).
    Returns:
        True when `architectures` names `InternLM2ForCausalLM` or `model_type` is `internlm2`.
    """
    architectures = llm_config.get("architectures") or ()
    return "InternLM2ForCausalLM" in architectures or llm_config.get("model_type") == "internlm2"


def _get(cfg: Mapping[str, Any], key: str) -> Any:
    if key in cfg and cfg[key] is not None:
        return cfg[key]
    if key in _INTERNLM2_DEFAULTS:
        return _INTERNLM2_DEFAULTS[key]
    raise ConfigError(f"InternLM2 llm_config lacks the required key {key!r}")


def _head_layout(cfg: Mapping[str, Any]) -> tuple[int, int, int]:
    """Return `(num_heads, num_kv_heads, head_dim)`, checking they divide as InternLM2 needs."""
    hidden, heads = int(_get(cfg, "hidden_size")), int(_get(cfg, "num_attention_heads"))
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    if heads <= 0 or hidden % heads:
        raise ConfigError(
            f"InternLM2 llm_config: hidden_size={hidden} is not a multiple of "
            f"num_attention_heads={heads}"
        )
    if kv_heads <= 0 or heads % kv_heads:
        raise ConfigError(
            f"InternLM2 llm_config: num_attention_heads={heads} is not a multiple of "
            f"num_key_value_heads={kv_heads}"
        )
    return heads, kv_heads, hidden // heads


def _rope_parameters(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Map InternLM2's `rope_theta` + `rope_scaling` to transformers 5's `rope_parameters`.

    transformers' `linear` and `dynamic` rope types use the same formulas as InternLM2's
    LinearScaling / DynamicNTKScaling rotary embeddings (base grows as
    `theta * (factor * L / max_pos - (factor - 1)) ** (d / (d - 2))` once `L > max_pos`).
    """
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": float(_get(cfg, "rope_theta"))}
    scaling = cfg.get("rope_scaling")
    if scaling is None:
        return params
    if not isinstance(scaling, Mapping):
        raise ConfigError(f"InternLM2 llm_config: rope_scaling must be a dict, got {scaling!r}")
    rope_type = scaling.get("type", scaling.get("rope_type"))
    if rope_type not in ("linear", "dynamic"):
        raise ConfigError(
            f"InternLM2 llm_config: rope_scaling.type={rope_type!r} is not supported "
            "(InternLM2 knows 'linear' and 'dynamic')"
        )
    factor = scaling.get("factor")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 1.0:
        raise ConfigError(f"InternLM2 llm_config: rope_scaling.factor must be a number >= 1, got {factor!r}")
    unknown = sorted(set(scaling) - {"type", "rope_type", "factor"})
    if unknown:
        raise ConfigError(f"InternLM2 llm_config: rope_scaling has unsupported keys {unknown}")
    params.update(rope_type=rope_type, factor=float(factor))
    return params


def internlm2_config_to_llama(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Translate an InternLM2 `llm_config` into keyword arguments of transformers' `LlamaConfig`.

    Missing keys take InternLM2Config's defaults. InternLM2's MLP never has a bias, so
    `bias` maps to `attention_bias` (wqkv and wo) and `mlp_bias` is always False.
    Runtime choices (`attn_implementation`, `torch_dtype`) are left to the loader.

    Args:
        cfg: InternLM2 config dict (keys as in its `config.json`).
    Returns:
        A dict accepted by `LlamaConfig(**d)` / `AutoConfig.for_model("llama", **d)`.
    Raises:
        ConfigError: a required key is missing or a setting has no Llama equivalent (names the key).
    """
    for key in _REQUIRED_KEYS:
        _get(cfg, key)
    heads, kv_heads, head_dim = _head_layout(cfg)
    version = cfg.get("rope_pos_id_version") or "default"
    if version != "default":
        raise ConfigError(
            f"InternLM2 llm_config: rope_pos_id_version={version!r} (InternVL's V2PE) is not supported"
        )
    hidden_act = _get(cfg, "hidden_act")
    from transformers.activations import ACT2FN

    if hidden_act not in ACT2FN:
        raise ConfigError(f"InternLM2 llm_config: hidden_act={hidden_act!r} is not a known activation")
    return {
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": int(_get(cfg, "vocab_size")),
        "hidden_size": int(_get(cfg, "hidden_size")),
        "intermediate_size": int(_get(cfg, "intermediate_size")),
        "num_hidden_layers": int(_get(cfg, "num_hidden_layers")),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": hidden_act,
        "max_position_embeddings": int(_get(cfg, "max_position_embeddings")),
        "initializer_range": float(_get(cfg, "initializer_range")),
        "rms_norm_eps": float(_get(cfg, "rms_norm_eps")),
        "use_cache": bool(_get(cfg, "use_cache")),
        "pad_token_id": cfg.get("pad_token_id", _INTERNLM2_DEFAULTS["pad_token_id"]),
        "bos_token_id": cfg.get("bos_token_id", _INTERNLM2_DEFAULTS["bos_token_id"]),
        "eos_token_id": cfg.get("eos_token_id", _INTERNLM2_DEFAULTS["eos_token_id"]),
        "tie_word_embeddings": bool(_get(cfg, "tie_word_embeddings")),
        "rope_parameters": _rope_parameters(cfg),
        "attention_bias": bool(_get(cfg, "bias")),
        "mlp_bias": False,
        "attention_dropout": 0.0,
    }


def _strip_prefix(name: str, prefix: str) -> str:
    if not name.startswith(prefix):
        raise CheckpointError(f"InternLM2 weight {name!r} does not start with the prefix {prefix!r}")
    return name[len(prefix):]


def convert_internlm2_key(name: str, tensor, cfg: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Convert one InternLM2 weight to its Llama name(s); streaming form for shard-by-shard loads.

    `wqkv` is packed per key-value group: its rows view as `(kv_heads, groups + 2, head_dim)`
    with `groups = heads // kv_heads` query heads first, then one key and one value head
    (upstream: `rearrange(qkv, 'b q (h gs d) -> b q h gs d', gs=2 + groups)`). Query head
    `h * groups + g` is slot `g` of group `h`, the order Llama's `repeat_kv` expects.

    Args:
        name: the InternLM2 key (e.g. `language_model.model.layers.0.attention.wqkv.weight`).
        tensor: its value.
        cfg: the InternLM2 `llm_config` (head counts).
        prefix: prepended to every key (e.g. `language_model.`); kept on the output names.
    Returns:
        `[(llama_name, tensor), ...]`: three entries for `wqkv`, none for the non-persistent
        `rotary_emb.inv_freq`, one otherwise.
    Raises:
        CheckpointError: the key is not part of InternLM2 or a tensor has the wrong shape.
    """
    local = _strip_prefix(name, prefix)
    if local in _TOP_RENAMES:
        return [(prefix + _TOP_RENAMES[local], tensor)]
    match = _LAYER_KEY.match(local)
    if match is None:
        raise CheckpointError(f"unknown InternLM2 weight {name!r}")
    layer, rest = match.groups()
    head = f"{prefix}model.layers.{layer}."
    if rest in _LAYER_RENAMES:
        return [(head + _LAYER_RENAMES[rest], tensor)]
    if rest == "attention.rotary_emb.inv_freq":
        return []  # a non-persistent buffer some old saves contain; Llama recomputes it
    if rest in ("attention.wqkv.weight", "attention.wqkv.bias"):
        kind = rest.rsplit(".", 1)[1]
        return [(head + f"{n}.{kind}", t) for n, t in zip(_QKV_NAMES, _unpack_wqkv(name, tensor, cfg))]
    raise CheckpointError(f"unknown InternLM2 weight {name!r}")


def _unpack_wqkv(name: str, wqkv, cfg: Mapping[str, Any]):
    heads, kv_heads, head_dim = _head_layout(cfg)
    groups = heads // kv_heads
    rows = (heads + 2 * kv_heads) * head_dim
    if wqkv.shape[0] != rows:
        raise CheckpointError(
            f"InternLM2 weight {name!r} has {wqkv.shape[0]} rows, expected "
            f"(heads + 2 * kv_heads) * head_dim = {rows}"
        )
    tail = tuple(wqkv.shape[1:])  # (hidden,) for the weight, () for the bias
    packed = wqkv.reshape(kv_heads, groups + 2, head_dim, *tail)
    q = packed[:, :groups].reshape(heads * head_dim, *tail)
    k = packed[:, groups].reshape(kv_heads * head_dim, *tail)
    v = packed[:, groups + 1].reshape(kv_heads * head_dim, *tail)
    return q.contiguous(), k.contiguous(), v.contiguous()


def _pack_wqkv(q, k, v, cfg: Mapping[str, Any]):
    import torch

    heads, kv_heads, head_dim = _head_layout(cfg)
    groups = heads // kv_heads
    tail = tuple(q.shape[1:])
    packed = torch.cat(
        [
            q.reshape(kv_heads, groups, head_dim, *tail),
            k.reshape(kv_heads, 1, head_dim, *tail),
            v.reshape(kv_heads, 1, head_dim, *tail),
        ],
        dim=1,
    )  # (kv_heads, groups + 2, head_dim, *tail)
    return packed.reshape((heads + 2 * kv_heads) * head_dim, *tail)


def internlm2_state_dict_to_llama(
    sd: Mapping[str, Any], cfg: Mapping[str, Any], prefix: str = ""
) -> dict[str, Any]:
    """Convert a whole InternLM2 state dict to `LlamaForCausalLM` names and shapes.

    Args:
        sd: InternLM2 weights; every key starts with `prefix`.
        cfg: the InternLM2 `llm_config`.
        prefix: prefix of the LLM's keys (`language_model.` in an InternVL checkpoint); kept.
    Returns:
        The Llama state dict (tensors are views or fresh copies, never modified in place).
    Raises:
        CheckpointError: a key is not part of InternLM2 (names it).
    """
    out: dict[str, Any] = {}
    for name, tensor in sd.items():
        for new_name, new_tensor in convert_internlm2_key(name, tensor, cfg, prefix):
            out[new_name] = new_tensor
    return out


def llama_state_dict_to_internlm2(
    sd: Mapping[str, Any], cfg: Mapping[str, Any], prefix: str = ""
) -> dict[str, Any]:
    """Write a Llama state dict back in the official InternLM2 layout (bit-identical round trip).

    Args:
        sd: `LlamaForCausalLM` weights; every key starts with `prefix`.
        cfg: the InternLM2 `llm_config` the weights came from.
        prefix: prefix of the LLM's keys; kept.
    Returns:
        The InternLM2 state dict, with q/k/v packed into `wqkv`.
    Raises:
        CheckpointError: an unknown key, or a layer missing one of q/k/v (names it).
    """
    out: dict[str, Any] = {}
    pending: dict[tuple[str, str], dict[str, Any]] = {}  # (layer, weight|bias) -> {q_proj: t, ...}
    for name, tensor in sd.items():
        local = _strip_prefix(name, prefix)
        if local in _TOP_RENAMES_BACK:
            out[prefix + _TOP_RENAMES_BACK[local]] = tensor
            continue
        match = _LAYER_KEY.match(local)
        if match is None:
            raise CheckpointError(f"unknown Llama weight {name!r}")
        layer, rest = match.groups()
        if rest in _LAYER_RENAMES_BACK:
            out[f"{prefix}model.layers.{layer}.{_LAYER_RENAMES_BACK[rest]}"] = tensor
            continue
        module, _, kind = rest.rpartition(".")
        if module not in _QKV_NAMES or kind not in ("weight", "bias"):
            raise CheckpointError(f"unknown Llama weight {name!r}")
        pending.setdefault((layer, kind), {})[module] = tensor
    for (layer, kind), parts in sorted(pending.items(), key=lambda item: (int(item[0][0]), item[0][1])):
        missing = [f"{prefix}model.layers.{layer}.{n}.{kind}" for n in _QKV_NAMES if n not in parts]
        if missing:
            raise CheckpointError(f"cannot pack wqkv of layer {layer}: missing {missing}")
        q, k, v = (parts[n] for n in _QKV_NAMES)
        out[f"{prefix}model.layers.{layer}.attention.wqkv.{kind}"] = _pack_wqkv(q, k, v, cfg)
    return out


def internlm2_keys(num_layers: int, bias: bool = False, tie_word_embeddings: bool = False) -> Iterable[str]:
    """List the keys of an InternLM2ForCausalLM state dict (for completeness checks).

    Args:
        num_layers: `num_hidden_layers`.
        bias: the config's `bias` (wqkv/wo carry biases).
        tie_word_embeddings: when True, `output.weight` is absent.
    Returns:
        The key names, in model order.
    """
    keys = ["model.tok_embeddings.weight"]
    for i in range(num_layers):
        for rest in ("attention.wqkv", "attention.wo"):
            keys.append(f"model.layers.{i}.{rest}.weight")
            if bias:
                keys.append(f"model.layers.{i}.{rest}.bias")
        keys += [f"model.layers.{i}.feed_forward.{w}.weight" for w in ("w1", "w3", "w2")]
        keys += [f"model.layers.{i}.attention_norm.weight", f"model.layers.{i}.ffn_norm.weight"]
    keys.append("model.norm.weight")
    if not tie_word_embeddings:
        keys.append("output.weight")
    return keys
