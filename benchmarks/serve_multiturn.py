"""`tilevl serve` with and without the prefix cache: a 6-turn chat over a 7-tile image.

An OpenAI client (the `openai` package) resends the whole conversation every turn, as chat
front-ends do. Baseline: `--no-prefix-cache`, which re-encodes the image and prefills the
whole history each turn. Ours: the default prefix cache, which reuses the previous turn's
KV and the image's features. Each server runs alone (one after the other) on 127.0.0.1; the
greedy replies are checked to be the same token ids first; the ratio is printed last.

The model is the `small` preset (random weights; 224 px tiles, 64 tokens per tile) with
its vocabulary cut to tilevl-tiny's real BPE tokenizer, so every sampled id is text and the
resent history holds the replies as a client would see them.
Run: PYTHONPATH=src python benchmarks/serve_multiturn.py [--new-tokens 24] [--repeats 3]
"""

from __future__ import annotations

import argparse
import base64
import io
import platform
import socket
import threading
import time

import torch
from chat_turns import QUESTIONS, make_image  # the same conversation as the in-process benchmark

def image_url() -> str:
    """A 3:2 drawing: with at most 6 tiles it is cut 3×2, plus a thumbnail = 7 tiles."""
    image = make_image()
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def build_model():
    """The `small` preset whose vocabulary is tilevl-tiny's tokenizer."""
    from tilevl.checkpoint.tokenizer import img_context_token_id
    from tilevl.config import ModelConfig
    from tilevl.model.vlm import build_model as build
    from tilevl.resolve import open_model

    _, tokenizer = open_model("tilevl-tiny", quiet=True)
    config = ModelConfig.from_name("small")
    config = config.replace(llm={**config.llm, "vocab_size": len(tokenizer)})
    model = build(config, seed=0)
    model.img_context_token_id = img_context_token_id(tokenizer)
    return model, tokenizer


class Server:
    """One uvicorn server in a thread, recording each reply's token ids as generated."""

    def __init__(self, model, tokenizer, *, cache: bool) -> None:
        import uvicorn

        from tilevl.serve import ServeSettings
        from tilevl.serve.api import create_app
        from tilevl.serve.connections import uvicorn_config

        settings = ServeSettings(prefix_cache=cache, max_prompt_tokens=8000, max_total_tiles=16)
        self.app = create_app(model, tokenizer, model_name="small", settings=settings)
        scheduler = self.app.state.serving.scheduler
        self.ids: dict[int, tuple[object, list[int]]] = {}  # id(work) → (work kept alive, ids)
        advance = scheduler._advance

        def recording_advance(row, token):  # token ids, not the decoded text, are compared
            self.ids.setdefault(id(row.work), (row.work, []))[1].append(token)
            return advance(row, token)

        scheduler._advance = recording_advance
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        self.server = uvicorn.Server(uvicorn_config(self.app, settings, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)

    def replies_by_id(self) -> list[list[int]]:
        return [ids for _, ids in self.ids.values()]

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def conversation(url: str, image: str, new_tokens: int) -> tuple[float, float]:
    """Six turns, the whole history resent each time, streamed.

    Returns:
        (wall time of the six turns, sum of the six times to first token).
    """
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="unused", max_retries=0)
    messages = []
    start, first_tokens = time.perf_counter(), 0.0
    for turn, question in enumerate(QUESTIONS):
        content = [{"type": "text", "text": question}]
        if turn == 0:
            content.insert(0, {"type": "image_url", "image_url": {"url": image}})
        messages.append({"role": "user", "content": content})
        asked = time.perf_counter()
        stream = client.chat.completions.create(model="small", messages=messages, max_tokens=new_tokens,
                                                temperature=0, stream=True, extra_body={"max_tiles": 6})
        reply, chunks = "", 0
        for chunk in stream:
            chunks += 1
            if chunks == 2:  # the first chunk after the role chunk: the first token is out
                first_tokens += time.perf_counter() - asked
            reply += "".join(c.delta.content or "" for c in chunk.choices)
        messages.append({"role": "assistant", "content": reply})
    return time.perf_counter() - start, first_tokens


def cpu_flags() -> str:
    try:
        flags = open("/proc/cpuinfo").read().split("flags", 1)[1].split("\n", 1)[0]
    except (OSError, IndexError):
        return platform.processor() or "unknown CPU"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    have = [f for f in wanted if f" {f}" in flags + " "]
    return f"{torch.get_num_threads()} threads, " + (" ".join(have) or "no AVX2") + \
        ("" if "amx_tile" in have else ", no AMX")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model, tokenizer = build_model()
    image = image_url()
    tiles = 7
    print(f"small preset ({model.num_image_token} tokens per tile), a {tiles}-tile image, {len(QUESTIONS)} turns, "
          f"{args.new_tokens} new tokens per turn; CPU: {cpu_flags()}")
    modes = {"no cache": False, "prefix cache": True}
    times, ttft, replies, stats = {name: [] for name in modes}, {name: [] for name in modes}, {}, None
    for _ in range(args.repeats + 1):  # the first round warms up; rounds alternate the modes
        for name, cache in modes.items():  # (a fresh server each time: every cache starts cold)
            server = Server(model, tokenizer, cache=cache)
            try:
                wall, first = conversation(server.url, image, args.new_tokens)
                times[name].append(wall)
                ttft[name].append(first)
                replies[name] = server.replies_by_id()
                stats = server.app.state.serving.health()["prefix_cache"] or stats
            finally:
                server.close()
    best = {name: min(t[1:]) for name, t in times.items()}
    first = {name: min(t[1:]) for name, t in ttft.items()}
    print(f"  cache: {stats['hits']} hits, {stats['reused_tokens']} tokens reused, "
          f"{stats['prefilled_tokens']} prefilled, {stats['images_encoded']} image encoded")
    assert replies["no cache"] == replies["prefix cache"], "the cached server's token ids differ"
    assert len(replies["no cache"]) == len(QUESTIONS)
    print(f"no cache (baseline, --no-prefix-cache): {best['no cache']:.3f} s for {len(QUESTIONS)} turns, "
          f"{first['no cache']:.3f} s of it waiting for first tokens")
    print(f"prefix cache (default)                : {best['prefix cache']:.3f} s (identical token ids), "
          f"{first['prefix cache']:.3f} s waiting for first tokens")
    print(f"time to first token, summed over the turns: {first['no cache'] / first['prefix cache']:.2f}x shorter")
    print(f"speed-up prefix cache vs no cache: {best['no cache'] / best['prefix cache']:.2f}x")


if __name__ == "__main__":
    main()
