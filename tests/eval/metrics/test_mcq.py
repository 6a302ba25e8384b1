"""Multiple-choice extraction and scorers: MMBench circular, plain MCQ, MMMU parsers, MMVP pairs.

Every expected figure is worked out by hand in the test.
"""

import pytest

from tilevl.errors import InputError
from tilevl.eval.metrics import (
    eval_open,
    extract_choice,
    parse_mmmu_choice,
    parse_multi_choice_response,
    parse_open_response,
    score_mcq,
    score_mmbench,
    score_mmmu,
    score_mmvp,
)

OPTIONS = {"A": "cat", "B": "dog", "C": "bird"}


@pytest.mark.parametrize(
    "text",
    ["B", "B.", "(B)", "The answer is B", "B: dog", "**B**", "Answer: [B]", "dog", "It is a dog."],
)
def test_extract_choice_finds_b(text):
    assert extract_choice(text, OPTIONS) == "B"


@pytest.mark.parametrize(
    "text",
    [
        "I don't know",          # neither a letter nor an option text
        "A or B",                # two letters, no option text → ambiguous
        "cat and dog",           # two option texts → ambiguous
        "",
        "Cannot determine the answer",  # refusal
        "Z",                     # "none of the options"
    ],
)
def test_extract_choice_unparsable(text):
    assert extract_choice(text, OPTIONS) is None


def test_extract_choice_letters_are_case_sensitive_tokens():
    # Lower-case "a" is the article, not option A; "A cat" reads as A (VLMEvalKit default).
    assert extract_choice("a bird", OPTIONS) == "C"
    assert extract_choice("A cat", OPTIONS) == "A"


def _mmb(index, prediction, answer, category="attr", l2="perception"):
    return {"index": index, "prediction": prediction, "answer": answer,
            "options": {"A": "red", "B": "blue"}, "category": category, "l2_category": l2}


def test_mmbench_circular_one_rotation_wrong():
    records = [
        # question 1: both rotations right
        _mmb(1, "A", "A"), _mmb(1_000_001, "B", "B"),
        # question 2: original right, rotation wrong → fails circular, passes vanilla
        _mmb(2, "B", "B", category="count"), _mmb(1_000_002, "B", "A", category="count"),
        # question 3: original unparsable (wrong), rotation right
        _mmb(3, "no idea", "A", l2="reasoning"), _mmb(1_000_003, "B", "B", l2="reasoning"),
    ]
    out = score_mmbench(records)
    assert out["rule"] == "mmbench_circular" and out["rule_version"]
    assert out["n"] == 6 and out["n_questions"] == 3
    assert out["accuracy"] == pytest.approx(1 / 3)          # only question 1 survives
    assert out["vanilla_accuracy"] == pytest.approx(2 / 3)  # originals of q1 and q2 right
    assert out["unparsed"] == 1
    assert out["incomplete"] == 0
    assert out["per_category"] == {"attr": {"score": 0.5, "n": 2}, "count": {"score": 0.0, "n": 1}}
    assert out["per_l2_category"]["perception"] == {"score": 0.5, "n": 2}
    assert out["per_l2_category"]["reasoning"] == {"score": 0.0, "n": 1}


def test_mmbench_order_does_not_matter_and_missing_copies_are_counted():
    records = [_mmb(1_000_001, "B", "B"), _mmb(1, "A", "A"), _mmb(5, "A", "A")]
    out = score_mmbench(records)
    assert out["accuracy"] == 1.0
    assert out["incomplete"] == 1  # question 5 has 1 copy for 2 options


def test_mcq_accuracy_per_category_and_errors():
    records = [
        {"prediction": "A", "answer": "A", "options": OPTIONS, "category": "x"},
        {"prediction": "(C) bird", "answer": "C", "options": OPTIONS, "category": "x"},
        {"prediction": "???", "answer": "B", "options": OPTIONS, "category": "y"},
    ]
    out = score_mcq(records)
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert out["per_category"] == {"x": {"score": 1.0, "n": 2}, "y": {"score": 0.0, "n": 1}}
    assert out["unparsed"] == 1
    with pytest.raises(InputError, match=r"record #0 .*'options'"):
        score_mcq([{"prediction": "A", "answer": "A"}])
    with pytest.raises(InputError, match="not one of its options"):
        score_mcq([{"prediction": "A", "answer": "E", "options": OPTIONS}])


def test_mmmu_multi_choice_parser():
    choices = ["A", "B", "C", "D"]
    index2ans = {"A": "green pear", "B": "red apple", "C": "x", "D": "y"}
    assert parse_multi_choice_response("(B)", choices, index2ans) == "B"
    assert parse_multi_choice_response("B.", choices, index2ans) == "B"
    # two bracketed candidates: the one occurring last wins
    assert parse_multi_choice_response("Not (A), the answer is (C).", choices, index2ans) == "C"
    # option text is only tried for responses longer than 5 words
    long_answer = "I think it shows the red apple here"
    assert parse_multi_choice_response(long_answer, choices, index2ans) == "B"
    letter, guessed = parse_mmmu_choice("red apple", choices, index2ans, seed="q1")
    assert guessed and letter in choices
    # the fallback guess is reproducible for the same question
    assert parse_mmmu_choice("red apple", choices, index2ans, seed="q1") == (letter, True)


def test_mmmu_open_parser():
    assert 3.5 in parse_open_response("The answer is 3.50")
    assert eval_open("3.5", parse_open_response("The answer is 3.50"))
    assert eval_open(["Paris", "paris, france"], parse_open_response("So it is Paris."))
    assert not eval_open("4", parse_open_response("The result is 5"))
    assert eval_open("1,000", parse_open_response("total = 1000"))


def test_score_mmmu_mixed():
    records = [
        {"id": "a", "prediction": "(A)", "answer": "A", "options": {"A": "1", "B": "2"}},
        {"id": "b", "prediction": "The answer is 7", "answer": "7", "question_type": "open"},
        {"id": "c", "prediction": "(B)", "answer": ["A", "C"],
         "options": {"A": "1", "B": "2", "C": "3"}},
    ]
    out = score_mmmu(records)
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert out["guessed"] == 0


def test_mmvp_pairs():
    opts = {"A": "open", "B": "closed"}
    records = [
        {"index": 2, "prediction": "B", "answer": "B", "options": opts},
        {"index": 1, "prediction": "A", "answer": "A", "options": opts},  # pair (1, 2): both right
        {"index": 3, "prediction": "A", "answer": "A", "options": opts},
        {"index": 4, "prediction": "A", "answer": "B", "options": opts},  # pair (3, 4): one wrong
    ]
    out = score_mmvp(records)
    assert out["accuracy"] == 0.5 and out["n_pairs"] == 2
    assert out["question_accuracy"] == 0.75
    with pytest.raises(InputError, match="even number"):
        score_mmvp(records[:3])
