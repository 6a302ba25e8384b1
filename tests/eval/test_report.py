"""Evaluation reports: results.json / predictions / Markdown / chart files, and `eval-compare`
tables with deltas, on hand-made results (no model needed).
"""

from __future__ import annotations

import argparse
import json

import pytest

from tilevl.eval.commands import add_eval_parsers
from tilevl.eval.report import compare, fmt, load_results, results_markdown, write_outputs
from tilevl.optional import is_available


def _results(bench: str, model: str, value: float, cats: dict, judge: bool = False) -> dict:
    return {
        "benchmark": bench, "kind": "mmbench", "model": model, "n": 40,
        "rule": "mmbench_circular", "rule_version": "1", "variant": "direct",
        "headline": {"name": "accuracy", "value": value, "fraction": True},
        "per_category": {"name": "per_category", "values": cats, "fraction": True},
        "scores": {"rule": "mmbench_circular", "rule_version": "1", "n": 40, "accuracy": value,
                   "unparsed": 2},
        "judge": {"used": judge, "asked": 3 if judge else 0, "decided": 2 if judge else 0},
        "test_time_scaling": {"variant": "cot", "variant_score": value, "direct_score": 0.5,
                              "gain": value - 0.5},
    }


def test_write_outputs_makes_every_file(tmp_path):
    results = _results("mmbench", "base", 0.807, {"ocr": 0.9, "spatial": 0.42})
    files = write_outputs(tmp_path / "run", results, [{"index": 0, "prediction": "A"}])
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["rule"] == "mmbench_circular" and saved["files"] == files
    assert (tmp_path / "run" / "predictions.jsonl").read_text() == '{"index": 0, "prediction": "A"}\n'
    markdown = (tmp_path / "run" / "results.md").read_text()
    assert "**accuracy: 80.7**" in markdown and "| spatial | 42.0 |" in markdown
    assert "cot 80.7 vs direct 50.0 (gain 30.7)" in markdown
    if is_available("matplotlib"):
        assert (tmp_path / "run" / "categories.png").read_bytes()[:4] == b"\x89PNG"
    else:
        assert files["chart"] is None and "tilevl[eval]" in saved["notes"][0]


def test_markdown_keeps_benchmark_scales():
    results = _results("mme", "m", 0.0, {})
    results["headline"] = {"name": "perception+cognition", "value": 2172.25, "fraction": False}
    results["per_category"] = None
    assert "**perception+cognition: 2172.2**" in results_markdown(results) or \
        "**perception+cognition: 2172.3**" in results_markdown(results)
    assert fmt(0.8213, True) == "82.1" and fmt(1000, False) == "1000" and fmt(None, True) == "–"


def test_compare_shows_both_runs_and_deltas():
    a = [_results("mmbench", "InternVL-Chat-V1.5", 0.807, {"ocr": 0.9, "spatial": 0.42})]
    b = [_results("mmbench", "MMAlaya2", 0.821, {"ocr": 0.9, "logic": 0.5}, judge=True)]
    table = compare(a, b)
    lines = table.splitlines()
    assert lines[0] == "| benchmark | figure | InternVL-Chat-V1.5 | MMAlaya2 | Δ |"
    assert "| mmbench | accuracy | 80.7 | 82.1 | +1.4 |" in lines
    assert "| mmbench |   ocr | 90.0 | 90.0 | 0.0 |" in lines
    assert "| mmbench |   spatial | 42.0 | – | – |" in lines
    assert "| mmbench |   logic | – | 50.0 | – |" in lines
    assert "B: an LLM judge decided answers on mmbench" in table
    same = compare(a, a)
    assert "InternVL-Chat-V1.5 (A) | InternVL-Chat-V1.5 (B)" in same.splitlines()[0]


def test_eval_compare_cli_reads_files_and_folders(tmp_path, capsys):
    for side, value in (("a", 0.5), ("b", 0.625)):
        for bench in ("mmbench", "ccbench"):
            write_outputs(tmp_path / side / bench, _results(bench, side, value, {"x": value}), [])
    parser = argparse.ArgumentParser(prog="tilevl")
    add_eval_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval-compare", str(tmp_path / "a"), str(tmp_path / "b"),
                              "--markdown", str(tmp_path / "cmp.md")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "| ccbench | accuracy | 50.0 | 62.5 | +12.5 |" in out
    assert "| mmbench | accuracy | 50.0 | 62.5 | +12.5 |" in out
    assert (tmp_path / "cmp.md").read_text() == out
    assert [r["benchmark"] for r in load_results(tmp_path / "a")] == ["ccbench", "mmbench"]
    assert len(load_results(tmp_path / "a" / "mmbench" / "results.json")) == 1
    with pytest.raises(Exception, match="no results.json found"):
        load_results(tmp_path / "nothing-here")
