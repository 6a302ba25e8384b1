"""A lazy supervised fine-tuning dataset over InternVL's jsonl conversation records.

Lines are found by byte offset; every record is checked once, bad ones are counted with their
place and left out, so an epoch is exactly the valid records × repeat_time.
"""

from __future__ import annotations

import json
import os
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from tilevl.config import ModelConfig
from tilevl.data.meta import DatasetSpec, load_meta, repeat_indices
from tilevl.errors import ConfigError, InputError
from tilevl.inputs.image import ImageSettings, choose_grid, load_image, tile_image
from tilevl.inputs.template import IGNORE_INDEX, IMAGE_PLACEHOLDER, Template, get_template, render

VIDEO_PLACEHOLDER = "<video>"
# Why a record is skipped, in the order `report()` lists them.
REASONS = ("bad_json", "empty_conversations", "bad_field", "bad_turn_order",
           "image_count_mismatch", "outside_root", "missing_image", "bad_image", "too_long")
_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}
_EXIF_ORIENTATION = 0x0112
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class BadRecordError(InputError):
    """A record that cannot be trained on; the message is "file:line: reason: detail"."""

    def __init__(self, reason: str, detail: str, where: str = "?") -> None:
        self.reason, self.detail, self.where = reason, detail, where
        super().__init__(f"{where}: {reason}: {detail}")


@dataclass
class _Record:
    """A parsed, checked record: messages ready for `render` and the media to load."""

    messages: list[dict[str, str]]
    kind: str  # "text" | "image" | "video"
    paths: list[Path]
    max_tiles: int  # per image (upstream splits the budget among several images)


@dataclass
class BadRecordStats:
    """Skipped records per reason, with every place ("file:line: detail") kept.

    `max_examples` is how many places per reason `SFTDataset.report()` prints; all of them
    go to the file `SFTDataset.write_bad_records` writes.
    """

    max_examples: int = 5
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    replacements: int = 0

    def add(self, error: BadRecordError) -> None:
        self.counts[error.reason] += 1
        self.examples.setdefault(error.reason, []).append(f"{error.where}: {error.detail}")


class SFTDataset(Dataset):
    """Training samples from InternVL jsonl files, read lazily, one line per record.

    Records hold `conversations` ([{from: human|gpt|system, value}]) and optionally `image`
    (a path or a list of paths), `images` (a list), or `video` (a path), relative to the
    source's `root`; `width`/`height` and other keys are ignored. Upstream's rules, from
    `internvl_chat/internvl/train/internvl_chat_finetune.py` (LazySupervisedDataset):
    one image and no `<image>` in the human turns: "<image>\\n" goes in front of the first
    one; several images: no insertion, the tags must match, and each image gets
    `max(1, max_dynamic_patch // num_images)` tiles; video: "<video>\\n" (inserted when
    missing) becomes "Frame-1: <image>\\nFrame-2: <image>\\n…", one tile per frame.
    Differences, on purpose: videos get `num_video_frames` evenly spaced frames (upstream draws
    8–32 at random); a pure-text sample has no pixels (upstream feeds a dummy white tile with
    image_flags 0); `data_augment` (upstream's random JPEG re-encoding) is not applied.

    Every record is checked once (`scan()`, run on first use: JSON, fields, tags, image
    headers, length) and a bad one (see `REASONS`) is left out of the epoch, so an epoch is
    exactly `int(valid records × repeat_time)` per source; `report()` counts them with
    file:line, `write_bad_records()` lists every place. `strict=True` raises instead. An
    image path that leaves the source's root (absolute elsewhere, `../`) is "outside_root"
    unless `allow_outside_root`. A file that breaks only when decoded (a truncated image
    behind a good header) is found on access: that access is served by the next good item
    and counted in `stats.replacements`.

    Args:
        sources: a meta JSON file, a jsonl file, a `DatasetSpec`, or a list of those.
        tokenizer: the model's tokenizer (with the image tokens).
        config: the model config: template, tile settings and tokens per tile come from it.
        template: a template name or object, instead of `config.template`.
        image_settings: tiling settings, instead of the config's.
        num_image_token: `<IMG_CONTEXT>` tokens per tile, instead of the config's.
        max_seq_length: longer samples are cut after their last image; a sample whose
            images alone exceed it is skipped as "too_long".
        num_video_frames: frames sampled uniformly from each video.
        strict: raise `BadRecordError` on the first bad record.
        seed: seeds the fractional `repeat_time` subsampling.
        max_examples: file:line places per reason that `report()` prints.
        allow_outside_root: accept image/video paths outside the source's root.
    """

    def __init__(self, sources: Any, tokenizer, config: ModelConfig | None = None, *,
                 template: str | Template | None = None,
                 image_settings: ImageSettings | None = None,
                 num_image_token: int | None = None, max_seq_length: int = 4096,
                 num_video_frames: int = 8, strict: bool = False, seed: int = 0,
                 max_examples: int = 5, allow_outside_root: bool = False) -> None:
        self.specs = _resolve_sources(sources)
        self.tokenizer = tokenizer
        if template is None and (config is None or config.template is None):
            raise ConfigError("SFTDataset needs a template: pass config= (with a template) "
                              "or template=")
        template = template if template is not None else config.template
        self.template = get_template(template) if isinstance(template, str) else template
        if image_settings is None:
            image_settings = (ImageSettings.from_checkpoint_config(config.to_dict())
                              if config is not None else ImageSettings())
        self.image_settings = image_settings
        self.num_image_token = int(num_image_token if num_image_token is not None
                                   else (config.num_image_token if config else 256))
        if max_seq_length < 1:
            raise ConfigError(f"max_seq_length must be ≥ 1, got {max_seq_length}")
        self.max_seq_length = max_seq_length
        self.num_video_frames = num_video_frames
        self.strict = strict
        self.allow_outside_root = allow_outside_root
        self.seed = seed
        self.stats = BadRecordStats(max_examples)
        self._bad: set[tuple[int, int]] = set()  # (source, record) known to be bad
        self._lengths: list[int] | None = None
        self._handles: dict[int, Any] = {}
        self._handles_pid = -1

        # Per source: byte offset and 1-based line number of each non-blank line ([R] each).
        self._offsets: list[np.ndarray] = []
        self._lines: list[np.ndarray] = []
        for spec in self.specs:
            offsets, lines = _index_lines(spec.annotation)
            self._offsets.append(offsets)
            self._lines.append(lines)
        self._scanned = False
        self._valid_records = 0
        # The epoch's items: item i is record _rec[i] of source _src[i]. Until `scan()` has
        # found the bad records, every record of every source, once (what scan walks).
        self._src = np.concatenate([np.full(len(o), s, dtype=np.int32)
                                    for s, o in enumerate(self._offsets)] or [np.zeros(0, np.int32)])
        self._rec = np.concatenate([np.arange(len(o), dtype=np.int64)
                                    for o in self._offsets] or [np.zeros(0, np.int64)])

    # ---- the Dataset protocol -----------------------------------------------------------
    def __len__(self) -> int:
        if not self._scanned:
            self.scan()
        return len(self._src)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The sample at `index`, or at the next index holding a good record.

        Returns:
            {"input_ids": LongTensor [L], "labels": LongTensor [L] (-100 off the replies),
             "pixel_values": float [N, 3, S, S] or None, "num_tiles": tiles per image,
             "index": the index actually served}.
        """
        n = len(self)  # scans first
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} items")
        index %= n
        for step in range(n):
            j = (index + step) % n
            key = self._key(j)
            if key in self._bad:
                continue
            try:
                sample = self._build(j)
            except BadRecordError as error:
                self._mark_bad(key, error)
                continue
            if step:
                self.stats.replacements += 1
            return sample
        raise InputError(f"no usable record in the dataset.\n{self.report()}")

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"], state["_handles_pid"] = {}, -1  # open files do not pickle
        return state

    # ---- validation and reporting ---------------------------------------------------------
    def scan(self, progress: bool = False) -> list[int]:
        """Check every record once without decoding pixels; build the epoch from the good ones.

        Image files are opened for their size only (a truncated file is still found later,
        on access). Bad records are counted; `strict` raises on the first. Each source then
        contributes `repeat_indices(valid, repeat_time)` of its valid records, so no record
        is seen more often than its repeat_time says. Runs once; later calls return the
        lengths.

        Args:
            progress: show a progress bar (a 100 000-record mix takes minutes on 2 cores).
        Returns:
            Per item of the epoch, its token length (after truncation).
        """
        if self._scanned:
            return list(self._lengths)
        by_key: dict[tuple[int, int], int] = {}
        indices = range(len(self._src))  # every record once (see __init__)
        if progress:
            from tqdm.auto import tqdm

            indices = tqdm(indices, desc="checking records", unit="rec", mininterval=2.0)
        for j in indices:
            key = self._key(j)
            try:
                record, where = self._parse(j)
                tiles = [self._count_tiles(p, record, where) for p in record.paths]
                by_key[key] = len(self._render(record, tiles, where)[0])
            except BadRecordError as error:
                self._mark_bad(key, error)
        if not by_key:
            raise InputError(f"no usable record in the dataset.\n{self.report()}")
        src_ids, rec_ids = [], []
        for s, spec in enumerate(self.specs):
            valid = [r for r in range(len(self._offsets[s])) if (s, r) in by_key]
            picks = repeat_indices(len(valid), spec.repeat_time, seed=f"{self.seed}:{spec.name}")
            rec_ids.append(np.asarray([valid[p] for p in picks], dtype=np.int64))
            src_ids.append(np.full(len(picks), s, dtype=np.int32))
        self._src = np.concatenate(src_ids)
        self._rec = np.concatenate(rec_ids)
        self._valid_records = len(by_key)
        self._lengths = [by_key[self._key(j)] for j in range(len(self._src))]
        self._scanned = True
        return list(self._lengths)

    @property
    def lengths(self) -> list[int]:
        """Token length per index (runs `scan()` the first time)."""
        return list(self._lengths) if self._lengths is not None else self.scan()

    @property
    def valid_records(self) -> int:
        """Distinct records that passed the checks (runs `scan()` the first time)."""
        len(self)
        return self._valid_records

    @property
    def bad_records(self) -> dict[str, int]:
        """Skipped records per reason (distinct records, not accesses)."""
        return {r: self.stats.counts[r] for r in REASONS if self.stats.counts[r]}

    def report(self) -> str:
        """A readable summary: items, files, and the skipped records per reason with places."""
        files = len({s.annotation for s in self.specs})
        total = sum(self.stats.counts.values())
        items = (f"{len(self._src)} sample(s) per epoch from {self._valid_records} valid "
                 f"record(s)" if self._scanned else "not scanned yet")
        lines = [f"SFTDataset: {items} in {files} file(s); {total} bad record(s) left out"]
        if self.stats.replacements:
            lines[0] += (f"; {self.stats.replacements} access(es) found a broken file and were "
                         "served by the next item")
        shown = self.stats.max_examples
        for reason, count in self.bad_records.items():
            lines.append(f"  {reason}: {count}")
            places = self.stats.examples.get(reason, [])
            lines += [f"    {place}" for place in places[:shown]]
            if len(places) > shown:
                lines.append(f"    … and {len(places) - shown} more")
        return "\n".join(lines)

    def write_bad_records(self, path: str | Path) -> Path:
        """Every bad record's place, one JSON object per line: {reason, place, detail}.

        Args:
            path: the file to write (its folder is created).
        Returns:
            The path written.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for reason in REASONS:
                for entry in self.stats.examples.get(reason, ()):
                    place, _, detail = entry.partition(": ")
                    f.write(json.dumps({"reason": reason, "place": place, "detail": detail},
                                       ensure_ascii=False) + "\n")
        return path

    def summary(self) -> dict[str, Any]:
        """{"valid": distinct good records, "bad": {reason: count}, "samples_per_epoch": N}."""
        return {"valid": self.valid_records, "bad": self.bad_records,
                "samples_per_epoch": len(self)}

    # ---- one record -------------------------------------------------------------------------
    def _key(self, j: int) -> tuple[int, int]:
        return int(self._src[j]), int(self._rec[j])

    def _mark_bad(self, key: tuple[int, int], error: BadRecordError) -> None:
        if self.strict:
            raise error
        if key not in self._bad:
            self._bad.add(key)
            self.stats.add(error)

    def _where(self, j: int) -> str:
        s, r = self._key(j)
        return f"{self.specs[s].annotation}:{int(self._lines[s][r])}"

    def _read_line(self, j: int) -> bytes:
        s, r = self._key(j)
        if self._handles_pid != os.getpid():  # a forked worker must not share the offset
            self._handles, self._handles_pid = {}, os.getpid()
        handle = self._handles.get(s)
        if handle is None:
            handle = self._handles[s] = open(self.specs[s].annotation, "rb")
        handle.seek(int(self._offsets[s][r]))
        return handle.readline()

    def _build(self, j: int) -> dict[str, Any]:
        record, where = self._parse(j)
        pixel_values, num_tiles = self._load_media(record, where)
        input_ids, labels = self._render(record, num_tiles, where)
        return {"input_ids": torch.tensor(input_ids, dtype=torch.long),
                "labels": torch.tensor(labels, dtype=torch.long),
                "pixel_values": pixel_values, "num_tiles": num_tiles, "index": j}

    def _parse(self, j: int) -> tuple[_Record, str]:
        """Parse and check a line; apply upstream's placeholder rules. No media is read."""
        where = self._where(j)
        spec = self.specs[int(self._src[j])]
        try:
            item = json.loads(self._read_line(j))
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRecordError("bad_json", f"not valid JSON ({exc})", where) from None
        if not isinstance(item, dict):
            raise BadRecordError("bad_json", f"a record must be an object, got "
                                 f"{type(item).__name__}", where)
        messages = _messages(item.get("conversations"), where)
        images, video = _media_fields(item, where)
        max_tiles = spec.max_dynamic_patch or self.image_settings.max_num
        user_turns = [m for m in messages if m["role"] == "user"]
        if video is not None:
            n_frames = self.num_video_frames
            if not any(VIDEO_PLACEHOLDER in m["content"] for m in user_turns):
                user_turns[0]["content"] = f"{VIDEO_PLACEHOLDER}\n{user_turns[0]['content']}"
            frames = "\n".join(f"Frame-{i + 1}: {IMAGE_PLACEHOLDER}" for i in range(n_frames))
            for m in user_turns:
                if VIDEO_PLACEHOLDER in m["content"]:
                    text = m["content"]
                    m["content"] = (text.replace(f"{VIDEO_PLACEHOLDER}\n", frames + "\n", 1)
                                    if f"{VIDEO_PLACEHOLDER}\n" in text
                                    else text.replace(VIDEO_PLACEHOLDER, frames, 1))
                    break
            record = _Record(messages, "video", [self._media_path(spec, video, where)], 1)
            expected = n_frames
        else:
            if len(images) == 1 and not any(IMAGE_PLACEHOLDER in m["content"] for m in user_turns):
                user_turns[0]["content"] = f"{IMAGE_PLACEHOLDER}\n{user_turns[0]['content']}"
            per_image = max(1, max_tiles // len(images)) if len(images) > 1 else max_tiles
            record = _Record(messages, "image" if images else "text",
                             [self._media_path(spec, p, where) for p in images], per_image)
            expected = len(images)
        tags = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in user_turns)
        if tags != expected:
            what = f"{expected} video frame(s)" if video is not None else f"{expected} image(s)"
            raise BadRecordError("image_count_mismatch", f"{tags} {IMAGE_PLACEHOLDER} tag(s) "
                                 f"in the human turns for {what}", where)
        for path in record.paths:
            if not path.is_file():
                raise BadRecordError("missing_image", f"no such file {path}", where)
        return record, where

    def _media_path(self, spec: DatasetSpec, path: str, where: str) -> Path:
        """The record's media path joined to the source's root; refused when it leaves it."""
        joined = _join(spec.root, path)
        if not self.allow_outside_root:
            # Lexical: `../` and absolute paths are caught; a symlink inside the root is the
            # data owner's choice and is followed.
            root = os.path.normpath(spec.root)
            if os.path.commonpath([root, os.path.normpath(joined)]) != root:
                raise BadRecordError("outside_root", f"{path!r} leaves the data root {root} "
                                     "(set allow_outside_root to train on it)", where)
        return joined

    def _tile_limits(self, record: _Record) -> dict[str, Any]:
        st = self.image_settings
        return {"image_size": st.image_size, "min_num": min(st.min_num, record.max_tiles),
                "max_num": record.max_tiles, "use_thumbnail": st.use_thumbnail,
                "dynamic": st.dynamic}

    def _load_media(self, record: _Record, where: str) -> tuple[torch.Tensor | None, list[int]]:
        """Decode and tile. Returns (pixel_values [N, 3, S, S] or None, tiles per image)."""
        if record.kind == "text":
            return None, []
        st = self.image_settings
        if record.kind == "video":
            from tilevl.inputs.video import load_video

            try:
                return load_video(record.paths[0], self.num_video_frames,
                                  image_size=st.image_size, max_num=1,
                                  use_thumbnail=st.use_thumbnail, mean=st.mean, std=st.std)
            except InputError as exc:
                raise BadRecordError("bad_image", f"video: {exc}", where) from None
        tiles = []
        for path in record.paths:
            try:
                tiles.append(tile_image(load_image(path), mean=st.mean, std=st.std,
                                        **self._tile_limits(record)))
            except InputError as exc:
                raise BadRecordError("bad_image", str(exc), where) from None
        return torch.cat(tiles), [t.shape[0] for t in tiles]

    def _count_tiles(self, path: Path, record: _Record, where: str) -> int:
        """Tiles `tile_image` will cut from `path`, from the image header alone."""
        if record.kind == "video":
            return 1  # one entry per frame; see _render
        limits = self._tile_limits(record)
        try:
            with Image.open(path) as img:
                width, height = img.size
                if img.getexif().get(_EXIF_ORIENTATION) in _ROTATED:
                    width, height = height, width  # load_image applies the rotation
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise BadRecordError("bad_image", f"{path}: cannot be read as an image ({exc})",
                                 where) from None
        if not limits["dynamic"]:
            return 1
        cols, rows = choose_grid(width, height, limits["image_size"], limits["min_num"],
                                 limits["max_num"])
        n = cols * rows
        return n + 1 if limits["use_thumbnail"] and n > 1 else n

    def _render(self, record: _Record, num_tiles: list[int], where: str
                ) -> tuple[list[int], list[int]]:
        """Render to (input_ids, labels) and cut to `max_seq_length` after the last image."""
        if record.kind == "video" and len(num_tiles) == 1:
            num_tiles = num_tiles * self.num_video_frames  # scan counts one frame
        try:
            rendered = render(self.tokenizer, self.template, record.messages,
                              num_patches_list=num_tiles, num_image_token=self.num_image_token)
        except InputError as exc:
            raise BadRecordError("bad_field", str(exc), where) from None
        ids, labels, limit = rendered.input_ids, rendered.labels, self.max_seq_length
        if len(ids) <= limit:
            return ids, labels
        # Never cut inside <img><IMG_CONTEXT>…</img>: the splice needs every slot filled.
        images_end = rendered.image_spans[-1][1] + 1 if rendered.image_spans else 0
        if images_end > limit:
            raise BadRecordError("too_long", f"the images end at token {images_end} > "
                                 f"max_seq_length {limit}", where)
        ids, labels = ids[:limit], labels[:limit]
        if all(label == IGNORE_INDEX for label in labels):
            raise BadRecordError("too_long", f"no reply token is left within max_seq_length "
                                 f"{limit} (the sample has {len(rendered.input_ids)})", where)
        return ids, labels


# ---- helpers ---------------------------------------------------------------------------------
def _resolve_sources(sources: Any) -> list[DatasetSpec]:
    items = [sources] if isinstance(sources, (str, os.PathLike, DatasetSpec)) else list(sources)
    specs: list[DatasetSpec] = []
    for item in items:
        if isinstance(item, DatasetSpec):
            specs.append(item)
        elif str(item).endswith(".jsonl"):
            specs.append(DatasetSpec.from_annotation(item))
        elif str(item).endswith(".json"):
            specs += load_meta(item)
        else:
            raise ConfigError(f"{item}: give a meta .json file, a .jsonl annotation file or "
                              "a DatasetSpec")
    if not specs:
        raise ConfigError("SFTDataset needs at least one source")
    for spec in specs:
        if not Path(spec.annotation).is_file():
            raise ConfigError(f"{spec.where}: no such annotation file {spec.annotation}")
    return specs


def _index_lines(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Byte offsets [R] and 1-based line numbers [R] of the non-blank lines of `path`.

    Streams the file line by line, so memory is 16 bytes per record, not the file's size.
    """
    # array('q') holds 8 bytes per entry while growing (a list of ints would hold ~36).
    offsets, lines, pos = array("q"), array("q"), 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if raw.strip():
                offsets.append(pos)
                lines.append(number)
            pos += len(raw)
    return np.frombuffer(offsets, dtype=np.int64), np.frombuffer(lines, dtype=np.int64)


def _messages(conversations: Any, where: str) -> list[dict[str, str]]:
    """Check `conversations` and map upstream roles to `render`'s (human → user …)."""
    if conversations is None or conversations == []:
        raise BadRecordError("empty_conversations", "no conversations", where)
    if not isinstance(conversations, list):
        raise BadRecordError("bad_field", "conversations must be a list, got "
                             f"{type(conversations).__name__}", where)
    messages = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise BadRecordError("bad_field", f"conversations[{i}] needs a string 'value'", where)
        role = _ROLES.get(turn.get("from"))
        if role is None:
            raise BadRecordError("bad_turn_order", f"conversations[{i}]: unknown 'from' "
                                 f"{turn.get('from')!r} (human, gpt or system)", where)
        if role == "system" and i:
            raise BadRecordError("bad_turn_order", f"conversations[{i}]: a system turn may "
                                 "only come first", where)
        if role != "system":
            expected = "user" if sum(m["role"] != "system" for m in messages) % 2 == 0 \
                else "assistant"
            if role != expected:
                want = "human" if expected == "user" else "gpt"
                raise BadRecordError("bad_turn_order", f"conversations[{i}]: expected {want!r}, "
                                     f"got {turn['from']!r}", where)
            if role == "assistant" and not turn["value"].strip():
                raise BadRecordError("bad_field", f"conversations[{i}]: empty gpt reply", where)
        messages.append({"role": role, "content": turn["value"]})
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRecordError("bad_turn_order", "no gpt turn to train on", where)
    return messages


def _media_fields(item: dict, where: str) -> tuple[list[str], str | None]:
    """(image paths, video path or None) from `image` / `images` / `video`."""
    images = item.get("image")
    if images in (None, "", []):
        images = item.get("images")
    if images in (None, "", []):
        images = []
    elif isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
        raise BadRecordError("bad_field", "image/images must be a path or a list of paths",
                             where)
    video = item.get("video")
    if images or video in (None, ""):
        return images, None  # upstream: an image wins over a video
    if not isinstance(video, str):
        raise BadRecordError("bad_field", "video must be a path string", where)
    return [], video


def _join(root: Path, path: str) -> Path:
    # os.path.join semantics, as upstream: an absolute record path ignores the root.
    return Path(os.path.join(root, path))

