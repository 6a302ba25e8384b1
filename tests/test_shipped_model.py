"""The weights that ship in tilevl/assets/tilevl-tiny: small fp16 safetensors that load by
name and answer MiniBench questions from what the image shows.

The questions are drawn here by the generator (`make_item`, fixed seeds, easy variant) and
asked with the benchmark's multiple-choice prompt; the expected option is the generator's
answer, never something recorded from the model.  Replies are read with MMBench's rule
(`extract_choice`; tilevl-tiny answers with the option's text).  The same questions with the
images swapped between items must score far lower: the model reads the image, not a prior.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from tilevl.assets import asset_path
from tilevl.eval.metrics.choices import extract_choice
from tilevl.inputs.image import preprocess
from tilevl.minibench import make_item
from tilevl.minibench.formats import mmbench_prompt
from tilevl.minibench.generate import item_seed

SEED = 20261202
N = 12
# Categories the README's table shows it reads (image-swap gaps +79, +75 and +42 points on
# dev); the fewest right out of N (the shipped model gets 12, 11 and 12).  Four options, so
# chance is 3 of 12: P(>= 9 right by chance) < 0.05 %.
MIN_RIGHT = {"image_scene": 10, "image_topic": 9, "color_recognition": 9}


@pytest.fixture(scope="module")
def tiny():
    from tilevl.resolve import open_model

    assert asset_path("tilevl-tiny") is not None, "the package must ship tilevl-tiny"
    torch.manual_seed(0)
    return open_model("tilevl-tiny", dtype="fp32", quiet=True)


def test_shipped_files_are_small_fp16_safetensors():
    from safetensors import safe_open

    folder = asset_path("tilevl-tiny")
    total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    assert total <= 25 * 2**20, f"{folder} holds {total / 2**20:.1f} MiB (limit 25)"
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"F16"}
    scores = json.loads((folder / "scores.json").read_text("utf-8"))
    assert scores["model"] == "tilevl-tiny" and scores["split"] == "dev"
    assert json.loads((folder / "config.json").read_text("utf-8"))["max_dynamic_patch"] == 1


def _right(model, tokenizer, items, images) -> tuple[int, list[str]]:
    right, replies = 0, []
    for item, image in zip(items, images):
        pixels = preprocess(image, model.image_settings)
        question = mmbench_prompt(item.question, item.hint, item.options)
        reply = model.chat(tokenizer, pixels, question, dict(max_new_tokens=16, do_sample=False))
        right += extract_choice(reply, dict(zip("ABCD", item.options))) == "ABCD"[item.answer]
        replies.append(reply)
    return right, replies


@pytest.mark.parametrize("category", sorted(MIN_RIGHT))
def test_shipped_model_answers_from_the_image(tiny, category):
    model, tokenizer = tiny
    items = [make_item(category, random.Random(item_seed(SEED, "shipped-test", category, i)))
             for i in range(N)]
    images = [item.image for item in items]
    right, replies = _right(model, tokenizer, items, images)
    assert right >= MIN_RIGHT[category], f"{category}: {right}/{N} right; replies {replies}"
    swapped, replies = _right(model, tokenizer, items, images[1:] + images[:1])
    assert swapped <= right - 4, f"{category}: {swapped}/{N} right with swapped images; {replies}"


def test_shipped_model_reasons_step_by_step_and_ends_with_an_option(tiny):
    """Asked with the CoT prompt (`tilevl eval --cot`), tilevl-tiny v2 writes its observations,
    a conclusion, and the final "Answer: …" line naming one of the options in words."""
    from tilevl.eval.benchmarks.common import final_answer

    model, tokenizer = tiny
    right = 0
    for i in range(N):
        item = make_item("image_scene", random.Random(item_seed(SEED, "shipped-cot", i)))
        pixels = preprocess(item.image, model.image_settings)
        prompt = mmbench_prompt(item.question, item.hint, item.options, cot=True)
        reply = model.chat(tokenizer, pixels, prompt, dict(max_new_tokens=96, do_sample=False))
        assert "So the answer is" in reply and "\nAnswer: " in reply, reply
        choice = extract_choice(final_answer(reply), dict(zip("ABCD", item.options)))
        assert choice is not None, reply
        right += choice == "ABCD"[item.answer]
    assert right >= MIN_RIGHT["image_scene"], f"{right}/{N} scenes right after reasoning"


def test_shipped_folder_carries_its_evaluation_tile_budget():
    config = json.loads((asset_path("tilevl-tiny") / "config.json").read_text("utf-8"))
    assert config["eval_max_dynamic_patch"] == config["max_dynamic_patch"] == 1
