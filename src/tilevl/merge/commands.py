"""The `tilevl merge-lora` and `tilevl merge` subcommands (argument parsing only).

Each handler is a thin call into `tilevl.merge.lora`; heavy imports happen inside it.
"""

from __future__ import annotations

import argparse

DENSE_METHODS = ("ties", "dare_ties", "dare_linear", "task_arithmetic", "linear", "magnitude_prune")
PEFT_ONLY = ("cat", "svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")
METHOD_CHOICES = (*DENSE_METHODS, *PEFT_ONLY)


def cmd_merge_lora(args: argparse.Namespace) -> int:
    """Fold one LoRA adapter into its base and write a normal checkpoint."""
    from tilevl.merge.lora import merge_lora_into_checkpoint

    out = merge_lora_into_checkpoint(args.base, args.adapter, args.out, layout=args.layout, overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """Merge several LoRA adapters (or full fine-tuned checkpoints) into one base."""
    from tilevl.merge.checkpoints import merge_checkpoints
    from tilevl.merge.lora import merge_adapters

    common = dict(method=args.method, density=args.density, lam=args.lam, weights=args.weights,
                  seed=args.seed, overwrite=args.overwrite)
    if bool(args.adapters) == bool(args.checkpoints):
        raise SystemExit("tilevl merge: give either --adapters or --checkpoints")
    common["elect_weighted"] = args.sign_vote == "weighted"
    if args.mode == "peft-lora" and not args.adapters:
        raise SystemExit("tilevl merge: --mode peft-lora merges LoRA factors; it needs --adapters")
    if args.mode == "peft-lora" and (args.sign_vote == "weighted" or args.lam != 1.0):
        raise SystemExit("tilevl merge: --mode peft-lora is PEFT's arithmetic: no --lam, no weighted vote")
    if args.mode == "dense" and args.method not in DENSE_METHODS:
        raise SystemExit(f"tilevl merge: --method {args.method} exists only with --mode peft-lora")
    if args.adapters:
        out = merge_adapters(args.base, args.adapters, args.out, as_lora_rank=args.as_lora,
                             layout=args.layout, max_shard_size=args.max_shard_size,
                             mode=args.mode, **common)
    else:
        out = merge_checkpoints(args.base, args.checkpoints, args.out, max_shard_size=args.max_shard_size, **common)
    print(f"wrote {out}")
    return 0


def add_merge_parsers(sub) -> None:
    p = sub.add_parser("merge-lora", help="fold a LoRA adapter into its base model")
    p.add_argument("base", help="base checkpoint folder")
    p.add_argument("adapter", help="PEFT adapter folder (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("out", help="output checkpoint folder")
    p.add_argument("--layout", choices=("official", "native"), default="official")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_merge_lora)

    p = sub.add_parser("merge", help="merge LoRA adapters or fine-tuned checkpoints (TIES, DARE, …)")
    p.add_argument("--base", required=True)
    p.add_argument("--adapters", nargs="+", help="PEFT adapter folders trained on --base")
    p.add_argument("--checkpoints", nargs="+", help="full fine-tuned checkpoints of --base")
    p.add_argument("--out", required=True)
    p.add_argument("--mode", choices=("dense", "peft-lora"), default="dense",
                   help="dense: the method on each adapter's task vector B·A·scale (TIES as the paper "
                        "defines it); peft-lora: PEFT's add_weighted_adapter, A and B merged apart "
                        "(cross terms included), what 'merged with the PEFT TIES method' ran (MMAlaya2)")
    p.add_argument("--method", default="ties", choices=METHOD_CHOICES,
                   help="dense: ties dare_ties dare_linear task_arithmetic linear magnitude_prune; "
                        "peft-lora: PEFT's combination_type (linear ties dare_linear dare_ties "
                        "magnitude_prune cat svd ties_svd dare_linear_svd dare_ties_svd "
                        "magnitude_prune_svd; with --as-lora RANK as svd_rank)")
    p.add_argument("--sign-vote", choices=("peft", "weighted"), default="peft",
                   help="TIES sign election with --weights: peft (default) votes on the unweighted "
                        "trimmed deltas, then weights them; weighted votes on the weighted ones "
                        "(mergekit; weight 0 does not vote). Equal weights: no difference")
    p.add_argument("--density", type=float, default=0.2, help="fraction of each task vector kept")
    p.add_argument("--lam", type=float, default=1.0, help="scale of the merged task vector")
    p.add_argument("--weights", type=float, nargs="+", help="one weight per adapter/checkpoint")
    p.add_argument("--as-lora", type=int, default=None, metavar="RANK",
                   help="write a LoRA adapter of this rank (truncated SVD) instead of a checkpoint")
    p.add_argument("--layout", choices=("official", "native"), default="official")
    p.add_argument("--max-shard-size", default="5GB")
    p.add_argument("--seed", type=int, default=0, help="seeds DARE's random drop")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_merge)
