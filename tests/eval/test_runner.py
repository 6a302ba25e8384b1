"""The evaluation runner end to end on the `tiny` preset: every scorer kind, resume after a
kill, 2-process torchrun = 1 process, CoT / vote gains, the LLM judge, and `eval-score`.

Random weights make the scores meaningless; the plumbing is what is checked. Where a number
must be known, `batch_chat` is replaced by a scripted fake.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

import tilevl.eval.runner as runner
from tilevl.errors import InputError
from tilevl.eval.commands import add_eval_parsers
from tilevl.eval.metrics import SCORERS
from tilevl.eval.runner import EvalConfig, evaluate
from tests.eval.test_benchmarks import (
    write_grounding,
    write_mcq_tsv,
    write_plain,
    write_pope,
    write_vqa,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny():
    from tilevl.resolve import open_model

    return open_model("tiny", quiet=True)


def _config(tmp_path, bench, data, **kw) -> EvalConfig:
    kw.setdefault("max_new_tokens", 4)
    kw.setdefault("batch_size", 4)
    return EvalConfig(bench=bench, data=str(data), out=str(tmp_path / "out"), progress=False,
                      model_name="tiny", **kw)


def _predictions(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "predictions.jsonl").read_text().splitlines()]


@pytest.fixture()
def counted(monkeypatch):
    """Count `batch_chat` calls (one per batch and sampled draw) made by the runner."""
    calls = []
    real = runner.batch_chat

    def counting(*args, **kwargs):
        calls.append(len(args[3]))
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "batch_chat", counting)
    return calls


def _scripted(monkeypatch, answer):
    """Replace generation by `answer(prompt, generation_config) -> str`; the config's `draw`
    numbers the num_return_sequences replies of one question (0, 1, …)."""
    def fake(model, tokenizer, pixel_values, questions, generation_config, num_patches_list=None):
        assert len(num_patches_list) == len(questions)
        k = generation_config.get("num_return_sequences", 1)
        return [answer(q, {**generation_config, "draw": d}) for q in questions for d in range(k)]

    monkeypatch.setattr(runner, "batch_chat", fake)


# ---- every scorer kind through the real model -------------------------------------------------
_WRITERS = {"minibench": write_mcq_tsv, "minibench-vqa": write_vqa,
            "minibench-pope": write_pope, "minibench-grounding": write_grounding}


@pytest.mark.parametrize("bench", [f"plain-{k}" for k in sorted(SCORERS)] + sorted(_WRITERS))
def test_end_to_end_with_tiny_preset(tmp_path, tiny, bench):
    data = _WRITERS[bench](tmp_path) if bench in _WRITERS else write_plain(tmp_path, bench[6:])
    results = evaluate(*tiny, _config(tmp_path, bench, data))
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["rule"] == results["scores"]["rule"] and saved["rule_version"]
    assert saved["n"] == results["scores"]["n"] == len(_predictions(tmp_path / "out"))
    assert saved["judge"] == {"used": False, "asked": 0, "decided": 0, "guessed": 0}
    assert saved["settings"]["max_tiles"] == 6 and saved["timing"]["direct"]["generated"] == saved["n"]
    assert (tmp_path / "out" / "results.md").read_text().startswith(f"# {bench} — tiny")


# ---- resume -------------------------------------------------------------------------------------
def test_killed_run_resumes_without_repeating_work(tmp_path, tiny, counted):
    data = write_mcq_tsv(tmp_path, items=4)  # 16 questions = 4 batches of 4
    full = evaluate(*tiny, _config(tmp_path / "a", "minibench", data))
    assert len(counted) == 4
    counted.clear()

    class Killed(RuntimeError):
        pass

    def kill_after_two(done):
        if done == 2:
            raise Killed

    cfg = _config(tmp_path / "b", "minibench", data)
    with pytest.raises(Killed):
        evaluate(*tiny, cfg, on_batch=kill_after_two)
    assert len(counted) == 2
    cache = tmp_path / "b" / "out" / "cache" / "minibench.rank0.jsonl"
    with open(cache, "a") as f:  # a write torn by the kill: no newline, half an object
        f.write('{"key": "abc", "bench": "minibench", "ind')
    again = evaluate(*tiny, cfg)
    assert len(counted) == 4  # 2 before the kill + the 2 missing batches, nothing twice
    assert again["timing"]["direct"]["reused"] == 8 and again["timing"]["direct"]["generated"] == 8
    assert _predictions(tmp_path / "b" / "out") == _predictions(tmp_path / "a" / "out")
    assert again["scores"] == full["scores"]
    assert all(json.loads(line) for line in cache.read_text().splitlines())  # tail repaired
    counted.clear()
    evaluate(*tiny, cfg)  # a third run is all cache
    assert counted == []


# ---- torchrun ----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_give_the_one_process_predictions(tmp_path, tiny):
    data = write_mcq_tsv(tmp_path, items=3)  # 12 questions, batches of 3 → 4 batches
    # Sampled answers (2 draws) differ per question, so a mix-up would show.
    flags = ["--bench", "minibench", "--data", str(data), "--batch-size", "3",
             "--max-new-tokens", "5", "--samples", "2", "--temperature", "1.0", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
         "-m", "tilevl.eval.runner", "tiny", *flags, "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    cache = sorted(p.name for p in (tmp_path / "two" / "cache").iterdir())
    assert cache == ["minibench.rank0.jsonl", "minibench.rank1.jsonl"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker (OMP_NUM_THREADS=1)
    try:
        one = evaluate(*tiny, _config(tmp_path, "minibench", data, batch_size=3, max_new_tokens=5,
                                      samples=2, temperature=1.0))
    finally:
        torch.set_num_threads(threads)
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["settings"]["world_size"] == 2
    assert _predictions(tmp_path / "two") == _predictions(tmp_path / "out")
    assert len({p["outputs"][0] for p in _predictions(tmp_path / "out")}) > 3
    assert two["scores"] == one["scores"]


# ---- test-time scaling ------------------------------------------------------------------------
def test_cot_and_majority_vote_report_the_gain_over_direct(tmp_path, tiny, monkeypatch):
    data = write_plain(tmp_path, "mcq", n=4)  # gold answer "A" everywhere

    def answer(prompt, config):
        if "Think step by step" in prompt:
            return "Red is the colour shown, so the first option.\nAnswer: A"
        if config.get("do_sample"):  # draws 0,1,2 answer B, A, A: the vote says A
            return "B" if config["draw"] % 3 == 0 else "A"
        return "B"  # direct answering is always wrong

    _scripted(monkeypatch, answer)
    cot = evaluate(*tiny, _config(tmp_path / "cot", "plain-mcq", data, cot=True, also_direct=True))
    assert cot["settings"]["max_new_tokens"] == 4 and cot["variant"] == "cot"
    assert cot["test_time_scaling"] == {"variant": "cot", "variant_score": 1.0,
                                        "direct_score": 0.0, "gain": 1.0}
    assert _predictions(tmp_path / "cot" / "out")[0]["prediction"] == "A"
    vote = evaluate(*tiny, _config(tmp_path / "vote", "plain-mcq", data, samples=3,
                                   temperature=1.0, batch_size=1))
    rows = _predictions(tmp_path / "vote" / "out")
    assert rows[0]["outputs"] == ["B", "A", "A"] and rows[0]["votes"] == {"B": 1, "A": 2}
    assert vote["scores"]["accuracy"] == 1.0
    assert vote["test_time_scaling"]["direct_score"] is None  # direct was not run here


# ---- judge ---------------------------------------------------------------------------------------
class _FakeJudge(BaseHTTPRequestHandler):
    prompts: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FakeJudge.prompts.append(body["messages"][0]["content"])
        reply = {"choices": [{"message": {"role": "assistant", "content": "A"}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_judge_decides_only_the_unreadable_answers(tmp_path, tiny, monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        data = write_plain(tmp_path, "mcq", n=4)
        # Questions 0 and 2 answer in words the rule cannot map; 1 and 3 say "B" plainly.
        _scripted(monkeypatch, lambda p, c: "B" if ("A. green" in p or "A. yellow" in p)
                  else "the warm one")
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        results = evaluate(*tiny, _config(tmp_path, "plain-mcq", data, judge_url=url,
                                          judge_model="fake-judge"))
    finally:
        server.shutdown()
    assert results["judge"]["used"] and results["judge"]["asked"] == 2
    assert results["judge"]["decided"] == 2 and results["judge"]["errors"] == 0
    assert "Answer: the warm one" in _FakeJudge.prompts[0]
    rows = _predictions(tmp_path / "out")
    assert rows[0]["judged"] and rows[0]["prediction"] == "A"
    assert rows[0]["prediction_rule"] == "the warm one" and "judged" not in rows[1]
    assert results["scores"]["accuracy"] == 0.5


# ---- eval-score -------------------------------------------------------------------------------------
def _cli(argv):
    parser = argparse.ArgumentParser(prog="tilevl")
    add_eval_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_eval_score_rescores_a_predictions_file(tmp_path, capsys):
    data = write_mcq_tsv(tmp_path, items=2)
    from tilevl.eval.benchmarks import get_benchmark

    samples = get_benchmark("minibench").read(data, None)
    pred = tmp_path / "pred.jsonl"
    # Item 0 right in every rotation; item 1 wrong in its last rotation: circular 1/2.
    lines = [{"index": s.index, "prediction": s.record["answer"]} for s in samples]
    lines[-1]["prediction"] = "Z"
    pred.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert _cli(["eval-score", "minibench", "--data", str(data), "--predictions", str(pred),
                 "--out", str(tmp_path / "scored")]) == 0
    results = json.loads((tmp_path / "scored" / "results.json").read_text())
    assert results["scores"]["accuracy"] == 0.5 and results["scores"]["vanilla_accuracy"] == 1.0
    assert results["rule"] == "mmbench_circular" and results["judge"]["used"] is False
    assert "minibench: accuracy 50.0 over 8 questions" in capsys.readouterr().out
    pred.write_text("".join(json.dumps(line) + "\n" for line in lines[:-2]))
    with pytest.raises(InputError, match="2 of 8 questions have no prediction"):
        _cli(["eval-score", "minibench", "--data", str(data), "--predictions", str(pred)])


def test_bad_settings_are_refused_with_the_flag_name(tmp_path, tiny):
    data = write_grounding(tmp_path)
    with pytest.raises(Exception, match="--cot is not defined for minibench-grounding"):
        evaluate(*tiny, _config(tmp_path, "minibench-grounding", data, cot=True))
    with pytest.raises(Exception, match="--samples > 1 needs --temperature > 0"):
        evaluate(*tiny, _config(tmp_path, "minibench-grounding", data, samples=3, temperature=0))
