"""How much of a model's MiniBench score comes from the image?  Scores a multiple-choice TSV
twice: as it is, and with every item's image swapped for another item's of the same category
(a fixed derangement; circular copies keep their item's swapped image).  A model that
ignores the image scores the same on both; the gap is what the image is worth.

A model that answers with the option's text (tilevl-tiny) is rotation-invariant by
construction, so its image-blind circular accuracy is not (1/4)^4: a fixed reply scores
whenever it names the right option.  This control is its chance level.

    python scripts/image_blind_control.py tilevl-tiny runs/tilevl-tiny/minibench/dev/mcq.tsv --out runs/blind
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import defaultdict
from pathlib import Path

STRIDE = 1_000_000


def swap_images(rows: list[dict], seed: int = 0) -> list[dict]:
    """The rows with each item's image replaced by another item's of its category."""
    images, by_category = {}, defaultdict(list)
    for row in rows:
        item = int(row["index"]) % STRIDE
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
    return [{**row, "image": new_image[int(row["index"]) % STRIDE]} for row in rows]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a checkpoint folder or tilevl-tiny")
    p.add_argument("tsv", help="a MiniBench (MMBench-style) multiple-choice TSV")
    p.add_argument("--out", required=True)
    p.add_argument("--max-tiles", type=int, default=None, help="default: the model's trained budget")
    args = p.parse_args(argv)

    from tilevl.eval.runner import EvalConfig, evaluate
    from tilevl.minibench.formats import read_tsv, tsv_text
    from tilevl.resolve import open_model

    model, tokenizer = open_model(args.model, dtype="fp32", quiet=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    swapped = out / "swapped.tsv"
    swapped.write_text(tsv_text(swap_images(read_tsv(args.tsv))), "utf-8")
    scores = {}
    for name, data in (("real images", args.tsv), ("swapped images", swapped)):
        cfg = EvalConfig(bench="minibench", data=str(data), out=str(out / name.split()[0]),
                         max_tiles=args.max_tiles or model.image_settings.max_num, batch_size=16,
                         progress=False, model_name=args.model)
        result = evaluate(model, tokenizer, cfg)
        scores[name] = ((result.get("per_category") or {}).get("values", {}),
                        result["headline"]["value"])
    (real, real_all), (blind, blind_all) = scores["real images"], scores["swapped images"]
    print("| category | real images | swapped images | gap |\n|---|---:|---:|---:|")
    for category in real:
        print(f"| {category} | {100 * real[category]:.1f} | {100 * blind[category]:.1f} | "
              f"{100 * (real[category] - blind[category]):+.1f} |")
    print(f"| **overall** | **{100 * real_all:.1f}** | **{100 * blind_all:.1f}** | "
          f"**{100 * (real_all - blind_all):+.1f}** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
