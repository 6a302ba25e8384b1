"""Peak memory while loading a ~1 GB checkpoint: tilevl.load_model vs the naive way.

Baseline ("naive"): build the model with random weights, then `load_state_dict` of the whole
safetensors file, which holds the weights twice. Each loader runs in a fresh process; peak
RSS above the post-import baseline is divided by the weights' size. Goal for ours: ≤ 1.3.
Run: .venv/bin/python benchmarks/load_memory.py [--size-gb 1.0]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import torch, tilevl
from tilevl.checkpoint.loader import read_config
path, how = sys.argv[1], sys.argv[2]
def rss_mb():  # current resident set, from /proc
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
base = rss_mb()
t = time.perf_counter()
if how == "tilevl":
    model = tilevl.load_model(path)
else:
    from safetensors.torch import load_file
    config, _ = read_config(path)
    model = tilevl.build_model(config, seed=0)
    model.load_state_dict(load_file(f"{path}/model.safetensors"))
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"base_mb": base, "peak_mb": peak, "seconds": seconds}))
"""


def make_checkpoint(folder: Path, size_gb: float) -> float:
    """Write a checkpoint of about `size_gb` GB (fp32): a 300M-style ViT and a Qwen2 LLM."""
    import tilevl
    from tilevl.config import ModelConfig

    base = ModelConfig.from_name("small")
    layers = max(1, int(size_gb * 1e9 / 4 / (12 * 1024 * 1024)))
    llm = {**base.llm, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": layers,
           "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 32000}
    model = tilevl.build_model(base.replace(llm=llm), seed=0)
    model.img_context_token_id = 1
    tilevl.save_model(model, folder)
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20


def measure(folder: Path, how: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder), how], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ckpt"
        weights_mb = make_checkpoint(folder, args.size_gb)
        print(f"checkpoint: {weights_mb:.0f} MB of weights")
        results = {how: measure(folder, how) for how in ("naive", "tilevl")}
    for how, r in results.items():
        ratio = (r["peak_mb"] - r["base_mb"]) / weights_mb
        r["ratio"] = ratio
        print(f"{how:>7}: peak {r['peak_mb']:.0f} MB (base {r['base_mb']:.0f}), "
              f"{r['seconds']:.2f} s, peak/weights = {ratio:.2f}")
    print(f"ratio peak/weights: tilevl {results['tilevl']['ratio']:.2f} vs naive {results['naive']['ratio']:.2f} "
          f"(naive/tilevl = {results['naive']['ratio'] / results['tilevl']['ratio']:.2f}x)")


if __name__ == "__main__":
    main()
