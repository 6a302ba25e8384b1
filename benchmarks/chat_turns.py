"""A 6-turn conversation over a 7-tile image: ChatSession vs stateless recompute vs transformers.

Baseline ("recompute"): the reference's way, `model.chat(..., history=...)` every turn,
which re-encodes the image and re-reads the whole history. Ours: `ChatSession`, which
keeps the KV cache and the image features. Peer: transformers' InternVLForConditionalGeneration
on the same weights (exported with `tilevl convert --layout native`), its image processor
cutting the tiles, the whole conversation re-sent each turn (it has no session). All greedy;
the generated token ids of every turn are compared before any timing is reported (random
weights generate ids the small tokenizer decodes to "", so strings would prove nothing).
Run: .venv/bin/python benchmarks/chat_turns.py [--preset small] [--new-tokens 24]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from _peer import export_native, load_peer, peer_generate, peer_image_processor, peer_pixels

import tilevl
from tilevl.chat.engine import clean_response, model_template, prepare_chat_prompt
from tilevl.chat.session import ChatSession
from tilevl.checkpoint.tokenizer import build_bpe_tokenizer, img_context_token_id
from tilevl.inputs.image import preprocess
from tilevl.inputs.template import stop_token_ids

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


class IdsStreamer:
    """Collects the generated ids of one `generate` call (the first `put` is the prompt)."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.ids.extend(value.reshape(-1).tolist())

    def end(self) -> None:
        pass


def run_session(model, tokenizer, image, settings) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    session = ChatSession(model, tokenizer, generation=settings)
    replies = []
    for i, question in enumerate(QUESTIONS):
        streamer = IdsStreamer()
        session.ask(question, images=[image] if i == 0 else [], streamer=streamer)
        replies.append(streamer.ids)
    return time.perf_counter() - start, replies


def run_recompute(model, tokenizer, image, settings) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    history, replies = None, []
    for question in QUESTIONS:
        pixels = preprocess(image, model.image_settings)  # the reference re-tiles every turn too
        streamer = IdsStreamer()
        _, history = model.chat(tokenizer, pixels, question, {**settings, "streamer": streamer},
                                history=history, return_history=True)
        replies.append(streamer.ids)
    return time.perf_counter() - start, replies


def run_peer(peer, processor, model, tokenizer, image, settings) -> tuple[float, list[list[int]]]:
    """transformers: each turn the processor tiles the image and the whole prompt is prefilled."""
    template = model_template(model)
    eos = stop_token_ids(tokenizer, template)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    start = time.perf_counter()
    history, replies = [], []
    for question in QUESTIONS:
        pixels = peer_pixels(processor, image, model.image_settings.max_num)
        ids, asked = prepare_chat_prompt(model, tokenizer, question, history, [pixels.shape[0]], template)
        out = peer_generate(peer, torch.tensor([ids]), pixels, settings["max_new_tokens"], eos, pad)[0].tolist()
        replies.append(out)
        reply = clean_response(tokenizer.decode(out, skip_special_tokens=True), template)
        history.append((asked, reply))
    return time.perf_counter() - start, replies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-peer", action="store_true", help="skip transformers (the peer)")
    args = parser.parse_args()
    tokenizer = build_bpe_tokenizer(vocab_size=1024)
    model = tilevl.build_model(args.preset, seed=0)
    model.img_context_token_id = img_context_token_id(tokenizer)
    image = make_image()
    tiles = preprocess(image, model.image_settings).shape[0]
    settings = dict(max_new_tokens=args.new_tokens, do_sample=False)
    print(f"preset {args.preset}: {tiles} tiles x {model.num_image_token} tokens, "
          f"{len(QUESTIONS)} turns, {args.new_tokens} new tokens per turn, "
          f"{torch.get_num_threads()} threads, fp32")
    runs = {"recompute": lambda: run_recompute(model, tokenizer, image, settings),
            "session": lambda: run_session(model, tokenizer, image, settings)}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_peer:
            peer = load_peer(export_native(model, Path(tmp)))
            processor = peer_image_processor(model)
            runs["transformers"] = lambda: run_peer(peer, processor, model, tokenizer, image, settings)
        best = {name: float("inf") for name in runs}
        reference = None
        for name, fn in runs.items():  # warm-up, and the token-id check before any timing
            _, ids = fn()
            reference = reference or ids
            if ids != reference:
                raise SystemExit(f"{name} generates different token ids than recompute:\n {ids}\n {reference}")
        assert sum(map(len, reference)) > 0, "no tokens generated"
        for _ in range(args.repeats):  # interleaved, best of: the machine is shared
            for name, fn in runs.items():
                seconds, ids = fn()
                assert ids == reference, f"{name}: token ids changed between runs"
                best[name] = min(best[name], seconds)
    n = len(QUESTIONS)
    print(f"recompute (baseline): {best['recompute']:.3f} s for {n} turns")
    print(f"ChatSession         : {best['session']:.3f} s (identical token ids, "
          f"{sum(map(len, reference))} generated)")
    if "transformers" in best:
        print(f"transformers (peer) : {best['transformers']:.3f} s (identical token ids)")
    print(f"speed-up ChatSession vs recompute: {best['recompute'] / best['session']:.2f}x")
    if "transformers" in best:
        print(f"tilevl/peer (ChatSession vs transformers): {best['transformers'] / best['session']:.2f}x")


if __name__ == "__main__":
    main()
