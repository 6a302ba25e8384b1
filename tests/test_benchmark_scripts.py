"""Every benchmark that has a peer runs end to end on a tiny preset, so none of them rots.

Each script is run in-process through its `main()` with a short argument list; the
assertions are on what it prints: the token-id (or output) check passed and the last line
is the ratio against transformers.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, argv: list[str], monkeypatch, capsys) -> list[str]:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", [name, *argv])
    module = importlib.import_module(name)
    module.main()
    return [line for line in capsys.readouterr().out.splitlines() if line.strip()]


def test_chat_turns_compares_token_ids_with_the_peer(monkeypatch, capsys, one_thread):
    lines = run_script("chat_turns", ["--preset", "tiny", "--new-tokens", "3", "--repeats", "1"], monkeypatch, capsys)
    generated = next(line for line in lines if line.startswith("ChatSession"))
    assert "identical token ids, 18 generated" in generated  # 6 turns × 3 ids, compared as ids
    assert any(line.startswith("transformers (peer)") for line in lines)
    assert lines[-1].startswith("tilevl/peer")


def test_tiling_matches_the_peer_processor(monkeypatch, capsys):
    lines = run_script("tiling", ["--repeat", "1", "--cases", "1"], monkeypatch, capsys)
    assert lines[-1].startswith("tilevl/peer")


def test_decode_checks_ids_then_times_both(monkeypatch, capsys, one_thread):
    lines = run_script("decode", ["--preset", "tiny", "--new-tokens", "4", "--repeats", "1"], monkeypatch, capsys)
    assert any("token ids equal in fp32" in line for line in lines)
    assert lines[-1].startswith("tilevl/peer decode")


def test_eval_throughput_checks_a_batch_against_the_peer(monkeypatch, capsys, one_thread):
    lines = run_script("eval_throughput", ["--preset", "tiny", "--questions", "8", "--repeats", "1",
                                           "--tokens", "2", "--dtypes", "fp32"], monkeypatch, capsys)
    assert any("transformers batch 8" in line for line in lines)
    assert lines[-1].startswith("tilevl/peer batch 8")


@pytest.mark.slow
def test_load_memory_compares_with_from_pretrained(monkeypatch, capsys):
    lines = run_script("load_memory", ["--size-gb", "0.02", "--repeats", "1"], monkeypatch, capsys)
    assert any(line.strip().startswith("transformers:") for line in lines)
    assert lines[-1].startswith("tilevl/peer: peak RSS")
