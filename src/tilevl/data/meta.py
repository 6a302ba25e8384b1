"""The training meta file: which annotation files to train on, where their media live, how often.

`load_meta` reads upstream's `{name: {root, annotation, data_augment, repeat_time, length}}` JSON.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tilevl.errors import ConfigError

_KNOWN_KEYS = ("root", "annotation", "data_augment", "repeat_time", "length", "max_dynamic_patch")


@dataclass(frozen=True)
class DatasetSpec:
    """One entry of a meta file.

    Attributes:
        name: the entry's key.
        annotation: the jsonl file (absolute).
        root: the folder image/video paths in the records are relative to (absolute).
        repeat_time: how many passes over the file per epoch; the fractional part takes a
            seeded subsample (0.5: half the records, 2.5: twice all plus half).
        data_augment: upstream's random-JPEG augmentation flag (kept; see `SFTDataset`).
        length: the record count the meta file claims (informative; None when absent).
        max_dynamic_patch: a per-dataset tile limit overriding the model's (upstream reads
            the same optional key).
        meta_file: the file this entry came from (for messages), None when built in code.
    """

    name: str
    annotation: Path
    root: Path
    repeat_time: float = 1.0
    data_augment: bool = False
    length: int | None = None
    max_dynamic_patch: int | None = None
    meta_file: Path | None = None

    @property
    def where(self) -> str:
        """"meta.json: 'name'" for messages."""
        return f"{self.meta_file}: {self.name!r}" if self.meta_file else repr(self.name)

    @classmethod
    def from_annotation(cls, annotation: str | Path, root: str | Path | None = None,
                        **fields: Any) -> DatasetSpec:
        """A spec for a jsonl file used without a meta file.

        Args:
            annotation: the jsonl file.
            root: the media folder; default the annotation's folder.
            fields: other `DatasetSpec` fields (repeat_time, max_dynamic_patch …).
        Returns:
            The spec, named after the file.
        """
        annotation = Path(annotation).resolve()
        root = Path(root).resolve() if root is not None else annotation.parent
        return cls(name=fields.pop("name", annotation.stem), annotation=annotation, root=root,
                   **fields)


def load_meta(path: str | Path, base_dir: str | Path | None = None) -> list[DatasetSpec]:
    """Read a meta JSON file and check every entry.

    Args:
        path: the meta file.
        base_dir: the folder relative `root`/`annotation` paths resolve against; default the
            meta file's folder. (Upstream resolves them against the working directory it
            launches from, `internvl_chat/`; pass that folder to reuse upstream's files.)
    Returns:
        The entries in file order.
    Raises:
        ConfigError: naming the file and the key for unreadable JSON, a missing or mistyped
            field, or an annotation file that does not exist.
    """
    path = Path(path).resolve()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such meta file") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{path}: the meta file must be a non-empty JSON object "
                          "{name: {root, annotation, repeat_time, ...}}")
    base = Path(base_dir).resolve() if base_dir is not None else path.parent
    return [_parse_entry(path, base, name, entry) for name, entry in data.items()]


def _parse_entry(file: Path, base: Path, name: str, entry: Any) -> DatasetSpec:
    where = f"{file}: {name!r}"
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where}: must be an object, got {type(entry).__name__}")
    unknown = sorted(set(entry) - set(_KNOWN_KEYS))
    if unknown:
        # Upstream ignores unknown keys; a typo ("repeat_times") would then silently do
        # nothing, so say so.
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {list(_KNOWN_KEYS)}")
    for key in ("annotation", "root"):
        if not isinstance(entry.get(key), str):
            got = "missing" if key not in entry else f"a {type(entry[key]).__name__}"
            raise ConfigError(f"{where}.{key}: must be a path string, got {got}")
    annotation = (base / entry["annotation"]).resolve()
    if not annotation.is_file():
        raise ConfigError(f"{where}.annotation: no such file {annotation}")
    root = (base / entry["root"]).resolve()

    repeat_time = entry.get("repeat_time", 1)
    if isinstance(repeat_time, bool) or not isinstance(repeat_time, (int, float)) \
            or not math.isfinite(repeat_time) or repeat_time <= 0:
        raise ConfigError(f"{where}.repeat_time: must be a number > 0, got {repeat_time!r}")
    data_augment = entry.get("data_augment", False)
    if not isinstance(data_augment, bool):
        raise ConfigError(f"{where}.data_augment: must be true or false, got {data_augment!r}")
    length = entry.get("length")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int)
                               or length < 0):
        raise ConfigError(f"{where}.length: must be a record count (int ≥ 0), got {length!r}")
    max_patch = entry.get("max_dynamic_patch")
    if max_patch is not None and (isinstance(max_patch, bool) or not isinstance(max_patch, int)
                                  or max_patch < 1):
        raise ConfigError(f"{where}.max_dynamic_patch: must be an int ≥ 1, got {max_patch!r}")
    return DatasetSpec(name=name, annotation=annotation, root=root,
                       repeat_time=float(repeat_time), data_augment=data_augment, length=length,
                       max_dynamic_patch=max_patch, meta_file=file)


def repeat_indices(num_records: int, repeat_time: float, seed: int | str = 0) -> list[int]:
    """Record indices for one epoch of a dataset repeated `repeat_time` times.

    The whole part repeats every record; the fractional part adds `int(num_records · frac)`
    distinct records drawn with `seed` (kept in file order). Upstream takes the first
    records for repeat_time < 1 and refuses fractions above 1; a seeded draw avoids always
    training on the head of a file that is sorted by source.

    Args:
        num_records: records in the annotation file.
        repeat_time: > 0.
        seed: makes the draw reproducible (an int or a string such as the dataset name).
    Returns:
        Indices in [0, num_records), length int(num_records · repeat_time) (floor).
    """
    if repeat_time <= 0:
        raise ConfigError(f"repeat_time must be > 0, got {repeat_time}")
    whole = int(repeat_time)
    frac = repeat_time - whole
    indices = list(range(num_records)) * whole
    extra = int(num_records * frac + 1e-9)  # 0.3 · 10 is 2.9999999999999996 in floats
    if extra:
        # random.Random seeds from str via SHA-512: the same draw on every Python and OS.
        picked = random.Random(f"tilevl-repeat:{seed}").sample(range(num_records), extra)
        indices += sorted(picked)
    return indices
