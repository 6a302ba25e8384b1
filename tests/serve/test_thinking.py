"""Thinking mode through the server: the request fields, the rendered prompt, and
`reasoning_content` kept apart from `content` in whole and streamed replies.

The random tiny model never writes `<think>`; for the reply side the scheduler's output is
replaced by canned updates, as the real scheduler would send them (text in pieces).
"""

from __future__ import annotations

import httpx
import pytest

from tilevl.chat.thinking import THINKING_SYSTEM_PROMPT
from tilevl.serve.scheduler import Update

openai = pytest.importorskip("openai")

PIECES = ["<thi", "nk>\nLook", " closely.\n</th", "ink>\n\nA red", " square."]


@pytest.fixture()
def prompts(server, monkeypatch):
    """Record the prompt of every request (decoded), still serving it for real."""
    serving, seen = server.serving, []
    real = serving._prepare

    def prepare(conversation, sources, request):
        prepared = real(conversation, sources, request)
        seen.append(serving.tokenizer.decode(prepared.prompt_ids))
        return prepared

    monkeypatch.setattr(serving, "_prepare", prepare)
    return seen


@pytest.fixture()
def canned(server, monkeypatch):
    """The scheduler answers every choice with PIECES, one update per piece."""
    def submit(work):
        for index in range(work.n):
            for k, piece in enumerate(PIECES):
                last = k == len(PIECES) - 1
                work.on_update([Update(index, piece, "stop" if last else None, 9 if last else 0)])

    monkeypatch.setattr(server.serving.scheduler, "submit", submit)


def test_chat_template_kwargs_enable_thinking_renders_the_prompt(server, prompts):
    client = server.openai()
    messages = [{"role": "user", "content": "Hello!"}]
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0,
                                           extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    assert prompts[-1].startswith("<|im_start|>system\n" + THINKING_SYSTEM_PROMPT + "<|im_end|>")
    serving = server.serving
    expected = serving.model.chat(serving.tokenizer, None, "Hello!", dict(max_new_tokens=8, do_sample=False),
                                  enable_thinking=True)
    assert reply.choices[0].message.content == expected
    client.chat.completions.create(model="tiny", messages=messages, max_tokens=2, extra_body={"enable_thinking": True})
    assert THINKING_SYSTEM_PROMPT in prompts[-1]
    client.chat.completions.create(model="tiny", messages=messages, max_tokens=2)
    assert THINKING_SYSTEM_PROMPT not in prompts[-1]


@pytest.mark.parametrize("body, match", [
    ({"chat_template_kwargs": {"enable_thinking": True}, "enable_thinking": False}, "disagree"),
    ({"chat_template_kwargs": {"tools": []}}, "unsupported key"),
    ({"chat_template_kwargs": {"enable_thinking": "yes"}}, "true or false"),
    ({"enable_thinking": True, "messages": [{"role": "system", "content": "Be terse."},
                                            {"role": "user", "content": "Hi"}]}, "cannot be combined"),
])
def test_bad_thinking_requests_are_400(server, body, match):
    request = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, **body}
    response = httpx.post(server.url + "/v1/chat/completions", json=request, timeout=30)
    assert response.status_code == 400
    assert match in response.json()["error"]["message"]


def test_reasoning_content_apart_from_content(server, canned):
    client = server.openai()
    messages = [{"role": "user", "content": "What is it?"}]
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20,
                                           extra_body={"enable_thinking": True})
    message = reply.choices[0].message
    assert message.content == "A red square."
    assert message.model_extra["reasoning_content"] == "Look closely."
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == "A red square."
    assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == "Look closely."
    assert not any("<think>" in (d.content or "") for d in deltas)


# ---- the GPT-OSS (harmony) template through the server --------------------------------------
HARMONY = "<|channel|>analysis<|message|>Compare them.<|end|><|start|>assistant<|channel|>final<|message|>9.8 is."


@pytest.fixture()
def harmony_serving():
    import tilevl
    from tilevl.checkpoint.tokenizer import IMG_CONTEXT_TOKEN, build_bpe_tokenizer
    from tilevl.serve.serving import OpenAIServingChat

    tok = build_bpe_tokenizer(vocab_size=400, extra_special_tokens=("<|start|>", "<|message|>", "<|channel|>", "<|return|>"))
    model = tilevl.build_model("tiny", seed=0)
    model.config.template = "internvl3_5_gpt_oss"
    model.img_context_token_id = tok.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    return OpenAIServingChat(model, tok, "tiny-oss")


def test_harmony_replies_keep_their_markup_in_the_scheduler(harmony_serving):
    from tilevl.serve.scheduler import SamplingParams, Work, _Row

    serving, tok = harmony_serving, harmony_serving.tokenizer
    assert serving.scheduler.keep_special_tokens
    row = _Row(Work([1], None, 1, SamplingParams(max_new_tokens=99), print, print), 0, None)
    updates = [serving.scheduler._advance(row, t) for t in tok(HARMONY, add_special_tokens=False)["input_ids"]]
    end = serving.scheduler._advance(row, tok.convert_tokens_to_ids("<|return|>"))
    assert end.finish_reason == "stop"
    assert "".join(u.text for u in [*updates, end] if u) == HARMONY


def _ask(serving, stream: bool):
    import asyncio

    from tilevl.serve.protocol import ChatCompletionRequest

    async def run():
        request = ChatCompletionRequest(model="tiny-oss", messages=[{"role": "user", "content": "Which?"}],
                                        max_tokens=20, stream=stream)
        result = await serving.create_chat_completion(request, asyncio.Event().wait)
        if not stream:
            return result
        return [chunk async for chunk in result]

    return asyncio.run(run())


def test_harmony_reasoning_content_whole_and_streamed(harmony_serving, monkeypatch):
    import json
    import re

    pieces = re.findall(r"<\|\w+\|>|[^<]{1,4}", HARMONY)

    def submit(work):
        for k, piece in enumerate(pieces):
            last = k == len(pieces) - 1
            work.on_update([Update(0, piece, "stop" if last else None, 9 if last else 0)])

    monkeypatch.setattr(harmony_serving.scheduler, "submit", submit)
    message = _ask(harmony_serving, stream=False).choices[0].message
    assert (message.content, message.reasoning_content) == ("9.8 is.", "Compare them.")
    events = [json.loads(e[len("data: "):]) for e in _ask(harmony_serving, stream=True) if "[DONE]" not in e]
    deltas = [c["delta"] for e in events for c in e["choices"]]
    assert "".join(d.get("content", "") for d in deltas) == "9.8 is."
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Compare them."
