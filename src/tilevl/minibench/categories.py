"""The MiniBench category table (MMBench's ability dimensions) and `make_item` for one item.

Categories are grouped under MMBench's six L2 groups, spelled exactly as MMBench's TSV
`l2-category` column spells them so that its per-group scoring code works unchanged.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from tilevl.minibench import coarse, reasoning, single
from tilevl.minibench.items import Item

COARSE = "coarse_perception"
SINGLE = "finegrained_perception (instance-level)"
CROSS = "finegrained_perception (cross-instance)"
ATTRIBUTE = "attribute_reasoning"
RELATION = "relation_reasoning"
LOGIC = "logic_reasoning"
L2_GROUPS = (COARSE, SINGLE, CROSS, ATTRIBUTE, RELATION, LOGIC)


@dataclass(frozen=True)
class Category:
    """One ability dimension.

    Attributes:
        name: the category key ("object_counting").
        l2: its MMBench L2 group.
        description: what is asked, in the easy and the hard variant.
        open_form: whether items also carry a free-form question and reference answers.
    """

    name: str
    l2: str
    description: str
    open_form: bool = False


CATEGORIES: dict[str, Category] = {c.name: c for c in (
    Category("image_style", COARSE, "drawing style (filled / outline / dotted / pixel art); "
             "hard: thin lines, fine blocks, large canvas"),
    Category("image_quality", COARSE, "clean, blurred or noisy (3 options); hard: faint "
             "blur/noise"),
    Category("image_emotion", COARSE, "a cartoon face's expression; hard: small face among "
             "clutter"),
    Category("image_scene", COARSE, "beach / meadow / night / desert / snow; hard: thumbnails "
             "and banners"),
    Category("image_topic", COARSE, "chart / face / text page / landscape / shapes; hard: an "
             "inset of another topic"),
    Category("color_recognition", SINGLE, "colour of a shape; hard: small target among "
             "distractors"),
    Category("shape_recognition", SINGLE, "name of a shape; hard: 'the red object' among others"),
    Category("attribute_recognition", SINGLE, "fill pattern (plain / striped / dotted / "
             "checkered); hard: fine pattern on a small shape"),
    Category("object_counting", SINGLE, "how many objects of a colour and shape (1-6); hard: 7-20 "
             "small ones among same-shape look-alikes", open_form=True),
    Category("object_localization", SINGLE, "which quadrant holds an object; hard: small, with "
             "distractors"),
    Category("ocr", SINGLE, "read a word or number; hard: small text in a 4:1 banner among other "
             "words, one-letter-off distractors", open_form=True),
    Category("arrow_direction", SINGLE, "where an arrow points (4 ways); hard: 8 ways, small red "
             "arrow among grey ones"),
    Category("spatial_relationship", CROSS, "left / right / above / below of two objects; hard: "
             "small, with distractors"),
    Category("attribute_comparison", CROSS, "which of two shapes is larger (2 options); hard: "
             "8-20 % size difference"),
    Category("physical_property_reasoning", ATTRIBUTE, "how full a glass is; hard: small glass"),
    Category("function_reasoning", ATTRIBUTE, "which drawn object serves a purpose; hard: more, "
             "smaller icons"),
    Category("physical_relation", RELATION, "two squares overlap / touch / are apart (3 options); "
             "hard: 3-5 px overlaps and gaps"),
    Category("connection_relation", RELATION, "which node a line joins to a named node; hard: "
             "6-8 nodes, thin lines"),
    Category("future_prediction", LOGIC, "what comes next in a row of pictures; hard: longer "
             "rows of small panels"),
    Category("chart_reading", LOGIC, "highest bar or a bar's value (structured image-text); hard: "
             "no value labels, 5-7 bars, small text", open_form=True),
    Category("math_reasoning", LOGIC, "result of a written sum; hard: two-digit operands, small "
             "text in a large canvas", open_form=True),
)}

_GENERATORS: dict[str, Callable[[random.Random, bool], Item]] = {
    **coarse.GENERATORS, **single.GENERATORS, **reasoning.GENERATORS}
assert set(_GENERATORS) == set(CATEGORIES), set(_GENERATORS) ^ set(CATEGORIES)

_LAYOUT_RETRIES = 20
OPEN_CATEGORIES = tuple(name for name, c in CATEGORIES.items() if c.open_form)


def make_item(category: str, rng: random.Random | int, *, hard: bool = False) -> Item:
    """Draw one item of `category`.

    Args:
        category: a key of CATEGORIES.
        rng: a `random.Random` (consumed) or an int seed.
        hard: draw the hard variant.
    Returns:
        The Item: image, question, options, answer index (and open answers, objects, …).
    Raises:
        KeyError: for an unknown category, naming the known ones.
        RuntimeError: when 20 draws in a row fail to lay out (a generator bug).
    """
    if category not in _GENERATORS:
        raise KeyError(f"unknown MiniBench category '{category}'; known: {', '.join(CATEGORIES)}")
    if not isinstance(rng, random.Random):
        rng = random.Random(rng)
    for _ in range(_LAYOUT_RETRIES):
        try:
            item = _GENERATORS[category](rng, hard)
        except ValueError as exc:  # a rare draw whose objects do not fit; the rng has moved on
            error = exc
            continue
        item.hard = hard
        return item
    raise RuntimeError(
        f"MiniBench '{category}' failed to lay out {_LAYOUT_RETRIES} times") from error


def resolve_categories(names=None) -> list[str]:
    """Validate a user's category selection (None means all), keeping the table's order.

    Args:
        names: category names, or L2 group names that stand for all their categories.
    Returns:
        The selected category names.
    Raises:
        KeyError: naming the first unknown entry.
    """
    if names is None:
        return list(CATEGORIES)
    chosen = set()
    for name in names:
        if name in CATEGORIES:
            chosen.add(name)
        elif name in L2_GROUPS:
            chosen.update(n for n, c in CATEGORIES.items() if c.l2 == name)
        else:
            raise KeyError(f"unknown MiniBench category '{name}'; known: {', '.join(CATEGORIES)} "
                           f"or an L2 group: {', '.join(L2_GROUPS)}")
    return [n for n in CATEGORIES if n in chosen]
