"""benchmarks/quantized_decode.py --quick: every section runs and the ratio comes last."""

from __future__ import annotations

import re

import torch


def test_quick_run_prints_every_section_and_the_ratio_last(load_benchmark, capsys, one_thread):
    bench = load_benchmark("quantized_decode")
    assert bench.main(["--quick"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    text = "\n".join(lines)
    assert re.search(r"^bf16 .* %$", text, re.M) and re.search(r"^int8 .* %$", text, re.M)
    assert "teacher-forced top-1" in text and "MiniBench (tilevl-tiny, seed 0" in text
    assert re.fullmatch(r"int8/bf16 single-stream decode speed-up: \d+\.\d\dx .*", lines[-1])


def test_bytes_per_token_halve_under_int8(load_benchmark, tiny_model):
    from copy import deepcopy

    from tilevl.checkpoint.quantize import quantize_model

    bench = load_benchmark("quantized_decode")
    model = tiny_model.to(torch.bfloat16)
    llm = model.language_model
    embed = llm.get_input_embeddings().weight.numel() * 2
    everything = sum(t.numel() * t.element_size() for t in llm.state_dict().values())
    assert bench.weight_bytes_per_token(model) == everything - embed  # untied head: table not read
    quantized = bench.weight_bytes_per_token(quantize_model(deepcopy(model), "int8"))
    assert 0.45 < quantized / (everything - embed) < 0.6  # int8 + scales, bf16 norms
