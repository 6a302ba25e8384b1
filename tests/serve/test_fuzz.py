"""Hostile and malformed requests: each gets a 4xx OpenAI error object, the server lives on.

Over 200 requests (bad JSON, wrong types, broken and oversized images, decompression
bombs, path traversal, remote URLs, huge bodies …) are sent 8 at a time; afterwards
/health answers, a normal request still works, and the process' memory is back near
where it started.
"""

from __future__ import annotations

import base64
import ctypes
import gc
import io
import json
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from tests.serve.helpers import data_url, make_image, png_bytes

psutil = pytest.importorskip("psutil")

GOOD_MESSAGE = [{"role": "user", "content": "hi"}]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png(width: int = 40_000, height: int = 25_000) -> bytes:
    """A PNG header claiming 10⁹ pixels, with a few bytes of (zlib-compressed zero) data."""
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    data = _png_chunk(b"IDAT", zlib.compress(b"\0" * 4096))
    return b"\x89PNG\r\n\x1a\n" + header + data + _png_chunk(b"IEND", b"")


def broken_png() -> bytes:
    """A valid 8×8 PNG header followed by image data that is not zlib."""
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + _png_chunk(b"IDAT", b"not zlib data") + _png_chunk(b"IEND", b"")


def _image_message(*urls: str, text: str = "What is it?") -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return [{"role": "user", "content": parts + [{"type": "text", "text": text}]}]


def hostile_requests(media_dir) -> list[tuple[str, bytes | dict]]:
    """(label, body): a dict is sent as JSON, bytes as they are."""
    cases: list[tuple[str, bytes | dict]] = []
    for raw in (b"", b"{", b"null", b"[]", b"123", b'"text"', b"\xff\xfe\x00", b"{'a': 1}", b"NaN",
                b"[" * 50_000, b'{"model": "tiny", "messages": [' + b"{}," * 10 + b"]}", b"\x00" * 100):
        cases.append(("bad json", raw))
    base = {"model": "tiny", "messages": GOOD_MESSAGE, "max_tokens": 4}
    wrong_values = {
        "model": [None, 123, [], {}], "messages": [None, "hi", 5, [], [1], [None], {"role": "user"}],
        "max_tokens": [0, -1, 10**9, 10**30, "4", True, 1.5, [4]],
        "max_completion_tokens": [0, 10**9, "x"], "n": [0, -3, 100, "2", 2.5, None],
        "temperature": [-1, 5, "hot", [], True], "top_p": [0, -0.5, 2, "1"],
        "seed": ["x", 2**70, 1.5], "stop": [5, ["a"] * 5, [""], "", [1, 2], {"a": 1}],
        "stream": ["yes", 1, None], "logprobs": [True], "tools": [[{"type": "function"}]],
        "logit_bias": [{"5": 100}], "response_format": [{"type": "json_object"}, "json"],
        "max_tiles": [0, -1, 1000, "6"], "top_k": [-1, "5"], "repetition_penalty": [0, -1, 100],
        "frequency_penalty": [3, "0"], "presence_penalty": [-5], "stream_options": ["yes"],
    }
    for field, values in wrong_values.items():
        for value in values:
            cases.append((f"{field}={value!r}"[:60], {**base, field: value}))
    for field in ("model", "messages"):
        cases.append((f"missing {field}", {k: v for k, v in base.items() if k != field}))
    bad_messages = [
        [{"role": "robot", "content": "hi"}], [{"role": "user"}], [{"role": "user", "content": 5}],
        [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}],
        [{"role": "user", "content": [{"type": "text"}]}], [{"role": "user", "content": [{"text": "x"}]}],
        [{"role": "user", "content": [{"type": "image_url"}]}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": "data:image/png;base64,AA"}]}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": 5}}]}],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
        [{"role": "user", "content": "a"}, {"role": "system", "content": "late"}, {"role": "user", "content": "b"}],
        [{"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]},
         {"role": "user", "content": "b"}],
        [{"role": "tool", "content": "x"}], [{"role": "system", "content": "only system"}],
        [{"role": "user", "content": "<img><IMG_CONTEXT></img>"}], [{"role": "user", "content": "<image> alone"}],
        [{"role": "user", "content": "long " * 3000}],
    ]
    cases += [("bad messages", {**base, "messages": m}) for m in bad_messages]
    noise = make_image(60, 40)
    truncated = png_bytes(noise)[:200]
    strip = Image.new("RGB", (1, 100_000), "white")
    image_urls = [
        "data:image/png;base64,!!!notbase64!!!", "data:image/png;base64,AAA", "data:image/png,rawdata",
        "data:text/plain;base64," + base64.b64encode(b"hello").decode(), "data:image/png;base64,",
        data_url(truncated), data_url(b"not an image at all" * 10), data_url(png_bytes(strip)),
        data_url(bomb_png()), data_url(bomb_png(100_000, 1)), data_url(broken_png()),
        data_url(b"GIF89a" + b"\xff" * 20, "image/gif"), data_url(b"\xff\xd8\xff\xe0" + b"\0" * 50, "image/jpeg"),
        "file:///etc/passwd", f"file://{media_dir}/../../../../etc/passwd", f"{media_dir}/../../../../etc/passwd",
        "file://otherhost/etc/passwd", "../../etc/passwd", "/etc/passwd", f"file://{media_dir}/missing.png",
        f"file://{media_dir}/%2e%2e/%2e%2e/%2e%2e/etc/passwd", f"file://{media_dir}/escape.png", str(media_dir),
        "http://127.0.0.1:1/x.png", "https://example.com/a.png", "HTTP://example.com/a.png", "ftp://x/y.png",
        "gopher://x", "javascript:alert(1)", "", "   ", "s3://bucket/key.png",
    ]
    cases += [(f"image {u[:40]}", {**base, "messages": _image_message(u)}) for u in image_urls]
    tiny = data_url(png_bytes(make_image(2, 2)))
    cases.append(("500 images", {**base, "messages": _image_message(*[tiny] * 500)}))
    cases.append(("9 images", {**base, "messages": _image_message(*[tiny] * 9)}))
    wide = data_url(png_bytes(make_image(300, 50)))
    cases.append(("too many tiles", {**base, "max_tiles": 6, "messages": _image_message(*[wide] * 8)}))
    big = "x" * (2**20 + 10)
    cases.append(("oversized body", {**base, "messages": [{"role": "user", "content": big}]}))
    cases.append(("oversized image", {**base, "messages": _image_message("data:image/png;base64," + "A" * 2**21)}))
    return cases


def _rss() -> int:
    gc.collect()
    try:  # glibc keeps freed arenas; hand them back so RSS measures what is really held
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    return psutil.Process(os.getpid()).memory_info().rss


def _check_error(response: httpx.Response, label: str) -> None:
    assert 400 <= response.status_code < 500, (label, response.status_code, response.text[:300])
    body = response.json()
    assert set(body) == {"error"}, (label, body)
    assert set(body["error"]) == {"message", "type", "param", "code"}, (label, body)
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in response.text


def test_hostile_requests_get_4xx_error_objects(server, media_dir):
    os.symlink("/etc/passwd", media_dir / "escape.png") if not (media_dir / "escape.png").exists() else None
    cases = hostile_requests(media_dir)
    cases += [(f"{label} (again)", body) for label, body in cases]  # again, racing the first ones
    assert len(cases) >= 200
    url = server.url + "/v1/chat/completions"
    with httpx.Client(timeout=60) as client:
        def send(case):
            label, body = case
            if isinstance(body, dict):
                return label, client.post(url, json=body)
            return label, client.post(url, content=body, headers={"content-type": "application/json"})

        for label, response in map(send, cases[:20]):  # warm every path once before measuring
            _check_error(response, label)
        baseline = _rss()
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(send, cases))
        for label, response in results:
            _check_error(response, label)
        # chunked (no Content-Length) oversized body, and other methods and paths
        chunks = (b"x" * 65536 for _ in range(40))
        _check_error(client.post(url, content=chunks), "chunked oversized body")
        _check_error(client.get(url), "GET on a POST route")
        _check_error(client.post(server.url + "/v1/completions", json={}), "unknown path")
        statuses = {label: r.status_code for label, r in results}
        assert statuses["oversized body"] == 413 and statuses["500 images"] == 400
        assert httpx.get(server.url + "/health").json()["status"] == "ok"
        ok = client.post(url, json={"model": "tiny", "messages": GOOD_MESSAGE, "max_tokens": 3})
        assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] in ("stop", "length")
    grown = (_rss() - baseline) / 2**20
    assert grown < 64, f"RSS grew by {grown:.0f} MiB over {len(results)} hostile requests"


def test_a_huge_declared_body_is_refused_without_reading_it(server):
    """Beyond 4× max_body_bytes the server answers at once; the client may see the 413 or a
    closed connection, and the server must go on serving either way."""
    import socket

    host, port = server.url.rsplit(":", 1)
    with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000000000\r\n\r\n{")
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413")
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1] or b'{"error": {}}')["error"] is not None
    assert httpx.get(server.url + "/health").status_code == 200


def test_a_server_error_is_a_500_object_without_traceback(server, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(server.serving, "_prepare", broken)
    response = httpx.post(server.url + "/v1/chat/completions", timeout=30,
                          json={"model": "tiny", "messages": GOOD_MESSAGE, "max_tokens": 2})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error" and "secret" not in response.text and "Traceback" not in response.text
    monkeypatch.undo()
    assert httpx.post(server.url + "/v1/chat/completions", timeout=30, json={
        "model": "tiny", "messages": GOOD_MESSAGE, "max_tokens": 2}).status_code == 200


def test_the_hostile_images_are_what_they_claim():
    with pytest.raises(Image.DecompressionBombError, match="1000000000 pixels"):
        Image.open(io.BytesIO(bomb_png()))
    with pytest.raises(OSError):
        Image.open(io.BytesIO(broken_png())).load()
