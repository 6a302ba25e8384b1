"""Turn what a user typed as MODEL (a folder or a preset name) into a model and tokenizer.

A folder, or the name of a model shipped in tilevl.assets, is loaded as a checkpoint; a preset
name builds random weights with a small byte-level tokenizer, which is only good for smoke tests
and benchmarks (we say so).
"""

from __future__ import annotations

import difflib
import os
import sys
from pathlib import Path

import torch

from tilevl.errors import ConfigError

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def parse_dtype(name: str | None) -> torch.dtype | None:
    """'bf16' → torch.bfloat16 …; None or 'auto' keeps the checkpoint's dtype."""
    if name in (None, "auto"):
        return None
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)} or 'auto'") from None


def add_quantize_argument(parser) -> None:
    """`--quantize int8` for every verb that loads a model to run it (chat, serve, web, eval)."""
    from tilevl.checkpoint.quantize import QUANTIZE_MODES

    parser.add_argument("--quantize", default=None, choices=QUANTIZE_MODES,
                        help="int8: weight-only int8 LLM linear layers and LM head (half the weight "
                             "bytes read per decoded token: faster single-stream decode); default: off")


def is_model_spec(spec: str) -> bool:
    """True when `spec` names a model: a folder, a shipped model or a preset."""
    from tilevl.assets import asset_path
    from tilevl.presets import canonical_preset_name, preset_names

    return (Path(spec).is_dir() or asset_path(spec) is not None
            or canonical_preset_name(spec) in preset_names())


# Names start like this more often than prompts do: "internvl2-8b", "tilevl-tinyy" ...
_MODEL_PREFIXES = ("internvl", "mini-internvl", "tilevl")


def known_model_names() -> list[str]:
    """The names MODEL may be besides a folder: shipped models, then presets."""
    from tilevl.assets import EMBEDDED_MODELS
    from tilevl.presets import preset_names

    return list(dict.fromkeys([*EMBEDDED_MODELS, *preset_names()]))


def looks_like_model(word: str) -> bool:
    """True when a word the user typed where MODEL may stand reads as a model, not a prompt.

    One word (no spaces) that holds a path separator, '-' or '_', starts with '.', '~' or a
    known family prefix, or is close to a known name ("tiyn"). `tilevl chat hi` is a prompt;
    `tilevl chat tilevl-tinyy hi` names a model that does not exist.
    """
    if not word or any(c.isspace() for c in word):
        return False
    lower = word.lower()
    return (any(c in word for c in "/\\-_") or word.startswith((".", "~"))
            or lower.startswith(_MODEL_PREFIXES)
            or bool(difflib.get_close_matches(lower, known_model_names(), n=1, cutoff=0.75)))


def suggest_models(spec: str, n: int = 3) -> list[str]:
    """Known names and existing folders that `spec` may be a misspelling of (difflib)."""
    candidates = known_model_names()
    path = Path(os.path.expanduser(spec))
    parent = path.parent if str(path.parent) not in ("", ".") or os.sep in spec else Path(".")
    try:
        folders = sorted(p for p in parent.iterdir() if p.is_dir())[:500]
    except OSError:
        folders = []
    # compare like with like: "runs/tny" with "runs/tiny", a bare name with a bare name
    candidates += [str(f) if parent != Path(".") else f.name for f in folders]
    return difflib.get_close_matches(spec if os.sep in spec else spec.lower(), candidates, n=n,
                                     cutoff=0.6)


def unknown_model_message(spec: str) -> str:
    """"MODEL 'x' is neither …; did you mean …?" for a MODEL that names nothing."""
    close = suggest_models(spec)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return (f"MODEL {spec!r} is neither a checkpoint folder nor a preset or shipped model"
            f"{hint} (known names: {', '.join(known_model_names())})")


def open_model(spec: str, *, dtype: str | None = None, device: str = "cpu", quiet: bool = False,
               quantize: str | None = None):
    """Load MODEL for the CLI, the server and the evaluation runner.

    Args:
        spec: a checkpoint folder (official or transformers-native layout), the name of a
            model shipped with the package (`tilevl-tiny`, see `tilevl.assets`) or a preset name.
        dtype: "bf16", "fp16", "fp32" or None (keep the stored dtype).
        device: "cpu", "cuda", "cuda:1" …
        quantize: "int8" for weight-only int8 LLM layers (see `tilevl.checkpoint.quantize`).
    Returns:
        (model, tokenizer).
    """
    from tilevl.checkpoint.loader import load_model
    from tilevl.checkpoint.tokenizer import build_bpe_tokenizer, img_context_token_id, load_tokenizer
    from tilevl.model.vlm import build_model
    from tilevl.presets import canonical_preset_name, preset_names

    from tilevl.assets import asset_path

    from tilevl.checkpoint.quantize import check_quantize, quantize_model

    torch_dtype = parse_dtype(dtype)
    check_quantize(quantize)  # refuse a bad value before loading anything
    path = Path(spec)
    if not path.is_dir() and (embedded := asset_path(spec)) is not None:
        path = embedded  # a model shipped with the package (tilevl-tiny) beats its preset
    if path.is_dir():
        model = load_model(path, dtype=torch_dtype, device=device)
        tokenizer = load_tokenizer(path)
    elif canonical_preset_name(spec) in preset_names():
        if not quiet:
            print(f"[tilevl] {spec}: a preset, not a checkpoint: random weights and a small "
                  "tokenizer (replies are noise; for smoke tests and timings only)", file=sys.stderr)
        model = build_model(spec, device=device, dtype=torch_dtype)
        tokenizer = build_bpe_tokenizer(vocab_size=min(model.config.llm["vocab_size"], 1024))
    else:
        raise ConfigError(unknown_model_message(spec))
    if torch_dtype is None and model.dtype == torch.float16 and str(device).startswith("cpu"):
        model.float()  # fp16 weights (how small models ship) compute slowly on CPUs
    if quantize:
        quantize_model(model, quantize)  # after the dtype is final: scales take the model's dtype
    if model.img_context_token_id is None:
        model.img_context_token_id = img_context_token_id(tokenizer)
    return model, tokenizer
