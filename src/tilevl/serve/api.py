"""The HTTP layer: FastAPI app factory, OpenAI-compatible routes and error handlers.

Routes only translate HTTP to `OpenAIServingChat` calls and back; every failure leaves as
an OpenAI error object (4xx for the client's fault, 500 without a stack trace).
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations, and
# `fastapi.Request` is only a local name inside build_router (fastapi is optional).
import asyncio
import json
import logging
from contextlib import asynccontextmanager

from tilevl.optional import require
from tilevl.serve.protocol import ChatCompletionRequest, ChatCompletionResponse, describe_validation_error
from tilevl.serve.serving import OpenAIServingChat, ServeSettings, ServingError

log = logging.getLogger("tilevl.serve")

# Beyond the limit we keep reading (and dropping) up to this much, so the client gets its
# 413 instead of a connection reset while it is still sending.
_DRAIN_FACTOR = 4
# After a request body this large, freed heap pages are handed back to the system: glibc
# keeps them otherwise, and one 20 MB message would leave the server that much bigger.
_TRIM_AFTER_BYTES = 4 * 2**20


_last_trim = [0.0]


def give_memory_back(min_interval: float = 1.0) -> None:
    """Return the freed heap to the operating system (glibc's malloc_trim; a no-op elsewhere).

    At most once per `min_interval` seconds: it holds the GIL for a garbage collection, so a
    client sending large bodies back to back must not stall the event loop each time.
    """
    import ctypes
    import ctypes.util
    import gc
    import time

    if time.monotonic() - _last_trim[0] < min_interval:
        return
    _last_trim[0] = time.monotonic()
    gc.collect()  # a refused request's traceback may still hold its body in a cycle
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to trim
        pass


def error_response(status: int, message: str, *, type_: str | None = None, param: str | None = None,
                   code: str | None = None):
    """A JSONResponse holding `{"error": {message, type, param, code}}`."""
    from fastapi.responses import JSONResponse

    err = ServingError(status, message, param=param, code=code)
    if type_:
        err.type = type_
    return JSONResponse(err.to_dict(), status_code=status)


async def read_body(request, limit: int, timeout: float) -> bytes:
    """The request body, or ServingError 413 when it is larger than `limit` bytes.

    Args:
        request: a Starlette request.
        limit: max_body_bytes.
        timeout: body_timeout, the longest wait for the next chunk (then ServingError 408).
    Returns:
        The body bytes.
    """
    too_large = ServingError(413, f"the request body is larger than max_body_bytes={limit}",
                             code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit * _DRAIN_FACTOR:
        raise too_large
    chunks, total = [], 0
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), timeout)
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:
            raise ServingError(408, f"the request body stalled for more than body_timeout={timeout:g} s",
                               code="body_timeout") from None
        total += len(chunk)
        if total <= limit:
            chunks.append(chunk)
        elif total > limit * _DRAIN_FACTOR:
            break
    if total > limit:
        raise too_large
    return b"".join(chunks)


def build_router():
    """The routes: /v1/chat/completions, /v1/models, /health."""
    fastapi = require("fastapi", "serve", "to serve the OpenAI-compatible API")
    from fastapi.responses import JSONResponse, StreamingResponse
    from pydantic import ValidationError

    router = fastapi.APIRouter()

    @router.get("/health")
    async def health(raw_request: fastapi.Request):
        return raw_request.app.state.serving.health()

    @router.get("/v1/models")
    async def list_models(raw_request: fastapi.Request):
        return raw_request.app.state.serving.models().model_dump(mode="json")

    @router.post("/v1/chat/completions")
    async def create_chat_completion(raw_request: fastapi.Request):
        """OpenAI's chat completions; the body is `ChatCompletionRequest` (read by hand so
        that its size is capped and every type error becomes an OpenAI error object)."""
        serving: OpenAIServingChat = raw_request.app.state.serving
        body = await read_body(raw_request, serving.settings.max_body_bytes, serving.settings.body_timeout)
        try:
            request = ChatCompletionRequest.model_validate_json(body)
        except ValidationError as exc:
            message, param = describe_validation_error(exc)
            raise ServingError(400, message, param=param, code="invalid_request") from None

        async def wait_disconnect() -> None:
            while (await raw_request.receive())["type"] != "http.disconnect":
                pass

        result = await serving.create_chat_completion(request, wait_disconnect)
        if isinstance(result, ChatCompletionResponse):
            return JSONResponse(result.model_dump(mode="json"))
        return StreamingResponse(result, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return router


def add_error_handlers(app) -> None:
    """Turn the errors FastAPI and Starlette raise into OpenAI error objects.

    Anything else is caught by `_CatchAll` (a 500 error object, logged once).
    """
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(ServingError)
    async def _serving_error(_request, exc: ServingError):
        from fastapi.responses import JSONResponse

        return JSONResponse(exc.to_dict(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        return error_response(400, f"{param or 'request'}: {first.get('msg')}", param=param)

    @app.exception_handler(HTTPException)
    async def _http_error(_request, exc: HTTPException):
        # 404 for unknown paths, 405 for wrong methods …, in the same error shape
        return error_response(exc.status_code, str(exc.detail), code=str(exc.status_code))


class _CatchAll:
    """Outermost ASGI wrapper: an exception that escapes everything answers 500, once.

    Starlette's own last-resort handler re-raises after answering, which makes the server
    print a second traceback; this keeps one log line and a JSON error for the client.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if type(exc).__name__ == "ClientDisconnect":
                return
            log.error("unhandled error: %s: %s", type(exc).__name__, exc, exc_info=exc)
            if not started:
                body = json.dumps(ServingError(500, "internal server error").to_dict()).encode()
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
        finally:
            if received > _TRIM_AFTER_BYTES:
                give_memory_back()


def create_app(model, tokenizer, *, model_name: str, settings: ServeSettings | None = None,
               web: bool = False):
    """The FastAPI app serving one model.

    Args:
        model: a loaded `VisionLanguageModel`.
        tokenizer: its tokenizer.
        model_name: the id clients pass as `model` (and /v1/models lists).
        settings: the server's limits (`ServeSettings()` by default).
        web: also serve the chat page at `/`.
    Returns:
        A FastAPI app; the scheduler thread starts and stops with the app's lifespan.
    """
    fastapi = require("fastapi", "serve", "to serve the OpenAI-compatible API")
    serving = OpenAIServingChat(model, tokenizer, model_name, settings)

    @asynccontextmanager
    async def lifespan(app):
        serving.start()
        try:
            yield
        finally:
            serving.stop()

    app = fastapi.FastAPI(title="tilevl", summary="OpenAI-compatible InternVL server", lifespan=lifespan)
    app.state.serving = serving
    app.include_router(build_router())
    add_error_handlers(app)
    if web:
        from tilevl.serve.web import mount_web

        mount_web(app)
    app.add_middleware(_CatchAllMiddleware)
    return app


class _CatchAllMiddleware(_CatchAll):
    """`_CatchAll` in the shape `app.add_middleware` expects."""
