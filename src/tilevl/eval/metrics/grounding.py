"""Referring-expression grounding: box parsing, IoU, and RefCOCO precision@1 (IoU ≥ 0.5).

InternVL answers with boxes on a 0–1000 grid; they are scaled to the image's pixels before the IoU.
"""

from __future__ import annotations

import re

from tilevl.errors import InputError
from tilevl.eval.metrics.records import group_mean, ratio, require, result

Box = tuple[float, float, float, float]

_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX = re.compile(r"\[" + ",".join([_NUMBER] * 4) + r"\]")


def parse_boxes(text: str) -> list[Box]:
    """Every `[x1, y1, x2, y2]` in an answer, in order of appearance.

    Covers InternVL's `<box>[[x1, y1, x2, y2]]</box>`, several boxes in one tag
    (`[[…], […]]`) or several tags, and plain `[a, b, c, d]`. Lists whose four entries are
    not all numbers are skipped (InternVL's own regex would take the first bracket pair
    whatever it holds and score a non-number as the box (0, 0, 0, 0); both give IoU 0 when
    no valid box follows).

    Args:
        text: the model's answer.

    Returns:
        The boxes as float 4-tuples, in the coordinates the model wrote.
    """
    return [tuple(float(v) for v in m.groups()) for m in _BOX.finditer(str(text or ""))]


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two `(x1, y1, x2, y2)` boxes in continuous coordinates.

    Same convention as torchvision.ops.box_iou, which InternVL's RefCOCO eval uses: area is
    `(x2 - x1) * (y2 - y1)` with no +1, and a degenerate union gives 0.

    Args:
        a: first box.
        b: second box.

    Returns:
        The IoU in [0, 1].
    """
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def to_pixels(box: Box, width: float, height: float) -> Box:
    """Scale a model box on InternVL's 0–1000 grid to pixels.

    Source: InternVL internvl_chat/eval/refcoco/evaluate_grounding.py: a box whose four
    coordinates sum to at least 4 is divided by 1000; a smaller one is taken as already
    in 0–1 fractions; then x is multiplied by the width and y by the height.

    Args:
        box: the predicted box.
        width: image width in pixels.
        height: image height in pixels.

    Returns:
        The box in pixels.
    """
    scale = 1000.0 if sum(box) >= 4 else 1.0
    x1, y1, x2, y2 = (v / scale for v in box)
    return (x1 * width, y1 * height, x2 * width, y2 * height)


def _gold_box(record: dict, position: int, rule: str) -> Box:
    box = [float(v) for v in require(record, "bbox", position, rule)]
    if len(box) != 4:
        raise InputError(f"{rule}: record #{position} bbox has {len(box)} values, expected 4")
    if record.get("bbox_format", "xyxy") == "xywh":  # COCO's native layout
        box = [box[0], box[1], box[0] + box[2], box[1] + box[3]]
    return tuple(box)


def score_grounding(records: list[dict]) -> dict:
    """RefCOCO/RefCOCO+/RefCOCOg precision@1: the first predicted box has IoU ≥ 0.5.

    Source: InternVL internvl_chat/eval/refcoco/evaluate_grounding.py. Only the first box of
    the answer is scored; an answer without a box scores IoU 0 (a miss).

    Args:
        records: dicts with `prediction`, `bbox` (gold box in pixels, `[x1, y1, x2, y2]`, or
            COCO `[x, y, w, h]` with `bbox_format: "xywh"`), `width` and `height` (pixels),
            optionally `pred_in_pixels: True` when the model already answers in pixels, and
            `split` (e.g. "refcoco_val").

    Returns:
        `precision` (IoU ≥ 0.5), `mean_iou`, `per_split`, `no_box` (answers with no box),
        `n`.
    """
    rule = "grounding_iou50"
    hits, ious, splits, no_box = [], [], [], 0
    for i, record in enumerate(records):
        gold = _gold_box(record, i, rule)
        boxes = parse_boxes(record.get("prediction", ""))
        if not boxes:
            no_box += 1
            iou = 0.0
        else:
            box = boxes[0]
            if not record.get("pred_in_pixels", False):
                box = to_pixels(box, float(require(record, "width", i, rule)),
                                float(require(record, "height", i, rule)))
            iou = box_iou(box, gold)
        ious.append(iou)
        hits.append(iou >= 0.5)
        splits.append(record.get("split"))
    return result(
        rule, "1", len(records),
        precision=ratio(sum(hits), len(hits)),
        mean_iou=ratio(sum(ious), len(ious)),
        per_split=group_mean(splits, hits),
        no_box=no_box,
    )
