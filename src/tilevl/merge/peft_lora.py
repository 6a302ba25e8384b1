"""PEFT's `add_weighted_adapter` on adapter folders: N LoRAs → one LoRA, with PEFT's arithmetic.

The `peft-lora` mode of `tilevl merge`. It is what "merged with the PEFT model merging method"
most likely ran, not TIES on the task vectors (the `dense` mode, tilevl.merge.lora).

For `linear`, `ties`, `dare_linear`, `dare_ties` and `magnitude_prune` PEFT merges the A
factors and the B factors *separately*, each adapter weighted by √|w·scale| (the sign on A),
and the new adapter's delta is B_m·A_m: products of sums, so cross terms B_i·A_j (i ≠ j)
enter, and TIES trims, elects and averages factor entries rather than delta entries. For
`svd` and the `*_svd` types PEFT merges the dense deltas B·A·scale (as the dense mode does,
unweighted sign vote) and keeps the top `svd_rank` singular directions; `cat` stacks the
factors (exact sum, rank Σr). Source: peft/tuners/lora/model.py (`add_weighted_adapter`,
`_generalized_task_arithmetic_weighted_adapter`, `_svd_generalized_task_arithmetic_weighted_adapter`)
and peft/utils/merge_utils.py, PEFT 0.21.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

from tilevl.checkpoint.files import AtomicFolder
from tilevl.errors import ConfigError
from tilevl.merge.methods import (
    merge_dare,
    merge_magnitude_prune,
    merge_task_arithmetic,
    merge_ties,
)

FACTOR_TYPES = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
SVD_TYPES = ("svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")
COMBINATION_TYPES = (*FACTOR_TYPES, "cat", *SVD_TYPES)


def _combine(kind: str, tensors: list[torch.Tensor], weights: torch.Tensor, density: float,
             sign_method: str, generator: torch.Generator | None) -> torch.Tensor:
    """PEFT's merge_utils function of that name, on a list of same-shape tensors (float32).

    PEFT's `ties`/`dare_ties` vote on the unweighted values (`elect_weighted=False`) and
    have no λ; DARE's masks come from `generator`, drawn tensor by tensor in list order.
    """
    stacked = torch.stack([t.float() for t in tensors])
    if kind in ("linear", "svd"):
        return merge_task_arithmetic(stacked, weights)
    if kind == "ties":
        return merge_ties(stacked, weights, density, elect_weighted=False, sign_method=sign_method)
    if kind in ("dare_linear", "dare_ties"):
        return merge_dare(stacked, weights, density, then=kind[5:], generator=generator,
                          elect_weighted=False, sign_method=sign_method)
    if kind == "magnitude_prune":
        return merge_magnitude_prune(stacked, weights, density)
    raise ConfigError(f"unknown PEFT combination_type {kind!r}; known: {list(COMBINATION_TYPES)}")


def merge_lora_factors(
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor, float]],
    weights: Sequence[float],
    combination: str,
    density: float = 1.0,
    *,
    sign_method: str = "total",
    generator: torch.Generator | None = None,
    svd_rank: int | None = None,
    transposed: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One module's merged factors, as PEFT's `add_weighted_adapter` computes them.

    Args:
        pairs: per adapter (A [r, q], B [p, r], scale) in PEFT's orientation (B·A is [p, q]).
        weights: one weight per adapter.
        combination: one of `COMBINATION_TYPES` (a single adapter is always "linear", as PEFT).
        density: kept fraction for the trimming and DARE types.
        sign_method: "total" or "frequency" (PEFT's majority_sign_method).
        generator: DARE's random source; masks are drawn for A (adapter by adapter), then B,
            or for the dense deltas with `dare_*_svd`.
        svd_rank: the new rank of the `*svd` types (default: the largest adapter rank).
        transposed: the module's base weight is B·A transposed (an embedding, or
            fan_in_fan_out): PEFT merges the dense deltas in the weight's layout and turns
            them back before its SVD; the result is the same, kept for symmetry.

    Returns:
        (A_m, B_m) in the adapters' dtype; the new adapter has lora_alpha = r (scale 1).
    """
    if len(pairs) != len(weights):
        raise ConfigError(f"got {len(weights)} weights for {len(pairs)} adapters")
    combination = "linear" if len(pairs) == 1 else combination
    dtype = pairs[0][0].dtype
    if combination == "cat":
        a = torch.cat([a.float() * w * s for (a, _, s), w in zip(pairs, weights)], dim=0)
        b = torch.cat([b.float() for _, b, _ in pairs], dim=1)
        return a.to(dtype), b.to(dtype)
    if combination in SVD_TYPES:
        deltas = [(b.float() @ a.float()) * s for a, b, s in pairs]  # PEFT's get_delta_weight
        if transposed:
            deltas = [d.T for d in deltas]
        kind = "linear" if combination == "svd" else combination[:-len("_svd")]
        merged = _combine(kind, deltas, torch.tensor(list(weights), dtype=torch.float32),
                          density, sign_method, generator)
        if transposed:
            merged = merged.T
        rank = svd_rank or max(a.shape[0] for a, _, _ in pairs)
        u, s, vh = torch.linalg.svd(merged, full_matrices=True)
        return vh[:rank].to(dtype), (u[:, :rank] @ torch.diag(s[:rank])).to(dtype)
    if combination not in FACTOR_TYPES:
        raise ConfigError(f"unknown PEFT combination_type {combination!r}; known: {list(COMBINATION_TYPES)}")
    ranks = {a.shape[0] for a, _, _ in pairs}
    if len(ranks) != 1:
        raise ConfigError(f"PEFT's {combination} needs adapters of one rank, got ranks {sorted(ranks)}")
    # √|w·scale| on both factors, the sign on A only: B·A then carries w·scale once.
    scaled = [w * s for (_, _, s), w in zip(pairs, weights)]
    w_a = torch.tensor([math.sqrt(abs(x)) * (1 if x >= 0 else -1) for x in scaled])
    w_b = torch.tensor([math.sqrt(abs(x)) for x in scaled])
    a = _combine(combination, [a for a, _, _ in pairs], w_a, density, sign_method, generator)
    b = _combine(combination, [b for _, b, _ in pairs], w_b, density, sign_method, generator)
    return a.to(dtype), b.to(dtype)


def write_peft_merged_adapter(
    adapters: Sequence,
    names: Sequence[str],
    folder: str | Path,
    combination: str,
    weights: Sequence[float] | None = None,
    density: float = 1.0,
    *,
    sign_method: str = "total",
    seed: int = 0,
    svd_rank: int | None = None,
) -> Path:
    """Write the adapter `add_weighted_adapter` would make from N adapter folders.

    Args:
        adapters: `tilevl.merge.lora.Adapter`s, all targeting `names` (as read, unrenamed).
        names: the module names, in the model's module order (PEFT merges, and DARE draws,
            module by module in that order).
        folder: where `adapter_config.json` and `adapter_model.safetensors` go.
        combination, density, sign_method, svd_rank: as in `merge_lora_factors`.
        weights: one per adapter (default all 1).
        seed: seeds DARE's draws.

    Returns:
        The folder.
    """
    weights = [1.0] * len(adapters) if weights is None else [float(w) for w in weights]
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for name in names:
        module = adapters[0].modules[name]
        pairs = [(*adapter.lora_pair(name), adapter.modules[name].scale) for adapter in adapters]
        a, b = merge_lora_factors(pairs, weights, combination, density, sign_method=sign_method,
                                  generator=generator, svd_rank=svd_rank,
                                  transposed=module.kind == "embedding" or module.fan_in_fan_out)
        ranks[name] = a.shape[0]
        suffix = ("lora_embedding_A", "lora_embedding_B") if module.kind == "embedding" else \
            ("lora_A.weight", "lora_B.weight")
        tensors[f"base_model.model.{name}.{suffix[0]}"] = a.contiguous()
        tensors[f"base_model.model.{name}.{suffix[1]}"] = b.contiguous()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    # PEFT: replace(config of adapter 0, r=new_rank, lora_alpha=new_rank, target_modules=…,
    # alpha_pattern={}, rank_pattern={}); use_rslora and the rest carry over unchanged.
    # Adapters with a rank_pattern (LoRA on the ViT at another rank than on the LLM, as
    # `use_backbone_lora` + `use_llm_lora` train them) merge, in PEFT's memory, into factors of
    # each module's own rank with scale 1; PEFT's saved config would then claim r = new_rank for
    # every module and not load. Here the other ranks go into rank_pattern with alpha = rank
    # (scale 1), so the folder loads and folds to the same deltas.
    rank = max(ranks.values())  # PEFT's new_rank: max(r, *rank_pattern.values())
    others = {re.escape(name): r for name, r in ranks.items() if r != rank}
    config = dict(adapters[0].config)
    targets = [a.config.get("target_modules") for a in adapters]
    if all(isinstance(t, str) for t in targets):
        config["target_modules"] = "|".join(f"({t})" for t in targets)
    else:
        config["target_modules"] = sorted({m for t in targets for m in (t or [])})
    config.update(r=rank, lora_alpha=rank, alpha_pattern=dict(others), rank_pattern=dict(others))
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", "utf-8")
    return folder


def merge_adapters_peft(base, adapter_paths, out_path, method, density, weights, as_lora_rank,
                        progress, *, layout, seed, max_shard_size, overwrite, sign_method="total"):
    """`merge_adapters(mode="peft-lora")`: PEFT's merged adapter, written or folded into the base.

    With `as_lora_rank` the merged adapter itself is written (the rank is PEFT's: `svd_rank`
    for the `*svd` types, otherwise it must equal the adapters' rank); otherwise it is folded
    into the base and config.json records the N source adapters as folded.
    """
    from tilevl.checkpoint.loader import read_config
    from tilevl.merge.lora import _check_adapters_agree, merge_adapters, read_adapter
    from tilevl.model.vlm import VisionLanguageModel

    if method not in COMBINATION_TYPES:
        raise ConfigError(f"--mode peft-lora: --method {method!r} is not a PEFT combination_type; "
                          f"known: {list(COMBINATION_TYPES)}")
    config, _ = read_config(base)
    sources = [read_adapter(p) for p in adapter_paths]
    names = _check_adapters_agree(sources)
    with torch.device("meta"):
        order = {n: i for i, (n, _) in enumerate(VisionLanguageModel(config).named_modules())}
    names = sorted(names, key=lambda n: order.get(n, len(order)))  # PEFT's module order
    svd_rank = as_lora_rank if method in SVD_TYPES else None
    with tempfile.TemporaryDirectory(prefix="tilevl-peft-merge-") as scratch:
        merged = write_peft_merged_adapter(sources, names, Path(scratch) / "merged", method, weights,
                                           density, sign_method=sign_method, seed=seed,
                                           svd_rank=svd_rank)
        if as_lora_rank is not None:
            written = read_adapter(merged).config["r"]
            if written != as_lora_rank:
                raise ConfigError(f"--mode peft-lora --method {method}: PEFT's merged adapter has "
                                  f"rank {written}, not --as-lora {as_lora_rank} (only the *svd "
                                  "methods choose their rank)")
            with AtomicFolder(out_path, overwrite=overwrite) as tmp:
                for file in merged.iterdir():
                    (tmp / file.name).write_bytes(file.read_bytes())
            return Path(out_path)
        return merge_adapters(base, [merged], out_path, method="task_arithmetic", lam=1.0,
                              progress=progress, layout=layout, max_shard_size=max_shard_size,
                              overwrite=overwrite, record=[a.fingerprint for a in sources])
