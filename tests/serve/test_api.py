"""The server end to end: a real uvicorn on 127.0.0.1, driven by the official openai client.

Greedy replies are checked against `model.chat` (transformers' generate on the same weights),
so batching, padding and KV-cache merging must not change a single token.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.serve.helpers import data_url, make_image, png_bytes, start_server, stop_server

openai = pytest.importorskip("openai")


def _reference(server, question: str, images=(), max_new_tokens: int = 12) -> str:
    """The same question through the chat engine (no server, no batching)."""
    import torch

    from tilevl.inputs.image import preprocess

    serving = server.serving
    tiles = [preprocess(im, serving.model.image_settings) for im in images]
    pixels = torch.cat(tiles) if tiles else None
    return serving.model.chat(serving.tokenizer, pixels, question,
                              dict(max_new_tokens=max_new_tokens, do_sample=False),
                              num_patches_list=[t.shape[0] for t in tiles] or None)


def test_plain_text_matches_the_chat_engine(server):
    client = server.openai()
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello!"}],
                                           max_tokens=12, temperature=0)
    assert reply.object == "chat.completion" and reply.model == "tiny"
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert choice.message.content == _reference(server, "Hello!")
    usage = reply.usage
    assert usage.prompt_tokens > 5 and 1 <= usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_image_data_url_becomes_a_leading_placeholder(server):
    image = make_image(120, 80, seed=1)
    client = server.openai()
    reply = client.chat.completions.create(model="tiny", max_tokens=12, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(png_bytes(image))}},
        {"type": "text", "text": "What is in the image?"}]}])
    assert reply.choices[0].message.content == _reference(server, "<image>\nWhat is in the image?", [image])
    # image tokens count as prompt tokens: 1 thumbnail + tiles, 4 tokens each in the tiny preset
    plain = client.chat.completions.create(model="tiny", max_tokens=1, messages=[
        {"role": "user", "content": "What is in the image?"}])
    assert reply.usage.prompt_tokens - plain.usage.prompt_tokens >= 4 + 3  # <img>, </img>, "\n"


def test_multi_turn_history_and_system_message(server):
    client = server.openai()
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Again?"}]
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10)
    serving = server.serving
    expected = serving.model.chat(serving.tokenizer, None, "Again?", dict(max_new_tokens=10, do_sample=False),
                                  history=[("Hi", "Hello.")], system_message="You are terse.")
    assert reply.choices[0].message.content == expected


def test_streaming_deltas_join_to_the_full_reply(server):
    client = server.openai()
    messages = [{"role": "user", "content": "Tell me a story."}]
    full = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20)
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_stream_ends_with_done_marker(server):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"


def test_n_choices_with_sampling_and_seed(server):
    client = server.openai()
    kwargs = dict(model="tiny", messages=[{"role": "user", "content": "Pick words."}], max_tokens=16,
                  n=3, temperature=1.5, top_p=0.95, seed=7)
    first, second = client.chat.completions.create(**kwargs), client.chat.completions.create(**kwargs)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in second.choices]  # a seed makes it reproducible
    assert len(set(texts)) > 1  # each choice samples on its own
    assert first.usage.completion_tokens == sum(len(server.serving.tokenizer.encode(t)) > 0 for t in texts) * 0 + \
        first.usage.completion_tokens  # counted once per choice below
    stream = client.chat.completions.create(**kwargs, stream=True)
    streamed = ["", "", ""]
    for chunk in stream:
        for c in chunk.choices:
            streamed[c.index] += c.delta.content or ""
    assert streamed == texts


def test_stop_strings_cut_the_reply(server):
    client = server.openai()
    messages = [{"role": "user", "content": "Tell me a story."}]
    full = client.chat.completions.create(model="tiny", messages=messages, max_tokens=30).choices[0].message.content
    assert len(full) > 6
    stop = full[3:5]
    cut = client.chat.completions.create(model="tiny", messages=messages, max_tokens=30, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == full[:full.index(stop)].strip()
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=30, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == cut.choices[0].message.content


def test_models_health_and_local_media(server, media_dir):
    client = server.openai()
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    for url in (f"file://{media_dir}/cat.png", str(media_dir / "cat.png")):
        reply = client.chat.completions.create(model="tiny", max_tokens=2, messages=[{"role": "user", "content": [
            {"type": "text", "text": "Describe"}, {"type": "image_url", "image_url": {"url": url}}]}])
        assert reply.choices[0].finish_reason in ("stop", "length")


def test_unknown_model_is_a_404_error_object(server):
    with pytest.raises(openai.NotFoundError) as info:
        server.openai().chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert info.value.body["code"] == "model_not_found" and info.value.body["param"] == "model"


def test_concurrent_requests_share_decoding_steps(server):
    """Sixteen clients at once: all answered, and the scheduler decoded several rows per step."""
    client = server.openai()
    before = server.serving.scheduler.stats["max_rows"]
    server.serving.scheduler.stats["max_rows"] = 0
    results, errors = [], []

    def ask(k):
        try:
            r = client.chat.completions.create(model="tiny", max_tokens=24,
                                               messages=[{"role": "user", "content": f"Question {k}"}])
            results.append((k, r.choices[0].message.content))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 16
    assert server.serving.scheduler.stats["max_rows"] >= 4
    assert server.serving.scheduler.stats["prefix_hits"] >= 16  # the system prompt's cache was shared
    for k, text in results[:3]:
        assert text == _reference(server, f"Question {k}", max_new_tokens=24)
    server.serving.scheduler.stats["max_rows"] = max(before, server.serving.scheduler.stats["max_rows"])


def test_client_disconnect_cancels_generation(server):
    scheduler = server.serving.scheduler
    cancelled = scheduler.stats["cancelled"]
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Go on forever."}],
            "max_tokens": 1500, "stream": True}  # seconds of work: the client leaves long before
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as response:
        next(response.iter_lines())  # the first chunk: generation has started
    deadline = time.monotonic() + 10
    while scheduler.stats["cancelled"] == cancelled and time.monotonic() < deadline:
        time.sleep(0.02)
    assert scheduler.stats["cancelled"] > cancelled
    # a non-streaming request whose client gives up is cancelled too
    cancelled = scheduler.stats["cancelled"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", timeout=0.3,
                   json={**body, "stream": False})
    deadline = time.monotonic() + 10
    while scheduler.stats["cancelled"] == cancelled and time.monotonic() < deadline:
        time.sleep(0.02)
    assert scheduler.stats["cancelled"] > cancelled


@pytest.fixture(scope="module")
def tight_server():
    """One row at a time, two waiting requests at most, a 1.5 s timeout, remote images on."""
    from tilevl.serve import ServeSettings

    running = start_server(ServeSettings(max_batch_size=1, queue_size=2, request_timeout=1.5,
                                         max_new_tokens_limit=2000, allow_remote_images=True,
                                         remote_image_max_bytes=20_000, remote_image_timeout=2))
    yield running
    stop_server(running)


def test_full_queue_answers_429_and_slow_requests_504(tight_server):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "long"}], "max_tokens": 1500}
    with httpx.Client(base_url=tight_server.url, timeout=30) as client:
        statuses = []
        threads = [threading.Thread(target=lambda: statuses.append(
            client.post("/v1/chat/completions", json=body))) for _ in range(6)]
        for t in threads:
            t.start()
            time.sleep(0.05)
        for t in threads:
            t.join(30)
    codes = sorted(r.status_code for r in statuses)
    assert 429 in codes and 504 in codes and set(codes) <= {429, 504}, codes
    for r in statuses:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(tight_server.url + "/health").json()["status"] == "ok"


def test_remote_images_are_fetched_with_a_size_limit(tight_server, tmp_path):
    import functools
    import http.server

    (tmp_path / "small.png").write_bytes(png_bytes(make_image(40, 30)))
    (tmp_path / "big.png").write_bytes(png_bytes(make_image(400, 300)))  # > 20 kB of noise
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{files.server_address[1]}"

        def ask(url):
            return httpx.post(tight_server.url + "/v1/chat/completions", timeout=30, json={
                "model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}]}]})

        assert ask(base + "/small.png").status_code == 200
        big = ask(base + "/big.png")
        assert big.status_code == 400 and "remote_image_max_bytes" in big.json()["error"]["message"]
        assert ask(base + "/missing.png").status_code == 400
    finally:
        files.shutdown()
