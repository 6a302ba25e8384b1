"""Coarse-perception generators: the whole image's style, quality, emotion, scene and topic.

Each generator takes the item's `random.Random` and a hard flag and returns an Item;
hard variants hide the cue (faint degradation, a small face in a large canvas, …).
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tilevl.minibench.draw import (COLORS, SHAPES, canvas, draw_bar_chart, draw_dotted,
                                   draw_face, draw_shape, draw_text, font, pick_canvas,
                                   scatter)
from tilevl.minibench.items import WORDS, Item, make_options

STYLE_TEXT = {"filled": "solid filled shapes", "outline": "outline drawing",
              "dotted": "dotted outlines", "pixelated": "blocky pixel art"}
QUALITY_TEXT = {"clean": "clean and sharp", "blurred": "blurry",
                "noisy": "noisy (grainy speckles)"}
EMOTIONS = ("happy", "sad", "surprised", "angry")
SCENE_TEXT = {"beach": "a beach by the sea", "meadow": "a grassy meadow", "night": "a night sky",
              "desert": "a sandy desert", "snow": "a snowy field"}
TOPIC_TEXT = {"chart": "a bar chart", "face": "a cartoon face", "text": "a page of text",
              "landscape": "a landscape", "shapes": "geometric shapes"}


def _shapes_layout(rng: random.Random, w: int, h: int, hard: bool) -> list[tuple]:
    """3–6 (kind, colour, box) triples spread over a w×h canvas."""
    n = rng.randint(3, 6)
    size = max(12, int(min(w, h) * (rng.uniform(0.12, 0.2) if hard else rng.uniform(0.25, 0.4))))
    while True:
        try:
            boxes = scatter(rng, w, h, n, size, gap=max(4, size // 6))
            break
        except ValueError:
            n, size = max(1, n - 1), max(10, int(size * 0.85))
    cols = list(COLORS)
    return [(rng.choice(SHAPES), rng.choice(cols), b) for b in boxes]


def image_style(rng: random.Random, hard: bool) -> Item:
    """Which drawing style: filled, outline, dotted outline or blocky pixel art."""
    style = rng.choice(list(STYLE_TEXT))
    w, h = pick_canvas(rng, hard, aspects=("square", "landscape", "tall"))
    img, draw = canvas(w, h)
    layout = _shapes_layout(rng, w, h, hard)
    lw = max(1, min(w, h) // (200 if hard else 60))
    for kind, color, box in layout:
        rgb = COLORS[color]
        if style in ("filled", "pixelated"):
            draw_shape(draw, kind, box, fill=rgb)
        elif style == "outline":
            draw_shape(draw, kind, box, outline=rgb, width=lw)
        else:
            draw_dotted(draw, kind, box, rgb, dot=max(3, lw * 2))
    if style == "pixelated":
        # Blocks must stay visible after tiling shrinks the image, but hard ones are finer.
        block = max(3, min(w, h) // (60 if hard else 14))
        small = img.resize((max(1, w // block), max(1, h // block)), Image.Resampling.NEAREST)
        img = small.resize((w, h), Image.Resampling.NEAREST)
    options, answer = make_options(rng, STYLE_TEXT[style], STYLE_TEXT.values())
    return Item("image_style", img, "Which best describes the drawing style of this image?",
                options, answer, hard=hard,
                caption=f"Several shapes drawn as {STYLE_TEXT[style]}.", meta={"style": style})


def image_quality(rng: random.Random, hard: bool) -> Item:
    """Whether the image is clean, blurred or noisy (three options)."""
    quality = rng.choice(list(QUALITY_TEXT))
    side = rng.randint(400, 700) if hard else rng.randint(160, 320)
    w, h = (side, int(side * rng.choice((1.0, 0.75, 1.33))))
    img, draw = canvas(w, h)
    for kind, color, box in _shapes_layout(rng, w, h, hard=False):
        draw_shape(draw, kind, box, fill=COLORS[color], outline=(0, 0, 0), width=2)
    draw_text(draw, (w / 2, h - 14), rng.choice(WORDS), 14)
    if quality == "blurred":
        radius = rng.uniform(1.6, 2.2) if hard else rng.uniform(3.5, 6.0)
        img = img.filter(ImageFilter.GaussianBlur(radius * max(w, h) / 400))
    elif quality == "noisy":
        # Salt-and-pepper on a fraction of pixels: visible as grain, still compresses.
        gen = np.random.default_rng(rng.getrandbits(64))
        arr = np.asarray(img).copy()
        hit = gen.random(arr.shape[:2]) < (0.03 if hard else 0.12)
        arr[hit] = gen.integers(0, 2, size=(int(hit.sum()), 1), dtype=np.uint8) * 255
        img = Image.fromarray(arr)
    options = list(QUALITY_TEXT.values())
    rng.shuffle(options)
    return Item("image_quality", img, "How would you describe the quality of this image?",
                options, options.index(QUALITY_TEXT[quality]), hard=hard,
                meta={"quality": quality})


def image_emotion(rng: random.Random, hard: bool) -> Item:
    """The facial expression of a drawn face (happy, sad, surprised or angry)."""
    emotion = rng.choice(EMOTIONS)
    if hard:
        w, h = pick_canvas(rng, True, aspects=("square", "landscape", "wide"))
        side = max(36, int(min(w, h) * rng.uniform(0.12, 0.25)))
    else:
        w = h = rng.randint(120, 400)
        side = int(w * rng.uniform(0.6, 0.85))
    img, draw = canvas(w, h)
    x, y = rng.randint(2, w - side - 2), rng.randint(2, h - side - 2)
    if hard:  # clutter around the face so that it is not the only thing to look at
        for kind, color, box in _shapes_layout(rng, w, h, hard=True):
            if box[2] < x - 4 or box[0] > x + side + 4 or box[3] < y - 4 or box[1] > y + side + 4:
                draw_shape(draw, kind, box, fill=COLORS[color])
    draw_face(draw, (x, y, x + side, y + side), emotion)
    options, answer = make_options(rng, emotion, EMOTIONS)
    return Item("image_emotion", img, "What emotion does the face in the image show?",
                options, answer, hard=hard, caption=f"A cartoon face that looks {emotion}.",
                meta={"emotion": emotion})


def paint_scene(draw: ImageDraw.ImageDraw, rng: random.Random, w: int, h: int, scene: str) -> None:
    """Paint a flat landscape: sky, ground bands and a few telling details.

    Args:
        draw: the drawing context of a w×h image.
        rng: the item's random generator.
        w, h: the image size.
        scene: a key of SCENE_TEXT.
    """
    horizon = int(h * rng.uniform(0.4, 0.6))
    sky = {"night": (15, 20, 60), "snow": (200, 215, 230)}.get(scene, (135, 195, 240))
    ground = {"beach": (40, 90, 190), "meadow": (70, 160, 60), "night": (25, 45, 30),
              "desert": (225, 190, 110), "snow": (245, 248, 252)}[scene]
    draw.rectangle((0, 0, w, horizon), fill=sky)
    draw.rectangle((0, horizon, w, h), fill=ground)
    r = max(3, min(w, h) // 12)
    sx, sy = rng.randint(r, w - r), rng.randint(r, max(r + 1, horizon - r))
    if scene == "night":
        draw.ellipse((sx - r, sy - r, sx + r, sy + r), fill=(240, 240, 200))
        draw.ellipse((sx - r // 2, sy - r, sx + r * 3 // 2, sy + r), fill=sky)  # a crescent
        for _ in range(rng.randint(8, 20)):
            x, y = rng.randint(0, w), rng.randint(0, horizon)
            draw.point((x, y), fill=(255, 255, 255))
    else:
        draw.ellipse((sx - r, sy - r, sx + r, sy + r), fill=(250, 210, 40))
    if scene == "beach":  # sand in front of the sea
        draw.rectangle((0, int(horizon + (h - horizon) * 0.6), w, h), fill=(235, 210, 150))
    elif scene == "meadow":
        for _ in range(rng.randint(4, 10)):
            x, y = rng.randint(0, w), rng.randint(horizon + 2, h)
            petal = rng.choice(((240, 80, 80), (250, 250, 90)))
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=petal)
    elif scene == "desert":
        for _ in range(2):
            cx = rng.randint(0, w)
            top, base = horizon - h // 10, horizon + 2
            dune = [(cx - w // 3, base), (cx, top), (cx + w // 3, base)]
            draw.polygon(dune, fill=(205, 165, 90))
    elif scene == "snow":
        for _ in range(rng.randint(10, 30)):
            x, y = rng.randint(0, w), rng.randint(0, h)
            draw.ellipse((x - 1, y - 1, x + 1, y + 1), fill=(255, 255, 255))


def image_scene(rng: random.Random, hard: bool) -> Item:
    """Which kind of landscape: beach, meadow, night, desert or snow (four options)."""
    scene = rng.choice(list(SCENE_TEXT))
    if hard:  # tiny thumbnails or extreme banners: the colours are all there is to go on
        w, h = rng.choice(((rng.randint(48, 96), rng.randint(48, 96)),
                           (rng.randint(800, 1400), rng.randint(150, 250))))
    else:
        w, h = pick_canvas(rng, False, aspects=("square", "landscape"))
    img, draw = canvas(w, h)
    paint_scene(draw, rng, w, h, scene)
    options, answer = make_options(rng, SCENE_TEXT[scene], SCENE_TEXT.values())
    return Item("image_scene", img, "Which scene does this image show?", options, answer,
                hard=hard, caption=f"A simple drawing of {SCENE_TEXT[scene]}.")


def _paint_topic(img: Image.Image, rng: random.Random, box, topic: str) -> None:
    """Draw one topic's content inside `box` of `img`."""
    draw = ImageDraw.Draw(img)
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    if topic == "chart":
        n = rng.randint(3, 5)
        draw_bar_chart(img, box, [chr(65 + i) for i in range(n)],
                       [rng.randint(1, 10) * 10 for _ in range(n)],
                       [COLORS[c] for c in rng.sample(list(COLORS), n)],
                       max(8, h // 16), False, 100)
    elif topic == "face":
        s = min(w, h)
        fx, fy = x1 + (w - s) // 2, y1 + (h - s) // 2
        draw_face(draw, (fx, fy, fx + s, fy + s), rng.choice(EMOTIONS))
    elif topic == "text":
        size = max(8, h // 14)
        for row in range(max(1, h // (size + 6))):
            line = " ".join(rng.choice(WORDS) for _ in range(12))
            draw.text((x1 + 4, y1 + 4 + row * (size + 6)), line, fill=(20, 20, 20),
                      font=font(size))
    elif topic == "landscape":
        sub = Image.new("RGB", (w, h))
        paint_scene(ImageDraw.Draw(sub), rng, w, h, rng.choice(list(SCENE_TEXT)))
        img.paste(sub, (x1, y1))
    else:
        sub = Image.new("RGB", (w, h), (250, 250, 250))
        sd = ImageDraw.Draw(sub)
        for kind, color, b in _shapes_layout(rng, w, h, hard=False):
            draw_shape(sd, kind, b, fill=COLORS[color])
        img.paste(sub, (x1, y1))


def image_topic(rng: random.Random, hard: bool) -> Item:
    """What the image mainly shows: a chart, a face, a text page, a landscape or shapes."""
    topic = rng.choice(list(TOPIC_TEXT))
    w, h = pick_canvas(rng, hard, aspects=("square", "landscape", "tall"))
    img, _ = canvas(w, h)
    if hard:  # a small inset of another topic competes with the main content
        _paint_topic(img, rng, (0, 0, w - 1, h - 1), topic)
        other = rng.choice([t for t in TOPIC_TEXT if t != topic])
        s = max(40, min(w, h) // 4)
        x, y = rng.randint(0, w - s - 1), rng.randint(0, h - s - 1)
        ImageDraw.Draw(img).rectangle((x - 1, y - 1, x + s + 1, y + s + 1), fill=(250, 250, 250),
                                      outline=(0, 0, 0))
        _paint_topic(img, rng, (x, y, x + s, y + s), other)
    else:
        _paint_topic(img, rng, (0, 0, w - 1, h - 1), topic)
    options, answer = make_options(rng, TOPIC_TEXT[topic], TOPIC_TEXT.values())
    return Item("image_topic", img, "What does this image mainly show?", options, answer,
                hard=hard, meta={"topic": topic})


GENERATORS = {"image_style": image_style, "image_quality": image_quality,
              "image_emotion": image_emotion, "image_scene": image_scene,
              "image_topic": image_topic}
