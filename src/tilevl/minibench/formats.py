"""Record layouts of MiniBench's files: MMBench TSV rows with circular copies (and their
images-swapped control), the prompts InternVL uses, and the training split's records."""

from __future__ import annotations

import csv
import io
import json
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from tilevl.minibench.items import LETTERS

TSV_COLUMNS = ("index", "image", "question", "hint", "A", "B", "C", "D", "answer", "category",
               "l2-category", "split", "difficulty")
CIRCULAR_STRIDE = 1_000_000  # MMBench's convention: copy k of item i has index i + k * stride

# InternVL's evaluation prompts (internvl_chat/eval/*): MMBench-style multiple choice, short
# VQA and POPE, and the RefCOCO grounding question.
MCQ_PROMPT = "Answer with the option's letter from the given choices directly."
VQA_PROMPT = "Answer the question using a single word or phrase."
GROUNDING_QUESTION = ("Please provide the bounding box coordinate of the region this sentence "
                      "describes: <ref>{}</ref>")
CAPTION_PROMPTS = ("Describe this image briefly.", "Give a short description of the image.",
                   "What is in this picture? Answer in one sentence.")


def rotate_options(options: Sequence[str], answer: int, k: int) -> tuple[list[str], int]:
    """Circular copy k: option j shows what option (j + k) mod n showed.

    Args:
        options: the n options of the base item.
        answer: index of the right option in `options`.
        k: how many places to rotate, 0 ≤ k < n.
    Returns:
        (rotated options, index of the right option among them).
    """
    n = len(options)
    return [options[(j + k) % n] for j in range(n)], (answer - k) % n


def mcq_rows(base_index: int, image_b64: str, question: str, hint: str, options: Sequence[str],
             answer: int, category: str, l2: str, split: str, difficulty: str) -> list[dict]:
    """The TSV rows of one item: the base row, then one circular copy per extra option.

    2- and 3-option items rotate over their own options and leave the unused columns empty.

    Returns:
        len(options) rows keyed by TSV_COLUMNS.
    """
    rows = []
    for k in range(len(options)):
        opts, ans = rotate_options(options, answer, k)
        row = {"index": base_index + k * CIRCULAR_STRIDE, "image": image_b64, "question": question,
               "hint": hint, "answer": LETTERS[ans], "category": category, "l2-category": l2,
               "split": split, "difficulty": difficulty}
        row.update({LETTERS[j]: (opts[j] if j < len(opts) else "") for j in range(4)})
        rows.append(row)
    return rows


def tsv_text(rows: Iterable[Mapping]) -> str:
    """Rows as tab-separated text with a header; fields never hold tabs or newlines."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TSV_COLUMNS, delimiter="\t", lineterminator="\n",
                            quoting=csv.QUOTE_MINIMAL)
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return buf.getvalue()


def read_tsv(path) -> list[dict]:
    """Read a MiniBench (or MMBench) TSV into dicts of strings, without pandas."""
    csv.field_size_limit(1 << 30)  # base64 images are longer than csv's 128 KiB default
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def swap_images(rows: Sequence[Mapping], seed: int = 0) -> list[dict]:
    """The images-swapped control of an MMBench-style TSV: each item shows another item's
    image of its own category (a derangement), and its circular copies share that image.

    A model that ignores the image scores the same on both files; the gap is what the image
    is worth, and the swapped score is the model's chance level on these questions.

    Args:
        rows: TSV rows with `index` (copy k of item i at i + k * CIRCULAR_STRIDE),
            `image` and `category`.
        seed: orders the derangement.
    Returns:
        New rows, same order, only `image` changed.
    Raises:
        ValueError: naming a category with a single item (no image to swap with).
    """
    images, by_category = {}, defaultdict(list)
    for row in rows:
        item = int(row["index"]) % CIRCULAR_STRIDE
        if item not in images:
            images[item] = row["image"]
            by_category[row["category"]].append(item)
    new_image = {}
    rng = random.Random(seed)
    for category, items in by_category.items():
        if len(items) < 2:
            raise ValueError(f"category {category!r} has one item: nothing to swap its image with")
        shifted = items[:]
        rng.shuffle(shifted)  # a rotation of a shuffled order: no item keeps its own image
        for a, b in zip(shifted, shifted[1:] + shifted[:1]):
            new_image[a] = images[b]
    return [{**row, "image": new_image[int(row["index"]) % CIRCULAR_STRIDE]} for row in rows]


def jsonl_text(records: Iterable[Mapping]) -> str:
    """One compact JSON object per line, keys in insertion order (stable bytes)."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def mmbench_prompt(question: str, hint: str, options: Sequence[str], cot: bool = False) -> str:
    """InternVL's MMBench prompt: hint, question, "A. …" lines, then the answer instruction
    (with `cot`, the chain-of-thought instruction `tilevl eval --cot` asks with)."""
    text = f"{hint}\n{question}" if hint else question
    for letter, option in zip(LETTERS, options):
        text += f"\n{letter}. {option}"
    if cot:
        from tilevl.eval.benchmarks.common import MCQ_COT_PROMPT

        return f"{text}\n{MCQ_COT_PROMPT}"
    return f"{text}\n{MCQ_PROMPT}"


def open_cot_prompt(question: str) -> str:
    """An open question with the chain-of-thought instruction `tilevl eval --cot` uses."""
    from tilevl.eval.benchmarks.common import OPEN_COT_PROMPT

    return f"{question}\n{OPEN_COT_PROMPT}"


def vqa_prompt(question: str) -> str:
    """InternVL's short-answer VQA prompt (also used for POPE)."""
    return f"{question}\n{VQA_PROMPT}"


def norm_box(box: Sequence[int], width: int, height: int) -> list[int]:
    """A pixel box as InternVL's 0–1000 integer coordinates."""
    x1, y1, x2, y2 = box
    scale = (1000 / width, 1000 / height, 1000 / width, 1000 / height)
    return [min(1000, max(0, round(v * s))) for v, s in zip((x1, y1, x2, y2), scale)]


def grounding_answer(ref: str, box_norm: Sequence[int]) -> str:
    """The reply InternVL is trained to give for a grounding question."""
    x1, y1, x2, y2 = box_norm
    return f"<ref>{ref}</ref><box>[[{x1}, {y1}, {x2}, {y2}]]</box>"


def conversation(record_id: str, image: str, width: int, height: int,
                 turns: Sequence[tuple[str, str]]) -> dict:
    """A training record; the first human turn starts with the `<image>` placeholder.

    Args:
        record_id: a unique id.
        image: the file name relative to the meta entry's root.
        width, height: the image size in pixels.
        turns: (human text, gpt text) pairs.
    Returns:
        {"id", "image", "width", "height", "conversations": [...]}.
    """
    convs = []
    for i, (human, gpt) in enumerate(turns):
        convs.append({"from": "human", "value": f"<image>\n{human}" if i == 0 else human})
        convs.append({"from": "gpt", "value": gpt})
    return {"id": record_id, "image": image, "width": width, "height": height,
            "conversations": convs}


def meta_json(name: str, annotation: str, length: int, root: str = "images/") -> dict:
    """The meta-JSON entry InternVL's fine-tuning reads (`--meta_path`).

    `root` is relative to the folder holding meta.json; a loader that resolves it against
    the working directory needs to be run from there, or the entry rewritten to absolute.
    """
    return {name: {"root": root, "annotation": annotation, "data_augment": False,
                   "repeat_time": 1, "length": length}}


COT_ANSWER = "Answer: "  # the final line of a chain-of-thought reply (tilevl.minibench.traces)


def _is_cot_mcq(prompt: str) -> bool:
    from tilevl.eval.benchmarks.common import MCQ_COT_PROMPT

    return prompt.endswith(MCQ_COT_PROMPT)


def worded_mcq_file(src, dst) -> int:
    """Copy a training jsonl, answering its multiple-choice turns with the chosen option's
    text instead of its letter; returns how many turns changed.

    A turn counts as multiple choice when its prompt ends with the MMBench instruction and the
    reply is a single letter A-D, or when it ends with the CoT instruction and the reply's last
    line is "Answer: <letter>" (that line then names the option's text).  The prompt is kept: MMBench's rule
    (`tilevl.eval.metrics.choices.extract_choice`: the letter, else the one option text the
    answer contains) reads a reply in words as that option.  For a model too small to learn
    the letter lookup (tilevl-tiny); see scripts/train_tilevl_tiny.py.

    Raises:
        ValueError: a letter whose option is not (exactly once) in its prompt, naming the
            file, line and record id.
    """
    changed, lines = 0, []
    with open(src, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            record = json.loads(line)
            turns = record["conversations"]
            for ask, reply in zip(turns[::2], turns[1::2]):
                head, _, letter = reply["value"].rpartition("\n" + COT_ANSWER)
                if ask["value"].endswith(MCQ_PROMPT) and reply["value"] in LETTERS:
                    head, letter = None, reply["value"]
                elif not (_is_cot_mcq(ask["value"]) and letter in LETTERS):
                    continue
                option = [row[3:] for row in ask["value"].split("\n") if row.startswith(f"{letter}. ")]
                if len(option) != 1:
                    raise ValueError(f"{src}:{number}: record {record.get('id')!r}: no single "
                                     f"option {letter} in its multiple-choice prompt")
                reply["value"] = option[0] if head is None else f"{head}\n{COT_ANSWER}{option[0]}"
                changed += 1
            lines.append(json.dumps(record, ensure_ascii=False))
    Path(dst).write_text("".join(line + "\n" for line in lines), "utf-8")
    return changed
