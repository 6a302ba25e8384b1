"""Benchmarks are scripts, not a package: load one by path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture()
def load_benchmark():
    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module

    return load
