"""The typed training config: one dataclass mirroring upstream's fine-tuning arguments.

`load_train_config(yaml, overrides)` reads a YAML file and `--key value` overrides; errors name the file:line or the flag.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from tilevl.errors import ConfigError

# Upstream's `wrap_backbone_lora` targets (internvl_chat/internvl/model/internvl_chat/
# modeling_internvl_chat.py); the LLM's targets depend on its architecture, see lora.py.
VISION_LORA_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


@dataclass
class TrainConfig:
    """Everything one fine-tuning run needs. Names follow upstream's `internvl_chat_finetune.py`.

    Paths are used as written (relative ones against the working directory, as upstream's
    shell scripts do). Ranks of 0 mean "no LoRA".
    """

    # ---- what to train, on what, where to write --------------------------------------------
    model: str = ""  # a checkpoint folder, or a preset name for random initialisation
    meta_path: str = ""  # upstream's meta JSON (or one .jsonl annotation file)
    output_dir: str = ""
    eval_meta_path: str | None = None
    template: str | None = None  # upstream's --conv_style; default: the checkpoint's
    # ---- what is trainable ------------------------------------------------------------------
    freeze_llm: bool = False
    freeze_mlp: bool = False
    freeze_backbone: bool = False
    unfreeze_vit_layers: int = 0  # upstream: layers[n:] trainable when n != 0 (-2: last two)
    unfreeze_lm_head: bool = False
    use_llm_lora: int = 0  # LoRA rank on the LLM
    use_backbone_lora: int = 0  # LoRA rank on InternViT
    lora_alpha: float | None = None  # None: 2 × rank, as upstream
    lora_dropout: float = 0.05
    llm_lora_targets: list[str] | None = None  # None: upstream's list for the LLM's architecture
    # MoE LLMs: also LoRA on the experts' fused 3-D weights (PEFT target_parameters, rank
    # use_llm_lora per expert); needs use_llm_lora > 0 and an LLM with stacked experts.
    llm_lora_experts: bool = False
    vision_lora_targets: list[str] = field(default_factory=lambda: list(VISION_LORA_TARGETS))
    # ---- model and data ---------------------------------------------------------------------
    grad_checkpoint: bool = True
    drop_path_rate: float = 0.0
    max_seq_length: int = 2048
    max_dynamic_patch: int | None = None  # None: the checkpoint's
    strict: bool = False  # raise on the first bad record instead of skipping it
    # Train on records whose image/video path leaves their source's root (absolute paths
    # elsewhere, ../); refused as "outside_root" by default.
    allow_outside_root: bool = False
    # Sorts samples by length inside groups of 50 batches: less padding, but where length
    # tracks the kind of sample (templated data) each batch is one kind, which can stall
    # learning (see configs/tilevl_tiny.yaml). Off by default.
    group_by_length: bool = False
    pack_to_tokens: int = 0  # > 0: pack samples into rows of this many tokens
    pack_attention: Literal["block_mask", "position_ids"] = "block_mask"
    # InternVL 2.5's loss reweighting (tilevl.train.loss): each token of a sample with x
    # supervised tokens weighs 1 (token), x^-0.5 (square) or x^-1 (sample).
    loss_reduction: Literal["token", "square", "sample"] = "token"
    dataloader_num_workers: int = 0
    # ---- optimisation -----------------------------------------------------------------------
    learning_rate: float = 1e-5
    # Per-part learning rates (None: learning_rate), as LLaVA's mm_projector_lr: the vision
    # tower (InternViT and its LoRA) and the projector (mlp1); the scheduler scales each alike.
    vision_learning_rate: float | None = None
    mlp_learning_rate: float | None = None
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.05
    max_grad_norm: float = 1.0
    num_train_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides num_train_epochs
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"  # autocast dtype; weights stay load_dtype
    load_dtype: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"
    seed: int = 42
    # ---- checkpoints, logging, launch -------------------------------------------------------
    save_steps: int = 200
    save_total_limit: int | None = 2
    eval_steps: int | None = None
    logging_steps: int = 1
    report_to: list[str] = field(default_factory=list)  # e.g. [tensorboard]
    deepspeed: str | None = None  # a DeepSpeed JSON (configs/deepspeed/zero_stage*_config.json)
    fsdp: str = ""  # transformers' --fsdp, e.g. "full_shard auto_wrap"; or use accelerate launch
    fsdp_config: str | None = None
    ddp_backend: str | None = None  # None: nccl on GPUs, gloo on CPU
    use_cpu: bool = False
    save_merged: bool = True  # LoRA runs: also write the adapter folded into a full checkpoint
    resume: bool = False  # continue from the last complete checkpoint in output_dir
    overwrite_output_dir: bool = False

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Cross-field rules (types are checked when the config is read)."""
        rules = [
            (self.use_llm_lora >= 0, "use_llm_lora", "must be a rank ≥ 0"),
            (self.use_backbone_lora >= 0, "use_backbone_lora", "must be a rank ≥ 0"),
            (not self.llm_lora_experts or self.use_llm_lora > 0, "llm_lora_experts",
             "needs use_llm_lora > 0 (the experts' LoRA rank)"),
            # PEFT's ParamWrapper folds the delta into the weight, so no dropout on its input.
            (not self.llm_lora_experts or self.lora_dropout == 0, "llm_lora_experts",
             f"needs lora_dropout: 0 (PEFT's LoRA on 3-D parameters has no dropout; got {self.lora_dropout})"),
            (0 <= self.lora_dropout < 1, "lora_dropout", "must be in [0, 1)"),
            (0 <= self.drop_path_rate < 1, "drop_path_rate", "must be in [0, 1)"),
            (self.max_seq_length >= 1, "max_seq_length", "must be ≥ 1"),
            (self.max_dynamic_patch is None or self.max_dynamic_patch >= 1, "max_dynamic_patch",
             "must be ≥ 1"),
            (self.pack_to_tokens >= 0, "pack_to_tokens", "must be ≥ 0 (0 = no packing)"),
            (not (self.pack_to_tokens and self.group_by_length), "pack_to_tokens",
             "and group_by_length exclude each other (packing already groups by length)"),
            (self.learning_rate > 0, "learning_rate", "must be > 0"),
            (self.vision_learning_rate is None or self.vision_learning_rate > 0,
             "vision_learning_rate", "must be > 0 (or unset: learning_rate)"),
            (self.mlp_learning_rate is None or self.mlp_learning_rate > 0,
             "mlp_learning_rate", "must be > 0 (or unset: learning_rate)"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio", "must be in [0, 1)"),
            (self.per_device_train_batch_size >= 1, "per_device_train_batch_size", "must be ≥ 1"),
            (self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", "must be ≥ 1"),
            (self.save_steps >= 1, "save_steps", "must be ≥ 1"),
            (self.logging_steps >= 1, "logging_steps", "must be ≥ 1"),
        ]
        for ok, key, why in rules:
            if not ok:
                raise ConfigError(f"{key}: {why} (got {getattr(self, key)!r})")

    def require_paths(self) -> None:
        """The fields a run cannot start without."""
        for key in ("model", "meta_path", "output_dir"):
            if not getattr(self, key):
                raise ConfigError(f"{key}: is required (set it in the YAML or pass --{key} VALUE)")

    @property
    def uses_lora(self) -> bool:
        return bool(self.use_llm_lora or self.use_backbone_lora)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---- reading and checking values ----------------------------------------------------------------
_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            type(None): "null"}.get(tp, str(tp))


def coerce(key: str, value: Any, tp: Any = None, *, from_text: bool = False) -> Any:
    """Check `value` against field `key`'s type; returns it converted, or raises TypeError.

    Args:
        key: a TrainConfig field (for nested list items, the field's item type is in `tp`).
        value: what YAML (or the command line, parsed as YAML) gave.
        tp: the type to check against (default: the field's).
        from_text: the value came from a command line, so "1e-5" may still be a float.
    """
    tp = _HINTS[key] if tp is None else tp
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(key, value, arg, from_text=from_text)
            except TypeError:
                continue
        raise TypeError(_describe(tp))
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise TypeError(_describe(tp))
    if origin is list:
        if isinstance(value, str) and from_text:
            value = [v for v in value.split(",") if v]  # --report_to tensorboard,wandb
        if not isinstance(value, list):
            raise TypeError(_describe(tp))
        return [coerce(key, v, typing.get_args(tp)[0], from_text=from_text) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(_describe(tp))
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError(_describe(tp))
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise TypeError(_describe(tp))
    if tp is str:
        if isinstance(value, str):
            return value
        if from_text or isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # a preset or folder named "1", a path read as a number
        raise TypeError(_describe(tp))
    raise TypeError(_describe(tp))


def _unknown(key: str) -> str:
    close = difflib.get_close_matches(key, _FIELDS, n=1)
    return f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def _set(values: dict[str, Any], key: str, value: Any, where: str, from_text: bool) -> None:
    if key not in _FIELDS:
        raise ConfigError(f"{where}: {_unknown(key)}")
    try:
        values[key] = coerce(key, value, from_text=from_text)
    except TypeError as exc:
        raise ConfigError(f"{where}: {key} must be {exc}, got {value!r} "
                          f"({type(value).__name__})") from None


def read_yaml(path: str | Path) -> dict[str, tuple[Any, int]]:
    """Top-level `key: value` pairs of a YAML file with the 1-based line of each key.

    Returns:
        {key: (value, line)}.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark, context = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        started = (f"; in the {exc.context.removeprefix('while parsing a ')} started on line "
                   f"{context.line + 1}" if context is not None and exc.context else "")
        raise ConfigError(f"{path}{line}: invalid YAML ({getattr(exc, 'problem', exc)}{started})"
                          ) from None
    if root is None:
        return {}
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{path}:{root.start_mark.line + 1}: the config must be a mapping "
                          "of key: value")
    out: dict[str, tuple[Any, int]] = {}
    for key_node, value_node in root.value:
        line = key_node.start_mark.line + 1
        key = key_node.value
        if key in out:
            raise ConfigError(f"{path}:{line}: key {key!r} is given twice (first on line "
                              f"{out[key][1]})")
        value = yaml.load(yaml.serialize(value_node), Loader=yaml.SafeLoader)
        out[key] = (value, line)
    return out


def parse_overrides(argv: list[str]) -> list[tuple[str, Any, str]]:
    """`--key value`, `--key=value` and bare `--flag` (= true) into (key, value, flag).

    Values are parsed as YAML scalars ("true", "3", "[a, b]"); dashes in keys become
    underscores (`--learning-rate` = `--learning_rate`).
    """
    import yaml

    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}: overrides are --key value")
        flag, eq, text = arg.partition("=")
        key = flag[2:].replace("-", "_")
        if not eq:
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                text, i = argv[i + 1], i + 1
            elif key in _FIELDS and _HINTS[key] is bool:
                text = "true"
            else:
                raise ConfigError(f"{flag}: needs a value")
        try:
            value = yaml.safe_load(text) if text != "" else ""
        except yaml.YAMLError:
            value = text
        out.append((key, value, flag))
        i += 1
    return out


def load_train_config(path: str | Path | None = None, overrides: list[str] | None = None,
                      **values: Any) -> TrainConfig:
    """Build a TrainConfig from a YAML file, command-line overrides and keyword values.

    Args:
        path: the YAML file (top-level `key: value`), or None.
        overrides: `["--key", "value", "--flag", ...]`, applied after the file.
        values: more field values (applied last; for tests and Python callers).
    Returns:
        The checked config.
    Raises:
        ConfigError: unknown key or wrong type, naming `file:line` or `--key`.
    """
    merged: dict[str, Any] = {}
    places: dict[str, str] = {}  # where each value was last set, for cross-field errors
    if path is not None:
        for key, (value, line) in read_yaml(path).items():
            _set(merged, key, value, f"{path}:{line}", from_text=False)
            places[key] = f"{path}:{line}"
    for key, value, flag in parse_overrides(list(overrides or [])):
        _set(merged, key, value, flag, from_text=True)
        places[key] = flag
    for key, value in values.items():
        _set(merged, key, value, key, from_text=False)
        places.pop(key, None)
    try:
        return TrainConfig(**merged)
    except ConfigError as exc:
        key = str(exc).split(":", 1)[0]
        where = places.get(key) or (str(path) if path is not None else None)
        raise ConfigError(f"{where}: {exc}" if where else str(exc)) from None
