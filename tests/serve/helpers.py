"""Helpers for the serve tests: a real uvicorn server in a thread, test images.

The server binds 127.0.0.1 on a free port and serves the tiny preset; it is stopped by
`stop_server` (the fixtures in conftest.py do that at the end of the session).
"""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image



@dataclass
class RunningServer:
    url: str
    app: object
    uvicorn_server: object
    thread: threading.Thread

    @property
    def serving(self):
        return self.app.state.serving

    def openai(self, **kwargs):
        openai = pytest.importorskip("openai")
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, **kwargs)


def start_server(settings, *, web: bool = False, model: str = "tiny") -> RunningServer:
    """Serve `model` (the tiny preset by default) with `settings` on a free port, under the
    id `tilevl serve` would give it; returns once it accepts requests."""
    import uvicorn

    from tilevl.resolve import open_model
    from tilevl.serve.api import create_app
    from tilevl.serve.commands import served_name
    from tilevl.serve.connections import uvicorn_config

    vlm, tokenizer = open_model(model, quiet=True)
    app = create_app(vlm, tokenizer, model_name=served_name(model, None), settings=settings, web=web)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, settings, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    return RunningServer(f"http://127.0.0.1:{port}", app, server, thread)


def stop_server(running: RunningServer) -> None:
    running.uvicorn_server.should_exit = True
    running.thread.join(15)


def make_image(width: int = 80, height: int = 60, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (height, width, 3), dtype=np.uint8))


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"
