"""MMAlaya2's recipe on MiniBench: score the base per category, pick the weakest, build their data
(CoT consistency, else targeted generated data), one LoRA each, merge (TIES vs others), evaluate
each merge and each LoRA alone against the base, with paired-bootstrap intervals.

`run_mmalaya(load_mmalaya_config(path))` is the API (`tilevl recipe mmalaya` its command);
every step writes into the run folder and is skipped when its outputs are already there.
Settings: tilevl.recipes.mmalaya_config; statistics: mmalaya_stats; tables and chart: mmalaya_report.
"""

from __future__ import annotations

import gc
import json
import sys
from dataclasses import asdict
from pathlib import Path

from tilevl.errors import ConfigError
from tilevl.jsonl import write_json
from tilevl.recipes.mmalaya_config import (
    _RUNTIME_KEYS,
    BENCH,
    PEFT_PREFIX,
    MMAlayaConfig,
    load_mmalaya_config,
)


# ---- models, one at a time ------------------------------------------------------------------------
class _Models:
    """Holds at most one loaded model: a big base and a merged copy never share the GPU."""

    def __init__(self, cfg: MMAlayaConfig):
        self.cfg, self.path, self.pair = cfg, None, None

    def get(self, path: Path):
        from tilevl.resolve import open_model

        if self.path != str(path):
            self.release()
            self.pair = open_model(str(path), dtype=self.cfg.dtype, device=self.cfg.device, quiet=True)
            self.pair[0].eval()
            self.path = str(path)
        return self.pair

    def release(self) -> None:
        import torch

        self.path, self.pair = None, None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _say(message: str) -> None:
    print(f"[mmalaya] {message}", file=sys.stderr, flush=True)


# ---- the steps ------------------------------------------------------------------------------------
def prepare_base(cfg: MMAlayaConfig, run: Path) -> Path:
    """The base checkpoint folder (a shipped model's or preset's name is written to `run/base` once)."""
    import torch

    if Path(cfg.model).is_dir():
        return Path(cfg.model)
    target = run / "base"
    if not (target / "config.json").exists():
        from tilevl.checkpoint.loader import save_model
        from tilevl.resolve import open_model

        torch.manual_seed(cfg.seed)
        # Not quiet: a preset without shipped weights is random, and the table would say nothing.
        model, tokenizer = open_model(cfg.model)
        save_model(model, target, tokenizer=tokenizer, overwrite=True)
        _say(f"saved {cfg.model!r} to {target}")
    return target


def evaluate_split(cfg: MMAlayaConfig, models: _Models, path: Path, name: str, run: Path,
                   split: str, tts: bool = False, data: Path | None = None) -> dict:
    """Evaluate one model on a MiniBench split (direct, or CoT + vote@k); cached on disk.

    Args:
        data: a subset of the split's TSV (some categories) instead of all of it.

    Returns:
        The runner's results dict.
    """
    from tilevl.eval.runner import EvalConfig, evaluate

    variant = f"cot-vote{cfg.tts_samples}" if tts else "direct"
    out = run / "eval" / name / f"{split}-{variant}"
    if (out / "results.json").exists():
        return json.loads((out / "results.json").read_text(encoding="utf-8"))
    settings = dict(cot=True, samples=cfg.tts_samples, temperature=cfg.tts_temperature,
                    max_new_tokens=cfg.tts_max_new_tokens, seed=cfg.seed) if tts else dict(
                        max_new_tokens=cfg.eval_max_new_tokens)
    eval_cfg = EvalConfig(bench=BENCH, data=str(data or run / "minibench" / split / "mcq.tsv"), out=str(out),
                          max_tiles=cfg.max_tiles, batch_size=cfg.eval_batch_size,
                          progress=cfg.progress, model_name=name, **settings)
    _say(f"evaluating {name} on {split} ({variant})")
    return evaluate(*models.get(path), eval_cfg)


def category_scores(results: dict) -> dict[str, float]:
    """Per-category scores in percent from a runner result."""
    breakdown = results.get("per_category") or {}
    scale = 100.0 if breakdown.get("fraction", True) else 1.0
    values = breakdown.get("values") or {}
    return {k: (v * scale if v is not None else None) for k, v in values.items()}


def overall(results: dict) -> float:
    """The benchmark's own headline (circular accuracy over all questions), in percent."""
    head = results["headline"]
    return head["value"] * (100.0 if head.get("fraction", True) else 1.0)


def select_categories(cfg: MMAlayaConfig, dev: dict, run: Path) -> list[str]:
    """The K weakest dev categories (ties: table order), or the configured ones; stored."""
    path = run / "selection.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))["chosen"]
    from tilevl.minibench.categories import resolve_categories

    scores = category_scores(dev)
    if cfg.train_categories:
        chosen, how = resolve_categories(cfg.train_categories), "train_categories"
    else:
        order = {name: i for i, name in enumerate(resolve_categories(cfg.categories))}
        ranked = sorted(scores, key=lambda c: (scores[c], order.get(c, 99)))
        chosen, how = ranked[:cfg.weakest], f"the {cfg.weakest} weakest on dev"
    write_json(path, {"chosen": chosen, "how": how, "dev_scores": scores})
    _say(f"training {', '.join(chosen)} ({how})")
    return chosen


def build_category_data(cfg: MMAlayaConfig, models: _Models, base: Path, category: str,
                        run: Path) -> dict:
    """Targeted training data for one category: CoT consistency or the generator's items.

    Returns:
        `{"mode": "cot" | "plain", "meta_path", "records", "cot": report summary | None}`.
    """
    from tilevl.minibench import CATEGORIES, generate
    from tilevl.recipes.cot import CotSettings, ModelSampler, build_cot_data

    folder = run / "data" / category
    choice_path = folder / "choice.json"
    if choice_path.exists():
        return json.loads(choice_path.read_text(encoding="utf-8"))
    bench = folder / "minibench"
    if not (bench / "info.json").exists():
        # The train split is half of `size`; a per-category seed keeps it apart from the
        # evaluation items and independent of which other categories were chosen.
        # Only the train split is wanted: dev and test get the least the generator draws.
        generate(bench, size=3, train_size=cfg.train_items, categories=[category],
                 seed=cfg.seed + 1 + list(CATEGORIES).index(category), progress=False,
                 formats=("mcq", "train"), overwrite=True)
    cot = None
    if cfg.data_mode in ("auto", "cot"):
        model, tokenizer = models.get(base)
        sampler = ModelSampler(model, tokenizer, temperature=cfg.cot_temperature,
                               max_new_tokens=cfg.cot_max_new_tokens, max_tiles=cfg.max_tiles or 6,
                               seed=cfg.seed)
        settings = CotSettings(samples=cfg.cot_samples, batch_size=cfg.eval_batch_size,
                               id_prefix=f"{category}_cot_")
        _say(f"{category}: CoT consistency data ({cfg.cot_samples} samples per question)")
        cot = build_cot_data(sampler, bench / "train" / "mcq.tsv", folder / "cot" / "train.jsonl",
                             settings, progress=cfg.progress)
    use_cot = cot is not None and (cot["records"] >= cfg.cot_min_records or cfg.data_mode == "cot")
    if use_cot and cot["records"] == 0:
        raise ConfigError(f"data_mode: cot kept no question of {category} "
                          f"({cot['questions']} asked); use data_mode auto or plain")
    meta = folder / "cot" / "meta.json" if use_cot else bench / "train" / "meta.json"
    answers = cfg.plain_answers if cfg.plain_answers != "auto" or use_cot else base_answer_style(run)
    if not use_cot and answers == "text":
        meta = _worded_meta(bench / "train")
    records = cot["records"] if use_cot else json.loads(meta.read_text())["minibench_train"]["length"]
    choice = {"mode": "cot" if use_cot else "plain", "meta_path": str(meta), "records": records,
              "answers": None if use_cot else answers,
              "cot": None if cot is None else {k: cot[k] for k in ("questions", "kept", "dropped",
                                                                     "keep_rate", "records")}}
    write_json(choice_path, choice)
    _say(f"{category}: {choice['mode']} data, {records} records")
    return choice


def base_answer_style(run: Path) -> str:
    """"letter" when most of the base's dev replies are a bare option letter, else "text"."""
    import re

    path = run / "eval" / "base" / "dev-direct" / "predictions.jsonl"
    if not path.exists():
        raise ConfigError(f"plain_answers: auto reads the base's dev replies, but {path} is missing")
    replies = [json.loads(line).get("prediction") or "" for line in path.read_text("utf-8").splitlines() if line]
    letters = sum(bool(re.fullmatch(r"\(?[A-Z][.):]?", r.strip())) for r in replies)
    return "letter" if replies and letters > len(replies) / 2 else "text"


def _worded_meta(split: Path) -> Path:
    """split/meta_worded.json: the split's records with multiple choice answered in words."""
    from tilevl.minibench.formats import worded_mcq_file

    entries = json.loads((split / "meta.json").read_text(encoding="utf-8"))
    for entry in entries.values():
        worded = Path(entry["annotation"]).with_suffix(".worded.jsonl").name
        worded_mcq_file(split / entry["annotation"], split / worded)
        entry["annotation"] = worded
    meta = split / "meta_worded.json"
    write_json(meta, entries)
    return meta


def train_lora(cfg: MMAlayaConfig, base: Path, category: str, meta_path: str, run: Path) -> Path:
    """One LoRA on one category's data (resumes an interrupted run); returns the adapter."""
    from tilevl.train import load_train_config, train

    out = run / "lora" / category
    adapter = out / "adapter"
    if (adapter / "adapter_config.json").exists():
        return adapter
    values = {**cfg.train, "model": str(base), "meta_path": str(meta_path), "output_dir": str(out),
              "save_merged": False, "resume": True}
    values.setdefault("use_llm_lora", 16)
    try:
        config = load_train_config(cfg.train_config, None, **values)
    except ConfigError as exc:
        raise ConfigError(f"train: {exc}") from None
    if not config.uses_lora:
        raise ConfigError("train: use_llm_lora (or use_backbone_lora) must be > 0: the recipe "
                          "merges LoRAs")
    _say(f"{category}: training a LoRA (LLM rank {config.use_llm_lora}, ViT rank "
         f"{config.use_backbone_lora}) on {meta_path}")
    result = train(config)
    return result.adapter_dir


def merge(cfg: MMAlayaConfig, base: Path, adapters: list[Path], method: str, run: Path) -> Path:
    """The base plus the N adapters merged with `method` (skipped when already written).

    "peft_<type>" runs PEFT's `add_weighted_adapter` arithmetic (A and B merged apart) and
    folds the merged adapter; every other method merges the dense deltas B·A·scale.
    """
    from tilevl.merge import merge_adapters

    out = run / "merged" / method
    if (out / "config.json").exists():
        return out
    _say(f"merging {len(adapters)} adapters with {method}")
    peft = method.startswith(PEFT_PREFIX)
    return merge_adapters(base, adapters, out, method=method[len(PEFT_PREFIX):] if peft else method,
                          density=cfg.merge_density, lam=cfg.merge_lam, progress=cfg.progress,
                          seed=cfg.seed, overwrite=True, mode="peft-lora" if peft else "dense")


def fold_single(base: Path, adapter: Path, category: str, run: Path) -> Path:
    """The base with one category's LoRA folded in (its ceiling); skipped when written."""
    from tilevl.merge import merge_lora_into_checkpoint

    out = run / "single" / category
    if not (out / "config.json").exists():
        _say(f"{category}: folding its LoRA alone into the base")
        merge_lora_into_checkpoint(base, adapter, out, overwrite=True)
    return out


def subset_tsv(source: Path, categories: list[str], target: Path) -> Path:
    """The rows of `source` whose category is one of `categories` (written once)."""
    import csv

    if target.exists():
        return target
    csv.field_size_limit(1 << 30)  # base64 images exceed csv's 128 KiB default
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    with open(source, newline="", encoding="utf-8") as fin, open(tmp, "w", newline="", encoding="utf-8") as fout:
        reader = csv.DictReader(fin, delimiter="\t")
        writer = csv.DictWriter(fout, fieldnames=reader.fieldnames, delimiter="\t", lineterminator="\n",
                                quoting=csv.QUOTE_MINIMAL)
        writer.writeheader()
        kept = 0
        for row in reader:
            if row.get("category") in categories:
                writer.writerow(row)
                kept += 1
    if not kept:
        tmp.unlink()
        raise ConfigError(f"{source}: no row of categories {categories}")
    tmp.replace(target)
    return target


class _Clock:
    """Seconds per step actually run (a skipped, resumed step adds nothing); run/timings.json."""

    def __init__(self, run: Path):
        self.path = run / "timings.json"
        self.seconds = json.loads(self.path.read_text(encoding="utf-8")) if self.path.exists() else {}

    def time(self, step: str, done: Path, fn, *args, **kwargs):
        import time

        if done.exists():
            return fn(*args, **kwargs)
        start = time.perf_counter()
        value = fn(*args, **kwargs)
        self.seconds[step] = round(self.seconds.get(step, 0.0) + time.perf_counter() - start, 2)
        write_json(self.path, self.seconds)
        return value


# ---- the recipe --------------------------------------------------------------------------------------
def _check_run_dir(cfg: MMAlayaConfig, run: Path) -> None:
    """Refuse to resume a run folder made with other settings (its artefacts would mix)."""
    path = run / "config.json"
    mine = {k: v for k, v in asdict(cfg).items() if k not in _RUNTIME_KEYS}
    if path.exists():
        before = json.loads(path.read_text(encoding="utf-8"))
        before = {k: v for k, v in before.items() if k not in _RUNTIME_KEYS}
        changed = sorted(k for k in set(before) | set(mine) if before.get(k) != mine.get(k))
        if changed:
            raise ConfigError(f"{run} was made with other settings ({', '.join(changed)}); "
                              "choose another run_dir (--run-dir) or delete it")
    write_json(path, asdict(cfg))


def _eval_done(run: Path, name: str, split: str, tts: bool = False, samples: int = 0) -> Path:
    return run / "eval" / name / f"{split}-{f'cot-vote{samples}' if tts else 'direct'}" / "results.json"


def run_mmalaya(cfg: MMAlayaConfig) -> dict:
    """Run (or resume) the whole recipe and write `summary.json`, `table.md` and `chart.png`.

    Args:
        cfg: the recipe settings.

    Returns:
        The summary (see the README's "MMAlaya2 in miniature"): per method its scores and
        deltas vs the base with paired-bootstrap 95 % intervals, the data used per category,
        item counts, timings, and the tables.
    """
    from tilevl.minibench import generate
    from tilevl.minibench.categories import resolve_categories
    from tilevl.recipes import mmalaya_report as report
    from tilevl.recipes.mmalaya_stats import method_summary, read_item_outcomes

    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    _check_run_dir(cfg, run)
    clock, models = _Clock(run), _Models(cfg)
    base = prepare_base(cfg, run)
    if not (run / "minibench" / "info.json").exists():
        _say(f"generating MiniBench (size {cfg.bench_size}, dev and test only) into {run / 'minibench'}")
        clock.time("generate_bench", run / "minibench" / "info.json", generate, run / "minibench",
                   size=cfg.bench_size, seed=cfg.seed, categories=cfg.categories, progress=cfg.progress,
                   formats=("mcq",), overwrite=True, train_size=0)
    dev = clock.time("eval_dev", _eval_done(run, "base", "dev"), evaluate_split,
                     cfg, models, base, "base", run, "dev")
    chosen = select_categories(cfg, dev, run)
    data = {c: clock.time(f"data/{c}", run / "data" / c / "choice.json", build_category_data,
                          cfg, models, base, c, run) for c in chosen}
    models.release()  # training loads its own copy
    adapters = [clock.time(f"train/{c}", run / "lora" / c / "adapter" / "adapter_config.json",
                           train_lora, cfg, base, c, data[c]["meta_path"], run) for c in chosen]
    singles = {c: clock.time(f"fold/{c}", run / "single" / c / "config.json", fold_single, base, a, c, run)
               for c, a in zip(chosen, adapters)}
    merged = {m: clock.time(f"merge/{m}", run / "merged" / m / "config.json", merge, cfg, base, adapters, m, run)
              for m in cfg.merge_methods}

    # Test items: the base and the merges on the evaluated categories, each LoRA on its own.
    split_tsv = run / "minibench" / cfg.eval_split / "mcq.tsv"
    bench_categories = [c for c in resolve_categories(cfg.categories) if c in category_scores(dev)]
    if cfg.eval_categories is None:
        evaluated, eval_tsv = bench_categories, None
    else:
        wanted = set(resolve_categories(cfg.eval_categories)) | set(chosen)
        evaluated = [c for c in bench_categories if c in wanted]
        eval_tsv = subset_tsv(split_tsv, evaluated, run / "minibench" / cfg.eval_split / "evaluated.tsv")
    untargeted = [c for c in evaluated if c not in chosen]

    def scored(name: str, path: Path, tsv: Path | None) -> tuple[dict, dict]:
        results = clock.time(f"eval/{name}", _eval_done(run, name, cfg.eval_split), evaluate_split,
                             cfg, models, path, name, run, cfg.eval_split, data=tsv)
        folder = _eval_done(run, name, cfg.eval_split).parent
        return results, read_item_outcomes(folder / "predictions.jsonl", tsv or split_tsv)

    base_results, base_items = scored("base", base, eval_tsv)
    single_items = {}
    for c, path in singles.items():
        tsv = subset_tsv(split_tsv, [c], run / "minibench" / cfg.eval_split / "by_category" / f"{c}.tsv")
        single_items.update(scored(f"single-{c}", path, tsv)[1])
    merged_scored = {m: scored(m, path, eval_tsv) for m, path in merged.items()}
    scaling = {}
    paths = {"base": base, **merged}
    for name in (cfg.tts_models if cfg.tts_samples > 0 else []):
        tts = clock.time(f"tts/{name}", _eval_done(run, name, cfg.eval_split, True, cfg.tts_samples),
                         evaluate_split, cfg, models, paths[name], name, run, cfg.eval_split, tts=True,
                         data=eval_tsv)
        direct = overall(merged_scored[name][0] if name in merged_scored else base_results)
        scaling[name] = {"direct": direct, f"cot+vote@{cfg.tts_samples}": overall(tts),
                         "gain": overall(tts) - direct, "per_category": category_scores(tts)}
    models.release()

    # Statistics: every method against the base on the same items.
    stats = dict(resamples=cfg.bootstrap_resamples, seed=cfg.seed)
    single = method_summary(base_items, single_items, chosen, [], None, **stats)
    single_deltas = {c: v["delta"] for c, v in single["per_category"].items()}
    methods = {"single": single}
    for m, (results, items) in merged_scored.items():
        methods[m] = method_summary(base_items, items, chosen, untargeted, single_deltas,
                                    overall=overall(results) / 100, **stats)
    base_means = {c: sum(v.values()) / len(v) for c, v in base_items.items()}
    base_entry = {"per_category": base_means, "overall": overall(base_results) / 100,
                  "targeted": sum(base_means[c] for c in chosen) / len(chosen),
                  "untargeted": (sum(base_means[c] for c in untargeted) / len(untargeted)
                                 if untargeted else None)}

    table = report.format_table(base_entry, methods, chosen)
    stats_table = report.format_stats_table(methods, cfg.bootstrap_resamples)
    lead = cfg.merge_methods[0]
    verdict = "; ".join(
        f"{m}: targeted {100 * e['delta_targeted']:+.1f} {report._ci(e['delta_targeted_ci95'])}"
        + ("" if e["delta_untargeted"] is None else
           f", untargeted {100 * e['delta_untargeted']:+.1f} {report._ci(e['delta_untargeted_ci95'])}")
        for m, e in methods.items() if m in ("single", lead)) + " (points vs the base, 95 % CI)"
    goals = report.check_goals(methods, lead)
    if goals:
        verdict += ". " + report.format_goals(goals, lead)
    tts_table = "\n".join(["| Model | direct | CoT + vote@k | gain |", "| --- | --- | --- | --- |"] + [
        f"| {n} | {s['direct']:.1f} | {s[f'cot+vote@{cfg.tts_samples}']:.1f} | {s['gain']:+.1f} |"
        for n, s in scaling.items()]) if scaling else "(test-time scaling off: tts_samples 0)"
    text = (f"# MMAlaya2 in miniature on MiniBench ({cfg.eval_split}, circular accuracy %)\n\n"
            f"Base: {cfg.model}, seed {cfg.seed}. One LoRA for each of the {len(chosen)} categories "
            f"marked *; `single` is each LoRA alone on its own category (the ceiling). Untargeted: "
            f"{len(untargeted)} categories ({', '.join(untargeted) or 'none'}). Items per category: "
            f"{min(map(len, base_items.values()))}–{max(map(len, base_items.values()))} (circular).\n\n{table}\n\n"
            f"## Change from the base\n\n{stats_table}\n\n{verdict}\n\n"
            f"## Training data\n\n{report.format_data_table(data)}\n\n"
            f"## Test-time scaling (k = {cfg.tts_samples})\n\n{tts_table}\n")
    (run / "table.md").write_text(text, encoding="utf-8")
    chart = None
    from tilevl.optional import is_available

    if is_available("matplotlib"):
        chart = str(report.plot_deltas(methods, run / "chart.png",
                                       f"MMAlaya2 in miniature: {cfg.model}, seed {cfg.seed}"))
    summary = {
        "model": cfg.model, "seed": cfg.seed, "split": cfg.eval_split, "bench_size": cfg.bench_size,
        "targeted": chosen, "untargeted": untargeted, "selection": json.loads(
            (run / "selection.json").read_text(encoding="utf-8")),
        "items": {"per_category": {c: len(v) for c, v in base_items.items()},
                  "total": sum(len(v) for v in base_items.values()), "rows": base_results["n"]},
        "bootstrap": {"resamples": cfg.bootstrap_resamples, "level": 0.95, "unit": "circular item",
                      "paired": True, "stratified_by": "category"},
        "base": base_entry, "methods": methods, "data": data,
        "adapters": [str(a) for a in adapters], "merged": {k: str(v) for k, v in merged.items()},
        "timings_s": clock.seconds, "test_time_scaling": scaling, "goals": goals, "verdict": verdict,
        "table": table, "stats_table": stats_table, "tts_table": tts_table,
        "files": {"table": str(run / "table.md"), "chart": chart},
    }
    write_json(run / "summary.json", summary)
    if cfg.publish:
        copied = report.publish(run, cfg.publish)
        _say(f"published {', '.join(p.name for p in copied)} to {cfg.publish}")
    return summary


__all__ = ["MMAlayaConfig", "build_category_data", "category_scores", "evaluate_split",
           "fold_single", "load_mmalaya_config", "merge", "prepare_base", "run_mmalaya",
           "select_categories", "subset_tsv", "train_lora"]
