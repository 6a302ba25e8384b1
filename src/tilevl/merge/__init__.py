"""Model merging: TIES, DARE, task arithmetic over task vectors; LoRA folding and merging.

`merge_adapters` is MMAlaya2's recipe (N LoRAs of one base merged with TIES), streamed module by module;
`mode="peft-lora"` runs PEFT's `add_weighted_adapter` arithmetic instead (tilevl.merge.peft_lora).
"""

from tilevl.merge.checkpoints import merge_checkpoints
from tilevl.merge.lora import (
    Adapter,
    LoraModule,
    adapter_deltas,
    fold_adapter,
    merge_adapters,
    merge_lora_into_checkpoint,
    module_delta,
    read_adapter,
)
from tilevl.merge.peft_lora import COMBINATION_TYPES, merge_lora_factors, write_peft_merged_adapter
from tilevl.merge.methods import (
    METHODS,
    drop_at_random,
    low_rank_factors,
    merge_dare,
    merge_deltas,
    merge_linear,
    merge_magnitude_prune,
    merge_task_arithmetic,
    merge_ties,
    trim_by_magnitude,
)

__all__ = [
    "COMBINATION_TYPES", "METHODS", "Adapter", "LoraModule", "adapter_deltas", "drop_at_random", "fold_adapter",
    "low_rank_factors", "merge_adapters", "merge_checkpoints", "merge_dare", "merge_deltas",
    "merge_linear", "merge_lora_factors", "merge_lora_into_checkpoint", "merge_magnitude_prune", "merge_task_arithmetic",
    "merge_ties", "module_delta", "read_adapter", "trim_by_magnitude", "write_peft_merged_adapter",
]
