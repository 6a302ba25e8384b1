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


def test_the_files_the_snippets_read_are_written_by_a_readme_command_first():
    # The Python blocks above run after these scripts; a reader must be told to run them too,
    # before the first block that needs their output.
    text = (ROOT / "README.md").read_text()
    first_python = text.index("```python")
    make = text.index("python examples/make_tiny_checkpoint.py runs/tiny-checkpoint")
    assert make < first_python
    clip = text.index("python examples/chat_video.py runs/tiny-checkpoint")
    assert clip < text.index('load_video("runs/example-clip.mp4"')
    assert "writes runs/example-clip.mp4" in text[clip:clip + 120]


def test_the_image_gap_count_matches_the_table():
    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| ([a-z_]+) \| [\d.]+ \| [\d.]+ \| ([+-][\d.]+) \|$", text, re.M)
    assert len(rows) == 21, rows
    claimed = re.search(r"image gap ≥ \+(\d+) points in (\d+) of (\d+) categories", text)
    threshold, count, total = map(int, claimed.groups())
    assert total == len(rows)
    assert count == sum(float(gap) >= threshold for _, gap in rows)
