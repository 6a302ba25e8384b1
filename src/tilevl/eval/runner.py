"""Run one benchmark end to end: read → prompt → batched `batch_chat` → (CoT, vote, judge) →
score → results, sharded over torchrun ranks and resumable from a per-rank prediction cache.

`evaluate(model, tokenizer, EvalConfig(...))` is the API; `python -m tilevl.eval.runner` the
entry torchrun starts (same flags as `tilevl eval`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from tilevl.chat.engine import batch_chat
from tilevl.errors import ConfigError, InputError, TilevlError
from tilevl.eval.benchmarks import BenchSpec, Sample, get_benchmark, headline
from tilevl.eval.benchmarks.common import final_answer, majority_vote
from tilevl.eval.metrics import score
from tilevl.eval.scope import filter_categories, tile_budget
from tilevl.jsonl import append_jsonl, read_jsonl_lines

# Figures the scorers break down by; the first one present feeds the chart and the table.
CATEGORY_FIELDS = ("per_category", "per_subtask", "per_split", "per_answer_type")


@dataclass
class EvalConfig:
    """Everything a run depends on besides the model (the CLI flags of `tilevl eval`).

    Attributes:
        bench: a registered benchmark name (`tilevl.eval.benchmarks.BENCHMARKS`).
        data: the benchmark file (or MME folder).
        out: where results, predictions and the cache go.
        image_root: where relative image paths live (default: next to the data file).
        max_tiles: tiles per image (default: the model's `eval_max_dynamic_patch`, else the
            benchmark's; see `tile_budget`).
        batch_size: questions per `batch_chat` call.
        limit: only the first K questions (in file order).
        cot: ask for step-by-step reasoning ending with "Answer: X" and score that answer.
        samples: k > 1 samples k answers (temperature > 0) and keeps the majority answer.
        temperature, top_p: sampling settings when samples > 1.
        max_new_tokens: answer length (default: the benchmark's; at least 1024 with cot).
        prompt_suffix: replaces the benchmark's final instruction line.
        seed: base seed of the sampled answers.
        also_direct: with cot/samples, also run direct answering to report the gain.
        judge_url, judge_model, judge_api_key: the optional OpenAI-compatible judge.
        progress: show a tqdm bar on rank 0.
        model_name: how results name the model.
        generation_extra: more keyword arguments for `generate` (e.g. min_new_tokens).
        categories: only the questions of these categories (or, where the file has them, L2
            groups); MiniBench names are checked against its table.
    """

    bench: str
    data: str
    out: str = "eval-results"
    image_root: str | None = None
    max_tiles: int | None = None
    batch_size: int = 8
    limit: int | None = None
    cot: bool = False
    samples: int = 1
    temperature: float = 0.7
    top_p: float | None = None
    max_new_tokens: int | None = None
    prompt_suffix: str | None = None
    seed: int = 0
    also_direct: bool = False
    judge_url: str | None = None
    judge_model: str | None = None
    judge_api_key: str | None = None
    progress: bool = True
    model_name: str = ""
    generation_extra: dict = field(default_factory=dict)
    categories: list[str] | None = None

    def check(self, spec: BenchSpec) -> None:
        """Refuse settings that cannot work, naming the flag."""
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.samples < 1:
            raise ConfigError(f"--samples must be >= 1, got {self.samples}")
        if self.samples > 1 and self.temperature <= 0:
            raise ConfigError("--samples > 1 needs --temperature > 0 (greedy answers would all agree)")
        if self.cot and not spec.cot:
            raise ConfigError(f"--cot is not defined for {spec.name} (scorer {spec.kind})")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")
        if bool(self.judge_url) != bool(self.judge_model):
            raise ConfigError("--judge-url and --judge-model go together")

    def variant(self) -> str:
        """'direct', 'cot', 'vote@k' or 'cot+vote@k'."""
        parts = (["cot"] if self.cot else []) + ([f"vote@{self.samples}"] if self.samples > 1 else [])
        return "+".join(parts) or "direct"

    def direct(self) -> "EvalConfig":
        """The same run answering directly (greedy, no CoT): the baseline of test-time scaling."""
        return replace(self, cot=False, samples=1, also_direct=False)

    def settings(self, spec: BenchSpec) -> dict:
        """The resolved settings that change predictions (they key the cache)."""
        tokens = self.max_new_tokens or (max(spec.max_new_tokens, 1024) if self.cot else spec.max_new_tokens)
        sampled = self.samples > 1
        return {"max_tiles": self.max_tiles or spec.max_tiles, "max_new_tokens": tokens,
                "cot": self.cot, "samples": self.samples,
                "temperature": self.temperature if sampled else 0.0,
                "top_p": self.top_p if sampled else None, "seed": self.seed if sampled else None,
                "prompt_suffix": self.prompt_suffix, "generation_extra": self.generation_extra}


# ---- identity of a run --------------------------------------------------------------------
def model_fingerprint(model, tokenizer=None) -> str:
    """A short hash that changes when the weights, config or vocabulary change.

    Hashing every weight would take as long as a forward pass on big models; the config
    plus the first and last two tensors (name, shape, dtype and up to 4096 values) catch a
    different checkpoint, a fine-tune (its last layers differ) and a dtype change.

    Args:
        model: the model (its `config.to_dict()` and `state_dict()` are read).
        tokenizer: its tokenizer (vocabulary size is included).

    Returns:
        16 hex digits.
    """
    digest = hashlib.sha256()
    config = model.config.to_dict() if hasattr(model.config, "to_dict") else str(model.config)
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    state = model.state_dict()
    names = list(state)
    for name in names[:2] + names[-2:]:
        tensor = state[name]
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    if tokenizer is not None:
        digest.update(str(len(tokenizer)).encode())
    return digest.hexdigest()[:16]


def run_key(spec: BenchSpec, cfg: EvalConfig, fingerprint: str) -> str:
    """The cache key: benchmark, data file (name and size), model fingerprint, settings."""
    data = Path(cfg.data)
    size = data.stat().st_size if data.is_file() else sum(p.stat().st_size for p in data.glob("*.txt"))
    blob = json.dumps({"bench": spec.name, "data": [data.name, size], "model": fingerprint,
                       "settings": cfg.settings(spec)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---- the prediction cache -------------------------------------------------------------------
class PredictionCache:
    """Append-only jsonl files of raw model outputs, one file per rank, shared by all runs.

    A line is `{"key", "bench", "index", "outputs": [k replies]}`; lines of other keys
    (another model, other settings) are kept and ignored. Every rank writes only its own
    file, so no two processes append to one file; reading looks at all of them, so a rerun
    with another world size reuses everything.

    Args:
        folder: the cache folder (created).
        bench: the benchmark name (file name prefix).
        rank: this process's rank.
    """

    def __init__(self, folder: str | Path, bench: str, rank: int = 0):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.bench = bench
        self.path = self.folder / f"{bench}.rank{rank}.jsonl"

    def load(self, key: str) -> dict[str, list[str]]:
        """Outputs cached under `key`, by `str(index)`; a torn last line is skipped.

        Args:
            key: the run key.

        Returns:
            `{str(index): outputs}`.

        Raises:
            InputError: for a damaged line that is not the last of its file.
        """
        found: dict[str, list[str]] = {}
        for path in sorted(self.folder.glob(f"{self.bench}.rank*.jsonl")):
            for _, row in read_jsonl_lines(path):
                if row.get("key") == key:
                    found[str(row["index"])] = row["outputs"]
        return found

    def append(self, key: str, rows: list[tuple[object, list[str]]]) -> None:
        """Append one batch and flush it to disk before the next batch starts.

        Args:
            key: the run key.
            rows: `(index, outputs)` per sample.
        """
        append_jsonl(self.path, ({"key": key, "bench": self.bench, "index": index, "outputs": outputs}
                                 for index, outputs in rows))


# ---- data parallelism -----------------------------------------------------------------------
def dist_info() -> tuple[int, int]:
    """`(rank, world_size)` from torchrun's environment (0, 1 without it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _dist_begin(world: int) -> bool:
    if world <= 1:
        return False
    import torch.distributed as dist

    if not dist.is_initialized():
        # gloo only synchronises (barrier); predictions travel through the cache files,
        # so the same code runs on CPU-only machines and with NCCL-less builds.
        dist.init_process_group("gloo")
    return True


def _dist_barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def _dist_end() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


# ---- generation -------------------------------------------------------------------------------
def _tiles(model, batch: list[Sample], max_tiles: int):
    from tilevl.inputs.image import preprocess

    tiles, patches = [], []
    for sample in batch:
        if sample.image is None:
            patches.append(0)
            continue
        pixels = preprocess(sample.image, model.image_settings, max_num=max_tiles)
        tiles.append(pixels)
        patches.append(pixels.shape[0])
    return (torch.cat(tiles) if tiles else None), patches


def _generation(settings: dict, seed: int | None) -> dict:
    config = {"max_new_tokens": settings["max_new_tokens"], "do_sample": settings["samples"] > 1,
              **settings["generation_extra"]}
    if settings["samples"] > 1:
        config.update(temperature=settings["temperature"], top_p=settings["top_p"], seed=seed,
                      num_return_sequences=settings["samples"])
    return config


def predict(model, tokenizer, spec: BenchSpec, samples: list[Sample], cfg: EvalConfig,
            cache: PredictionCache, key: str, on_batch=None) -> dict:
    """Generate what this rank still lacks, appending each batch to the cache.

    Batches are cut from the whole file and dealt to ranks round-robin, so every question
    sees the same batch mates (the same padding) whatever the world size; answered
    questions are dropped from their batch.

    Args:
        model, tokenizer: from `tilevl.resolve.open_model`.
        spec: the benchmark.
        samples: all questions (every rank passes the same list).
        cfg: the run settings.
        cache: this rank's cache.
        key: the run key.
        on_batch: called as `on_batch(batches_done)` after each batch is on disk.

    Returns:
        `{"generated": questions answered now, "reused": already cached, "seconds": …,
        "generate_calls": …}` for this rank.
    """
    from tqdm.auto import tqdm

    rank, world = dist_info()
    settings = cfg.settings(spec)
    done = cache.load(key)
    batches = [samples[i:i + cfg.batch_size] for i in range(0, len(samples), cfg.batch_size)]
    mine = [(number, [s for s in batch if str(s.index) not in done])
            for number, batch in enumerate(batches) if number % world == rank]
    reused = sum(len(batches[n]) for n, _ in mine) - sum(len(b) for _, b in mine)
    mine = [(n, b) for n, b in mine if b]
    total = sum(len(b) for _, b in mine)
    bar = tqdm(total=total, unit="q", desc=f"{spec.name} [{cfg.variant()}]", dynamic_ncols=True,
               disable=not cfg.progress or rank != 0 or total == 0)
    start, calls = time.perf_counter(), 0
    # Tiling the next batch on a worker thread overlaps image decoding with generation.
    with ThreadPoolExecutor(1) as pool, torch.inference_mode():
        future = pool.submit(_tiles, model, mine[0][1], settings["max_tiles"]) if mine else None
        for position, (number, batch) in enumerate(mine):
            pixel_values, patches = future.result()
            if position + 1 < len(mine):
                future = pool.submit(_tiles, model, mine[position + 1][1], settings["max_tiles"])
            prompts = [spec.prompt(s, cfg.cot, cfg.prompt_suffix) for s in batch]
            # The k samples of a question are k rows of one batch (num_return_sequences):
            # its image and prompt are encoded once and one decode loop serves all k.
            seed = cfg.seed + 100_003 * number  # same per question on any world size
            replies = batch_chat(model, tokenizer, pixel_values, prompts,
                                 _generation(settings, seed), num_patches_list=patches)
            calls += 1
            k = cfg.samples
            outputs = [list(replies[i * k:(i + 1) * k]) for i in range(len(batch))]
            cache.append(key, [(s.index, o) for s, o in zip(batch, outputs)])
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(position + 1)
    bar.close()
    return {"generated": total, "reused": reused, "seconds": time.perf_counter() - start,
            "generate_calls": calls}


# ---- from outputs to scores -------------------------------------------------------------------
def finalize(spec: BenchSpec, sample: Sample, outputs: list[str], cot: bool) -> dict:
    """The answer that is scored: CoT extraction, then the majority vote over k samples.

    Args:
        spec: the benchmark (its vote key).
        sample: the question.
        outputs: the k raw replies.
        cot: read the answer after the last "Answer:".

    Returns:
        `{"prediction", "outputs"}` plus `"votes"` when k > 1.
    """
    answers = [final_answer(o) if cot else o for o in outputs]
    if len(answers) == 1:
        return {"prediction": answers[0], "outputs": outputs}
    chosen, votes = majority_vote(answers, lambda a: spec.key(sample, a))
    return {"prediction": chosen, "outputs": outputs, "votes": votes}


def apply_judge(spec: BenchSpec, samples: list[Sample], predictions: list[dict], judge) -> None:
    """Let the judge read the answers the benchmark's rule cannot; edits `predictions`.

    Args:
        spec: the benchmark (`judge` says what to ask; `key` says what is unreadable).
        samples: the questions.
        predictions: one dict per question (`prediction` is replaced when the judge decides;
            the rule-read text stays in `prediction_rule`).
        judge: a `tilevl.eval.judge.Judge`.
    """
    for sample, pred in zip(samples, predictions):
        if spec.key(sample, pred["prediction"]) is not None:
            continue
        options = sample.record.get("options")
        if spec.judge == "choice" and options:
            guessed = judge.guessed
            verdict = judge.choose(sample.question, options, pred["prediction"])
            if judge.guessed > guessed:
                pred["guessed"] = True  # no judge reply was readable: a seeded draw, as upstream
        elif spec.judge == "yesno":
            verdict = judge.yes_no(sample.question, pred["prediction"])
            verdict = verdict.capitalize() if verdict else None
        else:
            continue
        pred["judged"] = verdict is not None
        if verdict is not None:
            pred["prediction_rule"], pred["prediction"] = pred["prediction"], verdict


def score_samples(spec: BenchSpec, samples: list[Sample], predictions: list[dict]) -> dict:
    """Score answers with the benchmark's rule; add a per-category breakdown if it has none.

    Args:
        spec: the benchmark.
        samples: the questions.
        predictions: one dict with `prediction` per question, same order.

    Returns:
        `{"scores": scorer result, "headline": {...}, "per_category": {...} | None}`.
    """
    records = [{**s.record, "index": s.index, "prediction": p["prediction"]}
               for s, p in zip(samples, predictions)]
    scores = score(spec.kind, records)
    name, value, fraction = headline(spec.kind, scores)
    breakdown = None
    for figure in CATEGORY_FIELDS:
        if scores.get(figure):
            breakdown = {"name": figure, "values": _category_values(scores[figure]),
                         "fraction": figure != "per_subtask"}
            break
    if breakdown is None and any("category" in r for r in records):
        groups: dict = {}
        for record in records:
            groups.setdefault(str(record.get("category")), []).append(record)
        values = {c: headline(spec.kind, score(spec.kind, rs))[1] for c, rs in sorted(groups.items())}
        breakdown = {"name": "per_category", "values": values, "fraction": fraction}
    return {"scores": scores, "headline": {"name": name, "value": value, "fraction": fraction},
            "per_category": breakdown}


def _category_values(figure: dict) -> dict:
    values = {}
    for name, entry in figure.items():
        if isinstance(entry, dict):
            # per_category/per_subtask: "score"; POPE's per_split: the split's F1.
            values[str(name)] = entry.get("score", entry.get("f1", entry.get("accuracy")))
        else:
            values[str(name)] = entry
    return values


def load_samples(spec: BenchSpec, cfg: EvalConfig) -> list[Sample]:
    """Read the benchmark file and keep the first `limit` questions."""
    if not Path(cfg.data).exists():
        raise InputError(f"--data {cfg.data}: no such file or folder")
    samples = spec.read(cfg.data, cfg.image_root)
    if cfg.categories:
        samples = filter_categories(spec, samples, cfg.categories)
    return samples[:cfg.limit] if cfg.limit else samples


def _make_judge(cfg: EvalConfig):
    if not cfg.judge_url:
        return None
    from tilevl.eval.judge import Judge

    return Judge(cfg.judge_url, cfg.judge_model, api_key=cfg.judge_api_key)


def _merged(spec, samples, cache, key, cot) -> list[dict] | None:
    outputs = cache.load(key)
    if any(str(s.index) not in outputs for s in samples):
        return None
    return [finalize(spec, s, outputs[str(s.index)], cot) for s in samples]


def evaluate(model, tokenizer, cfg: EvalConfig, on_batch=None) -> dict | None:
    """Run a benchmark and write its results (rank 0) into `cfg.out`.

    Under torchrun every rank answers its share; rank 0 waits for all, checks that every
    question has an answer, scores and writes `results.json`, `predictions.jsonl`,
    `results.md` and the per-category chart.

    Args:
        model, tokenizer: from `tilevl.resolve.open_model`.
        cfg: the run settings.
        on_batch: test hook, called after each batch is cached (see `predict`).

    Returns:
        The results dict on rank 0, None on other ranks.

    Raises:
        InputError: when, after all ranks finished, some question has no prediction.
    """
    spec = get_benchmark(cfg.bench)
    cfg.check(spec)
    budget = tile_budget(cfg, spec, model)
    cfg = replace(cfg, max_tiles=budget["max_tiles"])  # resolved once: the cache key sees the number
    rank, world = dist_info()
    distributed = _dist_begin(world)
    samples = load_samples(spec, cfg)
    fingerprint = model_fingerprint(model, tokenizer)
    cache = PredictionCache(Path(cfg.out) / "cache", spec.name, rank)
    passes = ([cfg.direct()] if cfg.also_direct and cfg.variant() != "direct" else []) + [cfg]
    timing = {}
    for run in passes:
        timing[run.variant()] = predict(model, tokenizer, spec, samples, run, cache,
                                        run_key(spec, run, fingerprint), on_batch)
    if distributed:
        _dist_barrier()  # every rank's last batch is on disk
        _dist_end()
    if rank != 0:
        return None

    predictions = _merged(spec, samples, cache, run_key(spec, cfg, fingerprint), cfg.cot)
    if predictions is None:
        done = cache.load(run_key(spec, cfg, fingerprint))
        missing = [s.index for s in samples if str(s.index) not in done]
        raise InputError(f"{len(missing)} of {len(samples)} questions have no prediction after "
                         f"all {world} rank(s) finished (first: {missing[:5]}); rerun to fill them")
    scaling = None
    if cfg.variant() != "direct":
        direct = _merged(spec, samples, cache, run_key(spec, cfg.direct(), fingerprint), False)
        scaling = {"variant": cfg.variant(), "direct_score": None if direct is None else
                   score_samples(spec, samples, direct)["headline"]["value"]}
    settings = {**cfg.settings(spec), "max_tiles_source": budget["source"],
                "batch_size": cfg.batch_size, "limit": cfg.limit,
                "world_size": world, "image_root": cfg.image_root}
    timing = {k: {**v, "questions_per_s": v["generated"] / v["seconds"] if v["seconds"] else None}
              for k, v in timing.items()}
    return _finish(spec, cfg, samples, predictions, fingerprint=fingerprint, settings=settings,
                   scaling=scaling, timing=timing, tile_budget=budget)


def _finish(spec: BenchSpec, cfg: EvalConfig, samples: list[Sample], predictions: list[dict],
            **extra) -> dict:
    # Shared tail of `evaluate` and `score_predictions`: judge, score, assemble, write.
    from tilevl.eval.report import write_outputs

    judge = _make_judge(cfg)
    if judge is not None and spec.judge:
        apply_judge(spec, samples, predictions, judge)
    scored = score_samples(spec, samples, predictions)
    scaling = extra.pop("scaling", None)
    if scaling is not None:
        base, value = scaling["direct_score"], scored["headline"]["value"]
        scaling.update(variant_score=value, gain=None if base is None else value - base)
    results = {
        "benchmark": spec.name, "kind": spec.kind, "data": str(cfg.data),
        "model": cfg.model_name, "model_fingerprint": extra.pop("fingerprint", None),
        "rule": scored["scores"]["rule"], "rule_version": scored["scores"]["rule_version"],
        "n": len(samples), "headline": scored["headline"], "per_category": scored["per_category"],
        "scores": scored["scores"], "variant": cfg.variant(),
        "judge": judge.summary() if judge is not None and spec.judge else
                 {"used": False, "asked": 0, "decided": 0, "guessed": 0,
                  **({"note": f"{spec.kind} answers need no judge"} if judge else {})},
        "test_time_scaling": scaling, **extra,
    }
    rows = [{"index": s.index, "prompt": spec.prompt(s, cfg.cot, cfg.prompt_suffix), **p,
             "gold": {k: v for k, v in s.record.items() if k != "options"}}
            for s, p in zip(samples, predictions)]
    write_outputs(cfg.out, results, rows)
    return results


def score_predictions(cfg: EvalConfig, predictions_path: str | Path) -> dict:
    """Score predictions made elsewhere (`tilevl eval-score`) and write the same outputs.

    Args:
        cfg: `bench`, `data`, `out`, `image_root`, `limit`, `cot` (read the answer after
            "Answer:"), and the judge settings are used.
        predictions_path: jsonl lines `{"index": …, "prediction": "…"}`.

    Returns:
        The results dict.

    Raises:
        InputError: naming the file and line of a bad line, or the questions without a
            prediction.
    """
    from tilevl.eval.benchmarks.common import read_jsonl

    spec = get_benchmark(cfg.bench)
    samples = load_samples(spec, cfg)
    given: dict[str, str] = {}
    for number, row in enumerate(read_jsonl(predictions_path), 1):
        if "index" not in row or "prediction" not in row:
            raise InputError(f"{predictions_path}:{number}: needs 'index' and 'prediction'")
        given[str(row["index"])] = str(row["prediction"])
    missing = [s.index for s in samples if str(s.index) not in given]
    if missing:
        raise InputError(f"{predictions_path}: {len(missing)} of {len(samples)} questions have "
                         f"no prediction (first: {missing[:5]})")
    predictions = [finalize(spec, s, [given[str(s.index)]], cfg.cot) for s in samples]
    cfg = replace(cfg, model_name=cfg.model_name or Path(predictions_path).stem)
    return _finish(spec, cfg, samples, predictions, timing={},
                   settings={"predictions": str(predictions_path), "cot": cfg.cot,
                             "limit": cfg.limit})


def main(argv: list[str] | None = None) -> int:
    """`python -m tilevl.eval.runner MODEL --bench … --data …` (what torchrun starts)."""
    import argparse

    from tilevl.eval.commands import add_eval_arguments, cmd_eval

    parser = argparse.ArgumentParser(prog="python -m tilevl.eval.runner",
                                     description="tilevl eval, as a module torchrun can start")
    add_eval_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return cmd_eval(args)
    except TilevlError as exc:
        print(f"tilevl eval: error: {exc}", file=sys.stderr)
        return 2


__all__ = ["EvalConfig", "PredictionCache", "apply_judge", "dist_info", "evaluate",
           "finalize", "model_fingerprint", "predict", "run_key", "score_predictions",
           "score_samples", "tile_budget"]

if __name__ == "__main__":
    sys.exit(main())
