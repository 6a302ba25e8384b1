"""Hand-worked checks of the per-answer rules: VQA normalisation and accuracy, ANLS, ChartQA.

Expected numbers are computed by hand in the comments, following the cited official scripts.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tilevl.eval.metrics import (
    anls,
    exact_match,
    gqa_match,
    levenshtein,
    normalize_vqa_answer,
    ocrbench_match,
    relaxed_correctness,
    vqa_accuracy,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Ten", "10"),              # manual map: number words → digits
        ("ten dogs.", "10 dogs"),   # trailing period stripped, "ten" mapped
        ("A dog", "dog"),           # articles dropped
        ("The  Cat ", "cat"),       # lower-cased, whitespace collapsed
        ("1,000", "1000"),          # comma between digits: every mark deleted, not spaced
        ("t/shirt", "t shirt"),     # mark not next to a space becomes a space
        ("yes, it is", "yes it is"),  # mark next to a space is deleted
        ("2.5", "2.5"),             # a period before a digit is kept
        ("dont", "don’t"),          # contractions table (curly apostrophe as published)
        ("none", "0"),
    ],
)
def test_vqa_normalisation(raw, expected):
    assert normalize_vqa_answer(raw) == expected


def test_vqa_ten_matches_10():
    assert vqa_accuracy("ten", ["10"] * 10) == 1.0
    assert vqa_accuracy("Ten.", ["10"] * 10) == 1.0


@pytest.mark.parametrize(("agree", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0)])
def test_vqa_leave_one_out_by_agreement(agree, expected):
    # m of 10 humans said "red". Leaving out one of the m matching answers leaves m-1
    # matches, leaving out one of the 10-m others leaves m; each subset scores min(k/3, 1):
    #   m=1: (1·0     + 9·1/3) / 10 = 3/10 = 0.3
    #   m=2: (2·1/3   + 8·2/3) / 10 = 6/10 = 0.6
    #   m=3: (3·2/3   + 7·1)   / 10 = 9/10 = 0.9
    #   m=4: (4·1     + 6·1)   / 10 = 1.0
    answers = ["red"] * agree + ["blue"] * (10 - agree)
    assert vqa_accuracy("Red", answers) == pytest.approx(expected)


def test_vqa_fewer_than_ten_answers():
    assert vqa_accuracy("cat", ["cat"]) == 1.0  # one answer: exact match
    assert vqa_accuracy("dog", ["cat"]) == 0.0
    # two answers, both "cat": each leave-one-out subset has 1 match → 1/3
    assert vqa_accuracy("cat", ["cat", "cat"]) == pytest.approx(1 / 3)
    assert vqa_accuracy("cat", []) == 0.0


def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("same", "same") == 0


def test_anls_near_miss_and_threshold():
    # "hello wrld" vs "hello world": 1 edit / max(10, 11) chars → 1 - 1/11
    assert anls("hello wrld", ["hello world"]) == pytest.approx(1 - 1 / 11)
    assert anls(" Hello  World ", ["hello world"]) == 1.0  # case and spacing ignored
    assert anls("ab", ["ac"]) == 0.5                      # exactly at the threshold: kept
    assert anls("abc", ["xyz"]) == 0.0                    # similarity 0 < 0.5 → 0
    assert anls("abcd", ["axyd"]) == 0.5                  # 2/4 edits → 0.5 kept
    assert anls("abcde", ["axyzd"]) == 0.0                # 3/5 edits → 0.4 → 0
    assert anls("hello wrld", ["nope", "hello world"]) == pytest.approx(1 - 1 / 11)  # max
    assert anls("x", "x") == 1.0                          # a bare string is one answer


def test_relaxed_correctness_relative_to_gold():
    # |95.2 - 100| / 100 = 0.048 ≤ 0.05 → correct relative to the gold value...
    assert relaxed_correctness("100", "95.2")
    # ...but InternVL's swapped call measures against the prediction: 4.8 / 95.2 = 0.0504
    assert not relaxed_correctness("95.2", "100")
    assert relaxed_correctness("100", "105")
    assert not relaxed_correctness("100", "106")


def test_relaxed_correctness_edge_cases():
    assert relaxed_correctness("0", "0")         # gold 0: exact string match
    assert not relaxed_correctness("0", "0.0")   # ... so "0.0" misses, as upstream
    assert not relaxed_correctness("0", "0.01")
    assert relaxed_correctness("0.45", "45%")    # percent sign divides by 100
    assert not relaxed_correctness("45", "45%")
    assert relaxed_correctness("Yes", "yes")     # non-numbers: case-insensitive exact
    assert not relaxed_correctness("Yes", "yes.")


def test_exact_match_rules():
    assert gqa_match("Yes.", ["yes"]) == 1.0       # GQA drops trailing periods
    assert gqa_match("left side", "left") == 0.0
    assert exact_match(" Harry Potter ", ["harry potter"]) == 1.0
    assert exact_match("Harry Potter.", ["harry potter"]) == 0.0  # OCR-VQA keeps periods


def test_ocrbench_containment():
    assert ocrbench_match("It says HELLO world", ["hello"]) == 1.0
    assert ocrbench_match("It says help", ["hello"]) == 0.0
    # HME100k: spaces removed on both sides, case kept
    assert ocrbench_match("The formula is x^{2}+1", ["x ^ { 2 } + 1"], "HME100k") == 1.0
    assert ocrbench_match("X^{2}+1", ["x ^ { 2 } + 1"], "HME100k") == 0.0


def _official_vqa_loop(prediction: str, answers: list[str]) -> float:
    # Literal transcription of vqaEval.py's per-question loop (both sides normalised).
    pred = normalize_vqa_answer(prediction)
    gts = [(i, normalize_vqa_answer(a)) for i, a in enumerate(answers)]
    accs = []
    for gt in gts:
        others = [item for item in gts if item != gt]
        matching = [item for item in others if item[1] == pred]
        accs.append(min(1, len(matching) / 3))
    return sum(accs) / len(accs)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["red", "Red.", "blue", "two", "2"]),
    st.lists(st.sampled_from(["red", "blue", "2", "green"]), min_size=10, max_size=10),
)
def test_vqa_accuracy_matches_the_official_loop(prediction, answers):
    assert vqa_accuracy(prediction, answers) == pytest.approx(_official_vqa_loop(prediction, answers))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abc ", max_size=8), st.text(alphabet="abc ", max_size=8))
def test_levenshtein_is_symmetric_and_bounded(a, b):
    d = levenshtein(a, b)
    assert d == levenshtein(b, a)
    assert abs(len(a) - len(b)) <= d <= max(len(a), len(b))
