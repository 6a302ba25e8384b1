"""Training data: meta files → lazy jsonl dataset → padded or packed batches.

See `meta.load_meta`, `dataset.SFTDataset` and `collate.pad_collate` / `collate.pack_samples`.
"""

from tilevl.data.collate import (
    LengthGroupedBatchSampler, PackedBatchSampler, additive_mask, pack_collate, pack_samples,
    pad_collate, plan_packs,
)
from tilevl.data.dataset import REASONS, BadRecordError, BadRecordStats, SFTDataset
from tilevl.data.meta import DatasetSpec, load_meta, repeat_indices

__all__ = [
    "REASONS", "BadRecordError", "BadRecordStats", "DatasetSpec", "LengthGroupedBatchSampler",
    "PackedBatchSampler", "SFTDataset", "additive_mask", "load_meta", "pack_collate",
    "pack_samples", "pad_collate", "plan_packs", "repeat_indices",
]
