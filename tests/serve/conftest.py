"""Fixtures of the serve tests: one roomy server shared by the API, fuzz and web tests.

Skips the whole folder when the `serve` extra (fastapi, uvicorn) is missing.
"""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'tilevl[serve]')")
pytest.importorskip("uvicorn", reason="the serve extra is not installed (pip install 'tilevl[serve]')")

from tests.serve.helpers import make_image, start_server, stop_server  # noqa: E402


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory):
    """The folder served as --allowed-local-media-path, with one image in it."""
    folder = tmp_path_factory.mktemp("media")
    make_image(90, 60).save(folder / "cat.png")
    return folder


@pytest.fixture(scope="session")
def server(media_dir):
    from tilevl.serve import ServeSettings

    settings = ServeSettings(max_body_bytes=2**20, max_images_per_request=8, max_total_tiles=24,
                             max_new_tokens_limit=1500, max_prompt_tokens=1500, queue_size=128,
                             max_batch_size=16, request_timeout=60, allowed_local_media_path=str(media_dir))
    running = start_server(settings, web=True)
    yield running
    stop_server(running)
