"""tilevl's training-checkpoint format: weights as safetensors, a completion marker written last.

`checkpoint-N/` holds `model.safetensors` (or a PEFT adapter + `trainable_base.safetensors`)
beside Trainer's optimizer, scheduler, RNG and state files; FSDP runs hold torch's sharded
files instead. The marker `tilevl_checkpoint.json` says the folder is complete and carries
the running loss sum, so a resumed run's mean loss covers the whole run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from tilevl.errors import CheckpointError
from tilevl.train.lora import is_peft_model, trainable_base_names

COMPLETE_MARKER = "tilevl_checkpoint.json"  # written last, inside the staging folder
MODEL_WEIGHTS = "model.safetensors"
EXTRA_WEIGHTS = "trainable_base.safetensors"  # non-LoRA trainable weights of a LoRA run


def save_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], folder: Path) -> None:
    """A training checkpoint's weights: the full state dict, or the adapter + extra weights."""
    from safetensors.torch import save_file

    if is_peft_model(model):
        model.save_pretrained(str(folder), state_dict=state, safe_serialization=True)
        extra = {n: state[n].contiguous() for n in trainable_base_names(model) if n in state}
        if extra:
            save_file(extra, str(folder / EXTRA_WEIGHTS), metadata={"format": "pt"})
        return
    seen: set[tuple[int, int]] = set()
    unique = {}
    for key, tensor in state.items():  # a tied head shares the embedding's storage
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if tensor.device.type != "meta" and ident in seen:
            continue
        seen.add(ident)
        unique[key] = tensor.contiguous()
    save_file(unique, str(folder / MODEL_WEIGHTS), metadata={"format": "pt"})


def load_weights(model: torch.nn.Module, folder: Path) -> None:
    """Load what `save_weights` wrote into `model` (a PeftModel or a VisionLanguageModel)."""
    from safetensors.torch import load_file

    if is_peft_model(model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))
        files = [folder / EXTRA_WEIGHTS] if (folder / EXTRA_WEIGHTS).exists() else []
    else:
        files = [folder / MODEL_WEIGHTS]
    for file in files:
        if not file.exists():
            raise CheckpointError(f"{folder}: no {file.name}; not a tilevl training checkpoint")
        result = model.load_state_dict(load_file(str(file)), strict=False)
        if result.unexpected_keys:
            raise CheckpointError(f"{file}: keys the model lacks: {result.unexpected_keys[:5]}")


def find_resume_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete `checkpoint-N` in `output_dir` (staging folders are ignored).

    A `checkpoint-N` without our completion marker (copied in, or written by another
    tool) is skipped with a message rather than trusted.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    found = []
    for path in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        step = path.name.rsplit("-", 1)[-1]
        if not (path.is_dir() and step.isdigit()):
            continue
        if (path / COMPLETE_MARKER).exists():
            found.append((int(step), path))
        else:
            print(f"[tilevl train] skipping {path}: incomplete (no {COMPLETE_MARKER})", file=sys.stderr)
    return max(found)[1] if found else None


def read_loss_sum(checkpoint: Path) -> float | None:
    """The loss sum a checkpoint's completion marker recorded (None: not recorded)."""
    marker = json.loads((checkpoint / COMPLETE_MARKER).read_text("utf-8"))
    value = marker.get("loss_sum")
    return float(value) if value is not None else None
