"""Every Python block of README.md runs, in order, in a scratch folder."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    pytest.importorskip("av")
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for script, args in (("make_tiny_checkpoint.py", ["runs/tiny-checkpoint"]), ("chat_video.py", ["runs/tiny-checkpoint"])):
        monkeypatch.setattr(sys, "argv", [script, *args])
        runpy.run_path(str(ROOT / "examples" / script), run_name="__main__")
    namespace: dict = {}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
        except Exception as exc:  # name the block in the failure
            raise AssertionError(f"README python block {i + 1} failed: {exc!r}\n{block}") from exc
