"""MMAlaya2's recipe in Python: weakest MiniBench categories -> one LoRA each (ViT + LLM) -> TIES
merge -> the per-category table and each method's change from the base with 95 % intervals.

    python examples/mmalaya_recipe.py                      # the quick smoke run on `tiny` (CPU, ~1 min)
    python examples/mmalaya_recipe.py MODEL_FOLDER --full  # configs/recipes/mmalaya_mini.yaml on a real base
"""

import sys
from pathlib import Path

from tilevl.recipes.cot import format_report
from tilevl.recipes.mmalaya import load_mmalaya_config, run_mmalaya

args = [a for a in sys.argv[1:] if not a.startswith("--")]
model = args[0] if args else "tiny"
config = Path(__file__).resolve().parents[1] / "configs" / "recipes" / "mmalaya_mini.yaml"
quick = "--full" not in sys.argv
cfg = load_mmalaya_config(config, quick=quick, model=model,
                          run_dir=f"runs/mmalaya-{'quick' if quick else 'mini'}-{Path(model).name}")
summary = run_mmalaya(cfg)

for category, data in summary["data"].items():
    cot = data["cot"]
    kept = f"{cot['kept']}/{cot['questions']} questions kept by CoT consistency" if cot else "no CoT"
    print(f"{category}: {data['mode']} data, {data['records']} records ({kept})")
report = Path(cfg.run_dir) / "data" / summary["targeted"][0] / "cot" / "train.report.json"
if report.exists():
    import json

    print(format_report(json.loads(report.read_text())))
print()
print(summary["table"])
print()
print(summary["stats_table"])
print()
print(summary["verdict"])
print()
print(summary["tts_table"])
