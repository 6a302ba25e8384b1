"""Append-only jsonl files that survive a kill, and atomic JSON writes.

Shared by the evaluation cache and the recipes: a torn last line (a kill mid-write) is
skipped on read and cut off before the next append; anything else damaged is an error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from tilevl.errors import InputError

__all__ = ["append_jsonl", "iter_jsonl_objects", "read_jsonl_lines", "write_json"]


def iter_jsonl_objects(path: str | Path):
    """Yield (line number, object) of a jsonl file someone gave us; blank lines are skipped.

    Unlike `read_jsonl_lines` every damaged line is an error (nothing here was torn by us).

    Raises:
        InputError: naming the file and line of invalid JSON or of a value that is not an object.
    """
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            yield number, row


def read_jsonl_lines(path: str | Path) -> list[tuple[int, dict]]:
    """The objects of a jsonl file this package appends to, with their line numbers.

    A last line without its newline is what a kill during a write leaves; it is skipped
    (the next `append_jsonl` cuts it off). A damaged line anywhere else is an error.

    Args:
        path: the file (missing: no lines).

    Returns:
        `[(line number, object), ...]`.

    Raises:
        InputError: naming file and line of a damaged line that is not the torn tail.
    """
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    torn = not text.endswith("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if torn and number == len(lines):
                continue
            raise InputError(f"{path}:{number}: damaged line; delete the file to start over") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append((number, row))
    return rows


def append_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """Append rows and fsync them, so a finished batch is on disk before the next starts.

    Args:
        path: the file (created with its folder).
        rows: JSON-serialisable dicts, one line each.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size:
        with open(path, "r+b") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                # A torn tail has no newline; appending after it would glue two lines
                # together. Rare, so reading the whole file to find the cut is fine.
                f.seek(0)
                f.truncate(f.read().rfind(b"\n") + 1)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if not text:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_json(path: str | Path, value) -> Path:
    """Write JSON atomically (temp file + rename): a report is either old or new, never half.

    Args:
        path: the file.
        value: a JSON-serialisable value.

    Returns:
        The path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
