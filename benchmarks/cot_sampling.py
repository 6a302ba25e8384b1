"""CoT sampling throughput of `tilevl eval --cot --samples k` (the test-time scaling curve):
seconds per question for k samples, the k samples as k rows of one batch (prompt and image
encoded once, `num_return_sequences`) vs the former loop of k batch_chat calls per batch,
both timed in this one process on tilevl-tiny; ratio printed last.

Every reply is forced to `--tokens` new tokens (min_new_tokens), the worst case of a CoT
trace, so both sides do the same decode work; `--natural` lets replies end where the model
ends them (then rows that ended leave the batch every `COMPACT_EVERY` tokens; a third timing
turns that off). Before timing, greedy replies of both are compared by token ids.

Usage: PYTHONPATH=src python benchmarks/cot_sampling.py [--questions 16] [--samples 16]
       [--batch-size 8] [--tokens 96] [--threads N] [--dtype fp32|bf16] [--natural]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch


def cpu_flags() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0]
    except (OSError, IndexError):
        return platform.processor()
    wanted = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return " ".join(f for f in wanted if f" {f}" in flags) or "no avx512"


def questions(n: int, folder: Path):
    """n reasoning questions of a freshly drawn MiniBench (test split) and their tiles."""
    from tilevl.eval.benchmarks import get_benchmark
    from tilevl.minibench import generate

    generate(folder, size=max(2 * n, 28), seed=5, progress=False,
             categories=["object_counting", "math_reasoning", "chart_reading", "spatial_relationship"])
    spec = get_benchmark("minibench")
    return spec, spec.read(folder / "test" / "mcq.tsv", None)[:n]


def run(model, tokenizer, spec, samples, k: int, *, batch_size: int, tokens: int, rows: bool,
        greedy: bool = False, natural: bool = False) -> tuple[float, list]:
    """Seconds for k replies to every question, and the reply ids (as text)."""
    from tilevl.chat.engine import batch_chat
    from tilevl.eval.runner import _tiles

    config = dict(max_new_tokens=tokens) if natural else dict(max_new_tokens=tokens, min_new_tokens=tokens)
    if not greedy:
        config.update(do_sample=True, temperature=1.0)
    replies = []
    start = time.perf_counter()
    with torch.inference_mode():
        for number in range(0, len(samples), batch_size):
            batch = samples[number:number + batch_size]
            pixels, patches = _tiles(model, batch, 1)
            prompts = [spec.prompt(s, True, None) for s in batch]
            if rows:  # ours: k rows of one call
                replies += batch_chat(model, tokenizer, pixels, prompts,
                                      {**config, "seed": number, "num_return_sequences": k},
                                      num_patches_list=patches)
            else:  # the former runner: one call per draw
                for draw in range(k):
                    replies += batch_chat(model, tokenizer, pixels, prompts,
                                          {**config, "seed": number + draw}, num_patches_list=patches)
    return time.perf_counter() - start, replies


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--questions", type=int, default=16)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--tokens", type=int, default=96)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--natural", action="store_true", help="replies end where the model ends them")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from tilevl.resolve import open_model

    model, tokenizer = open_model("tilevl-tiny", dtype=args.dtype, quiet=True)
    with tempfile.TemporaryDirectory() as tmp:
        spec, samples = questions(args.questions, Path(tmp) / "mb")
        check = dict(batch_size=4, tokens=12, greedy=True)
        _, ours = run(model, tokenizer, spec, samples[:4], 2, rows=True, **check)
        _, theirs = run(model, tokenizer, spec, samples[:4], 1, rows=False, **check)
        same = [r.raw for r in ours] == [r.raw for r in theirs for _ in range(2)]
        print(f"greedy replies identical (k rows vs one call): {same}")
        if not same:
            return 1
        n, k = len(samples), args.samples
        print(f"tilevl-tiny {args.dtype}, {n} questions x {k} samples x {args.tokens} tokens, "
              f"batch {args.batch_size}, {torch.get_num_threads()} threads; CPU: {cpu_flags()}")
        timed = dict(batch_size=args.batch_size, tokens=args.tokens, natural=args.natural)
        loop, _ = run(model, tokenizer, spec, samples, k, rows=False, **timed)
        print(f"baseline (k batch_chat calls per batch): {loop / n:.3f} s/question")
        if args.natural:
            from tilevl.chat import engine

            every, engine.COMPACT_EVERY = engine.COMPACT_EVERY, 10**9
            whole, _ = run(model, tokenizer, spec, samples, k, rows=True, **timed)
            engine.COMPACT_EVERY = every
            print(f"ours without dropping ended rows: {whole / n:.3f} s/question")
        rows, replies = run(model, tokenizer, spec, samples, k, rows=True, **timed)
        lengths = [len(tokenizer(r.raw, add_special_tokens=False)["input_ids"]) for r in replies]
        print(f"ours (k rows of one call, prompt encoded once): {rows / n:.3f} s/question "
              f"(reply tokens: mean {sum(lengths) / len(lengths):.1f}, max {max(lengths)})")
    print(f"speed-up ours/baseline: {loop / rows:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
