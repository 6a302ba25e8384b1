"""The evaluation subcommands of `tilevl`: `eval` (run a benchmark), `eval-score` (score
predictions made elsewhere) and `eval-compare` (two runs side by side with deltas).

`add_eval_parsers(subparsers)` registers them; each maps its flags onto one plain function.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `tilevl eval` (shared with `python -m tilevl.eval.runner`).

    Args:
        p: the parser to add them to.
    """
    p.add_argument("model", help="checkpoint folder or preset name")
    p.add_argument("--bench", required=True, help="benchmark name (e.g. mmbench, textvqa, pope, "
                   "refcoco, minibench, plain-mcq; an unknown name lists them)")
    p.add_argument("--data", required=True, help="the benchmark's local file (TSV/jsonl/json) or MME folder")
    p.add_argument("--image-root", default=None, help="folder of the images a jsonl names (default: next to it)")
    p.add_argument("--max-tiles", type=int, default=None,
                   help="tiles per image (default: the model's config.json eval_max_dynamic_patch, "
                        "else the benchmark's)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", default=None, help="output folder (default: eval-results/BENCH-MODEL)")
    p.add_argument("--limit", type=int, default=None, help="only the first K questions")
    p.add_argument("--cot", action="store_true", help="reason step by step, score the final 'Answer: X'")
    p.add_argument("--samples", type=int, default=1, help="k sampled answers, majority vote")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature for --samples > 1")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--also-direct", action="store_true",
                   help="with --cot/--samples, also answer directly and report the gain")
    p.add_argument("--categories", nargs="+", default=None,
                   help="only these categories (or L2 groups); default all, or with --curve on "
                        "MiniBench its reasoning categories")
    p.add_argument("--curve", default=None, metavar="K,K,...",
                   help="test-time scaling curve: vote@k for each k (e.g. 1,2,4,8,16) from one run "
                        "of max(k) samples per question, plus direct answering; writes curve.json/.md/.png")
    p.add_argument("--curve-draws", type=int, default=8,
                   help="random k-subsets of the samples averaged per curve point (1: the first k only)")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--prompt-suffix", default=None, help="replaces the benchmark's instruction line")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default=None, help="bf16 | fp16 | fp32 (default: as stored)")
    p.add_argument("--device", default="cpu", help="cpu, cuda (each torchrun rank takes cuda:LOCAL_RANK)")
    from tilevl.resolve import add_quantize_argument

    add_quantize_argument(p)
    _add_judge_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_judge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--judge-url", default=None,
                   help="OpenAI-compatible API base of an LLM judge for unreadable answers (off by default)")
    p.add_argument("--judge-model", default=None, help="the judge's model name")
    p.add_argument("--judge-key-env", default=None,
                   help="name of the environment variable holding the judge's API key")


def _judge_key(args: argparse.Namespace) -> str | None:
    return os.environ.get(args.judge_key_env) if args.judge_key_env else None


def cmd_eval(args: argparse.Namespace) -> int:
    """Run a benchmark on a model and print where the results went."""
    from tilevl.eval.runner import EvalConfig, dist_info, evaluate
    from tilevl.resolve import open_model

    rank, world = dist_info()
    device = args.device
    if world > 1 and device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    model, tokenizer = open_model(args.model, dtype=args.dtype, device=device, quiet=rank != 0,
                                  quantize=args.quantize)
    out = args.out or str(Path("eval-results") / f"{args.bench}-{Path(args.model).name}")
    cfg = EvalConfig(
        bench=args.bench, data=args.data, out=out, image_root=args.image_root,
        max_tiles=args.max_tiles, batch_size=args.batch_size, limit=args.limit, cot=args.cot,
        samples=args.samples, temperature=args.temperature, top_p=args.top_p,
        max_new_tokens=args.max_new_tokens, prompt_suffix=args.prompt_suffix, seed=args.seed,
        also_direct=args.also_direct, judge_url=args.judge_url, judge_model=args.judge_model,
        judge_api_key=_judge_key(args), progress=not args.no_progress, model_name=args.model,
        categories=args.categories)
    if args.curve:
        from tilevl.eval.curve import evaluate_curve, parse_curve

        curve = evaluate_curve(model, tokenizer, cfg, parse_curve(args.curve), draws=args.curve_draws)
        if curve is not None:
            print(Path(curve["files"]["markdown"]).read_text(encoding="utf-8"), end="")
            for kind, path in curve["files"].items():
                if path:
                    print(f"  {kind}: {path}")
        return 0
    results = evaluate(model, tokenizer, cfg)
    if results is not None:
        _print_summary(results)
    return 0


def cmd_eval_score(args: argparse.Namespace) -> int:
    """Score a predictions jsonl against a benchmark file."""
    from tilevl.eval.runner import EvalConfig, score_predictions

    out = args.out or str(Path(args.predictions).with_suffix("")) + "-scored"
    cfg = EvalConfig(bench=args.bench, data=args.data, out=out, image_root=args.image_root,
                     limit=args.limit, cot=args.cot, judge_url=args.judge_url,
                     judge_model=args.judge_model, judge_api_key=_judge_key(args),
                     model_name=args.name or "")
    if bool(cfg.judge_url) != bool(cfg.judge_model):
        from tilevl.errors import ConfigError

        raise ConfigError("--judge-url and --judge-model go together")
    _print_summary(score_predictions(cfg, args.predictions))
    return 0


def cmd_eval_compare(args: argparse.Namespace) -> int:
    """Print two runs side by side with B − A."""
    from tilevl.eval.report import compare, load_results

    names = (args.name_a, args.name_b) if args.name_a or args.name_b else None
    text = compare(load_results(args.a), load_results(args.b), names)
    print(text, end="")
    if args.markdown:
        Path(args.markdown).write_text(text, encoding="utf-8")
    return 0


def _print_summary(results: dict) -> None:
    from tilevl.eval.report import fmt

    head = results["headline"]
    judge = results.get("judge", {})
    print(f"{results['benchmark']}: {head['name']} {fmt(head['value'], head['fraction'])} "
          f"over {results['n']} questions (rule {results['rule']} v{results['rule_version']}"
          f"{'; judge decided ' + str(judge.get('decided')) + ' answers' if judge.get('used') else ''}"
          f"{', guessed ' + str(judge['guessed']) if judge.get('guessed') else ''})")
    scaling = results.get("test_time_scaling")
    if scaling and scaling.get("gain") is not None:
        print(f"{scaling['variant']} vs direct: gain {fmt(scaling['gain'], head['fraction'])}")
    for kind, path in (results.get("files") or {}).items():
        if path:
            print(f"  {kind}: {path}", file=sys.stdout)


def add_eval_parsers(subparsers) -> None:
    """Register `eval`, `eval-score` and `eval-compare` on the `tilevl` subcommand parser.

    Args:
        subparsers: what `ArgumentParser.add_subparsers()` returned.
    """
    p = subparsers.add_parser("eval", help="run a benchmark (batched, torchrun-sharded, resumable)")
    add_eval_arguments(p)
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("eval-score", help="score predictions made elsewhere")
    p.add_argument("bench", help="benchmark name")
    p.add_argument("--data", required=True, help="the benchmark file")
    p.add_argument("--predictions", required=True, help='jsonl of {"index": …, "prediction": "…"}')
    p.add_argument("--image-root", default=None)
    p.add_argument("--out", default=None, help="output folder (default: PRED-scored)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--cot", action="store_true", help="predictions are CoT text: score the last 'Answer:'")
    p.add_argument("--name", default=None, help="how results name the model")
    _add_judge_arguments(p)
    p.set_defaults(func=cmd_eval_score)

    p = subparsers.add_parser("eval-compare", help="two results side by side with deltas")
    p.add_argument("a", help="results.json (or a folder of */results.json)")
    p.add_argument("b", help="results.json (or a folder of */results.json)")
    p.add_argument("--name-a", default=None)
    p.add_argument("--name-b", default=None)
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    p.set_defaults(func=cmd_eval_compare)
