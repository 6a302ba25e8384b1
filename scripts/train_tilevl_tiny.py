"""Train the embedded tilevl-tiny model on MiniBench, ship it, and score it on the dev split.

Stages (each a function below): generate MiniBench and the "look" items
(tilevl.minibench.look) → train a BPE tokenizer on the training text → save the
random-initialised `tilevl-tiny` preset with that tokenizer → `tilevl train`
(configs/tilevl_tiny.yaml) first on the look items (everything trained), then with the vision
side frozen on the train split's conversation mix (multiple choice answered with the option's
text) plus the look items, both on one 112 px tile per image → fp16 copy into
the package's assets → dev scores (MiniBench circular accuracy per category, VQA, POPE,
grounding; with the tile budget the model was trained with, which the exported config.json
names as its `eval_max_dynamic_patch`) as scores.json + scores.md.

    python scripts/train_tilevl_tiny.py --out runs/tilevl-tiny            # the shipped recipe
    python scripts/train_tilevl_tiny.py --out /tmp/tt --quick             # seconds, for CI

`--quick` trains a few steps on a handful of items and writes its "assets" under OUT, never
into the package.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "tilevl_tiny.yaml"
PACKAGE_ASSETS = REPO / "src" / "tilevl" / "assets" / "tilevl-tiny"
PRESET = "tilevl-tiny"
# (benchmark, dev file, headline label) scored after training.
DEV_BENCHES = (("minibench", "mcq.tsv"), ("minibench-vqa", "vqa.jsonl"),
               ("minibench-pope", "pope.jsonl"), ("minibench-grounding", "grounding.jsonl"))
# A large train split (24 000 multiple-choice items, 80 400 conversation records) with the
# standard dev/test of size 5000: a from-scratch model needs many distinct images per category
# (the first recipe, with 2 500 training items, learned the answer formats and nothing else).
FULL = dict(size=5000, train_size=24000, vocab_size=2048, eval_limit=None)
QUICK = dict(size=24, train_size=None, vocab_size=400, eval_limit=2)
# The training stages, each `tilevl train configs/tilevl_tiny.yaml` from the previous stage's
# model (the first from the random start checkpoint): run folder, meta JSON (relative to the
# MiniBench folder), steps (None: the YAML's) and steps under --quick, and overrides of the
# YAML.  "look" first: easy items whose answer a whole tile shows (tilevl.minibench.look), so
# the vision side works before the full mix; from scratch on the full mix alone the model
# learned every answer type and never read the image (README, "The embedded model").
# The learning rate decides whether the image is read at all.  Probes on the easy colour and
# shape items alone (800 steps from the random start, 32 fresh items each): at 2e-3 (the
# first recipe's rate) the reply was one colour for every image and the ViT's output norm grew
# 15 -> 554; at 5e-4 colour 50 %; at 2.5e-4 and 1.25e-4 colour 100 % (shape ~10 %: a shape
# squashed into one square tile is hard to name).  The YAML's 2e-4 sits between the last two;
# the look stage runs 2 000 steps of 16 over 9 categories (~3 500 samples of each, 3.6
# passes over the 9 000 look items).
# The second stage keeps the look items in its mix (mix_meta.json): from the look stage's
# model, 500 steps of the MiniBench mix alone brought back one reply per category (the visual
# tokens' spread across images fell from 94 % to 3 %); with the look items kept in, the replies
# kept following the image.  In the full mix they repeat LOOK_REPEAT times: 18 000 of 98 400
# records.  Stage 2 freezes the vision tower and projector and trains the LLM at 3e-4: with
# everything trained at 2e-3 the scene replies fell from 100 % to 50 % by step 500; from a
# colour-only look model, 300 mix steps with everything at 2.5e-4 took colour from 100 % to
# 9 %; with the vision side frozen and the LLM at 3e-4 the scene replies stayed at 100 %
# through 1 500 steps.  Its multiple-choice turns are answered in words (WORDED_TRAIN below):
# at 3e-4 the letters stayed at chance.
# Stage 3 ("reason", tilevl-tiny v2) goes on from stage 2's model on the train split with its
# reasoning traces (tilevl.minibench.traces: each question asked once more with the CoT prompt
# and answered step by step, then "Answer: X"), vision side still frozen.  Its meta JSON is
# reason_<answers>_meta.json: `--answers letters` answers multiple choice with the option's
# letter (MMBench's format), `--answers words` with its text (see README for what each gave).
STAGES = (
    ("look", "look/meta.json", 2000, 2, []),
    ("train", "mix_meta.json", 1500, 2, ["--freeze_backbone", "true", "--freeze_mlp", "true",
                                         "--learning_rate", "3e-4"]),
    ("reason", "reason_{answers}_meta.json", 1000, 2,
     ["--freeze_backbone", "true", "--freeze_mlp", "true", "--learning_rate", "3e-4"]),
)
LOOK_ITEMS = dict(full=9000, quick=9)
# Stage 3's share of the train split: every record is checked (tokenized, image header read)
# before training, ~100 records/s on 2 cores, so the whole 116 400-record split would cost
# ~20 min; 1 500 steps of 16 see 24 000 samples anyway.
REASON_RECORDS = dict(full=dict(direct=20000, cot=10000), quick=dict(direct=20, cot=10))
LOOK_REPEAT = 2

def log(message: str) -> None:
    print(f"[train_tilevl_tiny] {message}", file=sys.stderr, flush=True)


# ---- stages ---------------------------------------------------------------------------------------
def generate_minibench(out: Path, size: int, seed: int, train_size: int | None) -> Path:
    """MiniBench (all splits) into out/minibench; reused when the same sizes/seed are there."""
    from tilevl.minibench import generate
    from tilevl.minibench.generate import split_sizes

    root = out / "minibench"
    info_file = root / "info.json"
    want_train = split_sizes(size)["train"] if train_size is None else train_size
    if info_file.exists():
        info = json.loads(info_file.read_text("utf-8"))
        if (info.get("size"), info.get("seed"), info.get("train_size"), info.get("traces")) == (
                size, seed, want_train, True):
            log(f"reusing {root} (size {size}, train size {want_train}, seed {seed})")
            return root
    info = generate(root, size=size, seed=seed, progress=True, overwrite=True,
                    train_size=train_size, traces=True)
    log(f"MiniBench size {size} (train {want_train}) seed {seed} in {info['seconds']:.0f} s: "
        f"{info['splits']['train']['train_records']} training records")
    return root


def generate_look_items(minibench: Path, n: int, seed: int) -> Path:
    """The look stage's items into minibench/look; reused when the same count/seed are there."""
    from tilevl.minibench.look import generate_look

    root = minibench / "look"
    info_file = root / "info.json"
    from tilevl.minibench.look import LOOK_CATEGORIES

    want = {"n": n, "seed": seed, "categories": list(LOOK_CATEGORIES)}
    if info_file.exists() and json.loads(info_file.read_text("utf-8")) == want:
        log(f"reusing {root} ({n} look items, seed {seed})")
        return root
    start = time.perf_counter()
    generate_look(root, n, seed, progress=True)
    info_file.write_text(json.dumps(want) + "\n", "utf-8")
    log(f"{n} look items in {time.perf_counter() - start:.0f} s")
    return root


# Stage 2's copy of the train split with multiple choice answered in words
# (tilevl.minibench.formats.worded_mcq_file): after 1 500 stage-2 steps on letters the dev
# replies were at chance in every category (row accuracy 26.5 %, circular 0.0) while the
# model named the scene in words 100 % right.
WORDED_TRAIN = "train_worded.jsonl"


def write_mix_meta(minibench: Path) -> Path:
    """minibench/mix_meta.json: the train split's records once (multiple choice answered in
    words, train/train_worded.jsonl), the look items LOOK_REPEAT times."""
    from tilevl.minibench.formats import worded_mcq_file

    worded = minibench / "train" / WORDED_TRAIN
    if not worded.exists():
        direct = minibench / "train" / "train_direct.jsonl"
        kept = without_cot(minibench / "train" / "train.jsonl", direct)
        changed = worded_mcq_file(direct, worded)
        log(f"{worded}: {kept} records without reasoning traces, {changed} multiple-choice "
            "turns answered with the option's text")
    mix = {}
    for folder, repeat in (("train", 1), ("look", LOOK_REPEAT)):
        for name, entry in json.loads((minibench / folder / "meta.json").read_text("utf-8")).items():
            annotation = WORDED_TRAIN if folder == "train" else entry["annotation"]
            mix[name] = {**entry, "root": f"{folder}/{entry['root']}",
                         "annotation": f"{folder}/{annotation}", "repeat_time": repeat}
    path = minibench / "mix_meta.json"
    path.write_text(json.dumps(mix, indent=2) + "\n", "utf-8")
    return path


def without_cot(src: Path, dst: Path) -> int:
    """Copy a training jsonl without its chain-of-thought records (stages 1-2 are v1's)."""
    from tilevl.eval.benchmarks.common import MCQ_COT_PROMPT, OPEN_COT_PROMPT

    kept = []
    with open(src, encoding="utf-8") as f:
        for line in f:
            ask = json.loads(line)["conversations"][0]["value"]
            if not ask.endswith((MCQ_COT_PROMPT, OPEN_COT_PROMPT)):
                kept.append(line)
    dst.write_text("".join(kept), "utf-8")
    return len(kept)


def write_reason_meta(minibench: Path, answers: str, sizes: dict | None = None) -> Path:
    """minibench/reason_<answers>_meta.json: a part of the train split with its reasoning
    traces (REASON_RECORDS: the first direct and chain-of-thought records of the shuffled
    train.jsonl; multiple choice answered with letters, or with the option's text for
    `words`), and the look items LOOK_REPEAT times."""
    from tilevl.eval.benchmarks.common import MCQ_COT_PROMPT, OPEN_COT_PROMPT
    from tilevl.minibench.formats import worded_mcq_file

    sizes = sizes or REASON_RECORDS["full"]
    annotation = f"reason_{answers}.jsonl"
    target = minibench / "train" / annotation
    if not target.exists():
        want, picked = dict(sizes), []
        with open(minibench / "train" / "train.jsonl", encoding="utf-8") as f:
            for line in f:
                ask = json.loads(line)["conversations"][0]["value"]
                kind = "cot" if ask.endswith((MCQ_COT_PROMPT, OPEN_COT_PROMPT)) else "direct"
                if want[kind] > 0:
                    want[kind] -= 1
                    picked.append(line)
        subset = minibench / "train" / "reason_subset.jsonl"
        subset.write_text("".join(picked), "utf-8")
        if answers == "words":
            changed = worded_mcq_file(subset, target)
            subset.unlink()
            log(f"{annotation}: {changed} multiple-choice turns answered with the option's text")
        else:
            subset.replace(target)
        log(f"{annotation}: {len(picked)} records ({sizes})")
    mix = {}
    for folder, repeat in (("train", 1), ("look", LOOK_REPEAT)):
        for name, entry in json.loads((minibench / folder / "meta.json").read_text("utf-8")).items():
            mix[name] = {**entry, "root": f"{folder}/{entry['root']}",
                         "annotation": f"{folder}/{annotation if folder == 'train' else entry['annotation']}",
                         "repeat_time": repeat}
            if folder == "train":
                mix[name]["length"] = sum(1 for _ in open(target, encoding="utf-8"))
    path = minibench / f"reason_{answers}_meta.json"
    path.write_text(json.dumps(mix, indent=2) + "\n", "utf-8")
    return path


def training_texts(train_jsonl: Path, template: str = "tilevl") -> list[str]:
    """Every human and gpt turn of the training split, the `<image>` tag removed, and per
    record the template's own text (system prompt, role names), which every sample carries:
    without it "assistant" alone costs 7 tokens and the system block ~35."""
    from tilevl.inputs.template import get_template

    t = get_template(template)
    scaffold = [t.system_template.format(system_message=t.system_message), *t.roles]
    texts = []
    with open(train_jsonl, encoding="utf-8") as f:
        for line in f:
            for turn in json.loads(line)["conversations"]:
                texts.append(turn["value"].replace("<image>\n", "").replace("<image>", ""))
            texts += scaffold
    return texts


def build_start_checkpoint(out: Path, minibench: Path, vocab_size: int, seed: int) -> Path:
    """The random-initialised preset plus a BPE tokenizer trained on MiniBench's train text."""
    from tilevl.checkpoint.loader import save_model
    from tilevl.checkpoint.tokenizer import build_bpe_tokenizer, img_context_token_id
    from tilevl.model.vlm import build_model

    tokenizer = build_bpe_tokenizer(corpus=training_texts(minibench / "train" / "train_direct.jsonl"),
                                    vocab_size=vocab_size)
    model = build_model(PRESET, seed=seed)
    if len(tokenizer) > model.config.llm["vocab_size"]:
        raise ValueError(f"tokenizer has {len(tokenizer)} ids; the {PRESET} preset's "
                         f"vocab_size is {model.config.llm['vocab_size']}")
    model.img_context_token_id = img_context_token_id(tokenizer)
    folder = save_model(model, out / "init", tokenizer=tokenizer, overwrite=True)
    log(f"start checkpoint {folder}: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"tokenizer {len(tokenizer)} ids")
    return folder


def run_training(start: Path, meta: Path, run_dir: Path, steps: int | None, quick: bool,
                 extra: list[str]):
    """`tilevl train configs/tilevl_tiny.yaml` with this run's paths (and any overrides)."""
    from tilevl.train import load_train_config, train

    overrides = ["--model", str(start), "--meta_path", str(meta), "--output_dir", str(run_dir),
                 "--overwrite_output_dir", "true"]
    if steps is not None:
        overrides += ["--max_steps", str(steps)]
    if quick:  # a few steps, nothing saved on the way
        overrides += ["--save_steps", "1000", "--logging_steps", "1", "--warmup_ratio", "0.0",
                      "--per_device_train_batch_size", "4"]
    config = load_train_config(str(CONFIG), overrides + list(extra))
    start_time = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - start_time
    log(f"trained {result.global_step} steps in {seconds / 60:.1f} min, mean loss "
        f"{result.train_loss:.4f}, last logged {result.last_loss}")
    return result, config, seconds


def export_fp16(model_dir: Path, assets: Path) -> Path:
    """The trained model in fp16 (weights, config, preprocessor and tokenizer files), its
    config.json carrying its evaluation tile budget (`eval_max_dynamic_patch`): the budget it
    was trained with, unless the trained model already names one."""
    import torch

    from tilevl.checkpoint.loader import load_model, save_model
    from tilevl.checkpoint.tokenizer import load_tokenizer

    model = load_model(model_dir, dtype=torch.float16)
    # A model trained on fewer tiles than a benchmark's default reads more of them poorly, so
    # `tilevl eval tilevl-tiny --bench minibench` must use the training budget with no flag.
    if model.config.eval_max_dynamic_patch is None:
        model.config.eval_max_dynamic_patch = model.config.max_dynamic_patch
    folder = save_model(model, assets, tokenizer=load_tokenizer(model_dir), overwrite=True)
    size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
    log(f"wrote {folder} ({size:.1f} MiB)")
    return folder


def evaluate_dev(model_dir: Path, minibench: Path, out: Path, limit: int | None) -> dict:
    """Score the exported model on the dev split; returns {benchmark: results dict}."""
    import torch

    from tilevl.eval.runner import EvalConfig, evaluate
    from tilevl.resolve import open_model

    torch.manual_seed(0)
    # fp32 on CPU: the fp16 weights upcast exactly; fp16 matmuls on CPU are slow.
    model, tokenizer = open_model(str(model_dir), dtype="fp32", quiet=True)
    results = {}
    # No max_tiles: the exported config.json's eval_max_dynamic_patch (export_fp16) decides,
    # as it does for `tilevl eval tilevl-tiny` (results.json's tile_budget says so).
    for bench, file in DEV_BENCHES:
        cfg = EvalConfig(bench=bench, data=str(minibench / "dev" / file),
                         out=str(out / "eval" / bench), limit=limit, batch_size=16,
                         progress=False, model_name=PRESET)
        start = time.perf_counter()
        results[bench] = evaluate(model, tokenizer, cfg)
        head = results[bench]["headline"]
        log(f"{bench}: {head['name']} {head['value']:.4f} over {results[bench]['n']} questions "
            f"({time.perf_counter() - start:.0f} s)")
    return results


# ---- the score table --------------------------------------------------------------------------------
def summarise(results: dict, run: dict) -> dict:
    """scores.json: headline numbers, MiniBench per category, and how the model was made."""
    mcq = results["minibench"]
    per_category = (mcq.get("per_category") or {}).get("values", {})
    return {
        "model": PRESET, "split": "dev", "run": run,
        "minibench": {"circular_accuracy": mcq["headline"]["value"], "n_rows": mcq["n"],
                      "per_category": per_category},
        "vqa_accuracy": results["minibench-vqa"]["headline"]["value"],
        "pope_f1": results["minibench-pope"]["headline"]["value"],
        "grounding_accuracy": results["minibench-grounding"]["headline"]["value"],
        "headlines": {b: r["headline"] for b, r in results.items()},
        "n": {b: r["n"] for b, r in results.items()},
    }


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def markdown_table(scores: dict) -> str:
    """The README table: MiniBench dev per category (circular accuracy), then the others."""
    from tilevl.minibench import CATEGORIES

    per = scores["minibench"]["per_category"]
    lines = ["| MiniBench dev | tilevl-tiny |", "|---|---:|"]
    lines += [f"| {name} | {_pct(per.get(name))} |" for name in CATEGORIES if name in per]
    lines += [f"| **overall (circular accuracy)** | **{_pct(scores['minibench']['circular_accuracy'])}** |",
              f"| VQA accuracy ({scores['n']['minibench-vqa']} questions) | {_pct(scores['vqa_accuracy'])} |",
              f"| POPE F1 ({scores['n']['minibench-pope']} questions) | {_pct(scores['pope_f1'])} |",
              f"| grounding accuracy@0.5 ({scores['n']['minibench-grounding']} refs) | "
              f"{_pct(scores['grounding_accuracy'])} |"]
    return "\n".join(lines) + "\n"


# ---- main ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="run folder (MiniBench, checkpoints, eval)")
    p.add_argument("--quick", action="store_true", help="a few steps on a few items (CI)")
    p.add_argument("--size", type=int, default=None, help="MiniBench size (default 5000; quick 24)")
    p.add_argument("--train-size", type=int, default=None,
                   help="MiniBench train multiple-choice items (default 24000; quick: half of size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab-size", type=int, default=None)
    p.add_argument("--assets", default=None,
                   help="where the fp16 model goes (default: the package's assets/tilevl-tiny; "
                        "quick: OUT/assets/tilevl-tiny)")
    p.add_argument("--eval-limit", type=int, default=None, help="only the first K dev questions")
    p.add_argument("--from-stage", type=int, default=1, choices=range(1, len(STAGES) + 1),
                   help="start at this training stage, from the previous stage's OUT model")
    p.add_argument("--answers", choices=("letters", "words"), default="words",
                   help="stage 3: multiple choice answered with the option's letter or text")
    p.add_argument("--start", default=None,
                   help="with --from-stage N: the model stage N starts from (default: "
                        "OUT/<stage N-1>/model)")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="--key value for tilevl train")
    args = p.parse_args(argv)

    plan = dict(QUICK if args.quick else FULL)
    for key in ("size", "train_size", "vocab_size", "eval_limit"):
        if getattr(args, key) is not None:
            plan[key] = getattr(args, key)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    assets = Path(args.assets) if args.assets else (
        out / "assets" / PRESET if args.quick else PACKAGE_ASSETS)
    extra = [a for a in args.overrides if a != "--"]

    minibench = generate_minibench(out, plan["size"], args.seed, plan["train_size"])
    generate_look_items(minibench, LOOK_ITEMS["quick" if args.quick else "full"], args.seed)
    write_mix_meta(minibench)
    write_reason_meta(minibench, args.answers, REASON_RECORDS["quick" if args.quick else "full"])
    run = {"minibench_size": plan["size"], "train_size": plan["train_size"], "seed": args.seed, "config": str(CONFIG.relative_to(REPO))}
    if args.from_stage > 1 and (out / "run.json").exists():
        run = json.loads((out / "run.json").read_text("utf-8"))
    model = out / STAGES[args.from_stage - 2][0] / "model" if args.from_stage > 1 else None
    if args.start:
        model = Path(args.start)
        run[f"stage{args.from_stage}_start"] = str(model)
    for number, (name, meta, steps, quick_steps, changes) in enumerate(STAGES, start=1):
        if number < args.from_stage:
            continue
        if model is None:
            model = build_start_checkpoint(out, minibench, plan["vocab_size"], args.seed)
        result, config, seconds = run_training(
            model, minibench / meta.format(answers=args.answers), out / name, quick_steps if args.quick else steps,
            args.quick, changes + extra)
        run[f"stage{number}"] = dict(
            data=meta.format(answers=args.answers), steps=result.global_step, minutes=round(seconds / 60, 1),
            mean_loss=result.train_loss, last_loss=result.last_loss, overrides=changes + extra,
            learning_rate=config.learning_rate, batch_size=config.per_device_train_batch_size)
        (out / "run.json").write_text(json.dumps(run, indent=2) + "\n", "utf-8")
        model = out / name / "model"
    folder = export_fp16(model, assets)
    results = evaluate_dev(folder, minibench, out, plan["eval_limit"])
    scores = summarise(results, run)
    table = markdown_table(scores)
    for target in (out, folder):
        (target / "scores.json").write_text(json.dumps(scores, indent=2) + "\n", "utf-8")
    (out / "scores.md").write_text(table, "utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
