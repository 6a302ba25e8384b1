"""Model folders shipped inside the package (package data), found by name.

`tilevl-tiny` is the small InternVL-architecture model trained on MiniBench by
`scripts/train_tilevl_tiny.py`; its folder is an ordinary checkpoint (config.json,
model.safetensors in fp16, tokenizer and preprocessor files, scores.json).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# The names `asset_path` knows; each is a sub-folder of this package.
EMBEDDED_MODELS = ("tilevl-tiny",)
DEFAULT_MODEL = "tilevl-tiny"  # what `tilevl chat` opens when no model is named


def asset_path(name: str) -> Path | None:
    """The folder of the embedded model called `name`, or None when there is none.

    Names match case-insensitively (`"TileVL-Tiny"` works). A known name whose folder lacks
    its weights (a source checkout before the recipe ran) also gives None, so callers can
    fall back to their other rules.

    Args:
        name: an embedded model's name (see EMBEDDED_MODELS).
    Returns:
        A real filesystem path (the package is installed unzipped), or None.
    """
    if not isinstance(name, str):
        return None
    key = name.strip().lower()
    if key not in EMBEDDED_MODELS:
        return None
    folder = Path(str(resources.files(__name__).joinpath(key)))
    if not ((folder / "config.json").is_file() and (folder / "model.safetensors").is_file()):
        return None
    return folder


def resolve_folder(path: str | Path) -> Path:
    """`path` itself when it is a folder (or not an embedded model's name), else that model's folder."""
    folder = Path(path)
    if not folder.is_dir():
        embedded = asset_path(str(path))
        if embedded is not None:
            return embedded
    return folder
