"""Box parsing, IoU and RefCOCO precision with 0–1000 and pixel predictions.

Boxes are small enough to work out every IoU by hand.
"""

import pytest

from tilevl.eval.metrics import box_iou, parse_boxes, score_grounding, to_pixels


def test_parse_boxes_forms():
    assert parse_boxes("<ref>dog</ref><box>[[10, 20, 300, 400]]</box>") == [(10, 20, 300, 400)]
    assert parse_boxes("<box>[[1,2,3,4],[5,6,7,8]]</box>") == [(1, 2, 3, 4), (5, 6, 7, 8)]
    assert parse_boxes("at [0.5, 1.25, 3, 4] here") == [(0.5, 1.25, 3.0, 4.0)]
    assert parse_boxes("[a, b, c, d] no numbers") == []
    assert parse_boxes(None) == []


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_to_pixels():
    # 200×100 image: x scales by 200/1000, y by 100/1000
    assert to_pixels((100, 100, 500, 500), 200, 100) == pytest.approx((20, 10, 100, 50))
    # a box summing to < 4 is read as 0–1 fractions (InternVL's rule)
    assert to_pixels((0.1, 0.1, 0.5, 0.5), 200, 100) == pytest.approx((20, 10, 100, 50))


def test_score_grounding_pixels_vs_1000_grid():
    base = {"bbox": [20, 10, 100, 50], "width": 200, "height": 100}
    records = [
        {**base, "prediction": "<box>[[100, 100, 500, 500]]</box>", "split": "val"},  # IoU 1
        # the same box already in pixels: IoU 1
        {**base, "prediction": "[20, 10, 100, 50]", "pred_in_pixels": True, "split": "val"},
        # the same pixel numbers read as 0–1000 become (4, 1, 20, 5), which only touches the
        # gold box's left edge: IoU 0
        {**base, "prediction": "[20, 10, 100, 50]", "split": "testA"},
        {**base, "prediction": "I cannot find it", "split": "testA"},
    ]
    out = score_grounding(records)
    assert out["precision"] == 0.5
    assert out["per_split"] == {"testA": {"score": 0.0, "n": 2}, "val": {"score": 1.0, "n": 2}}
    assert out["no_box"] == 1
    assert out["mean_iou"] == 0.5


def test_score_grounding_xywh_gold():
    record = {"bbox": [20, 10, 80, 40], "bbox_format": "xywh", "width": 200, "height": 100,
              "prediction": "<box>[[100, 100, 500, 500]]</box>"}
    assert score_grounding([record])["precision"] == 1.0
