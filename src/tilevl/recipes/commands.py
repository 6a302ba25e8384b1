"""The `tilevl recipe` subcommands: `cot-data` (CoT-consistency training data), `translate`
(InternVL 1.5's translation pipeline) and `mmalaya` (MMAlaya2's per-category LoRAs + TIES).

`add_recipe_parsers(subparsers)` registers them; each maps its flags onto one plain function.
"""

from __future__ import annotations

import argparse
import os
import sys


def cmd_cot_data(args: argparse.Namespace) -> int:
    """Sample k CoT answers per labelled question; write the consistent ones as training data."""
    from tilevl.recipes.cot import CotSettings, ModelSampler, build_cot_data, format_report
    from tilevl.resolve import open_model

    model, tokenizer = open_model(args.model, dtype=args.dtype, device=args.device)
    model.eval()
    sampler = ModelSampler(model, tokenizer, temperature=args.temperature, top_p=args.top_p,
                           max_new_tokens=args.max_new_tokens, max_tiles=args.max_tiles,
                           seed=args.seed)
    settings = CotSettings(samples=args.samples, min_agreement=args.min_agreement,
                           max_traces=args.max_traces, batch_size=args.batch_size,
                           circular=args.circular, limit=args.limit, bench=args.bench,
                           id_prefix=args.id_prefix, image_root=args.image_root)
    report = build_cot_data(sampler, args.data, args.out, settings,
                            progress=not args.no_progress, overwrite=args.overwrite)
    print(format_report(report))
    print(f"wrote {report['records']} records to {args.out} (report: {report['files']['report']}, "
          f"meta: {report['files']['meta']})")
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    """Translate a jsonl training set; report the records that failed (see `translate_exit_status`)."""
    from tilevl.recipes.translate import format_failures, open_backend, translate_file

    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    backend = open_backend(args.backend, args.model_name, batch_size=args.batch_size,
                           max_new_tokens=args.max_new_tokens, api_key=api_key,
                           workers=args.workers, device=args.device, dtype=args.dtype)
    report = translate_file(backend, args.data, args.out, args.target_language,
                            batch_size=args.batch_size, keep_markup=not args.paper_prompt,
                            limit=args.limit, progress=not args.no_progress,
                            overwrite=args.overwrite)
    print(f"{report['written']} records translated into {report['language']} "
          f"({report['already_done']} already done, {report['failed']} failed) -> {args.out}")
    if report["failed"]:
        print(f"{report['failed']} record(s) not written (rerun to retry them):\n"
              + format_failures(report), file=sys.stderr)
    return translate_exit_status(report, strict=args.strict)


def translate_exit_status(report: dict, strict: bool = False) -> int:
    """0 when the run translated something; 1 when every record it tried failed (a dead
    endpoint, a wrong model), or with `strict` when any failed.

    A few lines whose markup did not survive are normal for a large set: they are listed,
    counted, skipped, and retried by the next run, so they do not fail a pipeline by default.
    """
    if report["failed"] and (strict or not report["written"]):
        return 1
    return 0


def cmd_mmalaya(args: argparse.Namespace) -> int:
    """Run or resume MMAlaya2's recipe and print its tables."""
    import yaml

    from tilevl.errors import ConfigError
    from tilevl.recipes.mmalaya import load_mmalaya_config, run_mmalaya

    overrides = {}
    for item in args.set or []:
        key, eq, text = item.partition("=")
        if not eq:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        overrides[key.strip()] = yaml.safe_load(text)
    quick = args.quick_config or args.quick
    cfg = load_mmalaya_config(args.config, quick=quick, model=args.model, run_dir=args.run_dir,
                              device=args.device, publish=args.publish, **overrides)
    summary = run_mmalaya(cfg)
    print(summary["table"])
    print()
    print(summary["stats_table"])
    print()
    print(summary["verdict"])
    print()
    print(summary["tts_table"])
    print(f"\nall artefacts in {cfg.run_dir} (table.md, summary.json, chart.png)")
    return 0


def add_recipe_parsers(sub) -> None:
    """Register `tilevl recipe cot-data | translate | mmalaya`.

    Args:
        sub: the top-level `add_subparsers()` object.
    """
    p = sub.add_parser("recipe", help="the papers' data and test-time recipes (CoT data, "
                       "translation, MMAlaya2)")
    rs = p.add_subparsers(dest="recipe_command", required=True)

    c = rs.add_parser("cot-data", help="CoT-consistency training data from a labelled MCQ set")
    c.add_argument("--model", required=True, help="checkpoint folder or preset name")
    c.add_argument("--data", required=True, help="labelled MCQ: MMBench-style TSV or plain-mcq jsonl")
    c.add_argument("--out", required=True, help="the training jsonl (meta.json, images/ go beside it)")
    c.add_argument("--samples", type=int, default=5, help="k CoT answers per question")
    c.add_argument("--min-agreement", type=float, default=0.5,
                   help="keep when more than this share of the k answers is the label")
    c.add_argument("--max-traces", type=int, default=1, help="correct traces kept per question (0: all)")
    c.add_argument("--temperature", type=float, default=0.7)
    c.add_argument("--top-p", type=float, default=None)
    c.add_argument("--max-new-tokens", type=int, default=1024)
    c.add_argument("--max-tiles", type=int, default=6)
    c.add_argument("--batch-size", type=int, default=8)
    c.add_argument("--bench", default=None,
                   help="reader (default: mmbench for .tsv, plain-mcq for .jsonl)")
    c.add_argument("--circular", action="store_true", help="also use MMBench's circular copies")
    c.add_argument("--limit", type=int, default=None, help="only the first N questions")
    c.add_argument("--id-prefix", default="cot_")
    c.add_argument("--image-root", default=None)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    _add_device(c)
    c.set_defaults(func=cmd_cot_data)

    t = rs.add_parser("translate", help="translate a jsonl training set (InternVL 1.5, Fig. 5)")
    t.add_argument("--data", required=True, help="input jsonl ({id, image, conversations})")
    t.add_argument("--out", required=True, help="output jsonl (resumed: ids in it are skipped)")
    t.add_argument("--target-language", default="zh", help="a code (zh, ja, fr …) or a name")
    t.add_argument("--backend", required=True, help="local:MODEL (folder or preset) or openai:URL")
    t.add_argument("--model-name", default=None, help="the model an openai: endpoint serves")
    t.add_argument("--api-key-env", default=None, help="environment variable holding the API key")
    t.add_argument("--batch-size", type=int, default=16, help="records (and local texts) per batch")
    t.add_argument("--workers", type=int, default=4, help="concurrent requests (openai:)")
    t.add_argument("--max-new-tokens", type=int, default=1024)
    t.add_argument("--paper-prompt", action="store_true",
                   help="the paper's prompt only, without our keep-the-markup rule")
    t.add_argument("--limit", type=int, default=None)
    t.add_argument("--overwrite", action="store_true")
    t.add_argument("--strict", action="store_true",
                   help="exit 1 when any record fails (default: only when all that were tried fail)")
    _add_device(t)
    t.set_defaults(func=cmd_translate)

    m = rs.add_parser("mmalaya", help="MMAlaya2: weakest categories -> LoRAs -> TIES merge -> table")
    m.add_argument("--config", required=True, help="configs/recipes/mmalaya_mini.yaml or your own")
    m.add_argument("--quick", action="store_true",
                   help="overlay mmalaya_quick.yaml from the config's folder (a smoke run)")
    m.add_argument("--quick-config", default=None, help="another overlay file instead")
    m.add_argument("--model", default=None, help="the base (overrides the config's model)")
    m.add_argument("--run-dir", default=None, help="overrides the config's run_dir")
    m.add_argument("--device", default=None, help="overrides the config's device")
    m.add_argument("--publish", default=None, metavar="DIR",
                   help="copy summary.json, table.md and chart.png there (e.g. results/mmalaya-mini)")
    m.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any config key (YAML value), e.g. --set weakest=5 (repeatable)")
    m.set_defaults(func=cmd_mmalaya)


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 …")
    p.add_argument("--dtype", default=None, help="bf16 | fp16 | fp32 (default: as stored)")
    p.add_argument("--no-progress", action="store_true")
