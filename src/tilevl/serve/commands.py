"""The `tilevl serve` and `tilevl web` subcommands (wired into `tilevl.cli` by the lead).

Every `ServeSettings` field is a flag of the same name (`--max-batch-size` …), so the
limits have one name in the code, the docs and the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing
from pathlib import Path

from tilevl.serve.settings import ServeSettings


def add_serve_parsers(subparsers) -> None:
    """Add `serve` and `web` to the `tilevl` command's subparsers.

    Args:
        subparsers: from `parser.add_subparsers()`; each new parser sets `func`.
    """
    serve = subparsers.add_parser(
        "serve", help="OpenAI-compatible HTTP server (POST /v1/chat/completions)",
        description="Serve MODEL over an OpenAI-compatible API. Needs: pip install 'tilevl[serve]'.")
    _add_common(serve, port=8000)
    serve.set_defaults(func=cmd_serve)

    web = subparsers.add_parser(
        "web", help="a chat page in the browser (and the same API under /v1)",
        description="Serve a small chat page for MODEL at http://HOST:PORT/ (images, multi-turn, "
                    "streaming). Needs: pip install 'tilevl[serve]'.")
    _add_common(web, port=7860)
    web.set_defaults(func=cmd_web)


def _add_common(parser: argparse.ArgumentParser, port: int) -> None:
    parser.add_argument("model", help="a checkpoint folder or a preset name (tiny, small …)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=port, help=f"port (default {port})")
    parser.add_argument("--served-model-name", default=None,
                        help="the model id clients send (default: the folder's or preset's name)")
    parser.add_argument("--dtype", default=None, help="bf16, fp16, fp32 or auto (the stored dtype)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 …")
    from tilevl.resolve import add_quantize_argument

    add_quantize_argument(parser)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    limits = parser.add_argument_group("limits (ServeSettings)")
    hints = typing.get_type_hints(ServeSettings)
    for f in dataclasses.fields(ServeSettings):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        if kind is bool:
            limits.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                                help=f"(default {f.default})")
            continue
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        limits.add_argument(flag, type=base, default=f.default, metavar=base.__name__.upper(),
                            help=f"(default {f.default})")


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    """The `ServeSettings` the flags describe."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServeSettings)}
    if values["allowed_local_media_path"] and not Path(values["allowed_local_media_path"]).is_dir():
        from tilevl.errors import ConfigError

        raise ConfigError(f"--allowed-local-media-path {values['allowed_local_media_path']}: not a folder")
    return ServeSettings(**values)


def served_name(spec: str, override: str | None) -> str:
    """The model id: --served-model-name, else the folder's name, else the preset name."""
    if override:
        return override
    path = Path(spec)
    return path.resolve().name if path.is_dir() else spec


def build_app_from_args(args: argparse.Namespace, web: bool):
    """Load the model and build the app the flags describe (also used by tests)."""
    from tilevl.resolve import open_model
    from tilevl.serve.api import create_app

    settings = settings_from_args(args)
    model, tokenizer = open_model(args.model, dtype=args.dtype, device=args.device,
                                  quantize=getattr(args, "quantize", None))
    return create_app(model, tokenizer, model_name=served_name(args.model, args.served_model_name),
                      settings=settings, web=web)


def _run(args: argparse.Namespace, web: bool) -> int:
    from tilevl.optional import require

    require("fastapi", "serve", "to serve the API")
    uvicorn = require("uvicorn", "serve", "to run the HTTP server")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = build_app_from_args(args, web)
    where = f"http://{args.host}:{args.port}"
    print(f"[tilevl] {'chat page at ' + where + '/ and ' if web else ''}OpenAI API at {where}/v1 "
          f"(model id {app.state.serving.model_name!r})", file=sys.stderr)
    # Header timeout and connection cap under the app (see serve/connections.py).
    from tilevl.serve.connections import uvicorn_config

    config = uvicorn_config(app, app.state.serving.settings, host=args.host, port=args.port,
                            log_level=args.log_level)
    uvicorn.Server(config).run()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """`tilevl serve MODEL`: the OpenAI-compatible API."""
    return _run(args, web=False)


def cmd_web(args: argparse.Namespace) -> int:
    """`tilevl web MODEL`: the chat page plus the API it talks to."""
    return _run(args, web=True)
