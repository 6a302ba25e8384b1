"""Cross-request prefix cache: KV of already-seen prompt prefixes and image features.

OpenAI clients resend the whole conversation every turn; this keeps, within a memory budget
(LRU), the KV cache of earlier prompts and the vision tower's output per image, so a new
request prefills only what no earlier request (of any client) has computed.

A prompt is keyed token by token, with each `<IMG_CONTEXT>` slot standing for (image content
hash, slot offset): the same ids with another picture are another prefix. Prefixes are found
by a chain of digests over blocks of `BLOCK` keys (blake2b, so no client can forge another's
prefix), then extended token by token with `chat.session.common_prefix`.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from tilevl.chat.session import common_prefix

BLOCK = 16  # keys per digest: lookups cost len/BLOCK dictionary probes


def image_key(tiles: torch.Tensor) -> bytes:
    """A content hash of one image's tiles [T, 3, S, S] (identical pixels, identical key)."""
    data = tiles.detach().cpu().contiguous()
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str((tuple(data.shape), str(data.dtype))).encode())
    digest.update(memoryview(data.reshape(-1).view(torch.uint8).numpy()))  # any dtype, no copy
    return digest.digest()


def prompt_keys(ids: Sequence[int], context_id: int | None, images: Sequence[bytes],
                tokens_per_image: Sequence[int]) -> np.ndarray:
    """The prompt as int64 keys: ids as they are, each image slot as -(hash of image, offset).

    Args:
        ids: the rendered prompt.
        context_id: the `<IMG_CONTEXT>` id.
        images: `image_key` of each image, in slot order.
        tokens_per_image: slots of each image (tiles × tokens per tile).
    """
    keys = np.asarray(ids, dtype=np.int64).copy()
    if not images:
        return keys
    slots = np.flatnonzero(keys == context_id)
    offset = 0
    for key, count in zip(images, tokens_per_image):
        base = int.from_bytes(key[:7], "little")  # 56 bits: stays negative and distinct from ids
        keys[slots[offset:offset + count]] = -1 - ((base + np.arange(count, dtype=np.int64)) % 2**56)
        offset += count
    return keys


def block_digests(keys: np.ndarray) -> list[bytes]:
    """Chain digests of each full block: digest[j] stands for keys[:(j + 1) * BLOCK]."""
    out, previous = [], b""
    for start in range(0, len(keys) - BLOCK + 1, BLOCK):
        previous = hashlib.blake2b(previous + keys[start:start + BLOCK].tobytes(), digest_size=16).digest()
        out.append(previous)
    return out


@dataclass(eq=False)
class _Entry:
    keys: np.ndarray  # [L]
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer [1, H, L, D]
    digests: list[bytes]
    nbytes: int


@dataclass
class PrefixMatch:
    """The longest cached prefix of a prompt: `length` tokens and their KV per layer."""

    length: int
    kv: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


class PrefixCache:
    """KV of prompt prefixes and features of images, in one LRU under `budget_bytes`.

    Only the scheduler's thread calls it; `stats` may be read from anywhere.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self._lru: OrderedDict[object, _Entry | torch.Tensor] = OrderedDict()  # key → item
        self._by_digest: dict[bytes, _Entry] = {}
        self.used = 0
        self.prefixes = 0  # entries that are prompts (the rest are images); kept as a count so
        # that /health never iterates the LRU while the scheduler's thread changes it
        self.stats = {"lookups": 0, "hits": 0, "reused_tokens": 0, "prefilled_tokens": 0,
                      "image_hits": 0, "images_encoded": 0, "evictions": 0}

    def summary(self) -> dict:
        """Counters plus the memory in use, for /health."""
        return {**self.stats, "prefixes": self.prefixes, "images": len(self._lru) - self.prefixes,
                "used_bytes": self.used, "budget_bytes": self.budget}

    # ---- prefixes ---------------------------------------------------------------------------
    def lookup(self, keys: np.ndarray, limit: int) -> PrefixMatch:
        """The longest cached prefix of `keys`, at most `limit` tokens long."""
        self.stats["lookups"] += 1
        digests = block_digests(keys)
        for j in range(len(digests) - 1, -1, -1):
            entry = self._by_digest.get(digests[j])
            if entry is None:
                continue
            start = (j + 1) * BLOCK
            length = min(start + common_prefix(entry.keys[start:].tolist(), keys[start:].tolist()), limit)
            if length <= 0:
                break
            self._lru.move_to_end(id(entry))
            self.stats["hits"] += 1
            self.stats["reused_tokens"] += length
            return PrefixMatch(length, [(k[:, :, :length], v[:, :, :length]) for k, v in entry.kv])
        return PrefixMatch(0)

    def insert(self, keys: np.ndarray, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Keep the KV [1, H, L, D] per layer of a prompt whose keys are `keys` ([L])."""
        digests = block_digests(keys)
        if not digests:
            return
        nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
        if nbytes > self.budget:
            return
        # An entry this prompt extends is contained in it: the new one replaces it.
        for digest in reversed(digests):
            old = self._by_digest.get(digest)
            if old is not None:
                if len(old.keys) <= len(keys) and common_prefix(old.keys.tolist(), keys.tolist()) == len(old.keys):
                    self._drop(id(old))
                break
        entry = _Entry(keys.copy(), [(k.clone(), v.clone()) for k, v in kv], digests, nbytes)
        self._lru[id(entry)] = entry
        self.used += nbytes
        self.prefixes += 1
        for digest in digests:
            self._by_digest[digest] = entry
        self._fit()

    # ---- images -----------------------------------------------------------------------------
    def image_features(self, key: bytes, compute) -> torch.Tensor:
        """The vision tower's output for the image `key`: cached, or `compute()` and kept."""
        cached = self._lru.get(key)
        if cached is not None:
            self._lru.move_to_end(key)
            self.stats["image_hits"] += 1
            return cached
        features = compute()
        self.stats["images_encoded"] += 1
        nbytes = features.numel() * features.element_size()
        if nbytes <= self.budget:
            self._lru[key] = features
            self.used += nbytes
            self._fit()
        return features

    # ---- memory -----------------------------------------------------------------------------
    def _fit(self) -> None:
        while self.used > self.budget and self._lru:
            self._drop(next(iter(self._lru)))
            self.stats["evictions"] += 1

    def _drop(self, key) -> None:
        item = self._lru.pop(key)
        if isinstance(item, _Entry):
            self.used -= item.nbytes
            self.prefixes -= 1
            for digest in item.digests:
                if self._by_digest.get(digest) is item:
                    del self._by_digest[digest]
        else:
            self.used -= item.numel() * item.element_size()


class TileMemo:
    """The tiles and `image_key` of recently seen image sources (data URLs, downloaded bytes).

    A client resends its images every turn; this skips decoding, tiling and hashing them
    again. Local paths are not memoised (the file may change). Thread-safe: the
    preprocessing pool calls it from several threads.
    """

    def __init__(self, capacity: int = 16) -> None:
        self.capacity = capacity
        self._items: OrderedDict[bytes, tuple[torch.Tensor, bytes]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def tiles(self, source: str | bytes, max_tiles: int, make) -> tuple[torch.Tensor, bytes]:
        """(tiles [T, 3, S, S], image key) of `source` cut into at most `max_tiles` tiles;
        `make()` gives the tiles when they are not memoised (its errors pass through)."""
        if isinstance(source, str) and not source.startswith("data:"):
            tiles = make()
            return tiles, image_key(tiles)
        data = source.encode() if isinstance(source, str) else source
        key = hashlib.blake2b(data + b"|%d" % max_tiles, digest_size=16).digest()
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return hit
        tiles = make()
        item = (tiles, image_key(tiles))
        with self._lock:
            self._items[key] = item
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return item
