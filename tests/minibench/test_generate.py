"""MiniBench: determinism, answerability, letter balance, circular copies, split disjointness,
POPE and grounding semantics, file formats, and per-category checks against the pixels."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tilevl.minibench import CATEGORIES, L2_GROUPS, generate, make_item
from tilevl.minibench.draw import BACKGROUND, COLORS, DIRECTIONS, canvas, draw_shape, draw_text
from tilevl.minibench.formats import (CIRCULAR_STRIDE, MCQ_PROMPT, TSV_COLUMNS, read_tsv,
                                      rotate_options)
from tilevl.minibench.generate import Unit, draw_unit, split_sizes
from tilevl.minibench.reasoning import CONTACT_TEXT
from tilevl.minibench.scenes import ICONS, pope_questions

SIZE, SEED = 40, 3
SPLITS = ("train", "dev", "test")


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("minibench") / "a"
    generate(out, size=SIZE, seed=SEED, progress=False, workers=1)
    return out


@pytest.fixture(scope="module")
def items() -> dict[str, list]:
    """24 items per category, half of them hard, from fixed seeds."""
    return {name: [make_item(name, random.Random(1000 + i), hard=i % 2 == 1) for i in range(24)]
            for name in CATEGORIES}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _rgb(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"))


def _components(mask: np.ndarray) -> int:
    """Connected regions of a boolean mask (8-neighbourhood): union-find over row runs."""
    parent: dict[int, int] = {}

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = a = parent[parent[a]]
        return a

    prev: list[tuple[int, int, int]] = []
    last_y = -2
    for y in np.flatnonzero(mask.any(axis=1)):
        d = np.diff(np.concatenate(([0], mask[y].astype(np.int8), [0])))
        cur = []
        for s, e in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)):  # e is exclusive
            parent[len(parent)] = rid = len(parent)
            for ps, pe, pid in prev if y == last_y + 1 else ():
                if ps <= e and s <= pe:  # overlapping or diagonal neighbours
                    parent[find(pid)] = find(rid)
            cur.append((s, e, rid))
        prev, last_y = cur, y
    return len({find(i) for i in parent})


# ---------------------------------------------------------------- files and determinism

def test_same_seed_same_bytes_any_workers_and_other_seed_differs(bench, tmp_path):
    generate(tmp_path / "b", size=SIZE, seed=SEED, progress=False, workers=2)
    a, b = _files(bench), _files(tmp_path / "b")
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    generate(tmp_path / "c", size=10, seed=SEED + 1, progress=False, formats=("mcq",))
    assert (tmp_path / "c/test/mcq.tsv").read_bytes()[:5000] != a["test/mcq.tsv"][:5000]
    assert not (tmp_path / "c/test/pope.jsonl").exists()


def test_refuses_to_overwrite_without_flag(bench, tmp_path):
    generate(tmp_path, size=3, seed=0, progress=False, formats=("mcq",))
    with pytest.raises(FileExistsError, match="overwrite"):
        generate(tmp_path, size=3, seed=0, progress=False, formats=("mcq",))
    generate(tmp_path, size=3, seed=1, progress=False, formats=("mcq",), overwrite=True)


def test_info_and_split_sizes(bench):
    info = json.loads((bench / "info.json").read_text())
    sizes = split_sizes(SIZE)
    assert sum(sizes.values()) == SIZE and sizes == {"train": 20, "dev": 4, "test": 16}
    for split in SPLITS:
        assert info["splits"][split]["mcq_items"] == sizes[split]
    assert set(info["categories"]) == set(CATEGORIES)
    assert "README" not in info and "MiniBench" in (bench / "README.txt").read_text()


def test_train_size_grows_train_and_leaves_dev_and_test_byte_identical(bench, tmp_path):
    info = generate(tmp_path, size=SIZE, seed=SEED, progress=False, train_size=26)
    assert info["splits"]["train"]["mcq_items"] == 26 and info["train_size"] == 26
    a, b = _files(bench), _files(tmp_path)
    for name in a:
        if name.startswith(("dev/", "test/")):
            assert a[name] == b.get(name), name
    # The first 20 train items are drawn as before; 6 more follow.
    assert len(read_tsv(tmp_path / "train/mcq.tsv")) > len(read_tsv(bench / "train/mcq.tsv"))
    with pytest.raises(ValueError, match="train_size"):
        generate(tmp_path / "x", size=SIZE, progress=False, train_size=-1)


def _split_images(root: Path, split: str) -> set[bytes]:
    d = root / split
    hashes = {hashlib.sha256(base64.b64decode(r["image"])).digest()
              for r in read_tsv(d / "mcq.tsv")}
    hashes |= {hashlib.sha256(p.read_bytes()).digest() for p in (d / "images").glob("*.png")}
    return hashes


def test_splits_never_share_an_image(bench):
    sets = {s: _split_images(bench, s) for s in SPLITS}
    assert all(len(v) >= 8 for v in sets.values())
    assert not sets["train"] & sets["dev"] and not sets["train"] & sets["test"]
    assert not sets["dev"] & sets["test"]


# ---------------------------------------------------------------- multiple choice (TSV)

def test_tsv_parses_and_circular_copies_rotate(bench):
    rows = read_tsv(bench / "test/mcq.tsv")
    assert tuple(rows[0]) == TSV_COLUMNS
    groups: dict[int, list[dict]] = {}
    for r in rows:
        groups.setdefault(int(r["index"]) % CIRCULAR_STRIDE, []).append(r)
    assert len(groups) == split_sizes(SIZE)["test"]
    levels = Counter(copies[0]["difficulty"] for copies in groups.values())
    assert abs(levels["easy"] - levels["hard"]) <= 2, levels
    for base, copies in groups.items():
        copies.sort(key=lambda r: int(r["index"]))
        opts = [copies[0][c] for c in "ABCD" if copies[0][c]]
        assert 2 <= len(opts) <= 4 and len(set(opts)) == len(opts)
        assert len(copies) == len(opts)
        assert all(copies[0][c] == "" for c in "ABCD"[len(opts):])
        truth = copies[0][copies[0]["answer"]]
        for k, row in enumerate(copies):
            assert int(row["index"]) == base + k * CIRCULAR_STRIDE
            assert [row[c] for c in "ABCD" if row[c]] == opts[k:] + opts[:k]
            assert row[row["answer"]] == truth
            assert row["category"] in CATEGORIES and row["l2-category"] in L2_GROUPS
            assert row["split"] == "test" and row["difficulty"] in ("easy", "hard")
        Image.open(io.BytesIO(base64.b64decode(copies[0]["image"]))).verify()


def test_rotate_options_keeps_the_answer():
    for n in (2, 3, 4):
        opts = [f"o{i}" for i in range(n)]
        for ans in range(n):
            for k in range(n):
                rot, a = rotate_options(opts, ans, k)
                assert rot[a] == opts[ans] and sorted(rot) == opts


def test_every_category_answerable(items):
    assert len(CATEGORIES) >= 16 and {c.l2 for c in CATEGORIES.values()} == set(L2_GROUPS)
    for name, its in items.items():
        assert any(it.hard for it in its) and any(not it.hard for it in its)
        for it in its:
            assert it.category == name and 2 <= len(it.options) <= 4
            assert len(set(it.options)) == len(it.options), (name, it.options)
            assert 0 <= it.answer < len(it.options) and it.question.endswith("?")
            assert all(o and "\t" not in o and "\n" not in o for o in it.options)
            assert it.image.mode == "RGB" and min(it.image.size) >= 32
            w, h = it.image.size
            for o in it.objects:
                x1, y1, x2, y2 = o.box
                assert 0 <= x1 <= x2 < w and 0 <= y1 <= y2 < h, (name, o, it.image.size)
            if CATEGORIES[name].open_form:
                assert it.open_question and it.answer_text == it.open_answers[0]


def test_answer_letters_are_balanced(items):
    letters = Counter(it.answer_letter for its in items.values() for it in its
                      if len(it.options) == 4)
    total = sum(letters.values())
    assert total >= 300
    for letter in "ABCD":
        assert 0.15 <= letters[letter] / total <= 0.35, letters


def test_sizes_and_aspects_vary(items):
    sizes = [it.image.size for its in items.values() for it in its]
    ratios = [w / h for w, h in sizes]
    assert min(max(s) for s in sizes) <= 128 and max(max(s) for s in sizes) >= 1400
    assert min(ratios) <= 0.4 and max(ratios) >= 3.5


# ---------------------------------------------------------------- per-category semantics

def test_counting_matches_connected_components(items):
    for it in items["object_counting"]:
        arr = _rgb(it.image)
        mask = np.all(arr == COLORS[it.meta["color"]], axis=-1)
        assert _components(mask) == it.meta["count"] == int(it.answer_text)


def test_ocr_answer_is_the_rendered_text(items):
    for it in items["ocr"]:
        m = it.meta
        assert it.answer_text == m["text"]
        x1, y1, x2, y2 = it.objects[0].box
        # A margin catches letters that differ only outside the answer's ink (j vs i).
        x1, y1, x2, y2 = max(0, x1 - 4), max(0, y1 - m["size"] // 2), x2 + 4, y2 + m["size"] // 2
        got = _rgb(it.image)[y1:y2, x1:x2]
        for text in it.options:
            ref, d = canvas(*it.image.size)
            draw_text(d, m["xy"], text, m["size"], fill=COLORS[m["color"]])
            same = np.array_equal(_rgb(ref)[y1:y2, x1:x2], got)
            assert same is (text == it.answer_text), (text, m)


def test_colour_shape_and_localization_from_pixels(items):
    for it in items["color_recognition"]:
        t = it.objects[0]
        cx, cy = (t.box[0] + t.box[2]) // 2, (t.box[1] + t.box[3]) // 2
        assert tuple(_rgb(it.image)[cy, cx]) == COLORS[it.answer_text]
    for it in items["shape_recognition"]:
        t = it.objects[0]
        x1, y1, x2, y2 = t.box
        got = np.all(_rgb(it.image)[y1:y2 + 1, x1:x2 + 1] == COLORS[t.color], axis=-1)
        for shape in it.options:
            ref = Image.new("L", it.image.size, 0)
            draw_shape(ImageDraw.Draw(ref), shape, t.box, fill=255)
            same = np.array_equal(np.asarray(ref)[y1:y2 + 1, x1:x2 + 1] > 0, got)
            assert same is (shape == it.answer_text), (shape, it.options)
    for it in items["object_localization"]:
        w, h = it.image.size
        x1, y1, x2, y2 = it.objects[0].box
        vert = "top" if y2 < h / 2 else "bottom" if y1 > h / 2 else None
        horiz = "left" if x2 < w / 2 else "right" if x1 > w / 2 else None
        assert f"{vert}-{horiz}" == it.answer_text


def test_relations_and_comparisons_from_geometry(items):
    for it in items["spatial_relationship"]:
        a, b = it.objects[:2]
        assert it.question.startswith(f"Where is {a.phrase} relative to {b.phrase}")
        dx = (a.box[0] + a.box[2] - b.box[0] - b.box[2]) / 2
        dy = (a.box[1] + a.box[3] - b.box[1] - b.box[3]) / 2
        rel = (("to the left" if dx < 0 else "to the right") if abs(dx) > abs(dy)
               else ("above" if dy < 0 else "below"))
        assert rel == it.answer_text
    for it in items["attribute_comparison"]:
        arr = _rgb(it.image)
        area = {o.phrase: np.all(arr == COLORS[o.color], axis=-1).sum() for o in it.objects[:2]}
        assert max(area, key=area.get) == it.answer_text
    for it in items["physical_relation"]:
        a, b = it.objects[:2]
        (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = a.box, b.box
        gap = max(bx1 - ax2, ax1 - bx2, by1 - ay2, ay1 - by2) - 1  # background pixels between
        contact = "overlap" if gap < 0 else "touch" if gap == 0 else "separate"
        assert contact == it.meta["contact"] and it.answer_text == CONTACT_TEXT[contact]
    for it in items["connection_relation"]:
        (i, j), = [e for e in it.meta["edges"] if 0 in e]
        assert it.answer_text == f"the {it.meta['colors'][j]} node"
        (ax, ay), (bx, by), r = it.meta["centers"][0], it.meta["centers"][j], it.meta["radius"]
        arr = _rgb(it.image)
        for t in np.linspace(0.3, 0.7, 5):  # the middle of the edge is line-coloured
            x, y = ax + (bx - ax) * t, ay + (by - ay) * t
            if math.hypot(x - ax, y - ay) > r + 2 and math.hypot(x - bx, y - by) > r + 2:
                patch = arr[int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2]
                assert np.any(np.all(patch == (90, 90, 90), axis=-1))


def test_arrows_charts_sums_glasses_and_quality(items):
    for it in items["arrow_direction"]:
        if it.hard:
            continue
        ys, xs = np.nonzero(np.any(_rgb(it.image) != BACKGROUND, axis=-1))
        # The head's triangle pulls the ink's centroid from the box centre towards the tip.
        vx, vy = xs.mean() - (xs.min() + xs.max()) / 2, -(ys.mean() - (ys.min() + ys.max()) / 2)
        def along(d):
            a = math.radians(DIRECTIONS[d])
            return vx * math.cos(a) + vy * math.sin(a)
        assert max(it.options, key=along) == it.answer_text
    for it in items["chart_reading"]:
        labels, values = it.meta["labels"], it.meta["values"]
        heights = [o.box[3] - o.box[1] + 1 for o in it.objects]
        if "highest" in it.question:
            assert it.answer_text == labels[int(np.argmax(heights))]
        else:
            i = next(k for k, lab in enumerate(labels) if f" {lab} bar" in it.question)
            assert int(it.answer_text) == values[i]
            assert abs(heights[i] / max(heights) * max(values) - values[i]) <= 2.5
    for it in items["math_reasoning"]:
        expr = it.meta["text"].replace(" = ?", "").replace("x", "*")
        assert eval(expr) == int(it.answer_text)  # noqa: S307 - digits and + - * only
    for it in items["physical_property_reasoning"]:
        top, bottom = it.meta["inner"]
        col = np.all(_rgb(it.image) == it.meta["liquid"], axis=-1).any(axis=1)
        filled = col.sum() / max(1, bottom - top)
        assert abs(filled - it.meta["level"]) < 0.1
    for it in items["image_quality"]:
        arr = _rgb(it.image)
        white = np.all(arr == 255, axis=-1).mean()
        # Blur leaves soft steps between neighbours; flat drawings change by 0 or by a lot.
        step = np.abs(np.diff(arr.astype(np.int16), axis=1)).sum(axis=-1)
        soft = ((step > 0) & (step < 40)).mean()
        q = "noisy" if white > 0.005 else "blurred" if soft > 0.01 else "clean"
        assert q == it.meta["quality"], (white, soft)


# ---------------------------------------------------------------- VQA, POPE, grounding, train

def test_vqa_records(bench):
    for split in SPLITS:
        recs = _jsonl(bench / split / "vqa.jsonl")
        assert len(recs) == math.ceil(split_sizes(SIZE)[split] / 2)
        for r in recs:
            assert CATEGORIES[r["category"]].open_form and r["answers"] and r["question"]
            assert (bench / split / r["image"]).is_file()
        counts = [r for r in recs if r["category"] == "object_counting"]
        assert all(len(r["answers"]) == 2 and r["answers"][0].isdigit() for r in counts)


def test_pope_balance_and_split_semantics(bench):
    split = "test"
    recs = _jsonl(bench / split / "pope.jsonl")
    n_images = math.ceil(split_sizes(SIZE)[split] / 4)
    objects = {}
    for i in range(n_images):  # the objects of each image, redrawn from its seed
        rec, png, _ = draw_unit(Unit("pope", split, i, "pope", i % 2 == 1), SEED)
        assert png == (bench / split / f"images/pope_{i:06d}.png").read_bytes()
        objects[f"images/pope_{i:06d}.png"] = rec["objects"]
    freq = Counter(o for objs in objects.values() for o in objs)
    co = Counter((a, b) for objs in objects.values() for a in objs for b in objs if a != b)
    for mode in ("random", "popular", "adversarial"):
        mine = [r for r in recs if r["split"] == mode]
        assert Counter(r["answer"] for r in mine)["yes"] * 2 == len(mine) > 0
        for image, present in objects.items():
            qs = [r for r in mine if r["image"] == image]
            asked = [re.fullmatch(r"Is there a (\w+) in the image\?", r["question"])[1]
                     for r in qs]
            yes = [o for o, r in zip(asked, qs) if r["answer"] == "yes"]
            no = [o for o, r in zip(asked, qs) if r["answer"] == "no"]
            assert len(yes) == len(no) and set(yes) <= set(present) and not set(no) & set(present)
            rest = [o for o in ICONS if o not in present and o not in no]
            if mode == "popular":
                assert min(freq[o] for o in no) >= max(freq[o] for o in rest)
            elif mode == "adversarial":
                score = lambda x: sum(co[p, x] for p in present)  # noqa: E731
                assert min(score(o) for o in no) >= max(score(o) for o in rest)


def test_pope_questions_on_a_handmade_set():
    sets = [["fish", "boat"], ["fish", "sun"], ["fish", "boat", "cloud"], ["house", "tree"]]
    qs = pope_questions(sets, random.Random(0), per_image=2)
    pop = [q["object"] for q in qs
           if q["split"] == "popular" and q["image"] == 3 and q["answer"] == "no"]
    assert pop[0] in ("fish", "boat") and set(pop) == {"fish", "boat"}
    adv = {q["object"] for q in qs if q["split"] == "adversarial" and q["image"] == 1
           and q["answer"] == "no"}
    assert adv == {"boat", "cloud"}  # they co-occur with fish; nothing co-occurs with sun


def test_grounding_boxes_match_the_drawn_object(bench):
    for split in SPLITS:
        for r in _jsonl(bench / split / "grounding.jsonl"):
            assert r["question"].endswith(f"<ref>{r['ref']}</ref>") and r["split"] == split
            x1, y1, x2, y2 = r["bbox"]
            w, h = r["width"], r["height"]
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
            assert r["bbox_norm"] == [round(v * 1000 / s) for v, s in zip(r["bbox"], (w, h, w, h))]
            arr = _rgb(Image.open(bench / split / r["image"]))
            assert arr.shape[:2] == (h, w)
            color = COLORS[r["ref"].split()[1]]
            assert tuple(arr[(y1 + y2) // 2, (x1 + x2) // 2]) == color
            mask = np.all(arr[max(0, y1 - 3):y2 + 3, max(0, x1 - 3):x2 + 3] == color, axis=-1)
            ys, xs = np.nonzero(mask)
            ox, oy = max(0, x1 - 3), max(0, y1 - 3)
            ink = (xs.min() + ox, ys.min() + oy, xs.max() + ox + 1, ys.max() + oy + 1)
            assert ink == (x1, y1, x2, y2)


def test_training_split_format(bench):
    d = bench / "train"
    meta = json.loads((d / "meta.json").read_text())
    entry = meta["minibench_train"]
    assert entry["root"] == "images/" and entry["annotation"] == "train.jsonl"
    assert entry["data_augment"] is False and entry["repeat_time"] == 1
    recs = _jsonl(d / entry["annotation"])
    assert entry["length"] == len(recs) and len({r["id"] for r in recs}) == len(recs)
    kinds = Counter()
    for r in recs:
        img = Image.open(d / entry["root"] / r["image"])
        assert img.size == (r["width"], r["height"])
        conv = r["conversations"]
        assert [c["from"] for c in conv] == ["human", "gpt"] * (len(conv) // 2)
        assert conv[0]["value"].startswith("<image>\n")
        assert all("<image>" not in c["value"] for c in conv[1:])
        first, answer = conv[0]["value"], conv[1]["value"]
        if first.endswith(MCQ_PROMPT):
            assert answer in "ABCD" and f"\n{answer}. " in first
            kinds["mcq"] += 1
        elif re.fullmatch(r"<ref>.+</ref><box>\[\[\d+, \d+, \d+, \d+\]\]</box>", answer):
            kinds["grounding"] += 1
        elif answer in ("Yes", "No"):
            kinds["yesno"] += 1
        elif first.endswith("single word or phrase."):
            kinds["vqa"] += 1
        else:
            kinds["caption"] += 1
    assert set(kinds) == {"mcq", "grounding", "yesno", "vqa", "caption"}, kinds
    # Every multiple-choice item is also asked in words, answered by its correct option.
    mcq_rows = {r["index"]: r for r in read_tsv(d / "mcq.tsv") if int(r["index"]) < 10**6}
    worded = {}
    for r in recs:
        first, answer = r["conversations"][0]["value"], r["conversations"][1]["value"]
        if r["image"].startswith("mcq_") and first.endswith("single word or phrase."):
            worded[int(r["image"][4:10])] = answer
    assert len(worded) == len(mcq_rows)
    for index, row in mcq_rows.items():
        assert worded[int(index)] == row[row["answer"]]
