"""What a fine-tuning run trains: freezing the ViT, projector and LLM, and LoRA on either tower.

One PEFT LoRA config covers both towers, so the adapter is one standard folder `PeftModel.from_pretrained` loads.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from torch import nn

from tilevl.errors import ConfigError
from tilevl.optional import require
from tilevl.train.args import TrainConfig

# Upstream's `wrap_llm_lora` target lists per LLM architecture (internvl_chat/internvl/model/
# internvl_chat/modeling_internvl_chat.py). We pick the list whose module names the loaded LLM
# has: InternLM2 is built as Llama here, so it matches the Llama names, not `attention.wqkv`.
LLM_LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "llama/qwen2": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                    "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj", "mlp.up_proj"),
    "phi3": ("mlp.down_proj", "mlp.gate_up_proj", "self_attn.o_proj", "self_attn.qkv_proj"),
    "internlm2": ("attention.wqkv", "attention.wo", "feed_forward.w1", "feed_forward.w2",
                  "feed_forward.w3"),
    # Qwen3-MoE / GPT-OSS (no upstream list): their experts are stacked nn.Parameters, not
    # Linear layers, so the default adapts attention only (the MoE test checks it);
    # `llm_lora_experts` adds the stacked weights (`expert_lora_parameters`).
    "moe": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
}
_VISION_PREFIX = r"vision_model\.encoder\.layers\.\d+\."
_LLM_PREFIX = r"language_model\.(?:.*\.)?"


def _requires_grad(params: Iterable[nn.Parameter], flag: bool) -> None:
    for p in params:
        p.requires_grad_(flag)


def default_llm_targets(model: nn.Module) -> list[str]:
    """Upstream's LoRA targets for this model's LLM, found from its module names.

    Returns:
        Dotted name suffixes, e.g. ["self_attn.q_proj", ..., "mlp.up_proj"].
    """
    names = {name for name, _ in model.language_model.named_modules()}
    for targets in LLM_LORA_TARGETS.values():
        if all(any(n.endswith("." + t) for n in names) for t in targets):
            return list(targets)
    raise ConfigError("llm_lora_targets: the LLM has none of upstream's LoRA target sets "
                      f"{list(LLM_LORA_TARGETS.values())}; list its Linear layers in the config")


def expert_lora_parameters(model: nn.Module) -> list[str]:
    """The LLM's stacked expert weights as PEFT `target_parameters` suffixes.

    transformers 5 keeps each MoE layer's experts as 3-D parameters [experts, d1, d2] on one
    `experts` module (Qwen3-MoE `gate_up_proj`/`down_proj`; GPT-OSS the same names plus 2-D
    biases, which LoRA does not adapt).

    Returns:
        Sorted suffixes, e.g. ["mlp.experts.down_proj", "mlp.experts.gate_up_proj"].
    Raises:
        ConfigError: the LLM has no 3-D expert parameter (a dense LLM).
    """
    found = set()
    for name, param in model.language_model.named_parameters():
        parts = name.split(".")
        if param.ndim == 3 and len(parts) >= 3 and parts[-2] == "experts":
            found.add(".".join(parts[-3:]))  # "mlp.experts.gate_up_proj"
    if not found:
        raise ConfigError("llm_lora_experts: the LLM has no stacked (3-D) expert weights; "
                          "it is not a Qwen3-MoE / GPT-OSS style MoE")
    return sorted(found)


def _alternation(targets: Sequence[str]) -> str:
    return "|".join(re.escape(t) for t in targets)


def lora_patterns(model: nn.Module, config: TrainConfig) -> dict[str, str]:
    """Regexes of the modules LoRA adapts, per tower ({"vision": ..., "llm": ...}).

    A pattern matches the full module name, so ViT targets never match inside the LLM and
    the other way round (both have an `mlp`).
    """
    out = {}
    if config.use_backbone_lora:
        out["vision"] = rf"{_VISION_PREFIX}(?:{_alternation(config.vision_lora_targets)})"
    if config.use_llm_lora:
        targets = config.llm_lora_targets or default_llm_targets(model)
        out["llm"] = rf"{_LLM_PREFIX}(?:{_alternation(targets)})"
    for tower, pattern in out.items():
        if not any(re.fullmatch(pattern, n) for n, _ in model.named_modules()):
            key = "vision_lora_targets" if tower == "vision" else "llm_lora_targets"
            raise ConfigError(f"{key}: no module of the model matches {pattern!r}")
    return out


def freeze(model: nn.Module, config: TrainConfig) -> None:
    """Apply upstream's freeze flags in place (`freeze_backbone`, `freeze_llm`, `freeze_mlp`).

    Every parameter starts trainable; each flag freezes one part.
    """
    _requires_grad(model.parameters(), True)
    if config.freeze_backbone:
        _requires_grad(model.vision_model.parameters(), False)
    if config.freeze_llm:
        _requires_grad(model.language_model.parameters(), False)
    if config.freeze_mlp:
        _requires_grad(model.mlp1.parameters(), False)


def unfreeze_extras(model: nn.Module, config: TrainConfig) -> None:
    """Upstream's late unfreezing: ViT `layers[unfreeze_vit_layers:]` and the LM head.

    Upstream applies these after LoRA wrapping, so they also re-open base weights inside a
    LoRA-wrapped tower. `model` is the bare VisionLanguageModel (PEFT's base model).
    """
    if config.unfreeze_vit_layers:
        layers = model.vision_model.encoder.layers[config.unfreeze_vit_layers:]
        for name, param in layers.named_parameters():
            if "lora_" not in name:
                param.requires_grad_(True)
    if config.unfreeze_lm_head:
        # With tied embeddings this also trains the input embeddings, as upstream.
        model.language_model.get_output_embeddings().weight.requires_grad_(True)


def apply_lora(model: nn.Module, config: TrainConfig) -> nn.Module:
    """Freeze per the config and wrap the model in one PEFT LoRA adapter (if any rank is set).

    Upstream wraps each tower in its own PeftModel; one wrapper with a regex per tower gives
    the same adapted modules, ranks and alphas, and a single standard adapter folder.
    A tower that gets LoRA has its base weights frozen (PEFT does that, as upstream); the
    other parts keep what the freeze flags say.

    Args:
        model: a VisionLanguageModel.
        config: the run's config (freeze flags, ranks, alpha, dropout, targets).
    Returns:
        The model (no LoRA) or a `peft.PeftModel` around it.
    """
    freeze(model, config)
    if not config.uses_lora:
        unfreeze_extras(model, config)
        return model
    peft = require("peft", extra="train", purpose="for LoRA fine-tuning")
    keep = {n for n, p in model.named_parameters() if p.requires_grad}
    patterns = lora_patterns(model, config)
    ranks = {"vision": config.use_backbone_lora, "llm": config.use_llm_lora}
    alpha = {t: config.lora_alpha if config.lora_alpha is not None else 2 * ranks[t] for t in ranks}
    main = "llm" if "llm" in patterns else "vision"
    lora_config = peft.LoraConfig(
        r=ranks[main], lora_alpha=alpha[main], lora_dropout=config.lora_dropout,
        target_modules="|".join(f"(?:{p})" for p in patterns.values()),
        rank_pattern={p: ranks[t] for t, p in patterns.items() if t != main},
        alpha_pattern={p: alpha[t] for t, p in patterns.items() if t != main},
        # PEFT wraps each matched parameter in a ParamWrapper (rank r per expert).
        target_parameters=expert_lora_parameters(model) if config.llm_lora_experts else None,
    )
    peft_model = peft.get_peft_model(model, lora_config)
    wrapped = tuple(f"{t}_model." if t == "vision" else "language_model." for t in patterns)
    for name, param in model.named_parameters():
        if name in keep and not name.startswith(wrapped) and "lora_" not in name:
            param.requires_grad_(True)  # PEFT froze everything that is not LoRA
    unfreeze_extras(model, config)
    if "llm" in patterns:
        # Frozen embeddings would leave the LoRA layers' inputs without a gradient path
        # under gradient checkpointing (upstream calls the same after wrapping).
        model.language_model.enable_input_require_grads()
    return peft_model


def base_model(model: nn.Module) -> nn.Module:
    """The VisionLanguageModel inside a PeftModel (or the model itself)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def is_peft_model(model: nn.Module) -> bool:
    return callable(getattr(model, "get_base_model", None)) and hasattr(model, "peft_config")


def trainable_base_names(model: nn.Module) -> list[str]:
    """Trainable parameters that are not LoRA factors (projector, unfrozen layers …).

    A PEFT adapter does not hold them, so checkpoints store them beside it.
    """
    return [n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a tied weight counts once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total
