"""Single-stream greedy decode speed: tilevl vs transformers' InternVL on the same weights.

One prompt with one image tile, greedy, a forced answer length. Decode tokens/s is measured
as (N − 1) / (time of N new tokens − time of 1 new token), so the prefill (vision tower +
prompt) cancels out. Peer: transformers' InternVLForConditionalGeneration on the native
export (`tilevl convert --layout native`); the generated token ids are compared first.
Both sides run transformers' LLM, so a ratio near 1.0 is the expected, honest result: tilevl
adds no per-token overhead on top of it.
Run: .venv/bin/python benchmarks/decode.py [--preset small] [--dtype bf16] [--new-tokens 48]
     (`--preset internvl2_5-1b` builds the 938 M architecture with random weights)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _peer import check_same_ids, export_native, load_peer, peer_generate  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def prompt(model, tokens: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """[1, L] ids: some text, then one tile's worth of `<IMG_CONTEXT>`; [1, 3, S, S] pixels."""
    g = torch.Generator().manual_seed(0)
    vocab = model.config.llm["vocab_size"]
    text = torch.randint(10, min(vocab, 400), (1, tokens), generator=g)
    ctx = torch.full((1, model.num_image_token), model.img_context_token_id)
    pixels = torch.randn(1, 3, model.config.image_size, model.config.image_size, generator=g)
    return torch.cat([text[:, :4], ctx, text[:, 4:]], dim=1), pixels


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs; best kept")
    args = parser.parse_args()
    import tilevl

    dtype = DTYPES[args.dtype]
    model = tilevl.build_model(args.preset, seed=0)
    model.img_context_token_id = model.config.llm["vocab_size"] - 1
    ids, pixels = prompt(model)
    n = args.new_tokens
    with tempfile.TemporaryDirectory() as tmp:
        peer = load_peer(export_native(model, Path(tmp)), dtype=torch.float32)
    model = model.eval()
    eos = [-1]  # no end token: every run generates exactly the forced length

    def ours(count: int) -> torch.Tensor:
        with torch.no_grad():
            return model.generate(ids, pixels, max_new_tokens=count, min_new_tokens=count, do_sample=False,
                                  eos_token_id=eos, pad_token_id=0)

    def theirs(count: int) -> torch.Tensor:
        return peer_generate(peer, ids, pixels, count, eos, 0)

    # Ids are compared in fp32, where both compute the same logits; in bf16 the two differ in
    # rounding (one fused q/k/v matmul against three), so a near-tie may break differently.
    check_same_ids(ours(n), theirs(n), f"{n} greedy tokens in fp32")
    model, peer, pixels = model.to(dtype), peer.to(dtype), pixels.to(dtype)
    ours(2), theirs(2)  # warm-up in the timed dtype
    params = sum(p.numel() for p in model.parameters())
    print(f"preset {args.preset} ({params / 1e6:.0f} M parameters) in {args.dtype}, prompt {ids.shape[1]} "
          f"ids with 1 tile, {n} new tokens, {torch.get_num_threads()} threads; token ids equal in fp32")
    times = {name: {1: float("inf"), n: float("inf")} for name in ("transformers", "tilevl")}
    for _ in range(args.repeats):  # interleaved: both see the same machine load
        for name, fn in (("transformers", theirs), ("tilevl", ours)):
            for count in (1, n):
                times[name][count] = min(times[name][count], timed(lambda: fn(count), 1))
    rates = {name: (n - 1) / (t[n] - t[1]) for name, t in times.items()}
    for name, rate in rates.items():
        print(f"{name:>12}: prefill {times[name][1] * 1000:.0f} ms, decode {rate:.1f} tokens/s")
    print(f"tilevl/peer decode tokens/s: {rates['tilevl'] / rates['transformers']:.2f}x")


if __name__ == "__main__":
    main()
