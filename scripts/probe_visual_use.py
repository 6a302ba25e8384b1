"""Does a MiniBench-trained model use its images?  A quick probe for scripts/train_tilevl_tiny.py.

For each category it asks N fresh generator items twice — in words ("… single word or
phrase", scored against the correct option) and as MMBench multiple choice (the letter) —
and prints the share right and the most common reply: a model that ignores the image gives
the same reply to every item (the category's prior). It also prints the visual tokens' norm
beside the text embeddings' and how much the visual tokens vary across images: in the
failed tilevl-tiny runs the projector's outputs grew to ~1 400 (text embeddings ~0.6) while
varying across images by a few per cent.

    python scripts/probe_visual_use.py runs/tilevl-tiny/train/model --n 24
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter

DEFAULT_CATEGORIES = ("color_recognition", "shape_recognition", "image_emotion",
                      "object_localization", "arrow_direction", "object_counting")
SEED = 90_000  # item seeds far from the generator's sha256-derived ones


def probe(model, tokenizer, categories, n: int) -> dict:
    """{category: {"worded": share right, "letter": share right, "top_reply": (reply, count)}}
    plus "_features": visual-token norm, text-embedding norm, across-image spread."""
    import torch

    from tilevl import preprocess
    from tilevl.minibench import make_item
    from tilevl.minibench.formats import mmbench_prompt, vqa_prompt

    out, features = {}, []
    for category in categories:
        items = [make_item(category, random.Random(SEED + i)) for i in range(n)]
        pixels = [preprocess(item.image, model.image_settings) for item in items]
        tiles = [p.shape[0] for p in pixels]
        batch = torch.cat(pixels)
        worded = model.batch_chat(tokenizer, batch, [
            vqa_prompt(f"{it.hint}\n{it.question}" if it.hint else it.question) for it in items],
            dict(max_new_tokens=10, do_sample=False), num_patches_list=tiles)
        letters = model.batch_chat(tokenizer, batch, [
            mmbench_prompt(it.question, it.hint, it.options) for it in items],
            dict(max_new_tokens=3, do_sample=False), num_patches_list=tiles)
        out[category] = {
            "worded": sum(w.strip().lower() == it.options[it.answer].lower()
                          for w, it in zip(worded, items)) / n,
            "letter": sum(x.strip()[:1] == "ABCD"[it.answer] for x, it in zip(letters, items)) / n,
            "top_reply": Counter(w.strip() for w in worded).most_common(1)[0],
        }
        with torch.no_grad():
            features += [model.extract_feature(p).mean(0) for p in pixels]
    stacked = torch.stack(features)  # [images, tokens, H]
    embed = model.language_model.get_input_embeddings().weight.detach()
    out["_features"] = {
        "visual_norm": float(stacked.norm(dim=-1).mean()),
        "text_embedding_norm": float(embed.norm(dim=-1).mean()),
        "across_image_spread": float(stacked.std(0).mean() / stacked.abs().mean()),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a checkpoint folder (or tilevl-tiny)")
    p.add_argument("--n", type=int, default=24, help="items per category")
    p.add_argument("--categories", nargs="+", default=list(DEFAULT_CATEGORIES))
    args = p.parse_args(argv)
    from tilevl.resolve import open_model

    model, tokenizer = open_model(args.model, dtype="fp32", quiet=True)
    result = probe(model, tokenizer, args.categories, args.n)
    for category in args.categories:
        r = result[category]
        reply, count = r["top_reply"]
        print(f"{category:22s} worded {100 * r['worded']:5.1f} %   letter {100 * r['letter']:5.1f} %   "
              f"most common reply {reply!r} ({count}/{args.n})")
    f = result["_features"]
    print(f"visual tokens: norm {f['visual_norm']:.1f} (text embeddings {f['text_embedding_norm']:.2f}), "
          f"spread across images {100 * f['across_image_spread']:.1f} % of their mean magnitude")
    return 0


if __name__ == "__main__":
    sys.exit(main())
