"""Chat completions: a validated request becomes chat work for the batching scheduler.

Checks every limit (images, tiles, prompt length, tokens), loads images off the event loop,
renders the prompt with the checkpoint's template, and turns scheduler updates back into
OpenAI responses or stream chunks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import torch

from tilevl.chat.engine import model_template, pad_id
from tilevl.chat.thinking import ChannelStream, ReasoningStream, split_reasoning, thinking_system_message
from tilevl.errors import InputError
from tilevl.inputs.image import load_image, preprocess
from tilevl.inputs.template import IMAGE_PLACEHOLDER, render, stop_token_ids
from tilevl.serve.protocol import (
    ChatCompletionChoice, ChatCompletionChunk, ChatCompletionChunkChoice, ChatCompletionMessage,
    ChatCompletionRequest, ChatCompletionResponse, ChatMessage, DeltaMessage, ImageContentPart,
    ModelCard, ModelList, UsageInfo, completion_id, now,
)
from tilevl.serve.prefix_cache import PrefixCache, TileMemo
from tilevl.serve.scheduler import BatchScheduler, QueueFull, SamplingParams, Update, Work
from tilevl.serve.settings import ServeSettings

log = logging.getLogger("tilevl.serve")


class ServingError(Exception):
    """A request the server answers with an OpenAI error object (4xx: the client's fault)."""

    TYPES = {400: "invalid_request_error", 404: "not_found_error", 408: "timeout_error", 413: "invalid_request_error",
             429: "rate_limit_error", 500: "server_error", 503: "service_unavailable",
             504: "timeout_error"}

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = self.TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")

    def to_dict(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# Text longer than this many characters per allowed prompt token is refused untokenized:
# tokenizing 20 MB takes half a minute and 1.4 GB, only to learn that it cannot fit.
CHARS_PER_TOKEN_BOUND = 16


def count_text_chars(messages: list[ChatMessage]) -> int:
    """Characters of text in all messages (image URLs are bounded by the image limits)."""
    total = 0
    for message in messages:
        if isinstance(message.content, str):
            total += len(message.content)
        elif message.content:
            total += sum(len(part.text) for part in message.content if not isinstance(part, ImageContentPart))
    return total


@dataclass
class _Prepared:
    prompt_ids: list[int]
    tiles: torch.Tensor | None
    image_tiles: list[int]
    image_keys: list[bytes] | None


def messages_to_conversation(messages: list[ChatMessage]) -> tuple[list[dict[str, str]], list[str]]:
    """OpenAI messages → template messages with `<image>` placeholders, and the image URLs.

    Text parts are joined with "\\n" and each image part becomes a placeholder where it
    stands, so an image before the text gives InternVL's own `<image>\\ntext`. Consecutive
    messages of one role are joined (the template wants user/assistant turns alternating).

    Args:
        messages: the request's messages.
    Returns:
        ([{"role", "content"}], image URLs in placeholder order).
    Raises:
        ServingError: 400 naming the message for images outside user turns, empty
            conversations, or a conversation that does not end with a user turn.
    """
    merged: list[dict[str, str]] = []
    urls: list[str] = []
    for i, message in enumerate(messages):
        role = "system" if message.role == "developer" else message.role
        content = message.content
        if content is None:
            if role != "assistant":  # only an assistant turn may be empty (OpenAI's rule)
                raise ServingError(400, f"messages[{i}]: a {message.role} message needs 'content'",
                                   param=f"messages.{i}.content")
            content = ""
        if isinstance(content, str):
            pieces_of_text = [content]
        else:
            pieces, pieces_of_text = [], []
            for j, part in enumerate(content):
                if isinstance(part, ImageContentPart):
                    if role != "user":
                        raise ServingError(400, f"messages[{i}]: images are only allowed in user messages",
                                           param=f"messages.{i}.content.{j}")
                    urls.append(part.image_url.url)
                    pieces.append(IMAGE_PLACEHOLDER)
                else:
                    pieces.append(part.text)
                    pieces_of_text.append(part.text)
            content = "\n".join(pieces)
        if any(IMAGE_PLACEHOLDER in text for text in pieces_of_text):
            # A typed placeholder would ask for an image no part provides.
            raise ServingError(400, f"messages[{i}]: text may not contain '{IMAGE_PLACEHOLDER}'; "
                               "send images as image_url parts", param=f"messages.{i}.content")
        if merged and merged[-1]["role"] == role:
            merged[-1]["content"] += "\n" + content
        else:
            merged.append({"role": role, "content": content})
    if any(m["role"] == "system" for m in merged[1:]):
        raise ServingError(400, "system messages must come before the conversation", param="messages")
    if not merged or merged[-1]["role"] != "user":
        raise ServingError(400, "the last message must be a user message", param="messages")
    return merged, urls


class OpenAIServingChat:
    """The chat-completions service of one loaded model (what the HTTP routes call).

    Args:
        model: a `VisionLanguageModel`.
        tokenizer: its tokenizer.
        model_name: the name clients pass as `model`.
        settings: the limits.
    """

    def __init__(self, model, tokenizer, model_name: str, settings: ServeSettings | None = None) -> None:
        self.model, self.tokenizer, self.model_name = model, tokenizer, model_name
        self.settings = settings or ServeSettings()
        self.template = model_template(model)
        self.max_model_len = int(getattr(model.language_model.config, "max_position_embeddings", 0) or 2**31)
        self.max_prompt_tokens = min(self.settings.max_prompt_tokens, self.max_model_len - 1)
        self.max_prompt_chars = self.settings.max_prompt_chars or CHARS_PER_TOKEN_BOUND * self.max_prompt_tokens
        image_max = model.image_settings.max_num
        self.max_tiles_per_image = min(self.settings.max_tiles_per_image or image_max, image_max * 4)
        self.default_max_tiles = min(image_max, self.max_tiles_per_image)
        self.prefix_cache = PrefixCache(int(self.settings.cache_gb * 2**30)) if self.settings.prefix_cache else None
        self._tile_memo = TileMemo() if self.prefix_cache is not None else None
        self.scheduler = BatchScheduler(
            model, tokenizer, eos_ids=stop_token_ids(tokenizer, self.template),
            text_stops=self.template.stop_strings, pad_id=pad_id(tokenizer, self.template),
            max_batch_size=self.settings.max_batch_size, queue_size=self.settings.queue_size,
            shared_prefix=self._system_prefix(), max_prefill_tokens=self.settings.max_prefill_tokens,
            prefix_cache=self.prefix_cache)
        self.scheduler.keep_special_tokens = self.template.channels  # GPT-OSS: answer by channel
        self._pool = ThreadPoolExecutor(self.settings.preprocess_workers, thread_name_prefix="tilevl-prep")
        self._render_lock = threading.Lock()  # a fast tokenizer must not encode in two threads
        self._preparing = 0

    def _system_prefix(self) -> list[int]:
        """Ids of the default system block (through its end token): most prompts start so."""
        ids = render(self.tokenizer, self.template, [{"role": "user", "content": "?"}],
                     num_image_token=self.model.num_image_token, add_generation_prompt=True).input_ids
        end = stop_token_ids(self.tokenizer, self.template)
        return ids[:ids.index(end[0]) + 1] if end and end[0] in ids else []

    def start(self) -> None:
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=self.model_name, max_model_len=self.max_model_len)])

    def health(self) -> dict:
        """/health: the load, plus the limits and defaults a client (the chat page) fits itself to."""
        return {"status": "ok", "model": self.model_name, "waiting": self.scheduler.waiting,
                "preparing": self._preparing, "running": self.scheduler.running,
                "limits": self.limits(), "defaults": self.defaults(),
                "prefix_cache": self.prefix_cache.summary() if self.prefix_cache else None}

    def limits(self) -> dict:
        """The largest values a request may use (a larger one is refused with a 400)."""
        s = self.settings
        return {"max_tiles_per_image": self.max_tiles_per_image, "max_images_per_request": s.max_images_per_request,
                "max_total_tiles": s.max_total_tiles, "max_tokens": s.max_new_tokens_limit,
                "max_prompt_tokens": self.max_prompt_tokens, "max_prompt_chars": self.max_prompt_chars,
                "max_model_len": self.max_model_len, "max_n": min(s.max_n, s.max_batch_size),
                "max_body_bytes": s.max_body_bytes}

    def defaults(self) -> dict:
        """What the server uses for a field a request leaves out."""
        return {"max_tiles": self.default_max_tiles, "max_tokens": self.settings.max_new_tokens_limit,
                "temperature": self.settings.default_temperature, "top_p": 1.0}

    # ---- the request path --------------------------------------------------------------------
    async def create_chat_completion(
        self, request: ChatCompletionRequest, wait_disconnect: Callable[[], Awaitable[None]],
    ) -> ChatCompletionResponse | AsyncIterator[str]:
        """Answer one request: a response, or (stream=true) an iterator of SSE strings.

        Args:
            request: the validated body.
            wait_disconnect: returns when the client goes away (its generation is cancelled).
        Raises:
            ServingError: 4xx for the client's mistakes, 429 when the queue is full.
        """
        deadline = time.monotonic() + self.settings.request_timeout
        self._check_request(request)
        chars = count_text_chars(request.messages)
        if chars > self.max_prompt_chars:
            raise ServingError(400, f"the messages hold {chars} characters of text; the limit is "
                               f"max_prompt_chars={self.max_prompt_chars} (the prompt may have at most "
                               f"{self.max_prompt_tokens} tokens)", param="messages",
                               code="context_length_exceeded")
        if self.scheduler.waiting + self._preparing >= self.settings.queue_size:
            raise ServingError(429, f"the server is busy ({self.settings.queue_size} requests queued); "
                               "retry later", code="queue_full")
        self._preparing += 1
        try:
            conversation, urls = messages_to_conversation(request.messages)
            conversation = apply_thinking(conversation, request)
            if len(urls) > self.settings.max_images_per_request:
                raise ServingError(400, f"the request has {len(urls)} images; the limit is "
                                   f"max_images_per_request={self.settings.max_images_per_request}",
                                   param="messages", code="too_many_images")
            sources = [await self._fetch(url, k) for k, url in enumerate(urls)]
            loop = asyncio.get_running_loop()
            prepared = await loop.run_in_executor(self._pool, self._prepare, conversation, sources, request)
            params = self._sampling(request, len(prepared.prompt_ids))
            events: asyncio.Queue = asyncio.Queue()

            def on_update(items: list[Update]) -> None:  # worker thread → event loop
                loop.call_soon_threadsafe(events.put_nowait, ("update", items))

            def on_error(status: int, message: str) -> None:
                loop.call_soon_threadsafe(events.put_nowait, ("error", status, message))

            work = Work(prepared.prompt_ids, prepared.tiles, request.n, params, on_update, on_error,
                        image_tiles=prepared.image_tiles, image_keys=prepared.image_keys)
            try:
                self.scheduler.submit(work)
            except QueueFull as exc:
                raise ServingError(429, f"the server is busy ({exc}); retry later", code="queue_full") from None
        finally:
            self._preparing -= 1
        watcher = asyncio.ensure_future(self._watch(wait_disconnect, work, events))
        prompt_tokens = len(prepared.prompt_ids)
        if request.stream:
            return self._stream(request, work, events, watcher, prompt_tokens, deadline)
        try:
            return await self._collect(request, work, events, prompt_tokens, deadline)
        finally:
            watcher.cancel()
            work.cancel()  # a no-op when it finished; stops it on timeout or error

    def _check_request(self, request: ChatCompletionRequest) -> None:
        if request.model != self.model_name:
            raise ServingError(404, f"the model '{request.model}' does not exist; this server has "
                               f"'{self.model_name}'", param="model", code="model_not_found")
        unsupported = {"logprobs": request.logprobs, "top_logprobs": request.top_logprobs,
                       "logit_bias": request.logit_bias, "tools": request.tools}
        for name, value in unsupported.items():
            if value:
                raise ServingError(400, f"'{name}' is not supported by this server", param=name,
                                   code="unsupported_parameter")
        if request.tool_choice not in (None, "none", "auto"):
            raise ServingError(400, "'tool_choice' is not supported", param="tool_choice")
        if request.response_format is not None and request.response_format.type != "text":
            raise ServingError(400, f"response_format '{request.response_format.type}' is not supported",
                               param="response_format", code="unsupported_parameter")
        limit = min(self.settings.max_n, self.settings.max_batch_size)
        if request.n > limit:
            raise ServingError(400, f"'n' is {request.n}; the limit is {limit}", param="n")
        if request.max_tiles is not None and request.max_tiles > self.max_tiles_per_image:
            raise ServingError(400, f"'max_tiles' is {request.max_tiles}; the limit is "
                               f"max_tiles_per_image={self.max_tiles_per_image}", param="max_tiles")
        wanted = request.requested_max_tokens()
        if wanted is not None and wanted > self.settings.max_new_tokens_limit:
            raise ServingError(400, f"'max_tokens' is {wanted}; the limit is "
                               f"max_new_tokens_limit={self.settings.max_new_tokens_limit}",
                               param="max_tokens")

    async def _fetch(self, url: str, index: int) -> str | bytes:
        """A data URL or an allowed local path as it is; a remote image as downloaded bytes."""
        param = "messages"
        if not url.strip():
            raise ServingError(400, f"image {index}: the URL is empty", param=param, code="invalid_image_url")
        if url.startswith("data:"):
            return url
        scheme = urlparse(url).scheme.lower()
        if scheme in ("http", "https"):
            if not self.settings.allow_remote_images:
                raise ServingError(400, f"image {index}: remote image URLs are not allowed on this "
                                   "server (start it with --allow-remote-images); send a data: URL",
                                   param=param, code="remote_images_disabled")
            return await self._download(url, index)
        if scheme == "file" or scheme == "" or (len(scheme) == 1 and os.name == "nt"):
            return str(self._local_path(url, index))
        raise ServingError(400, f"image {index}: unsupported URL scheme '{scheme}:'; use a data: URL",
                           param=param, code="invalid_image_url")

    def _local_path(self, url: str, index: int) -> Path:
        root = self.settings.allowed_local_media_path
        if not root:
            raise ServingError(400, f"image {index}: local files are not allowed on this server "
                               "(start it with --allowed-local-media-path)", param="messages",
                               code="local_files_disabled")
        parsed = urlparse(url)
        if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
            raise ServingError(400, f"image {index}: file URLs must name a local file", param="messages")
        raw = unquote(parsed.path) if parsed.scheme == "file" else url
        # realpath resolves '..' and symlinks, so neither can lead outside the folder.
        path, base = Path(os.path.realpath(raw)), Path(os.path.realpath(root))
        if not path.is_relative_to(base):
            raise ServingError(400, f"image {index}: the path is outside the allowed media folder",
                               param="messages", code="path_not_allowed")
        if not path.is_file():
            raise ServingError(400, f"image {index}: no such file in the allowed media folder",
                               param="messages")
        return path

    async def _download(self, url: str, index: int) -> bytes:
        from tilevl.optional import require

        httpx = require("httpx", "serve", "to fetch remote images")
        limit = self.settings.remote_image_max_bytes
        try:
            async with httpx.AsyncClient(timeout=self.settings.remote_image_timeout,
                                         follow_redirects=True, max_redirects=3) as client:
                async with client.stream("GET", url) as response:
                    if response.status_code != 200:
                        raise ServingError(400, f"image {index}: fetching it answered HTTP "
                                           f"{response.status_code}", param="messages")
                    data = bytearray()
                    async for chunk in response.aiter_bytes():
                        data += chunk
                        if len(data) > limit:
                            raise ServingError(400, f"image {index}: the download is larger than "
                                               f"remote_image_max_bytes={limit}", param="messages")
                    return bytes(data)
        except httpx.HTTPError as exc:
            raise ServingError(400, f"image {index}: cannot fetch it ({type(exc).__name__})",
                               param="messages") from None

    def _prepare(self, conversation, sources, request: ChatCompletionRequest) -> _Prepared:
        """Decode and tile the images, render the prompt (runs in the preprocessing pool)."""
        settings, image_settings = self.settings, self.model.image_settings
        max_tiles = request.max_tiles or self.default_max_tiles
        tiles, patches, keys = [], [], []

        def make_tiles(source) -> torch.Tensor:
            image = load_image(source, max_pixels=settings.max_image_pixels)
            ratio = max(image.size) / min(image.size)
            if ratio > settings.max_image_aspect_ratio:
                raise InputError(f"the image is {image.size[0]}×{image.size[1]}, an aspect ratio of "
                                 f"{ratio:.0f}; the limit is max_image_aspect_ratio="
                                 f"{settings.max_image_aspect_ratio:g}")
            return preprocess(image, image_settings, max_num=max_tiles)

        for k, source in enumerate(sources):
            try:
                if self._tile_memo is None:
                    t = make_tiles(source)
                else:  # with the prefix cache: each image is keyed, and a resent one is not redone
                    t, key = self._tile_memo.tiles(source, max_tiles, lambda s=source: make_tiles(s))
                    keys.append(key)
            except InputError as exc:
                raise ServingError(400, f"image {k}: {exc}", param="messages", code="invalid_image") from None
            tiles.append(t)
            patches.append(t.shape[0])
            if sum(patches) > settings.max_total_tiles:
                raise ServingError(400, f"the images make more than max_total_tiles="
                                   f"{settings.max_total_tiles} tiles; send fewer or smaller images "
                                   "or a lower max_tiles", param="max_tiles", code="too_many_tiles")
        try:
            with self._render_lock:
                rendered = render(self.tokenizer, self.template, conversation, num_patches_list=patches,
                                  num_image_token=self.model.num_image_token, add_generation_prompt=True)
        except InputError as exc:
            raise ServingError(400, str(exc), param="messages") from None
        limit = self.max_prompt_tokens
        if len(rendered.input_ids) > limit:
            raise ServingError(400, f"the prompt is {len(rendered.input_ids)} tokens (images included); "
                               f"the limit is {limit}", param="messages", code="context_length_exceeded")
        return _Prepared(rendered.input_ids, torch.cat(tiles) if tiles else None, patches,
                         keys if self._tile_memo is not None else None)

    def _sampling(self, request: ChatCompletionRequest, prompt_tokens: int) -> SamplingParams:
        room = self.max_model_len - prompt_tokens
        wanted = request.requested_max_tokens()
        if wanted is not None and wanted > room:
            raise ServingError(400, f"the prompt ({prompt_tokens} tokens) plus max_tokens ({wanted}) is "
                               f"more than the model's {self.max_model_len} positions", param="max_tokens",
                               code="context_length_exceeded")
        temperature = request.temperature if request.temperature is not None else self.settings.default_temperature
        return SamplingParams(
            max_new_tokens=wanted or min(self.settings.max_new_tokens_limit, room),
            temperature=temperature, top_p=request.top_p or 1.0, top_k=request.top_k or 0,
            presence_penalty=request.presence_penalty, frequency_penalty=request.frequency_penalty,
            repetition_penalty=request.repetition_penalty or 1.0, seed=request.seed,
            stop=request.stop_list())

    @staticmethod
    async def _watch(wait_disconnect, work: Work, events: asyncio.Queue) -> None:
        """Cancel the work when the client disconnects, and wake whoever waits for events."""
        try:
            await wait_disconnect()
        except Exception:  # noqa: BLE001 - a broken receive channel means the client is gone too
            pass
        work.cancel()
        events.put_nowait(("disconnected",))

    async def _next(self, events: asyncio.Queue, deadline: float):
        try:
            return await asyncio.wait_for(events.get(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            return ("timeout",)

    def _event_error(self, event) -> ServingError | None:
        if event[0] == "error":
            return ServingError(event[1], event[2])
        if event[0] == "timeout":
            return ServingError(504, f"the request took longer than request_timeout="
                                f"{self.settings.request_timeout} s", code="timeout")
        if event[0] == "disconnected":
            return ServingError(499, "the client disconnected")
        return None

    async def _collect(self, request, work, events, prompt_tokens, deadline) -> ChatCompletionResponse:
        texts = [""] * request.n
        reasons: list[str | None] = [None] * request.n
        completion = 0
        while any(r is None for r in reasons):
            event = await self._next(events, deadline)
            error = self._event_error(event)
            if error is not None:
                raise error
            for update in event[1]:
                texts[update.index] += update.text
                if update.finish_reason:
                    reasons[update.index] = update.finish_reason
                    completion += update.completion_tokens
        choices = []
        for i, (t, r) in enumerate(zip(texts, reasons)):
            reasoning, answer = split_reasoning(t, self.template.channels)
            message = ChatCompletionMessage(content=answer, reasoning_content=reasoning)
            choices.append(ChatCompletionChoice(index=i, message=message, finish_reason=r))
        return ChatCompletionResponse(model=self.model_name, choices=choices, usage=UsageInfo(
            prompt_tokens=prompt_tokens, completion_tokens=completion, total_tokens=prompt_tokens + completion))

    async def _stream(self, request, work, events, watcher, prompt_tokens, deadline) -> AsyncIterator[str]:
        ident, created = completion_id(), now()

        def chunk(choices, usage=None) -> str:
            return ChatCompletionChunk(id=ident, created=created, model=self.model_name,
                                       choices=choices, usage=usage).sse()

        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        finished, completion = 0, 0
        # Thinking apart from content, as split_reasoning does for whole replies.
        splitters = [ChannelStream() if self.template.channels else ReasoningStream() for _ in range(request.n)]
        try:
            for i in range(request.n):
                yield chunk([ChatCompletionChunkChoice(index=i, delta=DeltaMessage(role="assistant", content=""))])
            while finished < request.n:
                event = await self._next(events, deadline)
                error = self._event_error(event)
                if error is not None:
                    if event[0] != "disconnected":
                        yield f"data: {_json(error.to_dict())}\n\n"
                    break
                for u in event[1]:
                    reasoning, content = splitters[u.index].feed(u.text or "")
                    if u.finish_reason:
                        tail_reasoning, tail_content = splitters[u.index].finish()
                        reasoning, content = reasoning + tail_reasoning, content + tail_content
                    if not (content or reasoning or u.finish_reason):
                        continue  # the splitter holds a possible tag back
                    delta = DeltaMessage(content=content or None, reasoning_content=reasoning or None)
                    yield chunk([ChatCompletionChunkChoice(index=u.index, delta=delta, finish_reason=u.finish_reason)])
                    if u.finish_reason:
                        finished += 1
                        completion += u.completion_tokens
            if finished == request.n and include_usage:
                yield chunk([], UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=completion,
                                          total_tokens=prompt_tokens + completion))
            yield "data: [DONE]\n\n"
        finally:
            watcher.cancel()
            work.cancel()


def apply_thinking(conversation: list[dict[str, str]], request: ChatCompletionRequest) -> list[dict[str, str]]:
    """Put InternVL3.5's thinking prompt in front when the request asks for thinking mode.

    Raises:
        ServingError: 400 for a malformed thinking field, or thinking with another system message.
    """
    try:
        enable = request.thinking()
    except ValueError as exc:
        raise ServingError(400, str(exc), param="chat_template_kwargs") from None
    if not enable:
        return conversation
    has_system = bool(conversation) and conversation[0]["role"] == "system"
    try:
        system = thinking_system_message(conversation[0]["content"] if has_system else None, True)
    except InputError as exc:
        raise ServingError(400, str(exc), param="messages") from None
    return [{"role": "system", "content": system}, *conversation[1 if has_system else 0:]]


def _json(data) -> str:
    import json

    return json.dumps(data, ensure_ascii=False)
