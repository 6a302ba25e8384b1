"""The CoT test-time scaling curve (`tilevl eval --curve`): vote@k scored from one run of
k_max samples per question against a hand count, the direct baseline, the files, resume
without resampling, and the category selection (MiniBench's reasoning categories by default).

Generation is a scripted fake wherever a number must be known (see test_runner._scripted).
"""

from __future__ import annotations

import argparse
import json
import re

import pytest

import tilevl.eval.runner as runner
from tilevl.errors import ConfigError
from tilevl.eval.commands import add_eval_parsers
from tilevl.eval.curve import REASONING_CATEGORIES, evaluate_curve, parse_curve
from tilevl.eval.runner import EvalConfig
from tests.eval.test_benchmarks import write_mcq_tsv

# write_mcq_tsv: item 0 ("colour", hint "Look closely.") shows red, item 1 ("shape") green;
# 4 circular rows each. Sample d of item 0 is wrong, right, right, right; of item 1 right,
# wrong, wrong, right. Ties go to the answer seen first, so by hand:
#   vote@1: item 0 wrong, item 1 right -> 1/2;  vote@2: the same (1-1 ties) -> 1/2;
#   vote@4: item 0 right (3-1), item 1 right (2-2 tie, first seen) -> 2/2.
PATTERN = {"red": [False, True, True, True], "green": [True, False, False, True]}


@pytest.fixture(scope="module")
def tiny():
    from tilevl.resolve import open_model

    return open_model("tiny", quiet=True)


@pytest.fixture()
def scripted(monkeypatch):
    """Replies 'Answer: X' by PATTERN; direct (greedy) answers are always wrong. Returns the
    number of rows each batch_chat call generated."""
    calls = []

    def reply(prompt, right):
        gold = "red" if "Look closely." in prompt else "green"
        letters = dict(re.findall(r"^([A-D])\. (\w+)$", prompt, re.M))
        letter = next((k for k, v in letters.items() if v == gold), "A")  # MiniBench: any
        wrong = "ABCD"[("ABCD".index(letter) + 1) % 4]
        return f"I look at the colour.\nAnswer: {letter if right else wrong}"

    def fake(model, tokenizer, pixel_values, questions, config, num_patches_list=None):
        k = config.get("num_return_sequences", 1)
        calls.append(len(questions) * k)
        if not config.get("do_sample"):
            return [reply(q, False).split("Answer: ")[1] for q in questions]
        gold = lambda q: "red" if "Look closely." in q else "green"  # noqa: E731
        return [reply(q, PATTERN[gold(q)][d]) for q in questions for d in range(k)]

    monkeypatch.setattr(runner, "batch_chat", fake)
    return calls


def _cfg(tmp_path, **kw):
    data = write_mcq_tsv(tmp_path, items=2)
    kw.setdefault("cot", True)
    return EvalConfig(bench="mmbench", data=str(data), out=str(tmp_path / "out"), progress=False,
                      model_name="tiny", max_new_tokens=8, temperature=1.0, **kw)


def test_vote_at_k_equals_the_hand_count(tmp_path, tiny, scripted):
    curve = evaluate_curve(*tiny, _cfg(tmp_path), [1, 2, 4], draws=1)
    got = {k: (p["overall"], p["per_category"]) for k, p in curve["points"].items()}
    assert got == {"1": (0.5, {"colour": 0.0, "shape": 1.0}),
                   "2": (0.5, {"colour": 0.0, "shape": 1.0}),
                   "4": (1.0, {"colour": 1.0, "shape": 1.0})}
    assert curve["points"]["4"]["n_items"] == 2 and curve["points"]["4"]["n_rows"] == 8
    assert curve["direct"]["overall"] == 0.0  # the baseline, answered greedily in the same run
    assert curve["settings"]["temperature"] == 1.0 and curve["settings"]["seed"] == 0
    assert scripted == [8, 8 * 4]  # direct, then 4 samples of every row in one call


def test_random_subsets_average_and_k_max_has_one(tmp_path, tiny, scripted):
    curve = evaluate_curve(*tiny, _cfg(tmp_path), [1, 4], draws=50)
    assert curve["points"]["4"]["draws"] == 1 and curve["points"]["1"]["draws"] == 50
    # vote@1 of a random sample: item 0 right w.p. 3/4, item 1 w.p. 1/2, but circular needs
    # all 4 rows (independent draws): (3/4)^4 / 2 + (1/2)^4 / 2 = 0.19
    assert curve["points"]["1"]["first_k"] == 0.5
    assert 0.05 < curve["points"]["1"]["overall"] < 0.4


def test_files_are_written_and_a_rerun_resamples_nothing(tmp_path, tiny, scripted):
    cfg = _cfg(tmp_path)
    first = evaluate_curve(*tiny, cfg, [1, 2, 4], draws=1)
    out = tmp_path / "out"
    saved = json.loads((out / "curve.json").read_text())
    assert saved["points"] == first["points"] and saved["direct"] == first["direct"]
    table = (out / "curve.md").read_text()
    assert "| vote@4 | 100.0 | 100.0 | 100.0 |" in table and "| direct | 0.0 |" in table
    if first["files"]["chart"]:
        assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "results.json").exists()  # the k_max run's own results
    scripted.clear()
    again = evaluate_curve(*tiny, cfg, [1, 2, 4], draws=1)
    assert scripted == [] and again["points"] == first["points"]
    fewer = evaluate_curve(*tiny, EvalConfig(**{**cfg.__dict__, "samples": 4}), [1, 2], draws=1)
    assert scripted == []  # --samples 4 --curve 1,2 reads the same 4 cached samples
    assert fewer["points"]["2"] == first["points"]["2"] and fewer["k_max"] == 4


def test_categories_restrict_the_questions(tmp_path, tiny, scripted):
    curve = evaluate_curve(*tiny, _cfg(tmp_path, categories=["shape"]), [1, 4], draws=1)
    assert curve["categories"] == ["shape"] and curve["points"]["4"]["n_rows"] == 4
    assert list(curve["direct"]["per_category"]) == ["shape"]
    with pytest.raises(ConfigError, match="no question of \\['texture'\\]"):
        evaluate_curve(*tiny, _cfg(tmp_path, categories=["texture"]), [1, 4])


def test_minibench_defaults_to_the_reasoning_categories_it_holds(tmp_path, tiny, scripted):
    from tilevl.minibench import generate

    generate(tmp_path / "mb", size=8, seed=1, categories=["object_counting", "image_style"],
             progress=False)
    data = tmp_path / "mb" / "test" / "mcq.tsv"
    cfg = EvalConfig(bench="minibench", data=str(data), out=str(tmp_path / "out"), progress=False,
                     cot=True, max_new_tokens=8, temperature=1.0)
    curve = evaluate_curve(*tiny, cfg, [1, 2], draws=1)
    assert curve["categories"] == ["object_counting"]
    assert "object_counting" in REASONING_CATEGORIES["minibench"]
    assert "image_style" not in curve["direct"]["per_category"]
    with pytest.raises(ConfigError, match="unknown MiniBench category 'colour'"):
        evaluate_curve(*tiny, EvalConfig(**{**cfg.__dict__, "categories": ["colour"]}), [1, 2])


def test_cli_curve(tmp_path, scripted, capsys):
    data = write_mcq_tsv(tmp_path, items=2)
    parser = argparse.ArgumentParser(prog="tilevl")
    add_eval_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", "tiny", "--bench", "mmbench", "--data", str(data), "--cot",
                              "--curve", "4,1,2", "--curve-draws", "1", "--temperature", "1.0",
                              "--out", str(tmp_path / "cli"), "--no-progress"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "| vote@1 | 50.0 |" in printed and "| vote@4 | 100.0 |" in printed
    assert json.loads((tmp_path / "cli" / "curve.json").read_text())["k_max"] == 4


def test_parse_curve_refuses_bad_lists():
    assert parse_curve("16,1,2,2") == [1, 2, 16]
    for bad in ("", "0,2", "a,b"):
        with pytest.raises(ConfigError, match="--curve"):
            parse_curve(bad)
