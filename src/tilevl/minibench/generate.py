"""Generate MiniBench to disk: plan the items of every split, draw them (deduplicated by
image hash across splits), and write the TSV / jsonl / meta-JSON files with a README."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import random
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import PIL
from tqdm import tqdm

from tilevl.minibench import formats as fmt
from tilevl.minibench.categories import CATEGORIES, make_item, resolve_categories
from tilevl.minibench.draw import png_bytes
from tilevl.minibench.scenes import grounding_scene, icon_caption, pope_image, pope_questions
from tilevl.minibench.traces import cot_reply, number_trace, reasoning_trace

FORMAT_VERSION = 1
# Share of `size` (the number of multiple-choice items over all splits) given to each split.
SPLIT_RATIOS = {"train": 0.5, "dev": 0.1, "test": 0.4}
# Test is drawn first, so its items depend only on (seed, its own size), never on train's.
SPLIT_ORDER = ("test", "dev", "train")
FORMATS = ("mcq", "vqa", "pope", "grounding", "train")
# Per split of n multiple-choice items: n/2 open VQA, n/4 POPE images, n/2 grounding items,
# and (train only) n/10 captions.
_PER_MCQ = {"vqa": 0.5, "pope": 0.25, "grounding": 0.5}
_MAX_ATTEMPTS = 50


@dataclass(frozen=True)
class Unit:
    """One image to draw: which file it feeds and how to seed it."""

    kind: str  # "mcq" | "vqa" | "pope" | "grounding"
    split: str
    index: int
    category: str
    hard: bool


def item_seed(seed: int, *parts) -> int:
    """A 64-bit seed from the global seed and an item's coordinates (split, kind, index, …).

    Hashing keeps items independent of one another: growing a split appends items and leaves
    the existing ones unchanged (unless an appended image happens to need a duplicate redraw).
    """
    key = "/".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little")


def split_sizes(size: int) -> dict[str, int]:
    """Multiple-choice items per split for a total `size` (each split ≥ 1 when size ≥ 3)."""
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    train, dev = round(size * SPLIT_RATIOS["train"]), round(size * SPLIT_RATIOS["dev"])
    if size >= 3:
        dev = max(1, dev)
        train = max(1, min(train, size - dev - 1))
    return {"train": train, "dev": dev, "test": size - train - dev}


def _is_hard(i: int, n_categories: int) -> bool:
    """Item i's variant: each category alternates easy/hard, and so does each pass over them."""
    return (i // n_categories + i % n_categories) % 2 == 1


def plan_units(split: str, n: int, categories: list[str], formats) -> list[Unit]:
    """The images one split needs, in a fixed order; categories cycle, easy/hard alternate."""
    units: list[Unit] = []
    if n == 0:
        return units
    if "mcq" in formats or "train" in formats and split == "train":
        c = len(categories)
        units += [Unit("mcq", split, i, categories[i % c], _is_hard(i, c)) for i in range(n)]
    open_cats = [name for name in categories if CATEGORIES[name].open_form]
    if "vqa" in formats and open_cats:
        c = len(open_cats)
        units += [Unit("vqa", split, i, open_cats[i % c], _is_hard(i, c))
                  for i in range(math.ceil(n * _PER_MCQ["vqa"]))]
    for kind in ("pope", "grounding"):
        if kind in formats:
            units += [Unit(kind, split, i, kind, i % 2 == 1)
                      for i in range(max(1, math.ceil(n * _PER_MCQ[kind])))]
    return units


def draw_unit(unit: Unit, seed: int, attempt: int = 0) -> tuple[dict, bytes, int]:
    """Draw one unit; an attempt that fails to lay out (ValueError) moves to the next seed.

    Args:
        unit: what to draw.
        seed: the global seed.
        attempt: the first attempt number to try (raised to escape duplicate images).
    Returns:
        (the record's fields, PNG bytes, the attempt that succeeded).
    """
    for a in range(attempt, attempt + _MAX_ATTEMPTS):
        rng = random.Random(item_seed(seed, unit.split, unit.kind, unit.index, a))
        try:
            if unit.kind in ("mcq", "vqa"):
                item = make_item(unit.category, rng, hard=unit.hard)
                img = item.image
                rec = {"question": item.question, "options": item.options, "answer": item.answer,
                       "hint": item.hint, "open_question": item.open_question,
                       "open_answers": item.open_answers, "caption": item.caption,
                       "trace": reasoning_trace(item),
                       "open_trace": number_trace(item) if item.open_answers else None}
            elif unit.kind == "pope":
                img, objs = pope_image(rng, unit.hard)
                rec = {"objects": [o.name for o in objs], "caption": icon_caption(objs)}
            else:
                img, _, target = grounding_scene(rng, unit.hard)
                x1, y1, x2, y2 = target.box
                # Edges, not last pixels: x2/y2 are exclusive, as in COCO's x + w.
                rec = {"ref": target.phrase, "box": [x1, y1, x2 + 1, y2 + 1]}
        except ValueError:
            continue  # a rare layout that does not fit; the next attempt reseeds it
        rec.update(width=img.width, height=img.height)
        return rec, png_bytes(img), a
    raise RuntimeError(f"could not draw {unit} in {_MAX_ATTEMPTS} attempts")


def _draw_first(args) -> tuple[dict, bytes, int]:
    return draw_unit(*args)


def render_units(units: list[Unit], seed: int, workers: int = 1, progress: bool = False):
    """Draw all units, redrawing any whose image duplicates an earlier one.

    Duplicates are resolved in `units` order after the (possibly parallel) first pass, so the
    result does not depend on `workers`.

    Args:
        units: the plan, all splits, in SPLIT_ORDER.
        seed: the global seed.
        workers: processes for the first pass (1 draws in this process).
        progress: show a tqdm bar.
    Returns:
        A list of (record fields, PNG bytes), aligned with `units`.
    """
    jobs = [(u, seed, 0) for u in units]
    if workers > 1 and len(units) >= 4 * workers:
        pool = ProcessPoolExecutor(workers)
        first = pool.map(_draw_first, jobs, chunksize=max(1, len(jobs) // (workers * 8)))
    else:
        pool, first = None, map(_draw_first, jobs)
    seen: set[bytes] = set()
    out = []
    try:
        for unit, (rec, png, attempt) in tqdm(zip(units, first), total=len(units),
                                              desc="MiniBench", unit="img", disable=not progress):
            digest = hashlib.sha256(png).digest()
            while digest in seen:
                rec, png, attempt = draw_unit(unit, seed, attempt + 1)
                digest = hashlib.sha256(png).digest()
            seen.add(digest)
            out.append((rec, png))
    finally:
        if pool is not None:
            pool.shutdown()
    return out


def _write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)


def _write_split(root: Path, split: str, drawn: list[tuple[Unit, dict, bytes]], seed: int,
                 formats, traces: bool = False) -> dict:
    """Write one split's files and return its counts."""
    d = root / split
    by_kind: dict[str, list] = {}
    for unit, rec, png in drawn:
        by_kind.setdefault(unit.kind, []).append((unit, rec, png))
    counts: dict[str, int] = {}
    train: list[dict] = []
    img_name = lambda u: f"{u.kind}_{u.index:06d}.png"  # noqa: E731

    mcq = by_kind.get("mcq", [])
    if "mcq" in formats and mcq:
        rows = []
        for unit, rec, png in mcq:
            rows += fmt.mcq_rows(unit.index, base64.b64encode(png).decode("ascii"),
                                 rec["question"], rec["hint"], rec["options"], rec["answer"],
                                 unit.category, CATEGORIES[unit.category].l2, split,
                                 "hard" if unit.hard else "easy")
        _write(d / "mcq.tsv", fmt.tsv_text(rows))
        counts.update(mcq_items=len(mcq), mcq_rows=len(rows))
    if split == "train" and "train" in formats:
        for i, (unit, rec, png) in enumerate(mcq):
            _write(d / "images" / img_name(unit), png)
            name, size = img_name(unit), (rec["width"], rec["height"])
            # The multiple-choice turn, then (when the item has one) a caption turn: a dense
            # description of the same image costs no second pass of the vision tower.
            turns = [(fmt.mmbench_prompt(rec["question"], rec["hint"], rec["options"]),
                      "ABCD"[rec["answer"]])]
            if rec["caption"]:
                turns.append((fmt.CAPTION_PROMPTS[i % len(fmt.CAPTION_PROMPTS)], rec["caption"]))
            train.append(fmt.conversation("", name, *size, turns))
            # The same question answered in words, as its own record (in the same record the
            # reply could be copied from the options the first turn listed).
            question = f"{rec['hint']}\n{rec['question']}" if rec["hint"] else rec["question"]
            train.append(fmt.conversation("", name, *size, [
                (fmt.vqa_prompt(question), rec["options"][rec["answer"]])]))
            if traces:  # the same question once more, reasoned step by step (traces.py)
                train.append(fmt.conversation("", name, *size, [
                    (fmt.mmbench_prompt(rec["question"], rec["hint"], rec["options"], cot=True),
                     cot_reply(rec["trace"], rec["options"], rec["answer"]))]))

    vqa = by_kind.get("vqa", [])
    if vqa:
        records = []
        for unit, rec, png in vqa:
            _write(d / "images" / img_name(unit), png)
            records.append({"index": unit.index, "image": f"images/{img_name(unit)}",
                            "question": rec["open_question"], "answers": rec["open_answers"],
                            "category": unit.category,
                            "difficulty": "hard" if unit.hard else "easy"})
            train.append(fmt.conversation("", img_name(unit), rec["width"], rec["height"],
                                          [(fmt.vqa_prompt(rec["open_question"]),
                                            rec["open_answers"][0])]))
            if traces and split == "train":
                train.append(fmt.conversation(
                    "", img_name(unit), rec["width"], rec["height"],
                    [(fmt.open_cot_prompt(rec["open_question"]),
                      f"{rec['open_trace']}\nAnswer: {rec['open_answers'][0]}")]))
        _write(d / "vqa.jsonl", fmt.jsonl_text(records))
        counts["vqa"] = len(records)

    pope = by_kind.get("pope", [])
    if pope:
        for unit, rec, png in pope:
            _write(d / "images" / img_name(unit), png)
        qs = pope_questions([rec["objects"] for _, rec, _ in pope],
                            random.Random(item_seed(seed, split, "pope-questions")))
        records = [{"index": i, "image": f"images/{img_name(pope[q['image']][0])}",
                    "question": f"Is there a {q['object']} in the image?", "answer": q["answer"],
                    "split": q["split"]} for i, q in enumerate(qs)]
        _write(d / "pope.jsonl", fmt.jsonl_text(records))
        counts.update(pope_images=len(pope), pope_questions=len(records))
        # Training: each image's "random" questions as one multi-turn conversation.
        for i, (unit, rec, _) in enumerate(pope):
            turns = [(fmt.vqa_prompt(r["question"]), r["answer"].capitalize())
                     for r, q in zip(records, qs) if q["image"] == i and q["split"] == "random"]
            train.append(fmt.conversation("", img_name(unit), rec["width"], rec["height"], turns))
        n_captions = math.ceil(len(mcq) / 10) if mcq else len(pope)
        for i, (unit, rec, _) in enumerate(pope[:n_captions]):
            train.append(fmt.conversation(
                "", img_name(unit), rec["width"], rec["height"],
                [(fmt.CAPTION_PROMPTS[i % len(fmt.CAPTION_PROMPTS)], rec["caption"])]))

    grounding = by_kind.get("grounding", [])
    if grounding:
        records = []
        for unit, rec, png in grounding:
            _write(d / "images" / img_name(unit), png)
            norm = fmt.norm_box(rec["box"], rec["width"], rec["height"])
            question = fmt.GROUNDING_QUESTION.format(rec["ref"])
            records.append({"index": unit.index, "image": f"images/{img_name(unit)}",
                            "question": question, "ref": rec["ref"], "bbox": rec["box"],
                            "bbox_norm": norm, "width": rec["width"], "height": rec["height"],
                            "split": split, "difficulty": "hard" if unit.hard else "easy"})
            train.append(fmt.conversation("", img_name(unit), rec["width"], rec["height"],
                                          [(question, fmt.grounding_answer(rec["ref"], norm))]))
        _write(d / "grounding.jsonl", fmt.jsonl_text(records))
        counts["grounding"] = len(records)

    if split == "train" and "train" in formats:
        random.Random(item_seed(seed, split, "train-mix")).shuffle(train)
        for i, rec in enumerate(train):
            rec["id"] = f"minibench_train_{i:06d}"
        _write(d / "train.jsonl", fmt.jsonl_text(train))
        meta = fmt.meta_json("minibench_train", "train.jsonl", len(train))
        _write(d / "meta.json", json.dumps(meta, indent=2) + "\n")
        counts["train_records"] = len(train)
    return counts


_FILE_NOTES = {
    "mcq.tsv": "MMBench-style multiple choice, tab-separated: index, image (base64 PNG), "
               "question, hint, A-D (unused options empty), answer (letter), category, "
               "l2-category, split, difficulty. Row index i + k*1000000 is circular copy k "
               "of item i (options rotated k places, answer letter rotated with them).",
    "vqa.jsonl": "Open questions (reading text and numbers, counting, chart values, sums): "
                 "{index, image, question, answers, category, difficulty}; any listed answer "
                 "counts as right.",
    "pope.jsonl": "POPE-style yes/no existence questions, {index, image, question, answer, "
                  "split}; split is random / popular / adversarial, each 50 % yes.",
    "grounding.jsonl": "RefCOCO-style grounding: {index, image, question, ref, bbox (pixel "
                       "edges x1, y1, x2, y2; x2/y2 exclusive), bbox_norm (0-1000), width, "
                       "height, split, difficulty}.",
    "train.jsonl": "(train only) InternVL conversation records mixing all of the above plus "
                   "short captions and each multiple-choice question answered in words; "
                   "meta.json is the matching --meta_path entry.",
    "images/": "PNG files referenced by the jsonl files (paths relative to the split folder).",
}


def _readme(info: dict) -> str:
    lines = [
        "MiniBench: a procedural benchmark modelled on MMBench, POPE and RefCOCO.",
        f"Generated by tilevl (format version {info['format_version']}) with seed "
        f"{info['seed']} and size {info['size']} (Pillow {info['pillow']}).",
        "The same seed and size regenerate these files byte for byte.",
        "",
        "Splits (multiple-choice items, shares of size unless train_size was given; other "
        "formats scale with them): "
        + ", ".join(f"{s} {info['splits'][s].get('mcq_items', 0)}" for s in ("train", "dev", "test")),
        "",
        "Files in each split folder:",
    ]
    lines += [f"  {name:16s} {note}" for name, note in _FILE_NOTES.items()]
    lines += ["", "Counts:"]
    for split in ("train", "dev", "test"):
        counts = info["splits"][split].items()
        lines.append(f"  {split:5s} " + ", ".join(f"{k} {v}" for k, v in counts))
    lines += ["", "Categories (name, L2 group, what is asked; items per split train/dev/test):"]
    for name, c in info["categories"].items():
        n = "/".join(str(c["items"].get(s, 0)) for s in ("train", "dev", "test"))
        lines.append(f"  {name:28s} {c['l2']:42s} {n:>9s}  {c['description']}")
    return "\n".join(lines) + "\n"


def _prepare(out: Path, overwrite: bool) -> None:
    """Refuse to mix with another run's files; with overwrite, clear only MiniBench's own."""
    ours = [out / s for s in ("train", "dev", "test")] + [out / "info.json", out / "README.txt"]
    present = [p for p in ours if p.exists()]
    if not present:
        return
    if not overwrite:
        raise FileExistsError(f"{out} already holds MiniBench output ({present[0].name}); "
                              "pass overwrite=True (--overwrite) to replace it")
    if not (out / "info.json").exists():
        raise FileExistsError(f"{out} has {present[0].name} but no MiniBench info.json; "
                              "refusing to delete a folder MiniBench did not write")
    for p in present:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def generate(out_dir, size: int = 200, seed: int = 0, categories=None, progress: bool = True,
             *, formats=FORMATS, workers: int | None = None, overwrite: bool = False,
             train_size: int | None = None, traces: bool = False) -> dict:
    """Generate MiniBench into `out_dir` (a folder per split, plus README.txt and info.json).

    Args:
        out_dir: the output folder (created if missing).
        size: multiple-choice items over all splits, shared out by SPLIT_RATIOS; each split
            also gets size/2 open VQA items, size/4 POPE images (≤ 6 questions each per POPE
            split) and size/2 grounding items, and train gets the conversation mix.
        seed: the global seed; the same (seed, size, categories, formats) gives the same bytes.
        categories: category or L2-group names to keep (None: all of CATEGORIES); they select
            the multiple-choice and VQA items, not the POPE and grounding scenes.
        progress: show a tqdm progress bar.
        formats: which of FORMATS to write.
        workers: processes drawing images (None: up to 4, bounded by the CPU count); the
            output does not depend on it.
        overwrite: replace a previous MiniBench output in `out_dir`.
        train_size: multiple-choice items in train instead of its share of `size` (the other
            formats scale with it). Dev and test are drawn first, so they do not change.
        traces: also write each train multiple-choice and open question once more with
            the CoT prompt, answered by its reasoning trace (`tilevl.minibench.traces`) and
            the final "Answer: X" line; dev and test do not change.
    Returns:
        info.json's content plus "out_dir" and "seconds".
    """
    start = time.perf_counter()
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown MiniBench formats {sorted(unknown)}; known: {FORMATS}")
    names = resolve_categories(categories)
    if not names:
        raise ValueError("no categories selected")
    out = Path(out_dir)
    _prepare(out, overwrite)
    sizes = split_sizes(size)
    if train_size is not None:
        if train_size < 0:
            raise ValueError(f"train_size must be >= 0, got {train_size}")
        sizes["train"] = train_size
    units = [u for s in SPLIT_ORDER for u in plan_units(s, sizes[s], names, formats)]
    if workers is None:
        workers = max(1, min(4, os.cpu_count() or 1))
    drawn = render_units(units, seed, workers=workers, progress=progress)
    splits = {}
    for split in SPLIT_ORDER:
        mine = [(u, rec, png) for u, (rec, png) in zip(units, drawn) if u.split == split]
        splits[split] = _write_split(out, split, mine, seed, formats, traces)
    per_category: dict[str, dict[str, int]] = {n: {} for n in names}
    for u in units:
        if u.kind == "mcq":
            per_category[u.category][u.split] = per_category[u.category].get(u.split, 0) + 1
    info = {
        "name": "MiniBench", "format_version": FORMAT_VERSION, "seed": seed, "size": size,
        "train_size": sizes["train"], "traces": traces,
        "pillow": PIL.__version__, "formats": list(formats), "split_ratios": SPLIT_RATIOS,
        "splits": {s: splits[s] for s in ("train", "dev", "test")},
        "categories": {n: {"l2": CATEGORIES[n].l2, "description": CATEGORIES[n].description,
                           "open_form": CATEGORIES[n].open_form,
                           "items": {s: per_category[n][s] for s in ("train", "dev", "test")
                                     if s in per_category[n]}} for n in names},
        "files": _FILE_NOTES,
    }
    _write(out / "info.json", json.dumps(info, indent=2) + "\n")
    _write(out / "README.txt", _readme(info))
    return {**info, "out_dir": str(out), "seconds": round(time.perf_counter() - start, 3)}
