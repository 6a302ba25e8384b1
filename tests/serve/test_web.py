"""The chat page: its logic under node, and the page in headless Chromium (Playwright).

The page reads the server's limits from /health, so it works out of the box with the
shipped model (`tilevl web tilevl-tiny`, one tile per image); a failed turn leaves the
conversation as it was. Browser tests skip (saying what is missing) without chromium or
playwright; the node test skips without node.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.serve.helpers import make_image, start_server, stop_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install playwright)")
    if not shutil.which("chromium") and not os.path.exists(CHROMIUM):
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        except Exception as exc:  # noqa: BLE001 - a browser that cannot start is a skip, said why
            pytest.skip(f"chromium at {CHROMIUM} does not start under playwright: {exc}")
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def shipped_server():
    """`tilevl web tilevl-tiny` as it comes: the shipped model and the default limits."""
    from tilevl.serve import ServeSettings

    running = start_server(ServeSettings(), web=True, model="tilevl-tiny")
    yield running
    stop_server(running)


def test_page_and_static_files_are_served(server):
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "tilevl chat" in page.text
    for name in ("chat.js", "chat_core.js", "chat.css"):
        assert httpx.get(f"{server.url}/static/{name}").status_code == 200


def test_upload_ask_and_see_a_streamed_reply(server, browser, tmp_path):
    image = tmp_path / "shapes.png"
    make_image(120, 90, seed=3).save(image)
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(server.url + "/")
        page.wait_for_selector("body[data-ready=true]", timeout=10_000)
        assert page.inner_text("[data-testid=model-name]") == "tiny"
        page.set_input_files("[data-testid=images]", str(image))
        page.wait_for_selector("[data-testid=previews] img", timeout=5_000)
        page.fill("[data-testid=max-tokens]", "12")
        page.fill("[data-testid=max-tiles]", "2")
        page.fill("[data-testid=prompt]", "What is in the picture?")
        page.click("[data-testid=send]")
        page.wait_for_selector(".msg.assistant[data-state=done]", timeout=30_000)
        user = page.locator(".msg.user").first
        assert "What is in the picture?" in user.inner_text() and user.locator("img").count() == 1
        reply = page.locator(".msg.assistant").first.inner_text().strip()
        assert reply, "the assistant bubble stayed empty"
        assert "Error" not in reply
        assert "prompt" in page.inner_text("[data-testid=status]")  # usage arrived in the stream

        # a second turn carries the history (two user turns in the conversation now)
        page.fill("[data-testid=prompt]", "And the colours?")
        page.press("[data-testid=prompt]", "Enter")
        page.wait_for_function("document.querySelectorAll('.msg.assistant[data-state=done]').length == 2",
                               timeout=30_000)
        page.click("[data-testid=clear]")
        assert page.locator(".msg").count() == 0
        assert not errors, errors
    finally:
        page.close()


def test_health_states_the_limits_and_defaults_the_page_uses(shipped_server):
    health = httpx.get(shipped_server.url + "/health").json()
    limits, defaults = health["limits"], health["defaults"]
    assert limits["max_tiles_per_image"] == shipped_server.serving.model.image_settings.max_num == 1
    assert 1 <= defaults["max_tiles"] <= limits["max_tiles_per_image"]

    def status(**fields):
        body = {"model": "tilevl-tiny", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
        return httpx.post(shipped_server.url + "/v1/chat/completions", json={**body, **fields}, timeout=60).status_code

    # each stated limit is the real one: at it is served, one above is refused
    assert status(max_tiles=limits["max_tiles_per_image"]) == 200
    assert status(max_tiles=limits["max_tiles_per_image"] + 1) == 400
    assert status(max_tokens=limits["max_tokens"] + 1) == 400
    assert status(temperature=defaults["temperature"], top_p=defaults["top_p"]) == 200


def test_page_logic_under_node_with_the_shipped_model(shipped_server):
    node = shutil.which("node")
    if not node:
        pytest.skip("node is not installed")
    core = Path(__file__).parents[2] / "src/tilevl/serve/static/chat_core.js"
    script = Path(__file__).with_name("js") / "page_turns.js"
    run = subprocess.run([node, str(script), str(core), shipped_server.url], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    hello, bad_image, after = result["turns"]
    assert result["settings"]["maxTiles"] == {"min": 1, "max": 1, "value": 1}
    assert (hello["status"], hello["failed"], hello["max_tiles"]) == (200, False, 1)
    assert bad_image["status"] == 400 and bad_image["failed"]
    # the failed turn is not resent: the next request holds "Hello" and "And now?" only
    assert (after["status"], after["failed"], after["users"]) == (200, False, 2)
    assert result["history_length"] == 4


def test_shipped_model_page_defaults_and_a_failed_turn(shipped_server, browser, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a PNG")
    page = browser.new_page()
    errors, sent = [], []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("request", lambda r: sent.append(r.post_data) if r.url.endswith("/v1/chat/completions") else None)
    try:
        page.goto(shipped_server.url + "/")
        page.wait_for_selector("body[data-ready=true]", timeout=10_000)
        assert page.input_value("[data-testid=max-tiles]") == "1"  # from /health, not the HTML
        page.fill("[data-testid=max-tokens]", "4")  # short replies; every other setting as shipped
        done = "document.querySelectorAll('.msg.assistant[data-state=done]').length == {}"

        page.fill("[data-testid=prompt]", "Hello")  # text only, the page's defaults
        page.click("[data-testid=send]")
        page.wait_for_function(done.format(1), timeout=30_000)

        page.set_input_files("[data-testid=images]", str(bad))
        page.wait_for_selector("[data-testid=previews] img", timeout=5_000)
        page.fill("[data-testid=prompt]", "What is this?")
        page.click("[data-testid=send]")
        page.wait_for_selector(".msg.assistant[data-state=error]", timeout=30_000)
        assert "image 0" in page.locator(".msg.assistant.error").inner_text()
        assert page.locator(".msg.user[data-state=failed]").count() == 1

        page.fill("[data-testid=prompt]", "And now?")
        page.click("[data-testid=send]")
        page.wait_for_function(done.format(2), timeout=30_000)
        last = json.loads(sent[-1])
        assert [m["role"] for m in last["messages"]] == ["user", "assistant", "user"]
        assert "image_url" not in sent[-1] and last["max_tiles"] == 1
        assert page.locator(".msg.assistant.error").count() == 1
        assert not errors, errors
    finally:
        page.close()


def test_thinking_checkbox_asks_for_thinking_and_shows_it_apart(server, browser, monkeypatch):
    """The checkbox sends chat_template_kwargs.enable_thinking; the streamed reasoning_content
    fills a folded "thinking" block, the answer the bubble. The random tiny model never
    thinks, so the scheduler's output is canned here (as in tests/serve/test_thinking.py)."""
    from tilevl.chat.thinking import THINKING_SYSTEM_PROMPT
    from tilevl.serve.scheduler import Update

    serving, prompts = server.serving, []
    real_prepare = serving._prepare

    def prepare(conversation, sources, request):
        prepared = real_prepare(conversation, sources, request)
        prompts.append(serving.tokenizer.decode(prepared.prompt_ids))
        return prepared

    def submit(work):
        for k, piece in enumerate(["<think>\nCount", " the sides.\n</think>\n\n", "A square."]):
            work.on_update([Update(0, piece, "stop" if k == 2 else None, 3 if k == 2 else 0)])

    monkeypatch.setattr(serving, "_prepare", prepare)
    monkeypatch.setattr(serving.scheduler, "submit", submit)
    page = browser.new_page()
    bodies = []
    page.on("request", lambda r: bodies.append(r.post_data_json) if r.url.endswith("/chat/completions") else None)
    try:
        page.goto(server.url + "/")
        page.wait_for_selector("body[data-ready=true]", timeout=10_000)
        page.check("[data-testid=thinking]")
        page.fill("[data-testid=prompt]", "How many sides?")
        page.click("[data-testid=send]")
        page.wait_for_selector(".msg.assistant[data-state=done]", timeout=30_000)
        assert bodies[-1]["chat_template_kwargs"] == {"enable_thinking": True}
        assert prompts[-1].startswith("<|im_start|>system\n" + THINKING_SYSTEM_PROMPT)
        bubble = page.locator(".msg.assistant").first
        assert bubble.locator(".text").inner_text() == "A square."
        assert bubble.locator("[data-testid=thinking-text]").text_content() == "thinkingCount the sides."
        page.uncheck("[data-testid=thinking]")
        page.fill("[data-testid=prompt]", "Sure?")
        page.click("[data-testid=send]")
        page.wait_for_function("document.querySelectorAll('.msg.assistant[data-state=done]').length == 2",
                               timeout=30_000)
        assert bodies[-1]["chat_template_kwargs"] == {"enable_thinking": False}
        # The history sent back keeps the first reply's thinking, as upstream's history does.
        assert bodies[-1]["messages"][1]["content"] == "<think>\nCount the sides.\n</think>\n\nA square."
    finally:
        page.close()
