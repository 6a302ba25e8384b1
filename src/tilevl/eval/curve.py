"""InternVL 2.5's test-time scaling curve: accuracy of CoT + majority vote over k samples for
several k, from one run of k_max samples per question, with direct answering as the baseline.

`evaluate_curve(model, tokenizer, cfg, ks)` runs (or resumes) `evaluate` with k_max samples
and the direct pass, then scores vote@k for every k from the cached samples and writes
curve.json, curve.md and curve.png beside the run's own results.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

from tilevl.errors import ConfigError, InputError
from tilevl.eval.benchmarks import get_benchmark
from tilevl.eval.benchmarks.common import final_answer, majority_vote

# The reasoning categories of the issue ("counting, maths, charts, spatial, physical
# relation, comparison, future"): the default selection of a curve on MiniBench.
REASONING_CATEGORIES = {"minibench": (
    "object_counting", "math_reasoning", "chart_reading", "spatial_relationship",
    "physical_relation", "attribute_comparison", "future_prediction")}
DEFAULT_CURVE = (1, 2, 4, 8, 16)


def parse_curve(text: str) -> list[int]:
    """'1,2,4,8,16' → [1, 2, 4, 8, 16] (sorted, unique, each ≥ 1)."""
    try:
        ks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ConfigError(f"--curve must be comma-separated integers, got {text!r}") from None
    if not ks or ks[0] < 1:
        raise ConfigError(f"--curve needs integers >= 1, got {text!r}")
    return ks


def vote_predictions(spec, samples, outputs: dict[str, list[str]], k: int, cot: bool,
                     rng: random.Random | None = None) -> list[dict]:
    """The vote@k prediction of every question from its cached samples.

    Args:
        spec: the benchmark (its vote key).
        samples: the questions.
        outputs: `{str(index): [k_max replies]}` (the prediction cache).
        k: how many samples vote.
        cot: read each reply's answer after its last "Answer:".
        rng: None takes the first k samples of each question; a Random draws k of the
            k_max at random (one draw per question, in sample order).

    Returns:
        One `{"prediction"}` dict per question, as `finalize` makes.
    """
    predictions = []
    for sample in samples:
        replies = outputs[str(sample.index)]
        chosen = replies[:k] if rng is None else [replies[i] for i in
                                                  sorted(rng.sample(range(len(replies)), k))]
        answers = [final_answer(r) if cot else r for r in chosen]
        prediction, _ = majority_vote(answers, lambda a, s=sample: spec.key(s, a))
        predictions.append({"prediction": prediction})
    return predictions


def _point(spec, samples, predictions) -> dict:
    from tilevl.eval.runner import score_samples

    scored = score_samples(spec, samples, predictions)
    per = (scored["per_category"] or {}).get("values", {})
    return {"overall": scored["headline"]["value"], "per_category": per,
            "n_items": scored["scores"].get("n_questions", len(samples)), "n_rows": len(samples)}


def _mean(points: list[dict]) -> dict:
    cats = points[0]["per_category"]
    return {"overall": sum(p["overall"] for p in points) / len(points),
            "per_category": {c: sum(p["per_category"][c] for p in points) / len(points)
                             for c in cats},
            "n_items": points[0]["n_items"], "n_rows": points[0]["n_rows"]}


def curve_points(spec, samples, outputs: dict, ks: list[int], cot: bool, draws: int,
                 seed: int) -> dict[int, dict]:
    """Score vote@k for each k from the cached samples.

    vote@k of a question is the majority of k of its k_max samples. The first k samples are
    one unbiased draw (samples are i.i.d.); `draws` > 1 adds `draws - 1` random subsets of
    size k per question (a seeded rng) and averages the scores, which lowers the variance of
    the small-k points at no generation cost. k = k_max has one subset only.

    Returns:
        `{k: {"overall", "per_category", "n_items", "n_rows", "first_k"}}` (`first_k`:
        the first-k draw alone).
    """
    k_max = min(len(outputs[str(s.index)]) for s in samples)
    points = {}
    for k in ks:
        if k > k_max:
            raise InputError(f"--curve asks for vote@{k} but the cache holds {k_max} samples "
                             f"per question")
        first = _point(spec, samples, vote_predictions(spec, samples, outputs, k, cot))
        runs = [first]
        if k < k_max:
            rng = random.Random(seed * 1_000_003 + k)
            runs += [_point(spec, samples, vote_predictions(spec, samples, outputs, k, cot, rng))
                     for _ in range(max(draws, 1) - 1)]
        points[k] = {**_mean(runs), "draws": len(runs), "first_k": first["overall"]}
    return points


def evaluate_curve(model, tokenizer, cfg, ks: list[int], draws: int = 8) -> dict | None:
    """Run (or resume) k_max = max(ks) samples per question plus direct answering, then the
    vote@k curve; writes curve.json, curve.md and curve.png into `cfg.out`.

    Args:
        model, tokenizer: from `tilevl.resolve.open_model`.
        cfg: an `EvalConfig`; `samples` is raised to max(ks) (a larger one stays: its
            cached run serves any curve up to it), `also_direct` is on; without `categories`
            a MiniBench curve covers `REASONING_CATEGORIES`.
        ks: the k of each point.
        draws: subsets of size k averaged per point (1: the first k samples only).

    Returns:
        The curve dict on rank 0, None on other ranks.
    """
    from tilevl.eval.runner import PredictionCache, evaluate, load_samples, model_fingerprint, run_key
    from tilevl.eval.scope import tile_budget

    spec = get_benchmark(cfg.bench)
    k_max = max(max(ks), cfg.samples)
    if k_max < 2:
        raise ConfigError("--curve needs some k >= 2 (vote@1 alone is no curve)")
    categories = cfg.categories or _default_categories(spec, cfg)
    cfg = replace(cfg, samples=k_max, also_direct=True, categories=categories)
    results = evaluate(model, tokenizer, cfg)
    if results is None:
        return None
    cfg = replace(cfg, max_tiles=tile_budget(cfg, spec, model)["max_tiles"])
    samples = load_samples(spec, cfg)
    fingerprint = model_fingerprint(model, tokenizer)
    cache = PredictionCache(Path(cfg.out) / "cache", spec.name)
    outputs = cache.load(run_key(spec, cfg, fingerprint))
    direct_outputs = cache.load(run_key(spec, cfg.direct(), fingerprint))
    points = curve_points(spec, samples, outputs, ks, cfg.cot, draws, cfg.seed)
    direct = _point(spec, samples, [{"prediction": direct_outputs[str(s.index)][0]} for s in samples])
    settings = results["settings"]
    curve = {
        "benchmark": spec.name, "data": str(cfg.data), "model": cfg.model_name,
        "model_fingerprint": fingerprint, "metric": results["headline"]["name"],
        "rule": results["rule"],
        "fraction": results["headline"]["fraction"], "variant": "cot" if cfg.cot else "sampled",
        "categories": categories, "k_max": k_max, "draws": draws,
        "points": {str(k): p for k, p in points.items()}, "direct": direct,
        "settings": {key: settings.get(key) for key in (
            "seed", "temperature", "top_p", "max_new_tokens", "max_tiles", "max_tiles_source",
            "batch_size", "prompt_suffix")} | {"direct_max_new_tokens":
                                                cfg.direct().settings(spec)["max_new_tokens"]},
        "timing": results.get("timing"),
    }
    write_curve(cfg.out, curve)
    return curve


def _default_categories(spec, cfg) -> list[str] | None:
    """The benchmark's reasoning categories that this file holds (None: every question)."""
    from tilevl.eval.runner import load_samples

    wanted = REASONING_CATEGORIES.get(spec.name)
    if not wanted:
        return None
    present = {str(s.record.get("category")) for s in load_samples(spec, replace(cfg, limit=None))}
    chosen = [c for c in wanted if c in present]
    if not chosen:
        raise ConfigError(f"{cfg.data} holds none of {spec.name}'s reasoning categories "
                          f"{list(wanted)}; name some with --categories")
    return chosen


# ---- outputs ---------------------------------------------------------------------------------------
def curve_markdown(curve: dict) -> str:
    """The curve as a Markdown table: one row per k (overall, then each category), direct last."""
    from tilevl.eval.report import fmt

    frac = curve["fraction"]
    cats = list(curve["direct"]["per_category"])
    label = "CoT + vote@k" if curve["variant"] == "cot" else "vote@k"
    lines = [f"# {curve['benchmark']} — {curve['model'] or 'model'}: {label} vs direct", "",
             f"{curve['metric']} (rule `{curve.get('rule')}`) over {curve['direct']['n_items']} items "
             f"({curve['direct']['n_rows']} rows); k of {curve['k_max']} samples per row, "
             f"mean of up to {curve['draws']} subsets; temperature "
             f"{curve['settings']['temperature']}, top_p {curve['settings']['top_p']}, "
             f"max_new_tokens {curve['settings']['max_new_tokens']}, seed "
             f"{curve['settings']['seed']}", "",
             "| | overall | " + " | ".join(cats) + " |", "|---|---:|" + "---:|" * len(cats)]
    rows = [(f"vote@{k}", p) for k, p in curve["points"].items()] + [("direct", curve["direct"])]
    for name, point in rows:
        values = [fmt(point["overall"], frac)] + [fmt(point["per_category"].get(c), frac) for c in cats]
        lines.append(f"| {name} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def plot_curve(curve: dict, path: str | Path) -> Path:
    """Overall accuracy against k (log2 axis), direct answering as a horizontal line."""
    from tilevl.optional import require

    matplotlib = require("matplotlib", extra="eval", purpose="to draw the scaling curve")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = 100 if curve["fraction"] else 1
    ks = [int(k) for k in curve["points"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ks, [scale * curve["points"][str(k)]["overall"] for k in ks], "o-",
            label="CoT + majority vote" if curve["variant"] == "cot" else "majority vote")
    ax.axhline(scale * curve["direct"]["overall"], color="grey", linestyle="--", label="direct")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("samples per question (k)")
    ax.set_ylabel(curve["metric"] + (" (%)" if curve["fraction"] else ""))
    ax.set_title(f"{curve['benchmark']} — {curve['model'] or 'model'}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def write_curve(out: str | Path, curve: dict) -> dict:
    """curve.json, curve.md and (with matplotlib) curve.png into `out`; returns the paths."""
    from tilevl.optional import is_available

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": str(out / "curve.json"), "markdown": str(out / "curve.md"), "chart": None}
    if is_available("matplotlib"):
        files["chart"] = str(plot_curve(curve, out / "curve.png"))
    else:
        curve.setdefault("notes", []).append("no curve.png: pip install 'tilevl[eval]' for matplotlib")
    curve["files"] = files
    (out / "curve.md").write_text(curve_markdown(curve), encoding="utf-8")
    (out / "curve.json").write_text(json.dumps(curve, indent=2, default=str) + "\n", encoding="utf-8")
    return files


__all__ = ["DEFAULT_CURVE", "REASONING_CATEGORIES", "curve_markdown", "curve_points",
           "evaluate_curve", "parse_curve", "plot_curve", "vote_predictions", "write_curve"]
