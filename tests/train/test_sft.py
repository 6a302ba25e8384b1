"""Training runs of the `tiny` model on CPU: it learns, resumes exactly, and runs on 2 processes.

Every run is seconds long; the data is 8 generated solid-colour images (tests/train/_colours.py).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from tests.train._colours import CONFIG, COLOURS, answers, write_colour_set, write_text_set
from tilevl.errors import ConfigError, MissingDependencyError
from tilevl.optional import is_available
from tilevl.train.args import load_train_config
from tilevl.train.sft import COMPLETE_MARKER, SUMMARY_FILE, find_resume_checkpoint, train

SRC = Path(__file__).resolve().parents[2] / "src"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def colour_meta(tmp_path_factory) -> Path:
    return write_colour_set(tmp_path_factory.mktemp("colours"))


@pytest.fixture(scope="module")
def text_pretrained(tmp_path_factory) -> Path:
    """The tiny model after full fine-tuning on text only: it knows the colour words.

    LoRA cannot rescale a random LM head, so the LoRA runs start from this "pretrained"
    model, as a real 2nd fine-tune starts from a trained checkpoint. Text-only batches
    (pixel_values None, vision tower skipped) are exercised here too.
    """
    root = tmp_path_factory.mktemp("pretrain")
    torch.set_num_threads(1)
    result = run(write_text_set(root), root / "out", max_steps=60)
    assert result.last_loss < 0.3
    return result.model_dir


def run(meta: Path, out: Path, callbacks=(), **values):
    """One training run of configs/tiny_cpu.yaml with the given fields replaced."""
    config = load_train_config(CONFIG, meta_path=str(meta), output_dir=str(out), **values)
    return train(config, callbacks=callbacks)


def losses(result) -> list[float]:
    return [e["loss"] for e in result.log_history if "loss" in e]


class StopAt(TrainerCallback):
    """Stops training after `step` optimizer steps, as a crash or a pre-empted job would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


class LogitsAtEnd(TrainerCallback):
    """Records the trained model's logits on fixed inputs when training ends."""

    def __init__(self, batch: dict) -> None:
        self.batch, self.logits = batch, None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        model.eval()
        with torch.no_grad():
            self.logits = model(**self.batch).logits


def test_full_finetune_learns_colours(colour_meta, tmp_path):
    import tilevl

    result = run(colour_meta, tmp_path / "out", max_steps=50)
    assert losses(result)[0] > 5 and result.last_loss < 0.1
    tokenizer = tilevl.load_tokenizer(result.model_dir)
    assert answers(result.model, tokenizer) == {name: name for name in COLOURS}
    # The saved checkpoint (official layout + tokenizer) answers the same.
    reloaded = tilevl.load_model(result.model_dir)
    assert answers(reloaded, tokenizer) == {name: name for name in COLOURS}
    summary = json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())
    assert summary["global_step"] == 50 and summary["trainable_parameters"] > 0


def test_lora_learns_colours(colour_meta, text_pretrained, tmp_path):
    import tilevl

    result = run(colour_meta, tmp_path / "out", model=str(text_pretrained), use_llm_lora=16,
                 use_backbone_lora=16, freeze_llm=True, freeze_backbone=True, lora_dropout=0.0,
                 learning_rate=5e-3, max_steps=120)
    assert result.last_loss < 0.3
    assert (result.adapter_dir / "adapter_config.json").exists()
    assert (result.adapter_dir / "adapter_model.safetensors").exists()
    tokenizer = tilevl.load_tokenizer(result.model_dir)
    assert answers(result.model, tokenizer) == {name: name for name in COLOURS}


def test_lora_adapter_loads_in_peft_with_the_same_logits(colour_meta, text_pretrained, tmp_path):
    peft = pytest.importorskip("peft")
    import tilevl
    from tilevl.data.collate import pad_collate
    from tilevl.data.dataset import SFTDataset

    base = tilevl.load_model(text_pretrained)
    tokenizer = tilevl.load_tokenizer(text_pretrained)
    dataset = SFTDataset(colour_meta, tokenizer, base.config.replace(max_dynamic_patch=1))
    batch = pad_collate([dataset[i] for i in range(3)], pad_token_id=0)
    probe = LogitsAtEnd(batch)
    result = run(colour_meta, tmp_path / "out", callbacks=[probe], model=str(text_pretrained),
                 use_llm_lora=8, use_backbone_lora=4, freeze_llm=True, freeze_backbone=True,
                 freeze_mlp=True, learning_rate=1e-2, max_steps=3)
    loaded = peft.PeftModel.from_pretrained(base, str(result.adapter_dir)).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, probe.logits, rtol=0, atol=1e-5)
        # The folded checkpoint gives them too.
        merged = tilevl.load_model(result.model_dir)
        torch.testing.assert_close(merged(**batch).logits, probe.logits, rtol=0, atol=1e-5)
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16 and config["peft_type"] == "LORA"


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_resume_continues_exactly(colour_meta, tmp_path, mode):
    # Cosine schedule with warm-up, stochastic depth and LoRA dropout: the schedule, optimizer,
    # data order and RNG state all have to come back for the losses to match. The LoRA run
    # also trains the projector, which the checkpoint keeps beside the adapter.
    common = dict(max_steps=8, save_steps=4, per_device_train_batch_size=4,
                  lr_scheduler_type="cosine", warmup_ratio=0.2, drop_path_rate=0.2)
    if mode == "lora":
        common.update(use_llm_lora=4, use_backbone_lora=4, freeze_llm=True, freeze_backbone=True,
                      lora_dropout=0.1)
    whole = run(colour_meta, tmp_path / "whole", **common)
    first = run(colour_meta, tmp_path / "split", callbacks=[StopAt(4)], **common)
    assert first.global_step == 4
    assert find_resume_checkpoint(tmp_path / "split").name == "checkpoint-4"
    second = run(colour_meta, tmp_path / "split", resume=True, **common)
    assert second.global_step == 8
    assert abs(second.last_loss - whole.last_loss) <= 1e-5
    assert losses(second)[-4:] == pytest.approx(losses(whole)[-4:], abs=1e-5)
    # The mean loss covers all 8 steps, not the 4 after the resume.
    assert second.train_loss == pytest.approx(whole.train_loss, abs=1e-6)
    summary = json.loads((tmp_path / "split" / SUMMARY_FILE).read_text())
    assert summary["train_loss"] == pytest.approx(whole.train_loss, abs=1e-6)
    assert not list((tmp_path / "split").glob(".staging-*"))
    assert (tmp_path / "split" / "checkpoint-8" / COMPLETE_MARKER).exists()
    if mode == "lora":
        assert (tmp_path / "split" / "checkpoint-4" / "trainable_base.safetensors").exists()


def test_resumed_mean_loss_counts_steps_not_logged_at_the_checkpoint(colour_meta, tmp_path):
    # logging every 3 steps, a checkpoint at step 4: step 4's loss is not logged yet when it
    # is saved, and must still count in the resumed run's mean.
    common = dict(max_steps=7, save_steps=4, logging_steps=3, per_device_train_batch_size=4)
    whole = run(colour_meta, tmp_path / "whole", **common)
    run(colour_meta, tmp_path / "split", callbacks=[StopAt(4)], **common)
    second = run(colour_meta, tmp_path / "split", resume=True, **common)
    assert second.global_step == 7
    assert second.train_loss == pytest.approx(whole.train_loss, abs=1e-6)
    assert second.log_history[-1]["train_loss"] == pytest.approx(whole.train_loss, abs=1e-6)


class SeenAtStart(TrainerCallback):
    """What stderr held when training began."""

    def __init__(self, capsys) -> None:
        self.capsys, self.err = capsys, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.err = self.capsys.readouterr().err


def test_bad_records_are_reported_before_training_and_summarised(tmp_path, capsys):
    bad = [json.dumps({"image": "images/missing.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "x"}]})] * 7
    bad += ["{not json", json.dumps({"image": "../outside.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "x"}]})]
    meta = write_colour_set(tmp_path / "data", extra_lines=bad)
    seen = SeenAtStart(capsys)
    result = run(meta, tmp_path / "out", max_steps=1, callbacks=[seen])
    assert "missing_image: 7" in seen.err and "bad_json: 1" in seen.err
    assert "outside_root: 1" in seen.err and "… and 2 more" in seen.err
    summary = json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())
    assert summary["records"] == {"valid": 8, "bad": {"outside_root": 1, "missing_image": 7,
                                                       "bad_json": 1},
                                  "samples_per_epoch": 8, "report": "bad_records.jsonl"}
    assert result.records == summary["records"]
    rows = (tmp_path / "out" / "bad_records.jsonl").read_text().splitlines()
    assert len(rows) == 9 and all(json.loads(r)["place"].startswith(str(tmp_path)) for r in rows)


def test_two_processes_match_one(colour_meta, tmp_path):
    common = ["--max_steps", "3", "--save_steps", "3", "--meta_path", str(colour_meta)]
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node", "2", "-m", "tilevl.train.sft", str(CONFIG), *common,
           "--per_device_train_batch_size", "4", "--output_dir", str(tmp_path / "ddp")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / SUMMARY_FILE).read_text())
    assert ddp["world_size"] == 2 and ddp["global_step"] == 3
    assert (tmp_path / "ddp" / "model" / "config.json").exists()
    single = run(colour_meta, tmp_path / "one", max_steps=3, save_steps=3,
                 per_device_train_batch_size=8)
    ddp_losses = [e["loss"] for e in ddp["log_history"] if "loss" in e]
    assert ddp_losses == pytest.approx(losses(single), abs=1e-5)


@pytest.mark.parametrize("attention", ["block_mask", "position_ids"])
def test_packed_mixed_text_and_image_batches(tmp_path, attention):
    text = json.dumps({"conversations": [{"from": "human", "value": "Say hi."},
                                         {"from": "gpt", "value": "hi"}]})
    bad = json.dumps({"image": "images/missing.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "x"}]})
    meta = write_colour_set(tmp_path / "data", extra_lines=[text, text, bad])
    result = run(meta, tmp_path / "out", max_steps=2, pack_to_tokens=600,
                 pack_attention=attention, grad_checkpoint=True)
    assert result.global_step == 2 and all(math.isfinite(x) for x in losses(result))


def test_group_by_length_from_the_command_line(colour_meta, tmp_path, capsys):
    import argparse

    from tilevl.train.commands import add_train_parsers

    parser = argparse.ArgumentParser(prog="tilevl")
    add_train_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", str(CONFIG), "--meta_path", str(colour_meta),
                              "--output_dir", str(tmp_path / "out"), "--group_by_length",
                              "--per_device_train_batch_size", "3", "--max_steps", "2"])
    assert args.func(args) == 0
    err = capsys.readouterr().err
    assert "trained 2 steps" in err and "SFTDataset: 8 sample(s) per epoch" in err


def test_incomplete_checkpoints_are_not_resumed(tmp_path):
    for step, complete in ((4, True), (8, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / COMPLETE_MARKER).write_text("{}")
    (tmp_path / ".staging-checkpoint-12").mkdir()
    assert find_resume_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert find_resume_checkpoint(tmp_path / "nothing") is None


def test_existing_checkpoints_need_resume_or_overwrite(colour_meta, tmp_path):
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / COMPLETE_MARKER).write_text("{}")
    with pytest.raises(ConfigError, match="--resume"):
        run(colour_meta, tmp_path)


@pytest.mark.skipif(is_available("deepspeed"), reason="deepspeed is installed")
def test_deepspeed_config_without_deepspeed_names_the_extra(colour_meta, tmp_path):
    with pytest.raises(MissingDependencyError, match=r"tilevl\[deepspeed\]"):
        run(colour_meta, tmp_path, deepspeed="configs/deepspeed/zero_stage2_config.json")


def test_square_loss_reduction_trains(colour_meta, tmp_path):
    result = run(colour_meta, tmp_path / "out", max_steps=30, loss_reduction="square")
    assert losses(result)[-1] < losses(result)[0] and all(math.isfinite(x) for x in losses(result))
    with pytest.raises(ConfigError, match="loss_reduction"):
        run(colour_meta, tmp_path / "bad", max_steps=1, loss_reduction="mean")


class GroupRates(TrainerCallback):
    """Records each optimizer group's part and learning rate after every step."""

    def __init__(self) -> None:
        self.seen: list[dict[str, set[float]]] = []

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        from tilevl.train.sft import param_part

        part = {id(p): param_part(n) for n, p in model.named_parameters()}
        rates: dict[str, set[float]] = {}
        for group in optimizer.param_groups:
            parts = {part[id(p)] for p in group["params"]}
            assert len(parts) == 1, "a group mixes parts of the network"
            rates.setdefault(parts.pop(), set()).add(group["lr"])
        self.seen.append(rates)


def test_per_part_learning_rates(colour_meta, tmp_path):
    callback = GroupRates()
    result = run(colour_meta, tmp_path / "out", max_steps=4, learning_rate=4e-3,
                 vision_learning_rate=1e-3, mlp_learning_rate=2e-3, warmup_ratio=0.0,
                 callbacks=[callback])
    assert result.global_step == 4 and len(callback.seen) == 4
    for rates in callback.seen:  # the scheduler scales all parts alike
        assert set(rates) == {"vision", "mlp", "llm"}
        llm, = rates["llm"]
        vision, = rates["vision"]
        mlp, = rates["mlp"]
        assert vision == pytest.approx(llm / 4) and mlp == pytest.approx(llm / 2)
        assert 0 < llm <= 4e-3
    with pytest.raises(ConfigError, match="vision_learning_rate"):
        run(colour_meta, tmp_path / "bad", max_steps=1, vision_learning_rate=0.0)


def test_param_groups_sort_lora_and_frozen_parameters():
    from tilevl.train.args import TrainConfig
    from tilevl.train.sft import param_groups, param_part

    assert param_part("base_model.model.vision_model.encoder.layers.0.attn.qkv.lora_A.default.weight") == "vision"
    assert param_part("base_model.model.mlp1.1.weight") == "mlp"
    assert param_part("language_model.model.layers.0.mlp.up_proj.weight") == "llm"  # "mlp" ≠ "mlp1"

    model = torch.nn.ModuleDict({"vision_model": torch.nn.Linear(2, 2), "mlp1": torch.nn.Linear(2, 2),
                                 "language_model": torch.nn.Linear(2, 2)})
    model["language_model"].bias.requires_grad_(False)
    config = TrainConfig(learning_rate=1.0, vision_learning_rate=0.1, weight_decay=0.5)
    groups = param_groups(model, config, decay_names={"vision_model.weight", "mlp1.weight",
                                                      "language_model.weight"})
    summary = sorted((g["lr"], g["weight_decay"], len(g["params"])) for g in groups)
    # mlp falls back to learning_rate; the frozen bias is in no group.
    assert summary == [(0.1, 0.0, 1), (0.1, 0.5, 1), (1.0, 0.0, 1), (1.0, 0.5, 1), (1.0, 0.5, 1)]
    assert sum(len(g["params"]) for g in groups) == 5


def test_ctrl_c_prints_the_command_that_resumes(colour_meta, tmp_path, monkeypatch, capsys):
    from tilevl.cli import main

    out = tmp_path / "out"
    run(colour_meta, out, max_steps=2, save_steps=2)  # a complete checkpoint-2

    def interrupted(config, callbacks=()):
        raise KeyboardInterrupt

    monkeypatch.setattr("tilevl.train.sft.train", interrupted)
    argv = ["train", str(CONFIG), "--meta_path", str(colour_meta), "--output_dir", str(out)]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert f"To continue from {out / 'checkpoint-2'}, run:" in err
    assert f"tilevl train {CONFIG} --meta_path {colour_meta} --output_dir {out} --resume" in err
    assert main([*argv[:-1], str(tmp_path / "fresh")]) == 130
    assert "no checkpoint was complete yet (one is saved every 1000 steps)" in capsys.readouterr().err


def test_launches_that_would_train_otherwise_are_refused():
    from tilevl.train.launch import check_launch

    cpu = load_train_config(CONFIG, meta_path="m.json", output_dir="o")  # use_cpu: true
    with pytest.raises(ConfigError, match="fsdp: 'full_shard auto_wrap': on CPU.*fsdp.yaml"):
        check_launch(load_train_config(CONFIG, fsdp="full_shard auto_wrap"), {})
    check_launch(cpu, {"ACCELERATE_USE_FSDP": "true", "ACCELERATE_MIXED_PRECISION": "no"})
    # accelerate's bf16 would silently replace the config's fp32
    with pytest.raises(ConfigError, match="precision: fp32 .* mixed_precision: bf16"):
        check_launch(cpu, {"ACCELERATE_MIXED_PRECISION": "bf16"})
    check_launch(load_train_config(CONFIG, precision="bf16"), {"ACCELERATE_MIXED_PRECISION": "no"})


def test_consolidated_fsdp_state_is_an_ordinary_model():
    from tilevl.model.vlm import build_model
    from tilevl.train.launch import consolidate

    model = build_model("tiny", seed=3)
    model.img_context_token_id = 7
    copy = consolidate(model, model.state_dict())
    assert copy is not model and copy.img_context_token_id == 7
    for (name, a), (_, b) in zip(model.state_dict().items(), copy.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(Exception, match="FSDP consolidation: keys missing"):
        consolidate(model, {k: v for k, v in model.state_dict().items() if "mlp1" not in k})


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device")])])
def test_fsdp_shards_matches_one_process_resumes_and_consolidates(colour_meta, tmp_path, device):
    """configs/accelerate/fsdp.yaml on 2 processes (gloo on CPU; on GPUs, one per GPU up to 2):
    the same losses as one plain process, a sharded checkpoint that resumes exactly, and
    model/ consolidated in the official layout."""
    import yaml

    import tilevl

    n = 2 if device == "cpu" else min(torch.cuda.device_count(), 2)
    root = Path(__file__).resolve().parents[2]
    launcher = yaml.safe_load((root / "configs" / "accelerate" / "fsdp.yaml").read_text())
    launcher.update(num_processes=n, mixed_precision="no")  # fp32: comparable to 1e-5
    (tmp_path / "fsdp.yaml").write_text(yaml.safe_dump(launcher))
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    out = tmp_path / "fsdp"
    common = ["--meta_path", str(colour_meta), "--use_cpu", str(device == "cpu").lower(),
              "--per_device_train_batch_size", str(8 // n), "--save_steps", "2",
              "--output_dir", str(out)]

    def launch(*extra):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(tmp_path / "fsdp.yaml"), "--num_processes", str(n), "-m", "tilevl.train.sft",
               str(CONFIG), *common, *extra]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=500)
        assert done.returncode == 0, done.stderr[-4000:]

    launch("--max_steps", "2")  # stops after a checkpoint, as a pre-empted job would
    shards = sorted(p.name for p in (out / "checkpoint-2").iterdir())
    assert "pytorch_model_fsdp_0" in shards and "optimizer_0" in shards, shards
    assert "model.safetensors" not in shards  # sharded, not a full copy per checkpoint
    launch("--max_steps", "4", "--resume")
    fsdp = json.loads((out / SUMMARY_FILE).read_text())
    assert fsdp["world_size"] == n and fsdp["global_step"] == 4
    plain = run(colour_meta, tmp_path / "plain", max_steps=4, save_steps=2,
                per_device_train_batch_size=8, use_cpu=device == "cpu")
    assert [e["loss"] for e in fsdp["log_history"] if "loss" in e] == pytest.approx(
        losses(plain), abs=1e-5)
    assert fsdp["train_loss"] == pytest.approx(plain.train_loss, abs=1e-5)
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["architectures"] == ["InternVLChatModel"]
    consolidated = tilevl.load_model(out / "model").state_dict()
    reference = tilevl.load_model(plain.model_dir).state_dict()
    assert consolidated.keys() == reference.keys()
    for name, value in reference.items():  # Adam after 4 steps turns 1e-6 into ~1e-5
        torch.testing.assert_close(consolidated[name], value, atol=1e-4, rtol=0)
