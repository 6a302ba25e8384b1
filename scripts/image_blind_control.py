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
import sys
from pathlib import Path

from tilevl.minibench.formats import CIRCULAR_STRIDE, swap_images

STRIDE = CIRCULAR_STRIDE  # the name this script's test reads
__all__ = ["STRIDE", "main", "swap_images"]


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
