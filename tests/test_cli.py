"""The `tilevl` command: each subcommand through `main([...])`, and its user-facing errors."""

from __future__ import annotations

import builtins
import json

import pytest
import torch

import tilevl
from tilevl.checkpoint.tokenizer import img_context_token_id
from tilevl.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer):
    out = tmp_path_factory.mktemp("cli") / "tiny"
    model = tilevl.build_model("tiny", seed=0)
    model.img_context_token_id = img_context_token_id(tokenizer)
    tilevl.save_model(model, out, tokenizer=tokenizer)
    return out


def test_demo_prints_shapes_and_timing(capsys):
    assert main(["demo", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "tiled a 640x240 image into (4, 3, 56, 56)" in out
    assert "logits (1," in out and "greedy chat" in out


def test_info_of_a_preset_and_a_folder(capsys, checkpoint):
    assert main(["info", "internvl-chat-v1-5"]) == 0
    out = capsys.readouterr().out
    assert "45 layers" in out and "25,514,186,112" in out and "internlm2-chat" in out
    assert main(["info", str(checkpoint)]) == 0
    assert "layout: official" in capsys.readouterr().out


def test_chat_one_shot_with_an_image(capsys, checkpoint, tmp_path):
    from PIL import Image

    Image.new("RGB", (100, 60), "red").save(tmp_path / "red.png")
    args = ["chat", str(checkpoint), "--image", str(tmp_path / "red.png"), "--max-new-tokens", "5", "What is this?"]
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("assistant> ")
    sampled = ["chat", str(checkpoint), "--max-new-tokens", "5", "--temperature", "0.8", "--top-k", "20",
               "--seed", "1", "--repetition-penalty", "1.2", "Hello"]
    assert main(sampled) == 0
    first = capsys.readouterr().out
    assert main(sampled) == 0 and capsys.readouterr().out == first  # seeded sampling repeats
    assert main(["chat", str(checkpoint), "--max-new-tokens", "5", "--num-beams", "2", "Hello"]) == 0


def test_chat_repl(monkeypatch, capsys, checkpoint, tmp_path):
    from PIL import Image

    Image.new("RGB", (60, 60), "blue").save(tmp_path / "b.png")
    lines = iter(["Hello", f"/image {tmp_path / 'b.png'}", "What is it?", "/reset", "Hi again", "/quit"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(lines))
    assert main(["chat", str(checkpoint), "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count("assistant> ") == 3 and "(conversation cleared)" in out and "image queued" in out


def test_convert_to_native_and_back(tmp_path, checkpoint):
    assert main(["convert", str(checkpoint), str(tmp_path / "native"), "--layout", "native"]) == 0
    assert json.loads((tmp_path / "native" / "config.json").read_text())["architectures"] == ["InternVLForConditionalGeneration"]
    assert (tmp_path / "native" / "tokenizer.json").exists()
    assert main(["convert", str(tmp_path / "native"), str(tmp_path / "back"), "--layout", "official"]) == 0
    a, b = tilevl.load_model(checkpoint), tilevl.load_model(tmp_path / "back")
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), name


def test_merge_lora_command(tmp_path, checkpoint):
    peft = pytest.importorskip("peft")
    model = tilevl.load_model(checkpoint)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    wrapped.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = wrapped(input_ids=ids).logits
    assert main(["merge-lora", str(checkpoint), str(tmp_path / "adapter"), str(tmp_path / "merged")]) == 0
    with torch.no_grad():
        torch.testing.assert_close(tilevl.load_model(tmp_path / "merged")(ids).logits, expected, atol=1e-5, rtol=1e-5)


def test_user_errors_exit_2_with_one_line(capsys, tmp_path):
    assert main(["chat", str(tmp_path / "missing"), "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tilevl chat: error:") and "neither a checkpoint folder nor a preset" in err
    assert "Traceback" not in err


def test_minibench_generate_then_eval_on_it(tmp_path, capsys, checkpoint):
    """The pipeline a user runs: generate MiniBench, evaluate a model on its dev MCQ."""
    assert main(["minibench", "generate", str(tmp_path / "mb"), "--size", "40", "--seed", "3", "--no-progress"]) == 0
    assert (tmp_path / "mb" / "dev" / "mcq.tsv").exists()
    assert main(["minibench", "categories"]) == 0
    assert "object_counting" in capsys.readouterr().out
    args = ["eval", str(checkpoint), "--bench", "minibench", "--data", str(tmp_path / "mb" / "dev" / "mcq.tsv"),
            "--out", str(tmp_path / "ev"), "--batch-size", "4", "--max-new-tokens", "3", "--no-progress"]
    assert main(args) == 0
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert "accuracy" in json.dumps(results) and "circular" in json.dumps(results).lower()



def test_a_misspelt_model_is_an_error_with_did_you_mean(capsys, tmp_path, checkpoint):
    from tilevl.resolve import looks_like_model

    # Used to answer "hi" with the default model and exit 0.
    assert main(["chat", "tilevl-tinyy", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tilevl chat: error:") and "did you mean 'tilevl-tiny'" in err
    assert "tilevl chat tilevl-tiny 'tilevl-tinyy' hi" in err  # how to ask it as a question
    assert main(["chat", "internvl2-8bb", "hi"]) == 2
    assert "did you mean 'internvl2-8b'" in capsys.readouterr().err
    (tmp_path / "my-run").mkdir()
    assert main(["chat", str(tmp_path / "my-rnu"), "hi"]) == 2
    assert f"did you mean {str(tmp_path / 'my-run')!r}" in capsys.readouterr().err
    # Prompts stay prompts; names, paths and near-names are models.
    assert not any(map(looks_like_model, ["hi", "What is this?", "describe", "Hello"]))
    assert all(map(looks_like_model, ["tilevl-tinyy", "./run", "runs/x", "tiyn", "InternVL3"]))


def test_repl_checks_images_at_once_and_refuses_unknown_commands(monkeypatch, capsys, checkpoint,
                                                                tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    lines = iter([f"/image {tmp_path / 'gone.png'}", f"/image {tmp_path / 'notes.txt'}", "/image",
                  "/imag x.png", "/help me", "//etc is a folder?", "/quit"])
    monkeypatch.setattr(builtins, "input", lambda prompt="": next(lines))
    assert main(["chat", str(checkpoint), "--max-new-tokens", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("assistant> ") == 1 and "image queued" not in captured.out
    err = captured.err
    assert f"no such file {tmp_path / 'gone.png'}" in err and "notes.txt" in err
    assert "/image needs a PATH" in err
    assert "unknown command /imag;" in err and "unknown command /help;" in err


# ---- every verb on the InternVL3.5 LLM kinds: Qwen3 dense, Qwen3-MoE and GPT-OSS -----------------
NEW_FAMILIES = ["tiny-qwen3", "tiny-qwen3-moe", "tiny-gpt-oss"]
_ARCH = {"tiny-qwen3": "Qwen3ForCausalLM", "tiny-qwen3-moe": "Qwen3MoeForCausalLM",
         "tiny-gpt-oss": "GptOssForCausalLM"}
_MODEL_TYPE = {"tiny-qwen3": "qwen3", "tiny-qwen3-moe": "qwen3_moe", "tiny-gpt-oss": "gpt_oss"}


@pytest.fixture(scope="module", params=NEW_FAMILIES)
def family_checkpoint(request, tmp_path_factory, tokenizer):
    out = tmp_path_factory.mktemp(request.param) / "ckpt"
    model = tilevl.build_model(request.param, seed=0)
    model.img_context_token_id = img_context_token_id(tokenizer)
    tilevl.save_model(model, out, tokenizer=tokenizer)
    return request.param, out


def _colour_data(root):
    from tests.train._colours import write_colour_set

    return write_colour_set(root)


def test_new_family_info_chat_convert(capsys, tmp_path, family_checkpoint):
    from PIL import Image

    family, ckpt = family_checkpoint
    arch = _ARCH[family]
    assert main(["info", str(ckpt)]) == 0
    assert f"llm: {arch}" in capsys.readouterr().out
    assert main(["info"]) == 0
    listing = capsys.readouterr().out
    assert "internvl3_5-30b-a3b" in listing and "internvl3-9b" in listing

    Image.new("RGB", (100, 60), "red").save(tmp_path / "red.png")
    args = ["chat", str(ckpt), "--image", str(tmp_path / "red.png"), "--max-new-tokens", "5", "What is this?"]
    assert main(args) == 0 and capsys.readouterr().out.startswith("assistant> ")

    assert main(["convert", str(ckpt), str(tmp_path / "native"), "--layout", "native"]) == 0
    native = json.loads((tmp_path / "native" / "config.json").read_text())
    assert native["text_config"]["model_type"] == _MODEL_TYPE[family]
    assert main(["convert", str(tmp_path / "native"), str(tmp_path / "back"), "--layout", "official"]) == 0
    a, b = tilevl.load_model(ckpt), tilevl.load_model(tmp_path / "back")
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), name


def test_new_family_train_full_and_lora_then_merge(tmp_path, family_checkpoint, one_thread):
    """train (full, LoRA) → merge-lora → merge (TIES) → eval, each through `tilevl ...`."""
    from tests.train._colours import CONFIG

    family, ckpt = family_checkpoint
    meta = _colour_data(tmp_path / "data")
    common = ["--model", str(ckpt), "--meta_path", str(meta), "--max_steps", "2",
              "--per_device_train_batch_size", "4"]
    assert main(["train", str(CONFIG), *common, "--output_dir", str(tmp_path / "full")]) == 0
    full = tilevl.load_model(tmp_path / "full" / "model")
    base = tilevl.load_model(ckpt)
    moved = [n for n, p in full.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert any(".mlp.experts." in n or ".mlp.up_proj" in n for n in moved)  # the FFN trained too
    if family == "tiny-gpt-oss":
        assert any(n.endswith("self_attn.sinks") for n in moved)

    for run in ("lora1", "lora2"):
        assert main(["train", str(CONFIG), *common, "--output_dir", str(tmp_path / run), "--use_llm_lora", "4",
                     "--freeze_backbone", "true", "--freeze_mlp", "true", "--learning_rate", "0.05",
                     "--seed", "1" if run == "lora1" else "2"]) == 0
        assert (tmp_path / run / "adapter" / "adapter_config.json").exists()
    assert main(["merge-lora", str(ckpt), str(tmp_path / "lora1" / "adapter"), str(tmp_path / "merged")]) == 0
    merged = tilevl.load_model(tmp_path / "merged")
    changed = [n for n, p in merged.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert changed and all(".self_attn." in n or ".mlp." in n for n in changed)
    if family != "tiny-qwen3":  # the default LoRA targets of a MoE LLM: attention only
        assert all(".self_attn." in n for n in changed)
    assert main(["merge", "--base", str(ckpt), "--adapters", str(tmp_path / "lora1" / "adapter"),
                 str(tmp_path / "lora2" / "adapter"), "--out", str(tmp_path / "ties")]) == 0
    assert tilevl.load_model(tmp_path / "ties").config.llm["model_type"] == base.config.llm["model_type"]

    assert main(["minibench", "generate", str(tmp_path / "mb"), "--size", "8", "--seed", "3", "--no-progress"]) == 0
    assert main(["eval", str(tmp_path / "ties"), "--bench", "minibench", "--data", str(tmp_path / "mb" / "dev" / "mcq.tsv"),
                 "--out", str(tmp_path / "ev"), "--batch-size", "4", "--max-new-tokens", "3", "--no-progress",
                 "--limit", "4"]) == 0
    assert (tmp_path / "ev" / "results.json").exists()


@pytest.mark.parametrize("family", ["tiny-qwen3-moe", "tiny-gpt-oss"])
def test_moe_expert_lora_train_then_merge_lora(tmp_path, family, tokenizer, one_thread):
    """`--llm_lora_experts`: the adapter trains the stacked experts; merge-lora folds them."""
    from tests.train._colours import CONFIG

    ckpt = tmp_path / "ckpt"
    model = tilevl.build_model(family, seed=0)
    model.img_context_token_id = img_context_token_id(tokenizer)
    tilevl.save_model(model, ckpt, tokenizer=tokenizer)
    meta = _colour_data(tmp_path / "data")
    assert main(["train", str(CONFIG), "--model", str(ckpt), "--meta_path", str(meta), "--max_steps", "2",
                 "--per_device_train_batch_size", "4", "--output_dir", str(tmp_path / "run"),
                 "--use_llm_lora", "4", "--llm_lora_experts", "true", "--lora_dropout", "0",
                 "--freeze_backbone", "true", "--freeze_mlp", "true", "--learning_rate", "0.05"]) == 0
    assert main(["merge-lora", str(ckpt), str(tmp_path / "run" / "adapter"), str(tmp_path / "merged")]) == 0
    base, merged = tilevl.load_model(ckpt).state_dict(), tilevl.load_model(tmp_path / "merged").state_dict()
    changed = {n for n, p in merged.items() if not torch.equal(p, base[n])}
    assert any(n.endswith("mlp.experts.gate_up_proj") for n in changed)
    assert any(n.endswith("mlp.experts.down_proj") for n in changed)
    assert all(".self_attn." in n or ".mlp.experts." in n for n in changed)
    # The run's own merged checkpoint (save_merged) folds the same adapter the same way.
    own = tilevl.load_model(tmp_path / "run" / "model").state_dict()
    for name in changed:
        torch.testing.assert_close(own[name], merged[name])


def test_new_family_serve_and_web_apps(family_checkpoint):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from tilevl.serve.commands import add_serve_parsers, build_app_from_args

    family, ckpt = family_checkpoint
    import argparse

    parser = argparse.ArgumentParser(prog="tilevl")
    add_serve_parsers(parser.add_subparsers(dest="command"))
    for verb in ("serve", "web"):
        app = build_app_from_args(parser.parse_args([verb, str(ckpt)]), web=verb == "web")
        with TestClient(app) as client:
            reply = client.post("/v1/chat/completions", json={
                "model": "ckpt", "max_tokens": 4, "temperature": 0,
                "messages": [{"role": "user", "content": "Hello"}]})
            assert reply.status_code == 200, reply.text
            assert reply.json()["choices"][0]["message"]["role"] == "assistant"
            if verb == "web":
                assert client.get("/").status_code == 200


def test_chat_thinking_prompt_and_printed_parts(monkeypatch, capsys, checkpoint, tokenizer):
    """--thinking: the card's reasoning prompt is rendered, the thinking printed apart,
    sampling at 0.6 unless --temperature is given. Generation is canned (random models never
    write <think>); it feeds the CLI's streamer as transformers' generate would."""
    from tilevl.chat.session import ChatSession
    from tilevl.chat.thinking import THINKING_SYSTEM_PROMPT

    seen = {}
    canned = tokenizer("<think>\nLook closely.\n</think>\n\nA red square.<|im_end|>",
                       add_special_tokens=False)["input_ids"]

    def generate(self, ids, settings, streamer):
        seen["prompt"], seen["settings"] = tokenizer.decode(ids), settings
        if streamer is not None:
            streamer.put(torch.tensor([ids]))  # the prompt, which the streamer skips
            for token in canned:
                streamer.put(torch.tensor([token]))
            streamer.end()
        return canned

    monkeypatch.setattr(ChatSession, "_generate", generate)
    assert main(["chat", str(checkpoint), "--thinking", "What is this?"]) == 0
    assert capsys.readouterr().out == "thinking> Look closely.\nassistant> A red square.\n"
    assert seen["prompt"].startswith("<|im_start|>system\n" + THINKING_SYSTEM_PROMPT + "<|im_end|>")
    assert seen["settings"].do_sample and seen["settings"].temperature == 0.6
    assert main(["chat", str(checkpoint), "--thinking", "--temperature", "0", "Hi"]) == 0
    assert not seen["settings"].do_sample
    assert main(["chat", str(checkpoint), "Hi"]) == 0
    assert THINKING_SYSTEM_PROMPT not in seen["prompt"]
    assert capsys.readouterr().out.endswith("assistant> A red square.\n")
