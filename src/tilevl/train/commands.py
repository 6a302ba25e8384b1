"""The `tilevl train` subcommand: a YAML config, `--key value` overrides, `--resume`.

`add_train_parsers(subparsers)` registers it; `cmd_train` is the plain function it maps to.
"""

from __future__ import annotations

import argparse
import sys

from tilevl.train.args import TrainConfig


def cmd_train(args: argparse.Namespace) -> int:
    """Load the config (file, then overrides) and run the training job.

    Args:
        args: `config` (a YAML path) and `overrides` (`--key value …`, `--resume`).
    Returns:
        0 on success (errors are TilevlError, reported by the CLI's main as one line).
    """
    from tilevl.train.args import load_train_config
    from tilevl.train.sft import train

    config = load_train_config(args.config, list(args.overrides or []))
    result = train(config)
    if result.model_dir is not None or result.adapter_dir is not None:
        written = ", ".join(str(p) for p in (result.model_dir, result.adapter_dir) if p is not None)
        loss = f"{result.train_loss:.4f}" if result.train_loss is not None else "n/a"
        print(f"trained {result.global_step} steps (mean loss {loss}); wrote {written}",
              file=sys.stderr)
    return 0


def _keys_help() -> str:
    names = [f.name for f in TrainConfig.__dataclass_fields__.values()]
    return "config keys (YAML or --key value): " + ", ".join(names)


def add_train_parsers(subparsers) -> None:
    """Register `tilevl train CONFIG.yaml [--key value ...] [--resume]` on a subparsers object.

    Args:
        subparsers: what `ArgumentParser.add_subparsers()` returned.
    """
    p = subparsers.add_parser(
        "train", help="fine-tune a model from a YAML config (torchrun/accelerate launch work too)",
        description="Fine-tune an InternVL model. Any config key can be overridden with "
                    "--key value; --resume continues from the last complete checkpoint.",
        epilog=_keys_help(),
    )
    p.add_argument("config", help="the training YAML (see configs/)")
    p.add_argument("overrides", nargs=argparse.REMAINDER,
                   help="--key value pairs that replace the YAML's values; --resume")
    p.set_defaults(func=cmd_train)
