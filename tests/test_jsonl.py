"""Kill-safe jsonl helpers: strict reading with file:line errors, torn tails, atomic JSON."""

from __future__ import annotations

import json

import pytest

from tilevl.errors import InputError
from tilevl.jsonl import append_jsonl, iter_jsonl_objects, read_jsonl_lines, write_json


def test_strict_reader_numbers_lines_and_names_bad_ones(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n{"b": 2}\n')
    assert list(iter_jsonl_objects(path)) == [(1, {"a": 1}), (3, {"b": 2})]
    path.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(InputError, match=r"a.jsonl:2: not valid JSON"):
        list(iter_jsonl_objects(path))
    path.write_text('[1, 2]\n')
    with pytest.raises(InputError, match=r"a.jsonl:1: expected a JSON object, got list"):
        list(iter_jsonl_objects(path))


def test_torn_tail_is_skipped_then_cut_before_the_next_append(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_text('{"i": 1}\n{"i": 2, "tor')  # a kill mid-write
    assert read_jsonl_lines(path) == [(1, {"i": 1})]
    append_jsonl(path, [{"i": 3}])
    assert [row["i"] for _, row in read_jsonl_lines(path)] == [1, 3]
    path.write_text('{"i": 1}\n{bad}\n{"i": 2}\n')  # damage that is not the tail
    with pytest.raises(InputError, match="cache.jsonl:2"):
        read_jsonl_lines(path)


def test_write_json_replaces_whole(tmp_path):
    out = write_json(tmp_path / "r" / "x.json", {"a": [1, 2]})
    assert json.loads(out.read_text()) == {"a": [1, 2]}
    assert [p.name for p in out.parent.iterdir()] == ["x.json"]  # no temporary left behind
