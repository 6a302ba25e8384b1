"""A tiny generated image-text set: 8 solid-colour PNGs asked "What colour is this?".

Written as upstream's meta JSON + jsonl + images, plus a text-only set that teaches the names.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

COLOURS = {
    "red": (255, 0, 0), "green": (0, 160, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
    "black": (0, 0, 0), "white": (255, 255, 255), "purple": (128, 0, 128), "orange": (255, 140, 0),
}
QUESTION = "What colour is this?"
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml"


def write_colour_set(root: Path, extra_lines: list[str] = ()) -> Path:
    """PNGs + train.jsonl + meta.json under `root`; returns the meta file."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for name, rgb in COLOURS.items():
        Image.new("RGB", (56, 56), rgb).save(root / "images" / f"{name}.png")
        lines.append(json.dumps({"image": f"images/{name}.png", "conversations": [
            {"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": name}]}))
    (root / "train.jsonl").write_text("\n".join([*lines, *extra_lines]) + "\n", "utf-8")
    meta = {"colours": {"root": ".", "annotation": "train.jsonl", "repeat_time": 1,
                        "length": len(lines) + len(extra_lines)}}
    (root / "meta.json").write_text(json.dumps(meta), "utf-8")
    return root / "meta.json"


def write_text_set(root: Path) -> Path:
    """Text-only records ("Say red." → "red"): a stand-in for a pretrained LLM's vocabulary."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"conversations": [{"from": "human", "value": f"Say {n}."},
                                           {"from": "gpt", "value": n}]}) for n in COLOURS]
    (root / "text.jsonl").write_text("\n".join(lines) + "\n", "utf-8")
    return root / "text.jsonl"


def answers(model, tokenizer) -> dict[str, str]:
    """Greedy `model.chat` replies to the training question for every colour."""
    from tilevl.inputs.image import preprocess

    model.eval()
    out = {}
    for name, rgb in COLOURS.items():
        pixels = preprocess(Image.new("RGB", (56, 56), rgb), model.image_settings)
        out[name] = model.chat(tokenizer, pixels, QUESTION, dict(max_new_tokens=6, do_sample=False))
    return out
