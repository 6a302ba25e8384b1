"""Turn what a user typed as MODEL (a folder or a preset name) into a model and tokenizer.

A folder, or the name of a model shipped in tilevl.assets, is loaded as a checkpoint; a preset
name builds random weights with a small byte-level tokenizer, which is only good for smoke tests
and benchmarks (we say so).
"""

from __future__ import annotations

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
    from tilevl.presets import preset_names

    return Path(spec).is_dir() or asset_path(spec) is not None or spec.lower() in preset_names()


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
    from tilevl.presets import preset_names

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
    elif spec.lower() in preset_names():
        if not quiet:
            print(f"[tilevl] {spec}: a preset, not a checkpoint: random weights and a small "
                  "tokenizer (replies are noise; for smoke tests and timings only)", file=sys.stderr)
        model = build_model(spec, device=device, dtype=torch_dtype)
        tokenizer = build_bpe_tokenizer(vocab_size=min(model.config.llm["vocab_size"], 1024))
    else:
        raise ConfigError(f"MODEL {spec!r} is neither a checkpoint folder nor a preset "
                          f"({', '.join(preset_names())})")
    if torch_dtype is None and model.dtype == torch.float16 and str(device).startswith("cpu"):
        model.float()  # fp16 weights (how small models ship) compute slowly on CPUs
    if quantize:
        quantize_model(model, quantize)  # after the dtype is final: scales take the model's dtype
    if model.img_context_token_id is None:
        model.img_context_token_id = img_context_token_id(tokenizer)
    return model, tokenizer
