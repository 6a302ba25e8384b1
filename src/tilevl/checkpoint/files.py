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


def iter_tensors(files: Iterable[Path], cast_to: torch.dtype | None = None
                 ) -> Iterator[tuple[str, torch.Tensor, Path]]:
    """Yield (key, tensor, file) one tensor at a time, so only one is in memory at once.

    Tensors are views of the file's memory map (read lazily, shared with the page cache),
    except floating tensors stored in another dtype than `cast_to`: those are read into a
    private buffer that the cast frees, because a mapped tensor's pages stay in the process's
    RSS until the whole file is closed (a 1.5 GB fp32 file cast to bf16 peaked at 2.25 GB).
    """
    for file in files:
        if file.suffix in _PICKLE_SUFFIXES:
            state = torch.load(file, map_location="cpu", weights_only=True)
            for key, tensor in state.items():
                yield key, tensor, file
            continue
        try:
            with safe_open(file, framework="pt") as reader, open(file, "rb") as raw:
                header = _header(raw, file) if cast_to is not None else {}
                for key in reader.keys():
                    entry = header.get(key)
                    stored = _SAFETENSORS_DTYPES.get(entry["dtype"]) if entry else None
                    if stored is not None and stored.is_floating_point and stored != cast_to:
                        yield key, _read_private(raw, entry, stored, file), file
                    else:
                        yield key, reader.get_tensor(key), file
        except CheckpointError:
            raise
        except Exception as exc:  # safetensors raises its own error types for broken files
            raise CheckpointError(f"{file}: cannot read safetensors ({exc})") from None


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}


def _header(raw, file: Path) -> dict:
    """The JSON header of a safetensors file: {key: {dtype, shape, data_offsets}}, offsets absolute."""
    raw.seek(0)
    size = int.from_bytes(raw.read(8), "little")
    if size <= 0 or size > 100 * 2**20:
        raise CheckpointError(f"{file}: not a safetensors file (header size {size})")
    header = json.loads(raw.read(size))
    header.pop("__metadata__", None)
    for entry in header.values():
        entry["data_offsets"] = [8 + size + offset for offset in entry["data_offsets"]]
    return header


def _read_private(raw, entry: dict, dtype: torch.dtype, file: Path) -> torch.Tensor:
    """One tensor read with plain file reads into its own buffer (no memory map)."""
    start, end = entry["data_offsets"]
    buffer = bytearray(end - start)
    raw.seek(start)
    if raw.readinto(buffer) != len(buffer):
        raise CheckpointError(f"{file}: truncated (tensor data ends at byte {end})")
    if not buffer:
        return torch.empty(entry["shape"], dtype=dtype)
    return torch.frombuffer(buffer, dtype=torch.uint8).view(dtype).reshape(entry["shape"])


def tensor_keys(files: Iterable[Path]) -> dict[str, Path]:
    """Every key of the weight files, mapped to the file that holds it (reads headers only)."""
    keys: dict[str, Path] = {}
    for file in files:
        if file.suffix in _PICKLE_SUFFIXES:
            continue
        with safe_open(file, framework="pt") as reader:
            for key in reader.keys():
                keys[key] = file
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
