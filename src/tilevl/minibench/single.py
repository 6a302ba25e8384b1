"""Fine-grained single-instance generators: colour, shape, pattern, count, place, text, arrow.

Easy variants show one large object; hard ones put a small target among distractors in a
large or banner-shaped canvas, so reading it needs the high-resolution tiles.
"""

from __future__ import annotations

import random

from tilevl.minibench.draw import (COLORS, DIRECTIONS, SHAPES, canvas, draw_arrow, draw_patterned,
                                   draw_shape, draw_text, pick_canvas, scatter, text_size)
from tilevl.minibench.items import (WORDS, Item, Obj, make_options, number_answers,
                                    number_distractors, similar_words)

PATTERN_TEXT = {"plain": "plain (one solid colour)", "striped": "striped",
                "dotted": "polka-dotted", "checkered": "checkered"}
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")


def plural(noun: str) -> str:
    """English plural of a shape noun ("cross" → "crosses")."""
    return noun + ("es" if noun.endswith(("s", "x", "sh", "ch")) else "s")


def _objects(rng: random.Random, w: int, h: int, n: int, size: int, unique_kind: bool = True,
             unique_color: bool = True) -> list[Obj]:
    """n shape objects on a w×h canvas, shrinking them until they fit."""
    while True:
        try:
            boxes = scatter(rng, w, h, n, size, gap=max(4, size // 5))
            break
        except ValueError:
            size = int(size * 0.85)
    kinds = rng.sample(SHAPES, n) if unique_kind else [rng.choice(SHAPES) for _ in range(n)]
    colors = (rng.sample(list(COLORS), n) if unique_color
              else [rng.choice(list(COLORS)) for _ in range(n)])
    return [Obj(k, c, b) for k, c, b in zip(kinds, colors, boxes)]


def _scene(rng: random.Random, hard: bool, n_hard: tuple[int, int] = (3, 6)):
    """A canvas with one target object (easy) or a small target among distractors (hard)."""
    w, h = pick_canvas(rng, hard)
    n = rng.randint(*n_hard) if hard else 1
    frac = rng.uniform(0.06, 0.12) if hard else rng.uniform(0.35, 0.6)
    objs = _objects(rng, w, h, n, max(10, int(min(w, h) * frac)))
    img, draw = canvas(w, h)
    for o in objs:
        draw_shape(draw, o.name, o.box, fill=COLORS[o.color])
    return img, objs


def color_recognition(rng: random.Random, hard: bool) -> Item:
    """The colour of a named shape."""
    img, objs = _scene(rng, hard)
    target = objs[0]
    options, answer = make_options(rng, target.color, COLORS)
    return Item("color_recognition", img, f"What color is the {target.name} in the image?",
                options, answer, hard=hard, objects=objs,
                caption=f"A {target.color} {target.name}.")


def shape_recognition(rng: random.Random, hard: bool) -> Item:
    """The shape of the only object (easy) or of the object of a named colour (hard)."""
    img, objs = _scene(rng, hard)
    target = objs[0]
    question = (f"What shape is the {target.color} object?" if hard
                else "What shape is shown in the image?")
    options, answer = make_options(rng, target.name, SHAPES)
    return Item("shape_recognition", img, question, options, answer, hard=hard, objects=objs,
                caption=f"A {target.color} {target.name}.")


def attribute_recognition(rng: random.Random, hard: bool) -> Item:
    """The fill pattern of a shape: plain, striped, polka-dotted or checkered."""
    pattern = rng.choice(list(PATTERN_TEXT))
    w, h = pick_canvas(rng, hard)
    n = rng.randint(2, 4) if hard else 1
    frac = rng.uniform(0.1, 0.18) if hard else rng.uniform(0.5, 0.8)
    objs = _objects(rng, w, h, n, max(24, int(min(w, h) * frac)))
    img, _ = canvas(w, h)
    period = rng.randint(6, 8) if hard else max(8, (objs[0].box[2] - objs[0].box[0]) // 6)
    others = [p for p in PATTERN_TEXT if p != pattern]
    for i, o in enumerate(objs):
        fill = pattern if i == 0 else rng.choice(others)
        draw_patterned(img, o.name, o.box, COLORS[o.color], fill, period)
    target = objs[0]
    question = (f"What pattern fills the {target.color} {target.name}?" if hard
                else f"What pattern fills the {target.name}?")
    options, answer = make_options(rng, PATTERN_TEXT[pattern], PATTERN_TEXT.values())
    return Item("attribute_recognition", img, question, options, answer, hard=hard, objects=objs,
                caption=f"A {pattern} {target.color} {target.name}.", meta={"pattern": pattern})


def object_counting(rng: random.Random, hard: bool) -> Item:
    """How many objects of one colour and shape; hard: many small ones among look-alikes.

    Targets never touch each other or share their colour with a distractor, so the count
    equals the number of connected regions of the target colour (the tests rely on it).
    """
    count = rng.randint(7, 20) if hard else rng.randint(1, 6)
    n_distract = rng.randint(3, 10) if hard else rng.randint(0, 3)
    if hard:
        w, h = pick_canvas(rng, True, aspects=("square", "landscape", "wide"),
                           large=(1000, 1600), medium=(700, 900))
        size = rng.randint(14, 24)
    else:
        w, h = pick_canvas(rng, False, aspects=("square", "landscape"), medium=(300, 512),
                           small=(200, 260))
        size = rng.randint(24, 44)
    kind, color = rng.choice(SHAPES), rng.choice(list(COLORS))
    boxes = scatter(rng, w, h, count + n_distract, size, gap=max(6, size // 3))
    img, draw = canvas(w, h)
    objs = []
    other_colors = [c for c in COLORS if c != color]
    for i, box in enumerate(boxes):
        if i < count:
            draw_shape(draw, kind, box, fill=COLORS[color])
            objs.append(Obj(kind, color, box))
        else:  # same shape in another colour: the look-alike a sloppy counter includes
            k = kind if hard else rng.choice([s for s in SHAPES if s != kind])
            draw_shape(draw, k, box, fill=COLORS[rng.choice(other_colors)])
    noun = f"{color} {plural(kind)}"
    question = f"How many {noun} are there in the image?"
    options, answer = make_options(rng, str(count),
                                   [str(v) for v in number_distractors(rng, count, lo=0)][:3])
    return Item("object_counting", img, question, options, answer, hard=hard, objects=objs,
                open_question=question, open_answers=number_answers(count),
                meta={"count": count, "color": color, "shape": kind},
                caption=f"{count} {noun if count != 1 else f'{color} {kind}'}.")


def object_localization(rng: random.Random, hard: bool) -> Item:
    """Which quadrant of the image holds the named object."""
    quadrant = rng.choice(QUADRANTS)
    w, h = pick_canvas(rng, hard)
    size = max(10, int(min(w, h) * (rng.uniform(0.06, 0.12) if hard else rng.uniform(0.2, 0.35))))
    # Keep the whole object clear of the centre lines so the quadrant is unambiguous.
    gap = max(3, size // 4)
    size = min(size, min(w, h) // 2 - gap - 4)
    right, bottom = quadrant.endswith("right"), quadrant.startswith("bottom")
    x = rng.randint(w // 2 + gap, w - 2 - size) if right else rng.randint(2, w // 2 - gap - size)
    y = rng.randint(h // 2 + gap, h - 2 - size) if bottom else rng.randint(2, h // 2 - gap - size)
    target = Obj(rng.choice(SHAPES), rng.choice(list(COLORS)), (x, y, x + size - 1, y + size - 1))
    img, draw = canvas(w, h)
    draw_shape(draw, target.name, target.box, fill=COLORS[target.color])
    objs = [target]
    if hard:  # distractors of other colours and shapes in the other quadrants
        for q in QUADRANTS:
            if q == quadrant or rng.random() < 0.3:
                continue
            dx = 0 if q.endswith("left") else w // 2
            dy = 0 if q.startswith("top") else h // 2
            bx = dx + rng.randint(2, max(3, w // 2 - size - 4))
            by = dy + rng.randint(2, max(3, h // 2 - size - 4))
            o = Obj(rng.choice([s for s in SHAPES if s != target.name]),
                    rng.choice([c for c in COLORS if c != target.color]),
                    (bx, by, bx + size - 1, by + size - 1))
            draw_shape(draw, o.name, o.box, fill=COLORS[o.color])
            objs.append(o)
    options, answer = make_options(rng, quadrant, QUADRANTS)
    return Item("object_localization", img,
                f"In which part of the image is {target.phrase}?", options, answer, hard=hard,
                objects=objs, caption=f"{target.phrase.capitalize()} in the {quadrant} corner.")


def _number_text(rng: random.Random) -> str:
    return str(rng.randint(10, 99999))


def ocr(rng: random.Random, hard: bool) -> Item:
    """Read a word or number; hard: small text in a wide 4:1 banner among other words.

    The rendered string is the right option (and the first open answer) verbatim.
    """
    is_number = rng.random() < 0.3
    text = _number_text(rng) if is_number else rng.choice(WORDS)
    kind = "number" if is_number else "word"
    if hard:
        h = rng.randint(300, 450)
        w = h * 4
        size = rng.randint(11, 15)
        img, draw = canvas(w, h)
        n_words = rng.randint(4, 8)
        color = rng.choice([c for c in COLORS if c not in ("gray", "yellow")])
        others = [c for c in COLORS if c not in (color, "yellow")]
        cell_w = max(text_size(w_, size)[0] for w_ in WORDS) + 12
        boxes = scatter(rng, w, h, n_words, cell_w, gap=6)
        pool = [x for x in WORDS if x != text]
        for i, b in enumerate(boxes):
            s = text if i == 0 else (_number_text(rng) if is_number else rng.choice(pool))
            c = color if i == 0 else rng.choice(others)
            xy = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
            box = draw_text(draw, xy, s, size, fill=COLORS[c])
            if i == 0:
                text_box, text_xy = box, xy
        question = f"What {kind} is written in {color}?"
        distract = (similar_words(text, rng) if not is_number
                    else [str(int(text) + d) for d in (1, -1, 10, -10, 100) if int(text) + d > 0])
    else:
        w, h = pick_canvas(rng, False, aspects=("square", "landscape", "wide"))
        size = max(12, min(h // 3, int(w / (len(text) * 0.75))))
        img, draw = canvas(w, h)
        color = rng.choice(["black", "blue", "red", "green", "purple", "brown"])
        text_xy = (w / 2, h / 2)
        text_box = draw_text(draw, text_xy, text, size, fill=COLORS[color])
        question = f"What {kind} is written in the image?"
        distract = ([str(rng.randint(10, 99999)) for _ in range(6)] if is_number
                    else rng.sample(WORDS, 6))
    options, answer = make_options(rng, text, distract)
    answers = [text] + ([f"{int(text):,}"] if is_number and int(text) >= 1000 else [])
    return Item("ocr", img, question, options, answer, hard=hard, open_question=question,
                open_answers=answers, objects=[Obj("text", "", text_box)],
                caption=f'The {kind} "{text}" written in {color}.',
                meta={"text": text, "xy": text_xy, "size": size, "color": color})


def arrow_direction(rng: random.Random, hard: bool) -> Item:
    """Which way an arrow points; hard: 8 directions, a small arrow among grey ones."""
    names = list(DIRECTIONS) if hard else ["up", "down", "left", "right"]
    direction = rng.choice(names)
    w, h = pick_canvas(rng, hard, aspects=("square", "landscape", "wide"))
    img, draw = canvas(w, h)
    if hard:
        size = max(20, int(min(w, h) * rng.uniform(0.08, 0.15)))
        boxes = scatter(rng, w, h, rng.randint(3, 6), size, gap=6)
        for i, b in enumerate(boxes):
            c = COLORS["red"] if i == 0 else COLORS["gray"]
            d = direction if i == 0 else rng.choice([n for n in names if n != direction])
            draw_arrow(draw, ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2), size * 0.9, d, c,
                       max(2, size // 10))
        question = "Which direction does the red arrow point?"
    else:
        length = min(w, h) * rng.uniform(0.5, 0.8)
        ink = COLORS[rng.choice(["black", "blue", "red"])]
        draw_arrow(draw, (w / 2, h / 2), length, direction, ink, max(3, int(length / 10)))
        question = "Which direction does the arrow point?"
    options, answer = make_options(rng, direction, names)
    return Item("arrow_direction", img, question, options, answer, hard=hard,
                caption=f"An arrow pointing {direction}.", meta={"direction": direction})


GENERATORS = {"color_recognition": color_recognition, "shape_recognition": shape_recognition,
              "attribute_recognition": attribute_recognition, "object_counting": object_counting,
              "object_localization": object_localization, "ocr": ocr,
              "arrow_direction": arrow_direction}
