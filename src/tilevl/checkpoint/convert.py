"""Every layout conversion in one place: official (InternVLChatModel) ↔ ours ↔ native.

Our parameter names are the official ones, so official ↔ ours is the identity except inside
an InternLM2 LLM (converted to Llama) and a Qwen3-MoE LLM (checkpoints store one key per
expert, transformers fuses them). Native is transformers' InternVLForConditionalGeneration.
Conversions stream: they take and yield (key, tensor) pairs, one layer's worth at a time.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator

import torch

from tilevl.checkpoint.internlm2 import (
    convert_internlm2_key,
    is_internlm2,
    llama_state_dict_to_internlm2,
)
from tilevl.config import ModelConfig, VisionConfig
from tilevl.errors import CheckpointError

OFFICIAL = "official"
NATIVE = "native"
_NATIVE_ARCH = "InternVLForConditionalGeneration"
# config.json key listing the fingerprints of LoRA adapters already folded into the weights
# (written by tilevl.merge); every layout carries it so no conversion forgets a fold.
MERGED_ADAPTERS_KEY = "merged_adapters"
# The model's own evaluation tile budget (ModelConfig.eval_max_dynamic_patch), under the same
# name in both layouts' config.json.
EVAL_TILES_KEY = "eval_max_dynamic_patch"
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_CAUSAL_LM = {
    "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "phi3": "Phi3ForCausalLM",
    "qwen3": "Qwen3ForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM", "gpt_oss": "GptOssForCausalLM",
    "internlm3": "InternLM3ForCausalLM",
}

Pairs = Iterable[tuple[str, torch.Tensor]]


def detect_layout(config: dict, where: str = "config.json") -> str:
    """'official' or 'native', from `architectures` / `model_type` (never from a name)."""
    archs = config.get("architectures") or []
    model_type = config.get("model_type")
    if "InternVLChatModel" in archs or model_type == "internvl_chat":
        return OFFICIAL
    if _NATIVE_ARCH in archs or model_type == "internvl":
        return NATIVE
    raise CheckpointError(
        f"{where}: unknown architectures {archs} / model_type {model_type!r}; expected "
        "InternVLChatModel (official layout) or InternVLForConditionalGeneration (transformers)"
    )


# ---- official ↔ ours ---------------------------------------------------------------------------
def official_to_ours(pairs: Pairs, config: ModelConfig, where: str = "checkpoint") -> Iterator[tuple[str, torch.Tensor]]:
    """Official checkpoint keys → our parameter names (InternLM2 LLM keys become Llama's,
    per-expert MoE keys are fused into transformers' stacked expert parameters)."""
    internlm2 = is_internlm2(config.llm)
    for key, tensor in fuse_experts(pairs, config.llm, where):
        if internlm2 and key.startswith("language_model."):
            for sub, value in convert_internlm2_key(key[len("language_model."):], tensor, config.llm):
                yield "language_model." + sub, value
        else:
            yield key, tensor


def ours_to_official(pairs: Pairs, config: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """Our parameter names → official keys; an InternLM2 LLM is packed back layer by layer and
    fused MoE experts are written one key per expert, as the official checkpoints store them."""
    pairs = split_experts(pairs)
    if not is_internlm2(config.llm):
        yield from pairs
        return
    for group in _group_llm_layers(pairs):
        if group[0][0].startswith("language_model."):
            sub = {k[len("language_model."):]: t for k, t in group}
            for key, value in llama_state_dict_to_internlm2(sub, config.llm).items():
                yield "language_model." + key, value
        else:
            yield from group


_LAYER = re.compile(r"^language_model\.model\.layers\.(\d+)\.")


def _group_llm_layers(pairs: Pairs) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group consecutive LLM keys by decoder layer; every other key is its own group."""
    group: list[tuple[str, torch.Tensor]] = []
    group_id = None
    for key, tensor in pairs:
        match = _LAYER.match(key)
        layer = match.group(1) if match else None
        if group and (layer is None or layer != group_id):
            yield group
            group = []
        group.append((key, tensor))
        group_id = layer
        if layer is None:
            yield group
            group = []
    if group:
        yield group


# ---- MoE experts: one key per expert (checkpoints) ↔ stacked parameters (transformers 5) ----
# Qwen3-MoE checkpoints (InternVL3.5-30B-A3B / -241B-A28B, and what transformers itself writes)
# hold `mlp.experts.{e}.{gate,up,down}_proj.weight` with gate/up [I, H] and down [H, I];
# transformers 5 builds `mlp.experts.gate_up_proj` [E, 2I, H] (gate rows first) and
# `mlp.experts.down_proj` [E, H, I].  GPT-OSS checkpoints already store the stacked form
# (gate_up [E, H, 2I], interleaved), which is transformers' own: it passes unchanged.
_PER_EXPERT_MOE = ("qwen3_moe",)
_EXPERT_KEY = re.compile(r"^(?P<head>.+\.mlp\.experts)\.(?P<e>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)\.weight$")
_FUSED_KEY = re.compile(r"^(?P<head>.+\.mlp\.experts)\.(?P<proj>gate_up_proj|down_proj)$")
_MXFP4_KEY = re.compile(r"\.mlp\.experts\.\w+_(blocks|scales)$")


def fuse_experts(pairs: Pairs, llm: dict, where: str = "checkpoint") -> Iterator[tuple[str, torch.Tensor]]:
    """Per-expert MoE keys → the stacked parameters transformers builds; other keys pass.

    A layer's experts are held until its last one is read, so at most one layer's experts
    are buffered when the file is in key order. Stacked keys already in that form pass too.
    """
    fusing = llm.get("model_type") in _PER_EXPERT_MOE
    count = int(llm.get("num_experts") or llm.get("num_local_experts") or 0)  # transformers 5 writes the latter
    pending: dict[str, dict[tuple[str, int], torch.Tensor]] = {}
    for key, tensor in pairs:
        if _MXFP4_KEY.search(key):
            raise CheckpointError(
                f"{where}: {key!r} is an MXFP4-quantised expert weight (the gpt-oss release format); "
                "tilevl loads bf16/fp16/fp32 experts only: use the dequantised checkpoint "
                "(InternVL3.5-GPT-OSS ships bf16)")
        match = _EXPERT_KEY.match(key) if fusing else None
        if match is None:
            yield key, tensor
            continue
        expert = int(match.group("e"))
        if expert >= count:
            raise CheckpointError(f"{where}: {key!r} names expert {expert}, but num_experts is {count}")
        slot = pending.setdefault(match.group("head"), {})
        slot[(match.group("proj"), expert)] = tensor
        if len(slot) == 3 * count:
            head = match.group("head")
            gate_up = [torch.cat([slot[("gate_proj", e)], slot[("up_proj", e)]], dim=0) for e in range(count)]
            yield f"{head}.gate_up_proj", torch.stack(gate_up)  # [E, 2I, H]
            yield f"{head}.down_proj", torch.stack([slot[("down_proj", e)] for e in range(count)])  # [E, H, I]
            del pending[head]
    if pending:
        head, slot = next(iter(pending.items()))
        missing = sorted(f"{p}[{e}]" for p in ("gate_proj", "up_proj", "down_proj")
                         for e in range(count) if (p, e) not in slot)
        raise CheckpointError(f"{where}: incomplete experts under {head}: missing {missing[:6]}")


def split_experts(pairs: Pairs) -> Iterator[tuple[str, torch.Tensor]]:
    """Stacked Qwen3-MoE-style expert parameters → one key per expert (inverse of fuse_experts).

    Only the [E, 2I, H] gate-first layout is split; GPT-OSS's [E, H, 2I] stacked form (with
    its `_bias` companions) is what its checkpoints store, so it is left as it is.
    """
    held: dict[str, torch.Tensor] = {}
    for key, tensor in pairs:
        match = _FUSED_KEY.match(key)
        if match is None or tensor.dim() != 3:
            yield key, tensor
            continue
        head, proj = match.group("head"), match.group("proj")
        # gate_up [E, 2I, H] and down [E, H, I] of the same layer tell the layout apart from
        # GPT-OSS ([E, H, 2I] and [E, I, H]): down's last dim is half gate_up's middle one.
        held[f"{head}.{proj}"] = tensor
        gate_up, down = held.get(f"{head}.gate_up_proj"), held.get(f"{head}.down_proj")
        if gate_up is None or down is None:
            continue
        del held[f"{head}.gate_up_proj"], held[f"{head}.down_proj"]
        if gate_up.shape[1] == 2 * down.shape[2] and gate_up.shape[2] == down.shape[1]:
            inter = down.shape[2]
            for e in range(gate_up.shape[0]):
                yield f"{head}.{e}.gate_proj.weight", gate_up[e, :inter].clone()
                yield f"{head}.{e}.up_proj.weight", gate_up[e, inter:].clone()
                yield f"{head}.{e}.down_proj.weight", down[e].clone()
        else:
            yield f"{head}.gate_up_proj", gate_up
            yield f"{head}.down_proj", down
    yield from held.items()


# ---- native ↔ ours -----------------------------------------------------------------------------
# Inside one vision layer: our suffix → transformers' suffix (qkv is split/joined separately).
_VISION_LAYER = {
    "attn.proj": "attention.projection_layer",
    "attn.q_norm": "attention.q_norm",
    "attn.k_norm": "attention.k_norm",
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "ls1": "lambda_1",
    "ls2": "lambda_2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_VISION_EMBED = {
    "class_embedding": "cls_token",
    "patch_embedding": "patch_embeddings.projection",
    "position_embedding": "position_embeddings",
}
_PROJECTOR = {"0": "layer_norm", "1": "linear_1", "3": "linear_2"}


def _swap(name: str, table: dict[str, str]) -> str | None:
    """Replace the longest key of `table` that prefixes `name` (up to a dot or the end)."""
    for src, dst in sorted(table.items(), key=lambda kv: -len(kv[0])):
        if name == src or name.startswith(src + "."):
            return dst + name[len(src):]
    return None


def ours_to_native(pairs: Pairs) -> Iterator[tuple[str, torch.Tensor]]:
    """Our names → the keys transformers 5 writes for InternVLForConditionalGeneration
    (MoE experts one key per expert, as transformers saves them)."""
    for key, tensor in split_experts(pairs):
        if key.startswith("vision_model.encoder.layers."):
            idx, rest = key[len("vision_model.encoder.layers."):].split(".", 1)
            head = f"vision_tower.encoder.layer.{idx}."
            if rest.startswith("attn.qkv."):
                kind = rest.rsplit(".", 1)[1]  # weight | bias
                for name, part in zip("qkv", tensor.chunk(3, dim=0)):
                    yield f"{head}attention.{name}_proj.{kind}", part
                continue
            new = _swap(rest, _VISION_LAYER)
            if new is None:
                raise CheckpointError(f"no native name for vision key {key}")
            yield head + new, tensor
        elif key.startswith("vision_model.embeddings."):
            new = _swap(key[len("vision_model.embeddings."):], _VISION_EMBED)
            if new is None:
                raise CheckpointError(f"no native name for vision key {key}")
            yield "vision_tower.embeddings." + new, tensor
        elif key.startswith("mlp1."):
            idx, rest = key[len("mlp1."):].split(".", 1)
            yield f"multi_modal_projector.{_PROJECTOR[idx]}.{rest}", tensor
        elif key.startswith("language_model."):
            yield key, tensor
        else:
            raise CheckpointError(f"no native name for key {key}")


def _normalise_native_key(key: str) -> str:
    """Both native spellings (`model.language_model.*` / `language_model.model.*`) → the latter."""
    if key.startswith("model.language_model."):
        return "language_model.model." + key[len("model.language_model."):]
    if key.startswith("lm_head."):
        return "language_model." + key
    if key.startswith(("model.vision_tower.", "model.multi_modal_projector.")):
        return key[len("model."):]
    return key


def native_to_ours(pairs: Pairs, where: str = "checkpoint",
                   config: ModelConfig | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """transformers' native keys → our names; q/k/v are joined once all three are read.

    With `config`, per-expert MoE keys are fused as `fuse_experts` does (loading needs it;
    without it they pass through under their own names).
    """
    if config is not None:
        yield from fuse_experts(_native_to_ours(pairs, where), config.llm, where)
        return
    yield from _native_to_ours(pairs, where)


def _native_to_ours(pairs: Pairs, where: str) -> Iterator[tuple[str, torch.Tensor]]:
    inverse_layer = {v: k for k, v in _VISION_LAYER.items()}
    inverse_embed = {v: k for k, v in _VISION_EMBED.items()}
    inverse_proj = {v: k for k, v in _PROJECTOR.items()}
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for raw, tensor in pairs:
        key = _normalise_native_key(raw)
        if key.startswith("vision_tower.encoder.layer."):
            idx, rest = key[len("vision_tower.encoder.layer."):].split(".", 1)
            head = f"vision_model.encoder.layers.{idx}."
            match = re.fullmatch(r"attention\.([qkv])_proj\.(weight|bias)", rest)
            if match:
                slot = pending.setdefault(f"{head}attn.qkv.{match.group(2)}", {})
                slot[match.group(1)] = tensor
                if len(slot) == 3:
                    yield f"{head}attn.qkv.{match.group(2)}", torch.cat([slot[c] for c in "qkv"], dim=0)
                    del pending[f"{head}attn.qkv.{match.group(2)}"]
                continue
            new = _swap(rest, inverse_layer)
        elif key.startswith("vision_tower.embeddings."):
            head = "vision_model.embeddings."
            new = _swap(key[len(head.replace("vision_model", "vision_tower")):], inverse_embed)
        elif key.startswith("multi_modal_projector."):
            name, rest = key[len("multi_modal_projector."):].split(".", 1)
            head, new = "mlp1.", (f"{inverse_proj[name]}.{rest}" if name in inverse_proj else None)
        elif key.startswith("language_model."):
            head, new = "", key
        else:
            head, new = "", None
        if new is None:
            raise CheckpointError(f"{where}: unexpected key {raw!r} for InternVLForConditionalGeneration")
        yield head + new, tensor
    if pending:
        raise CheckpointError(f"{where}: incomplete q/k/v projections for {sorted(pending)[:3]}")


def native_config_to_ours(native: dict, preprocessor: dict | None = None) -> ModelConfig:
    """transformers' InternVLConfig dict (+ its preprocessor_config.json) → ModelConfig."""
    from transformers import InternVLConfig

    try:
        cfg = InternVLConfig(**copy.deepcopy(native))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"config.json: not a valid InternVLConfig ({exc})") from None
    vc = cfg.vision_config
    vision = VisionConfig(
        hidden_size=vc.hidden_size,
        num_hidden_layers=vc.num_hidden_layers,
        num_attention_heads=vc.num_attention_heads,
        intermediate_size=vc.intermediate_size,
        image_size=vc.image_size,
        patch_size=vc.patch_size,
        num_channels=vc.num_channels,
        qkv_bias=vc.attention_bias,
        qk_normalization=vc.use_qk_norm,
        norm_type=vc.norm_type,
        layer_norm_eps=vc.layer_norm_eps,
        initializer_factor=vc.layer_scale_init_value,
        hidden_act=vc.hidden_act,
    )
    llm = cfg.text_config.to_dict()
    llm["architectures"] = [_CAUSAL_LM.get(llm["model_type"], "AutoModelForCausalLM")]
    # transformers ties the LM head by the top-level flag, whatever the text config says.
    llm["tie_word_embeddings"] = bool(native.get("tie_word_embeddings", True))
    pre = preprocessor or {}
    merged = native.get(MERGED_ADAPTERS_KEY)
    return ModelConfig(
        vision=vision,
        llm=llm,
        template=native.get("template"),
        select_layer=int(cfg.vision_feature_layer),
        downsample_ratio=float(cfg.downsample_ratio),
        ps_version="v2",
        dynamic_image_size=bool(pre.get("crop_to_patches", True)),
        use_thumbnail=True,  # transformers' GotOcr2 processor always adds one to several tiles
        min_dynamic_patch=int(pre.get("min_patches", 1)),
        max_dynamic_patch=int(pre.get("max_patches", 12)),
        img_context_token_id=int(cfg.image_token_id),
        eval_max_dynamic_patch=native.get(EVAL_TILES_KEY),
        extra={MERGED_ADAPTERS_KEY: list(merged)} if merged else {},
    )


def ours_config_to_native(config: ModelConfig) -> dict:
    """ModelConfig → the config.json of transformers' InternVLForConditionalGeneration."""
    from transformers import InternVLConfig

    from tilevl.model.llm import build_llm_config

    if config.ps_version != "v2":
        raise CheckpointError(
            "transformers' InternVL implements pixel shuffle v2 only; a ps_version v1 model "
            "(InternVL-Chat-V1-2) cannot be exported to the native layout"
        )
    if config.img_context_token_id is None:
        raise CheckpointError("the native layout needs image_token_id: set img_context_token_id")
    text = build_llm_config(config.llm).to_dict()
    tie = bool(text.get("tie_word_embeddings", False))
    v = config.vision
    vision = {
        "hidden_size": v.hidden_size, "num_hidden_layers": v.num_hidden_layers,
        "num_attention_heads": v.num_attention_heads, "intermediate_size": v.intermediate_size,
        "image_size": [config.image_size, config.image_size], "patch_size": [v.patch_size, v.patch_size],
        "num_channels": v.num_channels, "attention_bias": v.qkv_bias, "use_qk_norm": v.qk_normalization,
        "norm_type": v.norm_type, "layer_norm_eps": v.layer_norm_eps,
        "layer_scale_init_value": v.initializer_factor, "hidden_act": v.hidden_act,
        "model_type": "internvl_vision",
    }
    native = InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=config.img_context_token_id,
        image_seq_length=config.num_image_token,
        downsample_ratio=config.downsample_ratio,
        vision_feature_layer=config.select_layer,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=tie,
    ).to_dict()
    native["architectures"] = [_NATIVE_ARCH]
    if config.template:
        native["template"] = config.template  # ignored by transformers, kept for us
    if config.extra.get(MERGED_ADAPTERS_KEY):
        native[MERGED_ADAPTERS_KEY] = list(config.extra[MERGED_ADAPTERS_KEY])
    if config.eval_max_dynamic_patch is not None:
        native[EVAL_TILES_KEY] = config.eval_max_dynamic_patch  # ignored by transformers
    return native


def _mean_std(config: ModelConfig) -> tuple[list[float], list[float]]:
    pre = config.preprocessor or {}
    return list(pre.get("image_mean", _IMAGENET_MEAN)), list(pre.get("image_std", _IMAGENET_STD))


def official_preprocessor_config(config: ModelConfig) -> dict:
    """preprocessor_config.json as the official checkpoints ship it (CLIPImageProcessor keys)."""
    out = dict(config.preprocessor or {})
    mean, std = _mean_std(config)
    out.update({
        "crop_size": config.image_size, "size": config.image_size, "do_center_crop": True,
        "do_normalize": True, "do_resize": True, "image_mean": mean, "image_std": std, "resample": 3,
    })
    out.setdefault("image_processor_type", "CLIPImageProcessor")
    return out


def native_preprocessor_config(config: ModelConfig) -> dict:
    """The preprocessing settings in the keys transformers' GotOcr2 image processor reads."""
    mean, std = _mean_std(config)
    return {
        "image_processor_type": "GotOcr2ImageProcessorFast",
        "crop_to_patches": config.dynamic_image_size,
        "min_patches": config.min_dynamic_patch,
        "max_patches": config.max_dynamic_patch,
        "size": {"height": config.image_size, "width": config.image_size},
        "do_resize": True, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": mean, "image_std": std, "do_convert_rgb": True,
    }
