"""The wire format and the message translation, without a server.

Image parts become `<image>` placeholders where they stand; types are strict; pydantic
errors become one message naming the field.
"""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from tilevl.serve.protocol import (
    ChatCompletionChunk, ChatCompletionChunkChoice, ChatCompletionRequest, DeltaMessage,
    describe_validation_error,
)
from tilevl.serve.serving import ServingError, messages_to_conversation


def _request(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate_json(json.dumps({"model": "m", **fields}))


def _image(url="data:image/png;base64,AA"):
    return {"type": "image_url", "image_url": {"url": url}}


def test_image_parts_become_placeholders_in_place():
    req = _request(messages=[
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [_image("a"), {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": [{"type": "text", "text": "Compare"}, _image("b"), _image("c")]},
        {"role": "user", "content": "and say why"},
    ])
    conversation, urls = messages_to_conversation(req.messages)
    assert conversation == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "<image>\nWhat is this?"},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Compare\n<image>\n<image>\nand say why"},
    ]
    assert urls == ["a", "b", "c"]


@pytest.mark.parametrize("messages, match", [
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "last message"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}, {"role": "user", "content": "b"}],
     "system messages"),
    ([{"role": "assistant", "content": [_image()]}, {"role": "user", "content": "x"}], "only allowed in user"),
    ([{"role": "user", "content": "look: <image>"}], "may not contain"),
    ([{"role": "user"}], "needs 'content'"),
])
def test_conversations_the_template_cannot_take(messages, match):
    with pytest.raises(ServingError, match=match) as info:
        messages_to_conversation(_request(messages=messages).messages)
    assert info.value.status == 400 and info.value.to_dict()["error"]["type"] == "invalid_request_error"


def test_strict_types_and_one_line_errors():
    cases = {
        '{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "1"}': "temperature",
        '{"model": "m", "messages": [{"role": "user", "content": "x"}], "n": true}': "n",
        '{"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", '
        '"image_url": {"url": 5}}]}]}': "messages.0.content.0.image_url.url",
        '{"model": "m", "messages": []}': "messages",
    }
    for body, param in cases.items():
        with pytest.raises(ValidationError) as info:
            ChatCompletionRequest.model_validate_json(body)
        message, where = describe_validation_error(info.value)
        assert where == param and param in message, (message, where)
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate_json("{not json")
    assert describe_validation_error(info.value) [0].startswith("the request body is not valid JSON")


def test_request_helpers_and_extensions():
    req = _request(messages=[{"role": "user", "content": "x"}], stop="END", max_tokens=5,
                   max_completion_tokens=7, max_tiles=2, top_k=4, unknown_field=1)
    assert req.stop_list() == ("END",) and req.requested_max_tokens() == 7
    assert (req.max_tiles, req.top_k) == (2, 4)
    with pytest.raises(ValidationError, match="at most 4"):
        _request(messages=[{"role": "user", "content": "x"}], stop=list("abcde"))


def test_chunks_leave_unset_delta_fields_out():
    chunk = ChatCompletionChunk(id="c", created=1, model="m", choices=[
        ChatCompletionChunkChoice(index=0, delta=DeltaMessage(content="hi"))])
    line = chunk.sse()
    assert line.startswith("data: ") and line.endswith("\n\n")
    data = json.loads(line[6:])
    assert data["choices"][0]["delta"] == {"content": "hi"} and data["choices"][0]["finish_reason"] is None
    assert "usage" not in data and data["object"] == "chat.completion.chunk"
