"""Open-answer VQA benchmarks: TextVQA, VQAv2, OK-VQA, GQA, OCR-VQA, DocVQA, InfoVQA, ChartQA,
OCRBench and MiniBench's `vqa.jsonl`, from their jsonl/json files or VLMEvalKit TSVs.

One reader understands the public field names; the prompt is InternVL's short-answer line.
"""

from __future__ import annotations

from pathlib import Path

from tilevl.errors import InputError
from tilevl.eval.benchmarks.common import (
    OPEN_COT_PROMPT,
    VQA_PROMPT,
    Sample,
    as_index,
    check_unique,
    decode_base64_image,
    is_missing,
    parse_list,
    read_json_or_jsonl,
    read_tsv,
    resolve_image,
    tsv_images,
)
from tilevl.eval.metrics import normalize_vqa_answer

# Field names across the public files, first match wins:
# InternVL's converted jsonl (question_id, image, question, answer), DocVQA/InfoVQA
# val_v1.0.json (questionId, image, question, answers, question_types), ChartQA
# test_*.json (imgname under png/, query, label), OCRBench.json (id, image_path, question,
# answers, type, dataset_name), MiniBench vqa.jsonl (index, image, question, answers,
# category).
_INDEX = ("index", "question_id", "questionId", "id")
_IMAGE = ("image", "image_path", "imgname", "img_path")
_QUESTION = ("question", "query", "text")
_GOLD = ("answers", "answer", "label", "gt_answers")
_CATEGORY = ("category", "type", "question_types", "question_type")
# ChartQA keeps its charts in png/ next to the json; others use images/.
_IMAGE_FOLDERS = ("", "png", "images")


def _first(row: dict, names: tuple[str, ...]):
    for name in names:
        if name in row and not is_missing(row[name]):
            return row[name]
    return None


def _gold_list(value) -> list[str]:
    value = parse_list(value)
    if isinstance(value, list):
        # VQA annotation style: [{"answer": "...", "answer_confidence": ...}, ...]
        return [str(v["answer"]) if isinstance(v, dict) else str(v) for v in value]
    return [str(value)]


def _image_of(value, base: Path, image_root, where: str):
    last_error = None
    for folder in _IMAGE_FOLDERS:
        candidate = f"{folder}/{value}" if folder else value
        try:
            return resolve_image(candidate, base, image_root, where)
        except InputError as exc:
            last_error = last_error or exc
    raise last_error


def read_vqa(path: str | Path, image_root: str | Path | None = None,
             split: str | None = None) -> list[Sample]:
    """Read an open-answer VQA file (.jsonl, .json or VLMEvalKit .tsv) into samples.

    Args:
        path: the data file.
        image_root: where relative image paths live (default: next to the file).
        split: a split name to store on every record (ChartQA "human"/"augmented") when the
            rows carry none; by default guessed from a ChartQA file name.

    Returns:
        Samples whose `record` holds `answers` (list), `answer` (first gold answer), and
        when present `category`, `answer_type`, `dataset_name`, `split`.
    """
    path = Path(path)
    if split is None and "chartqa" in str(path).lower():
        split = next((s for s in ("human", "augmented") if s in path.name.lower()), None)
    if path.suffix == ".tsv":
        rows = read_tsv(path)
        images = tsv_images(rows)
    else:
        rows, images = read_json_or_jsonl(path), {}
    samples = []
    for number, row in enumerate(rows, 1):
        where = f"{path}:{number}"
        question = _first(row, _QUESTION)
        if question is None:
            raise InputError(f"{where}: no question (looked for {', '.join(_QUESTION)})")
        index = _first(row, _INDEX)
        index = number - 1 if index is None else as_index(index)
        record: dict = {}
        gold = _first(row, _GOLD)
        if gold is not None:
            record["answers"] = _gold_list(gold)
            record["answer"] = record["answers"][0] if len(record["answers"]) == 1 else record["answers"]
        category = _first(row, _CATEGORY)
        if category is not None:
            record["category"] = category[0] if isinstance(category, list) and category else category
        for name in ("answer_type", "dataset_name", "split", "difficulty"):
            if not is_missing(row.get(name)):
                record[name] = row[name]
        if split and "split" not in record:
            record["split"] = split
        if images:
            b64 = images.get(str(row["index"]).strip())
            image = decode_base64_image(b64, where) if b64 else None
        else:
            stored = _first(row, _IMAGE)
            image = None if stored is None else _image_of(str(stored), path.parent, image_root, where)
        samples.append(Sample(index=index, question=str(question), image=image, record=record))
    return check_unique(samples, path)


def make_vqa_prompt(instruction: str = VQA_PROMPT, joiner: str = " "):
    """A prompt builder: question, joiner, instruction.

    InternVL's own scripts join with a space (`question + ' ' + prompt`,
    internvl_chat/eval/vqa/evaluate_vqa.py and mme/eval.py); VLMEvalKit's InternVL
    `build_prompt` (OCRBench, …) and MiniBench's training data join with a newline.

    Args:
        instruction: the line after the question ("" for none).
        joiner: " " or "\\n".

    Returns:
        `prompt(sample, cot=False, suffix=None) -> str`.
    """
    def prompt(sample: Sample, cot: bool = False, suffix: str | None = None) -> str:
        if sample.prompt:
            return sample.prompt
        question = sample.question.strip()
        if suffix is not None:
            tail = suffix
        elif cot:
            tail, question = OPEN_COT_PROMPT, question.replace(instruction, "").strip()
        else:
            tail = instruction
        if not tail or question.endswith(tail):  # LLaVA's POPE file already holds it
            return question
        return f"{question}{joiner if not cot else chr(10)}{tail}"

    return prompt


def text_key(sample: Sample, answer: str):
    """Answers vote together when they normalise alike (VQA's punctuation/article rules).

    Args:
        sample: the question (unused; keeps the vote-key signature).
        answer: one extracted answer.

    Returns:
        The normalised answer, or None for an empty one.
    """
    text = normalize_vqa_answer(str(answer or "")).strip()
    return text or None
