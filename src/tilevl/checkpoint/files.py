"""Safetensors files of a checkpoint folder: find, read lazily, write sharded and atomically.

Weights are read from safetensors only; a pickle checkpoint (`.bin`, `.pt`) is refused
unless the caller opts in, and even then it is read with `weights_only=True`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tilevl.errors import CheckpointError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def weight_files(folder: Path, allow_pickle: bool = False) -> list[Path]:
    """The weight files of `folder`, in index order.

    Raises CheckpointError when there are none, when the index names a missing shard, or
    when only pickle files exist and `allow_pickle` is False.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a checkpoint folder (no such directory)")
    index = folder / INDEX_NAME
    if index.exists():
        try:
            weight_map = json.loads(index.read_text("utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"{index}: not a safetensors index ({exc})") from None
        shards = list(dict.fromkeys(weight_map.values()))
        missing = [s for s in shards if not (folder / s).exists()]
        if missing:
            raise CheckpointError(f"{index}: names shard(s) that do not exist: {missing}")
        return [folder / s for s in shards]
    if (folder / SINGLE_NAME).exists():
        return [folder / SINGLE_NAME]
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles and allow_pickle:
        return pickles
    if pickles:
        raise CheckpointError(
            f"{folder}: holds only pickle weights ({', '.join(p.name for p in pickles)}); "
            "tilevl reads safetensors. Convert them, or pass allow_pickle=True to read them "
            "with torch.load(weights_only=True)"
        )
    raise CheckpointError(f"{folder}: no weights found ({SINGLE_NAME}, {INDEX_NAME} or *.safetensors)")


def iter_tensors(files: Iterable[Path]) -> Iterator[tuple[str, torch.Tensor, Path]]:
    """Yield (key, tensor, file) one tensor at a time, so only one is in memory at once."""
    for file in files:
        if file.suffix in _PICKLE_SUFFIXES:
            state = torch.load(file, map_location="cpu", weights_only=True)
            for key, tensor in state.items():
                yield key, tensor, file
            continue
        try:
            with safe_open(file, framework="pt") as reader:
                for key in reader.keys():
                    yield key, reader.get_tensor(key), file
        except CheckpointError:
            raise
        except Exception as exc:  # safetensors raises its own error types for broken files
            raise CheckpointError(f"{file}: cannot read safetensors ({exc})") from None


def tensor_keys(files: Iterable[Path]) -> dict[str, Path]:
    """Every key of the weight files, mapped to the file that holds it (reads headers only)."""
    keys: dict[str, Path] = {}
    for file in files:
        if file.suffix in _PICKLE_SUFFIXES:
            continue
        try:
            with safe_open(file, framework="pt") as reader:
                for key in reader.keys():
                    keys[key] = file
        except Exception as exc:  # safetensors raises its own error types for broken files
            raise CheckpointError(f"{file}: cannot read safetensors ({exc})") from None
    return keys


def parse_size(size: int | str) -> int:
    """'5GB', '500MB', '10KiB' or a byte count → bytes."""
    if isinstance(size, int):
        return size
    text = size.strip().upper().replace("IB", "B")
    for unit, factor in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10), ("B", 1)):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def write_shards(
    tensors: Iterable[tuple[str, torch.Tensor]],
    folder: Path,
    max_shard_size: int | str = "5GB",
) -> list[str]:
    """Write tensors into safetensors shards of at most `max_shard_size` bytes each.

    One shard is written as `model.safetensors`; several as `model-0000k-of-0000n` with a
    `model.safetensors.index.json`. Tensors are buffered only up to one shard.
    Returns:
        The file names written.
    """
    limit = parse_size(max_shard_size)
    current: dict[str, torch.Tensor] = {}
    pointers: set[int] = set()
    current_size = 0
    tmp_names: list[str] = []
    weight_map: dict[str, int] = {}
    total = 0

    def flush() -> None:
        nonlocal current, current_size, pointers
        if not current:
            return
        name = f"shard-{len(tmp_names):05d}.tmp"
        save_file(current, str(folder / name), metadata={"format": "pt"})
        tmp_names.append(name)
        current, current_size, pointers = {}, 0, set()

    for key, tensor in tensors:
        size = tensor.numel() * tensor.element_size()
        if current and current_size + size > limit:
            flush()
        # safetensors refuses shared or non-contiguous storage: give each tensor its own.
        tensor = tensor.detach().contiguous()
        if tensor.data_ptr() in pointers:
            tensor = tensor.clone()
        pointers.add(tensor.data_ptr())
        current[key] = tensor
        current_size += size
        total += size
        weight_map[key] = len(tmp_names)
    flush()
    n = len(tmp_names)
    if n == 1:
        os.replace(folder / tmp_names[0], folder / SINGLE_NAME)
        return [SINGLE_NAME]
    names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    for tmp, name in zip(tmp_names, names):
        os.replace(folder / tmp, folder / name)
    index = {"metadata": {"total_size": total}, "weight_map": {k: names[i] for k, i in weight_map.items()}}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", "utf-8")
    return [*names, INDEX_NAME]


class AtomicFolder:
    """Build a folder under a temporary name and rename it into place only on success.

    A crash leaves `<name>.tmp-*` behind, never a half checkpoint under the real name.
    """

    def __init__(self, target: str | Path, overwrite: bool = False) -> None:
        self.target = Path(target)
        self.overwrite = overwrite
        self._stack = ExitStack()
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        if self.target.exists() and not self.overwrite:
            if not self.target.is_dir() or any(self.target.iterdir()):
                raise CheckpointError(f"{self.target}: exists and is not empty (pass overwrite=True)")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=self.target.name + ".tmp-", dir=self.target.parent))
        # mkdtemp makes the folder 0700; the checkpoint should get the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if self.target.exists():
            old = self.target.with_name(self.target.name + ".old-" + self.tmp.name.rsplit("-", 1)[-1])
            os.replace(self.target, old)
        os.replace(self.tmp, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
