"""The images-swapped control of a MiniBench TSV (minibench.formats.swap_images) on a drawn
test split: every item shows another item's image of its own category, copies agree."""

from __future__ import annotations

import pytest

from tilevl.minibench import generate
from tilevl.minibench.formats import CIRCULAR_STRIDE, read_tsv, swap_images


def test_swap_images_deranges_within_each_category(tmp_path):
    generate(tmp_path, size=30, seed=3, categories=["ocr", "image_topic"], progress=False,
             formats=("mcq",), workers=1, train_size=0)
    rows = read_tsv(tmp_path / "test" / "mcq.tsv")
    swapped = swap_images(rows, seed=3)
    own = {int(r["index"]) % CIRCULAR_STRIDE: (r["image"], r["category"]) for r in rows}
    by_image = {image: category for image, category in own.values()}
    shown = {}
    for row, new in zip(rows, swapped):
        item = int(row["index"]) % CIRCULAR_STRIDE
        assert {**new, "image": None} == {**row, "image": None}  # only the image changes
        assert new["image"] != own[item][0] and by_image[new["image"]] == row["category"]
        assert shown.setdefault(item, new["image"]) == new["image"]
    assert sorted(shown.values()) == sorted(image for image, _ in own.values())
    assert swap_images(rows, seed=3) == swapped  # seeded
    with pytest.raises(ValueError, match=r"category 'image_topic' has one item"):
        swap_images([r for r in rows if int(r["index"]) % CIRCULAR_STRIDE in (0, 1)])
