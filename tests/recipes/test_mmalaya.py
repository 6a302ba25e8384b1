"""MMAlaya2's recipe end to end with `--quick` on the `tiny` preset (every artefact, the table's
base/merged rows per method, resuming), its CoT branch with a scripted sampler, and its config."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from tilevl.errors import ConfigError
from tilevl.recipes.mmalaya import (
    _Models,
    build_category_data,
    format_table,
    load_mmalaya_config,
    prepare_base,
)

pytestmark = pytest.mark.usefixtures("one_thread")


CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "recipes"
METHODS = ("ties", "linear", "task_arithmetic")


def _run(argv: list[str]) -> int:
    from tilevl.recipes.commands import add_recipe_parsers

    parser = argparse.ArgumentParser()
    add_recipe_parsers(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_quick_recipe_end_to_end_on_tiny(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["recipe", "mmalaya", "--config", str(CONFIGS / "mmalaya_mini.yaml"), "--quick",
            "--model", "tiny", "--run-dir", str(run)]
    assert _run(argv) == 0
    captured = capsys.readouterr()
    summary = json.loads((run / "summary.json").read_text())
    chosen = summary["chosen"]
    assert len(chosen) == 2 and json.loads((run / "selection.json").read_text())["chosen"] == chosen
    for path in ["base/config.json", "minibench/info.json", "minibench/dev/mcq.tsv",
                 "minibench/test/mcq.tsv", "eval/base/dev-direct/results.json", "table.md",
                 "eval/base/test-cot-vote2/results.json", "eval/ties/test-cot-vote2/results.json"]:
        assert (run / path).exists(), path
    for category in chosen:
        choice = json.loads((run / "data" / category / "choice.json").read_text())
        assert choice["mode"] in ("cot", "plain") and choice["records"] > 0
        assert Path(choice["meta_path"]).exists() and choice["cot"]["questions"] == 6
        assert (run / "data" / category / "cot" / "train.report.json").exists()
        assert (run / "lora" / category / "adapter" / "adapter_config.json").exists()
    for method in METHODS:
        assert (run / "merged" / method / "config.json").exists()
        assert (run / "eval" / method / "test-direct" / "results.json").exists()
    table = summary["table"].splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[:3] == ["Model", f"{chosen[0]}*", f"{chosen[1]}*"]
    assert header[-2:] == ["Trained avg", "Average"] and len(header) == 7  # 4 categories
    assert [line.split("|")[1].strip() for line in table[2:]] == ["base", *METHODS]
    assert all(line.count("(+") + line.count("(-") == 6 for line in table[3:])
    assert summary["best_method"] in (*METHODS, None) and set(summary["gains"]) == set(METHODS)
    assert set(summary["test_time_scaling"]) == {"base", "ties"}
    assert summary["table"] in captured.out and summary["verdict"] in captured.out
    assert summary["verdict"].startswith("merge methods, change of the average over base: ties ")
    assert (run / "table.md").read_text().count("| base |") == 2  # both tables

    assert _run(argv) == 0  # every step's outputs exist: nothing is redone
    again = capsys.readouterr().err
    assert "evaluating" not in again and "training" not in again and "merging" not in again
    with pytest.raises(ConfigError, match="other settings.*weakest"):
        _run(argv + ["--set", "weakest=3"])


class AlwaysRight:
    """A scripted sampler whose every reply reasons and ends with the gold letter."""

    def describe(self) -> dict:
        return {"model": "always-right"}

    def __call__(self, samples, prompts, k, batch_number):
        return [[f"Looking closely.\nAnswer: {s.record['answer']}"] * k for s in samples]


def test_categories_the_model_can_reason_about_get_cot_data(tmp_path, monkeypatch):
    cfg = load_mmalaya_config(CONFIGS / "mmalaya_mini.yaml", quick=True, run_dir=str(tmp_path))
    base = prepare_base(cfg, tmp_path)
    monkeypatch.setattr("tilevl.recipes.cot.ModelSampler", lambda *a, **k: AlwaysRight())
    choice = build_category_data(cfg, _Models(cfg), base, "ocr", tmp_path)
    assert choice["mode"] == "cot" and choice["records"] == 6 == choice["cot"]["kept"]
    lines = (tmp_path / "data" / "ocr" / "cot" / "train.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["conversations"][1]["value"].startswith("Looking closely.\nAnswer: ")


def test_config_errors_name_file_line_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny\nweakst: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:2: unknown key 'weakst' \(did you mean 'weakest'"):
        load_mmalaya_config(bad)
    bad.write_text("model: tiny\nmerge_methods: [ties, average]\n")
    with pytest.raises(ConfigError, match="merge_methods: unknown 'average'"):
        load_mmalaya_config(bad)
    bad.write_text("bench_size: many\n")
    with pytest.raises(ConfigError, match="bad.yaml:1: bench_size must be"):
        load_mmalaya_config(bad)
    quick = load_mmalaya_config(CONFIGS / "mmalaya_mini.yaml", quick=True)
    assert quick.train["use_llm_lora"] == 16 and quick.train["max_steps"] == 2  # added, not replaced


def test_table_shows_change_from_base():
    rows = {"base": {"per_category": {"ocr": 50.0, "ocr2": 80.0}, "trained_avg": 50.0, "overall": 60.0},
            "ties": {"per_category": {"ocr": 62.5, "ocr2": 75.0}, "trained_avg": 62.5, "overall": 66.0}}
    table = format_table(rows, ["ocr"], ["ocr2", "ocr"]).splitlines()
    assert table[0] == "| Model | ocr* | ocr2 | Trained avg | Average |"
    assert table[2] == "| base | 50.0 | 80.0 | 50.0 | 60.0 |"
    assert table[3] == "| ties | 62.5 (+12.5) | 75.0 (-5.0) | 62.5 (+12.5) | 66.0 (+6.0) |"


class AlwaysWrong(AlwaysRight):
    def __call__(self, samples, prompts, k, batch_number):
        return [[f"Answer: {'B' if s.record['answer'] == 'A' else 'A'}"] * k for s in samples]


@pytest.mark.parametrize("answers", ["letter", "text"])
def test_plain_data_answers_multiple_choice_as_configured(tmp_path, monkeypatch, answers):
    """No CoT record survives, so the category falls back to the generator's items; with
    plain_answers: text their multiple-choice turns are answered with the option's text."""
    from tilevl.data.meta import load_meta
    from tilevl.minibench.formats import MCQ_PROMPT

    cfg = load_mmalaya_config(CONFIGS / "mmalaya_mini.yaml", quick=True, run_dir=str(tmp_path),
                              plain_answers=answers)
    base = prepare_base(cfg, tmp_path)
    monkeypatch.setattr("tilevl.recipes.cot.ModelSampler", lambda *a, **k: AlwaysWrong())
    choice = build_category_data(cfg, _Models(cfg), base, "color_recognition", tmp_path)
    assert choice["mode"] == "plain" and choice["cot"]["kept"] == 0
    (spec,) = load_meta(choice["meta_path"])
    replies = [turn["value"] for line in spec.annotation.read_text().splitlines()
               for ask, turn in zip(json.loads(line)["conversations"][::2],
                                    json.loads(line)["conversations"][1::2])
               if ask["value"].endswith(MCQ_PROMPT)]
    assert replies
    if answers == "letter":
        assert set(replies) <= set("ABCD")
    else:
        assert not set(replies) & set("ABCD") and all(len(r) > 1 for r in replies)
