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
    try:
        result = train(config)
    except KeyboardInterrupt:
        print(resume_hint(config, ["tilevl", "train", args.config, *(args.overrides or [])]),
              file=sys.stderr)
        raise  # the CLI exits 130
    if result.model_dir is not None or result.adapter_dir is not None:
        written = ", ".join(str(p) for p in (result.model_dir, result.adapter_dir) if p is not None)
        loss = f"{result.train_loss:.4f}" if result.train_loss is not None else "n/a"
        print(f"trained {result.global_step} steps (mean loss {loss}); wrote {written}",
              file=sys.stderr)
    return 0


def resume_hint(config: TrainConfig, command: list[str]) -> str:
    """What to print when training is interrupted: the exact command that resumes it.

    Args:
        config: the run's config (for output_dir and save_steps).
        command: the command line that started the run (without --resume or with it).
    """
    import shlex

    from tilevl.train.sft import find_resume_checkpoint

    again = [*command] if "--resume" in command else [*command, "--resume"]
    last = find_resume_checkpoint(config.output_dir)
    where = (f"from {last}" if last is not None else
             f"from the start: no checkpoint was complete yet (one is saved every "
             f"{config.save_steps} steps)")
    return f"\ninterrupted. To continue {where}, run:\n  {shlex.join(again)}"


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
