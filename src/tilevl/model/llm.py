"""The language model, built by `transformers` from the checkpoint's `llm_config`.

We do not re-implement Llama, Qwen2/3 (dense and MoE), Phi-3, InternLM3 or GPT-OSS. InternLM2
(no class in transformers, and we never run remote code) is built as the Llama it is
equivalent to; its weights are converted at load time by `tilevl.checkpoint.internlm2`.
"""

from __future__ import annotations

from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from tilevl.errors import ConfigError

# Keys of an LLM config.json that describe the file rather than the network, or that name
# remote code; transformers must not see them.
_FILE_KEYS = (
    "auto_map", "_name_or_path", "transformers_version", "torch_dtype", "dtype",
    "attn_implementation", "_attn_implementation", "use_flash_attn",
)


def llm_model_type(llm: dict) -> str:
    """The transformers `model_type` that builds this LLM (InternLM2 → llama)."""
    from tilevl.checkpoint.internlm2 import is_internlm2

    if is_internlm2(llm):
        return "llama"
    model_type = llm.get("model_type")
    if not model_type:
        raise ConfigError("llm_config has no model_type")
    return str(model_type)


def build_llm_config(llm: dict, attn_implementation: str = "sdpa") -> PretrainedConfig:
    """A transformers config for the LLM described by an official `llm_config` dict.

    Args:
        llm: the `llm_config` of an InternVL config.json.
        attn_implementation: "sdpa" (default) or "eager" or "flash_attention_2".
    Returns:
        A `PretrainedConfig` of the matching transformers class.
    """
    from tilevl.checkpoint.internlm2 import internlm2_config_to_llama, is_internlm2

    data = internlm2_config_to_llama(llm) if is_internlm2(llm) else dict(llm)
    model_type = "llama" if is_internlm2(llm) else data.get("model_type")
    for key in (*_FILE_KEYS, "model_type", "architectures"):
        data.pop(key, None)
    scaling = data.get("rope_scaling")
    if isinstance(scaling, dict) and scaling.get("type") == "su":
        # Phi-3's configs call LongRoPE "su"; transformers knows it as "longrope".
        data["rope_scaling"] = {**scaling, "type": "longrope"}
    try:
        config = AutoConfig.for_model(model_type, **data)
    except (ValueError, TypeError, StrictDataclassClassValidationError) as exc:
        # transformers' @strict configs (InternLM3's qkv_bias vs bias …) raise the hub's error
        raise ConfigError(f"llm_config: transformers cannot build model_type {model_type!r}: {exc}") from None
    config._attn_implementation = supported_attention(config, attn_implementation)
    return config


def supported_attention(config: PretrainedConfig, wanted: str) -> str:
    """`wanted`, or "eager" when the LLM's transformers class has no kernel of that kind.

    GPT-OSS has no SDPA path (its attention sinks need their own softmax), so "sdpa" — our
    default everywhere — falls back to eager for it instead of failing at build time.
    """
    if wanted != "sdpa":
        return wanted
    model_class = AutoModelForCausalLM._model_mapping.get(type(config), None)
    if model_class is not None and not getattr(model_class, "_supports_sdpa", True):
        return "eager"
    return wanted


def build_llm(llm: dict, attn_implementation: str = "sdpa") -> PreTrainedModel:
    """Instantiate the causal LM (random weights; the caller loads a checkpoint into it)."""
    config = build_llm_config(llm, attn_implementation)
    return AutoModelForCausalLM.from_config(config, attn_implementation=config._attn_implementation)
