"""`tilevl web MODEL`: a small chat page served next to the OpenAI-compatible API.

The page (static/index.html + chat.js) talks to the same /v1/chat/completions with
stream=true; there is no second code path for the browser, and no Gradio.
"""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).with_name("static")


def mount_web(app) -> None:
    """Serve the chat page at `/` and its files under `/static/`.

    Args:
        app: the FastAPI app from `create_app`.
    """
    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles

    index = STATIC_DIR / "index.html"
    if not index.is_file():  # a broken install; say so instead of a bare 404
        raise FileNotFoundError(f"{index}: the chat page is missing from the tilevl install")

    @app.get("/", include_in_schema=False)
    async def chat_page():
        return FileResponse(index, media_type="text/html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

