"""Object scenes for existence (POPE-style) and grounding questions, and their samplers.

POPE images hold a few icons drawn from themed groups so that objects co-occur the way
COCO's do; grounding images hold shapes whose "colour + shape" phrase is unique.
"""

from __future__ import annotations

import random
from collections import Counter

from PIL import Image, ImageDraw

from tilevl.minibench.draw import (COLORS, SHAPES, Box, canvas, draw_shape, ink_box, pick_canvas,
                                   scatter)
from tilevl.minibench.items import Obj, join_names

# Themes make co-occurrence uneven: POPE's adversarial split asks about an absent object
# that usually appears with the present ones ("boat" in a picture of fish and waves).
THEMES = {
    "village": ("house", "tree", "car", "flower", "sun", "cloud"),
    "sea": ("fish", "boat", "sun", "cloud", "umbrella"),
    "night": ("moon", "star", "house", "tree", "cloud"),
    "garden": ("flower", "tree", "mushroom", "apple", "sun"),
    "fair": ("balloon", "kite", "car", "sun", "umbrella"),
}
ICONS = tuple(sorted({name for names in THEMES.values() for name in names}))
POPE_SPLITS = ("random", "popular", "adversarial")


def draw_icon(draw: ImageDraw.ImageDraw, name: str, box: Box) -> None:
    """Draw a recognisable flat icon of `name` (one of ICONS) inside the square `box`."""
    x1, y1, x2, y2 = box
    s = x2 - x1
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    u = s / 10  # one tenth of the box: icons are laid out on a 10×10 grid

    def r(a, b, c, d):
        return (x1 + a * u, y1 + b * u, x1 + c * u, y1 + d * u)

    if name == "house":
        draw.rectangle(r(2, 5, 8, 10), fill=(200, 90, 60))
        draw.polygon([(x1 + u, y1 + 5 * u), (cx, y1), (x2 - u, y1 + 5 * u)], fill=(120, 40, 30))
        draw.rectangle(r(4.2, 7, 5.8, 10), fill=(90, 50, 20))
    elif name == "tree":
        draw.rectangle(r(4.2, 6, 5.8, 10), fill=(110, 70, 30))
        draw.ellipse(r(1, 0, 9, 7), fill=(40, 140, 50))
    elif name == "sun":
        for k in range(8):
            dx, dy = [(1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1)][k]
            draw.line((cx, cy, cx + dx * 4.8 * u, cy + dy * 4.8 * u), fill=(245, 170, 20),
                      width=max(1, int(u * 0.7)))
        draw.ellipse(r(2.2, 2.2, 7.8, 7.8), fill=(250, 210, 30))
    elif name == "cloud":
        for a in (r(0, 4, 5, 9), r(3, 2, 8, 8), r(5, 4, 10, 9)):
            draw.ellipse(a, fill=(175, 190, 210))
    elif name == "car":
        draw.rectangle(r(0, 4.5, 10, 7.5), fill=(40, 90, 200))
        draw.rectangle(r(2.5, 2.5, 7.5, 4.5), fill=(40, 90, 200))
        for wx in (2.5, 7.5):
            draw.ellipse(r(wx - 1.3, 6.5, wx + 1.3, 9.1), fill=(20, 20, 20))
    elif name == "flower":
        draw.line((cx, cy, cx, y2), fill=(40, 140, 50), width=max(1, int(u)))
        for px, py in ((5, 1.5), (2, 4), (8, 4), (3, 7), (7, 7)):
            draw.ellipse(r(px - 1.8, py - 1.8, px + 1.8, py + 1.8), fill=(235, 90, 160))
        draw.ellipse(r(3.8, 3.3, 6.2, 5.7), fill=(250, 210, 30))
    elif name == "fish":
        draw.polygon([(x1 + 7 * u, cy), (x2, y1 + 2 * u), (x2, y1 + 8 * u)], fill=(245, 125, 20))
        draw.ellipse(r(0, 2.5, 7.5, 7.5), fill=(245, 125, 20))
        draw.ellipse(r(1.5, 4, 2.5, 5), fill=(0, 0, 0))
    elif name == "boat":
        draw.polygon([(x1, y1 + 7 * u), (x2, y1 + 7 * u), (x1 + 8 * u, y2), (x1 + 2 * u, y2)],
                     fill=(125, 75, 30))
        draw.line((cx, y1, cx, y1 + 7 * u), fill=(60, 40, 20), width=max(1, int(u * 0.6)))
        sail = [(cx + u * 0.3, y1), (cx + u * 0.3, y1 + 6.5 * u), (x1 + 9 * u, y1 + 6.5 * u)]
        draw.polygon(sail, fill=(235, 235, 235), outline=(90, 90, 90))
    elif name == "moon":
        draw.ellipse(r(1, 1, 9, 9), fill=(235, 215, 90))
        draw.ellipse(r(3.5, 0, 10, 7.5), fill=(250, 250, 250))
    elif name == "star":
        draw_shape(draw, "star", box, fill=(245, 195, 20))
    elif name == "mushroom":
        draw.rectangle(r(4, 5, 6, 10), fill=(235, 220, 190))
        draw.chord(r(0.5, 1, 9.5, 9), 180, 360, fill=(210, 30, 30))
        for px, py in ((3, 3.5), (6.5, 2.8), (5, 4.3)):
            draw.ellipse(r(px - 0.7, py - 0.7, px + 0.7, py + 0.7), fill=(255, 255, 255))
    elif name == "apple":
        draw.ellipse(r(1, 2, 9, 10), fill=(210, 30, 30))
        draw.line((cx, y1 + 2.5 * u, cx + u, y1), fill=(100, 60, 20), width=max(1, int(u * 0.7)))
        draw.ellipse(r(5.5, 0.5, 8, 2), fill=(40, 140, 50))
    elif name == "balloon":
        draw.line((cx, y1 + 7 * u, cx - u, y2), fill=(80, 80, 80), width=max(1, int(u * 0.3)))
        draw.ellipse(r(2, 0, 8, 7.5), fill=(130, 50, 175))
    elif name == "kite":
        kite = [(cx, y1), (x1 + 8 * u, y1 + 3.5 * u), (cx, y1 + 8 * u), (x1 + 2 * u, y1 + 3.5 * u)]
        draw.polygon(kite, fill=(30, 150, 50))
        draw.line((cx, y1 + 8 * u, cx + 2 * u, y2), fill=(80, 80, 80), width=max(1, int(u * 0.3)))
    elif name == "umbrella":
        draw.line((cx, cy, cx, y1 + 9 * u), fill=(60, 60, 60), width=max(1, int(u * 0.6)))
        draw.arc(r(3.5, 7.5, 5, 10), 0, 180, fill=(60, 60, 60), width=max(1, int(u * 0.6)))
        draw.chord(r(0, 1, 10, 9), 180, 360, fill=(245, 115, 185))
    else:
        raise ValueError(f"unknown icon '{name}'; expected one of {ICONS}")


def pope_image(rng: random.Random, hard: bool) -> tuple[Image.Image, list[Obj]]:
    """An image of 2–5 distinct icons, mostly from one theme.

    Args:
        rng: the item's random generator.
        hard: small icons in a large canvas.
    Returns:
        (image, the drawn objects).
    """
    theme = THEMES[rng.choice(sorted(THEMES))]
    n = rng.randint(2, 5)
    names: list[str] = []
    while len(names) < n:
        name = rng.choice(theme) if rng.random() < 0.85 else rng.choice(ICONS)
        if name not in names:
            names.append(name)
    w, h = pick_canvas(rng, hard, aspects=("square", "landscape", "wide", "tall"))
    size = max(16, int(min(w, h) * (rng.uniform(0.08, 0.14) if hard else rng.uniform(0.22, 0.32))))
    img, _, objs = icon_scene(rng, names, w, h, size)
    return img, objs


def icon_scene(rng: random.Random, names: list[str], w: int, h: int, size: int):
    """Scatter the named icons on a w×h canvas, shrinking them until they fit.

    Returns:
        (image, its ImageDraw, the drawn objects in `names` order).
    """
    while True:
        try:
            boxes = scatter(rng, w, h, len(names), size, gap=max(4, size // 6))
            break
        except ValueError:
            size = int(size * 0.85)
    img, draw = canvas(w, h)
    objs = [Obj(name, "", box) for name, box in zip(names, boxes)]
    for o in objs:
        draw_icon(draw, o.name, o.box)
    return img, draw, objs


def icon_caption(objs: list[Obj]) -> str:
    """A one-sentence description of a POPE image."""
    names = join_names([f"a {o.name}" for o in objs])
    return f"A simple drawing of {names} on a white background."


def pope_questions(images_objects: list[list[str]], rng: random.Random,
                   per_image: int = 3) -> list[dict]:
    """POPE's three ways to choose absent objects, with as many "yes" as "no" per image.

    random: absent objects sampled uniformly; popular: the absent objects most frequent in
    the whole set; adversarial: the absent objects that co-occur most with the present ones.

    Args:
        images_objects: the object names present in each image, by image position.
        rng: the split's random generator (used by "random" and to break no ties).
        per_image: "yes" questions per image (fewer when an image has fewer objects).
    Returns:
        Dicts {"image": position, "object", "answer": "yes"|"no", "split"}, grouped by split.
    """
    freq = Counter(name for names in images_objects for name in set(names))
    co: Counter = Counter()
    for names in images_objects:
        for a in set(names):
            for b in set(names):
                if a != b:
                    co[a, b] += 1
    # Ties break by name so that the order never depends on hash seeds.
    popular = sorted(ICONS, key=lambda x: (-freq[x], x))
    out = []
    for split in POPE_SPLITS:
        for i, names in enumerate(images_objects):
            present = list(dict.fromkeys(names))
            k = min(per_image, len(present))
            absent = [x for x in ICONS if x not in present]
            if split == "random":
                negatives = rng.sample(absent, k)
            elif split == "popular":
                negatives = [x for x in popular if x not in present][:k]
            else:
                score = {x: sum(co[p, x] for p in present) for x in absent}
                negatives = sorted(absent, key=lambda x: (-score[x], -freq[x], x))[:k]
            positives = rng.sample(present, k)
            pairs = [(x, "yes") for x in positives] + [(x, "no") for x in negatives]
            rng.shuffle(pairs)
            out.extend({"image": i, "object": x, "answer": a, "split": split} for x, a in pairs)
    return out


def grounding_scene(rng: random.Random, hard: bool) -> tuple[Image.Image, list[Obj], Obj]:
    """Filled shapes with one target whose "colour shape" phrase names it uniquely.

    Hard scenes add look-alikes (same shape in another colour, same colour in another
    shape) and make everything small in a large canvas.

    Args:
        rng: the item's random generator.
        hard: whether to make the hard variant.
    Returns:
        (image, all objects, the target).
    """
    w, h = pick_canvas(rng, hard)
    n = rng.randint(6, 12) if hard else rng.randint(2, 4)
    size = max(12, int(min(w, h) * (rng.uniform(0.05, 0.1) if hard else rng.uniform(0.2, 0.3))))
    while True:
        try:
            boxes = scatter(rng, w, h, n, size, gap=max(6, size // 5))
            break
        except ValueError:
            n, size = max(2, n - 1), max(10, int(size * 0.85))
    colors = [c for c in COLORS if c != "gray"]
    kind, color = rng.choice(SHAPES), rng.choice(colors)
    objs = [Obj(kind, color, boxes[0])]
    for box in boxes[1:]:
        while True:
            if hard and rng.random() < 0.5:  # a look-alike sharing one attribute
                k, c = ((kind, rng.choice(colors)) if rng.random() < 0.5
                        else (rng.choice(SHAPES), color))
            else:
                k, c = rng.choice(SHAPES), rng.choice(colors)
            if (k, c) != (kind, color):
                break
        objs.append(Obj(k, c, box))
    img, draw = canvas(w, h)
    for o in objs:
        draw_shape(draw, o.name, o.box, fill=COLORS[o.color])
    # The answer box hugs the ink, as a human annotator's would.
    objs[0].box = ink_box(kind, objs[0].box)
    order = objs[1:]
    rng.shuffle(order)
    return img, [objs[0]] + order, objs[0]
