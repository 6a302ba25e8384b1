"""CoT-consistency data: answer extraction and the majority filter against hand counts, with a
scripted sampler; resume after a kill; the real `ModelSampler` on the `tiny` preset."""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from tilevl.errors import ConfigError, InputError
from tilevl.jsonl import read_jsonl_lines
from tilevl.recipes.cot import (
    CotSettings,
    ModelSampler,
    build_cot_data,
    judge_answers,
    load_questions,
    pick_traces,
    training_trace,
)

pytestmark = pytest.mark.usefixtures("one_thread")


COLUMNS = ["index", "image", "question", "hint", "A", "B", "C", "D", "answer", "category"]
OPTIONS = ["red", "blue", "green", "yellow"]
# index → (category, label, the k = 3 scripted replies)
SCRIPT = {
    0: ("color", "B", ["The circle is filled with blue.\nAnswer: B", "Answer: B", "Answer: C"]),
    1: ("color", "A", ["Answer: C", "It looks like C. Answer: C", "Answer: A"]),
    2: ("shape", "D", ["I cannot tell.", "Answer: D", "hmm"]),
    3: ("shape", "C", ["Answer: (C)", "Counting edges gives C.\nAnswer: C.", "Answer: **C**"]),
    4: ("shape", "A", ["Answer: A", "Answer: A", "Answer: B"]),
}
# By hand: 0 kept (B 2 of 3), 1 majority wrong (C 2 of 3), 2 no majority (D 1 of 3),
# 3 kept (C 3 of 3), 4 kept (A 2 of 3). color 1 kept / 1 dropped; shape 2 kept / 1 dropped.


def png_b64(colour: str) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def write_tsv(path: Path) -> Path:
    rows = []
    for index, (category, label, _) in SCRIPT.items():
        image = "" if index == 4 else png_b64(OPTIONS[index % 4])  # 4: a text-only question
        rows.append([index, image, f"Question {index}?", "", *OPTIONS, label, category])
    rows.append([1_000_000, png_b64("red"), "Question 0?", "", *OPTIONS[1:], OPTIONS[0], "A", "color"])
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    return path


class Scripted:
    """A fake model: the scripted replies of each question, whatever the seed."""

    def __init__(self, fail_after: int | None = None):
        self.asked: list[int] = []
        self.fail_after = fail_after

    def describe(self) -> dict:
        return {"model": "scripted"}

    def __call__(self, samples, prompts, k, batch_number):
        if self.fail_after is not None and len(self.asked) >= self.fail_after:
            raise KeyboardInterrupt("killed")
        assert all(p.endswith("Think step by step before answering.") for p in prompts)
        self.asked += [s.index for s in samples]
        return [SCRIPT[s.index][2][:k] for s in samples]


@pytest.fixture()
def data(tmp_path) -> Path:
    return write_tsv(tmp_path / "labelled.tsv")


def test_answers_are_read_and_filtered_as_counted_by_hand(data):
    _, samples = load_questions(data, CotSettings())
    assert [s.index for s in samples] == [0, 1, 2, 3, 4]  # the circular copy is left out
    verdicts = {s.index: judge_answers(s, SCRIPT[s.index][2]) for s in samples}
    assert {i: v.reason for i, v in verdicts.items()} == {
        0: "kept", 1: "majority_wrong", 2: "no_majority", 3: "kept", 4: "kept"}
    assert verdicts[2].letters == [None, "D", None]
    assert verdicts[3].votes == {"C": 3}
    # A stricter agreement (more than 2/3) keeps only the unanimous question.
    assert [i for i, s in enumerate(samples) if judge_answers(s, SCRIPT[i][2], 0.67).kept] == [3]
    traces = pick_traces(SCRIPT[3][2], verdicts[3], 0)
    assert traces[0].startswith("Counting edges") and len(traces) == 3
    assert training_trace("Blue fill.\n**Answer: (B)**", "B") == "Blue fill.\nAnswer: B"
    assert training_trace("Answer: B", "B") == "Answer: B"


def test_build_writes_records_meta_and_report(data, tmp_path):
    out = tmp_path / "cot" / "train.jsonl"
    sampler = Scripted()
    report = build_cot_data(sampler, data, out, CotSettings(samples=3, batch_size=2), progress=False)
    assert (report["questions"], report["kept"], report["dropped"]) == (5, 3, 2)
    per = report["per_category"]
    assert (per["color"]["kept"], per["color"]["dropped"]) == (1, 1)
    assert (per["shape"]["kept"], per["shape"]["dropped"]) == (2, 1)
    assert per["shape"]["reasons"] == {"no_majority": 1}
    assert per["color"]["reasons"] == {"majority_wrong": 1}
    records = [r for _, r in read_jsonl_lines(out)]
    assert [r["id"] for r in records] == ["cot_0", "cot_3", "cot_4"]
    first = records[0]
    human, gpt = first["conversations"]
    assert human["from"] == "human" and human["value"].startswith("<image>\nQuestion 0?\nA. red\n")
    assert gpt == {"from": "gpt", "value": "The circle is filled with blue.\nAnswer: B"}
    assert (out.parent / "images" / first["image"]).exists() and first["width"] == 40
    text_only = records[2]
    assert "image" not in text_only
    assert not text_only["conversations"][0]["value"].startswith("<image>")
    meta = json.loads((out.parent / "meta.json").read_text())
    assert meta["train"] == {"root": "images/", "annotation": "train.jsonl", "data_augment": False,
                             "repeat_time": 1, "length": 3}
    assert json.loads((out.parent / "train.report.json").read_text())["kept"] == 3


def test_a_killed_run_resumes_without_repeating_work(data, tmp_path):
    out = tmp_path / "train.jsonl"
    killed = Scripted(fail_after=2)  # dies when the second batch starts
    with pytest.raises(KeyboardInterrupt):
        build_cot_data(killed, data, out, CotSettings(samples=3, batch_size=2), progress=False)
    assert killed.asked == [0, 1]
    with open(out.with_name("train.progress.jsonl"), "a") as f:
        f.write('{"index": 2, "categ')  # torn by the kill
    again = Scripted()
    report = build_cot_data(again, data, out, CotSettings(samples=3, batch_size=2), progress=False)
    assert again.asked == [2, 3, 4]
    assert report["kept"] == 3 and report["records"] == 3
    assert [r["id"] for _, r in read_jsonl_lines(out)] == ["cot_0", "cot_3", "cot_4"]
    assert build_cot_data(Scripted(fail_after=0), data, out, CotSettings(samples=3, batch_size=2),
                          progress=False)["kept"] == 3  # all done: the sampler is not called
    with pytest.raises(ConfigError, match="samples"):
        build_cot_data(Scripted(), data, out, CotSettings(samples=2), progress=False)


def test_unlabelled_questions_are_refused(tmp_path):
    path = tmp_path / "q.jsonl"
    line = {"index": 7, "question": "Which?", "options": {"A": "x", "B": "y"}}
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(InputError, match="question 7 has no answer label"):
        load_questions(path, CotSettings())


def test_model_sampler_on_tiny_through_the_command(data, tmp_path, capsys):
    from tilevl.recipes.commands import add_recipe_parsers

    parser = argparse.ArgumentParser()
    add_recipe_parsers(parser.add_subparsers())
    out = tmp_path / "tiny" / "train.jsonl"
    args = parser.parse_args(["recipe", "cot-data", "--model", "tiny", "--data", str(data), "--out",
                              str(out), "--samples", "2", "--max-new-tokens", "4", "--max-tiles", "1",
                              "--batch-size", "3", "--no-progress"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "total" in printed and "wrote" in printed
    progress = [r for _, r in read_jsonl_lines(out.with_name("train.progress.jsonl"))]
    assert progress[0]["settings"]["sampler"]["max_tiles"] == 1
    assert [len(r["outputs"]) for r in progress[1:]] == [2] * 5


def test_model_sampler_draws_are_seeded(tiny_model, tokenizer, data):
    _, samples = load_questions(data, CotSettings(limit=2))
    sampler = ModelSampler(tiny_model, tokenizer, max_new_tokens=4, max_tiles=1, seed=3)
    prompts = ["Say a letter."] * 2
    first = sampler(samples, prompts, 2, 0)
    assert sampler(samples, prompts, 2, 0) == first
    assert len(first) == 2 and all(len(o) == 2 for o in first)
