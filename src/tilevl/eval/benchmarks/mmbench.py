"""Multiple-choice benchmarks in VLMEvalKit's TSV layout: MMBench (EN/CN, circular copies at
index + k·1e6), CCBench, SEED, MMStar, AI2D, ScienceQA, MMVP, MMMU, and MiniBench's `mcq.tsv`.

Reader (`read_mcq_tsv`), InternVL's MCQ prompt (`mcq_prompt`) and the vote key for one answer.
"""

from __future__ import annotations

import string
from pathlib import Path

from tilevl.errors import InputError
from tilevl.eval.benchmarks.common import (
    MCQ_COT_PROMPT,
    MCQ_PROMPT,
    MCQ_PROMPT_CN,
    OPEN_COT_PROMPT,
    VQA_PROMPT,
    Sample,
    as_index,
    check_unique,
    decode_base64_image,
    is_chinese,
    is_missing,
    parse_list,
    read_tsv,
    resolve_image,
    tsv_images,
)
from tilevl.eval.metrics import extract_choice

# VLMEvalKit reads options from every capital-letter column that has a value
# (vlmeval/dataset/image_mcq.py, `string.ascii_uppercase`); MMBench uses A–D, SEED and
# MMMU more.
OPTION_LETTERS = tuple(string.ascii_uppercase)


def _options(row: dict) -> dict[str, str]:
    return {k: str(row[k]).strip() for k in OPTION_LETTERS if k in row and not is_missing(row[k])}


def read_mcq_tsv(path: str | Path, image_root: str | Path | None = None) -> list[Sample]:
    """Read an MMBench-style TSV into samples.

    Columns read: `index`, `question`, `hint`, option letters (`A`, `B`, …; empty cells are
    unused options), `answer`, `category`, `l2-category`, `split`, `image` (base64, or
    another row's index) or `image_path`, and for MMMU `question_type` / `id`.

    Args:
        path: the TSV file.
        image_root: where relative `image_path` files live (default: next to the TSV).

    Returns:
        Samples whose `record` holds `index`, `answer`, `options`, `category`,
        `l2_category`, `split` (and `question_type` when there are no options).
    """
    path = Path(path)
    rows = read_tsv(path)
    images = tsv_images(rows)
    samples = []
    for number, row in enumerate(rows, 2):  # line 1 is the header
        where = f"{path}:{number}"
        if is_missing(row.get("question")):
            raise InputError(f"{where}: no question")
        index = as_index(row["index"])
        options = _options(row)
        record = {"options": options}
        if not is_missing(row.get("answer")):
            record["answer"] = parse_list(str(row["answer"]).strip())
        for src, dst in (("category", "category"), ("l2-category", "l2_category"),
                         ("l2_category", "l2_category"), ("split", "split"), ("id", "id")):
            if not is_missing(row.get(src)):
                record[dst] = row[src]
        record["question_type"] = row.get("question_type") or (
            "multiple-choice" if options else "open")
        image = images.get(str(row["index"]).strip())
        if image:
            first = parse_list(image)  # MMMU rows may hold several images; we use the first
            image = decode_base64_image(first[0] if isinstance(first, list) else first, where)
        elif not is_missing(row.get("image_path")):
            image = resolve_image(parse_list(row["image_path"]), path.parent, image_root, where)
        else:
            image = None
        hint = None if is_missing(row.get("hint")) else str(row["hint"])
        samples.append(Sample(index=index, question=str(row["question"]), image=image,
                              record=record, hint=hint))
    return check_unique(samples, path)


def mcq_prompt(sample: Sample, cot: bool = False, suffix: str | None = None) -> str:
    """InternVL's multiple-choice prompt.

    Source: InternVL internvl_chat/eval/mmbench/evaluate_mmbench.py (`hint + '\\n' +
    question`, then `'\\n' + key + '. ' + option` per option, then `'\\n' + prompt`); the
    same construction in eval/scienceqa and eval/mmmu. A question without options (MMMU
    open) ends with the short-answer line instead, as InternVL's MMMU script does.

    Args:
        sample: the question (`hint`, `question`, `record["options"]`).
        cot: end with the CoT instruction (reason, then "Answer: X") instead.
        suffix: replaces the final instruction line (`--prompt-suffix`).

    Returns:
        The prompt text (the runner lets the template add `<image>`).
    """
    if sample.prompt:
        return sample.prompt
    options = sample.record.get("options") or {}
    text = f"{sample.hint}\n{sample.question}" if sample.hint else sample.question
    for key, option in options.items():
        text += f"\n{key}. {option}"
    if suffix is not None:
        instruction = suffix
    elif cot:
        instruction = MCQ_COT_PROMPT if options else OPEN_COT_PROMPT
    elif not options:
        instruction = VQA_PROMPT
    else:
        instruction = MCQ_PROMPT_CN if is_chinese(text) else MCQ_PROMPT
    return f"{text}\n{instruction}" if instruction else text


def choice_key(sample: Sample, answer: str):
    """The option letter an answer picks (None when unreadable); open MMMU answers as text.

    Args:
        sample: the question (its `record["options"]`).
        answer: one extracted answer.

    Returns:
        A letter, a normalised string, or None.
    """
    options = sample.record.get("options") or {}
    if not options:
        text = " ".join(str(answer or "").lower().split()).strip(" .")
        return text or None
    return extract_choice(answer, options)
