"""Memory and time of loading a ~1.5 GB checkpoint: tilevl.load_model vs transformers.

Peer: transformers' `InternVLForConditionalGeneration.from_pretrained` on the same weights
(exported with `tilevl convert --layout native`). tilevl reads the official layout (what
OpenGVLab publishes) and, as "tilevl-native", the peer's own files (there it joins the vision
q/k/v projections, which reads those pages during the load). Baseline ("naive", `--naive`): build the
model with random weights, then `load_state_dict` of the whole safetensors file.

Each loader runs in a fresh process that samples its own /proc/self/status every 2 ms:
peak RSS (what `top` shows; includes the checkpoint's file pages mapped by safetensors, which
are shared with the page cache and reclaimable) and peak private memory (RssAnon: what the
process itself allocated). Both are measured over the load and then over a first use that
reads every weight once (a lazily mapped weight costs memory only when it is read).
`ru_maxrss` is not used: across fork+exec it keeps the parent's high-water mark, so a child
started by a parent holding a model reports the parent's size (that made earlier figures
1.02x "for tilevl" when the load itself mapped nothing).
Run: .venv/bin/python benchmarks/load_memory.py [--size-gb 1.0] [--dtype bf16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, os, sys, threading, time
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
import torch, tilevl
from transformers import InternVLForConditionalGeneration
from transformers.utils import logging
logging.disable_progress_bar()
path, how, dtype = sys.argv[1], sys.argv[2], sys.argv[3]
dtype = None if dtype == "stored" else getattr(torch, dtype)
def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                out[key] = int(value.split()[0]) / 1024
    return out
base = status()
peak, stop = dict(base), threading.Event()
def sample():
    while not stop.is_set():
        for key, value in status().items():
            peak[key] = max(peak[key], value)
        time.sleep(0.002)
thread = threading.Thread(target=sample, daemon=True)
thread.start()
t = time.perf_counter()
if how.startswith("tilevl"):
    model = tilevl.load_model(path, dtype=dtype)
elif how == "transformers":
    model = InternVLForConditionalGeneration.from_pretrained(path, dtype=dtype or "auto")
else:  # naive: random init, then the whole state dict at once
    from safetensors.torch import load_file
    from tilevl.checkpoint.loader import read_config
    config, _ = read_config(path)
    model = tilevl.build_model(config, seed=0).to(dtype or torch.float32)
    model.load_state_dict(load_file(f"{path}/model.safetensors"))
seconds = time.perf_counter() - t
stop.set(); thread.join()
load_peak = {k: max(v, status()[k]) for k, v in peak.items()}
stop.clear(); thread = threading.Thread(target=sample, daemon=True); thread.start()
with torch.no_grad():  # first use: every weight read once
    checksum = sum(float(p.float().sum()) for p in model.parameters())
stop.set(); thread.join()
used = {k: max(v, status()[k]) for k, v in peak.items()}
print(json.dumps({"base": base, "load": load_peak, "used": used, "seconds": seconds,
                  "dtype": str(next(model.parameters()).dtype), "checksum": checksum}))
"""


def make_checkpoint(folder: Path, size_gb: float) -> float:
    """Write a checkpoint of about `size_gb` GB (fp32): a 300M-style ViT and a Qwen2 LLM.

    Returns:
        The weights' size in MiB.
    """
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


def measure(folder: Path, how: str, dtype: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder), how, dtype],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{how} loader failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--dtype", default="stored", help="stored (fp32) or a torch dtype name: bfloat16")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs; best kept")
    parser.add_argument("--naive", action="store_true", help="also time build + load_state_dict")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _peer import export_native

    with tempfile.TemporaryDirectory() as tmp:
        # The checkpoint is written by a child, so this process never holds the weights.
        script = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
                  "from pathlib import Path; from load_memory import make_checkpoint; "
                  "from _peer import export_native; import tilevl; "
                  f"mb = make_checkpoint(Path({tmp!r}) / 'official', {args.size_gb}); "
                  f"export_native(tilevl.load_model(Path({tmp!r}) / 'official'), Path({tmp!r})); print(mb)")
        made = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        if made.returncode != 0:
            raise SystemExit(made.stderr[-2000:])
        weights_mb = float(made.stdout.strip().splitlines()[-1])
        print(f"checkpoint: {weights_mb:.0f} MiB of fp32 weights, loaded as {args.dtype}, "
              f"best of {args.repeats}")
        hows = ["tilevl", "tilevl-native", "transformers"] + (["naive"] if args.naive else [])
        best: dict[str, dict] = {}
        for _ in range(args.repeats):
            for how in hows:
                layout = "native" if how in ("transformers", "tilevl-native") else "official"
                r = measure(Path(tmp) / layout, how, args.dtype)
                if how in best and abs(r["checksum"] - best["tilevl"]["checksum"]) > 1e-3 * abs(r["checksum"]) + 1e-3:
                    raise SystemExit(f"{how}: weights differ (checksum {r['checksum']} vs {best['tilevl']['checksum']})")
                keep = best.setdefault(how, r)
                keep["seconds"] = min(keep["seconds"], r["seconds"])
                for phase in ("load", "used"):
                    for key in ("VmRSS", "RssAnon"):
                        grown = r[phase][key] - r["base"][key]
                        keep.setdefault("grow", {}).setdefault(phase, {})[key] = min(
                            keep.get("grow", {}).get(phase, {}).get(key, float("inf")), grown)
    for how, r in best.items():
        g = r["grow"]
        print(f"{how:>13}: {r['seconds']:.2f} s; load: RSS +{g['load']['VmRSS']:.0f} MiB, private "
              f"+{g['load']['RssAnon']:.0f} MiB; after first use: RSS +{g['used']['VmRSS']:.0f} MiB "
              f"({g['used']['VmRSS'] / weights_mb:.2f}x the checkpoint), private +{g['used']['RssAnon']:.0f} MiB")
    ours, peer = best["tilevl"], best["transformers"]
    print(f"tilevl/peer: peak RSS {ours['grow']['used']['VmRSS'] / peer['grow']['used']['VmRSS']:.2f}x, "
          f"private {(ours['grow']['used']['RssAnon'] + 1) / (peer['grow']['used']['RssAnon'] + 1):.2f}x, "
          f"speed {peer['seconds'] / ours['seconds']:.2f}x (>1 = tilevl faster)")


if __name__ == "__main__":
    main()
