"""Load test of `tilevl serve`: concurrent streaming clients against a real server process.

Phase 1: 64 streaming clients at once (all must succeed): requests/s, p50/p95 latency and
time to first token. Phase 2: throughput with 8 clients at a time against the named baseline,
one client at a time; the ratio is printed last (goal ≥ 3×: continuous batching at work).

Usage: python benchmarks/serve_load.py [--model small|FOLDER] [--clients 64] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_forever(model: str, port: int, max_batch_size: int) -> None:
    """The server process: the model behind uvicorn on 127.0.0.1:port."""
    import uvicorn

    from tilevl.resolve import open_model
    from tilevl.serve import ServeSettings, create_app
    from tilevl.serve.commands import served_name

    m, tok = open_model(model, quiet=True)
    app = create_app(m, tok, model_name=served_name(model, None),
                     settings=ServeSettings(max_batch_size=max_batch_size, queue_size=1024))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def _image_url() -> str:
    import numpy as np
    from PIL import Image

    img = Image.fromarray(np.random.RandomState(0).randint(0, 255, (200, 300, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


async def one_request(client, url: str, body: dict) -> tuple[float, float, int]:
    """Stream one reply; returns (latency s, time to first token s, completion tokens).

    The first token is the first chunk after the role chunk: a random-weights preset often
    picks ids its small tokenizer decodes to nothing, so content alone would miss it.
    """
    t0 = time.perf_counter()
    first, tokens, chunks = None, 0, 0
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if "error" in data:
                raise RuntimeError(data["error"]["message"])
            chunks += 1
            if chunks == 2:
                first = time.perf_counter() - t0
            if data.get("usage"):
                tokens = data["usage"]["completion_tokens"]
    return time.perf_counter() - t0, first or 0.0, tokens


async def run_load(base: str, body: dict, total: int, concurrency: int) -> dict:
    """`total` requests, `concurrency` at a time; returns throughput and latency percentiles."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        gate = asyncio.Semaphore(concurrency)

        async def guarded():
            async with gate:
                return await one_request(client, base + "/v1/chat/completions", body)

        t0 = time.perf_counter()
        results = await asyncio.gather(*(guarded() for _ in range(total)), return_exceptions=True)
        wall = time.perf_counter() - t0
    failures = [r for r in results if isinstance(r, BaseException)]
    ok = [r for r in results if not isinstance(r, BaseException)]
    lat = sorted(r[0] for r in ok)
    ttft = sorted(r[1] for r in ok)

    def pct(values, q):
        return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")

    return {"ok": len(ok), "failed": len(failures), "errors": [repr(f)[:200] for f in failures[:3]],
            "wall": wall, "rps": len(ok) / wall, "tps": sum(r[2] for r in ok) / wall, "p50": pct(lat, 0.5), "p95": pct(lat, 0.95),
            "ttft_p50": pct(ttft, 0.5), "mean": statistics.mean(lat) if lat else float("nan")}


def _wait_ready(base: str, proc, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit("the server did not come up")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small", help="a preset name or a checkpoint folder")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--no-image", action="store_true", help="text-only prompts")
    parser.add_argument("--serve-only", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_only is not None:
        serve_forever(args.model, args.serve_only, args.max_batch_size)
        return 0

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, ["src", os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, __file__, "--model", args.model, "--serve-only", str(port),
                             "--max-batch-size", str(args.max_batch_size)], env=env)
    try:
        _wait_ready(base, proc)
        from tilevl.serve.commands import served_name

        content = [{"type": "text", "text": "Describe the picture in detail."}]
        if not args.no_image:
            content.insert(0, {"type": "image_url", "image_url": {"url": _image_url()}})
        # Greedy: every phase generates the same replies, so their throughputs compare.
        body = {"model": served_name(args.model, None), "messages": [{"role": "user", "content": content}],
                "max_tokens": args.max_tokens, "temperature": 0, "stream": True, "max_tiles": 1,
                "stream_options": {"include_usage": True}}
        asyncio.run(run_load(base, body, 4, 2))  # warm-up
        print(f"model {args.model}, {args.max_tokens} new tokens per request, "
              f"{'text only' if args.no_image else 'one image (max_tiles=1)'}, max_batch_size {args.max_batch_size}")
        burst = asyncio.run(run_load(base, body, args.clients, args.clients))
        print(f"{args.clients} concurrent streaming clients: {burst['ok']} ok, {burst['failed']} failed "
              f"{burst['errors'] if burst['failed'] else ''}")
        print(f"  {burst['rps']:.2f} requests/s ({burst['tps']:.0f} tokens/s), latency p50 {burst['p50']:.2f} s, p95 {burst['p95']:.2f} s, "
              f"time to first token p50 {burst['ttft_p50']:.2f} s")
        one = asyncio.run(run_load(base, body, 8, 1))
        eight = asyncio.run(run_load(base, body, 32, 8))
        print(f"baseline, concurrency 1: {one['rps']:.2f} requests/s, {one['tps']:.0f} tokens/s (p50 {one['p50']:.2f} s)")
        print(f"ours, concurrency 8:     {eight['rps']:.2f} requests/s, {eight['tps']:.0f} tokens/s (p50 {eight['p50']:.2f} s)")
        if burst["failed"] or one["failed"] or eight["failed"]:
            print("FAILED requests above")
            return 1
        print(f"throughput ratio, concurrency 8 vs 1: {eight['rps'] / one['rps']:.2f}x")
        return 0
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    sys.exit(main())
