"""Safetensors files of a checkpoint folder: find, read lazily, write sharded and atomically.

Weights are read from safetensors only; a pickle checkpoint (`.bin`, `.pt`) is refused
unless the caller opts in, and even then it is read with `weights_only=True`.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import shutil
import sys
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


def iter_tensors(files: Iterable[Path], cast_to: torch.dtype | None = None
                 ) -> Iterator[tuple[str, torch.Tensor, Path]]:
    """Yield (key, tensor, file) one tensor at a time, so only one is in memory at once.

    Tensors are views of the file's memory map, read lazily and shared with the page cache.
    A mapped page stays in the process's RSS until the file is closed, so when the caller
    casts to `cast_to`, the pages of each floating tensor stored in another dtype are handed
    back once the caller has moved on to the next one (a 1.5 GB fp32 file loaded as bf16
    otherwise peaks at 2.25 GB); reading such a page again just maps it again from the file.
    """
    for file in files:
        if file.suffix in _PICKLE_SUFFIXES:
            state = torch.load(file, map_location="cpu", weights_only=True)
            for key, tensor in state.items():
                yield key, tensor, file
            continue
        try:
            with safe_open(file, framework="pt") as reader:
                mapped = None
                for key in reader.keys():
                    tensor = reader.get_tensor(key)
                    cast = cast_to is not None and tensor.is_floating_point() and tensor.dtype != cast_to
                    if cast:
                        mapped = _mapped_ranges(file) if mapped is None else mapped
                        _advise(tensor, mapped, _MADV_POPULATE_READ)
                    yield key, tensor, file
                    if cast:
                        _advise(tensor, mapped, _MADV_DONTNEED)
        except CheckpointError:
            raise
        except Exception as exc:  # safetensors raises its own error types for broken files
            raise CheckpointError(f"{file}: cannot read safetensors ({exc})") from None


def _mapped_ranges(file: Path) -> list[tuple[int, int]]:
    """Address ranges where this process maps `file` (Linux /proc/self/maps; else none)."""
    target = str(Path(file).resolve())
    ranges = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].rstrip("\n") == target:
                    lo, hi = fields[0].split("-")
                    ranges.append((int(lo, 16), int(hi, 16)))
    except OSError:
        return []
    return ranges


def _advise(tensor: torch.Tensor, mapped: list[tuple[int, int]], advice: int) -> None:
    """madvise the whole pages under a never-written tensor of the file map.

    MADV_POPULATE_READ maps them in one call (cheaper than a page fault per 64 KiB when the
    cast reads them). MADV_DONTNEED on a file mapping discards only this process's page
    table entries: the data stays in the file and the page cache, and a later read maps it
    in again, so the tensor's values never change. Memory outside the file's mapping (a
    copy) is never touched: there DONTNEED would zero it. Errors (an older kernel without
    POPULATE_READ) and platforms without madvise leave things as they are.
    """
    libc = _libc()
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    if libc is None or end == start or not any(lo <= start and end <= hi for lo, hi in mapped):
        return
    page = os.sysconf("SC_PAGE_SIZE")
    first, last = -(-start // page) * page, end // page * page  # whole pages inside the tensor
    if last > first:
        libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), advice)


_MADV_DONTNEED, _MADV_POPULATE_READ = 4, 22


@functools.lru_cache(maxsize=1)
def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        return libc
    except (OSError, AttributeError):
        return None


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
