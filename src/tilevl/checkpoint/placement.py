"""Placement of a loaded model across several GPUs (the seeds' `split_model` rule).

The first GPU also holds the vision tower, so it counts as half a GPU for LLM layers; the
embeddings, the final norm, the head and the last layer stay with it. accelerate dispatches.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tilevl.errors import CheckpointError


def split_model_device_map(num_layers: int, num_gpus: int) -> dict[str, int]:
    """The device map of the seeds' `split_model` for `num_layers` LLM layers.

    Args:
        num_layers: decoder layers of the LLM.
        num_gpus: GPUs to spread over (≥ 1).
    Returns:
        {module name: gpu index} for our module names.
    """
    if num_gpus < 1:
        raise CheckpointError(f"a device map needs at least one GPU, got {num_gpus}")
    per_gpu = math.ceil(num_layers / (num_gpus - 0.5)) if num_gpus > 1 else num_layers
    counts = [per_gpu] * num_gpus
    counts[0] = math.ceil(per_gpu * 0.5) if num_gpus > 1 else num_layers
    device_map: dict[str, int] = {}
    layer = 0
    for gpu, count in enumerate(counts):
        for _ in range(count):
            if layer < num_layers:
                device_map[f"language_model.model.layers.{layer}"] = gpu
                layer += 1
    while layer < num_layers:  # rounding left some over: they go to the last GPU
        device_map[f"language_model.model.layers.{layer}"] = num_gpus - 1
        layer += 1
    for name in (
        "vision_model", "mlp1", "language_model.model.embed_tokens", "language_model.model.norm",
        "language_model.model.rotary_emb", "language_model.lm_head",
        f"language_model.model.layers.{num_layers - 1}",
    ):
        device_map[name] = 0
    return device_map


def dispatch(model: nn.Module, device_map: str | dict) -> nn.Module:
    """Place `model` by `device_map` ("auto" = the split rule over all visible GPUs)."""
    from accelerate import dispatch_model

    if device_map == "auto":
        count = torch.cuda.device_count()
        if count == 0:
            raise CheckpointError('device_map="auto" needs CUDA GPUs; none is visible (use device="cpu")')
        device_map = split_model_device_map(model.config.num_llm_layers, count)
    if not isinstance(device_map, dict):
        raise CheckpointError(f'device_map must be "auto" or a dict, got {device_map!r}')
    return dispatch_model(model, device_map=device_map)
