"""`tilevl serve` / `tilevl web` flags: one flag per ServeSettings field, same names.

The lead wires `add_serve_parsers` into tilevl.cli; here it is tried on a bare parser.
"""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from tilevl.errors import ConfigError
from tilevl.serve import ServeSettings
from tilevl.serve.commands import add_serve_parsers, served_name, settings_from_args


def _parse(argv):
    parser = argparse.ArgumentParser(prog="tilevl")
    add_serve_parsers(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_every_setting_is_a_flag_with_its_default():
    args = _parse(["serve", "tiny"])
    assert settings_from_args(args) == ServeSettings()
    assert (args.host, args.port, args.func.__name__) == ("127.0.0.1", 8000, "cmd_serve")
    assert _parse(["web", "tiny"]).port == 7860


def test_flags_set_the_limits(tmp_path):
    args = _parse(["serve", "tiny", "--port", "9001", "--max-batch-size", "4", "--request-timeout", "2.5",
                   "--allow-remote-images", "--allowed-local-media-path", str(tmp_path),
                   "--max-tiles-per-image", "3"])
    settings = settings_from_args(args)
    assert (settings.max_batch_size, settings.request_timeout, settings.allow_remote_images) == (4, 2.5, True)
    assert settings.allowed_local_media_path == str(tmp_path) and settings.max_tiles_per_image == 3
    assert len(dataclasses.fields(ServeSettings)) >= 15


def test_a_missing_media_folder_and_model_names(tmp_path):
    with pytest.raises(ConfigError, match="not a folder"):
        settings_from_args(_parse(["serve", "tiny", "--allowed-local-media-path", str(tmp_path / "nope")]))
    assert served_name("tiny", None) == "tiny" and served_name("tiny", "my-model") == "my-model"
    (tmp_path / "InternVL2-1B").mkdir()
    assert served_name(str(tmp_path / "InternVL2-1B"), None) == "InternVL2-1B"
