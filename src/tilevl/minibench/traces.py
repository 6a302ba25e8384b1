"""Step-by-step reasoning traces for MiniBench items, written from the generator's own facts.

A generator knows what it drew (the count, the bar values, the written sum, where each shape
is), so it can also write the reasoning that reaches the answer: "I count the red circles
one by one: 1, 2, 3. There are 3 red circles." `reasoning_trace(item)` returns those steps
and their conclusion in words; `cot_reply` adds the final line the CoT prompt asks for
("Answer: B"). The training split carries them as chain-of-thought records
(`tilevl.minibench.generate`, `traces=True`), so a model can learn to reason before answering
and majority voting over sampled traces has something to vote on.

Every trace ends with "So the answer is <the right option's text>." and states only what the
image shows: no trace copies the answer from a fact the pixels do not carry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tilevl.minibench.items import LETTERS, Item, Obj
from tilevl.minibench.single import plural

# Facts a trace names in words (the generators' tables, restated as observations).
_STYLE_SEEN = {"filled": "each shape is filled with one solid colour",
               "outline": "each shape is drawn only by its outline, in a solid line",
               "dotted": "each shape's outline is drawn with separate dots",
               "pixelated": "the edges are made of large square blocks"}
_QUALITY_SEEN = {"clean": "the edges are sharp and the background is smooth",
                 "blurred": "the edges are soft and smeared",
                 "noisy": "black and white specks are scattered over the whole image"}
_TOPIC_SEEN = {"chart": "bars standing on an axis", "face": "a round face with eyes and a mouth",
               "text": "lines of words", "landscape": "a sky above the ground",
               "shapes": "coloured geometric shapes"}
_EMOTION_SEEN = {"happy": "the mouth curves up in a smile", "sad": "the mouth curves down",
                 "surprised": "the mouth is a round O and the eyes are wide",
                 "angry": "the eyebrows slant down toward the nose"}
_CONTACT_SEEN = {"overlap": "one square covers part of the other",
                 "touch": "their edges meet with no gap between them, and neither covers the other",
                 "separate": "there is a strip of background between them"}


def _center(box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _side(obj: Obj, width: int, height: int) -> str:
    """Where an object's centre lies: "the top left", "the bottom right", …"""
    x, y = _center(obj.box)
    return f"the {'top' if y < height / 2 else 'bottom'} {'left' if x < width / 2 else 'right'}"


def _counting(n: int) -> str:
    """"1, 2, 3" up to 12, then the tens the count passes ("1, 2, … 10, … 17")."""
    if n <= 12:
        return ", ".join(str(i) for i in range(1, n + 1))
    return ", ".join(str(i) for i in range(1, 11)) + f", and on to {n}"


# ---- one function per category: the observations, as a list of sentences -----------------------
def _style(item: Item) -> list[str]:
    return [f"I look at how the shapes are drawn: {_STYLE_SEEN[item.meta['style']]}."]


def _quality(item: Item) -> list[str]:
    return [f"I look at the edges and the background: {_QUALITY_SEEN[item.meta['quality']]}."]


def _emotion(item: Item) -> list[str]:
    return [f"I look at the face: {_EMOTION_SEEN[item.meta['emotion']]}."]


def _scene(item: Item) -> list[str]:
    return [f"I look at the colours and the ground: the picture is {item.caption[0].lower()}"
            f"{item.caption[1:-1]}."]


def _topic(item: Item) -> list[str]:
    return [f"Most of the image is taken up by {_TOPIC_SEEN[item.meta['topic']]}."]


def _color(item: Item) -> list[str]:
    o = item.objects[0]
    return [f"I find the {o.name} in {_side(o, *item.image.size)} of the image.",
            f"Its fill is {o.color}."]


def _shape(item: Item) -> list[str]:
    o = item.objects[0]
    where = f"The {o.color} object is in {_side(o, *item.image.size)} of the image."
    return [where, f"Its outline is that of a {o.name}."]


def _pattern(item: Item) -> list[str]:
    o = item.objects[0]
    pattern = item.meta["pattern"]
    return [f"I find the {o.color} {o.name} in {_side(o, *item.image.size)} of the image.",
            f"Its inside is {pattern}."]


def _count(item: Item) -> list[str]:
    n, color, shape = item.meta["count"], item.meta["color"], item.meta["shape"]
    noun = f"{color} {shape if n == 1 else plural(shape)}"
    return [f"I look for {color} {plural(shape)} and leave out shapes of other colours.",
            f"I count them one by one: {_counting(n)}.",
            f"There {'is' if n == 1 else 'are'} {n} {noun}."]


def _localization(item: Item) -> list[str]:
    o = item.objects[0]
    x, y = _center(o.box)
    w, h = item.image.size
    return [f"I find {o.phrase}.",
            f"It lies in the {'left' if x < w / 2 else 'right'} half and the "
            f"{'top' if y < h / 2 else 'bottom'} half of the image."]


def _ocr(item: Item) -> list[str]:
    kind = "number" if item.meta["text"].isdigit() else "word"
    where = "" if not item.hard else f" among other words, in {item.meta['color']}"
    return [f"I find the {kind} written{where}.", f"I read it letter by letter: "
            f"{' '.join(item.meta['text'])}.", f"It reads \"{item.meta['text']}\"."]


def _arrow(item: Item) -> list[str]:
    d = item.meta["direction"]
    which = "the red arrow" if item.hard else "the arrow"
    end = d.replace("up", "top").replace("down", "bottom").replace("-", " ")
    return [f"I find {which} and its pointed head.", f"The head is at the {end} end, so it "
            f"points {d}."]


def _spatial(item: Item) -> list[str]:
    a, b = item.objects[:2]
    (ax, ay), (bx, by) = _center(a.box), _center(b.box)
    if item.meta["relation"] in ("to the left", "to the right"):
        first = "further left" if ax < bx else "further right"
        return [f"I find {a.phrase} and {b.phrase}.",
                f"They are at about the same height; {a.phrase} is {first}."]
    first = "higher" if ay < by else "lower"
    return [f"I find {a.phrase} and {b.phrase}.",
            f"They are in about the same column; {a.phrase} is {first}."]


def _size(item: Item) -> list[str]:
    a, b = item.objects[:2]
    wa, wb = a.box[2] - a.box[0] + 1, b.box[2] - b.box[0] + 1
    big, small = (a, b) if wa >= wb else (b, a)
    return [f"I compare {a.phrase} and {b.phrase}.",
            f"{big.phrase.capitalize()} is wider and taller than {small.phrase}."]


def _fill(item: Item) -> list[str]:
    level = item.meta["level"]
    if level == 0:
        seen = "There is no liquid in the glass."
    elif level == 1:
        seen = "The liquid reaches the rim of the glass."
    else:
        seen = (f"The liquid reaches {_fraction(level)} of the way from the bottom of the glass "
                "to its rim.")
    return ["I look at the glass and the liquid in it.", seen]


def _fraction(level: float) -> str:
    return {0.25: "a quarter", 0.5: "half", 0.75: "three quarters"}[level]


def _function(item: Item) -> list[str]:
    drawn = item.meta["drawn"]
    named = [f"{'an' if n[0] in 'aeiou' else 'a'} {n}" for n in drawn]
    listed = ", ".join(named[:-1]) + f" and {named[-1]}" if len(named) > 1 else named[0]
    return [f"The image shows {listed}.",
            f"To {item.meta['use']} you would use the {drawn[0]}."]


def _contact(item: Item) -> list[str]:
    a, b = item.objects[:2]
    return [f"I look at where {a.phrase} and {b.phrase} meet.",
            f"I see that {_CONTACT_SEEN[item.meta['contact']]}."]


def _connection(item: Item) -> list[str]:
    colors, edges = item.meta["colors"], item.meta["edges"]
    partner = next(j if i == 0 else i for i, j in edges if 0 in (i, j))
    return [f"I find the {colors[0]} node and follow the line that leaves it.",
            f"The line ends at the {colors[partner]} node."]


def _panel(step: Sequence) -> str:
    what, a, color, _ = step
    if what == "shape":
        return f"a {color} {a}"
    if what == "arrow":
        return f"an arrow pointing {a}"
    return f"{a} dots"


def _future(item: Item) -> list[str]:
    kind, steps = item.meta["kind"], item.meta["steps"]
    seen = ", ".join(_panel(s) for s in steps)
    if kind == "size":
        grows = steps[-1][3] > steps[0][3]
        rule = f"each picture is {'larger' if grows else 'smaller'} than the one before"
    else:
        rule = {"color": "the colours repeat in a cycle", "shape": "the shapes repeat in a cycle",
                "count": "each picture has one dot more than the one before",
                "rotate": "the arrow turns a quarter turn each time"}[kind]
        seen = seen if kind != "count" else ", ".join(f"{s[1]} dots" for s in steps)
    return [f"From left to right I see {seen}.", f"The rule is that {rule}."]


def _chart(item: Item) -> list[str]:
    labels, values = item.meta["labels"], item.meta["values"]
    bars = ", ".join(f"{name} {value}" for name, value in zip(labels, values))
    name = item.meta["asked"]
    if name is None:  # which bar is highest
        best = labels[values.index(max(values))]
        return [f"I read each bar against the axis: {bars}.",
                f"The highest value is {max(values)}, the {best} bar."]
    return [f"I find the {name} bar and read its top against the axis.",
            f"It reaches {values[labels.index(name)]}."]


def _math(item: Item) -> list[str]:
    text, value = item.meta["text"], item.meta["value"]
    expression = text.replace(" = ?", "")
    steps = [f'I read the calculation "{text}".']
    a, op, b = expression.split()
    if op == "+" and int(a) >= 10:
        tens, ones = (int(a) // 10 + int(b) // 10) * 10, int(a) % 10 + int(b) % 10
        steps.append(f"{a} + {b}: the tens make {tens}, the ones make {ones}, together {value}.")
    elif op == "-":
        steps.append(f"{a} - {b} = {value}.")
    elif op == "x":
        steps.append(f"{a} x {b}: {int(a) // 10 * 10} x {b} = {int(a) // 10 * 10 * int(b)}, "
                     f"{int(a) % 10} x {b} = {int(a) % 10 * int(b)}, together {value}.")
    else:
        steps.append(f"{a} + {b} = {value}.")
    return steps


TRACES: dict[str, Callable[[Item], list[str]]] = {
    "image_style": _style, "image_quality": _quality, "image_emotion": _emotion,
    "image_scene": _scene, "image_topic": _topic, "color_recognition": _color,
    "shape_recognition": _shape, "attribute_recognition": _pattern, "object_counting": _count,
    "object_localization": _localization, "ocr": _ocr, "arrow_direction": _arrow,
    "spatial_relationship": _spatial, "attribute_comparison": _size,
    "physical_property_reasoning": _fill, "function_reasoning": _function,
    "physical_relation": _contact, "connection_relation": _connection,
    "future_prediction": _future, "chart_reading": _chart, "math_reasoning": _math,
}


def reasoning_trace(item: Item) -> str:
    """The steps from the image to the answer, ending "So the answer is <option text>."

    Args:
        item: a MiniBench item (from `make_item`).
    Returns:
        One line of sentences.
    Raises:
        KeyError: for a category without a trace, naming it.
    """
    if item.category not in TRACES:
        raise KeyError(f"no reasoning trace for MiniBench category '{item.category}'")
    return " ".join(TRACES[item.category](item) + [f"So the answer is {item.answer_text}."])


def cot_reply(trace: str, options: Sequence[str], answer: int, letters: bool = True) -> str:
    """A chain-of-thought reply: the trace, then the line the CoT prompt asks for.

    Args:
        trace: `reasoning_trace(item)` (its conclusion names the option's text).
        options: the options in the order the prompt shows them.
        answer: the right option's index among them.
        letters: end with "Answer: <letter>" (MMBench's format); False: "Answer: <text>".
    """
    return f"{trace}\nAnswer: {LETTERS[answer] if letters else options[answer]}"


def number_trace(item: Item) -> str:
    """The trace of an open (VQA) question, ending "So the answer is <first reference>."

    The multiple-choice trace's observations already reach the value; only the conclusion
    names the open answer instead of an option.
    """
    steps = TRACES[item.category](item)
    return " ".join(steps + [f"So the answer is {item.open_answers[0]}."])


__all__ = ["TRACES", "cot_reply", "number_trace", "reasoning_trace"]
