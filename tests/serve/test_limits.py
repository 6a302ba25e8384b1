"""Hostile input against a real server: huge text and connections that never finish.

A message of many megabytes must be refused before it is tokenized, while other clients
are served; half-open connections must be closed by the header timeout and must not lock
valid clients out.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from tests.serve.helpers import start_server, stop_server


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status on this system")


@pytest.fixture(scope="module")
def roomy_body_server():
    from tilevl.serve import ServeSettings

    settings = ServeSettings(max_body_bytes=24 * 2**20, max_prompt_tokens=1500, request_timeout=60)
    running = start_server(settings)
    yield running
    stop_server(running)


def test_huge_text_is_refused_untokenized_while_others_are_served(roomy_body_server):
    server = roomy_body_server
    body = json.dumps({"model": "tiny", "max_tokens": 2,
                       "messages": [{"role": "user", "content": "lorem ipsum dolor " * 1_100_000}]})
    assert len(body) < 24 * 2**20  # under the body limit: only the text bound can refuse it
    rss_before = _rss_mib()
    answers = {}

    def post_huge():
        start = time.monotonic()
        reply = httpx.post(server.url + "/v1/chat/completions", content=body, timeout=120,
                           headers={"content-type": "application/json"})
        answers["huge"] = (reply.status_code, reply.json())  # not the response: it holds the body
        answers["huge_s"] = time.monotonic() - start

    thread = threading.Thread(target=post_huge)
    thread.start()
    small = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
        "model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
    thread.join(120)
    assert small.status_code == 200, small.text
    status, reply = answers["huge"]
    assert status == 400
    error = reply["error"]
    assert "max_prompt_chars=24000" in error["message"] and error["code"] == "context_length_exceeded"
    assert answers["huge_s"] < 5, f"refusing 20 MB took {answers['huge_s']:.1f} s"
    del body, answers
    # tokenizing it would have grown the process by over a gigabyte, for good

    assert _rss_mib() - rss_before < 300


@pytest.fixture(scope="module")
def guarded_server():
    from tilevl.serve import ServeSettings

    settings = ServeSettings(header_timeout=0.5, body_timeout=1.0, max_connections=50, request_timeout=60)
    running = start_server(settings)
    yield running
    stop_server(running)


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def _read_until_closed(sock: socket.socket, deadline: float) -> bytes:
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, socket.timeout):
            break
        except ConnectionResetError:
            return data + b"<reset>"
        if not chunk:
            return data + b"<closed>"
        data += chunk
    return data


def test_half_open_connections_time_out_and_do_not_lock_clients_out(guarded_server):
    server = guarded_server
    half_open = []
    try:
        for k in range(200):  # four times max_connections, none finishes its headers
            sock = _connect(server.url)
            if k % 2:
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            half_open.append(sock)
        start = time.monotonic()
        reply = httpx.post(server.url + "/v1/chat/completions", timeout=30, json={
            "model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["finish_reason"] in ("stop", "length")
        # every half-open socket is closed by the header timeout (0.5 s) or evicted for room
        deadline = start + 5
        endings = [_read_until_closed(sock, deadline) for sock in half_open]
        assert all(e.endswith((b"<closed>", b"<reset>")) for e in endings), \
            f"{sum(not e.endswith((b'<closed>', b'<reset>')) for e in endings)} connection(s) still open"
        told = [e for e in endings if e.startswith(b"HTTP/1.1 408")]
        assert told, "no connection with a partial request head was told why it was closed"
        body = json.loads(told[0].split(b"\r\n\r\n", 1)[1].removesuffix(b"<closed>").removesuffix(b"<reset>"))
        assert "header_timeout=0.5" in body["error"]["message"]
    finally:
        for sock in half_open:
            sock.close()


def test_stalled_bodies_are_timed_out_and_a_full_server_answers_json(guarded_server):
    server = guarded_server
    stalled = []
    try:
        for _ in range(50):  # every slot inside a request whose body never completes
            sock = _connect(server.url)
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
                         b"content-length: 1000\r\n\r\n{\"model\"")
            stalled.append(sock)
        reply = httpx.get(server.url + "/health", timeout=10)
        assert reply.status_code == 503
        assert "max_connections=50" in reply.json()["error"]["message"]
        deadline = time.monotonic() + 5
        endings = [_read_until_closed(sock, deadline) for sock in stalled]
        assert all(e.startswith(b"HTTP/1.1 408") for e in endings), endings[0][:200]
        assert b"body_timeout=1" in endings[0]
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200
    finally:
        for sock in stalled:
            sock.close()


def test_malformed_http_is_answered_with_a_json_error(guarded_server):
    sock = _connect(guarded_server.url)
    try:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        answer = _read_until_closed(sock, time.monotonic() + 5)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 400") and b"application/json" in answer
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1].removesuffix(b"<closed>").removesuffix(b"<reset>"))
    assert body["error"]["code"] == "invalid_http"
