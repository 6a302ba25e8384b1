"""The GPU run in one go (≤ 8 minutes on one GPU): decode speed and its share of the bandwidth
bound, batch throughput against transformers' InternVL, server throughput at 1/8/64 clients,
SDPA vs flash attention, 8-bit loading; one table at the end.

Every section checks what it needs (CUDA, flash_attn, bitsandbytes, the serve extra, time left)
and otherwise prints a skipped row with the reason, so the suite runs anywhere; on CPU,
`--device cpu --quick` is the dry run the tests use. Weights are random (the preset's shapes).

Usage: PYTHONPATH=src python benchmarks/gpu_suite.py [--preset internvl2_5-1b] [--device cuda]
       [--sections decode,batch,server,attention,8bit] [--budget-s 420] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import importlib.util
import io
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quantized_decode import greedy_decode, read_bandwidth, weight_bytes_per_token  # noqa: E402

SECTIONS = ("decode", "batch", "server", "attention", "8bit")


class Skip(Exception):
    """A section cannot run here; the message says why."""


@dataclass
class Row:
    section: str
    what: str
    result: str


@dataclass
class Suite:
    """What the sections share: settings, the bf16 model, a folder for exported checkpoints."""
    args: argparse.Namespace
    device: str
    model: object = None
    tokenizer: object = None
    folder: Path | None = None
    bandwidth: float | None = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="internvl2_5-1b", help="architecture (random weights)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1 … or cpu (a dry run)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="seconds after which the remaining sections are skipped (default 420)")
    parser.add_argument("--tokens", type=int, default=128, help="decode steps per timing")
    parser.add_argument("--batch", type=int, default=8, help="prompts per batch in the peer comparison")
    parser.add_argument("--clients", default="1,8,64", help="server concurrency levels")
    parser.add_argument("--tiles", type=int, default=7, help="tiles of the attention section's prompt")
    parser.add_argument("--quick", action="store_true", help="tiny preset, few tokens: a dry run for tests")
    args = parser.parse_args(argv)
    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        parser.error(f"--sections: unknown {unknown or args.sections!r}; allowed: {', '.join(SECTIONS)}")
    args.sections = sections
    try:
        args.clients = tuple(int(c) for c in args.clients.split(","))
    except ValueError:
        parser.error(f"--clients {args.clients!r}: comma-separated integers, e.g. 1,8,64")
    if any(c < 1 for c in args.clients) or args.tokens < 1 or args.batch < 1 or args.tiles < 1:
        parser.error("--clients, --tokens, --batch and --tiles must be positive")
    if args.quick:
        args.preset, args.tokens, args.batch, args.tiles = "tiny", 4, 2, 1
        args.clients = tuple(min(c, 2) for c in args.clients[:2])
    return args


# ---- shared helpers ---------------------------------------------------------------------------
def need_cuda(device: str) -> None:
    if not device.startswith("cuda"):
        raise Skip("needs --device cuda")
    if not torch.cuda.is_available():
        raise Skip("CUDA not available")


def need_module(name: str, install: str) -> None:
    if importlib.util.find_spec(name) is None:
        raise Skip(f"{name} not installed ({install})")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def device_bandwidth(device: str, quick: bool) -> float:
    """Bytes/s: on a GPU, a 1 GiB device-to-device copy (read + write counted), best of 5;
    on a CPU, the streaming read of quantized_decode."""
    if not device.startswith("cuda"):
        return read_bandwidth(64 if quick else 512)
    src = torch.empty(2**30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(6):
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - start)
    del src, dst
    return 2 * 2**30 / best


def checkpoint(suite: Suite, layout: str) -> Path:
    """The suite's model saved once per layout (the peer reads 'native', 8-bit loading 'official')."""
    from tilevl.checkpoint.loader import save_model

    path = suite.folder / layout
    if not path.exists():
        save_model(suite.model, path, layout=layout, tokenizer=suite.tokenizer)
    return path


def image_prompt(suite: Suite, rows: int, tiles: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """`rows` equal-length prompts [rows, 16 + 256·tiles] of random text around the image
    slots, and their tiles [rows·tiles, 3, S, S] (no padding: every row has the same length)."""
    model = suite.model
    g = torch.Generator().manual_seed(0)
    top = min(model.config.llm["vocab_size"], 1000)
    text = torch.randint(3, top, (rows, 16), generator=g)
    text[text == model.img_context_token_id] = 3  # image slots only where the tiles go
    slots = torch.full((rows, model.num_image_token * tiles), model.img_context_token_id)
    ids = torch.cat([text[:, :8], slots, text[:, 8:]], 1).to(suite.device)
    size = model.config.image_size
    pixels = torch.randn(rows * tiles, 3, size, size, generator=g).to(suite.device, model.dtype)
    return ids, pixels


def _decode_row(suite: Suite, model, name: str) -> Row:
    top = min(model.config.llm["vocab_size"], 1000)
    prompt = torch.randint(3, top, (1, 64), generator=torch.Generator().manual_seed(0)).to(suite.device)
    greedy_decode(model, prompt, 4)  # warm-up
    rates = [1 / statistics.median(greedy_decode(model, prompt, suite.args.tokens)[3]) for _ in range(3)]
    rate = statistics.median(rates)
    per_token = weight_bytes_per_token(model)
    bound = suite.bandwidth / per_token
    return Row("decode", f"{name}, 1 stream, {suite.args.tokens} tokens",
               f"{rate:.1f} tok/s (median step; repeats {min(rates):.1f}-{max(rates):.1f}); {100 * rate / bound:.0f} % of "
               f"{bound:.0f} tok/s bound ({per_token / 2**20:.0f} MiB/token at {suite.bandwidth / 1e9:.0f} GB/s)")


# ---- sections ---------------------------------------------------------------------------------
def section_decode(suite: Suite) -> list[Row]:
    """bf16 single-stream greedy decode, then the same model with int8 weights (ours)."""
    from tilevl.checkpoint.quantize import Int8Linear, quantize_model

    rows = [_decode_row(suite, suite.model, "bf16")]
    int8 = quantize_model(copy.deepcopy(suite.model), "int8")
    row = _decode_row(suite, int8, "int8 weight-only")
    head = int8.language_model.get_output_embeddings()
    path = "int8pack kernel" if isinstance(head, Int8Linear) and head._packed_kernel else "cast+GEMM fallback"
    row.result += f"; {path}"
    rows.append(row)
    del int8
    return rows


def section_batch(suite: Suite) -> list[Row]:
    """Batch greedy generation, ours vs transformers' InternVLForConditionalGeneration on the
    same weights (exported with the native layout); token ids compared before timing."""
    from transformers import InternVLForConditionalGeneration

    folder = checkpoint(suite, "native")
    peer = InternVLForConditionalGeneration.from_pretrained(folder, dtype=suite.model.dtype).to(suite.device).eval()
    tokens, rows = suite.args.tokens // 2, suite.args.batch
    ids, pixels = image_prompt(suite, rows)
    mask = torch.ones_like(ids)
    settings = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)

    def ours():
        return suite.model.generate(ids, pixels, attention_mask=mask, **settings)

    def theirs():
        return peer.generate(input_ids=ids, pixel_values=pixels, attention_mask=mask, **settings)[:, ids.shape[1]:]

    with torch.no_grad():
        a, b = ours(), theirs()  # also the warm-up
        same = (a == b).float().mean().item()
        times = {"tilevl": [], "transformers": []}
        for _ in range(2):
            for name, run in (("tilevl", ours), ("transformers", theirs)):
                sync(suite.device)
                start = time.perf_counter()
                run()
                sync(suite.device)
                times[name].append(time.perf_counter() - start)
    del peer
    rate = {name: rows * tokens / min(t) for name, t in times.items()}
    check = "ids identical" if same == 1.0 else f"ids identical at {100 * same:.0f} % of positions ({suite.model.dtype})"
    what = f"batch {rows} x {tokens} tokens, 1 tile each"
    return [Row("batch", f"{what}, transformers", f"{rate['transformers']:.1f} tok/s"),
            Row("batch", f"{what}, tilevl", f"{rate['tilevl']:.1f} tok/s = "
                f"{rate['tilevl'] / rate['transformers']:.2f}x transformers; {check}")]


def section_server(suite: Suite) -> list[Row]:
    """`tilevl serve`'s app under uvicorn in this process; streaming OpenAI clients at each
    concurrency level (client parsing shares the process, so figures are a lower bound)."""
    for module in ("fastapi", "uvicorn", "httpx"):
        need_module(module, "pip install 'tilevl[serve]'")
    import uvicorn
    from serve_load import run_load

    from tilevl.serve import ServeSettings, create_app

    settings = ServeSettings(max_batch_size=64, queue_size=1024)
    app = create_app(suite.model, suite.tokenizer, model_name="bench", settings=settings)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (448, 448), "teal").save(buffer, "PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        tokens = max(4, suite.args.tokens // 4)
        body = {"model": "bench", "max_tokens": tokens, "temperature": 0, "stream": True, "max_tiles": 1,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                          {"type": "text", "text": "Describe the picture."}]}]}
        base = f"http://127.0.0.1:{port}"
        asyncio.run(run_load(base, body, 2, 1))  # warm-up
        rows = []
        for clients in suite.args.clients:
            result = asyncio.run(run_load(base, body, max(2 * clients, 4), clients))
            failed = f"; {result['failed']} FAILED {result['errors']}" if result["failed"] else ""
            rows.append(Row("server", f"{clients} streaming client(s), {tokens} tokens, 1 tile",
                            f"{result['rps']:.2f} req/s, {result['tps']:.0f} tok/s, p50 {result['p50']:.2f} s, "
                            f"first token p50 {result['ttft_p50']:.2f} s{failed}"))
        return rows
    finally:
        server.should_exit = True
        thread.join(30)


def section_attention(suite: Suite) -> list[Row]:
    """The LLM's attention kernels on a long multimodal prompt: prefill time and decode speed."""
    tiles = suite.args.tiles
    ids, pixels = image_prompt(suite, 1, tiles)
    llm = suite.model.language_model
    before = llm.config._attn_implementation
    rows = []
    try:
        for name in ("sdpa", "flash_attention_2", "eager"):
            try:
                if name == "flash_attention_2":
                    need_cuda(suite.device)
                    need_module("flash_attn", "pip install flash-attn")
                llm.set_attn_implementation(name)
                prefill, decode = _time_prompt(suite, ids, pixels)
            except Skip as why:
                rows.append(Row("attention", name, f"skipped: {why}"))
                continue
            except Exception as exc:  # a broken kernel install: say so, keep the other rows
                rows.append(Row("attention", name, f"ERROR {type(exc).__name__}: {str(exc)[:160]}"))
                continue
            rows.append(Row("attention", f"{name}, {ids.shape[1]}-token prompt ({tiles} tile(s))",
                            f"vision + prefill {1000 * prefill:.0f} ms, then "
                            + (f"{decode:.1f} tok/s" if decode else "decode rate lost in noise")))
    finally:
        llm.set_attn_implementation(before)
    return rows


def _time_prompt(suite: Suite, ids: torch.Tensor, pixels: torch.Tensor) -> tuple[float, float | None]:
    """(seconds to the first token, decode tokens/s after it) of one greedy reply, each the
    best of 3; the decode rate is None when noise made the difference meaningless."""
    model, steps = suite.model, suite.args.tokens // 2

    def timed(new_tokens: int) -> float:
        sync(suite.device)
        start = time.perf_counter()
        model.generate(ids, pixels, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        sync(suite.device)
        return time.perf_counter() - start

    with torch.no_grad():
        timed(2)  # warm-up
        first = min(timed(1) for _ in range(3))
        whole = min(timed(steps + 1) for _ in range(3))
    return first, (steps / (whole - first) if whole > first else None)


def section_8bit(suite: Suite) -> list[Row]:
    """bitsandbytes 8-bit loading (`load_in_8bit=True`): decode speed and weight memory."""
    need_cuda(suite.device)
    need_module("bitsandbytes", "pip install 'tilevl[quant]'")
    from tilevl.checkpoint.loader import load_model

    folder = checkpoint(suite, "official")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    model = load_model(folder, dtype=suite.model.dtype, load_in_8bit=True)
    model.img_context_token_id = suite.model.img_context_token_id
    weights = torch.cuda.memory_allocated() - base
    row = _decode_row(suite, model, "bitsandbytes 8-bit")
    row.section = "8bit"
    row.result += f"; weights {weights / 2**30:.2f} GiB on the GPU"
    del model
    return [row]


RUNNERS = {"decode": section_decode, "batch": section_batch, "server": section_server,
           "attention": section_attention, "8bit": section_8bit}


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    from quantized_decode import cpu_flags

    return f"CPU ({cpu_flags()})"


def print_table(rows: list[Row], header: str) -> None:
    width = max(len(r.what) for r in rows)
    print(header)
    print(f"{'section':10} | {'what':{width}} | result")
    print(f"{'-' * 10}-+-{'-' * width}-+-{'-' * 40}")
    for r in rows:
        print(f"{r.section:10} | {r.what:{width}} | {r.result}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    suite = Suite(args=args, device=args.device)
    rows: list[Row] = []
    usable = not args.device.startswith("cuda") or torch.cuda.is_available()
    if usable:
        from tilevl.resolve import open_model

        suite.model, suite.tokenizer = open_model(args.preset, dtype="bf16", device=args.device, quiet=True)
        suite.bandwidth = device_bandwidth(args.device, args.quick)
    with tempfile.TemporaryDirectory() as tmp:
        suite.folder = Path(tmp)
        for name in args.sections:
            started = time.perf_counter()
            try:
                if not usable:
                    raise Skip(f"CUDA not available (asked for --device {args.device})")
                if started - t0 > args.budget_s:
                    raise Skip(f"time budget of {args.budget_s:.0f} s spent")
                rows += RUNNERS[name](suite)
            except Skip as why:
                rows.append(Row(name, "-", f"skipped: {why}"))
            except Exception as exc:  # one broken section must not hide the others' figures
                rows.append(Row(name, "-", f"ERROR {type(exc).__name__}: {str(exc)[:200]}"))
            print(f"[{name}: {time.perf_counter() - started:.1f} s]", file=sys.stderr)
    print_table(rows, f"GPU suite on {device_name(args.device)}; torch {torch.__version__}; preset {args.preset}, "
                      f"bf16, random weights; {time.perf_counter() - t0:.0f} s")
    return 1 if any(r.result.startswith("ERROR") for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
