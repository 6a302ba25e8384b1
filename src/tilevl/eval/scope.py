"""What a run covers: which questions (`--categories`) and how many tiles per image
(`--max-tiles`, else the model's own budget, else the benchmark's).
"""

from __future__ import annotations

from tilevl.errors import ConfigError
from tilevl.eval.benchmarks import BenchSpec, Sample


def tile_budget(cfg, spec: BenchSpec, model) -> dict:
    """The tiles per image a run uses and where that number comes from.

    Precedence: `--max-tiles` > the model's own budget (config.json `eval_max_dynamic_patch`,
    saved with the weights) > the benchmark's default.

    Args:
        cfg: the run settings (`max_tiles` is the flag).
        spec: the benchmark.
        model: the model (its `config.eval_max_dynamic_patch` is read).

    Returns:
        `{"max_tiles": n, "source": "flag" | "model" | "benchmark", "detail": "…"}`.
    """
    own = getattr(getattr(model, "config", None), "eval_max_dynamic_patch", None)
    if cfg.max_tiles is not None:
        return {"max_tiles": cfg.max_tiles, "source": "flag", "detail": "--max-tiles"}
    if own is not None:
        return {"max_tiles": int(own), "source": "model",
                "detail": "the model's config.json eval_max_dynamic_patch"}
    return {"max_tiles": spec.max_tiles, "source": "benchmark",
            "detail": f"the {spec.name} benchmark's default"}


def filter_categories(spec: BenchSpec, samples: list[Sample], names: list[str]) -> list[Sample]:
    """The questions whose `category` (or `l2_category`) is one of `names`, in file order.

    Raises:
        ConfigError: for a name no question carries (naming the categories the file has), or
            for MiniBench, a name that is neither a category nor an L2 group of its table.
    """
    if spec.name == "minibench":
        from tilevl.minibench.categories import resolve_categories

        try:
            resolve_categories(names)
        except KeyError as exc:
            raise ConfigError(f"--categories: {exc.args[0]}") from None
    wanted = set(names)
    found = {str(s.record.get(f)) for s in samples for f in ("category", "l2_category")
             if s.record.get(f) is not None}
    missing = sorted(wanted - found)
    if missing:
        present = sorted({str(s.record["category"]) for s in samples if s.record.get("category")})
        raise ConfigError(f"--categories: no question of {missing} in this {spec.name} file; "
                          f"it has {present}")
    return [s for s in samples if str(s.record.get("category")) in wanted
            or str(s.record.get("l2_category")) in wanted]
