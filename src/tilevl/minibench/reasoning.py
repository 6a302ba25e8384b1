"""Cross-instance, attribute, relation and logic generators: comparing and relating objects.

Spatial and physical relations, size comparison, fill levels, graph connections, what
comes next in a sequence, bar-chart reading and arithmetic read from the image.
"""

from __future__ import annotations

import math
import random

from tilevl.minibench.draw import (COLORS, SHAPES, Box, canvas, draw_arrow,
                                   draw_bar_chart, draw_shape, draw_text, pick_canvas, scatter)
from tilevl.minibench.items import (Item, Obj, make_options, number_answers,
                                    number_distractors)
from tilevl.minibench.scenes import icon_scene

RELATIONS = ("to the left", "to the right", "above", "below")
LEVELS = {0.0: "empty", 0.25: "about a quarter full", 0.5: "about half full",
          0.75: "about three quarters full", 1.0: "full"}
CONTACT_TEXT = {"overlap": "they overlap", "touch": "they touch but do not overlap",
                "separate": "they are apart and do not touch"}
# What each icon is for; every function fits exactly one icon.
FUNCTIONS = {"umbrella": "stay dry in the rain", "car": "drive along a road",
             "boat": "sail across a lake", "house": "live in with a family",
             "kite": "play with on a windy day", "apple": "have as a healthy snack",
             "balloon": "decorate a birthday party", "tree": "find shade on a hot day"}
FRUITS = ("apple", "pear", "plum", "kiwi", "fig", "lime", "mango", "grape", "peach")


def _two_objects(rng: random.Random) -> tuple[Obj, Obj]:
    """Two objects with different shapes and colours (boxes filled in by the caller)."""
    k1, k2 = rng.sample(SHAPES, 2)
    c1, c2 = rng.sample([c for c in COLORS if c != "gray"], 2)
    return Obj(k1, c1, (0, 0, 0, 0)), Obj(k2, c2, (0, 0, 0, 0))


def _overlaps(a: Box, b: Box, pad: int) -> bool:
    return not (a[2] + pad < b[0] or b[2] + pad < a[0] or a[3] + pad < b[1] or b[3] + pad < a[1])


def _add_distractors(rng: random.Random, draw, w: int, h: int, size: int, keep: list[Obj],
                     n: int) -> list[Obj]:
    """Up to n grey shapes that stay clear of the objects in `keep`."""
    out = []
    for box in scatter(rng, w, h, n, size, gap=4) if n else []:
        if any(_overlaps(box, o.box, 6) for o in keep + out):
            continue
        o = Obj(rng.choice(SHAPES), "gray", box)
        draw_shape(draw, o.name, box, fill=COLORS["gray"])
        out.append(o)
    return out


def spatial_relationship(rng: random.Random, hard: bool) -> Item:
    """Where object A is relative to object B: left, right, above or below."""
    rel = rng.choice(RELATIONS)
    w, h = pick_canvas(rng, hard, aspects=("square", "landscape"))
    size = max(12, int(min(w, h) * (rng.uniform(0.06, 0.1) if hard else rng.uniform(0.15, 0.25))))
    horizontal = rel in RELATIONS[:2]
    along, across = (w, h) if horizontal else (h, w)
    m, gap = 4, max(6, size // 2)
    p1 = rng.randint(m, along - m - 2 * size - gap)
    p2 = rng.randint(p1 + size + gap, along - m - size)
    c = rng.randint(m + size // 3, across - m - size - size // 3)
    c2 = c + rng.randint(-size // 3, size // 3)  # small offset: the main axis still decides
    a, b = _two_objects(rng)
    first, second = (a, b) if rel in ("to the left", "above") else (b, a)
    for o, p, q in ((first, p1, c), (second, p2, c2)):
        x, y = (p, q) if horizontal else (q, p)
        o.box = (x, y, x + size - 1, y + size - 1)
    img, draw = canvas(w, h)
    for o in (a, b):
        draw_shape(draw, o.name, o.box, fill=COLORS[o.color])
    objs = [a, b]
    if hard:
        objs += _add_distractors(rng, draw, w, h, size, objs, rng.randint(2, 6))
    options, answer = make_options(rng, rel, RELATIONS)
    return Item("spatial_relationship", img,
                f"Where is {a.phrase} relative to {b.phrase}?", options, answer, hard=hard,
                objects=objs, caption=f"{a.phrase.capitalize()} is {rel} of {b.phrase}.",
                meta={"relation": rel})


def attribute_comparison(rng: random.Random, hard: bool) -> Item:
    """Which of two shapes of the same kind is larger (two options)."""
    w, h = pick_canvas(rng, hard, aspects=("square", "landscape", "wide"))
    big = max(16, int(min(w, h) * (rng.uniform(0.1, 0.16) if hard else rng.uniform(0.3, 0.45))))
    ratio = rng.uniform(1.08, 1.2) if hard else rng.uniform(1.6, 2.5)
    small = max(6, int(big / ratio))
    kind = rng.choice(SHAPES)
    c1, c2 = rng.sample([c for c in COLORS if c != "gray"], 2)
    boxes = scatter(rng, w, h, 2, big, gap=6)
    a, b = Obj(kind, c1, boxes[0]), Obj(kind, c2, boxes[1])
    x, y = b.box[:2]
    off = (big - small) // 2  # centre the smaller one in its cell
    b.box = (x + off, y + off, x + off + small - 1, y + off + small - 1)
    img, draw = canvas(w, h)
    for o in (a, b):
        draw_shape(draw, o.name, o.box, fill=COLORS[o.color])
    objs = [a, b]
    if hard:
        objs += _add_distractors(rng, draw, w, h, small, objs, rng.randint(2, 5))
    order = [a, b] if rng.random() < 0.5 else [b, a]
    options = [o.phrase for o in order]
    return Item("attribute_comparison", img,
                f"Which is larger, {order[0].phrase} or {order[1].phrase}?", options,
                order.index(a), hard=hard, objects=objs,
                caption=f"{a.phrase.capitalize()} is larger than {b.phrase}.")


def physical_property_reasoning(rng: random.Random, hard: bool) -> Item:
    """How full a drawn glass of liquid is (empty, quarter, half, three quarters, full)."""
    level = rng.choice(list(LEVELS))
    w, h = pick_canvas(rng, hard, aspects=("square", "tall", "landscape"))
    gh = int(h * (rng.uniform(0.2, 0.3) if hard else rng.uniform(0.6, 0.85)))
    gw = max(10, min(w - 8, int(gh * rng.uniform(0.5, 0.8))))
    x, y = rng.randint(2, w - gw - 3), rng.randint(2, h - gh - 3)
    img, draw = canvas(w, h)
    lw = max(2, gw // 20)
    inner_top, inner_bottom = y + lw, y + gh - lw
    top = int(inner_bottom - (inner_bottom - inner_top) * level)
    liquid = rng.choice([(60, 140, 230), (240, 150, 40), (120, 200, 90), (200, 60, 80)])
    if level > 0:
        draw.rectangle((x + lw, top, x + gw - lw, inner_bottom), fill=liquid)
    # An open-topped glass: sides and bottom only, so "full" reaches the rim.
    draw.line(((x, y), (x, y + gh), (x + gw, y + gh), (x + gw, y)), fill=(40, 40, 40), width=lw,
              joint="curve")
    objs = [Obj("glass", "", (x, y, x + gw, y + gh))]
    if hard:
        objs += _add_distractors(rng, draw, w, h, max(10, gw // 2), objs, rng.randint(2, 4))
    options, answer = make_options(rng, LEVELS[level], LEVELS.values())
    return Item("physical_property_reasoning", img, "How full is the glass?", options, answer,
                hard=hard, objects=objs, caption=f"A glass that is {LEVELS[level]}.",
                meta={"level": level, "liquid": liquid, "inner": (inner_top, inner_bottom)})


def function_reasoning(rng: random.Random, hard: bool) -> Item:
    """Which of the drawn objects serves a stated purpose (an umbrella keeps you dry)."""
    n = rng.randint(4, 5) if hard else rng.randint(2, 4)
    names = rng.sample(sorted(FUNCTIONS), n)
    w, h = pick_canvas(rng, hard, aspects=("square", "landscape", "wide"))
    size = max(18, int(min(w, h) * (rng.uniform(0.08, 0.14) if hard else rng.uniform(0.25, 0.4))))
    img, _, objs = icon_scene(rng, names, w, h, size)
    target = names[0]
    # Options are drawn objects first, so the answer cannot be found by which is missing.
    rivals = names[1:] + rng.sample([x for x in sorted(FUNCTIONS) if x not in names], 3)
    options, answer = make_options(rng, target, rivals[:3])
    return Item("function_reasoning", img,
                f"Which object in the image would you use to {FUNCTIONS[target]}?", options,
                answer, hard=hard, objects=objs, meta={"drawn": names, "use": FUNCTIONS[target]})


def physical_relation(rng: random.Random, hard: bool) -> Item:
    """Whether two squares overlap, touch edge to edge, or stand apart (three options)."""
    contact = rng.choice(list(CONTACT_TEXT))
    w, h = pick_canvas(rng, hard, aspects=("square", "landscape"))
    size = max(16, int(min(w, h) * (rng.uniform(0.08, 0.12) if hard else rng.uniform(0.2, 0.3))))
    size = min(size, (min(w, h) - 16) // 3)
    if contact == "overlap":
        shift = size - (rng.randint(3, 5) if hard else rng.randint(size // 5, size // 3))
    elif contact == "touch":
        shift = size  # adjacent pixel columns: no background between, no shared pixel
    else:
        shift = size + (rng.randint(3, 5) if hard else rng.randint(size // 4, size // 2))
    horizontal = rng.random() < 0.5
    wobble = rng.randint(-size // 3, size // 3)  # the other axis: a sideways offset
    dx, dy = (shift, wobble) if horizontal else (wobble, shift)
    # Place the pair's joint extent so that both squares lie wholly inside the canvas.
    x = rng.randint(4, w - 4 - (max(size, dx + size) - min(0, dx))) - min(0, dx)
    y = rng.randint(4, h - 4 - (max(size, dy + size) - min(0, dy))) - min(0, dy)
    a, b = Obj("square", "", (0, 0, 0, 0)), Obj("square", "", (0, 0, 0, 0))
    a.color, b.color = rng.sample([c for c in COLORS if c != "gray"], 2)
    a.box = (x, y, x + size - 1, y + size - 1)
    b.box = (x + dx, y + dy, x + dx + size - 1, y + dy + size - 1)
    img, draw = canvas(w, h)
    for o in (a, b):
        draw.rectangle(o.box, fill=COLORS[o.color])
    objs = [a, b]
    if hard:
        objs += _add_distractors(rng, draw, w, h, size, objs, rng.randint(2, 5))
    options = list(CONTACT_TEXT.values())
    rng.shuffle(options)
    return Item("physical_relation", img,
                f"How are {a.phrase} and {b.phrase} placed relative to each other?", options,
                options.index(CONTACT_TEXT[contact]), hard=hard, objects=objs,
                meta={"contact": contact})


def connection_relation(rng: random.Random, hard: bool) -> Item:
    """Which node a line joins to the named node, in a small graph drawn on a circle."""
    n = rng.randint(6, 8) if hard else rng.randint(4, 5)
    w, h = pick_canvas(rng, hard, aspects=("square", "landscape"))
    colors = rng.sample([c for c in COLORS if c != "gray"], n)
    R = min(w, h) * 0.4
    r = max(5, int(R * (0.08 if hard else 0.15)))
    start = rng.uniform(0, 2 * math.pi)
    centers = [(w / 2 + R * math.cos(start + 2 * math.pi * i / n),
                h / 2 + R * math.sin(start + 2 * math.pi * i / n)) for i in range(n)]
    partner = rng.randrange(1, n)
    # Node 0 has exactly one edge; the others get a random set among themselves.
    edges = {(0, partner)}
    rest = [(i, j) for i in range(1, n) for j in range(i + 1, n)]
    edges |= set(rng.sample(rest, rng.randint(1, min(len(rest), n))))
    img, draw = canvas(w, h)
    lw = max(1, int(R / (120 if hard else 40)))
    for i, j in sorted(edges):
        draw.line((centers[i], centers[j]), fill=(90, 90, 90), width=lw)
    objs = []
    for (cx, cy), c in zip(centers, colors):
        box = (int(cx - r), int(cy - r), int(cx + r), int(cy + r))
        draw.ellipse(box, fill=COLORS[c], outline=(0, 0, 0))
        objs.append(Obj("node", c, box))
    options, answer = make_options(rng, f"the {colors[partner]} node",
                                   [f"the {c} node" for c in colors[1:]], n=min(4, n - 1))
    return Item("connection_relation", img,
                f"Which node is connected to the {colors[0]} node by a line?", options, answer,
                hard=hard, objects=objs,
                meta={"edges": sorted(edges), "colors": colors, "radius": r, "centers": centers})


def _sequence_panels(rng: random.Random, kind: str, length: int):
    """The drawable steps of a sequence and the description of the next step and its rivals."""
    if kind == "color":
        shape, period = rng.choice(SHAPES), rng.choice((2, 3))
        cycle = rng.sample([c for c in COLORS if c != "gray"], period)
        steps = [("shape", shape, cycle[i % period], 1.0) for i in range(length + 1)]
        texts = [f"a {c} {shape}" for c in COLORS if c != "gray"]
        return steps, f"a {cycle[length % period]} {shape}", texts
    if kind == "shape":
        color, period = rng.choice([c for c in COLORS if c != "gray"]), rng.choice((2, 3))
        cycle = rng.sample(SHAPES, period)
        steps = [("shape", cycle[i % period], color, 1.0) for i in range(length + 1)]
        return steps, f"a {color} {cycle[length % period]}", [f"a {color} {s}" for s in SHAPES]
    if kind == "count":
        color, start = rng.choice([c for c in COLORS if c != "gray"]), rng.randint(1, 2)
        steps = [("dots", start + i, color, 1.0) for i in range(length + 1)]
        nxt = start + length
        return steps, f"{nxt} dots", [f"{v} dots" for v in number_distractors(rng, nxt, lo=2)]
    if kind == "rotate":
        names, turn = ["right", "down", "left", "up"], rng.choice((1, -1))
        first = rng.randrange(4)
        steps = [("arrow", names[(first + turn * i) % 4], "black", 1.0) for i in range(length + 1)]
        return (steps, f"an arrow pointing {steps[-1][1]}",
                [f"an arrow pointing {d}" for d in names])
    shape, color = rng.choice(SHAPES), rng.choice([c for c in COLORS if c != "gray"])
    grow = rng.random() < 0.5
    scales = [0.35 + 0.6 * i / length for i in range(length + 1)]
    steps = [("shape", shape, color, s) for s in (scales if grow else scales[::-1])]
    word = "larger" if grow else "smaller"
    return steps, f"a {word} {color} {shape}", [
        f"a {'smaller' if grow else 'larger'} {color} {shape}",
        f"a {color} {shape} of the same size",
        f"a {word} {color} {rng.choice([s for s in SHAPES if s != shape])}"]


def future_prediction(rng: random.Random, hard: bool) -> Item:
    """What comes next in a row of pictures (colour, shape, count, rotation or size)."""
    kind = rng.choice(("color", "shape", "count", "rotate", "size"))
    length = rng.randint(5, 7) if hard else rng.randint(3, 4)
    steps, answer_text, rivals = _sequence_panels(rng, kind, length)
    cell = rng.randint(28, 44) if hard else rng.randint(70, 120)
    pad = cell // 8
    w, h = cell * (length + 1) + pad, cell + 2 * pad
    if hard:  # the row sits in a larger canvas, so the panels are small relative to it
        w, h = max(w + 8, int(w * rng.uniform(1.2, 1.6))), max(h, int(w * rng.uniform(0.25, 0.5)))
    img, draw = canvas(w, h)
    x0, y0 = rng.randint(2, w - cell * (length + 1) - 2), rng.randint(2, h - cell - 2)
    for i, (what, a, color, scale) in enumerate(steps[:length] + [(None, None, None, None)]):
        cx, cy = x0 + cell * i + cell / 2, y0 + cell / 2
        half = cell / 2 - 1
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), outline=(170, 170, 170))
        if what is None:
            draw_text(draw, (cx, cy), "?", int(cell * 0.6))
            continue
        s = (cell - 2 * pad) * scale
        if what == "shape":
            box = (int(cx - s / 2), int(cy - s / 2), int(cx + s / 2), int(cy + s / 2))
            draw_shape(draw, a, box, fill=COLORS[color])
        elif what == "arrow":
            draw_arrow(draw, (cx, cy), cell * 0.7, a, COLORS[color], max(2, cell // 12))
        else:
            r = max(2, cell // 14)
            for k in range(a):
                px = cx - cell / 2 + pad + r + (k % 3) * (cell - 2 * pad - 2 * r) / 2
                py = cy - cell / 2 + pad + r + (k // 3) * 2.4 * r
                draw.ellipse((px - r, py - r, px + r, py + r), fill=COLORS[color])
    options, answer = make_options(rng, answer_text, rivals)
    return Item("future_prediction", img,
                "The pictures follow a pattern. What comes next in place of the question mark?",
                options, answer, hint="Read the pictures from left to right.", hard=hard,
                meta={"kind": kind, "steps": [list(step) for step in steps[:length]]})


def chart_reading(rng: random.Random, hard: bool) -> Item:
    """Read a bar chart: which bar is highest, or the value of one bar."""
    n = rng.randint(5, 7) if hard else rng.randint(3, 4)
    labels = rng.sample(FRUITS, n)
    unit = 5 if hard else 10
    values = [unit * v for v in rng.sample(range(1, 100 // unit + 1), n)]  # distinct: one highest
    if hard:
        w = rng.randint(900, 1600)
        h, fs = int(w / rng.choice((2.5, 4))), rng.randint(10, 13)
    else:
        w, h = pick_canvas(rng, False, aspects=("square", "landscape"), medium=(320, 512),
                           small=(240, 300))
        fs = max(10, h // 20)
    img, _ = canvas(w, h)
    colors = [COLORS[c] for c in rng.sample([c for c in COLORS if c != "gray"], n)]
    bars = draw_bar_chart(img, (4, 4, w - 5, h - 5), labels, values, colors, fs, not hard, 100)
    hint = "The bar chart shows how many boxes of each fruit a shop sold."
    objs = [Obj("bar", "", b) for b in bars]
    if rng.random() < 0.5:
        best = labels[values.index(max(values))]
        question, asked = "Which fruit has the highest bar?", None
        options, answer = make_options(rng, best, labels, n=min(4, n))
        open_answers = [best]
    else:
        i = rng.randrange(n)
        question, asked = f"What is the value of the {labels[i]} bar?", labels[i]
        steps = number_distractors(rng, values[i] // unit, lo=1, spread=3)
        options, answer = make_options(rng, str(values[i]), [str(v * unit) for v in steps[:3]])
        open_answers = [str(values[i])]
    return Item("chart_reading", img, question, options, answer, hint=hint, hard=hard,
                open_question=question, open_answers=open_answers, objects=objs,
                meta={"labels": labels, "values": values, "asked": asked})


def math_reasoning(rng: random.Random, hard: bool) -> Item:
    """Evaluate the arithmetic expression written in the image."""
    if hard:
        a, b, c = rng.randint(10, 99), rng.randint(10, 99), rng.randint(1, 9)
        op = rng.choice(("+", "-", "x"))
        value = {"+": a + b, "-": a - b, "x": a * c}[op]
        text = f"{a} {op} {c if op == 'x' else b} = ?"
    else:
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        value, text = a + b, f"{a} + {b} = ?"
    w, h = pick_canvas(rng, hard, aspects=("square", "landscape", "wide"))
    size = rng.randint(12, 16) if hard else max(14, min(h // 3, int(w / (len(text) * 0.7))))
    img, draw = canvas(w, h)
    x = rng.randint(10, max(11, w - 10 - len(text) * size)) if hard else w // 2
    y = rng.randint(size, h - size) if hard else h // 2
    box = draw_text(draw, (x, y), text, size, fill=(20, 20, 20), anchor="lm" if hard else "mm")
    question = "What is the result of the calculation shown in the image?"
    spread = [str(value + d) for d in (1, -1, 2, -2, 10, -10)]
    options, answer = make_options(rng, str(value), spread[:4] if not hard else spread)
    return Item("math_reasoning", img, question, options, answer, hard=hard,
                open_question=question, open_answers=number_answers(value),
                objects=[Obj("text", "", box)], caption=f'The calculation "{text}".',
                meta={"text": text, "value": value})


GENERATORS = {"spatial_relationship": spatial_relationship,
              "attribute_comparison": attribute_comparison,
              "physical_property_reasoning": physical_property_reasoning,
              "function_reasoning": function_reasoning,
              "physical_relation": physical_relation, "connection_relation": connection_relation,
              "future_prediction": future_prediction, "chart_reading": chart_reading,
              "math_reasoning": math_reasoning}
