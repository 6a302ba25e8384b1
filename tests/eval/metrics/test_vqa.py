"""Record-level VQA scorers and the SCORERS registry's uniform contract.

Small record lists whose figures follow from the per-answer tests in test_normalize.
"""

import pytest

from tilevl.errors import InputError
from tilevl.eval.metrics import (
    SCORERS,
    score,
    score_anls,
    score_chartqa,
    score_gqa,
    score_ocrbench,
    score_vqa,
)


def test_score_vqa_with_answer_types():
    records = [
        {"prediction": "ten", "answers": ["10"] * 10, "answer_type": "number"},
        {"prediction": "red", "answers": ["red"] * 2 + ["blue"] * 8, "answer_type": "other"},
    ]
    out = score_vqa(records)
    assert out["accuracy"] == pytest.approx((1.0 + 0.6) / 2)
    assert out["per_answer_type"]["other"] == {"score": pytest.approx(0.6), "n": 1}


def test_score_anls_and_missing_gold():
    out = score_anls([{"prediction": "hello wrld", "answers": ["hello world"]},
                      {"prediction": "xyz", "answers": ["abc"]}])
    assert out["anls"] == pytest.approx((1 - 1 / 11) / 2)
    with pytest.raises(InputError, match="record #0"):
        score_anls([{"prediction": "x"}])


def test_score_chartqa():
    records = [
        {"prediction": " 95.2 ", "answer": "100", "split": "human"},
        {"prediction": "0.0", "answer": "0", "split": "human"},
        {"prediction": "45%", "answer": ["0.45"], "split": "augmented"},
    ]
    out = score_chartqa(records)
    assert out["relaxed_accuracy"] == pytest.approx(2 / 3)
    assert out["per_split"]["human"]["score"] == 0.5


def test_score_gqa_and_ocrbench():
    assert score_gqa([{"prediction": "Yes.", "answer": "yes"}])["accuracy"] == 1.0
    records = [
        {"prediction": "HELLO", "answer": ["hello"], "category": "Regular Text Recognition"},
        {"prediction": "x^2", "answer": "x ^ 2", "dataset_name": "HME100k",
         "category": "Handwritten Mathematical Expression Recognition"},
        {"prediction": "no", "answer": "yes", "category": "Doc-oriented VQA"},
    ]
    out = score_ocrbench(records)
    assert out["final_score"] == 2 and out["text_recognition"] == 1


REQUIRED_KINDS = {"mmbench", "mcq", "mmmu", "mmvp", "vqa", "gqa", "docvqa", "infovqa", "chartqa",
                  "ocrbench", "mme", "pope", "hallusionbench", "refcoco"}


def test_registry_covers_kinds_and_results_are_uniform():
    assert REQUIRED_KINDS <= set(SCORERS)
    for kind, scorer in SCORERS.items():
        out = scorer([])
        assert out["rule"] and isinstance(out["rule_version"], str) and out["n"] == 0, kind


def test_score_dispatch():
    assert score("gqa", [{"prediction": "no", "answer": "no"}])["accuracy"] == 1.0
    with pytest.raises(KeyError, match="known"):
        score("nope", [])
