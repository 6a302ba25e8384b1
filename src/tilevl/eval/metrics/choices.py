"""Reading a chosen option (or an open answer) out of free model text.

Generic letter/text extraction for MCQ benchmarks and MMMU's own published parsers.
"""

from __future__ import annotations

import random
import re

# --- generic multiple choice ----------------------------------------------------------
# Source: open-compass/VLMEvalKit vlmeval/utils/matching_util.py (`can_infer_option`,
# `can_infer_text`, `can_infer`, as of commit e8e78f0): the exact-matching stage that runs
# before any LLM judge. The rules below are that code's, one for one; what each returns is
# what `can_infer` returns, with upstream's `False` written as None.
_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
# A judge reply that says the API failed is never read as a letter (only as option text).
_API_FAILURE = "Failed to obtain answer via API"
_OPTION_SEPARATORS = ".()[],:;!*#{}"
# A lone letter counts only when it is among the last this-many tokens: "The answer is B"
# reads as B, "B because the animal barks" does not.
_LAST_TOKENS = 4
# "The correct answer is **B**", "answer is b": case-insensitive, A–D only, and (as upstream)
# with no word boundary after the letter, so "the answer is a cat" reads as A.
_ANSWER_IS = re.compile(r"(?:correct\s+)?answer\s+is\s+\**([ABCD])\**", re.IGNORECASE)
NONE_OF_THE_OPTIONS = "Z"


def infer_option_letter(prediction: str, letters: list[str]) -> str | None:
    """VLMEvalKit's `can_infer_option`: the option letter a reply states, "Z", or None.

    After `.()[],:;!*#{}` become spaces the reply is split into tokens. Exactly one option
    letter among the tokens, with its first occurrence among the last four tokens, is the
    choice. No option letter but a lone "Z" token gives "Z" (none of the options); so do
    the four canned refusals. Otherwise "answer is X" (any case, X in A–D and an option)
    decides. VLMEvalKit's extra guard against the article "A" runs only with VERBOSE set,
    so (as by default there) "A cat" reads as option A.

    Args:
        prediction: the model's reply.
        letters: the option letters, e.g. ["A", "B", "C", "D"].

    Returns:
        A letter of `letters`, "Z", or None.
    """
    if _API_FAILURE in prediction:
        return None
    if any(refusal in prediction for refusal in _REFUSALS):
        return NONE_OF_THE_OPTIONS
    text = prediction
    for char in _OPTION_SEPARATORS:
        text = text.replace(char, " ")
    tokens = text.split()
    found = [letter for letter in letters if letter in tokens]
    if len(found) == 1:
        if tokens.index(found[0]) >= len(tokens) - _LAST_TOKENS:
            return found[0]
    elif not found and NONE_OF_THE_OPTIONS in tokens:
        return NONE_OF_THE_OPTIONS
    match = _ANSWER_IS.search(prediction)
    if match and match.group(1).upper() in letters:
        return match.group(1).upper()
    return None


def infer_option_text(prediction: str, options: dict[str, str]) -> str | None:
    """VLMEvalKit's `can_infer_text`: the one option whose text the reply contains, or None.

    Case-insensitive substring match, refused outright when the reply is more than twice
    as long (in characters) as all option texts together: a long explanation mentions
    several options in passing and is left to the judge.

    Args:
        prediction: the model's reply.
        options: option letter → option text.

    Returns:
        The letter of the only option text found, or None.
    """
    lowered = prediction.lower()
    if len(lowered) > 2 * sum(len(str(text)) for text in options.values()):
        return None
    found = [letter for letter, text in options.items() if str(text).lower() in lowered]
    return found[0] if len(found) == 1 else None


def extract_choice(prediction: str, options: dict[str, str]) -> str | None:
    """Which option a free-text answer picks: VLMEvalKit's `can_infer`.

    The option letter is tried first (`infer_option_letter`), then the option texts
    (`infer_option_text`). "Z" means the reply was read and picks none of the options
    (a refusal, or "Z" itself): upstream scores it wrong and never sends it to the judge.
    None means unreadable: upstream sends it to the judge when there is one, else scores
    it wrong.

    Args:
        prediction: the model's answer (None reads as "").
        options: option letter → option text, e.g. `{"A": "cat", "B": "dog"}`.

    Returns:
        The chosen letter, "Z", or None.
    """
    prediction = "" if prediction is None else str(prediction)
    options = {str(k): v for k, v in options.items()}
    letter = infer_option_letter(prediction, list(options))
    return letter if letter is not None else infer_option_text(prediction, options)


# --- MMMU multiple choice -------------------------------------------------------------
# Source: MMMU-Benchmark/MMMU eval/eval_utils.py `parse_multi_choice_response`.
def parse_mmmu_choice(
    response: str, all_choices: list[str], index2ans: dict[str, str], seed: str = ""
) -> tuple[str, bool]:
    """MMMU's multiple-choice parser, also saying whether it had to guess.

    Order, as upstream: "(A)" forms; then " A " as a word; then (only for responses longer
    than 5 words) option texts; with several candidates the one occurring last wins. With
    none, upstream draws `random.choice` from a generator seeded once with 42 for the whole
    run, so its pick depends on every earlier guess. We instead seed a fresh generator with
    the string `"mmmu:" + seed + ":" + response`, which gives the same pick on every run and
    machine for the same question (the caller passes the question id as `seed`).

    Args:
        response: the model's answer.
        all_choices: the option letters, e.g. ["A", "B", "C", "D"].
        index2ans: option letter → option text.
        seed: a per-question string that makes the fallback pick reproducible.

    Returns:
        `(letter, guessed)`; `guessed` is True when the random fallback chose the letter.
    """
    for char in [",", ".", "!", "?", ";", ":", "'"]:
        response = response.strip(char)
    response = " " + response + " "  # spaces avoid partial matches, as upstream

    index_ans, ans_with_brack = True, False
    candidates = [c for c in all_choices if f"({c})" in response]
    if candidates:
        ans_with_brack = True
    else:
        candidates = [c for c in all_choices if f" {c} " in response]
    if not candidates and len(response.split()) > 5:
        candidates = [i for i, ans in index2ans.items() if str(ans).lower() in response.lower()]
        index_ans = not candidates

    if not candidates:
        rng = random.Random(f"mmmu:{seed}:{response}")
        return rng.choice(list(all_choices)), True
    if len(candidates) == 1:
        return candidates[0], False
    if index_ans and ans_with_brack:
        starts = [response.rfind(f"({c})") for c in candidates]
    elif index_ans:
        starts = [response.rfind(f" {c} ") for c in candidates]
    else:
        starts = [response.lower().rfind(str(index2ans[c]).lower()) for c in candidates]
    # np.argmax semantics: the first candidate among equal maxima.
    return candidates[starts.index(max(starts))], False


def parse_multi_choice_response(
    response: str, all_choices: list[str], index2ans: dict[str, str], seed: str = ""
) -> str:
    """MMMU's `parse_multi_choice_response` with a reproducible fallback (see `parse_mmmu_choice`).

    Args:
        response: the model's answer.
        all_choices: the option letters.
        index2ans: option letter → option text.
        seed: a per-question string for the fallback pick.

    Returns:
        The predicted letter (never None: MMMU always guesses).
    """
    return parse_mmmu_choice(response, all_choices, index2ans, seed)[0]


# --- MMMU open questions --------------------------------------------------------------
# Source: MMMU-Benchmark/MMMU eval/eval_utils.py (`check_is_number`, `normalize_str`,
# `extract_numbers`, `parse_open_response`, `eval_open`).
def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
        return True
    except ValueError:
        return False


def normalize_mmmu_str(text: str) -> list:
    """MMMU normalisation: numbers → float rounded to 2 places; strings lower-cased.

    Args:
        text: an answer fragment.

    Returns:
        A one-element list, or two padded forms for a one-character string (upstream pads
        single letters with a space to avoid trivial substring matches).
    """
    text = text.strip()
    if _is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    if len(text) == 1:
        return [" " + text, text + " "]
    return [text]


_NUM_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_NUM_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
_NUM_SIMPLE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])")


def extract_numbers(text: str) -> list[str]:
    """All numbers in a text: with thousands commas, scientific, then plain (MMMU's order).

    Args:
        text: a response fragment.

    Returns:
        The number strings found.
    """
    return _NUM_COMMAS.findall(text) + _NUM_SCIENTIFIC.findall(text) + _NUM_SIMPLE.findall(text)


_KEY_INDICATORS = ["could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result "]


def _key_subresponses(response: str) -> list[str]:
    response = response.strip().strip(".").lower()
    # Upstream lower-cases before splitting on ". " + capital letter, so in practice only
    # newlines split; kept as published.
    parts = re.split(r"\.\s(?=[A-Z])|\n", response)
    keys = []
    for index, part in enumerate(parts):
        indicators = _KEY_INDICATORS + (["="] if index == len(parts) - 1 else [])
        shortest = None
        for indicator in indicators:
            if indicator in part:
                tail = part.split(indicator)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in [":", ",", ".", "!", "?", ";", ":", "'"]:
            keys.append(shortest)
    return keys or [response]


def parse_open_response(response: str) -> list:
    """MMMU's open-question parser: candidate strings and numbers, normalised.

    Args:
        response: the model's answer.

    Returns:
        The de-duplicated normalised candidates (floats and lower-case strings).
    """
    keys = _key_subresponses(response)
    candidates = list(keys)
    for key in keys:
        candidates.extend(extract_numbers(key))
    normalised = []
    for candidate in candidates:
        normalised.extend(normalize_mmmu_str(candidate))
    return list(dict.fromkeys(normalised))


def eval_open(gold, parsed: list) -> bool:
    """MMMU open-question check: a gold string inside a parsed string, or an equal number.

    Args:
        gold: the gold answer or a list of gold answers.
        parsed: the output of `parse_open_response`.

    Returns:
        Whether the answer counts as correct.
    """
    golds = gold if isinstance(gold, list) else [gold]
    norm_answers = []
    for answer in golds:
        norm_answers.extend(normalize_mmmu_str(str(answer)))
    for pred in parsed:
        if isinstance(pred, str):
            if any(isinstance(a, str) and a in pred for a in norm_answers):
                return True
        elif pred in norm_answers:
            return True
    return False
