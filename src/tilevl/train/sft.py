"""Supervised fine-tuning on transformers' Trainer: config → model + data → train → saved model.

Runs unchanged under `torchrun` / `accelerate launch` (DDP, DeepSpeed ZeRO, FSDP); checkpoints are atomic and resumable.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Sampler
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints, seed_worker

from tilevl.errors import ConfigError
from tilevl.train.args import TrainConfig, load_train_config
from tilevl.train.checkpoints import (  # noqa: F401  (re-exported: the checkpoint format)
    COMPLETE_MARKER, EXTRA_WEIGHTS, MODEL_WEIGHTS, find_resume_checkpoint, load_weights,
    read_loss_sum, save_weights)
from tilevl.train.launch import (check_launch, check_optional, consolidate, default_backend,
                                 gather_full_state, setup_fsdp)
from tilevl.train.lora import apply_lora, base_model, count_parameters, is_peft_model, \
    trainable_base_names

STAGING_PREFIX = ".staging-"
SUMMARY_FILE = "train_summary.json"
BAD_RECORDS_FILE = "bad_records.jsonl"  # every skipped record: {reason, place, detail}


# ---- batches ------------------------------------------------------------------------------------
class GlobalBatchSampler(Sampler[list[int]]):
    """This rank's share of each global batch, so N processes see what 1 process would.

    The inner sampler yields global batches (padded mode: `per_device × world` samples;
    packed mode: one row each, grouped `world` at a time). Rank r takes items r, r+W, …
    of each global batch. A short last batch is topped up from the start of the epoch so
    that no rank goes without data (a rank without a batch would hang the others).

    Args:
        inner: yields global batches; has `set_epoch`.
        world_size, rank: of the process group.
        packed: the inner sampler yields single packs (one per rank and step).
    """

    def __init__(self, inner, world_size: int, rank: int, packed: bool = False) -> None:
        self.inner, self.world_size, self.rank, self.packed = inner, world_size, rank, packed

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def _global_batches(self) -> Iterator[list[list[int]]]:
        """Each global step as a list of per-rank index lists."""
        batches = list(self.inner)
        if self.packed:  # W packs make one step
            for s in range(0, len(batches), self.world_size):
                step = batches[s:s + self.world_size]
                step += batches[:self.world_size - len(step)]  # top up from the start
                yield step
            return
        first = [i for b in batches for i in b]
        for batch in batches:
            if len(batch) < self.world_size:
                batch = batch + first[:self.world_size - len(batch)]
            yield [batch[r::self.world_size] for r in range(self.world_size)]

    def __iter__(self) -> Iterator[list[int]]:
        for step in self._global_batches():
            yield step[self.rank]

    def __len__(self) -> int:
        n = len(self.inner)
        return math.ceil(n / self.world_size) if self.packed else n


def make_batch_sampler(config: TrainConfig, lengths: Sequence[int], world_size: int,
                       rank: int) -> GlobalBatchSampler:
    """Packed rows, length-grouped batches or plain shuffled batches, per the config."""
    from tilevl.data.collate import LengthGroupedBatchSampler, PackedBatchSampler

    if config.pack_to_tokens:
        inner = PackedBatchSampler(lengths, config.pack_to_tokens, seed=config.seed)
        return GlobalBatchSampler(inner, world_size, rank, packed=True)
    size = config.per_device_train_batch_size * world_size
    # group_size = one batch: nothing is sorted across batches, so batches are plain random.
    inner = LengthGroupedBatchSampler(lengths, size, seed=config.seed,
                                      group_size=None if config.group_by_length else size)
    return GlobalBatchSampler(inner, world_size, rank)


def param_part(name: str) -> str:
    """"vision", "mlp" or "llm": the part of the InternVL network a parameter name belongs to
    (also under PEFT's `base_model.model.` prefix and for LoRA weights)."""
    parts = name.split(".")
    if "vision_model" in parts:
        return "vision"
    if "mlp1" in parts:
        return "mlp"
    return "llm"


def param_groups(model, config: TrainConfig, decay_names: set[str]) -> list[dict]:
    """The trainable parameters in optimizer groups by part (its learning rate) and by weight
    decay (Trainer's rule: none on biases and norms). Empty groups are left out."""
    rates = {"llm": config.learning_rate,
             "vision": config.vision_learning_rate or config.learning_rate,
             "mlp": config.mlp_learning_rate or config.learning_rate}
    grouped: dict[tuple[str, bool], list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            grouped.setdefault((param_part(name), name in decay_names), []).append(param)
    return [{"params": params, "lr": rates[part],
             "weight_decay": config.weight_decay if decay else 0.0}
            for (part, decay), params in sorted(grouped.items())]


# ---- the Trainer --------------------------------------------------------------------------------
class SFTTrainer(Trainer):
    """Trainer with our batch samplers, atomic checkpoints and a checkpoint format for our model.

    Checkpoints hold `model.safetensors` (full fine-tuning) or a PEFT adapter plus
    `trainable_base.safetensors` (LoRA runs that also train, e.g., the projector), with
    Trainer's optimizer, scheduler, RNG and state files beside them.
    """

    def __init__(self, *args, train_config: TrainConfig, lengths: Sequence[int], tokenizer=None,
                 **kwargs) -> None:
        # The tokenizer is not Trainer's processing_class: Trainer would align its special
        # tokens with `model.config`, which is our ModelConfig, not a transformers config.
        super().__init__(*args, **kwargs)
        self.tokenizer = tokenizer
        self.train_config = train_config
        self.lengths = list(lengths)
        self.tokens_seen = 0  # this rank's non-padding input tokens
        self._staging: Path | None = None
        self.train_batch_sampler: GlobalBatchSampler | None = None
        # Sum of the per-step losses before this `train()` call (read from the resumed
        # checkpoint's marker); None: unknown (a checkpoint from before it was recorded).
        self.loss_before: float | None = 0.0
        self.add_callback(_RunningLoss(self))

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        self.is_fsdp_enabled = setup_fsdp(self.accelerator, self.model)

    def get_train_dataloader(self) -> DataLoader:
        args = self.args
        self.train_batch_sampler = make_batch_sampler(self.train_config, self.lengths,
                                                      args.world_size, args.process_index)
        loader = DataLoader(
            self.train_dataset, batch_sampler=self.train_batch_sampler,
            collate_fn=self.data_collator, num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            worker_init_fn=functools.partial(seed_worker, num_workers=args.dataloader_num_workers,
                                             rank=args.process_index),
        )
        prepared = self.accelerator.prepare(loader)
        # Our sampler already picks this rank's share; accelerate's BatchSamplerShard would
        # shard it again (Trainer neutralises it the same way for its BatchRebalanceSampler).
        shard = getattr(prepared, "batch_sampler", None)
        if shard is not None and getattr(shard, "batch_sampler", None) is self.train_batch_sampler:
            shard.num_processes, shard.process_index = 1, 0
        return prepared

    def create_optimizer(self, model=None):
        """Trainer's optimizer, with the vision tower and projector at their own learning
        rates when `vision_learning_rate` / `mlp_learning_rate` are set (see param_groups)."""
        config = self.train_config
        if self.optimizer is None and (config.vision_learning_rate is not None
                                       or config.mlp_learning_rate is not None):
            opt_model = self.model if model is None else model
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            groups = param_groups(opt_model, config, set(self.get_decay_parameter_names(opt_model)))
            self.optimizer = optimizer_cls(groups, **kwargs)
        return super().create_optimizer(model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mask = inputs.get("attention_mask")
        ids = inputs["input_ids"]  # [B, L]
        # Packed rows carry a 4-D mask [R, 1, L, L]; their only padding is a row's tail.
        self.tokens_seen += int(mask.sum()) if mask is not None and mask.dim() == 2 else ids.numel()
        if self.train_config.loss_reduction == "token":
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        from tilevl.train.loss import weighted_lm_loss

        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = weighted_lm_loss(outputs.logits, labels, self.train_config.loss_reduction,
                                inputs.get("position_ids"))
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            # Trainer then skips its division by the accumulation steps: do it here.
            loss = loss / self.current_gradient_accumulation_steps
        return (loss, outputs) if return_outputs else loss

    # ---- the whole run's mean loss -----------------------------------------------------------
    def running_loss_sum(self) -> float:
        """Per-step losses (averaged over ranks) summed from step 1 to now, including the
        steps not logged yet. Every rank must call it (it gathers)."""
        from transformers.trainer_pt_utils import nested_gather

        pending = nested_gather(self._tr_loss.detach().clone(), self.args.parallel_mode)
        return self._total_loss_scalar + float(pending.mean().item())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Trainer's train_loss covers only the steps of this call; after a resume the run's
        # earlier steps count too (their sum came back in loss_before, see _RunningLoss).
        if "train_loss" in logs and self.loss_before is not None and self.state.global_step:
            logs["train_loss"] = self._total_loss_scalar / self.state.global_step
        super().log(logs, start_time)

    def _finalize_training(self, trial, num_train_samples, start_time):
        output = super()._finalize_training(trial, num_train_samples, start_time)
        return output._replace(training_loss=output.metrics.get("train_loss", output.training_loss))

    # ---- atomic checkpoints -------------------------------------------------------------------
    def _get_output_dir(self, trial) -> str:
        return str(self._staging) if self._staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """Write `checkpoint-N` under a staging name, then rename it into place.

        Every rank writes its part (RNG state, DeepSpeed/FSDP shards) into the staging
        folder; after a barrier the main process marks it complete and renames it, so a
        crash never leaves a `checkpoint-N` that resuming would trust.
        """
        run_dir = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = run_dir / f"{STAGING_PREFIX}{name}"
        if self.args.should_save and staging.exists():
            shutil.rmtree(staging)  # left by a crashed save
        self.accelerator.wait_for_everyone()
        self._staging = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = None
        loss_sum = self.running_loss_sum()
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            written = staging / name
            marker = {"global_step": self.state.global_step, "world_size": self.args.world_size}
            if self.loss_before is not None:  # for the whole run's mean loss after a resume
                marker["loss_sum"] = loss_sum
            (written / COMPLETE_MARKER).write_text(json.dumps(marker) + "\n", "utf-8")
            final = run_dir / name
            if final.exists():  # an older run's checkpoint of the same step
                shutil.rmtree(final)
            os.replace(written, final)
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(output_dir=str(run_dir), save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self.args.should_save:
            return
        folder = Path(output_dir or self.args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        state = state_dict if state_dict is not None else model.state_dict()
        save_weights(model, state, folder)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(folder))
        (folder / "tilevl_train_config.json").write_text(
            json.dumps(self.train_config.to_dict(), indent=2) + "\n", "utf-8")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_weights(model if model is not None else self.model, Path(resume_from_checkpoint))


class _RunningLoss(TrainerCallback):
    """Start this call's loss sum where the resumed run left it, so the mean covers the run."""

    def __init__(self, trainer: SFTTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer.loss_before is not None:
            self.trainer._total_loss_scalar = self.trainer.loss_before


# ---- progress -------------------------------------------------------------------------------------
class TrainProgress(TrainerCallback):
    """One tqdm bar: step, ETA (tqdm's), loss, learning rate and tokens/s over all ranks."""

    def __init__(self, trainer: SFTTrainer) -> None:
        self.trainer, self.bar, self.t0, self.tokens0 = trainer, None, 0.0, 0

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, unit="step",
                            dynamic_ncols=True, file=sys.stderr)
        self.t0, self.tokens0 = time.perf_counter(), self.trainer.tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs:
            return
        # Every rank sees a similar number of tokens; this rank's count × world size.
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        tokens = (self.trainer.tokens_seen - self.tokens0) * args.world_size
        post = {"tok/s": f"{tokens / elapsed:.0f}"}
        if "loss" in logs:
            post["loss"] = f"{logs['loss']:.4f}"
        if "learning_rate" in logs:
            post["lr"] = f"{logs['learning_rate']:.2e}"
        self.bar.set_postfix(post, refresh=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class SamplerEpoch(TrainerCallback):
    """Tell the batch sampler the epoch, also after a mid-epoch resume (Trainer's own
    `set_epoch` does not reach it through accelerate's batch-skipping wrapper)."""

    def __init__(self, trainer: SFTTrainer) -> None:
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.trainer.train_batch_sampler is not None:
            self.trainer.train_batch_sampler.set_epoch(int(state.epoch or 0))


# ---- the run --------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What a run wrote and how it went."""

    output_dir: Path
    model_dir: Path | None  # the full checkpoint (official layout + tokenizer)
    adapter_dir: Path | None  # LoRA runs: the PEFT adapter folder
    global_step: int
    train_loss: float | None
    log_history: list[dict] = field(default_factory=list)
    trainable_parameters: int = 0
    records: dict = field(default_factory=dict)  # valid / bad / samples_per_epoch / report
    model: torch.nn.Module | None = field(default=None, repr=False)

    @property
    def last_loss(self) -> float | None:
        """The loss of the last logged step."""
        losses = [entry["loss"] for entry in self.log_history if "loss" in entry]
        return losses[-1] if losses else None


def prepare_model(config: TrainConfig):
    """Load (or build) the model and tokenizer and set what the config changes on the model.

    Returns:
        (model ready for Trainer — a PeftModel for LoRA runs —, tokenizer).
    """
    from tilevl.resolve import open_model

    model, tokenizer = open_model(config.model, dtype=config.load_dtype, quiet=True)
    changes = {"use_backbone_lora": 0, "use_llm_lora": 0}  # the saved model has LoRA folded in
    if config.max_dynamic_patch is not None:
        changes["max_dynamic_patch"] = config.max_dynamic_patch
    if config.template is not None:
        changes["template"] = config.template
    model.config = model.config.replace(**changes)
    layers = model.vision_model.encoder.layers
    for i, layer in enumerate(layers):  # stochastic depth rises linearly, as InternViT's
        rate = config.drop_path_rate * i / max(len(layers) - 1, 1)
        layer.drop_path1.p = layer.drop_path2.p = rate
    model.config.vision.drop_path_rate = config.drop_path_rate
    model = apply_lora(model, config)
    if config.grad_checkpoint:
        base_model(model).gradient_checkpointing_enable()
    return model, tokenizer


def build_training_args(config: TrainConfig) -> TrainingArguments:
    """transformers' TrainingArguments for the config (our own progress bar replaces tqdm's)."""
    return TrainingArguments(
        output_dir=config.output_dir, seed=config.seed, data_seed=config.seed,
        learning_rate=config.learning_rate, lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_ratio, weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm, num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps, per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        bf16=config.precision == "bf16", fp16=config.precision == "fp16",
        save_strategy="steps", save_steps=config.save_steps, save_total_limit=config.save_total_limit,
        eval_strategy="steps" if config.eval_meta_path else "no", eval_steps=config.eval_steps,
        logging_steps=config.logging_steps, logging_first_step=True,
        report_to=list(config.report_to) or "none", disable_tqdm=True,
        remove_unused_columns=False, label_names=["labels"],
        dataloader_num_workers=config.dataloader_num_workers,
        dataloader_pin_memory=torch.cuda.is_available() and not config.use_cpu,  # CPU: nothing to pin
        deepspeed=config.deepspeed, fsdp=config.fsdp, fsdp_config=config.fsdp_config,
        ddp_backend=config.ddp_backend or default_backend(config),
        use_cpu=config.use_cpu, save_only_model=False,
    )


def _collator(config: TrainConfig, pad_id: int, packed: bool):
    from tilevl.data.collate import pack_collate, pad_collate

    if packed:
        return functools.partial(pack_collate, pad_token_id=pad_id, max_tokens=config.pack_to_tokens,
                                 attention=config.pack_attention)
    return functools.partial(pad_collate, pad_token_id=pad_id)


def train(config: TrainConfig, callbacks: Sequence[TrainerCallback] = ()) -> TrainResult:
    """Run one fine-tuning job as the config says (every rank calls this under torchrun).

    Writes `output_dir/checkpoint-N/` while training; at the end `output_dir/model/` (the
    full model, official layout, with tokenizer), for LoRA runs `output_dir/adapter/` (a
    PEFT adapter folder), and `output_dir/train_summary.json`.

    Args:
        config: a checked TrainConfig (see `load_train_config`).
        callbacks: more transformers `TrainerCallback`s (e.g. to log elsewhere or stop early).
    Returns:
        A TrainResult (paths, steps, the mean training loss, the log history and the model:
        the trained VisionLanguageModel, LoRA folded in when `save_merged`).
    """
    from tilevl.chat.engine import pad_id
    from tilevl.data.dataset import SFTDataset
    from tilevl.inputs.template import get_template

    config.require_paths()
    check_optional(config)
    check_launch(config)
    out = Path(config.output_dir)
    if (not config.resume and not config.overwrite_output_dir
            and find_resume_checkpoint(out) is not None):
        raise ConfigError(f"output_dir: {out} already holds checkpoints; pass --resume to continue "
                          "or --overwrite_output_dir to start over")
    args = build_training_args(config)  # sets up the process group under torchrun
    model, tokenizer = prepare_model(config)
    inner = base_model(model)
    data = dict(tokenizer=tokenizer, config=inner.config, max_seq_length=config.max_seq_length,
                strict=config.strict, seed=config.seed,
                allow_outside_root=config.allow_outside_root)
    dataset = SFTDataset(config.meta_path, **data)
    # checks every record once; lengths drive grouping and packing
    lengths = dataset.scan(progress=args.should_log)
    records = _report_records(dataset, out, args.should_save)
    eval_dataset = SFTDataset(config.eval_meta_path, **data) if config.eval_meta_path else None
    pad = pad_id(tokenizer, get_template(inner.config.template))
    trainable, total = count_parameters(model)
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=dataset, eval_dataset=eval_dataset,
        data_collator=_collator(config, pad, bool(config.pack_to_tokens)),
        tokenizer=tokenizer, train_config=config, lengths=lengths,
    )
    for replaced in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(replaced)
    for callback in (TrainProgress(trainer), SamplerEpoch(trainer), *callbacks):
        trainer.add_callback(callback)
    if args.should_save:
        print(f"[tilevl train] {config.model}: {trainable:,} of {total:,} parameters trainable; "
              f"{len(dataset)} samples, {args.world_size} process(es)", file=sys.stderr)
    resume = find_resume_checkpoint(out) if config.resume else None
    if config.resume and resume is None and args.should_save:
        print(f"[tilevl train] --resume: no complete checkpoint in {out}; starting fresh",
              file=sys.stderr)
    if resume is not None:
        trainer.loss_before = read_loss_sum(resume)
        if trainer.loss_before is None and args.should_save:
            print(f"[tilevl train] {resume} does not record the loss so far: the mean loss "
                  "will cover only the steps after the resume", file=sys.stderr)
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    result = TrainResult(out, None, None, trainer.state.global_step, output.training_loss,
                         list(trainer.state.log_history), trainable, records=records)
    _save_final(trainer, config, tokenizer, result)
    return result


def _report_records(dataset, out: Path, main_process: bool) -> dict:
    """Print the bad-record report before training and write every place to the output folder.

    Returns:
        train_summary.json's "records": {valid, bad: {reason: count}, samples_per_epoch,
        report: the file listing every bad record (relative to output_dir), or None}.
    """
    records = {**dataset.summary(), "report": None}
    if main_process:
        print(dataset.report(), file=sys.stderr)
        (out / BAD_RECORDS_FILE).unlink(missing_ok=True)  # an earlier run's list
        if records["bad"]:
            file = dataset.write_bad_records(out / BAD_RECORDS_FILE)
            records["report"] = file.name
            print(f"[tilevl train] every bad record is listed in {file}", file=sys.stderr)
    elif records["bad"]:
        records["report"] = BAD_RECORDS_FILE
    return records


def _save_final(trainer: SFTTrainer, config: TrainConfig, tokenizer, result: TrainResult) -> None:
    """The final model in the official layout (+ tokenizer); LoRA runs also the adapter."""
    from tilevl.checkpoint.loader import save_model

    trainer.accelerator.wait_for_everyone()
    model = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.is_fsdp_enabled and not is_peft_model(model):
        # Sharded parameters: gather the full state dict (every rank takes part, rank 0
        # receives it) and save it from an ordinary model, in the official layout.
        state = gather_full_state(trainer.model)
        if trainer.args.should_save:
            model = consolidate(model, state)
    out = Path(config.output_dir)
    if trainer.args.should_save:
        model.eval()
        if is_peft_model(model):
            from tilevl.checkpoint.files import AtomicFolder
            from tilevl.merge import fold_adapter

            result.adapter_dir = out / "adapter"
            with AtomicFolder(result.adapter_dir, overwrite=True) as tmp:
                model.save_pretrained(str(tmp), safe_serialization=True)
            extra = trainable_base_names(model)
            if extra:
                print(f"[tilevl train] note: {len(extra)} non-LoRA tensors were trained too "
                      f"(e.g. {extra[0]}); the adapter alone lacks them, model/ has them",
                      file=sys.stderr)
            if config.save_merged:
                # Fold with merge/'s code so config.json records the adapter's fingerprint.
                merged = fold_adapter(model.unload(), result.adapter_dir)
                result.model_dir = save_model(merged, out / "model", tokenizer=tokenizer,
                                              overwrite=True)
                model = merged
        else:
            result.model_dir = save_model(model, out / "model", tokenizer=tokenizer, overwrite=True)
        result.model = model
        summary = {"global_step": result.global_step, "train_loss": result.train_loss,
                   "trainable_parameters": result.trainable_parameters,
                   "world_size": trainer.args.world_size, "records": result.records,
                   "log_history": result.log_history}
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", "utf-8")
    else:
        result.adapter_dir = out / "adapter" if is_peft_model(model) else None
        result.model_dir = out / "model" if not is_peft_model(model) or config.save_merged else None
    trainer.accelerator.wait_for_everyone()


def main(argv: list[str] | None = None) -> int:
    """`python -m tilevl.train.sft CONFIG.yaml [--key value ...]` (for torchrun / accelerate)."""
    from tilevl.errors import TilevlError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\nusage: python -m tilevl.train.sft CONFIG.yaml "
              "[--key value ...] [--resume]")
        return 0 if argv else 2
    path = None if argv[0].startswith("--") else argv.pop(0)
    config = None
    try:
        config = load_train_config(path, argv)
        train(config)
    except TilevlError as exc:
        print(f"tilevl train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        from tilevl.train.commands import resume_hint

        # under torchrun / accelerate launch, keep the launcher in front of it
        command = ["python", "-m", "tilevl.train.sft", *([path] if path else []), *argv]
        if config is not None:
            print(resume_hint(config, command), file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
