"""Drawing primitives for MiniBench: named colours, shapes, patterns, text, faces, arrows.

Everything is drawn aliased with flat colours (exact pixel values, small PNGs); text uses
Pillow's bundled font so that the same seed draws the same pixels on every machine.
"""

from __future__ import annotations

import functools
import io
import math
import random

from PIL import Image, ImageDraw, ImageFont

Box = tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels, inclusive like ImageDraw's

# Names a person would use; values far apart so that no two read as the same colour.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 150, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 205, 20),
    "orange": (245, 125, 20),
    "purple": (130, 50, 175),
    "pink": (245, 115, 185),
    "brown": (125, 75, 30),
    "black": (15, 15, 15),
    "gray": (130, 130, 130),
}
BACKGROUND = (250, 250, 250)
SHAPES = ("circle", "square", "triangle", "diamond", "pentagon", "hexagon", "star", "cross")


@functools.lru_cache(maxsize=64)
def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled scalable font at `size` px (its bitmap font when FreeType is absent).

    Args:
        size: the font size in pixels.
    Returns:
        A font usable with ImageDraw.text.
    """
    return ImageFont.load_default(size=max(6, int(size)))


def canvas(width: int, height: int, color=BACKGROUND) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """A blank RGB image and its drawing context."""
    img = Image.new("RGB", (int(width), int(height)), color)
    return img, ImageDraw.Draw(img)


def png_bytes(img: Image.Image) -> bytes:
    """Encode `img` as PNG with no metadata chunks, so equal pixels give equal bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def text_size(text: str, size: int) -> tuple[int, int]:
    """Width and height in pixels that `text` takes at font `size`."""
    x1, y1, x2, y2 = font(size).getbbox(text)
    return x2 - x1, y2 - y1


def draw_text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, size: int,
              fill=(0, 0, 0), anchor: str = "mm") -> Box:
    """Write `text` at `xy` (centre by default) and return the box of its ink."""
    draw.text(xy, text, fill=fill, font=font(size), anchor=anchor)
    return tuple(int(v) for v in draw.textbbox(xy, text, font=font(size), anchor=anchor))


def shape_polygon(kind: str, box: Box, rotation: float = 0.0) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape inscribed in `box` (circles are drawn as ellipses).

    Args:
        kind: one of SHAPES other than "circle".
        box: the bounding box to fill.
        rotation: degrees clockwise; only used by the pattern-free shapes of a sequence.
    Returns:
        A list of (x, y) points.
    """
    x1, y1, x2, y2 = box
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    if kind == "square":
        pts = [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
    elif kind == "triangle":
        pts = [(cx, y1), (x2, y2), (x1, y2)]
    elif kind == "diamond":
        pts = [(cx, y1), (x2, cy), (cx, y2), (x1, cy)]
    elif kind in ("pentagon", "hexagon"):
        n = 5 if kind == "pentagon" else 6
        pts = [(cx + rx * math.sin(2 * math.pi * i / n), cy - ry * math.cos(2 * math.pi * i / n))
               for i in range(n)]
    elif kind == "star":
        pts = []
        for i in range(10):
            r = 1.0 if i % 2 == 0 else 0.45
            a = math.pi * i / 5
            pts.append((cx + rx * r * math.sin(a), cy - ry * r * math.cos(a)))
    elif kind == "cross":
        tx, ty = rx / 3, ry / 3
        pts = [(cx - tx, y1), (cx + tx, y1), (cx + tx, cy - ty), (x2, cy - ty), (x2, cy + ty),
               (cx + tx, cy + ty), (cx + tx, y2), (cx - tx, y2), (cx - tx, cy + ty),
               (x1, cy + ty), (x1, cy - ty), (cx - tx, cy - ty)]
    else:
        raise ValueError(f"unknown shape '{kind}'; expected one of {SHAPES}")
    if rotation:
        c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
        pts = [(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c)
               for x, y in pts]
    return pts


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, box: Box, fill=None, outline=None,
               width: int = 1) -> None:
    """Draw one shape filled and/or outlined inside `box`."""
    if kind == "circle":
        draw.ellipse(box, fill=fill, outline=outline, width=width)
    elif kind == "square":
        draw.rectangle(box, fill=fill, outline=outline, width=width)
    else:
        pts = shape_polygon(kind, box)
        draw.polygon(pts, fill=fill, outline=outline, width=width)


def ink_box(kind: str, box: Box) -> Box:
    """The tight box of the pixels draw_shape fills (a pentagon or star is narrower than its box).

    Args:
        kind: the shape.
        box: the box it was drawn in.
    Returns:
        The inclusive box of its filled pixels.
    """
    x1, y1, x2, y2 = box
    mask = Image.new("1", (x2 - x1 + 1, y2 - y1 + 1), 0)
    draw_shape(ImageDraw.Draw(mask), kind, (0, 0, x2 - x1, y2 - y1), fill=1)
    bx1, by1, bx2, by2 = mask.getbbox()
    return x1 + bx1, y1 + by1, x1 + bx2 - 1, y1 + by2 - 1


def perimeter_points(kind: str, box: Box, step: float) -> list[tuple[float, float]]:
    """Points every `step` pixels along a shape's outline (for dotted drawings)."""
    if kind == "circle":
        x1, y1, x2, y2 = box
        cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
        n = max(8, int(2 * math.pi * max(rx, ry) / step))
        return [(cx + rx * math.cos(2 * math.pi * i / n), cy + ry * math.sin(2 * math.pi * i / n))
                for i in range(n)]
    pts = shape_polygon(kind, box)
    out = []
    for (ax, ay), (bx, by) in zip(pts, pts[1:] + pts[:1]):
        n = max(1, int(math.hypot(bx - ax, by - ay) / step))
        out.extend((ax + (bx - ax) * i / n, ay + (by - ay) * i / n) for i in range(n))
    return out


def draw_dotted(draw: ImageDraw.ImageDraw, kind: str, box: Box, color, dot: int) -> None:
    """Outline a shape with separate round dots of diameter `dot`."""
    r = max(1, dot // 2)
    for x, y in perimeter_points(kind, box, step=dot * 2.5):
        draw.ellipse((x - r, y - r, x + r, y + r), fill=color)


def draw_patterned(img: Image.Image, kind: str, box: Box, color, pattern: str,
                   period: int) -> None:
    """Fill a shape with a pattern (plain, striped, dotted or checkered) and outline it.

    Args:
        img: the RGB image to draw on.
        kind: the shape.
        box: where it goes.
        color: the ink colour; the gaps keep the background.
        pattern: "plain", "striped", "dotted" or "checkered".
        period: the pattern's repeat in pixels.
    """
    x1, y1, x2, y2 = box
    w, h = x2 - x1 + 1, y2 - y1 + 1
    # Draw the pattern into a mask in the box's own frame, then stamp it through the shape.
    shape_mask = Image.new("L", (w, h), 0)
    draw_shape(ImageDraw.Draw(shape_mask), kind, (0, 0, w - 1, h - 1), fill=255)
    pat = Image.new("L", (w, h), 255 if pattern == "plain" else 0)
    pd = ImageDraw.Draw(pat)
    half = max(2, period // 2)
    if pattern == "striped":
        for y in range(0, h, period):
            pd.rectangle((0, y, w, y + half - 1), fill=255)
    elif pattern == "dotted":
        r = max(1, period // 4)
        for y in range(half // 2, h, period):
            for x in range(half // 2, w, period):
                pd.ellipse((x - r, y - r, x + r, y + r), fill=255)
    elif pattern == "checkered":
        for y in range(0, h, half):
            for x in range(((y // half) % 2) * half, w, 2 * half):
                pd.rectangle((x, y, x + half - 1, y + half - 1), fill=255)
    elif pattern != "plain":
        raise ValueError(f"unknown pattern '{pattern}'")
    mask = Image.composite(pat, Image.new("L", (w, h), 0), shape_mask)
    img.paste(Image.new("RGB", (w, h), color), (x1, y1), mask)
    draw_shape(ImageDraw.Draw(img), kind, box, outline=color, width=max(1, period // 6))


def draw_face(draw: ImageDraw.ImageDraw, box: Box, emotion: str, skin=(250, 210, 70)) -> None:
    """A round cartoon face whose eyebrows and mouth show `emotion`.

    Args:
        draw: the drawing context.
        box: a square box for the head.
        emotion: "happy", "sad", "surprised" or "angry".
        skin: the head colour.
    """
    x1, y1, x2, y2 = box
    s = x2 - x1
    ink = (20, 20, 20)
    lw = max(1, s // 30)
    draw.ellipse(box, fill=skin, outline=ink, width=lw)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    er = max(1, s // 16)
    for ex in (cx - s * 0.18, cx + s * 0.18):
        ey = cy - s * 0.1
        r = er * (1.5 if emotion == "surprised" else 1)
        draw.ellipse((ex - r, ey - r, ex + r, ey + r), fill=ink)
        # Eyebrows carry most of "angry" and "surprised": slanted in, or raised high.
        bw = s * 0.1
        by = ey - s * (0.17 if emotion == "surprised" else 0.11)
        if emotion == "angry":
            inner = 1 if ex < cx else -1
            draw.line((ex - bw, by - s * 0.05 * inner, ex + bw, by + s * 0.05 * inner), fill=ink,
                      width=lw * 2)
        elif emotion == "sad":
            inner = 1 if ex < cx else -1
            draw.line((ex - bw, by + s * 0.04 * inner, ex + bw, by - s * 0.04 * inner), fill=ink,
                      width=lw * 2)
        else:
            draw.line((ex - bw, by, ex + bw, by), fill=ink, width=lw * 2)
    mw, my = s * 0.22, cy + s * 0.2
    if emotion == "happy":
        draw.arc((cx - mw, my - s * 0.15, cx + mw, my + s * 0.1), 15, 165, fill=ink, width=lw * 2)
    elif emotion == "sad":
        draw.arc((cx - mw, my, cx + mw, my + s * 0.2), 200, 340, fill=ink, width=lw * 2)
    elif emotion == "surprised":
        r = s * 0.08
        draw.ellipse((cx - r, my - r, cx + r, my + r * 1.4), outline=ink, width=lw * 2)
    elif emotion == "angry":
        draw.line((cx - mw * 0.8, my + s * 0.04, cx + mw * 0.8, my + s * 0.04), fill=ink,
                  width=lw * 2)
    else:
        raise ValueError(f"unknown emotion '{emotion}'")


# Compass name → angle in degrees, counter-clockwise from "right" (image y grows downwards).
DIRECTIONS = {"right": 0, "up-right": 45, "up": 90, "up-left": 135, "left": 180,
              "down-left": 225, "down": 270, "down-right": 315}


def draw_arrow(draw: ImageDraw.ImageDraw, center: tuple[float, float], length: float,
               direction: str, color, width: int) -> Box:
    """An arrow of `length` pixels centred at `center` pointing `direction`; returns its box."""
    a = math.radians(DIRECTIONS[direction])
    dx, dy = math.cos(a), -math.sin(a)
    cx, cy = center
    tail = (cx - dx * length / 2, cy - dy * length / 2)
    tip = (cx + dx * length / 2, cy + dy * length / 2)
    head = max(width * 2.5, length * 0.3)
    base = (tip[0] - dx * head, tip[1] - dy * head)
    draw.line((tail, base), fill=color, width=width)
    px, py = -dy, dx  # perpendicular
    wing = head * 0.6
    pts = [tip, (base[0] + px * wing, base[1] + py * wing),
           (base[0] - px * wing, base[1] - py * wing)]
    draw.polygon(pts, fill=color)
    xs = [p[0] for p in pts] + [tail[0]]
    ys = [p[1] for p in pts] + [tail[1]]
    return int(min(xs)), int(min(ys)), int(max(xs)), int(max(ys))


def scatter(rng: random.Random, width: int, height: int, n: int, size: int, gap: int = 4,
            margin: int = 4) -> list[Box]:
    """Boxes of side `size` at `n` distinct random grid cells, each jittered inside its cell.

    A grid (rather than rejection sampling) always succeeds and keeps objects apart by at
    least `gap` pixels, which the counting and grounding checks rely on.

    Args:
        rng: the item's random generator.
        width, height: the canvas.
        n: how many boxes.
        size: the side of each box.
        gap: the smallest distance between two boxes.
        margin: kept free along the canvas border.
    Returns:
        n boxes in random order.
    Raises:
        ValueError: when n boxes of that size do not fit.
    """
    cell = size + gap
    cols, rows = (width - 2 * margin + gap) // cell, (height - 2 * margin + gap) // cell
    if cols * rows < n:
        raise ValueError(f"{n} boxes of {size}px do not fit a {width}x{height} canvas")
    # Spread the spare room evenly between cells so jitter can use all of it.
    sx = (width - 2 * margin - cols * size) / max(1, cols)
    sy = (height - 2 * margin - rows * size) / max(1, rows)
    boxes = []
    for c in rng.sample(range(cols * rows), n):
        cx0 = margin + (c % cols) * (size + sx)
        cy0 = margin + (c // cols) * (size + sy)
        x = int(cx0 + rng.uniform(0, max(0.0, sx - gap)))
        y = int(cy0 + rng.uniform(0, max(0.0, sy - gap)))
        boxes.append((x, y, x + size - 1, y + size - 1))
    return boxes


# Canvas shapes the tiling ablation needs: (width factor, height factor) of a base side.
ASPECTS = {"square": (1, 1), "wide": (4, 1), "tall": (1, 3), "landscape": (3, 2)}


def pick_canvas(rng: random.Random, hard: bool, aspects=("square", "landscape", "tall", "wide"),
                small=(96, 160), medium=(256, 512), large=(900, 1600)) -> tuple[int, int]:
    """Choose a canvas size: easy items are small or medium, hard ones medium or large.

    Args:
        rng: the item's random generator.
        hard: whether the item is a hard variant.
        aspects: the allowed aspect names from ASPECTS.
        small, medium, large: ranges of the longer side in pixels.
    Returns:
        (width, height) in pixels.
    """
    aspect = rng.choice(aspects)
    fw, fh = ASPECTS[aspect]
    if hard:
        lo, hi = large if rng.random() < 0.6 else medium
    else:
        lo, hi = small if rng.random() < 0.3 else medium
    long_side = rng.randint(lo, hi)
    k = long_side / max(fw, fh)
    return max(48, int(k * fw)), max(48, int(k * fh))


def draw_bar_chart(img: Image.Image, box: Box, labels: list[str], values: list[int],
                   colors: list, font_size: int, show_values: bool, ymax: int) -> list[Box]:
    """A bar chart with a y axis, gridlines every tenth of `ymax`, and labels under bars.

    Args:
        img: the RGB image to draw on.
        box: the chart's area (axes and labels included).
        labels: one label per bar.
        values: bar heights in data units (0..ymax).
        colors: one RGB colour per bar.
        font_size: the size of labels and tick numbers.
        show_values: write each value above its bar (the easy variant).
        ymax: the top of the y axis.
    Returns:
        The pixel box of each bar.
    """
    draw = ImageDraw.Draw(img)
    x1, y1, x2, y2 = box
    tick_w, _ = text_size(str(ymax), font_size)
    ax0, ay1 = x1 + tick_w + 8, y2 - font_size - 8  # axes origin: room for ticks and labels
    ay0 = y1 + font_size + 4
    step = max(1, ymax // 10)
    for v in range(0, ymax + 1, step):
        y = ay1 - (ay1 - ay0) * v / ymax
        draw.line((ax0, y, x2, y), fill=(215, 215, 215), width=1)
        draw_text(draw, (ax0 - 4, y), str(v), font_size, fill=(60, 60, 60), anchor="rm")
    draw.line((ax0, ay0, ax0, ay1), fill=(0, 0, 0), width=1)
    draw.line((ax0, ay1, x2, ay1), fill=(0, 0, 0), width=1)
    slot = (x2 - ax0) / len(values)
    bars = []
    for i, (label, value, color) in enumerate(zip(labels, values, colors)):
        bx1 = int(ax0 + slot * (i + 0.2))
        bx2 = int(ax0 + slot * (i + 0.8))
        top = min(ay1 - 1, int(round(ay1 - (ay1 - ay0) * value / ymax)))
        draw.rectangle((bx1, top, bx2, ay1 - 1), fill=color)
        bars.append((bx1, top, bx2, ay1 - 1))
        draw_text(draw, ((bx1 + bx2) / 2, ay1 + 4), label, font_size, anchor="mt")
        if show_values:
            draw_text(draw, ((bx1 + bx2) / 2, top - 2), str(value), font_size, anchor="mb")
    return bars
