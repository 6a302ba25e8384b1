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
    load_mmalaya_config,
    prepare_base,
)
from tilevl.recipes.mmalaya_report import check_goals, format_table

pytestmark = pytest.mark.usefixtures("one_thread")


CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "recipes"
METHODS = ("ties", "dare_ties", "linear", "task_arithmetic", "peft_ties")


def _run(argv: list[str]) -> int:
    from tilevl.recipes.commands import add_recipe_parsers

    parser = argparse.ArgumentParser()
    add_recipe_parsers(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_quick_recipe_end_to_end_on_tiny(tmp_path, capsys):
    run, published = tmp_path / "run", tmp_path / "results"
    argv = ["recipe", "mmalaya", "--config", str(CONFIGS / "mmalaya_mini.yaml"), "--quick",
            "--model", "tiny", "--run-dir", str(run), "--publish", str(published)]
    assert _run(argv) == 0
    captured = capsys.readouterr()
    summary = json.loads((run / "summary.json").read_text())
    chosen = summary["targeted"]
    assert len(chosen) == 2 and json.loads((run / "selection.json").read_text())["chosen"] == chosen
    for path in ["base/config.json", "minibench/info.json", "minibench/dev/mcq.tsv",
                 "minibench/test/mcq.tsv", "eval/base/dev-direct/results.json", "table.md",
                 "eval/base/test-cot-vote2/results.json", "eval/ties/test-cot-vote2/results.json"]:
        assert (run / path).exists(), path
    assert not (run / "minibench" / "train").exists()  # the benchmark draws no train split
    lora = json.loads((run / "lora" / chosen[0] / "adapter" / "adapter_config.json").read_text())
    assert lora["rank_pattern"]  # LoRA on the ViT as well as the LLM (use_backbone_lora)
    for category in chosen:
        choice = json.loads((run / "data" / category / "choice.json").read_text())
        assert choice["mode"] in ("cot", "plain") and choice["records"] > 0
        assert Path(choice["meta_path"]).exists() and choice["cot"]["questions"] == 6
        assert (run / "data" / category / "cot" / "train.report.json").exists()
        assert (run / "lora" / category / "adapter" / "adapter_config.json").exists()
        # The ceiling: each LoRA alone, evaluated on its own category's items only.
        single = json.loads((run / "eval" / f"single-{category}" / "test-direct" / "results.json").read_text())
        assert set(single["per_category"]["values"]) == {category}
    for method in METHODS:
        assert (run / "merged" / method / "config.json").exists()
        assert (run / "eval" / method / "test-direct" / "results.json").exists()

    # summary.json: per method the deltas vs the base (fractions) with their intervals.
    assert set(summary["methods"]) == {"single", *METHODS}
    assert summary["seed"] == 0 and summary["split"] == "test" and summary["bootstrap"]["resamples"] == 2000
    assert sum(summary["items"]["per_category"].values()) == summary["items"]["total"] > 0
    for name, entry in summary["methods"].items():
        lo, hi = entry["delta_targeted_ci95"]
        assert -1 <= lo <= entry["delta_targeted"] <= hi <= 1, name
        assert entry["targeted"] - summary["base"]["targeted"] == pytest.approx(entry["delta_targeted"])
        if name == "single":
            assert entry["delta_untargeted"] is None and entry["kept_of_single"] is None
            assert set(entry["per_category"]) == set(chosen)
        else:
            lo, hi = entry["delta_untargeted_ci95"]
            assert lo <= entry["delta_untargeted"] <= hi and len(entry["per_category"]) == 4
            results = json.loads((run / "eval" / name / "test-direct" / "results.json").read_text())
            for category, value in results["per_category"]["values"].items():  # the runner's own scores
                assert entry["per_category"][category]["score"] == pytest.approx(value)
    timings = summary["timings_s"]
    assert {"generate_bench", "eval_dev", f"train/{chosen[0]}", "merge/ties", "eval/base"} <= set(timings)

    table = summary["table"].splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == ["Model", f"{chosen[0]}*", f"{chosen[1]}*", "Trained avg", "Untargeted avg", "Overall"]
    assert [line.split("|")[1].strip() for line in table[2:]] == ["base", "single", *METHODS]
    assert all(line.count("(+") + line.count("(-") == 5 for line in table[4:])
    assert summary["table"] in captured.out and summary["stats_table"] in captured.out
    assert summary["verdict"].startswith("single: targeted ") and "Goals for ties: " in summary["verdict"]
    assert summary["goals"]["targeted_ci_above_0"] is False  # a random tiny model gains nothing
    assert (run / "table.md").read_text().count("| base |") == 2  # the seeds' table and TTS
    assert sorted(p.name for p in published.iterdir()) == ["chart.png", "summary.json", "table.md"]

    assert _run(argv) == 0  # every step's outputs exist: nothing is redone
    again = capsys.readouterr().err
    assert "evaluating" not in again and "training" not in again and "merging" not in again
    assert "folding" not in again and json.loads((run / "summary.json").read_text())["timings_s"] == timings
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
    base = {"per_category": {"ocr": 0.5, "ocr2": 0.8}, "targeted": 0.5, "untargeted": 0.8, "overall": 0.6}
    ties = {"per_category": {"ocr": {"score": 0.625}, "ocr2": {"score": 0.75}}, "targeted": 0.625,
            "untargeted": 0.75, "overall": 0.66}
    single = {"per_category": {"ocr": {"score": 0.7}}, "targeted": 0.7, "untargeted": None, "overall": None}
    table = format_table(base, {"single": single, "ties": ties}, ["ocr"]).splitlines()
    assert table[0] == "| Model | ocr* | Trained avg | Untargeted avg | Overall |"
    assert table[2] == "| base | 50.0 | 50.0 | 80.0 | 60.0 |"
    assert table[3] == "| single | 70.0 (+20.0) | 70.0 (+20.0) | – | – |"
    assert table[4] == "| ties | 62.5 (+12.5) | 62.5 (+12.5) | 75.0 (-5.0) | 66.0 (+6.0) |"


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


def test_plain_answers_auto_follows_the_bases_dev_replies(tmp_path):
    from tilevl.recipes.mmalaya import base_answer_style

    with pytest.raises(ConfigError, match="plain_answers: auto reads the base's dev replies"):
        base_answer_style(tmp_path)
    path = tmp_path / "eval" / "base" / "dev-direct" / "predictions.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps({"prediction": p}) + "\n" for p in ["B", "(C)", "red circle"]))
    assert base_answer_style(tmp_path) == "letter"
    path.write_text("".join(json.dumps({"prediction": p}) + "\n" for p in ["A.", "three", "red circle"]))
    assert base_answer_style(tmp_path) == "text"


def test_subset_tsv_keeps_the_categories_rows_whole(tmp_path):
    from tilevl.eval.benchmarks.mmbench import read_mcq_tsv
    from tilevl.minibench import generate
    from tilevl.recipes.mmalaya import subset_tsv

    generate(tmp_path / "mb", size=60, seed=0, progress=False, formats=("mcq",), train_size=0)
    source = tmp_path / "mb" / "test" / "mcq.tsv"
    out = subset_tsv(source, ["image_style", "image_quality"], tmp_path / "sub.tsv")
    everything, subset = read_mcq_tsv(source), read_mcq_tsv(out)
    wanted = [s for s in everything if s.record["category"] in ("image_style", "image_quality")]
    assert [s.index for s in subset] == [s.index for s in wanted] and len(subset) > 4
    assert all(a.record == b.record and a.image == b.image for a, b in zip(subset, wanted))
    with pytest.raises(ConfigError, match="no row of categories"):
        subset_tsv(source, ["nonexistent"], tmp_path / "none.tsv")


def test_mini_config_has_the_power_and_methods_issue_18_asks_for():
    """>= 100 circular items per category in test, >= 6 LoRAs on the ViT and the LLM, every method."""
    from collections import Counter

    from tilevl.minibench.categories import resolve_categories
    from tilevl.minibench.generate import plan_units, split_sizes

    cfg = load_mmalaya_config(CONFIGS / "mmalaya_mini.yaml")
    names = resolve_categories(cfg.categories)
    test = split_sizes(cfg.bench_size)["test"]
    counts = Counter(u.category for u in plan_units("test", test, names, ("mcq",)))
    assert len(counts) == 21 and min(counts.values()) >= 100
    assert cfg.weakest >= 6 and cfg.train["use_backbone_lora"] > 0 and cfg.train["use_llm_lora"] > 0
    assert cfg.merge_methods == list(METHODS) and cfg.bootstrap_resamples >= 2000


def test_goals_of_issue_18_are_checked_against_the_summary():
    ties = {"delta_targeted": 0.12, "delta_targeted_ci95": [0.05, 0.2], "delta_untargeted": -0.015,
            "kept_of_single": 0.8}
    linear = {**ties, "kept_of_single": 0.5}
    assert check_goals({"ties": ties, "linear": linear}) == {
        "targeted_gain_ge_10_points": True, "targeted_ci_above_0": True,
        "untargeted_cost_le_2_points": True, "keeps_more_of_single_than_linear": True}
    worse = {**ties, "delta_targeted": 0.04, "delta_targeted_ci95": [-0.01, 0.09], "delta_untargeted": -0.03,
             "kept_of_single": None}
    assert check_goals({"ties": worse, "linear": linear}) == {
        "targeted_gain_ge_10_points": False, "targeted_ci_above_0": False,
        "untargeted_cost_le_2_points": False, "keeps_more_of_single_than_linear": None}
