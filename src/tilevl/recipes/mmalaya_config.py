"""The MMAlaya2 recipe's settings: `MMAlayaConfig` (the keys of configs/recipes/mmalaya_*.yaml)
and `load_mmalaya_config`, which reads a YAML (+ the quick overlay) and names file:line on errors.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tilevl.errors import ConfigError

BENCH = "minibench"
# Settings that do not change any artefact: a resumed run may differ in these.
_RUNTIME_KEYS = ("device", "dtype", "progress", "eval_batch_size", "run_dir", "publish")
PEFT_PREFIX = "peft_"  # merge_methods "peft_ties" …: PEFT's add_weighted_adapter (merge --mode peft-lora)


@dataclass
class MMAlayaConfig:
    """One recipe run (the keys of configs/mmalaya_*.yaml).

    Attributes:
        model: the base, a checkpoint folder or a preset (a preset is saved once to
            `run_dir/base` so every step sees the same weights).
        run_dir: where every step writes.
        device, dtype: where evaluation and CoT sampling run (training: the `train` keys).
        seed: seeds MiniBench, sampling and the preset's weights.
        categories: MiniBench categories (or L2 groups) of the benchmark; None: all 21.
        bench_size: MiniBench size (dev = 10 %, test = 40 % of its multiple-choice items).
        weakest: K, how many of the base's weakest dev categories get a LoRA.
        train_categories: train these instead of the K weakest.
        data_mode: "cot" (CoT consistency only), "plain" (generated items with their gold
            letter) or "auto" (CoT when at least `cot_min_records` survive, else plain).
        train_items: multiple-choice items per category in its targeted training split.
        cot_samples, cot_temperature, cot_max_new_tokens: the CoT sampling.
        cot_min_records: the least CoT records "auto" accepts for a category.
        plain_answers: how the plain data answers multiple choice: "letter" (the gold
            letter) or "text" (the chosen option's text, for a base that answers in words,
            like tilevl-tiny; `tilevl.minibench.formats.worded_mcq_file`) or "auto" (as
            the base answered its dev questions: letters when most replies are one letter).
        train_config: a `tilevl train` YAML the `train` values are layered on (optional).
        train: TrainConfig values (use_llm_lora, learning_rate, max_steps, …).
        merge_methods: merge methods compared (the first is the recipe's, TIES): dense
            methods of `tilevl.merge.METHODS` on the task vectors B·A·scale, or "peft_" + a
            PEFT combination_type ("peft_ties": PEFT's own LoRA-TIES on the A and B factors).
        merge_density, merge_lam: TIES/DARE/task-arithmetic settings (linear ignores them);
            DARE's drop masks are seeded with `seed`.
        eval_split: the MiniBench split of the final table (selection always uses dev).
        eval_categories: categories the base and the merges are evaluated on besides the
            targeted ones (None: every category of the benchmark). Each LoRA alone is
            evaluated on its own category only (the ceiling).
        bootstrap_resamples: paired-bootstrap resamples behind the 95 % intervals.
        publish: copy summary.json, table.md and chart.png into this folder at the end.
        eval_batch_size, eval_max_new_tokens, max_tiles: evaluation settings.
        tts_samples: test-time scaling: CoT + majority vote over k samples (0: off).
        tts_models: which models get the test-time-scaling run ("base" or a method name).
        tts_max_new_tokens, tts_temperature: its generation settings.
        progress: show progress bars.
    """

    model: str = "tilevl-tiny"
    run_dir: str = "runs/mmalaya"
    device: str = "cpu"
    dtype: str | None = None
    seed: int = 0
    categories: list[str] | None = None
    bench_size: int = 400
    weakest: int = 3
    train_categories: list[str] | None = None
    data_mode: Literal["auto", "cot", "plain"] = "auto"
    train_items: int = 100
    cot_samples: int = 5
    cot_temperature: float = 0.7
    cot_max_new_tokens: int = 512
    cot_min_records: int = 20
    plain_answers: Literal["letter", "text", "auto"] = "letter"
    train_config: str | None = None
    train: dict = field(default_factory=dict)
    merge_methods: list[str] = field(default_factory=lambda: [
        "ties", "dare_ties", "linear", "task_arithmetic", "peft_ties"])
    merge_density: float = 0.2
    merge_lam: float = 1.0
    eval_split: Literal["dev", "test"] = "test"
    eval_categories: list[str] | None = None
    bootstrap_resamples: int = 2000
    publish: str | None = None
    eval_batch_size: int = 8
    eval_max_new_tokens: int | None = None
    max_tiles: int | None = None
    tts_samples: int = 5
    tts_models: list[str] = field(default_factory=lambda: ["base", "ties"])
    tts_max_new_tokens: int | None = None
    tts_temperature: float = 0.7
    progress: bool = True

    def check(self) -> None:
        """Cross-field rules, naming the key."""
        from tilevl.merge import COMBINATION_TYPES, METHODS

        if self.weakest < 1 and not self.train_categories:
            raise ConfigError(f"weakest: must be >= 1, got {self.weakest}")
        known = [*METHODS, *(PEFT_PREFIX + t for t in COMBINATION_TYPES)]
        for method in self.merge_methods:
            if method not in known:
                raise ConfigError(f"merge_methods: unknown {method!r}; known: {', '.join(known)}")
        if self.bootstrap_resamples < 100:
            raise ConfigError(f"bootstrap_resamples: must be >= 100, got {self.bootstrap_resamples}")
        for name in self.tts_models:
            if name != "base" and name not in self.merge_methods:
                raise ConfigError(f"tts_models: {name!r} is neither 'base' nor in merge_methods")
        if self.bench_size < 10 or self.train_items < 1 or self.cot_samples < 1:
            raise ConfigError("bench_size must be >= 10, train_items and cot_samples >= 1")


# ---- reading the YAML ---------------------------------------------------------------------------
_HINTS = typing.get_type_hints(MMAlayaConfig)
_FIELDS = {f.name for f in dataclasses.fields(MMAlayaConfig)}


def _conforms(value: Any, tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return value in args
    if origin is list:
        return isinstance(value, list) and all(_conforms(v, args[0]) for v in value)
    if args and type(None) in args:  # X | None
        return value is None or any(_conforms(value, a) for a in args if a is not type(None))
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _apply(values: dict, path: str | Path, lines: dict) -> None:
    for key, (value, line) in lines.items():
        where = f"{path}:{line}" if line else f"{path} {key}"
        if key not in _FIELDS:
            close = difflib.get_close_matches(key, _FIELDS, n=1)
            raise ConfigError(f"{where}: unknown key {key!r}"
                              + (f" (did you mean {close[0]!r}?)" if close else ""))
        if isinstance(value, str) and _HINTS[key] is float:
            try:  # PyYAML reads 1e-4 (no dot) as a string
                value = float(value)
            except ValueError:
                pass
        if not _conforms(value, _HINTS[key]):
            raise ConfigError(f"{where}: {key} must be {_HINTS[key]}, got {value!r}")
        if key == "train" and isinstance(values.get("train"), dict):
            value = {**values["train"], **value}  # an overlay adds to the training keys
        values[key] = value


def load_mmalaya_config(path: str | Path | None = None, quick: str | Path | bool = False,
                        **overrides: Any) -> MMAlayaConfig:
    """Read a recipe YAML, optionally overlay the quick settings, then keyword overrides.

    Args:
        path: configs/recipes/mmalaya_mini.yaml or your own.
        quick: True overlays `mmalaya_quick.yaml` from `path`'s folder; a path overlays
            that file. The overlay's `train` keys are added to the config's.
        overrides: field values applied last (`model="tiny"`, `run_dir=...`).

    Returns:
        The checked config.

    Raises:
        ConfigError: naming `file:line` and the key.
    """
    from tilevl.train.args import read_yaml

    values: dict[str, Any] = {}
    if path is not None:
        _apply(values, path, read_yaml(path))
    if quick:
        folder = Path(path).parent if path is not None else Path("configs")
        overlay = Path(quick) if not isinstance(quick, bool) else folder / "mmalaya_quick.yaml"
        _apply(values, overlay, read_yaml(overlay))
    _apply(values, "override", {k: (v, 0) for k, v in overrides.items() if v is not None})
    config = MMAlayaConfig(**values)
    config.check()
    return config


__all__ = ["BENCH", "PEFT_PREFIX", "MMAlayaConfig", "load_mmalaya_config"]
