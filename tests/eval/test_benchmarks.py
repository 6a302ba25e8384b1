"""Benchmark readers, InternVL prompts and answer extraction, on small files written with Pillow.

The `write_*` helpers here also feed tests/eval/test_runner.py.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from tilevl.errors import InputError
from tilevl.eval.benchmarks import BENCHMARKS, get_benchmark, headline
from tilevl.eval.benchmarks.common import (
    MCQ_COT_PROMPT,
    final_answer,
    majority_vote,
)
from tilevl.eval.metrics import SCORERS

COLORS = ("red", "green", "blue", "yellow")


def png(color: str, size=(64, 48)) -> bytes:
    """A one-colour PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def write_images(folder: Path) -> None:
    """images/<colour>.png for every colour."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for color in COLORS:
        (folder / "images" / f"{color}.png").write_bytes(png(color))


def write_mcq_tsv(folder: Path, items: int = 3) -> Path:
    """An MMBench-style TSV with 4 circular copies per item; copies reference image rows."""
    columns = ["index", "image", "question", "hint", "A", "B", "C", "D", "answer", "category",
               "l2-category"]
    lines = ["\t".join(columns)]
    for i in range(items):
        for k in range(4):
            options = [COLORS[(j + k) % 4] for j in range(4)]
            answer = "ABCD"[(i % 4 - k) % 4]
            # VLMEvalKit stores a repeated image once; copies name the row that holds it.
            image = base64.b64encode(png(COLORS[i % 4])).decode() if k == 0 else str(i)
            lines.append("\t".join([str(i + k * 1_000_000), image, "What colour is the image?",
                                    "" if i % 2 else "Look closely.", *options, answer,
                                    ["colour", "shape"][i % 2], "perception"]))
    path = folder / "mcq.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_vqa(folder: Path, n: int = 4) -> Path:
    """MiniBench-style vqa.jsonl."""
    write_images(folder)
    return write_jsonl(folder / "vqa.jsonl", [
        {"index": i, "image": f"images/{COLORS[i % 4]}.png", "question": "What colour?",
         "answers": [COLORS[i % 4]], "category": ["colour", "count"][i % 2]} for i in range(n)])


def write_pope(folder: Path, n: int = 6) -> Path:
    """MiniBench-style pope.jsonl (random/popular/adversarial splits)."""
    write_images(folder)
    return write_jsonl(folder / "pope.jsonl", [
        {"index": i, "image": f"images/{COLORS[i % 4]}.png",
         "question": f"Is there a {COLORS[(i + 1) % 4]} square in the image?",
         "answer": "yes" if i % 2 else "no", "split": ("random", "popular", "adversarial")[i % 3]}
        for i in range(n)])


def write_grounding(folder: Path, n: int = 3) -> Path:
    """MiniBench-style grounding.jsonl (question with <ref>, pixel box, size)."""
    write_images(folder)
    return write_jsonl(folder / "grounding.jsonl", [
        {"index": i, "image": f"images/{COLORS[i % 4]}.png",
         "question": ("Please provide the bounding box coordinate of the region this sentence "
                      f"describes: <ref>the {COLORS[i % 4]} area</ref>"),
         "bbox": [0, 0, 32, 24], "width": 64, "height": 48, "split": "val"} for i in range(n)])


def plain_rows(kind: str, n: int = 4) -> list[dict]:
    """Plain-jsonl lines carrying exactly the record fields `kind`'s scorer reads."""
    rows = []
    for i in range(n):
        base = {"index": i, "image": f"images/{COLORS[i % 4]}.png", "question": "Which colour?",
                "category": ["a", "b"][i % 2]}
        options = {"A": COLORS[i % 4], "B": COLORS[(i + 1) % 4]}
        extra = {
            "mmbench": {"options": options, "answer": "A"},
            "mcq": {"options": options, "answer": "A"},
            "mmmu": {"options": options, "answer": "A", "question_type": "multiple-choice",
                     "id": f"q{i}"},
            "mmvp": {"options": options, "answer": "A"},
            "vqa": {"answers": [COLORS[i % 4]] * 10, "answer_type": "other"},
            "gqa": {"answer": COLORS[i % 4]}, "ocrvqa": {"answer": COLORS[i % 4]},
            "docvqa": {"answers": [COLORS[i % 4]]}, "infovqa": {"answers": [COLORS[i % 4]]},
            "chartqa": {"answer": "12", "split": "human"},
            "ocrbench": {"answer": [COLORS[i % 4]], "category": "Regular Text Recognition",
                         "dataset_name": "IIIT5K"},
            "mme": {"answer": "Yes" if i % 2 else "No", "category": "color",
                    "image": f"images/{COLORS[i // 2]}.png"},  # two questions per image
            "pope": {"answer": "yes" if i % 2 else "no", "category": "random"},
            "hallusionbench": {"answer": "1" if i % 2 else "0", "category": "VD",
                               "subcategory": "chart", "set_id": "0", "figure_id": str(i // 2),
                               "question_id": str(i % 2)},
            "refcoco": {"ref": "the area", "bbox": [0, 0, 32, 24], "width": 64, "height": 48,
                        "split": "val"},
        }[kind]
        rows.append({**base, **extra})
    return rows


def write_plain(folder: Path, kind: str, n: int = 4) -> Path:
    write_images(folder)
    return write_jsonl(folder / f"plain-{kind}.jsonl", plain_rows(kind, n))


# ---- readers ---------------------------------------------------------------------------------
def test_mcq_tsv_reader_and_internvl_prompt(tmp_path):
    spec = get_benchmark("mmbench")
    samples = spec.read(write_mcq_tsv(tmp_path), None)
    assert [s.index for s in samples[:4]] == [0, 1_000_000, 2_000_000, 3_000_000]
    first = samples[0]
    assert first.record["options"] == {"A": "red", "B": "green", "C": "blue", "D": "yellow"}
    assert first.record["answer"] == "A" and first.record["l2_category"] == "perception"
    # A copy that names row 0 gets row 0's picture.
    assert samples[1].image == samples[0].image and samples[0].image.startswith(b"\x89PNG")
    # InternVL evaluate_mmbench.py: hint, question, options, instruction, joined by newlines.
    assert spec.prompt(first) == ("Look closely.\nWhat colour is the image?\nA. red\nB. green\n"
                                  "C. blue\nD. yellow\n"
                                  "Answer with the option's letter from the given choices directly.")
    assert samples[4].hint is None and spec.prompt(samples[4]).startswith("What colour")
    assert spec.prompt(first, cot=True).endswith(MCQ_COT_PROMPT)
    assert spec.prompt(first, suffix="Pick one.").endswith("D. yellow\nPick one.")


def test_chinese_question_gets_chinese_instruction(tmp_path):
    path = tmp_path / "cc.tsv"
    path.write_text("index\tquestion\tA\tB\tanswer\timage\n0\t这是什么颜色？\t红\t绿\tA\t\n",
                    encoding="utf-8")
    sample = get_benchmark("ccbench").read(path, None)[0]
    assert sample.image is None
    assert get_benchmark("ccbench").prompt(sample).endswith("\n请直接回答选项字母。")


def test_vqa_readers_for_public_layouts(tmp_path):
    write_images(tmp_path)
    (tmp_path / "png").mkdir()
    (tmp_path / "png" / "c1.png").write_bytes(png("red"))
    chart = tmp_path / "chartqa_test_human.json"
    chart.write_text(json.dumps([{"imgname": "c1.png", "query": "How many?", "label": "12"}]))
    sample = get_benchmark("chartqa").read(chart, None)[0]
    assert sample.record["answers"] == ["12"] and sample.record["split"] == "human"
    assert sample.image.endswith("png/c1.png")
    # InternVL's VQA script joins with a space; OCRBench (VLMEvalKit) with a newline.
    assert get_benchmark("chartqa").prompt(sample) == (
        "How many? Answer the question using a single word or phrase.")
    doc = tmp_path / "val_v1.0.json"
    doc.write_text(json.dumps({"data": [{"questionId": 7, "question": "Title?",
                                         "image": "images/red.png", "answers": ["a", "b"]}]}))
    sample = get_benchmark("docvqa").read(doc, None)[0]
    assert sample.index == 7 and sample.record["answers"] == ["a", "b"]
    ocr = tmp_path / "OCRBench.json"
    ocr.write_text(json.dumps([{"id": 3, "image_path": "images/blue.png", "question": "Text?",
                                "answers": ["x"], "type": "Regular Text Recognition",
                                "dataset_name": "IIIT5K"}]))
    sample = get_benchmark("ocrbench").read(ocr, None)[0]
    assert sample.record["category"] == "Regular Text Recognition"
    assert get_benchmark("ocrbench").prompt(sample).endswith("Text?\nAnswer the question using a single word or phrase.")
    tsv = tmp_path / "TextVQA.tsv"
    b64 = base64.b64encode(png("red")).decode()
    tsv.write_text(f"index\timage\tquestion\tanswer\n5\t{b64}\tWord?\t['hi', 'hello']\n")
    sample = get_benchmark("textvqa").read(tsv, None)[0]
    assert sample.record["answers"] == ["hi", "hello"] and isinstance(sample.image, bytes)


def test_missing_image_names_file_line_and_folders(tmp_path):
    bad = write_jsonl(tmp_path / "q.jsonl", [{"image": "nope.png", "question": "?", "answer": "a"}])
    with pytest.raises(InputError, match=r"q.jsonl:1: image 'nope.png' not found"):
        get_benchmark("gqa").read(bad, None)
    dup = write_jsonl(tmp_path / "d.jsonl", [{"index": 1, "question": "?", "answer": "a"}] * 2)
    with pytest.raises(InputError, match="index 1 occurs more than once"):
        get_benchmark("gqa").read(dup, None)


def test_yes_no_readers(tmp_path):
    pope = write_jsonl(tmp_path / "llava_pope_test.jsonl", [
        {"question_id": 1, "image": "red.png",
         "text": "Is there a dog in the image?\nAnswer the question using a single word or phrase.",
         "category": "adversarial", "label": "no"}])
    (tmp_path / "val2014").mkdir()
    (tmp_path / "val2014" / "red.png").write_bytes(png("red"))
    spec = get_benchmark("pope")
    sample = spec.read(pope, tmp_path / "val2014")[0]
    assert sample.index == 1
    assert {k: sample.record[k] for k in ("answer", "category", "image")} == {
        "answer": "no", "category": "adversarial", "image": "red.png"}
    # LLaVA's file already holds the instruction: it is not appended twice.
    assert spec.prompt(sample).count("single word") == 1
    mme = tmp_path / "mme"
    (mme / "images" / "color").mkdir(parents=True)
    (mme / "images" / "color" / "1.png").write_bytes(png("red"))
    (mme / "color.txt").write_text("1.png\tIs it red? Please answer yes or no.\tYes\n"
                                   "1.png\tIs it blue? Please answer yes or no.\tNo\n")
    samples = get_benchmark("mme").read(mme, None)
    assert [s.record["answer"] for s in samples] == ["Yes", "No"]
    assert samples[0].record["image"] == samples[1].record["image"] == "color/1.png"
    assert get_benchmark("mme").prompt(samples[0]) == (
        "Is it red? Please answer yes or no. Answer the question using a single word or phrase.")
    hb = tmp_path / "HallusionBench.tsv"
    hb.write_text("index\tcategory\tsubcategory\tset_id\tfigure_id\tquestion_id\tquestion\tanswer\timage\n"
                  "0\tVS\tmath\t1\t0\t0\tIs 2+2=4?\t1\t\n")
    sample = get_benchmark("hallusionbench").read(hb, None)[0]
    assert sample.image is None and sample.record["set_id"] == "1"
    assert get_benchmark("hallusionbench").prompt(sample).endswith(
        "Is 2+2=4? Please answer yes or no. Answer the question using a single word or phrase.")


def test_grounding_reader_reads_size_and_builds_refcoco_prompt(tmp_path):
    write_images(tmp_path)
    path = write_jsonl(tmp_path / "refcoco_val.jsonl", [
        {"image": "images/red.png", "sent": "left dog", "bbox": [1, 2, 30, 40]}])
    spec = get_benchmark("refcoco")
    sample = spec.read(path, None)[0]
    assert (sample.record["width"], sample.record["height"]) == (64, 48)
    assert sample.record["split"] == "refcoco_val"
    assert spec.prompt(sample) == ("Please provide the bounding box coordinate of the region "
                                   "this sentence describes: <ref>left dog</ref>")
    assert spec.key(sample, "<box>[[10, 20, 300, 400]]</box>") == (10, 20, 300, 400)


@pytest.mark.parametrize("kind", sorted(SCORERS))
def test_plain_jsonl_reads_and_scores_every_kind(tmp_path, kind):
    spec = get_benchmark(f"plain-{kind}")
    samples = spec.read(write_plain(tmp_path, kind), None)
    assert len(samples) == 4 and all(spec.prompt(s) for s in samples)
    from tilevl.eval.runner import score_samples

    out = score_samples(spec, samples, [{"prediction": "A"} for _ in samples])
    assert out["scores"]["n"] == 4 and out["headline"]["name"]


# ---- registry and answer extraction ----------------------------------------------------------
def test_registry_kinds_and_tile_defaults():
    assert all(spec.kind in SCORERS for spec in BENCHMARKS.values())
    tiles = {name: BENCHMARKS[name].max_tiles for name in
             ("mmbench", "textvqa", "chartqa", "mmmu", "docvqa", "infovqa", "ocrbench")}
    assert tiles == {"mmbench": 6, "textvqa": 6, "chartqa": 12, "mmmu": 12, "docvqa": 18,
                     "infovqa": 24, "ocrbench": 24}
    with pytest.raises(Exception, match="unknown benchmark 'nope'; known: mmbench"):
        get_benchmark("nope")
    assert headline("mme", {"perception": 1500.0, "cognition": 300.0}) == (
        "perception+cognition", 1800.0, False)


@pytest.mark.parametrize("text, expected", [
    ("The sky is blue.\nAnswer: B", "B"),
    ("answer: 3\nwait, recheck.\nAnswer: \\boxed{C}.", "C"),
    ("First answer: A is wrong. Final Answer: **D**", "D"),
    ("no marker here", "no marker here"),
])
def test_final_answer_reads_the_last_answer_line(text, expected):
    assert final_answer(text) == expected


def test_majority_vote_breaks_ties_by_first_occurrence():
    key = lambda a: a.strip().lower() or None  # noqa: E731
    assert majority_vote(["b", "A", "a", "B"], key) == ("b", {"b": 2, "a": 2})
    assert majority_vote(["x", "y", "y"], key)[0] == "y"
    assert majority_vote(["", ""], key) == ("", {})
