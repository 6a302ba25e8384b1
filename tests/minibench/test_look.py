"""The look stage's items: deterministic, readable by the training loader, answers right."""

from __future__ import annotations

import json
import random

import pytest

from tilevl.minibench import make_item
from tilevl.minibench.generate import item_seed
from tilevl.minibench.look import LOOK_CATEGORIES, generate_look


def test_same_seed_same_bytes_and_categories_in_turn(tmp_path):
    a = generate_look(tmp_path / "a", 14, seed=3)
    generate_look(tmp_path / "b", 14, seed=3)
    for name in ["look.jsonl", "meta.json", *(f"images/look_{i:06d}.png" for i in range(14))]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert a["n"] == 14 and a["categories"] == list(LOOK_CATEGORIES)
    other = generate_look(tmp_path / "c", 14, seed=4)
    assert (tmp_path / "c" / "look.jsonl").read_bytes() != (tmp_path / "a" / "look.jsonl").read_bytes()
    assert other["seed"] == 4


def test_records_ask_the_generator_question_in_words_with_its_answer(tmp_path):
    generate_look(tmp_path, 7, seed=0)
    records = [json.loads(line) for line in (tmp_path / "look.jsonl").read_text("utf-8").splitlines()]
    assert len(records) == 7 and len({r["image"] for r in records}) == 7
    for i, record in enumerate(records):
        item = make_item(LOOK_CATEGORIES[i % len(LOOK_CATEGORIES)],
                         random.Random(item_seed(0, "look", i)), hard=False)
        human, gpt = record["conversations"]
        assert human["value"].startswith("<image>\n") and item.question in human["value"]
        assert human["value"].endswith("Answer the question using a single word or phrase.")
        assert gpt["value"] == item.options[item.answer]
        assert (record["width"], record["height"]) == item.image.size
        assert (tmp_path / "images" / record["image"]).is_file()


def test_the_training_loader_reads_them(tmp_path):
    from tilevl.checkpoint.tokenizer import build_bpe_tokenizer
    from tilevl.config import ModelConfig
    from tilevl.data.dataset import SFTDataset

    info = generate_look(tmp_path, 3, seed=0)
    config = ModelConfig.from_name("tilevl-tiny", max_dynamic_patch=1)
    dataset = SFTDataset(info["meta"], build_bpe_tokenizer(), config)
    assert dataset.scan() and dataset.bad_records == {}
    assert dataset[0]["pixel_values"].shape[0] == 1  # one tile


def test_unknown_category_is_named(tmp_path):
    with pytest.raises(KeyError, match="no_such_thing"):
        generate_look(tmp_path, 2, categories=("image_scene", "no_such_thing"))
