"""Peak memory while TIES-merging N LoRA adapters into a checkpoint: streamed vs in-memory.

Baseline ("dense"): `load_model` the base, densify every adapter at once (`adapter_deltas`),
merge each module, `save_model` — memory grows with N × the adapted weights. Ours
("stream"): `merge_adapters`, which holds one module's N deltas and streams the base.
Each runs in a fresh process; peak RSS above the post-import baseline is divided by the
weights' size. Run: .venv/bin/python benchmarks/merge_memory.py [--size-gb 0.3] [--adapters 8] [--max-shard-size 100MB]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

CHILD = r"""
import json, resource, sys, time
import torch, tilevl
from tilevl.merge.lora import adapter_deltas, merge_adapters, read_adapter
from tilevl.merge.methods import merge_ties
base, out, how, shard, adapters = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
def rss_mb():  # current resident set, from /proc
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
start = rss_mb()
t = time.perf_counter()
if how == "stream":
    merge_adapters(base, adapters, out, method="ties", density=0.2, progress=False, max_shard_size=shard)
else:
    model = tilevl.load_model(base)
    deltas = [adapter_deltas(read_adapter(p)) for p in adapters]  # N × every adapted weight
    with torch.no_grad():
        for name in deltas[0]:
            model.get_submodule(name).weight.add_(merge_ties([d[name] for d in deltas], density=0.2))
    tilevl.save_model(model, out, max_shard_size=shard)
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"base_mb": start, "peak_mb": peak, "seconds": seconds}))
"""

TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def make_base(folder: Path, size_gb: float):
    """A checkpoint of about `size_gb` GB (fp32): the small ViT and a 1024-wide Qwen2 LLM."""
    import tilevl
    from tilevl.config import ModelConfig

    base = ModelConfig.from_name("small")
    layers = max(1, int(size_gb * 1e9 / 4 / (12 * 1024 * 1024)))
    llm = {**base.llm, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": layers,
           "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 8000}
    model = tilevl.build_model(base.replace(llm=llm), seed=0)
    model.img_context_token_id = 1
    tilevl.save_model(model, folder)
    return model


def make_adapter(folder: Path, model, rank: int, seed: int) -> Path:
    """A PEFT-format LoRA on every LLM linear layer (written directly: same keys as PEFT)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in model.language_model.named_modules():
        if name.endswith(TARGETS):
            key = f"base_model.model.language_model.{name}"
            tensors[key + ".lora_A.weight"] = torch.randn(rank, module.in_features, generator=g) * 0.01
            tensors[key + ".lora_B.weight"] = torch.randn(module.out_features, rank, generator=g) * 0.01
    folder.mkdir()
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": [t.split(".")[-1] for t in TARGETS]}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def measure(base: Path, out: Path, how: str, shard: str, adapters: list[Path]) -> dict:
    cmd = [sys.executable, "-c", CHILD, str(base), str(out), how, shard, *map(str, adapters)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=0.3)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--max-shard-size", default="100MB", help="output shards (both ways buffer one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = make_base(root / "base", args.size_gb)
        weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
        adapters = [make_adapter(root / f"lora{i}", model, args.rank, i) for i in range(args.adapters)]
        del model
        print(f"base: {weights_mb:.0f} MB of weights; {args.adapters} adapters of rank {args.rank}")
        results = {how: measure(root / "base", root / f"out-{how}", how, args.max_shard_size, adapters) for how in ("dense", "stream")}
    for how, r in results.items():
        r["ratio"] = (r["peak_mb"] - r["base_mb"]) / weights_mb
        print(f"{how:>7}: peak {r['peak_mb']:.0f} MB (base {r['base_mb']:.0f}), "
              f"{r['seconds']:.2f} s, peak/weights = {r['ratio']:.2f}")
    print(f"ratio peak/weights: stream {results['stream']['ratio']:.2f} vs dense {results['dense']['ratio']:.2f} "
          f"(dense/stream = {results['dense']['ratio'] / results['stream']['ratio']:.2f}x)")


if __name__ == "__main__":
    main()
