"""worded_mcq_file: a training jsonl whose multiple-choice turns are answered in words."""

from __future__ import annotations

import json

import pytest

from tilevl.eval.metrics.choices import extract_choice
from tilevl.minibench.formats import conversation, mmbench_prompt, vqa_prompt, worded_mcq_file


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), "utf-8")


def test_letters_become_the_option_text_and_other_turns_stay(tmp_path):
    records = [
        conversation("r0", "a.png", 112, 112, [
            (mmbench_prompt("What color is the star?", "", ["red", "blue", "green"]), "B"),
            ("What is in this picture? Answer in one sentence.", "A blue star.")]),
        conversation("r1", "b.png", 112, 112, [(vqa_prompt("Is there a cat in the image?"), "Yes")]),
        conversation("r2", "c.png", 112, 112, [
            (mmbench_prompt("How many dots?", "Count them.", ["1", "12", "2", "21"]), "D")]),
    ]
    _write(tmp_path / "train.jsonl", records)
    assert worded_mcq_file(tmp_path / "train.jsonl", tmp_path / "worded.jsonl") == 2
    out = [json.loads(line) for line in (tmp_path / "worded.jsonl").read_text("utf-8").splitlines()]
    assert [[t["value"] for t in r["conversations"][1::2]] for r in out] == [
        ["blue", "A blue star."], ["Yes"], ["21"]]
    assert [r["conversations"][0] for r in out] == [r["conversations"][0] for r in records]
    # MMBench's rule reads the worded reply as the option it names
    assert extract_choice("blue", {"A": "red", "B": "blue", "C": "green"}) == "B"


def test_a_letter_without_its_option_names_file_line_and_record(tmp_path):
    good = conversation("r0", "a.png", 112, 112, [(vqa_prompt("Is it red?"), "No")])
    broken = conversation("r9", "d.png", 112, 112, [
        (mmbench_prompt("Which one?", "", ["x", "y"]), "C")])  # no option C in the prompt
    _write(tmp_path / "train.jsonl", [good, broken])
    with pytest.raises(ValueError, match=r"train.jsonl:2: record 'r9': no single option C"):
        worded_mcq_file(tmp_path / "train.jsonl", tmp_path / "worded.jsonl")
    assert not (tmp_path / "worded.jsonl").exists()  # nothing half-written
