"""benchmarks/gpu_suite.py: its arguments, and a CPU dry run (`--device cpu --quick`) in which
every section either runs or says why it skipped, so the suite is ready when a GPU is."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture()
def suite(load_benchmark):
    return load_benchmark("gpu_suite")


def test_arguments(suite, capsys):
    args = suite.parse_args([])
    assert args.sections == suite.SECTIONS and args.clients == (1, 8, 64) and args.device == "cuda"
    assert args.preset == "internvl2_5-1b" and args.budget_s == 420
    args = suite.parse_args(["--sections", "server, decode", "--clients", "4,16", "--quick"])
    assert args.sections == ("server", "decode") and args.clients == (2, 2) and args.preset == "tiny"
    for bad, message in ((["--sections", "decode,foo"], "unknown ['foo']; allowed: decode, batch"),
                         (["--clients", "1,x"], "comma-separated integers"),
                         (["--tokens", "0"], "must be positive")):
        with pytest.raises(SystemExit):
            suite.parse_args(bad)
        assert message in capsys.readouterr().err


def _table(out: str) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in out.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[0] not in ("section", ""):
            rows.setdefault(parts[0], []).append(f"{parts[1]} | {parts[2]}")
    return rows


def test_cpu_dry_run_runs_or_skips_every_section(suite, capsys, one_thread):
    assert suite.main(["--device", "cpu", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "GPU suite on CPU (" in out
    rows = _table(out)
    assert set(rows) == set(suite.SECTIONS)
    assert not any("ERROR" in r for section in rows.values() for r in section)
    assert any(r.startswith("bf16, 1 stream") and "% of" in r for r in rows["decode"])
    assert any("int8 weight-only" in r for r in rows["decode"])
    assert any("x transformers; ids identical" in r for r in rows["batch"])
    assert [r.split(" streaming")[0] for r in rows["server"]] == ["1", "2"]
    assert any(r.startswith("sdpa,") and "prefill" in r for r in rows["attention"])
    assert "flash_attention_2 | skipped: needs --device cuda" in rows["attention"]
    assert rows["8bit"] == ["- | skipped: needs --device cuda"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_without_cuda_every_section_skips_with_the_reason(suite, capsys):
    assert suite.main(["--sections", "decode,8bit"]) == 0
    rows = _table(capsys.readouterr().out)
    assert rows == {s: ["- | skipped: CUDA not available (asked for --device cuda)"] for s in ("decode", "8bit")}


def test_a_spent_budget_skips_the_rest(suite, capsys, one_thread):
    assert suite.main(["--device", "cpu", "--quick", "--sections", "decode,attention", "--budget-s", "0"]) == 0
    rows = _table(capsys.readouterr().out)
    assert rows == {s: ["- | skipped: time budget of 0 s spent"] for s in ("decode", "attention")}
