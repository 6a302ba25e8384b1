"""Training throughput on length-skewed data: packed rows vs right-padded batches.

Baseline ("padded"): random batches of B = budget // max_seq_length samples, right-padded,
as a plain DataLoader gives them. Ours ("packed"): B rows of at most max_seq_length tokens,
each holding several samples with attention kept inside every sample. Same samples, same
step shape budget [B, max_seq_length], one run; forward + backward of the `small` preset.
"length-grouped" (padded batches of similar lengths) is printed as the simple alternative.
Prints non-padding tokens/s, the padding fraction of each, and the ratio last (goal ≥ 1.5×).
Run: .venv/bin/python benchmarks/packing.py [--samples 32] [--budget 4096] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from PIL import Image

import tilevl
from tilevl.checkpoint.tokenizer import IMG_CONTEXT_TOKEN, build_bpe_tokenizer
from tilevl.data import (
    DatasetSpec, LengthGroupedBatchSampler, PackedBatchSampler, SFTDataset, pack_collate,
    pad_collate,
)

WORDS = ("the cat sat on a mat while small models learn to read long tables of numbers and "
         "describe pictures of red boxes blue circles and green lines").split()


def make_data(folder: Path, num_samples: int, seed: int) -> Path:
    """A jsonl file whose lengths are skewed: most samples short, a few long (log-normal).

    A quarter of the samples carry a small image (one 224-px tile = 64 tokens in `small`).
    """
    rng = random.Random(seed)
    Image.new("RGB", (224, 224), (200, 60, 20)).save(folder / "img.png")
    records = []
    for i in range(num_samples):
        n_words = min(int(rng.lognormvariate(3.4, 1.0)), 900)  # median ~30, tail to 900
        question = " ".join(rng.choice(WORDS) for _ in range(max(n_words // 3, 1)))
        answer = " ".join(rng.choice(WORDS) for _ in range(max(n_words - n_words // 3, 1)))
        # A short system prompt: the template's default (~150 tiny-BPE tokens) would make
        # every sample long and hide the skew.
        record = {"conversations": [{"from": "system", "value": "You are a helpful assistant."},
                                    {"from": "human", "value": question},
                                    {"from": "gpt", "value": answer}]}
        if i % 4 == 0:
            record["image"] = "img.png"
        records.append(record)
    path = folder / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def step(model, batch: dict, device: torch.device) -> None:
    """One forward + backward (gradients dropped: the optimizer is the same in both runs)."""
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if batch.get("pixel_values") is not None:
        batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
    model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)


def run_epoch(model, batches, device) -> tuple[float, float]:
    """Time `step` over the batches. Returns (wall seconds, process CPU seconds)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        step(model, batch, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=1024)
    parser.add_argument("--budget", type=int, default=4096, help="token positions per step")
    parser.add_argument("--attention", default="block_mask", choices=("block_mask", "position_ids"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2,
                        help="epochs per mode, interleaved; the fastest counts (shared CPUs)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    device = torch.device(args.device)

    tokenizer = build_bpe_tokenizer()
    model = tilevl.build_model(args.preset, seed=args.seed, device=device)
    model.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    model.train()
    with tempfile.TemporaryDirectory() as tmp:
        path = make_data(Path(tmp), args.samples, args.seed)
        spec = DatasetSpec.from_annotation(path, max_dynamic_patch=1)
        dataset = SFTDataset(spec, tokenizer, model.config, max_seq_length=args.max_seq_length)
        lengths = dataset.scan()
        # Samples are built once, so both runs time the model, not tiling and tokenizing.
        cache = [dataset[i] for i in range(len(dataset))]
        pad_id = tokenizer.pad_token_id
        batch_size = max(args.budget // args.max_seq_length, 1)
        runs = {
            "padded": (torch.utils.data.BatchSampler(
                torch.utils.data.RandomSampler(range(len(cache)),
                                               generator=torch.Generator().manual_seed(args.seed)),
                batch_size, drop_last=False), partial(pad_collate, pad_token_id=pad_id)),
            "length-grouped": (LengthGroupedBatchSampler(lengths, batch_size, seed=args.seed),
                               partial(pad_collate, pad_token_id=pad_id)),
            # Rows as long as the padded batches' longest possible row, as many per step:
            # the same [batch, ≤ max_seq_length] shapes, so only the padding differs.
            "packed": (PackedBatchSampler(lengths, args.max_seq_length, rows_per_batch=batch_size,
                                          seed=args.seed),
                       partial(pack_collate, pad_token_id=pad_id, max_tokens=args.max_seq_length,
                               attention=args.attention)),
        }
        print(f"{args.preset} preset on {device}; {len(cache)} samples, lengths "
              f"{min(lengths)}–{max(lengths)} (median {sorted(lengths)[len(lengths) // 2]}), "
              f"{sum(lengths)} tokens; budget {args.budget} positions/step "
              f"(padded: batch size {batch_size})")
        prepared = {}
        for name, (sampler, collate) in runs.items():
            # Collate up front: the runs then time the model alone.
            prepared[name] = [collate([cache[i] for i in indices]) for indices in sampler]
            step(model, prepared[name][0], device)  # warm-up: allocator, kernels
        # On a shared CPU the wall clock is noisy: keep each mode's fastest round, and report
        # CPU seconds beside it (less sensitive to other processes).
        best = {name: (float("inf"), float("inf")) for name in runs}
        for _ in range(args.rounds):
            for name, batches in prepared.items():
                wall, cpu = run_epoch(model, batches, device)
                best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
        rates, cpu_rates = {}, {}
        for name, batches in prepared.items():
            real, positions = sum(lengths), sum(b["input_ids"].numel() for b in batches)
            rates[name], cpu_rates[name] = real / best[name][0], real / best[name][1]
            print(f"{name:>15}: {len(batches):3d} steps, padding {1 - real / positions:6.1%}, "
                  f"{best[name][0]:7.2f} s, {rates[name]:8.0f} real tokens/s "
                  f"({cpu_rates[name]:6.0f} per CPU-second)")
    print(f"packed / padded per CPU-second: {cpu_rates['packed'] / cpu_rates['padded']:.2f}x")
    print(f"packed / length-grouped: {rates['packed'] / rates['length-grouped']:.2f}x")
    print(f"packed / padded: {rates['packed'] / rates['padded']:.2f}x")


if __name__ == "__main__":
    main()
