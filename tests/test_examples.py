"""The README's examples really run (on a tiny checkpoint the test writes)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("ck") / "tiny"
    _run("make_tiny_checkpoint.py", str(out))
    return out


def _run(name: str, *argv: str) -> None:
    old = sys.argv
    sys.argv = [name, *argv]
    try:
        runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    finally:
        sys.argv = old


@pytest.mark.parametrize("name", ["chat_pure_text.py", "chat_images.py", "chat_streaming.py", "chat_session.py"])
def test_example_runs(name, checkpoint, capsys):
    _run(name, str(checkpoint))
    out = capsys.readouterr().out
    assert out.strip(), f"{name} printed nothing"


def test_video_example_runs(checkpoint, tmp_path, capsys, monkeypatch):
    pytest.importorskip("av")
    monkeypatch.chdir(tmp_path)  # it writes runs/example-clip.mp4 here
    _run("chat_video.py", str(checkpoint))
    assert "Frame8: <image>" in capsys.readouterr().out
