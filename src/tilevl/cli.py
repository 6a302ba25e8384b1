"""The `tilevl` command: one entry point, one subcommand per job, each a plain function.

`tilevl demo`, `chat MODEL`, `convert SRC OUT`, `info MODEL`; the feature packages add
theirs (`minibench`, `train`, `eval`, `eval-score`, `eval-compare`, `merge-lora`, `merge`,
`recipe`, `serve`, `web`) through their
`commands.py`.
Errors that are the user's (bad file, bad flag) print one line and exit 2, no traceback.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from tilevl.errors import ConfigError, TilevlError


# ---- subcommands ------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: chat about MiniBench images with the shipped model, then score it.

    Without the shipped weights (a source checkout before `scripts/train_tilevl_tiny.py`
    ran) it falls back to the random `tiny` preset and shows shapes and timings.
    """
    from tilevl.assets import DEFAULT_MODEL, asset_path

    if args.preset is None and asset_path(DEFAULT_MODEL) is not None:
        return _demo_embedded(args)
    return _demo_random(args.preset or "tiny")


def _demo_embedded(args: argparse.Namespace) -> int:
    import random

    from tilevl.assets import DEFAULT_MODEL
    from tilevl.eval.runner import EvalConfig, evaluate
    from tilevl.inputs.image import preprocess
    from tilevl.minibench import generate, make_item
    from tilevl.minibench.formats import mmbench_prompt
    from tilevl.resolve import open_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model, tokenizer = open_model(DEFAULT_MODEL)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"loaded the shipped model {DEFAULT_MODEL} ({n_params:,} parameters) in {time.perf_counter() - t0:.1f} s")
    rng = random.Random(args.seed)
    # two categories it reads well, two it does not (README, "The embedded model")
    for category in ("image_scene", "image_style", "color_recognition", "object_counting"):
        item = make_item(category, rng)
        path = out / f"{category}.png"
        item.image.save(path)
        question = mmbench_prompt(item.question, item.hint, item.options)
        pixels = preprocess(item.image, model.image_settings)
        reply = model.chat(tokenizer, pixels, question, dict(max_new_tokens=16, do_sample=False))
        right = "ABCD"[item.answer]
        print(f"\n{path}\n  Q: {item.question}  ({' / '.join(item.options)})\n"
              f"  model: {reply!r}   expected: {right} ({item.options[item.answer]})")
    print(f"\ngenerating MiniBench (seed {args.seed}) and scoring {args.questions} dev questions …")
    # dev is 10 % of size, and each item gives 2-4 circular rows: 0.3 items per question suffice.
    info = generate(out / "minibench", size=max(40, args.questions * 3), seed=args.seed, progress=False,
                    formats=("mcq",), overwrite=True)
    evaluate(model, tokenizer, EvalConfig(
        bench="minibench", data=str(Path(info["out_dir"]) / "dev" / "mcq.tsv"), out=str(out / "eval"),
        batch_size=16, limit=args.questions, progress=True, model_name=DEFAULT_MODEL,
        # the tile budget it was trained with (one tile), not the benchmark's default of 6
        max_tiles=model.image_settings.max_num))
    print((out / "eval" / "results.md").read_text())
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; files in {out}")
    return 0


def _demo_random(preset: str) -> int:
    """Build a preset with random weights, tile an image, run a forward pass and a short chat."""
    import torch
    from PIL import Image, ImageDraw

    from tilevl.checkpoint.tokenizer import IMG_CONTEXT_TOKEN, build_bpe_tokenizer
    from tilevl.inputs.image import preprocess
    from tilevl.model.vlm import build_model

    t0 = time.perf_counter()
    tokenizer = build_bpe_tokenizer(vocab_size=400)
    model = build_model(preset, seed=0)
    model.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"built preset {preset!r}: {n_params:,} parameters in {time.perf_counter() - t0:.2f} s "
          f"(random weights: the answers below are noise until a trained model is loaded)")

    image = Image.new("RGB", (640, 240), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((40, 40, 200, 200), fill="red")
    draw.rectangle((300, 60, 600, 180), fill="blue")
    t0 = time.perf_counter()
    pixels = preprocess(image, model.image_settings)
    print(f"tiled a 640x240 image into {tuple(pixels.shape)} (tiles, channels, height, width) "
          f"in {1000 * (time.perf_counter() - t0):.1f} ms")

    question = "<image>\nWhat shapes are in the picture?"
    from tilevl.chat.engine import prepare_chat_prompt

    ids, _ = prepare_chat_prompt(model, tokenizer, question, None, [pixels.shape[0]])
    input_ids = torch.tensor([ids])
    t0 = time.perf_counter()
    with torch.no_grad():
        logits = model(input_ids, pixels).logits
    print(f"forward: input_ids {tuple(input_ids.shape)} with {pixels.shape[0] * model.num_image_token} "
          f"visual tokens -> logits {tuple(logits.shape)} in {1000 * (time.perf_counter() - t0):.1f} ms")
    t0 = time.perf_counter()
    reply = model.chat(tokenizer, pixels, question, dict(max_new_tokens=16, do_sample=False))
    print(f"greedy chat (16 new tokens) in {1000 * (time.perf_counter() - t0):.1f} ms: {reply!r}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    """One-shot answer when PROMPT is given, else an interactive multi-turn REPL."""
    from tilevl.assets import DEFAULT_MODEL
    from tilevl.chat.session import ChatSession
    from tilevl.resolve import is_model_spec, looks_like_model, open_model, unknown_model_message

    if args.model is not None and not is_model_spec(args.model):
        if looks_like_model(args.model):
            # A misspelt name must not become the prompt of the default model.
            hint = ("" if any(c in args.model for c in "/\\") else
                    f". To ask it as a question, name the model first: tilevl chat "
                    f"{DEFAULT_MODEL} {' '.join([repr(args.model), *args.prompt])}")
            raise ConfigError(unknown_model_message(args.model) + hint)
        # `tilevl chat "What is this?"`: no model named, the words are the prompt.
        args.prompt, args.model = [args.model, *args.prompt], None
    model, tokenizer = open_model(args.model or DEFAULT_MODEL, dtype=args.dtype, device=args.device,
                                  quantize=args.quantize)
    if args.temperature is None:  # the model cards recommend sampling at 0.6 when thinking
        from tilevl.chat.thinking import THINKING_TEMPERATURE

        args.temperature = THINKING_TEMPERATURE if args.thinking else 0.0
    generation = dict(max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
                      temperature=args.temperature or None, top_p=args.top_p, top_k=args.top_k,
                      num_beams=args.num_beams, repetition_penalty=args.repetition_penalty,
                      stop=tuple(args.stop or ()), seed=args.seed)
    session = ChatSession(model, tokenizer, max_tiles=args.max_tiles, generation=generation,
                          enable_thinking=args.thinking)
    images = list(args.image or [])
    prefix = ""
    if args.video:
        from tilevl.inputs.video import CARD_NUM_SEGMENTS, load_video, video_prompt

        args.frames = args.frames or CARD_NUM_SEGMENTS
        settings = model.image_settings
        frames, patches = load_video(args.video, num_segments=args.frames, image_size=settings.image_size,
                                     use_thumbnail=settings.use_thumbnail)
        images += list(frames.split(patches))
        prefix = video_prompt(len(patches))
    if args.prompt:
        _stream_turn(session, prefix + " ".join(args.prompt), images)
        return 0
    print(f"tilevl chat: type a message; {_COMMANDS_HELP}.")
    pending = images
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if not line:
            continue
        if line.startswith("//"):
            line = line[1:]  # a message that starts with "/"
        elif line.startswith("/"):
            command, _, rest = line.partition(" ")
            if command in ("/quit", "/exit"):
                return 0
            if command == "/reset":
                session.reset()
                pending, prefix = [], ""
                print("(conversation cleared)")
            elif command == "/image":
                try:
                    pending.append(_check_image(rest.strip()))
                    print(f"(image queued for your next message: {pending[-1]})")
                except TilevlError as exc:
                    print(f"error: {exc}", file=sys.stderr)
            else:
                print(f"error: unknown command {command}; {_COMMANDS_HELP}", file=sys.stderr)
            continue
        try:
            _stream_turn(session, prefix + line, pending)
        except TilevlError as exc:
            print(f"error: {exc}", file=sys.stderr)
        pending, prefix = [], ""


_COMMANDS_HELP = ("/image PATH adds an image, /reset starts over, /quit ends "
                  "(// sends a message that starts with /)")


def _check_image(path: str) -> str:
    """`/image PATH`: the file must exist and decode now, not when the next message is sent."""
    from tilevl.errors import InputError
    from tilevl.inputs.image import load_image

    if not path:
        raise InputError("/image needs a PATH: /image photo.jpg")
    if not Path(path).is_file():
        raise InputError(f"/image: no such file {path}")
    load_image(path)  # raises InputError naming the file when it is not an image
    return path


def _stream_turn(session, question: str, images) -> str:
    """Ask and print the reply token by token as it is generated (whole, for beam search).

    Thinking the reply marks (`<think>…</think>`) is printed apart, after "thinking> ".
    """
    from transformers import TextIteratorStreamer

    import itertools

    from tilevl.chat.thinking import ReasoningStream

    # Beams cannot be streamed; harmony replies are parsed by special tokens a text stream lacks.
    if session.generation.num_beams > 1 or session.template.channels:
        reply = session.ask(question, images=images)
        if reply.reasoning:
            print(f"thinking> {reply.reasoning}")
        print(f"assistant> {reply}")
        return reply

    streamer = TextIteratorStreamer(session.tokenizer, skip_prompt=True, skip_special_tokens=True)
    result: dict = {}

    def work() -> None:
        try:
            result["reply"] = session.ask(question, images=images, streamer=streamer)
        except BaseException as exc:  # re-raised in the caller's thread
            result["error"] = exc
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    split, part = ReasoningStream(), None
    for piece in itertools.chain(streamer, [None]):  # None: flush what the splitter holds
        for name, text in zip(("thinking", "assistant"), split.feed(piece) if piece is not None else split.finish()):
            if text and name != part:
                print(("\n" if part else "") + f"{name}> ", end="", flush=True)
                part = name
            print(text, end="", flush=True)
    if part is None:
        print("assistant> ", end="")
    thread.join()
    print()
    if "error" in result:
        raise result["error"]
    return result["reply"]


def cmd_convert(args: argparse.Namespace) -> int:
    """Rewrite a checkpoint in the official or transformers-native layout."""
    from tilevl.checkpoint.loader import load_model, save_model
    from tilevl.checkpoint.tokenizer import load_tokenizer
    from tilevl.resolve import parse_dtype

    model = load_model(args.src, dtype=parse_dtype(args.dtype))
    tokenizer = load_tokenizer(args.src, require_vision_tokens=False) if _has_tokenizer(args.src) else None
    out = save_model(model, args.out, layout=args.layout, max_shard_size=args.max_shard_size,
                     tokenizer=tokenizer, overwrite=args.overwrite)
    print(f"wrote {out} ({args.layout} layout)")
    return 0


def _has_tokenizer(folder: str) -> bool:
    return any((Path(folder) / name).exists() for name in ("tokenizer.json", "tokenizer.model"))


def cmd_info(args: argparse.Namespace) -> int:
    """Print a checkpoint's or preset's architecture, sizes and preprocessing settings."""
    from tilevl.checkpoint.loader import read_config
    from tilevl.config import ModelConfig
    from tilevl.param_count import count_parameters

    if args.model is None:
        return _list_presets()
    if Path(args.model).is_dir():
        config, layout = read_config(args.model)
    else:
        config, layout = ModelConfig.from_name(args.model), "preset"
    v = config.vision
    print(f"layout: {layout}")
    print(f"vision: InternViT {v.num_hidden_layers} layers, width {v.hidden_size}, {v.norm_type}, "
          f"qk_norm={v.qk_normalization}, {config.image_size}px tiles of {config.num_image_token} tokens")
    print(f"llm: {config.llm_architecture}, {config.num_llm_layers} layers, width {config.llm_hidden_size}")
    print(f"template: {config.template}; ps_version {config.ps_version}; select_layer {config.select_layer}")
    print(f"tiling: dynamic={config.dynamic_image_size}, tiles {config.min_dynamic_patch}-"
          f"{config.max_dynamic_patch}, thumbnail={config.use_thumbnail}"
          + (f"; evaluated with {config.eval_max_dynamic_patch}"
             if config.eval_max_dynamic_patch is not None else ""))
    print(f"parameters: {count_parameters(config.to_dict()):,}")
    return 0


def _list_presets() -> int:
    """`tilevl info` with no MODEL: every preset with its LLM, template and size."""
    from tilevl.param_count import count_parameters
    from tilevl.presets import SYNTHETIC_PRESETS, get_preset, preset_names

    print(f"{'preset':38s} {'llm':22s} {'template':20s} {'parameters':>17s}")
    for name in preset_names():
        cfg = get_preset(name)
        arch = (cfg["llm_config"].get("architectures") or ["?"])[0].removesuffix("ForCausalLM")
        note = "  (made-up size)" if name in SYNTHETIC_PRESETS else ""
        print(f"{name:38s} {arch:22s} {cfg['template']:20s} {count_parameters(cfg):>17,d}{note}")
    return 0


# ---- argument parsing ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tilevl", description="InternVL models end to end.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="chat with the shipped model about MiniBench images, then score it")
    p.add_argument("--preset", default=None, help="run a random-weight preset instead (shapes, timings)")
    p.add_argument("--out", default="runs/demo", help="where the demo's images and results go")
    p.add_argument("--questions", type=int, default=300, help="dev questions to score")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("chat", help="chat with a model (one-shot with PROMPT, else interactive)")
    p.add_argument("model", nargs="?", help="checkpoint folder or preset name (default: the shipped tilevl-tiny)")
    p.add_argument("prompt", nargs="*", help="the question; omit for an interactive session")
    p.add_argument("--image", action="append", help="an image (repeatable)")
    p.add_argument("--video", help="a video file (frames sampled as in the seeds)")
    p.add_argument("--frames", type=int, default=None,
                   help="frames sampled from --video (default: the model cards' 8, one tile each)")
    p.add_argument("--max-tiles", type=int, default=None, help="max tiles per image (default: the checkpoint's)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=None,
                   help="0 = greedy (the default; 0.6 with --thinking, as the model cards recommend)")
    p.add_argument("--thinking", action="store_true",
                   help="InternVL3.5's thinking mode: the model card's reasoning system prompt; "
                        "the thinking is printed apart from the answer")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--num-beams", type=int, default=1, help="beam search width (1 = off)")
    p.add_argument("--repetition-penalty", type=float, default=None)
    p.add_argument("--seed", type=int, default=None, help="seeds sampling")
    p.add_argument("--stop", action="append", help="a stop string (repeatable)")
    p.add_argument("--dtype", default=None, help="bf16 | fp16 | fp32 (default: as stored)")
    p.add_argument("--device", default="cpu")
    from tilevl.resolve import add_quantize_argument

    add_quantize_argument(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("convert", help="rewrite a checkpoint in another layout")
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--layout", choices=("official", "native"), default="native")
    p.add_argument("--dtype", default=None)
    p.add_argument("--max-shard-size", default="5GB")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", help="describe a checkpoint or preset (no MODEL: list the presets)")
    p.add_argument("model", nargs="?", default=None)
    p.set_defaults(func=cmd_info)

    # Each feature package owns its subcommands' arguments.
    from tilevl.eval.commands import add_eval_parsers
    from tilevl.merge.commands import add_merge_parsers
    from tilevl.minibench.commands import add_minibench_parsers
    from tilevl.recipes.commands import add_recipe_parsers
    from tilevl.serve.commands import add_serve_parsers
    from tilevl.train.commands import add_train_parsers

    add_minibench_parsers(sub)
    add_train_parsers(sub)
    add_eval_parsers(sub)
    add_merge_parsers(sub)
    add_recipe_parsers(sub)
    add_serve_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # argparse cannot take a positional PROMPT after options ("chat M --image x What?"): the
    # words it leaves over are the prompt, unless one looks like an option.
    args, extra = parser.parse_known_args(argv)
    if extra and (args.command != "chat" or any(word.startswith("-") for word in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.prompt = [*args.prompt, *extra]
    try:
        return args.func(args)
    except TilevlError as exc:
        print(f"tilevl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
