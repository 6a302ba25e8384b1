"""How a training run is launched: the process-group backend, FSDP (on GPUs and CPUs), checks.

accelerate and transformers make several silent choices here; this module makes them explicit.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tilevl.errors import CheckpointError, ConfigError
from tilevl.optional import require
from tilevl.train.args import TrainConfig


def fsdp_requested(fsdp_option=None, environ: dict | None = None) -> bool:
    """FSDP asked for by `--fsdp` or by an accelerate config (ACCELERATE_USE_FSDP)."""
    env = os.environ if environ is None else environ
    return bool(fsdp_option) or env.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def check_launch(config: TrainConfig, environ: dict | None = None) -> None:
    """Refuse launches that would silently train differently from what was asked.

    `mixed_precision` in an accelerate config (ACCELERATE_MIXED_PRECISION) of bf16/fp16 with
    the training config's `precision: fp32`: transformers takes accelerate's, so the run
    would train in bf16 without a word (bf16/fp16 in our config win over accelerate's "no").

    Args:
        config: the run's config.
        environ: the environment to read (default os.environ; for tests).
    Raises:
        ConfigError: naming the setting and what to do instead.
    """
    env = os.environ if environ is None else environ
    on_cpu = config.use_cpu or not torch.cuda.is_available()
    if config.fsdp and on_cpu:
        raise ConfigError(f"fsdp: {config.fsdp!r}: on CPU, FSDP runs through accelerate's config "
                          "instead: accelerate launch --config_file configs/accelerate/fsdp.yaml "
                          "--num_processes N -m tilevl.train.sft CONFIG.yaml")
    launched = env.get("ACCELERATE_MIXED_PRECISION", "no")
    if config.precision == "fp32" and launched in ("bf16", "fp16"):
        raise ConfigError(
            f"precision: fp32 in the training config, but the accelerate config says "
            f"mixed_precision: {launched}, which transformers would train in; make them agree "
            f"(precision: {launched}, or mixed_precision: 'no' in the accelerate config)")


def setup_fsdp(accelerator, model: torch.nn.Module) -> bool:
    """Make FSDP from an accelerate config happen on CPU too, and fit its wrap list to `model`.

    accelerate builds the FSDP plugin from the launcher's settings but, on CPU, files the run
    as MULTI_CPU data parallel and drops the plugin (`AcceleratorState` sets FSDP up only for
    GPU-like devices): the run would be plain DDP with a whole model per process. torch's
    FSDP2 shards on CPU over gloo and accelerate's FSDP2 preparation is device-agnostic, so
    the plugin is handed back. FSDP1 is refused there (it ties each rank to a CUDA device).

    Args:
        accelerator: the Trainer's Accelerator, just created.
        model: the model it will prepare.
    Returns:
        Whether FSDP is on (Trainer's `is_fsdp_enabled`).
    """
    state = accelerator.state
    if getattr(state, "fsdp_plugin", None) is None and fsdp_requested():
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin()
        if plugin.fsdp_version != 2:
            raise ConfigError("FSDP on CPU needs fsdp_version: 2 in the accelerate config "
                              "(FSDP1 ties each rank to a CUDA device)")
        state.distributed_type = DistributedType.FSDP
        state.fsdp_plugin = plugin
    plugin = getattr(state, "fsdp_plugin", None)
    if plugin is not None and plugin.transformer_cls_names_to_wrap:
        # One config lists the layer classes of every LLM family; accelerate refuses a class
        # the model lacks, so keep those this model has.
        present = {type(m).__name__ for m in model.modules()}
        kept = [c for c in plugin.transformer_cls_names_to_wrap if c in present]
        if not kept:
            raise ConfigError(f"fsdp_transformer_layer_cls_to_wrap: none of "
                              f"{plugin.transformer_cls_names_to_wrap} is in the model")
        plugin.transformer_cls_names_to_wrap = kept
    return plugin is not None


def gather_full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict of an FSDP-sharded model on rank 0's CPU (every rank must call)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                cpu_offload=True))


def default_backend(config: TrainConfig) -> str | None:
    """gloo for a multi-process CPU run (accelerate would otherwise look for oneCCL)."""
    on_gpu = torch.cuda.is_available() and not config.use_cpu
    return "gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not on_gpu else None


def consolidate(sharded: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A plain VisionLanguageModel on CPU holding the gathered full `state` of an FSDP model."""
    from tilevl.model.vlm import build_model

    model = build_model(sharded.config, device="cpu", dtype=next(iter(state.values())).dtype,
                        seed=None)
    result = model.load_state_dict({k: v.detach().to("cpu") for k, v in state.items()},
                                   strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"FSDP consolidation: keys missing {result.missing_keys[:5]}, "
                              f"unexpected {result.unexpected_keys[:5]}")
    model.img_context_token_id = sharded.img_context_token_id
    return model


def check_optional(config: TrainConfig) -> None:
    """The optional packages and files the config names are there (DeepSpeed, TensorBoard)."""
    if config.deepspeed:
        require("deepspeed", extra="deepspeed", purpose=f"by deepspeed: {config.deepspeed}")
        if not Path(config.deepspeed).is_file():
            raise ConfigError(f"deepspeed: no such file {config.deepspeed}")
    if "tensorboard" in config.report_to and not any(
            _importable(m) for m in ("tensorboard", "tensorboardX")):
        require("tensorboard", extra="train", purpose="by report_to: tensorboard")


def _importable(module: str) -> bool:
    from tilevl.optional import is_available

    return is_available(module)



