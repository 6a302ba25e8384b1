"""`--quantize int8` on every verb that runs a model (chat, serve, web, eval): accepted, passed
through to `open_model`, a quantized model in the end; anything else refused naming 'int8'."""

from __future__ import annotations

import pytest

import tilevl.resolve
from tilevl.checkpoint.quantize import is_quantized
from tilevl.cli import build_parser, main


@pytest.mark.parametrize("argv", [
    ["chat", "tilevl-tiny"],
    ["serve", "tilevl-tiny"],
    ["web", "tilevl-tiny"],
    ["eval", "tilevl-tiny", "--bench", "minibench", "--data", "x.tsv"],
])
def test_the_flag_is_accepted_and_defaults_to_off(argv, capsys):
    parser = build_parser()
    assert parser.parse_args(argv).quantize is None
    assert parser.parse_args([*argv[:2], "--quantize", "int8", *argv[2:]]).quantize == "int8"
    with pytest.raises(SystemExit):
        parser.parse_args([*argv[:2], "--quantize", "int4", *argv[2:]])
    assert "invalid choice: 'int4' (choose from 'int8')" in capsys.readouterr().err


@pytest.fixture()
def opened(monkeypatch):
    """Record each `open_model` call and the model it returned."""
    calls = []
    real = tilevl.resolve.open_model

    def recording(spec, **kwargs):
        model, tokenizer = real(spec, **kwargs)
        calls.append((kwargs, model))
        return model, tokenizer

    monkeypatch.setattr(tilevl.resolve, "open_model", recording)
    return calls


def test_chat_loads_a_quantized_model(opened, capsys, one_thread):
    assert main(["chat", "tilevl-tiny", "--quantize", "int8", "--max-new-tokens", "4", "What", "is", "it?"]) == 0
    (kwargs, model), = opened
    assert kwargs["quantize"] == "int8" and is_quantized(model)
    assert "assistant>" in capsys.readouterr().out


def test_serve_builds_its_app_on_a_quantized_model(opened):
    pytest.importorskip("fastapi")
    from tilevl.serve.commands import build_app_from_args

    from fastapi.testclient import TestClient

    args = build_parser().parse_args(["serve", "tilevl-tiny", "--quantize", "int8"])
    app = build_app_from_args(args, web=False)
    (kwargs, model), = opened
    assert kwargs["quantize"] == "int8" and is_quantized(model)
    with TestClient(app) as client:  # the scheduler decodes 2 rows through the int8 kernel
        reply = client.post("/v1/chat/completions", json={
            "model": "tilevl-tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "n": 2})
    assert reply.status_code == 200 and len(reply.json()["choices"]) == 2


def test_eval_loads_a_quantized_model(opened, tmp_path, one_thread):
    from tilevl.minibench import generate

    info = generate(tmp_path / "mb", size=40, seed=0, progress=False, formats=("mcq",), overwrite=True)
    data = f"{info['out_dir']}/dev/mcq.tsv"
    assert main(["eval", "tilevl-tiny", "--quantize", "int8", "--bench", "minibench", "--data", data,
                 "--limit", "4", "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    (kwargs, model), = opened
    assert kwargs["quantize"] == "int8" and is_quantized(model)
