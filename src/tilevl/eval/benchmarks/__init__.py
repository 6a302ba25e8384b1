"""The benchmark registry: a name → how to read its file, prompt each question, read an answer,
which scorer kind scores it, and the tile budget and answer length InternVL evaluates it with.

One module per family (mmbench, vqa, yesno, grounding, plain); `BENCHMARKS` lists them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tilevl.errors import ConfigError
from tilevl.eval.benchmarks.common import (
    VQA_PROMPT,
    YES_NO_PROMPT,
    Sample,
    final_answer,
    majority_vote,
)
from tilevl.eval.benchmarks.grounding import box_key, grounding_prompt, read_grounding
from tilevl.eval.benchmarks.mmbench import choice_key, mcq_prompt, read_mcq_tsv
from tilevl.eval.benchmarks.plain import plain_key, plain_prompt, read_plain
from tilevl.eval.benchmarks.vqa import make_vqa_prompt, read_vqa, text_key
from tilevl.eval.benchmarks.yesno import read_yes_no, yes_no_key
from tilevl.eval.metrics import SCORERS


@dataclass(frozen=True)
class BenchSpec:
    """How one benchmark is run and scored.

    Attributes:
        name: the registry key (`--bench`).
        kind: the scorer kind (a key of `tilevl.eval.metrics.SCORERS`).
        read: `(path, image_root) -> list[Sample]`.
        prompt: `(sample, cot, suffix) -> str`.
        key: `(sample, answer) -> hashable | None`: equal keys are the same vote; None
            means rule-based extraction cannot read the answer (the judge may).
        max_tiles: default tile budget per image.
        max_new_tokens: default answer length (CoT runs use at least 1024).
        judge: "choice", "yesno" or None: what an LLM judge is asked for unreadable answers.
        cot: whether a CoT variant is defined.
    """

    name: str
    kind: str
    read: Callable[..., list[Sample]]
    prompt: Callable[..., str]
    key: Callable[[Sample, str], Any]
    max_tiles: int = 6
    max_new_tokens: int = 100
    judge: str | None = None
    cot: bool = True


def _mcq(name, kind="mcq", tiles=6, tokens=100):
    return BenchSpec(name, kind, read_mcq_tsv, mcq_prompt, choice_key, tiles, tokens, "choice")


def _vqa(name, kind, tiles=6, tokens=10, joiner=" "):
    return BenchSpec(name, kind, read_vqa, make_vqa_prompt(VQA_PROMPT, joiner), text_key, tiles,
                     tokens)


# Tile budgets: 6 unless InternVL/MMAlaya2 use more (VLMEvalKit vlmeval/vlm/internvl
# `get_max_num`: 12 for ChartQA/MMMU, 18 DocVQA, 24 InfoVQA/OCRBench). Answer lengths:
# InternVL's ds_collections `max_new_tokens` per script (10 for short VQA, 100 for
# documents, charts, MCQ, POPE, RefCOCO; 20 for MME).
_SPECS = [
    _mcq("mmbench", "mmbench"), _mcq("mmbench-cn", "mmbench"), _mcq("ccbench", "mmbench"),
    _mcq("minibench", "mmbench"), _mcq("seed"), _mcq("mmstar"), _mcq("ai2d"), _mcq("scienceqa"),
    _mcq("mmvp", "mmvp"), _mcq("mmmu", "mmmu", tiles=12),
    _vqa("textvqa", "vqa"), _vqa("vqav2", "vqa"), _vqa("okvqa", "vqa"), _vqa("gqa", "gqa"),
    _vqa("ocrvqa", "ocrvqa", tokens=100), _vqa("docvqa", "docvqa", tiles=18, tokens=100),
    _vqa("infovqa", "infovqa", tiles=24, tokens=100),
    _vqa("chartqa", "chartqa", tiles=12, tokens=100),
    _vqa("ocrbench", "ocrbench", tiles=24, tokens=100, joiner="\n"),
    # MiniBench's open answers: any listed answer is right, so exact match (not VQA's
    # 3-of-10 rule); its training data joins with a newline.
    _vqa("minibench-vqa", "ocrvqa", tokens=32, joiner="\n"),
    BenchSpec("mme", "mme", read_yes_no, make_vqa_prompt(VQA_PROMPT, " "), yes_no_key("mme"),
              6, 20, "yesno"),
    BenchSpec("pope", "pope", read_yes_no, make_vqa_prompt(VQA_PROMPT, "\n"), yes_no_key("pope")),
    BenchSpec("minibench-pope", "pope", read_yes_no, make_vqa_prompt(VQA_PROMPT, "\n"),
              yes_no_key("pope")),
    BenchSpec("hallusionbench", "hallusionbench", read_yes_no,
              make_vqa_prompt(YES_NO_PROMPT, " "), yes_no_key("vlmevalkit"), judge="yesno"),
    BenchSpec("refcoco", "refcoco", read_grounding, grounding_prompt, box_key, cot=False),
    BenchSpec("minibench-grounding", "refcoco", read_grounding, grounding_prompt, box_key,
              cot=False),
]
_JUDGES = {"mmbench": "choice", "mcq": "choice", "mmmu": "choice", "mmvp": "choice",
           "mme": "yesno", "hallusionbench": "yesno"}
# `plain-<kind>` reads the documented plain jsonl for every scorer kind.
_SPECS += [BenchSpec(f"plain-{kind}", kind, read_plain, plain_prompt(kind), plain_key(kind),
                     judge=_JUDGES.get(kind), cot=kind != "refcoco") for kind in SCORERS]

BENCHMARKS: dict[str, BenchSpec] = {spec.name: spec for spec in _SPECS}


def get_benchmark(name: str) -> BenchSpec:
    """The registered benchmark called `name`.

    Args:
        name: a key of `BENCHMARKS`.

    Returns:
        Its BenchSpec.

    Raises:
        ConfigError: naming the unknown benchmark and the known ones.
    """
    try:
        return BENCHMARKS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}") from None


def headline(kind: str, scores: dict) -> tuple[str, float, bool]:
    """The one figure a benchmark is reported by.

    Args:
        kind: the scorer kind.
        scores: the scorer's result.

    Returns:
        `(name, value, is_fraction)`; fractions print as percentages.
    """
    if kind == "mme":  # InternVL's tables report perception + cognition ("MME sum")
        return "perception+cognition", scores["perception"] + scores["cognition"], False
    if kind == "ocrbench":
        return "final_score", scores["final_score"], False
    if kind == "pope":
        name = "f1_mean_over_splits" if scores.get("per_split") else "f1"
        return name, scores[name], True
    if kind == "hallusionbench":  # VLMEvalKit's leaderboard mean of the three
        return "mean(aAcc,fAcc,qAcc)", (scores["aAcc"] + scores["fAcc"] + scores["qAcc"]) / 3, True
    name = {"docvqa": "anls", "infovqa": "anls", "chartqa": "relaxed_accuracy",
            "refcoco": "precision"}.get(kind, "accuracy")
    return name, scores[name], True


__all__ = ["BENCHMARKS", "BenchSpec", "Sample", "final_answer", "get_benchmark", "headline",
           "majority_vote"]
