"""The `tilevl minibench` subcommands: generate the benchmark, list its categories.

Argument parsing only; the work is `tilevl.minibench.generate`.
"""

from __future__ import annotations

import argparse


def cmd_generate(args: argparse.Namespace) -> int:
    from tilevl.minibench import generate

    info = generate(args.out_dir, size=args.size, seed=args.seed, categories=args.categories,
                    progress=not args.no_progress, workers=args.workers, overwrite=args.overwrite,
                    train_size=args.train_size, traces=args.traces)
    print(f"wrote MiniBench to {info['out_dir']} in {info['seconds']:.1f} s")
    return 0


def cmd_categories(args: argparse.Namespace) -> int:
    from tilevl.minibench import CATEGORIES

    for name, category in CATEGORIES.items():
        print(f"{name:30s} {category.l2:45s} {category.description}")
    return 0


def add_minibench_parsers(sub) -> None:
    p = sub.add_parser("minibench", help="the procedural MMBench-like benchmark (generate offline)")
    mb = p.add_subparsers(dest="minibench_command", required=True)
    g = mb.add_parser("generate", help="draw images and questions into OUT_DIR (deterministic per seed)")
    g.add_argument("out_dir")
    g.add_argument("--size", type=int, default=200, help="multiple-choice items over all splits")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--train-size", type=int, default=None,
                   help="multiple-choice items in train (default: half of --size); dev and "
                        "test stay as --size makes them")
    g.add_argument("--traces", action="store_true",
                   help="train split: each question also asked with the CoT prompt and "
                        "answered by its step-by-step reasoning trace")
    g.add_argument("--categories", nargs="+", help="category or L2-group names (default: all)")
    g.add_argument("--workers", type=int, default=None, help="processes drawing images")
    g.add_argument("--overwrite", action="store_true", help="replace an earlier MiniBench in OUT_DIR")
    g.add_argument("--no-progress", action="store_true")
    g.set_defaults(func=cmd_generate)
    c = mb.add_parser("categories", help="list the categories and their MMBench L2 groups")
    c.set_defaults(func=cmd_categories)
