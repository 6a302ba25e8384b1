"""The one place that imports optional dependencies.

Call `require("av", extra="video")` inside the function that needs the package; a missing
package raises MissingDependencyError naming the extra (`pip install tilevl[video]`).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from tilevl.errors import MissingDependencyError


def require(module: str, extra: str, purpose: str | None = None) -> ModuleType:
    """Import `module` or raise an error that says which extra provides it.

    Args:
        module: the importable name, e.g. "av" or "fastapi".
        extra: the tilevl extra that installs it, e.g. "video".
        purpose: optional words for the message ("to decode videos").
    Returns:
        The imported module.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        why = f" {purpose}" if purpose else ""
        raise MissingDependencyError(
            f"the optional package '{module}' is needed{why}: pip install 'tilevl[{extra}]'"
        ) from exc


def is_available(module: str) -> bool:
    """True when `module` can be imported (without raising)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
