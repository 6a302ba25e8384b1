"""Fine-tuning: a typed config (YAML + `--key value`), freezing and LoRA, and the Trainer run.

`tilevl train CONFIG.yaml` (or `torchrun -m tilevl.train.sft CONFIG.yaml`) calls `train(load_train_config(...))`.
"""

from tilevl.train.args import TrainConfig, load_train_config
from tilevl.train.lora import apply_lora, count_parameters, default_llm_targets, freeze

__all__ = ["TrainConfig", "TrainResult", "apply_lora", "count_parameters", "default_llm_targets",
           "find_resume_checkpoint", "freeze", "load_train_config", "train"]


def __getattr__(name: str):
    # sft imports transformers' Trainer (slow); load it only when a run is asked for.
    if name in ("train", "TrainResult", "find_resume_checkpoint"):
        from tilevl.train import sft

        return getattr(sft, name)
    raise AttributeError(f"module 'tilevl.train' has no attribute {name!r}")
