"""The plain jsonl every scorer kind accepts: one question per line, the scorer's record
fields beside it; for data that is in no public layout (your own, converted, generated).

Line: {"index", "image" (path | data URL | null), "question", ["hint"], ["prompt"], <fields>}.
"""

from __future__ import annotations

from pathlib import Path

from tilevl.errors import InputError
from tilevl.eval.benchmarks.common import (
    YES_NO_PROMPT,
    Sample,
    as_index,
    check_unique,
    read_jsonl,
    resolve_image,
)
from tilevl.eval.benchmarks.grounding import box_key, grounding_prompt
from tilevl.eval.benchmarks.mmbench import choice_key, mcq_prompt
from tilevl.eval.benchmarks.vqa import make_vqa_prompt, text_key
from tilevl.eval.benchmarks.yesno import yes_no_key

# Which prompt and vote key each scorer kind gets; the record fields each kind needs are
# listed in tilevl/eval/metrics/__init__.py.
MCQ_KINDS = ("mmbench", "mcq", "mmmu", "mmvp")
OPEN_KINDS = ("vqa", "gqa", "ocrvqa", "docvqa", "infovqa", "chartqa", "ocrbench")
YES_NO_KINDS = {"mme": "mme", "pope": "pope", "hallusionbench": "vlmevalkit"}
GROUNDING_KINDS = ("refcoco",)
# Line keys that build the prompt rather than the record.
_PROMPT_KEYS = ("image", "question", "hint", "prompt")

_open_prompt = make_vqa_prompt(joiner="\n")
_yes_no_prompt = make_vqa_prompt(YES_NO_PROMPT, joiner=" ")


def read_plain(path: str | Path, image_root: str | Path | None = None) -> list[Sample]:
    """Read a plain jsonl file.

    Args:
        path: the file; every line needs `question` (or `prompt`); `index` defaults to the
            line number (from 0).
        image_root: where relative image paths live (default: next to the file).

    Returns:
        Samples whose `record` is the line minus `image`, `question`, `hint`, `prompt`
        (plus `index`); a relative `image` path is also kept in the record (MME pairs).
    """
    path = Path(path)
    samples = []
    for number, row in enumerate(read_jsonl(path), 1):
        where = f"{path}:{number}"
        if "question" not in row and "prompt" not in row:
            raise InputError(f"{where}: needs 'question' or 'prompt'")
        record = {k: v for k, v in row.items() if k not in _PROMPT_KEYS}
        if isinstance(row.get("image"), str) and not row["image"].startswith("data:"):
            record["image"] = row["image"]
        index = as_index(row["index"]) if "index" in row else number - 1
        record["index"] = index
        samples.append(Sample(index=index, question=str(row.get("question", row.get("prompt"))),
                              image=resolve_image(row.get("image"), path.parent, image_root, where),
                              record=record, hint=row.get("hint"), prompt=row.get("prompt")))
    return check_unique(samples, path)


def plain_prompt(kind: str):
    """The prompt builder for one scorer kind (a line's own `prompt` always wins).

    MCQ kinds get InternVL's MCQ prompt; open kinds the short-answer line after a newline;
    yes/no kinds VLMEvalKit's HallusionBench line; refcoco the grounding question.

    Args:
        kind: a scorer kind.

    Returns:
        `prompt(sample, cot=False, suffix=None) -> str`.
    """
    if kind in MCQ_KINDS:
        return mcq_prompt
    if kind in YES_NO_KINDS:
        return _yes_no_prompt
    if kind in GROUNDING_KINDS:
        return grounding_prompt
    if kind in OPEN_KINDS:
        return _open_prompt
    raise InputError(f"no plain prompt for scorer kind {kind!r}")


def plain_key(kind: str):
    """The vote key (and judge-readability test) for one scorer kind.

    Args:
        kind: a scorer kind.

    Returns:
        `key(sample, answer) -> hashable | None`.
    """
    if kind in MCQ_KINDS:
        return choice_key
    if kind in YES_NO_KINDS:
        return yes_no_key(YES_NO_KINDS[kind])
    if kind in GROUNDING_KINDS:
        return box_key
    return text_key
