"""The Item record every MiniBench generator returns, and the helpers that build its options.

An item is one image plus a multiple-choice question about it; open-answer categories
also carry reference answers, and object-based scenes carry named boxes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from PIL import Image

from tilevl.minibench.draw import Box

LETTERS = "ABCD"

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                "seventeen", "eighteen", "nineteen", "twenty")

# Short common words for OCR: real words let a language model's prior help on easy items;
# hard items pick distractors one letter away so that only the pixels decide.
WORDS = (
    "apple", "river", "stone", "light", "house", "green", "water", "table", "chair", "plant",
    "cloud", "bread", "music", "paper", "dream", "night", "ocean", "smile", "tiger", "horse",
    "train", "glass", "sugar", "bride", "candle", "garden", "silver", "planet", "rocket",
    "window", "forest", "butter", "winter", "summer", "market", "pencil", "mirror", "island",
    "castle", "bridge", "yellow", "orange", "purple", "basket", "monkey", "rabbit", "turtle",
    "spring", "flower", "doctor", "camera", "violin", "ticket", "jacket", "pocket", "rubber",
    "copper", "marble", "harbor", "valley", "meadow", "lemon", "melon", "grape", "peach",
    "sword", "crown", "chalk", "brush", "storm", "frost", "flame", "cabin", "lodge", "ridge",
)


@dataclass
class Obj:
    """One drawn object a question can refer to.

    Attributes:
        name: the object noun ("circle", "tree").
        color: the colour name, or "" for objects whose colour is fixed ("tree").
        box: its bounding box in pixels.
    """

    name: str
    color: str
    box: Box

    @property
    def phrase(self) -> str:
        """How a question names it: "the red circle" or "the tree"."""
        return f"the {self.color} {self.name}" if self.color else f"the {self.name}"


@dataclass
class Item:
    """One benchmark item.

    Attributes:
        category: the category name (a key of CATEGORIES).
        image: the RGB image.
        question: the multiple-choice question.
        options: 2 to 4 distinct option texts, in display order.
        answer: the index of the right option.
        hint: context shown before the question (MMBench's hint column), often "".
        hard: whether this is the hard variant.
        open_question: the same question asked for a free-form answer, or None.
        open_answers: reference answers to open_question ("7", "seven").
        objects: named drawn objects (for existence and grounding questions).
        caption: a one-sentence description of the image.
        meta: generator facts a check can recompute from the pixels (the rendered text and
            where, the count, the chart's values, …).
    """

    category: str
    image: Image.Image
    question: str
    options: list[str]
    answer: int
    hint: str = ""
    hard: bool = False
    open_question: str | None = None
    open_answers: list[str] = field(default_factory=list)
    objects: list[Obj] = field(default_factory=list)
    caption: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def answer_letter(self) -> str:
        """The letter of the right option."""
        return LETTERS[self.answer]

    @property
    def answer_text(self) -> str:
        """The text of the right option."""
        return self.options[self.answer]


def make_options(rng: random.Random, correct: str, distractors,
                 n: int = 4) -> tuple[list[str], int]:
    """Shuffle the right answer among `n - 1` distinct distractors.

    Args:
        rng: the item's random generator.
        correct: the right answer.
        distractors: candidate wrong answers (duplicates and `correct` are dropped).
        n: the number of options, 2 to 4.
    Returns:
        (options, index of the right one); the index is uniform over the n slots.
    Raises:
        ValueError: when there are too few distinct distractors.
    """
    pool = [d for d in dict.fromkeys(distractors) if d != correct]
    if len(pool) < n - 1:
        raise ValueError(f"need {n - 1} distractors for '{correct}', got {pool}")
    options = rng.sample(pool, n - 1)
    slot = rng.randrange(n)
    options.insert(slot, correct)
    return options, slot


def number_distractors(rng: random.Random, value: int, lo: int = 0, spread: int = 3) -> list[int]:
    """Nearby wrong numbers (value ± 1..spread, at least `lo`), closest first in random order."""
    near = [value + d for d in range(-spread, spread + 1) if d and value + d >= lo]
    rng.shuffle(near)
    near.sort(key=lambda v: abs(v - value))
    return near


def number_answers(value: int) -> list[str]:
    """Reference answers for a count: the digits, and the word when it is short."""
    out = [str(value)]
    if 0 <= value < len(NUMBER_WORDS):
        out.append(NUMBER_WORDS[value])
    return out


def similar_words(word: str, rng: random.Random, n: int = 3) -> list[str]:
    """Strings one letter away from `word` (a changed letter), `n` distinct ones.

    Args:
        word: the word rendered in the image.
        rng: the item's random generator.
        n: how many to return.
    Returns:
        n distinct strings, none equal to `word`.
    """
    out: list[str] = []
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    while len(out) < n:
        i = rng.randrange(len(word))
        c = rng.choice(alphabet.replace(word[i], ""))
        cand = word[:i] + c + word[i + 1:]
        if cand not in out:
            out.append(cand)
    return out


def join_names(names: list[str]) -> str:
    """"a, b and c" for captions."""
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]
