"""What every benchmark family shares: the `Sample` a reader yields, file readers, image paths,
the InternVL prompt strings, and the CoT / majority-vote answer extraction.

Family modules (`mmbench`, `vqa`, `yesno`, `grounding`, `plain`) build on these pieces only.
"""

from __future__ import annotations

import ast
import base64
import binascii
import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tilevl.errors import InputError
from tilevl.jsonl import iter_jsonl_objects

# --- prompts ---------------------------------------------------------------------------
# InternVL internvl_chat/eval/mmbench/evaluate_mmbench.py (and scienceqa, mmmu): hint,
# question, "A. …" option lines, then this line; the Chinese line for CN sets (CCBench,
# MMBench-CN).
MCQ_PROMPT = "Answer with the option's letter from the given choices directly."
MCQ_PROMPT_CN = "请直接回答选项字母。"
# InternVL internvl_chat/eval/vqa/evaluate_vqa.py `base_prompt` (also mme/eval.py, the
# open-question prompt of mmmu/evaluate_mmmu.py, and the text of LLaVA's POPE questions).
VQA_PROMPT = "Answer the question using a single word or phrase."
# VLMEvalKit vlmeval/vlm/internvl/internvl_chat.py `build_prompt` for HallusionBench.
YES_NO_PROMPT = "Please answer yes or no. " + VQA_PROMPT
# InternVL internvl_chat/eval/refcoco/evaluate_grounding.py `prompt`.
GROUNDING_PROMPT = ("Please provide the bounding box coordinate of the region this sentence "
                    "describes: <ref>{}</ref>")
# MMMU-Benchmark/MMMU mmmu-pro/prompts.yaml `cot.standard` (used by VLMEvalKit for
# MMMU-Pro COT); it replaces the direct-answer line, as VLMEvalKit's InternVL
# `build_mcq_cot_prompt` does.
MCQ_COT_PROMPT = ("Answer the preceding multiple choice question. The last line of your "
                  "response should be of the following format: 'Answer: $LETTER' (without "
                  "quotes) where LETTER is one of options. Think step by step before answering.")
# Our open-answer counterpart of the line above (no published one for short VQA).
OPEN_COT_PROMPT = ("Answer the preceding question. The last line of your response should be of "
                   "the following format: 'Answer: $ANSWER' (without quotes) where ANSWER is a "
                   "single word or phrase. Think step by step before answering.")

_CJK = re.compile(r"[\u4e00-\u9fff]")
_ANSWER_LINE = re.compile(r"answer\s*[:：]", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{(.*)\}")


@dataclass
class Sample:
    """One benchmark question, ready for prompting and scoring.

    Attributes:
        index: the benchmark's own id (int or str); unique within a file.
        question: the question text as stored (no instruction appended).
        image: base64 text, bytes, a file path, a data URL, or None (a text-only question).
        record: the gold fields the scorer reads (`answer`, `options`, `category` …).
        hint: MCQ context shown before the question (MMBench's `hint`), if any.
        prompt: a prompt given verbatim by the data (plain jsonl `prompt`), if any.
    """

    index: Any
    question: str
    image: Any = None
    record: dict = field(default_factory=dict)
    hint: str | None = None
    prompt: str | None = None


# --- small parsing helpers ----------------------------------------------------------------
def is_missing(value: Any) -> bool:
    """True for None, NaN, "" and "nan" (how pandas-written TSVs leave empty cells)."""
    if value is None:
        return True
    if isinstance(value, float) and value != value:
        return True
    return isinstance(value, str) and value.strip() in ("", "nan", "NaN", "None")


def as_index(value: Any) -> Any:
    """An index as int when it reads as one (TSV cells are strings), else the string."""
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        try:
            as_float = float(text)
        except ValueError:
            return text
        return int(as_float) if as_float.is_integer() else text


def parse_list(value: Any) -> Any:
    """VLMEvalKit stores several gold answers as a Python list literal in one TSV cell."""
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            parsed = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            return value
        if isinstance(parsed, list):
            return [str(v) for v in parsed]
    return value


def is_chinese(text: str) -> bool:
    """VLMEvalKit's `cn_string`: any CJK ideograph marks a Chinese prompt."""
    return bool(_CJK.search(text or ""))


# --- files ------------------------------------------------------------------------------
def read_jsonl(path: str | Path) -> list[dict]:
    """Read a jsonl file; a bad line raises InputError naming the file and line number.

    Args:
        path: the file.

    Returns:
        One dict per non-empty line.
    """
    return [row for _, row in iter_jsonl_objects(path)]


def read_json_or_jsonl(path: str | Path) -> list[dict]:
    """Rows of a `.jsonl` file, or of a `.json` file holding a list or `{"data": [...]}`.

    Args:
        path: the file.

    Returns:
        The rows as dicts.
    """
    path = Path(path)
    if path.suffix != ".json":
        return read_jsonl(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if isinstance(data, dict):
        for key in ("data", "questions", "annotations"):
            if isinstance(data.get(key), list):
                return data[key]
        raise InputError(f"{path}: a JSON object without a 'data' list")
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a list of questions")
    return data


def read_tsv(path: str | Path) -> list[dict]:
    """Rows of a VLMEvalKit-style TSV (header line, base64 images), without pandas.

    Args:
        path: the file.

    Returns:
        One dict of strings per row.
    """
    csv.field_size_limit(1 << 30)  # base64 images exceed csv's 128 KiB default
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if rows and "index" not in rows[0]:
        raise InputError(f"{path}: a benchmark TSV needs an 'index' column "
                         f"(found: {', '.join(rows[0])})")
    return rows


def tsv_images(rows: list[dict]) -> dict[str, str]:
    """`index → base64 image`, following VLMEvalKit's short references to another row.

    VLMEvalKit's TSVs store a repeated image once; later rows hold that row's index in
    the `image` cell instead (vlmeval/dataset/image_base.py, `prepare_tsv`).
    """
    images = {str(r["index"]).strip(): r.get("image") or "" for r in rows}
    resolved = {}
    for key, value in images.items():
        seen = 0
        while value and len(value) <= 64 and value.strip() in images and seen < 4:
            value, seen = images[value.strip()], seen + 1
        resolved[key] = value
    return resolved


def decode_base64_image(text: str, where: str) -> bytes:
    """Bytes of a base64 image cell; InputError naming the row when it is not base64."""
    try:
        return base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"{where}: image is not valid base64 ({exc})") from None


def resolve_image(value: Any, base: Path, image_root: str | Path | None, where: str) -> Any:
    """Turn a file's image reference into something `load_image` opens.

    Relative paths are tried against `image_root` (when given), the data file's folder and
    its parent, in that order; data URLs and absolute paths pass through.

    Args:
        value: the stored reference (path string, data URL, or None).
        base: the data file's folder.
        image_root: an extra folder to look in (`--image-root`).
        where: "file:line" for the error message.

    Returns:
        A path string, the data URL, or None for a text-only question.

    Raises:
        InputError: naming the file, the entry and the folders searched.
    """
    if is_missing(value):
        return None
    text = str(value)
    if text.startswith("data:"):
        return text
    path = Path(text)
    if path.is_absolute():
        if not path.exists():
            raise InputError(f"{where}: image {text} does not exist")
        return str(path)
    roots = ([Path(image_root)] if image_root else []) + [base, base.parent]
    for root in roots:
        if (root / path).exists():
            return str(root / path)
    raise InputError(f"{where}: image {text!r} not found under "
                     f"{', '.join(str(r) for r in roots)} (set --image-root)")


def check_unique(samples: list[Sample], path: str | Path) -> list[Sample]:
    """Refuse files whose indices repeat: the cache and the merge key on them."""
    seen: set[str] = set()
    for sample in samples:
        key = str(sample.index)
        if key in seen:
            raise InputError(f"{path}: index {sample.index!r} occurs more than once")
        seen.add(key)
    if not samples:
        raise InputError(f"{path}: no questions found")
    return samples


# --- answers out of generated text ----------------------------------------------------------
def final_answer(text: str) -> str:
    """The answer a CoT response ends with: what follows the last "Answer:" on its line.

    `\\boxed{X}` is unwrapped (InternVL 2.5's CoT prompt asks for it) and a trailing period
    dropped. A response without "Answer:" is returned stripped, so the benchmark's
    rule-based extraction still gets a chance.

    Args:
        text: the model's full response.

    Returns:
        The extracted answer text.
    """
    text = "" if text is None else str(text)
    matches = list(_ANSWER_LINE.finditer(text))
    if not matches:
        return text.strip()
    tail = text[matches[-1].end():].strip().splitlines()
    answer = tail[0].strip() if tail else ""
    boxed = _BOXED.search(answer)
    if boxed:
        answer = boxed.group(1).strip()
    return answer.strip().rstrip(".").strip().strip("*").strip()


def majority_vote(answers: list[str], key) -> tuple[str, dict]:
    """Pick the most common answer among k samples; ties go to the one seen first.

    Args:
        answers: the k extracted answers, in sampling order.
        key: `answer -> hashable or None`; equal keys are the same vote (e.g. the option
            letter); None marks an unreadable answer, which does not vote.

    Returns:
        `(answer, votes)`: the first answer carrying the winning key (the first answer when
        none is readable) and `{str(key): count}` in first-seen order.
    """
    counts: dict = {}
    first: dict = {}
    for position, answer in enumerate(answers):
        k = key(answer)
        if k is None:
            continue
        counts[k] = counts.get(k, 0) + 1
        first.setdefault(k, position)
    if not counts:
        return (answers[0] if answers else ""), {}
    best = max(counts, key=lambda k: (counts[k], -first[k]))
    return answers[first[best]], {str(k): v for k, v in counts.items()}
