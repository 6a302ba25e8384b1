"""LoRA adapters in PEFT's format: read, densify (B·A·scale), fold into a model or a checkpoint.

Merging N adapters (or N full fine-tunes) streams one module at a time: only that module's N
dense deltas are alive at once, and the base weights flow from the input shards to the output.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from tilevl.checkpoint import convert
from tilevl.checkpoint.files import INDEX_NAME, AtomicFolder, iter_tensors, weight_files, write_shards
from tilevl.checkpoint.loader import load_model, read_config, save_model
from tilevl.config import ModelConfig
from tilevl.errors import CheckpointError, ConfigError
from tilevl.merge.expert_lora import (
    expert_delta, is_param_wrapper, refuse_stacked, resolve_expert_wrappers, wrapped_module_suffixes,
)
from tilevl.merge.methods import low_rank_factors, merge_deltas, method_parameters
from tilevl.model.vlm import VisionLanguageModel

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MERGED_KEY = convert.MERGED_ADAPTERS_KEY  # config.json: fingerprints of the adapters already folded in
_PREFIX = "base_model.model."  # what PeftModel puts before our module names
# PEFT's key suffixes → (module kind, which factor).
_SUFFIXES = {
    ".lora_A.weight": ("linear", "A"), ".lora_B.weight": ("linear", "B"),
    ".lora_embedding_A": ("embedding", "A"), ".lora_embedding_B": ("embedding", "B"),
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class LoraModule:
    """One adapted module: where its factors live, its rank and its scale.

    Shapes: linear A [r, in], B [out, r]; embedding A [r, num], B [dim, r] (PEFT's); experts
    (LoRA on a stacked MoE parameter [E, d1, d2]) A [r·E, q], B [p, r·E], `name` the parameter.
    """

    name: str
    # "linear", "embedding", "experts"; "wrapper": an experts LoRA whose parameter is not yet
    # known (PEFT names it by nesting depth; `adapter_for_base` resolves it against the base).
    kind: str
    a_key: str
    b_key: str
    rank: int
    scale: float  # lora_alpha / r, or lora_alpha / sqrt(r) with rslora
    fan_in_fan_out: bool  # the weight is stored [in, out] (Conv1D; GPT-OSS experts [E, in, out])
    delta_shape: tuple[int, ...]  # the shape of the base weight it adds to
    # Rows of the stored B this module uses (None: all): an InternLM2 `wqkv` adapter becomes
    # q/k/v modules sharing A, each with its rows of B (see `adapter_for_base`).
    b_rows: tuple[int, ...] | None = None


@dataclass
class Adapter:
    """A PEFT LoRA adapter folder: its config, its modules, and a content fingerprint.

    Tensors are read lazily from the safetensors file (`lora_pair`), so holding many
    adapters costs only their headers.
    """

    path: Path
    config: dict
    modules: dict[str, LoraModule]
    fingerprint: str

    def lora_pair(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) of module `name`, as stored."""
        module = self.modules[name]
        with safe_open(self.path / ADAPTER_WEIGHTS, framework="pt") as reader:
            a, b = reader.get_tensor(module.a_key), reader.get_tensor(module.b_key)
        if module.b_rows is not None:
            b = b[list(module.b_rows)]
        return a, b


def _pattern_value(pattern: dict, name: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches the end of the module name."""
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def _fingerprint(folder: Path) -> str:
    """sha256 of the adapter's config and weights bytes (first 16 hex digits)."""
    digest = hashlib.sha256()
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        with open(folder / name, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:16]


def read_adapter(path: str | Path) -> Adapter:
    """Read a PEFT LoRA adapter folder (`adapter_config.json` + `adapter_model.safetensors`).

    Args:
        path: the folder `PeftModel.save_pretrained` wrote for a `VisionLanguageModel`.
    Returns:
        The adapter, its module names in our (= the official) parameter naming.
    Raises:
        CheckpointError: missing files, a pickle (`.bin`) adapter, a non-LoRA or DoRA adapter,
            unknown keys, or factors whose ranks disagree with each other or the config.
    """
    folder = Path(path)
    config_file = folder / ADAPTER_CONFIG
    if not config_file.exists():
        raise CheckpointError(f"{folder}: no {ADAPTER_CONFIG} (is this a PEFT adapter folder?)")
    if not (folder / ADAPTER_WEIGHTS).exists():
        if (folder / "adapter_model.bin").exists():
            raise CheckpointError(
                f"{folder}: holds adapter_model.bin, a pickle; tilevl reads safetensors only. Re-save "
                "it with PeftModel.save_pretrained(dir, safe_serialization=True)"
            )
        raise CheckpointError(f"{folder}: no {ADAPTER_WEIGHTS}")
    try:
        config = json.loads(config_file.read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_file}: line {exc.lineno}: invalid JSON ({exc.msg})") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{config_file}: peft_type {config.get('peft_type')!r}; only LORA adapters fold")
    if config.get("use_dora"):
        raise CheckpointError(f"{config_file}: a DoRA adapter (use_dora); its magnitude vector does not fold as B·A")
    factors: dict[str, dict[str, tuple[str, tuple[int, ...]]]] = {}
    kinds: dict[str, str] = {}
    with safe_open(folder / ADAPTER_WEIGHTS, framework="pt") as reader:
        for key in reader.keys():
            hit = next(((s, kf) for s, kf in _SUFFIXES.items() if key.endswith(s)), None)
            if hit is None or not key.startswith(_PREFIX):
                raise CheckpointError(
                    f"{folder / ADAPTER_WEIGHTS}: key {key!r} is not a LoRA factor (lora_bias, "
                    "modules_to_save and trainable tokens are not supported)"
                )
            suffix, (kind, which) = hit
            name = key[len(_PREFIX):-len(suffix)]
            factors.setdefault(name, {})[which] = (key, tuple(reader.get_slice(key).get_shape()))
            kinds[name] = kind
    modules: dict[str, LoraModule] = {}
    fan = bool(config.get("fan_in_fan_out", False))
    wrapped = wrapped_module_suffixes(config)
    for name, pair in factors.items():
        if set(pair) != {"A", "B"}:
            raise CheckpointError(f"{folder}: module {name!r} has lora_{''.join(pair)} but not both A and B")
        (a_key, a_shape), (b_key, b_shape) = pair["A"], pair["B"]
        rank = a_shape[0]
        if b_shape[1] != rank:
            raise CheckpointError(f"{folder}: module {name!r}: lora_A has rank {rank}, lora_B has {b_shape[1]}")
        expected = int(_pattern_value(config.get("rank_pattern"), name, config.get("r", rank)))
        if is_param_wrapper(name, wrapped) and expected > 0 and rank % expected == 0:
            # Stacked experts: rank r per expert, A [r·E, q]; E and the parameter come from the base.
            alpha = float(_pattern_value(config.get("alpha_pattern"), name, config.get("lora_alpha", expected)))
            scale = alpha / expected**0.5 if config.get("use_rslora") else alpha / expected
            shape = (rank // expected, b_shape[0], a_shape[1])  # [E, p, q], provisional
            modules[name] = LoraModule(name, "wrapper", a_key, b_key, expected, scale, False, shape)
            continue
        if expected != rank:
            raise CheckpointError(
                f"{folder}: module {name!r}: factors have rank {rank}, adapter_config.json says {expected}; "
                "the scale lora_alpha/r would be wrong"
            )
        alpha = float(_pattern_value(config.get("alpha_pattern"), name, config.get("lora_alpha", rank)))
        scale = alpha / rank**0.5 if config.get("use_rslora") else alpha / rank
        kind = kinds[name]
        # The base weight's shape: Linear [out, in] (Conv1D [in, out]); Embedding [num, dim].
        if kind == "embedding":
            shape = (a_shape[1], b_shape[0])
        else:
            shape = (a_shape[1], b_shape[0]) if fan else (b_shape[0], a_shape[1])
        modules[name] = LoraModule(name, kind, a_key, b_key, rank, scale, fan and kind == "linear", shape)
    if not modules:
        raise CheckpointError(f"{folder}: the adapter holds no LoRA factors")
    return Adapter(folder, config, modules, _fingerprint(folder))


def module_delta(adapter: Adapter, name: str) -> torch.Tensor:
    """The dense delta B·A·scale of one module, float32, in the base weight's layout.

    Args:
        adapter: from `read_adapter`.
        name: a module name of `adapter.modules`.
    Returns:
        [out, in] for a Linear ([in, out] with fan_in_fan_out), [num, dim] for an Embedding.
    """
    module = adapter.modules[name]
    a, b = adapter.lora_pair(name)
    if module.kind == "wrapper":
        raise CheckpointError(f"{adapter.path}: module {name!r} is LoRA on a stacked parameter; resolve it "
                              "against the base first (adapter_for_base)")
    if module.kind == "experts":
        return expert_delta(a, b, module.delta_shape[0], module.scale, module.fan_in_fan_out)
    delta = (b.float() @ a.float()) * module.scale  # [out, in] / [dim, num]
    if module.kind == "embedding" or module.fan_in_fan_out:
        delta = delta.T  # PEFT transposes embedding and Conv1D deltas the same way
    return delta.contiguous()


def adapter_deltas(adapter: Adapter) -> dict[str, torch.Tensor]:
    """Every module's dense delta (all in memory: for one adapter or a small model).

    Args:
        adapter: from `read_adapter`.
    Returns:
        {module name: delta}, shapes as in `module_delta`.
    """
    return {name: module_delta(adapter, name) for name in adapter.modules}


_INTERNLM2_MODULE = re.compile(
    r"^language_model\.(model\.layers\.\d+\.(attention\.(wqkv|wo)|feed_forward\.w[123])"
    r"|model\.tok_embeddings|output)$")


def adapter_for_base(adapter: Adapter, config: ModelConfig) -> Adapter:
    """An adapter trained on an InternLM2 base with upstream's module names (`attention.wqkv`,
    `feed_forward.w1` …, as InternVL's own LoRA and MMAlaya2's adapters have them), renamed to
    the Llama modules tilevl builds InternLM2 as; any other adapter is returned unchanged.

    LoRA on the packed `wqkv` is exact as three LoRAs: A is shared and B's rows split as the
    weight's rows do (per key-value group: the query heads, one key head, one value head).
    """
    from tilevl.checkpoint.internlm2 import convert_internlm2_key, is_internlm2

    adapter = resolve_expert_wrappers(adapter, config)
    if not is_internlm2(config.llm) or not any(_INTERNLM2_MODULE.match(n) for n in adapter.modules):
        return adapter
    modules: dict[str, LoraModule] = {}
    for name, module in adapter.modules.items():
        if not _INTERNLM2_MODULE.match(name):
            modules[name] = module
            continue
        if module.fan_in_fan_out or module.b_rows is not None:
            raise CheckpointError(f"{adapter.path}: module {name!r}: fan_in_fan_out LoRA on "
                                  "InternLM2 module names is not supported")
        out_dim = module.delta_shape[0] if module.kind == "linear" else module.delta_shape[1]
        rows = torch.arange(out_dim).unsqueeze(1)  # follow each row of B through the split
        try:
            parts = convert_internlm2_key(name + ".weight", rows, config.llm, prefix="language_model.")
        except CheckpointError as exc:
            raise CheckpointError(f"{adapter.path}: module {name!r}: {exc}") from None
        for new_name, index in parts:
            index = index.reshape(-1)
            shape = ((len(index), module.delta_shape[1]) if module.kind == "linear"
                     else (module.delta_shape[0], len(index)))
            whole = len(parts) == 1
            modules[new_name[:-len(".weight")]] = LoraModule(
                new_name[:-len(".weight")], module.kind, module.a_key, module.b_key, module.rank,
                module.scale, False, shape, None if whole else tuple(index.tolist()))
    return Adapter(adapter.path, adapter.config, modules, adapter.fingerprint)


def weight_name(module: LoraModule) -> str:
    """The parameter the module's delta adds to (a stacked-experts module is named by it)."""
    return module.name if module.kind == "experts" else module.name + ".weight"


def _check_fits(model: nn.Module, adapter: Adapter) -> None:
    """Refuse an adapter whose modules the model lacks, does not fit, or ties to another."""
    owners: dict[int, list[str]] = {}
    for pname, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(pname)
    for name, module in adapter.modules.items():
        try:
            weight = model.get_parameter(weight_name(module))
        except AttributeError:
            raise CheckpointError(
                f"{adapter.path}: module {name!r} is not in the base model (was the adapter trained on another base?)"
            ) from None
        if tuple(weight.shape) != module.delta_shape:
            raise CheckpointError(
                f"{adapter.path}: module {name!r}: the LoRA delta has shape {module.delta_shape}, the base "
                f"weight {tuple(weight.shape)} (was the adapter trained on another base?)"
            )
        tied = [n for n in owners.get(id(weight), []) if n != weight_name(module)]
        if tied:
            raise CheckpointError(
                f"{adapter.path}: module {name!r}: its weight is tied to {tied}; folding would change both "
                "while the adapter changed only one"
            )


def _merged_list(config: ModelConfig) -> list[str]:
    return list(config.extra.get(MERGED_KEY) or [])


def fold_adapter(model: nn.Module, adapter: Adapter | str | Path) -> nn.Module:
    """Add the adapter's B·A·scale to the model's weights, in place; refuse to do it twice.

    The fingerprint is recorded in `model.config.extra["merged_adapters"]` (saved in
    config.json), so folding the same adapter into a saved merged model is refused too.

    Args:
        model: a `VisionLanguageModel` (not a PeftModel).
        adapter: an `Adapter` or its folder.
    Returns:
        The same model.
    """
    adapter = adapter if isinstance(adapter, Adapter) else read_adapter(adapter)
    adapter = adapter_for_base(adapter, model.config)
    done = _merged_list(model.config)
    if adapter.fingerprint in done:
        raise CheckpointError(
            f"{adapter.path}: adapter {adapter.fingerprint} is already folded into this model "
            f"(config.json {MERGED_KEY}: {done}); folding it again would add its delta twice"
        )
    _check_fits(model, adapter)  # before touching any weight: an error leaves the model as it was
    with torch.no_grad():
        for name, module in adapter.modules.items():
            weight = model.get_parameter(weight_name(module))
            weight.add_(module_delta(adapter, name).to(weight.device, weight.dtype))
    model.config.extra[MERGED_KEY] = [*done, adapter.fingerprint]
    return model


# ---- checkpoint folders ------------------------------------------------------------------------
def _raw_merged(folder: Path) -> list[str]:
    """The merged-adapter record of a checkpoint's config.json (either layout)."""
    raw = json.loads((folder / "config.json").read_text("utf-8"))
    return list(raw.get(MERGED_KEY) or [])


def _finish_folder(tmp: Path, base: Path, base_layout: str, layout: str, merged: list[str] | None) -> None:
    """Copy the base's tokenizer and side files; write the merged record into config.json."""
    for file in sorted(base.iterdir()):
        skip = file.name in ("config.json", INDEX_NAME) or file.suffix in _WEIGHT_SUFFIXES
        # Remote code and the image processor file belong to the base's layout only.
        skip |= base_layout != layout and (file.suffix == ".py" or file.name == "preprocessor_config.json")
        if file.is_file() and not skip and not (tmp / file.name).exists():
            shutil.copy2(file, tmp / file.name)
    if merged is not None:
        cfg_file = tmp / "config.json"
        cfg = json.loads(cfg_file.read_text("utf-8"))
        cfg[MERGED_KEY] = merged
        cfg_file.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", "utf-8")


def merge_lora_into_checkpoint(
    base_path: str | Path, adapter_path: str | Path, out_path: str | Path, layout: str = "official",
    *, overwrite: bool = False,
) -> Path:
    """Load a base checkpoint, fold one adapter into it, save the result (`tilevl merge-lora`).

    Args:
        base_path: the base checkpoint folder (official or native layout).
        adapter_path: the PEFT adapter folder.
        out_path: the folder to write (atomically).
        layout: "official" or "native" for the output.
        overwrite: replace an existing non-empty `out_path`.
    Returns:
        The folder written.
    """
    base, adapter = Path(base_path), read_adapter(adapter_path)
    _, base_layout = read_config(base)
    model = load_model(base)
    # The record as the file holds it, whichever layout the base is in.
    model.config.extra[MERGED_KEY] = _raw_merged(base)
    fold_adapter(model, adapter)
    with AtomicFolder(out_path, overwrite=overwrite) as tmp:
        save_model(model, tmp, layout=layout, overwrite=True)
        _finish_folder(tmp, base, base_layout, layout, _merged_list(model.config))
    return Path(out_path)


def _base_pairs(folder: Path, config: ModelConfig, layout: str) -> Iterator[tuple[str, torch.Tensor]]:
    """The base checkpoint's tensors in our parameter names, one at a time."""
    pairs = ((key, tensor) for key, tensor, _ in iter_tensors(weight_files(folder)))
    ours = convert.official_to_ours(pairs, config) if layout == convert.OFFICIAL else convert.native_to_ours(pairs, str(folder), config)
    tied = bool(config.llm.get("tie_word_embeddings", False))
    for key, tensor in ours:
        if not (tied and key == "language_model.lm_head.weight"):  # written once, as save_model does
            yield key, tensor


def _write_ours(tmp: Path, pairs, config: ModelConfig, layout: str, max_shard_size) -> None:
    """save_model's writing half, for a stream of (our name, tensor) instead of a model."""
    if layout == convert.OFFICIAL:
        write_shards(convert.ours_to_official(pairs, config), tmp, max_shard_size)
        config_dict = config.to_dict()
    elif layout == convert.NATIVE:
        write_shards(convert.ours_to_native(pairs), tmp, max_shard_size)
        config_dict = convert.ours_config_to_native(config)
        pre = convert.native_preprocessor_config(config)
        (tmp / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n", "utf-8")
    else:
        raise CheckpointError(f"layout must be 'official' or 'native', got {layout!r}")
    (tmp / "config.json").write_text(json.dumps(config_dict, indent=2, ensure_ascii=False) + "\n", "utf-8")


def _check_adapters_agree(adapters: Sequence[Adapter]) -> list[str]:
    """Refuse adapters with different target modules or module kinds; return the target names."""
    first = adapters[0]
    for adapter in adapters[1:]:
        extra = sorted(set(adapter.modules) - set(first.modules))
        lacking = sorted(set(first.modules) - set(adapter.modules))
        if extra or lacking:
            raise CheckpointError(
                f"{adapter.path}: targets other modules than {first.path}: extra {extra[:3]}, "
                f"lacking {lacking[:3]} ({len(extra)} extra, {len(lacking)} lacking)"
            )
        for name, module in adapter.modules.items():
            ref = first.modules[name]
            if (module.kind, module.delta_shape, module.fan_in_fan_out) != (ref.kind, ref.delta_shape, ref.fan_in_fan_out):
                raise CheckpointError(
                    f"{adapter.path}: module {name!r} is a {module.kind} delta {module.delta_shape}, in "
                    f"{first.path} a {ref.kind} delta {ref.delta_shape} (adapters of different bases?)"
                )
    return list(first.modules)


def _folded_already(base: Path, adapters: Sequence[Adapter], record: Sequence[str] | None = None) -> list[str]:
    """The base's merged-adapter record; refuses when an adapter (or `record`) is in it."""
    done = _raw_merged(base)
    again = [str(a.path) for a in adapters if a.fingerprint in done]
    again += [f for f in record or () if f in done]
    if again:
        raise CheckpointError(f"{base}: adapter(s) {again} are already folded into it ({MERGED_KEY} in config.json)")
    return done


def _method_kwargs(method: str, weights, density: float, lam: float, seed: int,
                   elect_weighted: bool = False) -> dict:
    """The merge settings the method takes (density means nothing to `linear`, say)."""
    offered = {"weights": weights, "density": density, "lam": lam,
               "generator": torch.Generator().manual_seed(seed), "elect_weighted": elect_weighted}
    accepted = method_parameters(method)
    return {k: v for k, v in offered.items() if k in accepted}


def _merged_modules(adapters: Sequence[Adapter], names: Sequence[str], method: str, kw: dict, bar) -> Iterator[tuple[str, torch.Tensor]]:
    """(module name, merged delta) per module; only that module's N deltas are alive at once."""
    for name in names:
        deltas = None
        for i, adapter in enumerate(adapters):
            delta = module_delta(adapter, name)
            if deltas is None:
                deltas = delta.new_empty((len(adapters), *delta.shape))  # [N, out, in], the merge's scratch
            deltas[i] = delta
            del delta
        merged = merge_deltas(method, deltas, **kw)
        del deltas  # dropped before the yield, so the next module never sees them alive
        bar.update(1)
        yield name, merged


def merge_adapters(
    base_path: str | Path,
    adapter_paths: Sequence[str | Path],
    out_path: str | Path,
    method: str = "ties",
    density: float = 0.2,
    lam: float = 1.0,
    weights: Sequence[float] | None = None,
    as_lora_rank: int | None = None,
    progress: bool = True,
    *,
    layout: str = "official",
    seed: int = 0,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    mode: str = "dense",
    elect_weighted: bool = False,
    record: Sequence[str] | None = None,
) -> Path:
    """Merge N LoRA adapters of one base into a checkpoint (or one LoRA), module by module.

    Each adapter is densified to B·A·scale per module, the N deltas merged with `method`
    (see `tilevl.merge.methods`), and the result added to the base weight as it streams
    from the base's shards to the output's. MMAlaya2 is this with 20 adapters and "ties".

    Args:
        base_path: the base checkpoint folder the adapters were trained on.
        adapter_paths: N PEFT adapter folders targeting the same modules.
        out_path: the folder to write (atomically).
        method: "ties", "dare_ties", "dare_linear", "task_arithmetic", "magnitude_prune", "linear".
        density, lam, weights: the method's settings (ignored by methods that lack them).
        as_lora_rank: write a PEFT adapter of this rank (truncated SVD of each merged delta)
            instead of a full checkpoint; the base weights are then never read.
        progress: show a tqdm bar over modules.
        layout: "official" or "native" for a full checkpoint.
        seed: seeds DARE's drop masks (drawn module by module, in adapter-0 order).
        max_shard_size: the largest output shard.
        overwrite: replace an existing non-empty `out_path`.
        mode: "dense" (the above: the method on the task vectors B·A·scale) or "peft-lora"
            (PEFT's `add_weighted_adapter`, A and B merged apart; `method` is then its
            combination_type, see `tilevl.merge.peft_lora`).
        elect_weighted: dense TIES/DARE-TIES sign vote on the weighted deltas (mergekit);
            False, the default, votes on the unweighted ones as PEFT does.
        record: fingerprints to record as folded instead of the adapters' own (the sources
            of an adapter merged beforehand).
    Returns:
        The folder written.
    """
    from tqdm.auto import tqdm

    base = Path(base_path)
    if not adapter_paths:
        raise CheckpointError("merge_adapters needs at least one adapter folder")
    if mode not in ("dense", "peft-lora"):
        raise ConfigError(f"merge mode must be 'dense' or 'peft-lora', got {mode!r}")
    if mode == "peft-lora":
        from tilevl.merge.peft_lora import merge_adapters_peft

        sources = [read_adapter(p) for p in adapter_paths]
        for adapter in sources:
            refuse_stacked(adapter_for_base(adapter, read_config(base)[0]), "merge --mode peft-lora")
        _folded_already(base, sources)
        return merge_adapters_peft(base, adapter_paths, out_path, method, density, weights,
                                   as_lora_rank, progress, layout=layout, seed=seed,
                                   max_shard_size=max_shard_size, overwrite=overwrite)
    config, base_layout = read_config(base)
    adapters = [adapter_for_base(read_adapter(p), config) for p in adapter_paths]
    names = _check_adapters_agree(adapters)
    if as_lora_rank is not None:
        refuse_stacked(adapters[0], "merge --as-lora (a truncated SVD per 2-D weight)")
    with torch.device("meta"):  # shapes and ties only; allocates nothing
        skeleton = VisionLanguageModel(config)
    for adapter in adapters:
        _check_fits(skeleton, adapter)
    done = _folded_already(base, adapters, record)
    kw = _method_kwargs(method, weights, density, lam, seed, elect_weighted)
    with tqdm(total=len(names), desc=f"merge {method}", unit="module", disable=not progress) as bar, \
            AtomicFolder(out_path, overwrite=overwrite) as tmp:
        merged_iter = _merged_modules(adapters, names, method, kw, bar)
        if as_lora_rank is not None:
            _write_lora(tmp, merged_iter, adapters[0], int(as_lora_rank), base)
        else:
            targets = {weight_name(adapters[0].modules[name]): name for name in names}
            pairs = _add_merged(_base_pairs(base, config, base_layout), merged_iter, targets, base)
            _write_ours(tmp, pairs, config, layout, max_shard_size)
            folded = list(record) if record is not None else [a.fingerprint for a in adapters]
            _finish_folder(tmp, base, base_layout, layout, [*done, *folded])
    return Path(out_path)


def _add_merged(base_pairs, merged_iter, targets: dict[str, str], base: Path):
    """Add each merged delta to its base weight as the base streams past.

    `targets` maps a base weight's name to its module's (they differ by ".weight", except for
    stacked experts, whose module is named by the parameter).
    The merged deltas are computed lazily, one module when its base weight arrives; a
    checkpoint stored in another module order than the adapter costs a short look-ahead.
    """
    waiting: dict[str, torch.Tensor] = {}
    for key, tensor in base_pairs:
        if key in targets:
            while targets[key] not in waiting:
                name, merged = next(merged_iter)
                waiting[name] = merged
            merged = waiting.pop(targets[key])
            yield key, (tensor.float() + merged).to(tensor.dtype)
            del merged
        else:
            yield key, tensor
    unseen = [*waiting, *(name for name, _ in merged_iter)]
    if unseen:
        raise CheckpointError(f"{base}: the checkpoint lacks weights for adapted modules {sorted(unseen)[:3]}")


def _write_lora(tmp: Path, merged_iter, template: Adapter, rank: int, base: Path) -> None:
    """Write the merged deltas as a rank-`rank` PEFT adapter (lora_alpha = r: scale 1)."""
    from tilevl.optional import require

    peft = require("peft", extra="train", purpose="to write a LoRA adapter")
    tensors: dict[str, torch.Tensor] = {}
    dtype = template.lora_pair(next(iter(template.modules)))[0].dtype
    for name, merged in merged_iter:
        module = template.modules[name]
        a, b = low_rank_factors(merged, rank, module.kind, module.fan_in_fan_out)
        a_key, b_key = (".lora_embedding_A", ".lora_embedding_B") if module.kind == "embedding" else (".lora_A.weight", ".lora_B.weight")
        tensors[_PREFIX + name + a_key] = a.to(dtype)
        tensors[_PREFIX + name + b_key] = b.to(dtype)
    save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    fan = any(m.fan_in_fan_out for m in template.modules.values())
    lora_config = peft.LoraConfig(
        r=rank, lora_alpha=rank, target_modules=list(template.modules), fan_in_fan_out=fan,
        base_model_name_or_path=str(base), inference_mode=True,
    )
    lora_config.save_pretrained(str(tmp))
