"""LoRA on MoE experts' stacked 3-D weights (PEFT `target_parameters`): which weight a saved
factor pair belongs to, and its dense delta [experts, d1, d2].

PEFT wraps each targeted parameter of a module in a `ParamWrapper`; several parameters of one
`experts` module nest (`experts.lora_A`, `experts.base_layer.lora_A`, …), so the saved keys
name the nesting depth, not the parameter. Which depth holds which parameter follows PEFT's
own matching order, so we let PEFT wrap a meta-device copy of the base and read it off.
Source: peft/tuners/lora/layer.py (`ParamWrapper.get_delta_weight`), PEFT 0.21.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import replace

import torch

from tilevl.config import ModelConfig
from tilevl.errors import CheckpointError

_BASE_LAYER = re.compile(r"(\.base_layer)+$")
_resolved: dict[str, dict[str, tuple[str, bool, tuple[int, ...]]]] = {}  # memo: adapters of one base resolve once


def wrapped_module_suffixes(adapter_config: dict) -> tuple[str, ...]:
    """The module suffixes `target_parameters` wraps, e.g. ("mlp.experts",)."""
    return tuple(sorted({t.rpartition(".")[0] for t in adapter_config.get("target_parameters") or ()}))


def is_param_wrapper(name: str, suffixes: Sequence[str]) -> bool:
    """Does the adapter module `name` (e.g. "...mlp.experts.base_layer") wrap a parameter?"""
    plain = _BASE_LAYER.sub("", name)
    return any(plain == s or plain.endswith("." + s) for s in suffixes)


def _wrapper_parameters(config: ModelConfig, targets: Sequence[str]) -> dict[str, tuple[str, bool, tuple[int, ...]]]:
    """{wrapper module name: (our parameter name, stored [E, in, out], its shape)} as PEFT
    wraps the base.

    `stored [E, in, out]` is the expert module's `is_transposed` (GPT-OSS: x @ W[e]); PEFT's
    factors are then A [r·E, d1], B [d2, r·E], else A [r·E, d2], B [d1, r·E].
    """
    key = json.dumps([config.to_dict(), sorted(targets)], sort_keys=True, default=str)
    if key in _resolved:
        return _resolved[key]
    from tilevl.model.vlm import VisionLanguageModel
    from tilevl.optional import require

    peft = require("peft", extra="train", purpose="to read LoRA on MoE expert weights")
    out: dict[str, tuple[str, bool, tuple[int, ...]]] = {}
    with torch.device("meta"):  # shapes only; allocates nothing
        skeleton = VisionLanguageModel(config)
        try:
            wrapped = peft.get_peft_model(skeleton, peft.LoraConfig(
                r=1, lora_alpha=1, lora_dropout=0.0, target_modules=[], target_parameters=list(targets)))
        except ValueError:  # PEFT: no parameter of the base matches (a dense base); the caller names it
            _resolved[key] = out
            return out
    for name, module in wrapped.named_modules():
        if hasattr(module, "parameter_name") and hasattr(module, "get_param"):
            name = name.removeprefix("base_model.model.")
            inner = module.get_base_layer()
            out[name] = (f"{_BASE_LAYER.sub('', name)}.{module.parameter_name}",
                         bool(getattr(inner, "is_transposed", False)), tuple(module.get_param().shape))
    _resolved[key] = out
    return out


def _resolve_wrappers(path, names: Sequence[str], adapter_config: dict,
                     config: ModelConfig) -> dict[str, tuple[str, bool, tuple[int, ...]]]:
    """Map the adapter's wrapper modules to the base's stacked expert parameters.

    Args:
        path: the adapter folder (for messages).
        names: the adapter's wrapper module names (`is_param_wrapper`).
        adapter_config: its adapter_config.json.
        config: the base model's config.
    Returns:
        {wrapper name: (parameter name, stored [E, in, out], parameter shape [E, d1, d2])}.
    Raises:
        CheckpointError: a wrapper the base does not have (another base?).
    """
    table = _wrapper_parameters(config, adapter_config.get("target_parameters") or ())
    for name in names:
        if name not in table:
            raise CheckpointError(f"{path}: LoRA on parameters of {name!r}, which the base model lacks "
                                  "(was the adapter trained on another base?)")
    return {name: table[name] for name in names}


def expert_delta(a: torch.Tensor, b: torch.Tensor, num_experts: int, scale: float,
                 transposed: bool) -> torch.Tensor:
    """The dense delta of a stacked-experts LoRA, float32, in the parameter's layout.

    Args:
        a: lora_A [r·E, q] (expert e's rows are e·r … e·r + r - 1).
        b: lora_B [p, r·E] (expert e's columns are e, E + e, 2E + e …: PEFT's reshape).
        num_experts: E.
        scale: lora_alpha / r (or / √r).
        transposed: the parameter is stored [E, in, out] (then B·A is its transpose).
    Returns:
        [E, d1, d2], the parameter's shape.
    """
    a3 = a.float().reshape(num_experts, -1, a.shape[-1])  # [E, r, q]
    b3 = b.float().reshape(b.shape[0], -1, num_experts).permute(2, 0, 1)  # [E, p, r]
    delta = torch.bmm(b3, a3) * scale  # [E, p, q]
    return (delta.transpose(-2, -1) if transposed else delta).contiguous()


def resolve_expert_wrappers(adapter, config: ModelConfig):
    """An `Adapter` (merge/lora.py) whose "wrapper" modules become "experts" modules named by
    the base parameter they adapt, with its shape and orientation; others pass unchanged."""
    wrappers = [n for n, m in adapter.modules.items() if m.kind == "wrapper"]
    if not wrappers:
        return adapter
    table = _resolve_wrappers(adapter.path, wrappers, adapter.config, config)
    modules = {}
    for name, module in adapter.modules.items():
        if module.kind != "wrapper":
            modules[name] = module
            continue
        param, transposed, shape = table[name]
        experts, p, q = module.delta_shape
        factors = (q, p) if transposed else (p, q)  # B·A is [d2, d1] for a [E, in, out] weight
        if (experts, *factors) != tuple(shape):
            raise CheckpointError(
                f"{adapter.path}: module {name!r} ({param}): the LoRA delta has shape "
                f"{(experts, *factors)}, the base parameter {tuple(shape)} (another base?)")
        modules[param] = replace(module, name=param, kind="experts", fan_in_fan_out=transposed,
                                 delta_shape=tuple(shape))
    return replace(adapter, modules=modules)


def refuse_stacked(adapter, where: str) -> None:
    """`where` handles 2-D LoRA factors only: refuse LoRA on stacked MoE expert parameters."""
    stacked = [m.name for m in adapter.modules.values() if m.kind in ("experts", "wrapper")]
    if stacked:
        raise CheckpointError(
            f"{adapter.path}: {where} takes 2-D LoRA modules only, and the adapter has LoRA on the "
            f"stacked expert parameter {stacked[0]!r} ({len(stacked)} such); the dense `merge` "
            "(no --as-lora) and `merge-lora` take it")
