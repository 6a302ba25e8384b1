"""A "look" training set: easy MiniBench items whose answer is plain to see, asked in words.

A model trained from scratch on the full MiniBench mix learns every question's answer type
long before it learns to read the image, and then stops reading it (the visual tokens turn
into a constant). A first stage on questions that only the image answers, and that a whole
112 px tile answers at a glance (scene, quality, style, topic, a face's expression, one big
shape's colour and name, where a shape is, how many there are), gets the vision side
working first: see configs/tilevl_tiny.yaml and scripts/train_tilevl_tiny.py.

Items come from the same generator (`make_item`, easy variant) with seeds of their own, so
they share no image with MiniBench's train/dev/test splits.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tilevl.minibench import formats as fmt
from tilevl.minibench.categories import CATEGORIES, make_item
from tilevl.minibench.draw import png_bytes
from tilevl.minibench.generate import item_seed

LOOK_CATEGORIES = ("image_scene", "image_quality", "image_style", "image_topic",
                   "image_emotion", "color_recognition", "shape_recognition",
                   "object_localization", "object_counting")


def generate_look(out_dir, n: int, seed: int = 0, categories=LOOK_CATEGORIES,
                  progress: bool = False) -> dict:
    """Write `n` look items (categories in turn) as images/ + look.jsonl + meta.json.

    Args:
        out_dir: the folder to write (created; existing files of the same names replaced).
        n: number of records (one image and one worded question each).
        seed: the MiniBench seed; items use their own seed stream ("look", i).
        categories: MiniBench category names to draw.
        progress: show a progress bar.
    Returns:
        {"n", "seed", "categories", "meta"} (meta: the path of meta.json).
    Raises:
        KeyError: for an unknown category.
    """
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise KeyError(f"unknown MiniBench categories {unknown}; known: {', '.join(CATEGORIES)}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    indices = range(n)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="look items", unit="img")
    records = []
    for i in indices:
        category = categories[i % len(categories)]
        item = make_item(category, random.Random(item_seed(seed, "look", i)), hard=False)
        name = f"look_{i:06d}.png"
        (out / "images" / name).write_bytes(png_bytes(item.image))
        question = f"{item.hint}\n{item.question}" if item.hint else item.question
        records.append(fmt.conversation(f"minibench_look_{i:06d}", name, *item.image.size,
                                        [(fmt.vqa_prompt(question), item.options[item.answer])]))
    (out / "look.jsonl").write_text(fmt.jsonl_text(records), "utf-8")
    meta = out / "meta.json"
    meta.write_text(json.dumps(fmt.meta_json("minibench_look", "look.jsonl", len(records)),
                               indent=2) + "\n", "utf-8")
    return {"n": len(records), "seed": seed, "categories": list(categories), "meta": str(meta)}
