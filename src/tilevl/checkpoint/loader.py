"""Load and save whole models: a local folder in the official or the transformers layout.

Loading builds the network without allocating or initialising weights (meta device, no
random init), then assigns each tensor as it is read, so the weights are never held twice:
tensors kept in their stored dtype stay views of the safetensors memory map (read lazily),
cast ones give their file pages back as soon as they are converted (see files.iter_tensors).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tilevl.checkpoint import convert
from tilevl.checkpoint.files import AtomicFolder, iter_tensors, tensor_keys, weight_files, write_shards
from tilevl.config import UPSTREAM_VISION_DEFAULTS, ModelConfig
from tilevl.errors import CheckpointError, ConfigError
from tilevl.model.vlm import VisionLanguageModel

_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja",
)


def read_config(path: str | Path) -> tuple[ModelConfig, str]:
    """The model config of a checkpoint folder and its layout ('official' or 'native')."""
    from tilevl.assets import resolve_folder

    folder = resolve_folder(path)
    file = folder / "config.json"
    if not file.exists():
        raise CheckpointError(f"{folder}: no config.json (is this a checkpoint folder?)")
    try:
        raw = json.loads(file.read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{file}: line {exc.lineno}: invalid JSON ({exc.msg})") from None
    refuse_flash(raw, str(file))
    layout = convert.detect_layout(raw, str(file))
    try:
        if layout == convert.OFFICIAL:
            config = ModelConfig.from_dict(raw)
        else:
            pre_file = folder / "preprocessor_config.json"
            pre = json.loads(pre_file.read_text("utf-8")) if pre_file.exists() else None
            config = convert.native_config_to_ours(raw, pre)
            config.preprocessor = pre
    except ConfigError as exc:
        raise CheckpointError(f"{file}: {exc}") from None
    if config.img_context_token_id is None:
        config.img_context_token_id = _context_token_id_from_files(folder)
    pre_file = folder / "preprocessor_config.json"
    if pre_file.exists() and config.preprocessor is None:
        try:
            config.preprocessor = json.loads(pre_file.read_text("utf-8"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{pre_file}: line {exc.lineno}: invalid JSON ({exc.msg})") from None
    return config, layout


# vision_config keys the official weights show, by a weight of the first encoder layer that
# exists exactly when the key has the value named here.
_SHOWN_BY_WEIGHTS = {
    "qk_normalization": ("attn.q_norm.weight", True, False),
    "qkv_bias": ("attn.qkv.bias", True, False),
    "norm_type": ("norm1.bias", "layer_norm", "rms_norm"),
}
_FIRST_VIT_LAYER = "vision_model.encoder.layers.0."


def settle_vision_config(config: ModelConfig, keys) -> ModelConfig:
    """Fill the vision_config keys that config.json leaves out and the weights show.

    An absent key means upstream's default (InternViT-6B: qk-norm, RMSNorm, no qkv bias), as
    for upstream's code; where the weights show otherwise (a 300M tower whose config leaves
    out norm_type/qk_normalization), upstream would load them into the wrong layers, so the
    weights decide. Keys present in config.json are never changed.

    Args:
        config: the config read from config.json.
        keys: the official weight names (safetensors headers; empty for pickled weights).
    Returns:
        The config, with the settled keys (written out explicitly when saved).
    """
    keys = set(keys)
    if not any(k.startswith(_FIRST_VIT_LAYER) for k in keys):
        return config
    changes = {}
    for name, (weight, present, absent) in _SHOWN_BY_WEIGHTS.items():
        value = present if _FIRST_VIT_LAYER + weight in keys else absent
        if name not in config.vision.extra and getattr(config.vision, name) != value:
            changes[name] = value
    if not changes:
        return config
    return dataclasses.replace(config, vision=dataclasses.replace(config.vision, **changes))


_WEIGHT_TO_KEY = {"attn.q_norm.weight": "qk_normalization", "attn.k_norm.weight": "qk_normalization",
                  "attn.qkv.bias": "qkv_bias", "norm1.bias": "norm_type", "norm2.bias": "norm_type"}


def _config_hint(key: str, config: ModelConfig | None) -> str:
    """Name the vision_config key that decides whether weight `key` exists (else "")."""
    if not isinstance(config, ModelConfig) or not key.startswith("vision_model."):
        return ""
    for suffix, name in _WEIGHT_TO_KEY.items():
        if key.endswith("." + suffix):
            given = "sets" if name in config.vision.extra else "has no"
            return (f"; config.json vision_config {given} {name!r} (taken as "
                    f"{getattr(config.vision, name)!r}; upstream's default when absent is "
                    f"{UPSTREAM_VISION_DEFAULTS[name]!r})")
    return ""


# InternVL3.5-Flash: the Visual Resolution Router (ViR) routes each tile to 256 tokens (mlp1)
# or 64 tokens (a second pixel shuffle + `mlp2`), by a router (`pooling_before_gating` +
# `gating`) with relative/absolute thresholds from config.json. Published in the Flash
# checkpoints' remote code (OpenGVLab/InternVL3_5-*-Flash, modeling_internvl_chat.py:
# extract_feature_flash, generate_flash); tilevl does not implement it yet, so it refuses
# these checkpoints rather than load them without their router.
_FLASH_CONFIG_KEYS = ("flash_mode", "flash_relative_threshold", "flash_absolute_threshold")
_FLASH_MODULES = ("mlp2", "pooling_before_gating", "gating")


def _flash_message(where: str, found: str) -> str:
    return (f"{where}: {found}: this is an InternVL3.5-Flash checkpoint; its Visual Resolution "
            "Router (ViR: modules pooling_before_gating + gating routing each tile to mlp1's 256 "
            "or mlp2's 64 tokens) is not implemented in tilevl; use the non-Flash InternVL3.5 "
            "checkpoint of the same size")


def refuse_flash(raw_config: dict, where: str) -> None:
    """Raise CheckpointError for an InternVL3.5-Flash config.json (its ViR keys)."""
    found = [k for k in _FLASH_CONFIG_KEYS if k in raw_config and raw_config[k] not in (None, False)]
    if found:
        raise CheckpointError(_flash_message(where, f"key {found[0]!r}"))


def _refuse_flash_weights(pairs, where: str):
    """Pass (key, tensor) pairs through; raise at the first weight of a ViR module."""
    for key, tensor in pairs:
        parts = key.split(".")
        top = parts[1] if parts[0] == "model" and len(parts) > 1 else parts[0]
        if top in _FLASH_MODULES:
            raise CheckpointError(_flash_message(where, f"weight {key!r}"))
        yield key, tensor


def _context_token_id_from_files(folder: Path) -> int | None:
    """Find `<IMG_CONTEXT>`'s id in the tokenizer files without loading the tokenizer."""
    from tilevl.checkpoint.tokenizer import IMG_CONTEXT_TOKEN

    added = folder / "added_tokens.json"
    if added.exists():
        ids = json.loads(added.read_text("utf-8"))
        if IMG_CONTEXT_TOKEN in ids:
            return int(ids[IMG_CONTEXT_TOKEN])
    for name, entries in (("tokenizer_config.json", "added_tokens_decoder"), ("tokenizer.json", "added_tokens")):
        file = folder / name
        if not file.exists():
            continue
        data = json.loads(file.read_text("utf-8")).get(entries) or {}
        items = data.items() if isinstance(data, dict) else ((t.get("id"), t) for t in data)
        for token_id, token in items:
            if token.get("content") == IMG_CONTEXT_TOKEN:
                return int(token_id)
    return None


def _assign(model: nn.Module, key: str, tensor: torch.Tensor, dtype, device, where: str) -> None:
    """Put `tensor` in place of the parameter or buffer named `key` (shape-checked)."""
    module_name, _, leaf = key.rpartition(".")
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        module = None
    if module is None or (leaf not in module._parameters and leaf not in module._buffers):
        raise CheckpointError(f"{where}: unexpected key {key!r} (the model has no such weight)"
                              f"{_config_hint(key, getattr(model, 'config', None))}")
    is_param = leaf in module._parameters
    slot = module._parameters[leaf] if is_param else module._buffers[leaf]
    if slot is not None and tuple(slot.shape) != tuple(tensor.shape):
        raise CheckpointError(
            f"{where}: shape mismatch for {key!r}: checkpoint {tuple(tensor.shape)}, "
            f"model expects {tuple(slot.shape)} (does config.json match the weights?)"
        )
    if tensor.is_floating_point() and dtype is not None:
        tensor = tensor.to(dtype)
    tensor = tensor.to(device)
    if is_param:
        module._parameters[leaf] = nn.Parameter(tensor, requires_grad=tensor.is_floating_point())
    else:
        module._buffers[leaf] = tensor


def load_model(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    device_map: str | dict | None = None,
    attn_implementation: str = "sdpa",
    load_in_8bit: bool = False,
    quantize: str | None = None,
    allow_pickle: bool = False,
) -> VisionLanguageModel:
    """Load a local checkpoint folder in the official or the transformers-native layout.

    Args:
        path: the folder (config.json + safetensors, optionally sharded with an index), or
            the name of a model shipped with the package (`"tilevl-tiny"`).
        dtype: cast floating weights to this dtype; None keeps the stored dtype.
        device: where to put the weights (ignored when `device_map` is given).
        device_map: "auto" or a {module prefix: device} map: splits the LLM layers across
            GPUs with the vision tower, embeddings, final norm and head on the first one.
        attn_implementation: the LLM's attention ("sdpa", "eager", "flash_attention_2").
        load_in_8bit: quantise the LLM's linear layers with bitsandbytes (GPU only).
        quantize: "int8": weight-only int8 LLM linear layers and LM head with PyTorch's
            int8 kernels, CPU or GPU (`tilevl.checkpoint.quantize`); None keeps the weights.
        allow_pickle: read `.bin`/`.pt` weights with `torch.load(weights_only=True)`.
    Returns:
        The model in eval mode, `img_context_token_id` set when the folder names it.
    """
    from accelerate import init_empty_weights
    from transformers.initialization import no_init_weights

    from tilevl.assets import resolve_folder
    from tilevl.checkpoint.quantize import check_quantize, quantize_model

    if check_quantize(quantize) and load_in_8bit:
        raise CheckpointError(f"quantize={quantize!r} and load_in_8bit=True are two quantizations; pick one")
    folder = resolve_folder(path)
    config, layout = read_config(folder)
    files = weight_files(folder, allow_pickle=allow_pickle)
    if layout == convert.OFFICIAL:
        config = settle_vision_config(config, tensor_keys(files))
    # Parameters on the meta device, their random init skipped (on meta tensors it is pure
    # dispatch overhead, ~40 % of a 1.5 GB load); every one is assigned from the file below.
    with init_empty_weights(include_buffers=False), no_init_weights():
        model = VisionLanguageModel(config, attn_implementation)
    target = torch.device("cpu") if device_map is not None else torch.device(device)
    where = str(folder)
    pairs = _refuse_flash_weights(((key, tensor) for key, tensor, _ in iter_tensors(files, cast_to=dtype)), where)
    ours = (convert.official_to_ours(pairs, config, where) if layout == convert.OFFICIAL
            else convert.native_to_ours(pairs, where, config))
    for key, tensor in ours:
        _assign(model, key, tensor, dtype, target, where)
    _tie_and_check(model, folder)
    model.eval()
    if load_in_8bit:
        model = _quantize_8bit(model)
    if quantize:
        model = quantize_model(model, quantize)
    if device_map is not None:
        from tilevl.checkpoint.placement import dispatch

        model = dispatch(model, device_map)
    return model


def _tie_and_check(model: VisionLanguageModel, folder: Path) -> None:
    """Tie the LM head when the config says so; refuse weights still unloaded."""
    llm = model.language_model
    if getattr(llm.config, "tie_word_embeddings", False):
        head, embed = llm.get_output_embeddings(), llm.get_input_embeddings()
        if head is not None and (head.weight.is_meta or head.weight is not embed.weight):
            head.weight = embed.weight
    missing = [name for name, p in model.named_parameters() if p.is_meta]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"{folder}: missing weights {missing[:5]}{more}"
                              f"{_config_hint(missing[0], model.config)}")


def _quantize_8bit(model: VisionLanguageModel) -> VisionLanguageModel:
    from tilevl.optional import require

    if not torch.cuda.is_available():
        raise CheckpointError("load_in_8bit needs a CUDA GPU (bitsandbytes 8-bit kernels); none is visible")
    bnb = require("bitsandbytes", extra="quant", purpose="for 8-bit loading")
    llm = model.language_model
    for name, module in list(llm.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and child is not llm.get_output_embeddings():
                q = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=child.bias is not None,
                                        has_fp16_weights=False, threshold=6.0)
                q.weight = bnb.nn.Int8Params(child.weight.data.cpu(), requires_grad=False, has_fp16_weights=False)
                if child.bias is not None:
                    q.bias = child.bias
                setattr(module, child_name, q.cuda())
    return model.cuda()


def save_model(
    model: VisionLanguageModel,
    path: str | Path,
    *,
    layout: str = "official",
    max_shard_size: int | str = "5GB",
    tokenizer: Any = None,
    overwrite: bool = False,
) -> Path:
    """Write a checkpoint folder atomically (a temporary folder renamed into place).

    Args:
        model: the model to save.
        path: the target folder; must not exist or be empty unless `overwrite`.
        layout: "official" (InternVLChatModel, what vLLM/lmdeploy serve) or "native"
            (transformers' InternVLForConditionalGeneration).
        max_shard_size: largest shard, e.g. "5GB"; a larger model is split with an index.
        tokenizer: saved beside the weights when given.
    Returns:
        The folder written.
    """
    if layout not in (convert.OFFICIAL, convert.NATIVE):
        raise CheckpointError(f"layout must be 'official' or 'native', got {layout!r}")
    from tilevl.checkpoint.quantize import is_quantized

    if is_quantized(model):
        raise CheckpointError(f"{path}: refusing to save a quantized model (int8 weights are a load "
                              "option, not a checkpoint layout); save the unquantized model")
    config = model.config
    if model.img_context_token_id is not None:
        config.img_context_token_id = model.img_context_token_id
    pairs = _state_items(model)
    with AtomicFolder(path, overwrite=overwrite) as tmp:
        if layout == convert.OFFICIAL:
            config_dict = config.to_dict()
            write_shards(convert.ours_to_official(pairs, config), tmp, max_shard_size)
            pre = convert.official_preprocessor_config(config)
        else:
            config_dict = convert.ours_config_to_native(config)
            write_shards(convert.ours_to_native(pairs), tmp, max_shard_size)
            pre = convert.native_preprocessor_config(config)
        (tmp / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n", "utf-8")
        (tmp / "config.json").write_text(json.dumps(config_dict, indent=2, ensure_ascii=False) + "\n", "utf-8")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return Path(path)


def _state_items(model: VisionLanguageModel):
    """(name, tensor) of every persistent weight, a tied LM head written once (as upstream)."""
    llm = model.language_model
    tied = getattr(llm.config, "tie_word_embeddings", False)
    for name, tensor in model.state_dict(keep_vars=False).items():
        if tied and name.startswith("language_model.") and name.endswith("lm_head.weight"):
            continue
        yield name, tensor
