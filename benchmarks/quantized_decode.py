"""Single-stream greedy decode, int8 weight-only vs bf16, on the internvl2_5-1b architecture
(random weights from the preset), both timed in this one process; the speed-up is printed last.

Also printed: each one's share of the memory-bandwidth bound (read bandwidth measured here by
summing a 512 MiB buffer; bound = bandwidth / bytes of LLM weights read per token), how
closely int8 follows bf16 (teacher-forced top-1 agreement, logit error, identical greedy
prefix), and the shipped tilevl-tiny's MiniBench score under int8 vs its stored fp32.

Usage: PYTHONPATH=src python benchmarks/quantized_decode.py [--tokens 64] [--repeats 3]
       [--minibench-questions 300] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def cpu_flags() -> str:
    """The flags that decide these kernels' speed: AVX-512 (bf16, VNNI) and AMX."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    wanted = ("avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")
    have = [f for f in wanted if f in flags]
    return f"{os.cpu_count()} cores, {torch.get_num_threads()} threads, " + (" ".join(have) or "no AVX-512") + \
        ("" if "amx_bf16" in flags else ", no AMX")


def read_bandwidth(mib: int = 512, repeats: int = 5) -> float:
    """Bytes per second of a streaming read (sum of a large float32 buffer), best of `repeats`."""
    buffer = torch.ones(mib * 2**20 // 4)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - start)
    return buffer.numel() * 4 / best


def weight_bytes_per_token(model) -> int:
    """Bytes of LLM weights one decode step reads: every tensor once, except the input
    embedding table (one row is looked up) unless the LM head shares it."""
    llm = model.language_model
    head = llm.get_output_embeddings()
    embed = llm.get_input_embeddings().weight
    head_tensors = {t.data_ptr() for t in head.state_dict().values()} if head is not None else set()
    seen, total = set(), 0
    for tensor in llm.state_dict().values():
        ptr = tensor.data_ptr()
        if ptr in seen or (ptr == embed.data_ptr() and ptr not in head_tensors):
            continue
        seen.add(ptr)
        total += tensor.numel() * tensor.element_size()
    return total


@torch.no_grad()
def greedy_decode(model, prompt: torch.Tensor, tokens: int) -> tuple[float, list[int], torch.Tensor, list[float]]:
    """Prefill `prompt` [1, L] (untimed), then `tokens` greedy steps with the KV cache.

    Returns:
        (seconds of the decode steps, the generated ids, the prefill's last logits [vocab],
         each step's seconds).
    """
    from transformers import DynamicCache

    llm = model.language_model
    cache = DynamicCache(config=llm.config)
    out = llm(input_ids=prompt, cache=cache, use_cache=True)
    first_logits = out.logits[0, -1].float()
    token = out.logits[:, -1:].argmax(-1)
    ids, steps = [int(token)], []
    start = time.perf_counter()
    for _ in range(tokens):
        step = time.perf_counter()
        out = llm(input_ids=token, cache=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        ids.append(int(token))  # int() waits for the step to finish, on a GPU too
        steps.append(time.perf_counter() - step)
    return time.perf_counter() - start, ids[:tokens], first_logits, steps


@torch.no_grad()
def agreement(reference, candidate, prompt: torch.Tensor, ids: list[int]) -> tuple[float, float]:
    """Feed prompt + the reference's greedy ids to both models (teacher forcing).

    Returns:
        (share of positions where the candidate's top-1 equals the reference's,
         mean |Δlogit| / std of the reference's logits).
    """
    sequence = torch.cat([prompt, torch.tensor([ids], device=prompt.device)], 1)
    a = reference.language_model(input_ids=sequence).logits[0, prompt.shape[1] - 1:].float()
    b = candidate.language_model(input_ids=sequence).logits[0, prompt.shape[1] - 1:].float()
    top1 = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    return top1, ((a - b).abs().mean() / a.std()).item()


def minibench_score(quantize: str | None, questions: int, seed: int, folder: Path) -> tuple[float, int]:
    """tilevl-tiny's circular accuracy (%) on the first `questions` dev rows of a MiniBench
    of `3 * questions` items (dev is a tenth, 2-4 rows each), and the rows scored."""
    from tilevl.eval.runner import EvalConfig, evaluate
    from tilevl.minibench import generate
    from tilevl.resolve import open_model

    data = folder / "minibench" / "dev" / "mcq.tsv"
    if not data.exists():
        generate(folder / "minibench", size=max(40, questions * 3), seed=seed, progress=False,
                 formats=("mcq",), overwrite=True)
    model, tokenizer = open_model("tilevl-tiny", quantize=quantize)
    results = evaluate(model, tokenizer, EvalConfig(
        bench="minibench", data=str(data), out=str(folder / f"eval-{quantize or 'fp32'}"), batch_size=16,
        limit=questions, progress=False, model_name="tilevl-tiny", max_tiles=model.image_settings.max_num))
    return 100 * results["headline"]["value"], results["n"]


def _span(values: list[float], fmt: str = ".1f") -> str:
    return f"{min(values):{fmt}}-{max(values):{fmt}}" if len(values) > 1 else f"{values[0]:{fmt}}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="internvl2_5-1b")
    parser.add_argument("--tokens", type=int, default=64, help="greedy decode steps per timing")
    parser.add_argument("--prompt", type=int, default=128, help="prompt length (random ids)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved bf16/int8 timings")
    parser.add_argument("--minibench-questions", type=int, default=300, help="0 skips MiniBench")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="tiny preset, few tokens (for tests)")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.tokens, args.prompt, args.repeats, args.minibench_questions = "tiny", 8, 16, 1, 8
    if args.threads:
        torch.set_num_threads(args.threads)
    from tilevl.checkpoint.quantize import quantize_model
    from tilevl.model.vlm import build_model

    print(f"CPU: {cpu_flags()}; load average {os.getloadavg()[0]:.1f} (other work on the machine slows both)")
    t0 = time.perf_counter()
    bf16 = build_model(args.preset, dtype=torch.bfloat16, seed=args.seed)
    int8 = quantize_model(copy.deepcopy(bf16), "int8")
    vocab = bf16.config.llm["vocab_size"]
    prompt = torch.randint(0, vocab, (1, args.prompt), generator=torch.Generator().manual_seed(args.seed))
    print(f"{args.preset}: built in {time.perf_counter() - t0:.0f} s; {int8.quantization}; "
          f"vision tower and projector stay bf16")

    bandwidth = read_bandwidth(64 if args.quick else 512)
    # Per-step times, pooled over the repeats: their median shrugs off the other jobs'
    # bursts on this shared machine, which a run's total time does not.
    steps: dict[str, list[float]] = {"bf16": [], "int8": []}
    medians: dict[str, list[float]] = {"bf16": [], "int8": []}
    streams: dict[str, list[int]] = {}
    firsts = {}
    greedy_decode(bf16, prompt, 2)  # warm-up: allocator, kernels' first-call setup
    greedy_decode(int8, prompt, 2)
    for _ in range(args.repeats):
        for name, model in (("bf16", bf16), ("int8", int8)):
            _, ids, first, times = greedy_decode(model, prompt, args.tokens)
            steps[name] += times
            medians[name].append(statistics.median(times))
            streams[name], firsts[name] = ids, first
    bandwidth = max(bandwidth, read_bandwidth(64 if args.quick else 512))  # again, after: best of both
    print(f"read bandwidth {bandwidth / 1e9:.1f} GB/s (sum of a {64 if args.quick else 512} MiB buffer, best of 10)")
    print(f"{'':5} {'weights read/token':>19} {'bound tok/s':>12} {'decode tok/s (per repeat)':>26} {'% of bound':>11}")
    for name, model in (("bf16", bf16), ("int8", int8)):
        per_token = weight_bytes_per_token(model)
        bound = bandwidth / per_token
        rate = 1 / statistics.median(steps[name])
        print(f"{name:5} {per_token / 2**20:15.0f} MiB {bound:12.1f} {rate:8.1f} ({_span([1 / m for m in medians[name]])}) "
              f"{100 * rate / bound:9.0f} %")

    top1, logit_error = agreement(bf16, int8, prompt, streams["bf16"])
    same = next((i for i, (a, b) in enumerate(zip(streams["bf16"], streams["int8"])) if a != b), args.tokens)
    first_rel = ((firsts["bf16"] - firsts["int8"]).abs().max() / firsts["bf16"].abs().max()).item()
    print(f"agreement (random weights, flat logits: a hard case): teacher-forced top-1 {100 * top1:.1f} % of "
          f"{args.tokens + 1} positions; mean |dlogit| {logit_error:.3f} std; max |dlogit| {100 * first_rel:.1f} % "
          f"of max |logit| after prefill; identical greedy prefix {same}/{args.tokens} tokens")

    if args.minibench_questions:
        with tempfile.TemporaryDirectory() as tmp:
            fp32, rows = minibench_score(None, args.minibench_questions, args.seed, Path(tmp))
            q8, _ = minibench_score("int8", args.minibench_questions, args.seed, Path(tmp))
        print(f"MiniBench (tilevl-tiny, seed {args.seed}, size {max(40, args.minibench_questions * 3)}, "
              f"{rows} dev rows, circular accuracy): fp32 {fp32:.1f}, int8 {q8:.1f} ({q8 - fp32:+.1f} points)")
    ratio = statistics.median(steps["bf16"]) / statistics.median(steps["int8"])
    spread = [b / i for i, b in zip(medians["int8"], medians["bf16"])]
    print(f"int8/bf16 single-stream decode speed-up: {ratio:.2f}x (median step of {len(steps['int8'])} per dtype; "
          f"per-repeat {_span(spread, '.2f')}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
