"""Held-out tables for the embedded model: MiniBench test splits of seeds it was not tuned on,
scored as circular multiple choice (and again with images swapped within each category, the
model's chance level), open VQA, POPE (F1 and the share of "yes" replies) and grounding, with
95 % intervals, per seed and pooled; writes DIR/scores.json and DIR/scores.md.

    python scripts/score_tilevl_tiny.py tilevl-tiny --seeds 101 202 --size 5000 --out runs/heldout

`--size` is MiniBench's total size: the test split gets 40 % of it (5 000 → 2 000 items),
no train split is drawn. `--limit K` keeps the first K multiple-choice items (all their
circular copies) and the first K questions of the other files. Reruns reuse the drawn
benchmark (DIR/minibench-SEED, when its info.json matches) and the runner's prediction cache.

Time with tilevl-tiny on 2 shared cores (avx512_bf16, no AMX), one torch thread: 0.026 s per
scored row; an item is ~3.8 circular rows, scored twice (real and swapped), and each item
brings ~0.5 VQA, ~4.2 POPE and ~0.5 grounding questions, so 2 seeds × 2 000 items are
~51 000 rows (~22 min), plus drawing ~5 600 images per seed (~70 images/s: ~1.5 min, estimated);
measured: --size 500 (2 seeds × 200 items, 5 104 rows) took 2.6 min in all.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from tilevl.eval.intervals import RESAMPLES, bootstrap_interval, f1_from_counts, wilson_interval
from tilevl.minibench.formats import CIRCULAR_STRIDE, read_tsv, swap_images, tsv_text

SPLIT = "test"
BENCHES = ("mcq", "swapped", "vqa", "pope", "grounding")
_BENCH_NAMES = {"mcq": "minibench", "swapped": "minibench", "vqa": "minibench-vqa",
                "pope": "minibench-pope", "grounding": "minibench-grounding"}
_FILES = {"vqa": "vqa.jsonl", "pope": "pope.jsonl", "grounding": "grounding.jsonl"}


# ---- the benchmark on disk ------------------------------------------------------------------
def prepare_minibench(root: Path, seed: int, size: int, categories=None,
                      progress: bool = True) -> Path:
    """DIR/minibench-SEED with a test split of `size`'s share and no train split.

    A folder whose info.json names the same seed, size, categories and format is reused;
    one that differs is regenerated in place.
    """
    from tilevl.minibench import generate
    from tilevl.minibench.categories import resolve_categories
    from tilevl.minibench.generate import FORMAT_VERSION

    folder = root / f"minibench-{seed}"
    wanted = {"seed": seed, "size": size, "train_size": 0, "format_version": FORMAT_VERSION,
              "categories": list(resolve_categories(categories))}
    info_path = folder / "info.json"
    if info_path.exists():
        info = json.loads(info_path.read_text("utf-8"))
        found = {k: info.get(k) for k in wanted}
        found["categories"] = list(info.get("categories", {}))
        if found == wanted:
            return folder
        print(f"[score] {folder}: info.json differs from the request ({_diff(found, wanted)}); "
              "regenerating", file=sys.stderr)
    generate(folder, size=size, seed=seed, categories=categories, progress=progress,
             overwrite=True, train_size=0)
    return folder


def _diff(found: dict, wanted: dict) -> str:
    return ", ".join(f"{k} {found[k]!r} != {wanted[k]!r}" for k in wanted if found[k] != wanted[k])


def first_items(rows: list[dict], limit: int | None) -> list[dict]:
    """The rows of the first `limit` items (every circular copy of each), in file order."""
    if limit is None:
        return rows
    kept: list[int] = []
    for row in rows:
        item = int(row["index"]) % CIRCULAR_STRIDE
        if item not in kept:
            kept.append(item)
            if len(kept) == limit:
                break
    keep = set(kept)
    return [r for r in rows if int(r["index"]) % CIRCULAR_STRIDE in keep]


def write_mcq_files(data: Path, out: Path, seed: int, limit: int | None) -> dict[str, Path]:
    """The scored multiple-choice TSV and its images-swapped twin (swapped among the kept items).

    Raises:
        SystemExit: naming a category with fewer than two items (nothing to swap with).
    """
    rows = first_items(read_tsv(data / SPLIT / "mcq.tsv"), limit)
    try:
        swapped = swap_images(rows, seed=seed)
    except ValueError as exc:
        raise SystemExit(f"score_tilevl_tiny: {data / SPLIT / 'mcq.tsv'}: {exc}; the swapped "
                         "control needs two items per category: raise --size or --limit") from None
    out.mkdir(parents=True, exist_ok=True)
    paths = {"mcq": out / "real.tsv", "swapped": out / "swapped.tsv"}
    paths["mcq"].write_text(tsv_text(rows), "utf-8")
    paths["swapped"].write_text(tsv_text(swapped), "utf-8")
    return paths


# ---- the model --------------------------------------------------------------------------------
def model_identity(spec: str) -> dict:
    """Where MODEL's files are and a hash of its config.json (None for a preset)."""
    from tilevl.assets import asset_path

    folder = Path(spec) if Path(spec).is_dir() else asset_path(spec)
    config = folder / "config.json" if folder is not None else None
    digest = (hashlib.sha256(config.read_bytes()).hexdigest()[:16]
              if config is not None and config.exists() else None)
    return {"model": spec, "path": str(folder.resolve()) if folder else None,
            "config_sha256": digest}


def tile_budget(model, flag: int | None) -> dict:
    """Tiles per image: --max-tiles, else the model's own evaluation budget, else its trained one."""
    if flag is not None:
        return {"max_tiles": flag, "source": "--max-tiles"}
    own = getattr(model.config, "eval_max_dynamic_patch", None)
    if own is not None:
        return {"max_tiles": int(own), "source": "config.json eval_max_dynamic_patch"}
    return {"max_tiles": model.image_settings.max_num, "source": "config.json max_dynamic_patch"}


def run_bench(model, tokenizer, bench: str, data: Path, out: Path, max_tiles: int,
              batch_size: int, limit: int | None, name: str, progress: bool):
    """One benchmark file through the runner: (its results, [(sample, prediction)])."""
    from tilevl.eval.runner import EvalConfig, evaluate, load_samples
    from tilevl.eval.benchmarks import get_benchmark

    cfg = EvalConfig(bench=_BENCH_NAMES[bench], data=str(data), out=str(out), max_tiles=max_tiles,
                     batch_size=batch_size, limit=None if bench in ("mcq", "swapped") else limit,
                     progress=progress, model_name=name)
    results = evaluate(model, tokenizer, cfg)
    predictions = {}
    with open(out / "predictions.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            predictions[str(row["index"])] = row["prediction"]
    samples = load_samples(get_benchmark(cfg.bench), cfg)
    return results, [(s, predictions[str(s.index)]) for s in samples]


# ---- per-unit outcomes --------------------------------------------------------------------------
def mcq_items(answered: list) -> dict[int, tuple[str, bool]]:
    """Each item's category and circular verdict (MMBench's rule: every copy right)."""
    from tilevl.eval.metrics import score

    groups: dict[int, list[dict]] = defaultdict(list)
    for sample, prediction in answered:
        groups[int(sample.index) % CIRCULAR_STRIDE].append(
            {**sample.record, "index": sample.index, "prediction": prediction})
    out = {}
    for item, records in groups.items():
        original = min(records, key=lambda r: int(r["index"]))
        out[item] = (str(original.get("category")), score("mmbench", records)["accuracy"] == 1.0)
    return out


def pope_counts(answered: list) -> np.ndarray:
    """Per POPE image, [true positives, false positives, false negatives, questions].

    Replies are read with POPE's own rule ("yes" is positive), so the sums give the scorer's
    F1, and (tp + fp) / questions is the share of "yes" replies.
    """
    from tilevl.eval.metrics.yesno import parse_yes_no

    per_image: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for sample, prediction in answered:
        said = parse_yes_no(prediction, "pope") == "yes"
        gold = str(sample.record.get("answer", "")).strip().lower() == "yes"
        counts = per_image[str(sample.image)]
        counts[0] += said and gold
        counts[1] += said and not gold
        counts[2] += gold and not said
        counts[3] += 1
    return np.array(list(per_image.values()), dtype=float).reshape(-1, 4)


def yes_ratio(predictions: list[str]) -> float:
    """The share of replies POPE's rule reads as "yes" (0 for no replies)."""
    from tilevl.eval.metrics.yesno import parse_yes_no

    return sum(parse_yes_no(p, "pope") == "yes" for p in predictions) / len(predictions) \
        if predictions else 0.0


# ---- figures with intervals ---------------------------------------------------------------------
def _mean_gap(sums: np.ndarray) -> np.ndarray:
    # sums: (..., 3) = [right, right with images swapped, items] → (..., 3) accuracy, swapped, gap
    n = np.maximum(sums[..., 2], 1)
    return np.stack([sums[..., 0] / n, sums[..., 1] / n, (sums[..., 0] - sums[..., 1]) / n], -1)


def summarize_mcq(strata: list[dict], categories: list[str], seed: int) -> dict:
    """Circular accuracy, the swapped control and their gap, overall and per category.

    Args:
        strata: per seed, {item: (category, right, right with images swapped)}.
        categories: the table's row order.
        seed: the bootstrap's seed.
    """
    def units(rows):
        return np.array([[r, s, 1] for _, r, s in rows], dtype=float).reshape(-1, 3)

    every = [units(s.values()) for s in strata]
    acc, swapped, gap = _mean_gap(sum(u.sum(0) for u in every)).tolist()
    (acc_ci, swapped_ci, gap_ci) = bootstrap_interval(every, _mean_gap, RESAMPLES, seed)
    per_category = {}
    for k, name in enumerate(categories):
        mine = [units([v for v in s.values() if v[0] == name]) for s in strata]
        mine = [u for u in mine if len(u)]
        if not mine:
            continue
        c_acc, c_swapped, c_gap = _mean_gap(sum(u.sum(0) for u in mine)).tolist()
        per_category[name] = {
            "acc": c_acc, "swapped": c_swapped, "gap": c_gap,
            "gap_ci95": bootstrap_interval(mine, _mean_gap, RESAMPLES, seed + 1 + k)[2],
            "n_items": int(sum(len(u) for u in mine)), "above_control": c_acc > c_swapped}
    return {"accuracy": acc, "accuracy_ci95": acc_ci, "swapped": swapped,
            "swapped_ci95": swapped_ci, "gap": gap, "gap_ci95": gap_ci,
            "n_items": int(sum(len(u) for u in every)), "per_category": per_category,
            "categories_above_control": sum(c["above_control"] for c in per_category.values()),
            "n_categories": len(per_category)}


def summarize_proportion(counts: list[tuple[int, int]]) -> dict:
    """A proportion pooled over seeds (questions right / asked) with its Wilson interval."""
    right, n = sum(c[0] for c in counts), sum(c[1] for c in counts)
    return {"accuracy": right / n if n else 0.0, "ci95": wilson_interval(right, n),
            "right": right, "n": n}


def summarize_pope(strata: list[np.ndarray], seed: int) -> dict:
    """POPE F1 and yes ratio, bootstrapped over images (an image's questions go together)."""
    total = sum(s.sum(0) for s in strata)
    f1, yes = f1_from_counts(total).tolist()
    f1_ci, yes_ci = bootstrap_interval(strata, f1_from_counts, RESAMPLES, seed)
    return {"f1": f1, "f1_ci95": f1_ci, "yes_ratio": yes, "yes_ratio_ci95": yes_ci,
            "n": int(total[3]), "n_images": int(sum(len(s) for s in strata))}


def summarize(outcomes: list[dict], categories: list[str], seed: int) -> dict:
    """All figures over the given seeds' outcomes (one seed, or pooled over several)."""
    return {"mcq": summarize_mcq([o["mcq"] for o in outcomes], categories, seed),
            "vqa": summarize_proportion([o["vqa"] for o in outcomes]),
            "pope": summarize_pope([o["pope"] for o in outcomes], seed),
            "grounding": summarize_proportion([o["grounding"] for o in outcomes])}


# ---- one seed -------------------------------------------------------------------------------------
def score_seed(model, tokenizer, args, seed: int, budget: int) -> tuple[dict, dict]:
    """Draw (or reuse) one seed's test split, run every benchmark, return (outcomes, extras)."""
    root = Path(args.out)
    data = prepare_minibench(root, seed, args.size, args.categories, progress=not args.quiet)
    work = root / f"eval-{seed}"
    files = write_mcq_files(data, work, seed, args.limit)
    files.update({b: data / SPLIT / f for b, f in _FILES.items()})
    answered, extras = {}, {"timing": {}, "scorer": {}}
    for bench in BENCHES:
        print(f"[score] seed {seed}: {bench}", file=sys.stderr)
        results, answered[bench] = run_bench(model, tokenizer, bench, files[bench], work / bench,
                                             budget, args.batch_size, args.limit, args.model,
                                             progress=not args.quiet)
        timing = results.get("timing", {}).get("direct", {})
        extras["timing"][bench] = {"rows": len(answered[bench]),
                                   "generated": timing.get("generated", 0),
                                   "seconds": round(timing.get("seconds", 0.0), 2)}
        extras["scorer"][bench] = results["headline"]
        if bench == "pope":
            pope_f1 = results["scores"]["f1"]
    real, blind = mcq_items(answered["mcq"]), mcq_items(answered["swapped"])
    outcomes = {
        "mcq": {item: (cat, ok, blind[item][1]) for item, (cat, ok) in real.items()},
        "vqa": _right_of(extras["scorer"]["vqa"]["value"], len(answered["vqa"])),
        "pope": pope_counts(answered["pope"]),
        "grounding": _right_of(extras["scorer"]["grounding"]["value"], len(answered["grounding"])),
    }
    extras["pope_f1_mean_over_splits"] = extras["scorer"]["pope"]["value"]
    mine = float(f1_from_counts(outcomes["pope"].sum(0))[0])
    if abs(mine - pope_f1) > 1e-9:
        raise RuntimeError(f"seed {seed}: POPE F1 from per-image counts {mine} != runner's {pope_f1}")
    extras["n_rows"] = len(answered["mcq"])
    # Our per-item verdicts must agree with the runner's own score of the same predictions.
    mine = sum(v[1] for v in outcomes["mcq"].values()) / max(1, len(outcomes["mcq"]))
    if abs(mine - extras["scorer"]["mcq"]["value"]) > 1e-9:
        raise RuntimeError(f"seed {seed}: per-item circular accuracy {mine} != runner's "
                           f"{extras['scorer']['mcq']['value']}")
    return outcomes, extras


def _right_of(accuracy: float, n: int) -> tuple[int, int]:
    return round(accuracy * n), n


# ---- the report ---------------------------------------------------------------------------------
def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _ci(pair) -> str:
    return f"[{100 * pair[0]:.1f}, {100 * pair[1]:.1f}]"


def scores_markdown(scores: dict) -> str:
    """The README table: categories + overall × (model, images swapped, gap, above control),
    then VQA, POPE F1 (yes %) and grounding, and a line naming what was scored."""
    s, pooled = scores["settings"], scores["pooled"]
    mcq = pooled["mcq"]
    lines = [f"| category | {s['model']} | images swapped | gap | above control |",
             "|---|---:|---:|---:|:---:|"]
    for name, c in mcq["per_category"].items():
        lines.append(f"| {name} | {_pct(c['acc'])} | {_pct(c['swapped'])} | "
                     f"{100 * c['gap']:+.1f} | {'yes' if c['above_control'] else 'no'} |")
    lines.append(f"| **overall** | **{_pct(mcq['accuracy'])}** {_ci(mcq['accuracy_ci95'])} | "
                 f"**{_pct(mcq['swapped'])}** {_ci(mcq['swapped_ci95'])} | "
                 f"**{100 * mcq['gap']:+.1f}** {_ci(mcq['gap_ci95'])} | "
                 f"{mcq['categories_above_control']}/{mcq['n_categories']} |")
    vqa, pope, ground = pooled["vqa"], pooled["pope"], pooled["grounding"]
    lines += ["", f"Categories above the images-swapped control: "
                  f"{mcq['categories_above_control']} of {mcq['n_categories']}.", "",
              "| VQA | POPE F1 (yes %) | grounding |", "|---:|---:|---:|",
              f"| {_pct(vqa['accuracy'])} {_ci(vqa['ci95'])} | {_pct(pope['f1'])} "
              f"{_ci(pope['f1_ci95'])} (yes {_pct(pope['yes_ratio'])} %) | "
              f"{_pct(ground['accuracy'])} {_ci(ground['ci95'])} |", ""]
    counts = s["item_counts"]
    per_seed = "; ".join(
        f"seed {seed}: {_pct(b['mcq']['accuracy'])} (swapped {_pct(b['mcq']['swapped'])})"
        for seed, b in scores["per_seed"].items())
    lines += [
        f"MiniBench seeds {', '.join(map(str, s['seeds']))}, {s['split']} split (size "
        f"{s['size']}, no train split), pooled: {counts['mcq_items']} multiple-choice items "
        f"({counts['mcq_rows']} circular rows), {counts['vqa']} VQA, {counts['pope']} POPE "
        f"questions on {counts['pope_images']} images, {counts['grounding']} grounding items; "
        f"{s['tile_budget']['max_tiles']} tile(s) per image. Circular accuracy by MMBench's rule "
        "(an item counts when every rotation is right); images swapped: each item shows another "
        f"item's image of its category. [95 % CI]: bootstrap over items ({RESAMPLES} resamples, "
        "seeds as strata) for the multiple choice, over images for POPE, Wilson for VQA and "
        "grounding (precision at IoU 0.5). Per seed: " + per_seed + ".", ""]
    return "\n".join(lines)


def item_counts(outcomes: list[dict], extras: list[dict]) -> dict:
    """How many units each figure rests on, summed over seeds."""
    return {"mcq_items": sum(len(o["mcq"]) for o in outcomes),
            "mcq_rows": sum(e["n_rows"] for e in extras),
            "vqa": sum(o["vqa"][1] for o in outcomes),
            "pope": int(sum(o["pope"][:, 3].sum() for o in outcomes)),
            "pope_images": sum(len(o["pope"]) for o in outcomes),
            "grounding": sum(o["grounding"][1] for o in outcomes)}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a checkpoint folder, tilevl-tiny, or a preset (random weights)")
    p.add_argument("--seeds", type=int, nargs="+", required=True,
                   help="MiniBench seeds never used for training or tuning")
    p.add_argument("--size", type=int, required=True,
                   help="MiniBench size; the test split gets 40 %% of it")
    p.add_argument("--out", required=True, help="folder for the benchmark, predictions and scores")
    p.add_argument("--limit", type=int, default=None,
                   help="score only the first K multiple-choice items and K questions per file")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-tiles", type=int, default=None,
                   help="tiles per image (default: the model folder's own budget)")
    p.add_argument("--categories", nargs="+", default=None,
                   help="MiniBench categories or L2 groups (default: all)")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (1: a 6 M model runs ~1.8x faster so on 2 shared "
                        "cores than with 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.size < 1 or args.batch_size < 1 or args.threads < 1:
        p.error("--size, --batch-size and --threads must be >= 1")
    if args.limit is not None and args.limit < 2:
        p.error(f"--limit must be >= 2 (the swapped control needs two items), got {args.limit}")
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds repeats a seed: {args.seeds}")
    return args


def main(argv: list[str] | None = None) -> int:
    import torch

    from tilevl.minibench.categories import resolve_categories
    from tilevl.resolve import open_model
    from tilevl.eval.runner import model_fingerprint

    args = parse_args(argv)
    start = time.perf_counter()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model, tokenizer = open_model(args.model, dtype=args.dtype, quiet=True)
    budget = tile_budget(model, args.max_tiles)
    categories = resolve_categories(args.categories)
    outcomes, extras = [], []
    for seed in args.seeds:
        o, e = score_seed(model, tokenizer, args, seed, budget["max_tiles"])
        outcomes.append(o)
        extras.append(e)
    per_seed = {}
    for seed, o, e in zip(args.seeds, outcomes, extras):
        block = summarize([o], categories, seed)
        block["pope"]["f1_mean_over_splits"] = e["pope_f1_mean_over_splits"]
        block.update(item_counts=item_counts([o], [e]), timing=e["timing"])
        per_seed[str(seed)] = block
    rows = sum(t["generated"] for e in extras for t in e["timing"].values())
    seconds = sum(t["seconds"] for e in extras for t in e["timing"].values())
    minutes = (time.perf_counter() - start) / 60
    scores = {
        "settings": {**model_identity(args.model),
                     "model_fingerprint": model_fingerprint(model, tokenizer),
                     "seeds": args.seeds, "size": args.size, "split": SPLIT, "train_size": 0,
                     "categories": categories, "limit": args.limit,
                     "item_counts": item_counts(outcomes, extras), "tile_budget": budget,
                     "batch_size": args.batch_size, "dtype": args.dtype,
                     "bootstrap": {"resamples": RESAMPLES, "level": 0.95,
                                   "unit": "item (all circular rows); POPE: image",
                                   "strata": "seeds"},
                     "minutes": round(minutes, 2), "generated_rows": rows,
                     "seconds_per_row": round(seconds / rows, 4) if rows else None,
                     "cpu_threads": torch.get_num_threads()},
        "per_seed": per_seed,
        "pooled": summarize(outcomes, categories, 0),
    }
    out = Path(args.out)
    (out / "scores.json").write_text(json.dumps(scores, indent=2) + "\n", "utf-8")
    (out / "scores.md").write_text(scores_markdown(scores), "utf-8")
    print(scores_markdown(scores))
    print(f"[score] wrote {out / 'scores.json'} and {out / 'scores.md'} in {minutes:.1f} min "
          f"({scores['settings']['seconds_per_row']} s per generated row)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
