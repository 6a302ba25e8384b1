"""Merging N full fine-tuned checkpoints of one base: task vectors (fine-tuned − base) merged
tensor by tensor with TIES, DARE or task arithmetic, streamed from the shards to the output's.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open

from tilevl.checkpoint.files import AtomicFolder, iter_tensors, weight_files, write_shards
from tilevl.checkpoint.loader import read_config
from tilevl.errors import CheckpointError
from tilevl.merge.lora import _finish_folder, _method_kwargs
from tilevl.merge.methods import merge_deltas


def merge_checkpoints(
    base_path: str | Path,
    finetuned_paths: Sequence[str | Path],
    out_path: str | Path,
    method: str = "ties",
    density: float = 0.2,
    lam: float = 1.0,
    weights: Sequence[float] | None = None,
    progress: bool = True,
    *,
    seed: int = 0,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    elect_weighted: bool = False,
) -> Path:
    """Merge N full fine-tunes of one base: task vectors (fine-tuned − base), tensor by tensor.

    All checkpoints must share the base's layout and keys; the output keeps that layout,
    and the base's config and side files. Non-float tensors are copied from the base.

    Args:
        base_path: the base checkpoint folder.
        finetuned_paths: N checkpoint folders fine-tuned from it.
        out_path: the folder to write (atomically).
        method, density, lam, weights, seed, elect_weighted: as in `merge_adapters`.
        progress: show a tqdm bar over tensors.
        max_shard_size: the largest output shard.
        overwrite: replace an existing non-empty `out_path`.
    Returns:
        The folder written.
    """
    from tqdm.auto import tqdm

    from tilevl.checkpoint.files import tensor_keys

    base = Path(base_path)
    if not finetuned_paths:
        raise CheckpointError("merge_checkpoints needs at least one fine-tuned checkpoint")
    _, base_layout = read_config(base)
    base_keys = tensor_keys(weight_files(base))
    sources: list[tuple[Path, dict[str, Path]]] = []
    for path in map(Path, finetuned_paths):
        _, ft_layout = read_config(path)
        if ft_layout != base_layout:
            raise CheckpointError(f"{path}: {ft_layout} layout, the base {base} is {base_layout}; convert it first")
        keys = tensor_keys(weight_files(path))
        if set(keys) != set(base_keys):
            extra, lacking = sorted(set(keys) - set(base_keys)), sorted(set(base_keys) - set(keys))
            raise CheckpointError(f"{path}: keys differ from the base {base}: extra {extra[:3]}, lacking {lacking[:3]}")
        sources.append((path, keys))
    kw = _method_kwargs(method, weights, density, lam, seed, elect_weighted)
    bar = tqdm(total=len(base_keys), desc=f"merge {method}", unit="tensor", disable=not progress)
    with bar, ExitStack() as stack, AtomicFolder(out_path, overwrite=overwrite) as tmp:
        readers: dict[Path, object] = {}

        def reader(file: Path):
            if file not in readers:
                readers[file] = stack.enter_context(safe_open(file, framework="pt"))
            return readers[file]

        def merged_pairs():
            for key, tensor, _ in iter_tensors(weight_files(base)):
                bar.update(1)
                if not tensor.is_floating_point():
                    yield key, tensor
                    continue
                deltas = torch.empty((len(sources), *tensor.shape))  # [N, *shape], the merge's scratch
                for i, (path, keys) in enumerate(sources):
                    tuned = reader(keys[key]).get_tensor(key)
                    if tuned.shape != tensor.shape:
                        raise CheckpointError(
                            f"{path}: key {key!r} has shape {tuple(tuned.shape)}, the base {tuple(tensor.shape)}"
                        )
                    torch.sub(tuned.float(), tensor.float(), out=deltas[i])
                merged = merge_deltas(method, deltas, **kw)
                del deltas
                yield key, (tensor.float() + merged).to(tensor.dtype)

        write_shards(merged_pairs(), tmp, max_shard_size)
        shutil.copy2(base / "config.json", tmp / "config.json")
        _finish_folder(tmp, base, base_layout, base_layout, None)
    return Path(out_path)
