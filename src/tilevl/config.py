"""Typed configs of the model, read from and written to the official `config.json`.

`ModelConfig` mirrors InternVL's `InternVLChatConfig` (a `vision_config`, an `llm_config` and
the input-pipeline settings). Unknown keys are kept, so a config round-trips without loss.
This module does not import torch.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tilevl.errors import ConfigError

_OFFICIAL_ARCH = "InternVLChatModel"

# What a key absent from an official config.json means: the defaults of upstream's
# InternVLChatConfig.__init__ and InternVisionConfig.__init__ (OpenGVLab/InternVL,
# internvl_chat/internvl/model/internvl_chat/configuration_internvl_chat.py and
# configuration_intern_vit.py), i.e. what the checkpoint's own code assumed. The one source of
# defaults: the dataclasses below, the image settings and the loader all read them from here.
UPSTREAM_CHAT_DEFAULTS: dict[str, Any] = {
    "use_backbone_lora": 0, "use_llm_lora": 0, "pad2square": False, "select_layer": -1,
    "force_image_size": None, "downsample_ratio": 0.5, "template": None,
    "dynamic_image_size": False, "use_thumbnail": False, "ps_version": "v1",
    "min_dynamic_patch": 1, "max_dynamic_patch": 6,
}
# InternVisionConfig's defaults describe InternViT-6B (RMSNorm, qk-norm, no qkv bias). Every
# layer has the layer scales ls1/ls2 (initialised to initializer_factor); no key turns them off.
UPSTREAM_VISION_DEFAULTS: dict[str, Any] = {
    "num_channels": 3, "patch_size": 14, "image_size": 224, "qkv_bias": False,
    "hidden_size": 3200, "num_attention_heads": 25, "intermediate_size": 12800,
    "qk_normalization": True, "num_hidden_layers": 48, "hidden_act": "gelu",
    "norm_type": "rms_norm", "layer_norm_eps": 1e-6, "dropout": 0.0, "drop_path_rate": 0.0,
    "attention_dropout": 0.0, "initializer_range": 0.02, "initializer_factor": 0.1,
}
_V, _C = UPSTREAM_VISION_DEFAULTS, UPSTREAM_CHAT_DEFAULTS


def _split_known(cls, data: dict, where: str) -> tuple[dict, dict]:
    """Split `data` into dataclass fields of `cls` and the rest; type-check the fields."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)} - {"extra", "vision", "llm"}
    known = {k: v for k, v in data.items() if k in names}
    return known, dict(data)


def _emit(obj, original: dict, skip: tuple[str, ...] = ()) -> dict:
    """Write the fields of `obj` over its original dict, keeping the original's key order.

    A field absent from the original is written only when it differs from its default, so
    an official file read and written back is unchanged.
    """
    out = dict(original)
    fields = [f for f in dataclasses.fields(obj) if f.name not in ("extra", *skip)]
    # Extra keys alone (say the merged-adapter record of a config read from the native
    # layout) do not make an official file: such a config is written in full.
    from_file = any(f.name in original for f in fields)
    for f in fields:
        value = getattr(obj, f.name)
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.name in original or not from_file or value != default:
            out[f.name] = value
    return out


@dataclass
class VisionConfig:
    """InternViT settings, named as in the official `vision_config` (InternVisionConfig).

    Defaults are upstream's (InternViT-6B): a `vision_config` without a key means that value.
    """

    hidden_size: int = _V["hidden_size"]
    num_hidden_layers: int = _V["num_hidden_layers"]
    num_attention_heads: int = _V["num_attention_heads"]
    intermediate_size: int = _V["intermediate_size"]
    image_size: int = _V["image_size"]
    patch_size: int = _V["patch_size"]
    num_channels: int = _V["num_channels"]
    qkv_bias: bool = _V["qkv_bias"]
    qk_normalization: bool = _V["qk_normalization"]
    norm_type: str = _V["norm_type"]  # "layer_norm" (300M) or "rms_norm" (6B)
    layer_norm_eps: float = _V["layer_norm_eps"]
    initializer_factor: float = _V["initializer_factor"]  # initial value of the layer scales ls1/ls2
    initializer_range: float = _V["initializer_range"]
    drop_path_rate: float = _V["drop_path_rate"]
    attention_dropout: float = _V["attention_dropout"]
    dropout: float = _V["dropout"]
    hidden_act: str = _V["hidden_act"]
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.image_size, (list, tuple)):
            self.image_size = int(self.image_size[0])
        if isinstance(self.patch_size, (list, tuple)):
            self.patch_size = int(self.patch_size[0])
        if self.norm_type not in ("layer_norm", "rms_norm"):
            raise ConfigError(
                f"vision_config.norm_type must be 'layer_norm' or 'rms_norm', got {self.norm_type!r}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"vision_config.hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"vision_config.image_size {self.image_size} is not a multiple of "
                f"patch_size {self.patch_size}"
            )

    @classmethod
    def from_dict(cls, data: dict) -> VisionConfig:
        known, original = _split_known(cls, data, "vision_config")
        return cls(**known, extra=original)

    def to_dict(self) -> dict:
        out = _emit(self, self.extra)
        out.setdefault("architectures", ["InternVisionModel"])
        out.setdefault("model_type", "intern_vit_6b")
        return out


@dataclass
class ModelConfig:
    """The whole InternVL model: vision tower, projector settings, LLM and input pipeline.

    `llm` is the LLM's own config.json as a dict (built by transformers, see model/llm.py).
    """

    vision: VisionConfig = field(default_factory=VisionConfig)
    llm: dict = field(default_factory=dict)
    # Upstream's defaults (UPSTREAM_CHAT_DEFAULTS): a config.json without a key means these.
    template: str | None = _C["template"]
    select_layer: int = _C["select_layer"]
    force_image_size: int | None = _C["force_image_size"]
    downsample_ratio: float = _C["downsample_ratio"]
    ps_version: str = _C["ps_version"]
    dynamic_image_size: bool = _C["dynamic_image_size"]
    use_thumbnail: bool = _C["use_thumbnail"]
    min_dynamic_patch: int = _C["min_dynamic_patch"]
    max_dynamic_patch: int = _C["max_dynamic_patch"]
    pad2square: bool = _C["pad2square"]
    use_backbone_lora: int = _C["use_backbone_lora"]
    use_llm_lora: int = _C["use_llm_lora"]
    # Not in the official file; recorded once known so a folder without a tokenizer works.
    img_context_token_id: int | None = None
    # Not in the official file either: the tile budget this model is evaluated with (what
    # `tilevl eval` uses when no --max-tiles is given, before the benchmark's default). A
    # model trained on few tiles reads more of them poorly, and max_dynamic_patch is the
    # training budget, which official checkpoints set higher than their evaluation budgets.
    eval_max_dynamic_patch: int | None = None
    # The checkpoint's preprocessor_config.json (image mean/std), kept beside config.json.
    preprocessor: dict | None = field(default=None, repr=False, compare=False)
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.ps_version not in ("v1", "v2"):
            raise ConfigError(f"ps_version must be 'v1' or 'v2', got {self.ps_version!r}")
        if not 0 < self.downsample_ratio <= 1:
            raise ConfigError(f"downsample_ratio must be in (0, 1], got {self.downsample_ratio}")
        if self.select_layer >= 0 or -self.select_layer > self.vision.num_hidden_layers:
            raise ConfigError(
                f"select_layer must be in [-{self.vision.num_hidden_layers}, -1], "
                f"got {self.select_layer}"
            )
        budget = self.eval_max_dynamic_patch
        if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool)
                                   or budget < self.min_dynamic_patch):
            raise ConfigError(f"eval_max_dynamic_patch must be an int >= min_dynamic_patch "
                              f"({self.min_dynamic_patch}) or null, got {budget!r}")
        grid = self.image_size // self.vision.patch_size
        if (grid * self.downsample_ratio) % 1:
            raise ConfigError(
                f"the patch grid {grid}x{grid} ({self.image_size}px / patch "
                f"{self.vision.patch_size}) cannot be pixel-shuffled by {self.downsample_ratio}"
            )

    # ---- derived numbers ----------------------------------------------------------------
    @property
    def image_size(self) -> int:
        """Side of one tile in pixels (`force_image_size` wins, as upstream)."""
        return int(self.force_image_size or self.vision.image_size)

    @property
    def num_image_token(self) -> int:
        """Visual tokens per tile after pixel shuffle (256 for 448px, patch 14, ratio 0.5)."""
        grid = self.image_size // self.vision.patch_size
        return int(grid * grid * self.downsample_ratio**2)

    @property
    def llm_hidden_size(self) -> int:
        return int(self.llm["hidden_size"])

    @property
    def llm_architecture(self) -> str:
        archs = self.llm.get("architectures") or []
        return archs[0] if archs else str(self.llm.get("model_type", "?"))

    @property
    def num_llm_layers(self) -> int:
        return int(self.llm["num_hidden_layers"])

    # ---- (de)serialisation --------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """Read the official `config.json` dict (InternVLChatConfig layout)."""
        known, original = _split_known(cls, data, "config.json")
        if "vision_config" not in data or "llm_config" not in data:
            missing = [k for k in ("vision_config", "llm_config") if k not in data]
            raise ConfigError(f"config.json lacks {', '.join(missing)} (InternVLChatConfig layout)")
        llm = copy.deepcopy(data["llm_config"])
        if not isinstance(llm, dict) or "hidden_size" not in llm:
            raise ConfigError("config.json: llm_config must be an object with a hidden_size")
        vision = VisionConfig.from_dict(copy.deepcopy(data["vision_config"]))
        known = {k: v for k, v in known.items() if k not in ("vision_config", "llm_config")}
        return cls(vision=vision, llm=llm, **known, extra=original)

    def to_dict(self) -> dict:
        """The official `config.json` dict; an unchanged config reproduces its source."""
        out = _emit(self, self.extra, skip=("vision", "llm", "preprocessor"))
        out["vision_config"] = self.vision.to_dict()
        out["llm_config"] = copy.deepcopy(self.llm)
        out.setdefault("architectures", [_OFFICIAL_ARCH])
        out.setdefault("model_type", "internvl_chat")
        for name in ("img_context_token_id", "eval_max_dynamic_patch"):  # ours, unset: absent
            if getattr(self, name) is None:
                out.pop(name, None)
        return out

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named preset (`internvl-chat-v1-5`, `internvl2-1b`, `tiny` …) with overrides.

        Args:
            name: a key of `tilevl.presets.PRESETS` (case-insensitive).
            overrides: top-level fields to replace, e.g. `max_dynamic_patch=6`.
        """
        from tilevl.presets import get_preset

        cfg = cls.from_dict(get_preset(name))
        return cfg.replace(**overrides) if overrides else cfg

    def replace(self, **changes: Any) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; known: {sorted(names)}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        """Read `config.json` (a file or the folder holding it)."""
        path = Path(path)
        file = path / "config.json" if path.is_dir() else path
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{file}: no such file") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{file}: line {exc.lineno}: invalid JSON ({exc.msg})") from None
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{file}: {exc}") from None

    def save(self, path: str | Path) -> None:
        path = Path(path)
        file = path / "config.json" if path.is_dir() else path
        file.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", "utf-8")
