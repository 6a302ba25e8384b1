"""Reasoning traces: they reach the right answer from facts the image carries, and the train
split carries them as chain-of-thought records without changing dev or test."""

from __future__ import annotations

import json
import re

import pytest

from tilevl.eval.benchmarks.common import MCQ_COT_PROMPT, OPEN_COT_PROMPT, final_answer
from tilevl.eval.metrics.choices import extract_choice
from tilevl.minibench import CATEGORIES, generate, make_item
from tilevl.minibench.formats import worded_mcq_file
from tilevl.minibench.items import LETTERS
from tilevl.minibench.traces import TRACES, cot_reply, number_trace, reasoning_trace


@pytest.fixture(scope="module")
def items():
    return {c: [make_item(c, seed, hard=seed % 2 == 1) for seed in range(12)] for c in CATEGORIES}


def test_every_category_has_a_trace_that_ends_in_the_right_option(items):
    assert set(TRACES) == set(CATEGORIES)
    for category, drawn in items.items():
        for item in drawn:
            trace = reasoning_trace(item)
            assert trace.endswith(f"So the answer is {item.answer_text}."), (category, trace)
            assert "\n" not in trace
            # MMBench's rule never reads the conclusion as another option (it may find it
            # ambiguous: "up-left" contains the option "up")
            conclusion = trace.rsplit("So the answer is ", 1)[1].rstrip(".")
            options = dict(zip(LETTERS, item.options))
            assert extract_choice(conclusion, options) in (item.answer_letter, None), trace


def test_the_steps_state_the_facts_that_decide(items):
    for item in items["object_counting"]:
        n = item.meta["count"]
        assert f"one by one: 1," in reasoning_trace(item) or n == 1
        assert re.search(rf"There (is|are) {n} ", reasoning_trace(item))
    for item in items["chart_reading"]:
        trace = reasoning_trace(item)
        if item.question.startswith("Which fruit"):  # every bar is read before the maximum
            for label, value in zip(item.meta["labels"], item.meta["values"]):
                assert f"{label} {value}" in trace
        else:
            assert f"It reaches {item.answer_text}." in trace
    for item in items["math_reasoning"]:
        trace = reasoning_trace(item)
        assert f'"{item.meta["text"]}"' in trace and f"{item.meta['value']}." in trace
    for item in items["future_prediction"]:  # the panels it lists are the drawn ones
        assert trace_count(reasoning_trace(item), item) == len(item.meta["steps"])


def trace_count(trace: str, item) -> int:
    seen = trace.split("From left to right I see ", 1)[1].split(". The rule", 1)[0]
    return len(seen.split(", "))


def test_cot_reply_and_open_traces(items):
    item = items["math_reasoning"][0]
    reply = cot_reply(reasoning_trace(item), item.options, item.answer)
    assert final_answer(reply) == item.answer_letter
    worded = cot_reply(reasoning_trace(item), item.options, item.answer, letters=False)
    assert final_answer(worded) == item.answer_text
    assert number_trace(item).endswith(f"So the answer is {item.open_answers[0]}.")


def test_generate_writes_cot_records_and_leaves_dev_and_test_alone(tmp_path):
    plain, traced = tmp_path / "plain", tmp_path / "traced"
    generate(plain, size=42, seed=5, progress=False, workers=1)
    info = generate(traced, size=42, seed=5, progress=False, workers=1, traces=True)
    assert info["traces"] is True
    for split in ("dev", "test"):
        for name in ("mcq.tsv", "vqa.jsonl", "pope.jsonl"):
            assert (plain / split / name).read_bytes() == (traced / split / name).read_bytes()
    records = [json.loads(line) for line in (traced / "train" / "train.jsonl").open()]
    before = [json.loads(line) for line in (plain / "train" / "train.jsonl").open()]
    mcq = [r for r in records if r["conversations"][0]["value"].endswith(MCQ_COT_PROMPT)]
    open_ = [r for r in records if r["conversations"][0]["value"].endswith(OPEN_COT_PROMPT)]
    assert len(mcq) == info["splits"]["train"]["mcq_items"]
    assert len(open_) == info["splits"]["train"]["vqa"]
    assert len(records) == len(before) + len(mcq) + len(open_)
    for record in mcq:  # the last line is the gold letter of the options the prompt shows
        ask, reply = (t["value"] for t in record["conversations"])
        letter = final_answer(reply)
        shown = {row[0]: row[3:] for row in ask.split("\n") if re.match(r"^[A-D]\. ", row)}
        assert reply.rsplit("\n", 1)[0].endswith(f"So the answer is {shown[letter]}.")
    # the worded copy names the option's text on that line instead
    assert worded_mcq_file(traced / "train" / "train.jsonl", tmp_path / "w.jsonl") == 2 * len(mcq)
    worded = [json.loads(line) for line in (tmp_path / "w.jsonl").open()]
    for record in worded:
        ask, reply = (t["value"] for t in record["conversations"][:2])
        if ask.endswith(MCQ_COT_PROMPT):
            assert reply.rsplit("\n", 1)[0].endswith(f"So the answer is {final_answer(reply)}.")
