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
