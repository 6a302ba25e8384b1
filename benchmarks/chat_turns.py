"""A 6-turn conversation over a 7-tile image: ChatSession vs stateless recompute.

Baseline ("recompute"): the reference's way, `model.chat(..., history=...)` every turn,
which re-encodes the image and re-reads the whole history. Ours: `ChatSession`, which
keeps the KV cache and the image features. Both greedy, same replies (checked), one run.
Run: .venv/bin/python benchmarks/chat_turns.py [--preset small] [--new-tokens 24]
"""

from __future__ import annotations

import argparse
import time

import torch
from PIL import Image, ImageDraw

import tilevl
from tilevl.chat.session import ChatSession
from tilevl.checkpoint.tokenizer import build_bpe_tokenizer
from tilevl.inputs.image import preprocess

QUESTIONS = [
    "Please describe the image in detail.",
    "What colour is the largest shape?",
    "How many circles can you see?",
    "Is there any text in the picture? Read it out.",
    "Which shape is on the left side?",
    "Summarise our conversation in one sentence.",
]


def make_image() -> Image.Image:
    """A 3:2 drawing: with max 6 tiles it is cut 3×2, plus a thumbnail = 7 tiles."""
    image = Image.new("RGB", (960, 640), "white")
    draw = ImageDraw.Draw(image)
    for i in range(12):
        x, y = 60 + 70 * i, 80 + 35 * (i % 5)
        draw.ellipse((x, y, x + 60, y + 60), fill=(20 * i, 100, 255 - 20 * i))
    draw.rectangle((100, 400, 500, 600), fill="orange")
    draw.text((600, 450), "HELLO TILEVL", fill="black")
    return image


def run_session(model, tokenizer, image, settings) -> tuple[float, list[str]]:
    start = time.perf_counter()
    session = ChatSession(model, tokenizer, generation=settings)
    replies = [session.ask(q, images=[image] if i == 0 else []) for i, q in enumerate(QUESTIONS)]
    return time.perf_counter() - start, replies


def run_recompute(model, tokenizer, image, settings) -> tuple[float, list[str]]:
    start = time.perf_counter()
    history, replies = None, []
    for question in QUESTIONS:
        pixels = preprocess(image, model.image_settings)  # the reference re-tiles every turn too
        reply, history = model.chat(tokenizer, pixels, question, dict(settings), history=history, return_history=True)
        replies.append(reply)
    return time.perf_counter() - start, replies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tokenizer = build_bpe_tokenizer(vocab_size=1024)
    model = tilevl.build_model(args.preset, seed=0)
    image = make_image()
    tiles = preprocess(image, model.image_settings).shape[0]
    settings = dict(max_new_tokens=args.new_tokens, do_sample=False)
    print(f"preset {args.preset}: {tiles} tiles x {model.num_image_token} tokens, "
          f"{len(QUESTIONS)} turns, {args.new_tokens} new tokens per turn")
    run_session(model, tokenizer, image, settings)  # warm-up
    best = {"recompute": float("inf"), "session": float("inf")}
    for _ in range(args.repeats):
        t_rec, rec = run_recompute(model, tokenizer, image, settings)
        t_ses, ses = run_session(model, tokenizer, image, settings)
        assert rec == ses, "session replies differ from recompute"
        best["recompute"], best["session"] = min(best["recompute"], t_rec), min(best["session"], t_ses)
    print(f"recompute (baseline): {best['recompute']:.3f} s for {len(QUESTIONS)} turns")
    print(f"ChatSession         : {best['session']:.3f} s (identical replies)")
    print(f"speed-up ChatSession vs recompute: {best['recompute'] / best['session']:.2f}x")


if __name__ == "__main__":
    main()
