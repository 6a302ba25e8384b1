"""Serving: an OpenAI-compatible HTTP API and a chat page, both on top of the chat engine.

protocol (wire format) → serving (limits, images, prompt) → scheduler (continuous batching)
→ api (FastAPI routes, errors) → web (the page); commands adds `tilevl serve` / `tilevl web`.
FastAPI and uvicorn are the `serve` extra; importing this package does not need them.
"""

from tilevl.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def create_app(model, tokenizer, *, model_name: str, settings: ServeSettings | None = None, web: bool = False):
    """The FastAPI app serving `model` (see `tilevl.serve.api.create_app`)."""
    from tilevl.serve.api import create_app as _create_app

    return _create_app(model, tokenizer, model_name=model_name, settings=settings, web=web)
