"""Record access and result assembly shared by every scorer.

Scorers read plain dicts (one per model answer) and return plain dicts; both ends stay uniform.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable
from typing import Any

from tilevl.errors import InputError

_MISSING = object()


def require(record: dict, field: str, position: int, rule: str) -> Any:
    """Read a field that the scoring rule cannot do without.

    Args:
        record: one answer record.
        field: the key to read.
        position: the record's position in the list (for the error message).
        rule: the scorer's rule name (for the error message).

    Returns:
        The value stored under `field`.

    Raises:
        InputError: naming the rule, the record position and the missing field.
    """
    value = record.get(field, _MISSING)
    if value is _MISSING or value is None:
        known = ", ".join(sorted(record)) or "no fields"
        raise InputError(
            f"{rule}: record #{position} has no field {field!r} (it has: {known})"
        )
    return value


def as_list(value: Any) -> list:
    """Wrap a single gold answer in a list; leave lists and tuples as lists.

    Args:
        value: a string, a number, or a sequence of them.

    Returns:
        A list of gold answers.
    """
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def ratio(hits: float, total: int) -> float:
    """`hits / total`, with 0.0 for an empty group rather than a ZeroDivisionError.

    Args:
        hits: number (or summed score) of correct answers.
        total: number of answers.

    Returns:
        The fraction in [0, 1].
    """
    return float(hits) / total if total else 0.0


def group_mean(keys: Iterable[Hashable], scores: Iterable[float]) -> dict:
    """Mean score per key, keys sorted by their string form for a stable report.

    Args:
        keys: one group key per record (None keys are skipped).
        scores: one score per record, same order.

    Returns:
        `{key: {"score": mean, "n": count}}`.
    """
    sums: dict = defaultdict(float)
    counts: dict = defaultdict(int)
    for key, score in zip(keys, scores):
        if key is None:
            continue
        sums[key] += score
        counts[key] += 1
    return {k: {"score": sums[k] / counts[k], "n": counts[k]} for k in sorted(sums, key=str)}


def all_correct_rate(keys: Iterable[Hashable], correct: Iterable[bool]) -> tuple[float, int]:
    """Fraction of groups whose every member is correct (MME acc+, fAcc, qAcc, pairs).

    Args:
        keys: one group key per record.
        correct: one boolean per record, same order.

    Returns:
        `(rate, number_of_groups)`.
    """
    groups: dict = defaultdict(list)
    for key, ok in zip(keys, correct):
        groups[key].append(bool(ok))
    hits = sum(all(members) for members in groups.values())
    return ratio(hits, len(groups)), len(groups)


def result(rule: str, version: str, n: int, **figures: Any) -> dict:
    """Assemble a scorer's return value in the one shape every scorer uses.

    Args:
        rule: the rule's name (e.g. "vqa_accuracy").
        version: the rule's version string; bumped whenever the rule's output can change.
        n: how many records were scored.
        **figures: the figures (fractions in [0, 1] unless the benchmark's convention differs).

    Returns:
        `{"rule": rule, "rule_version": version, "n": n, **figures}`.
    """
    return {"rule": rule, "rule_version": version, "n": n, **figures}

