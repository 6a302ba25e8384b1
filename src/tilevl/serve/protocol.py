"""The OpenAI chat-completions wire format: pydantic request and response models.

Fields follow the order of the OpenAI API reference; tilevl's additions are marked. Only
the HTTP shape lives here: limits and meaning are checked in `serving.py`.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class OpenAIBaseModel(BaseModel):
    """Strict types (a string is not a number, true is not 1); unknown fields are ignored.

    Clients send fields we do not know (`store`, `metadata` …); OpenAI's own server would
    accept them, so we do too rather than break clients.
    """

    model_config = ConfigDict(strict=True, extra="ignore")


# ---- request ------------------------------------------------------------------------------
class TextContentPart(OpenAIBaseModel):
    type: Literal["text"]
    text: str


class ImageURL(OpenAIBaseModel):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImageContentPart(OpenAIBaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[Union[TextContentPart, ImageContentPart], Field(discriminator="type")]


class ChatMessage(OpenAIBaseModel):
    """One message; `developer` is OpenAI's newer name for `system`."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(OpenAIBaseModel):
    include_usage: bool = False


class ResponseFormat(OpenAIBaseModel):
    type: str


class ChatCompletionRequest(OpenAIBaseModel):
    """POST /v1/chat/completions body (https://platform.openai.com/docs/api-reference/chat)."""

    messages: list[ChatMessage] = Field(min_length=1)
    model: str
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    max_tokens: int | None = Field(None, ge=1)  # deprecated by OpenAI, still the common one
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    response_format: ResponseFormat | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    user: str | None = None
    # --8<-- tilevl additions (not in the OpenAI API) --------------------------------------
    max_tiles: int | None = Field(None, ge=1)  # tiles per image, as upstream's max_num
    top_k: int | None = Field(None, ge=0)  # 0 or None: no top-k cut
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)  # transformers' meaning
    # InternVL3.5's thinking mode, as vLLM and SGLang take it (`chat_template_kwargs:
    # {"enable_thinking": true}`) or as a top-level field; other template kwargs are refused.
    chat_template_kwargs: dict[str, Any] | None = None
    enable_thinking: bool | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        # OpenAI allows up to 4 stop sequences; an empty one would stop at once.
        items = [value] if isinstance(value, str) else list(value or ())
        if len(items) > 4:
            raise ValueError(f"at most 4 stop sequences, got {len(items)}")
        if any(not s for s in items):
            raise ValueError("stop sequences must not be empty")
        if any(len(s) > 256 for s in items):
            raise ValueError("stop sequences must be at most 256 characters")
        return value

    def stop_list(self) -> tuple[str, ...]:
        """`stop` as a tuple (a lone string becomes one entry)."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def thinking(self) -> bool:
        """Whether the request asks for thinking mode (either field; they must agree).

        Raises:
            ValueError: an unknown template kwarg, a non-bool `enable_thinking`, or the two
                fields disagreeing (the message names the field).
        """
        kwargs = dict(self.chat_template_kwargs or {})
        nested = kwargs.pop("enable_thinking", None)
        if kwargs:
            raise ValueError(f"chat_template_kwargs: unsupported key(s) {sorted(kwargs)}; "
                             "only 'enable_thinking' is understood")
        if nested is not None and not isinstance(nested, bool):
            raise ValueError("chat_template_kwargs.enable_thinking must be true or false")
        if nested is not None and self.enable_thinking is not None and nested != self.enable_thinking:
            raise ValueError("enable_thinking and chat_template_kwargs.enable_thinking disagree")
        return bool(nested if nested is not None else self.enable_thinking)

    def requested_max_tokens(self) -> int | None:
        """`max_completion_tokens`, else `max_tokens` (OpenAI's precedence)."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


# ---- responses ----------------------------------------------------------------------------
def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class UsageInfo(OpenAIBaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatCompletionMessage(OpenAIBaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    # --8<-- extension (vLLM's name): the thinking the reply marked, apart from `content`
    reasoning_content: str | None = None


class ChatCompletionChoice(OpenAIBaseModel):
    index: int
    message: ChatCompletionMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionResponse(OpenAIBaseModel):
    id: str = Field(default_factory=completion_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[ChatCompletionChoice]
    usage: UsageInfo


class DeltaMessage(OpenAIBaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None  # extension, as in ChatCompletionMessage


class ChatCompletionChunkChoice(OpenAIBaseModel):
    index: int
    delta: DeltaMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(OpenAIBaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]
    usage: UsageInfo | None = None

    def sse(self) -> str:
        """One server-sent event; unset delta fields are left out, as OpenAI does."""
        data = self.model_dump(mode="json")
        for choice in data["choices"]:
            choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
        if data["usage"] is None:
            del data["usage"]
        return f"data: {_dumps(data)}\n\n"


class ModelCard(OpenAIBaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "tilevl"
    # --8<-- tilevl addition: the longest prompt + reply the model's positions allow
    max_model_len: int | None = None


class ModelList(OpenAIBaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(OpenAIBaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(OpenAIBaseModel):
    error: ErrorInfo


def _dumps(data: Any) -> str:
    import json

    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


# ---- validation errors -> one message ----------------------------------------------------
def _is_branch_tag(part: Any) -> bool:
    """Pydantic puts union branch names ('str', 'list[...]', 'tagged-union[...]') in locs."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool", "none") or "[" in part)


def describe_validation_error(exc: ValidationError) -> tuple[str, str | None]:
    """The most telling problem of a pydantic error, as (message, param).

    Args:
        exc: from `ChatCompletionRequest.model_validate_json`.
    Returns:
        A one-line message naming the field, and the field path (`messages.0.content`) or None.
    """
    errors = exc.errors(include_url=False)
    if any(e["type"] == "json_invalid" for e in errors):
        detail = next(e for e in errors if e["type"] == "json_invalid")["msg"]
        return f"the request body is not valid JSON ({detail})", None
    # With a union, pydantic reports one error per branch; the deepest one says most.
    best = max(errors, key=lambda e: len(e["loc"]))
    parts = [str(p) for p in best["loc"] if not _is_branch_tag(p)]
    # A tagged union repeats its tag before the field: image_url.image_url.url.
    parts = [p for i, p in enumerate(parts) if i == 0 or p != parts[i - 1]]
    path = ".".join(parts)
    where = f"'{path}': " if path else "the request body: "
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{where}{best['msg']}{more}", path or None
