"""Tests of the meta JSON reader: relative paths, defaults, errors naming file and key.

Also the `repeat_time` rule: whole passes plus a seeded, deterministic fractional subsample.
"""

from __future__ import annotations

import json

import pytest

from tilevl.data.meta import DatasetSpec, load_meta, repeat_indices
from tilevl.errors import ConfigError


def _write_meta(folder, entries, name="meta.json"):
    path = folder / name
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


@pytest.fixture()
def annotation(tmp_path):
    (tmp_path / "ann").mkdir()
    path = tmp_path / "ann" / "a.jsonl"
    path.write_text("{}\n" * 10, encoding="utf-8")
    return path


def test_relative_paths_resolve_against_the_meta_file(tmp_path, annotation):
    meta = _write_meta(tmp_path / "ann", {
        "set-a": {"root": "../images/", "annotation": "a.jsonl", "data_augment": False,
                  "repeat_time": 1, "length": 10},
    })
    (spec,) = load_meta(meta)
    assert spec.name == "set-a"
    assert spec.annotation == annotation.resolve()
    assert spec.root == (tmp_path / "images").resolve()
    assert (spec.repeat_time, spec.data_augment, spec.length) == (1.0, False, 10)
    assert spec.meta_file == meta.resolve()


def test_base_dir_resolves_like_upstream_working_directory(tmp_path, annotation):
    (tmp_path / "shell").mkdir()
    meta = _write_meta(tmp_path / "shell", {"x": {"root": "img", "annotation": "ann/a.jsonl"}})
    (spec,) = load_meta(meta, base_dir=tmp_path)
    assert spec.annotation == annotation.resolve()
    assert spec.root == (tmp_path / "img").resolve()
    assert spec.repeat_time == 1.0 and spec.length is None and spec.max_dynamic_patch is None


def test_entries_keep_file_order_and_optional_max_dynamic_patch(tmp_path, annotation):
    meta = _write_meta(tmp_path, {
        "b": {"root": "", "annotation": "ann/a.jsonl", "repeat_time": 0.5},
        "a": {"root": "", "annotation": "ann/a.jsonl", "max_dynamic_patch": 4},
    })
    specs = load_meta(meta)
    assert [s.name for s in specs] == ["b", "a"]
    assert specs[0].repeat_time == 0.5 and specs[1].max_dynamic_patch == 4


@pytest.mark.parametrize("entry, key, words", [
    ({"root": ""}, "annotation", "got missing"),
    ({"root": "", "annotation": 3}, "annotation", "got a int"),
    ({"annotation": "ann/a.jsonl"}, "root", "got missing"),
    ({"root": "", "annotation": "ann/nope.jsonl"}, "annotation", "no such file"),
    ({"root": "", "annotation": "ann/a.jsonl", "repeat_time": "2"}, "repeat_time", "'2'"),
    ({"root": "", "annotation": "ann/a.jsonl", "repeat_time": 0}, "repeat_time", "> 0"),
    ({"root": "", "annotation": "ann/a.jsonl", "data_augment": "no"}, "data_augment", "'no'"),
    ({"root": "", "annotation": "ann/a.jsonl", "length": "number of your data"}, "length",
     "record count"),
    ({"root": "", "annotation": "ann/a.jsonl", "max_dynamic_patch": 0}, "max_dynamic_patch",
     "≥ 1"),
])
def test_bad_entries_name_file_and_key(tmp_path, annotation, entry, key, words):
    meta = _write_meta(tmp_path, {"my-set": entry})
    with pytest.raises(ConfigError) as info:
        load_meta(meta)
    message = str(info.value)
    assert str(meta.resolve()) in message and f"'my-set'.{key}" in message and words in message


def test_unknown_key_and_bad_shapes(tmp_path, annotation):
    meta = _write_meta(tmp_path, {"s": {"root": "", "annotation": "ann/a.jsonl",
                                        "repeat_times": 2}})
    with pytest.raises(ConfigError, match="unknown key.*repeat_times"):
        load_meta(meta)
    with pytest.raises(ConfigError, match="'s': must be an object"):
        load_meta(_write_meta(tmp_path, {"s": [1]}, "m2.json"))
    with pytest.raises(ConfigError, match="non-empty JSON object"):
        load_meta(_write_meta(tmp_path, [], "m3.json"))
    broken = tmp_path / "m4.json"
    broken.write_text('{\n  "s": {,\n}', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"m4.json: line 2: invalid JSON"):
        load_meta(broken)
    with pytest.raises(ConfigError, match="no such meta file"):
        load_meta(tmp_path / "absent.json")


def test_fractional_repeat_below_one_is_a_deterministic_subsample():
    first = repeat_indices(100, 0.3, seed="set-a")
    assert first == repeat_indices(100, 0.3, seed="set-a")  # same seed, same draw
    assert len(first) == 30 and len(set(first)) == 30 and first == sorted(first)
    assert all(0 <= i < 100 for i in first)
    assert first != repeat_indices(100, 0.3, seed="set-b")
    assert first != list(range(30))  # not upstream's head-of-file slice


def test_repeat_above_one_repeats_then_subsamples_the_fraction():
    indices = repeat_indices(10, 2.5, seed=0)
    assert indices[:20] == list(range(10)) * 2
    extra = indices[20:]
    assert len(extra) == 5 and len(set(extra)) == 5 and extra == sorted(extra)
    assert repeat_indices(10, 3, seed=0) == list(range(10)) * 3
    assert repeat_indices(10, 1, seed=0) == list(range(10))
    assert repeat_indices(0, 0.5) == []
    with pytest.raises(ConfigError):
        repeat_indices(10, 0)


def test_spec_from_annotation_defaults_root_to_its_folder(annotation):
    spec = DatasetSpec.from_annotation(annotation, repeat_time=2)
    assert spec.root == annotation.parent.resolve() and spec.name == "a"
    assert spec.repeat_time == 2 and "'a'" in spec.where
