"""Batching training samples: right padding, or packing several samples into one sequence.

Packed rows keep attention inside each sample (block-diagonal causal mask, positions restart).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler

from tilevl.errors import ConfigError
from tilevl.inputs.template import IGNORE_INDEX

ATTENTION_MODES = ("block_mask", "position_ids")


def pad_collate(batch: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Right-pad samples into a training batch.

    Args:
        batch: samples from `SFTDataset` (input_ids [L_i], labels [L_i], pixel_values
            [N_i, 3, S, S] or None).
        pad_token_id: the id written into padding (never attended to, never a label).
    Returns:
        {"input_ids": [B, L], "labels": [B, L] (-100 on padding), "attention_mask": [B, L]
        (1 on tokens, 0 on padding), "pixel_values": [sum N_i, 3, S, S] in sample order, or
        None when no sample has an image}; ready for `model(**batch)`.
    """
    if not batch:
        raise ConfigError("pad_collate got an empty batch")
    length = max(len(s["input_ids"]) for s in batch)
    input_ids = torch.full((len(batch), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
    for row, sample in enumerate(batch):
        n = len(sample["input_ids"])
        input_ids[row, :n] = sample["input_ids"]
        labels[row, :n] = sample["labels"]
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask,
            "pixel_values": _cat_pixels(batch)}


def plan_packs(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group sample indices into packs of at most `max_tokens` tokens (first-fit decreasing).

    Args:
        lengths: token length of each sample.
        max_tokens: the budget of one packed row. A longer sample gets a row of its own.
    Returns:
        Packs of indices, each in increasing index order; deterministic for given lengths.
    """
    if max_tokens < 1:
        raise ConfigError(f"max_tokens must be ≥ 1, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    packs: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for p, left in enumerate(room):
            if lengths[i] <= left:
                packs[p].append(i)
                room[p] -= lengths[i]
                break
        else:
            packs.append([i])
            room.append(max_tokens - lengths[i])
    return [sorted(p) for p in packs]


def pack_samples(samples: Sequence[dict[str, Any]], max_tokens: int | None = None, *,
                 pad_token_id: int = 0, attention: str = "block_mask") -> dict[str, Any]:
    """Concatenate samples into packed rows in which no token attends across samples.

    Every sample's positions restart at 0 and its first label is -100, so the loss of a
    packed batch equals the sum of the samples' separate losses. Two ways to keep the
    attention inside a sample, both checked against separate forwards in the tests:
    "block_mask" passes a 4-D boolean mask [R, 1, L, L] (True = may attend), which
    transformers hands to SDPA as it is (eager attention wants an additive float mask:
    use `additive_mask`); "position_ids" passes no mask and lets transformers (≥ 4.5x,
    checked on 5.23) find the samples from the restarting positions, which also works with
    flash-attention and saves the L² mask.

    Args:
        samples: from `SFTDataset`.
        max_tokens: budget per row (rows planned with `plan_packs`); None: one row.
        pad_token_id: id written into the padding at the end of shorter rows.
        attention: "block_mask" or "position_ids".
    Returns:
        {"input_ids": [R, L], "labels": [R, L], "position_ids": [R, L],
        "attention_mask": [R, 1, L, L] bool or None, "pixel_values": [T, 3, S, S] or None,
        and "use_cache": False in "position_ids" mode}; ready for `model(**batch)`.
        Padding forms its own block, so no row of the mask is empty (an all-masked row
        would give NaN in SDPA and poison the gradients).
    """
    if attention not in ATTENTION_MODES:
        raise ConfigError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
    if not samples:
        raise ConfigError("pack_samples got no samples")
    lengths = [len(s["input_ids"]) for s in samples]
    rows = plan_packs(lengths, max_tokens) if max_tokens else [list(range(len(samples)))]
    width = max(sum(lengths[i] for i in row) for row in rows)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    segment = torch.full(shape, -1, dtype=torch.long)  # sample number in its row; -1: padding
    for r, row in enumerate(rows):
        start = 0
        for k, i in enumerate(row):
            n, stop = lengths[i], start + lengths[i]
            input_ids[r, start:stop] = samples[i]["input_ids"]
            labels[r, start:stop] = samples[i]["labels"]
            # The previous sample's last logit would be trained to predict this first token.
            labels[r, start] = IGNORE_INDEX
            position_ids[r, start:stop] = torch.arange(n)
            segment[r, start:stop] = k
            start = stop
        position_ids[r, start:] = torch.arange(width - start)  # padding: a block of its own
    mask = None
    if attention == "block_mask":
        causal = torch.ones(width, width, dtype=torch.bool).tril()  # [L, L]
        mask = (segment[:, :, None] == segment[:, None, :]) & causal  # [R, L, L]
        mask = mask[:, None]  # [R, 1, L, L]: one mask shared by all heads
    ordered = [samples[i] for row in rows for i in row]  # pixel order = slot order
    batch = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids,
             "attention_mask": mask, "pixel_values": _cat_pixels(ordered)}
    if attention == "position_ids":
        # transformers looks for packed samples only when there is no KV cache, and the
        # Qwen2/Llama configs default to use_cache=True: with a cache the rows would be
        # plain causal and samples would see each other.
        batch["use_cache"] = False
    return batch


def pack_collate(batch: Sequence[dict[str, Any]], pad_token_id: int,
                 max_tokens: int | None = None, attention: str = "block_mask") -> dict[str, Any]:
    """`pack_samples` with the DataLoader's collate signature (use functools.partial)."""
    return pack_samples(batch, max_tokens, pad_token_id=pad_token_id, attention=attention)


def additive_mask(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A boolean attention mask (True = attend) as the additive float mask eager attention adds.

    Args:
        mask: bool [R, 1, L, L].
        dtype: the model's compute dtype.
    Returns:
        [R, 1, L, L]: 0 where attending, the dtype's minimum elsewhere (not -inf, so a
        softmax over a masked row stays finite).
    """
    out = torch.zeros(mask.shape, dtype=dtype)
    return out.masked_fill_(~mask, torch.finfo(dtype).min)


def _cat_pixels(samples: Sequence[dict[str, Any]]) -> torch.Tensor | None:
    tiles = [s["pixel_values"] for s in samples if s.get("pixel_values") is not None]
    return torch.cat(tiles) if tiles else None


# ---- samplers ----------------------------------------------------------------------------
class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of similar length (less padding), in a random order that changes per epoch.

    Indices are shuffled, cut into groups of `group_size`, each group sorted by length and
    cut into batches; the batches are then shuffled. Call `set_epoch` each epoch.

    Args:
        lengths: token length per dataset index (`SFTDataset.scan()`).
        batch_size: samples per batch.
        shuffle: False keeps index order inside groups (for tests and evaluation).
        seed: the base seed; the epoch is added to it.
        group_size: samples sorted together; default 50 batches' worth.
        drop_last: drop a final short batch.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, shuffle: bool = True,
                 seed: int = 0, group_size: int | None = None, drop_last: bool = False) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be ≥ 1, got {batch_size}")
        self.lengths, self.batch_size = list(lengths), batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.group_size = max(group_size or batch_size * 50, batch_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        order = _order(len(self.lengths), self.shuffle, gen)
        batches = []
        for g in range(0, len(order), self.group_size):
            group = sorted(order[g:g + self.group_size], key=lambda i: -self.lengths[i])
            batches += [group[b:b + self.batch_size] for b in range(0, len(group), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]
        return iter(batches)

    def __len__(self) -> int:
        n = len(self.lengths)
        if not self.drop_last:
            full, rest = divmod(self.group_size, self.batch_size)
            groups, last = divmod(n, self.group_size)
            return groups * (full + (rest > 0)) + math.ceil(last / self.batch_size)
        return sum(1 for _ in iter(self))


class PackedBatchSampler(Sampler[list[int]]):
    """Batches that fill `rows_per_batch` packed rows of at most `max_tokens` tokens each.

    Use with `pack_collate(..., max_tokens=max_tokens)` (or no max_tokens when
    rows_per_batch is 1: one row). Indices are shuffled per epoch and packed
    first-fit-decreasing inside groups of `group_size`, so rows are tight but the data
    order stays random. The collator re-plans the rows of a batch with the same rule; on
    rare inputs that gives one row more than `rows_per_batch`, never a row over budget.
    Make `max_tokens` the dataset's max_seq_length: attention cost grows with the row
    length squared, so rows longer than the padded baseline's would cost more per token.

    Args:
        lengths: token length per dataset index (`SFTDataset.scan()`).
        max_tokens: the row budget (a longer sample gets a row of its own).
        rows_per_batch: packed rows per batch.
        shuffle, seed: as `LengthGroupedBatchSampler`.
        group_size: samples packed together.
    """

    def __init__(self, lengths: Sequence[int], max_tokens: int, *, rows_per_batch: int = 1,
                 shuffle: bool = True, seed: int = 0, group_size: int = 1000) -> None:
        if rows_per_batch < 1:
            raise ConfigError(f"rows_per_batch must be ≥ 1, got {rows_per_batch}")
        self.lengths, self.max_tokens = list(lengths), max_tokens
        self.rows_per_batch = rows_per_batch
        self.shuffle, self.seed, self.group_size = shuffle, seed, max(group_size, 1)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _packs(self) -> list[list[int]]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        order = _order(len(self.lengths), self.shuffle, gen)
        packs = []
        for g in range(0, len(order), self.group_size):
            group = order[g:g + self.group_size]
            packs += [[group[k] for k in pack]
                      for pack in plan_packs([self.lengths[i] for i in group], self.max_tokens)]
        if self.shuffle:
            packs = [packs[i] for i in torch.randperm(len(packs), generator=gen).tolist()]
        k = self.rows_per_batch
        return [sum(packs[b:b + k], []) for b in range(0, len(packs), k)]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._packs())

    def __len__(self) -> int:
        return len(self._packs())


def _order(n: int, shuffle: bool, gen: torch.Generator) -> list[int]:
    return torch.randperm(n, generator=gen).tolist() if shuffle else list(range(n))
