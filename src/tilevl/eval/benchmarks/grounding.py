"""Referring-expression grounding: RefCOCO / RefCOCO+ / RefCOCOg (InternVL's jsonl) and
MiniBench's `grounding.jsonl`; InternVL's grounding prompt and a box vote key.

Gold boxes stay in pixels (`bbox`, xyxy); the scorer scales the model's 0–1000 boxes.
"""

from __future__ import annotations

import re
from pathlib import Path

from tilevl.errors import InputError
from tilevl.eval.benchmarks.common import (
    GROUNDING_PROMPT,
    Sample,
    as_index,
    check_unique,
    read_json_or_jsonl,
    resolve_image,
)
from tilevl.eval.metrics import parse_boxes

_REF = re.compile(r"<ref>(.*?)</ref>", re.DOTALL)


def _size(image: str, where: str) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image) as img:  # reads the header only
            return img.size
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"{where}: cannot read the size of {image} ({exc})") from None


def read_grounding(path: str | Path, image_root: str | Path | None = None) -> list[Sample]:
    """Read a grounding jsonl into samples.

    Fields: `image`, the expression as `sent` (InternVL's refcoco_*.jsonl), `ref`, or a
    `question` holding `<ref>…</ref>` (MiniBench); `bbox` in pixels (`[x1, y1, x2, y2]`, or
    COCO `[x, y, w, h]` with `bbox_format: "xywh"`); `width`/`height` (read from the image
    when absent); optional `index`, `split`.

    Args:
        path: the jsonl (or json list) file.
        image_root: where relative image paths live.

    Returns:
        Samples whose `record` holds `bbox`, `width`, `height`, `split` (the file name when
        rows carry none), `ref`, and `bbox_format` when given.
    """
    path = Path(path)
    samples = []
    for number, row in enumerate(read_json_or_jsonl(path), 1):
        where = f"{path}:{number}"
        question = row.get("question")
        ref = row.get("ref") or row.get("sent")
        if ref is None and question:
            found = _REF.search(question)
            ref = found.group(1) if found else None
        if ref is None:
            raise InputError(f"{where}: no referring expression (sent, ref, or <ref> in question)")
        if "bbox" not in row:
            raise InputError(f"{where}: no gold 'bbox'")
        image = resolve_image(row.get("image"), path.parent, image_root, where)
        if image is None:
            raise InputError(f"{where}: grounding needs an image")
        width, height = row.get("width"), row.get("height")
        if width is None or height is None:
            width, height = _size(image, where)
        record = {"bbox": [float(v) for v in row["bbox"]], "width": width, "height": height,
                  "split": row.get("split") or path.stem, "ref": ref}
        if row.get("bbox_format"):
            record["bbox_format"] = row["bbox_format"]
        index = row.get("index", row.get("id", number - 1))
        samples.append(Sample(index=as_index(index), question=question or ref, image=image,
                              record=record))
    return check_unique(samples, path)


def grounding_prompt(sample: Sample, cot: bool = False, suffix: str | None = None) -> str:
    """InternVL's RefCOCO question for the sample's expression.

    Source: InternVL internvl_chat/eval/refcoco/evaluate_grounding.py, `prompt.format(sent)`.
    A question that already carries `<ref>` (MiniBench) is used as it is.

    Args:
        sample: the question (`record["ref"]`).
        cot: unused (grounding has no CoT variant; the runner refuses `--cot`).
        suffix: a replacement template with `{}` for the expression, or text to append.

    Returns:
        The prompt text.
    """
    if sample.prompt:
        return sample.prompt
    ref = sample.record.get("ref", sample.question)
    if suffix is not None:
        return suffix.format(ref) if "{}" in suffix else f"{GROUNDING_PROMPT.format(ref)}\n{suffix}"
    if "<ref>" in sample.question:
        return sample.question
    return GROUNDING_PROMPT.format(ref)


def box_key(sample: Sample, answer: str):
    """Answers vote together when their first boxes agree to the integer.

    Args:
        sample: the question (unused; keeps the vote-key signature).
        answer: one answer.

    Returns:
        The first box as an int 4-tuple, or None when the answer holds no box.
    """
    boxes = parse_boxes(answer)
    return tuple(round(v) for v in boxes[0]) if boxes else None
