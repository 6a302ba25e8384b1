"""Tokenizers without remote code: load a checkpoint's tokenizer, or build a small one.

InternVL checkpoints add the image and grounding tokens below to their LLM's tokenizer; we
resolve them to the checkpoint's ids and never run the checkpoint's own Python.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from tilevl.errors import CheckpointError

# The special tokens every InternVL checkpoint carries (names from the official code).
IMG_START_TOKEN = "<img>"
IMG_END_TOKEN = "</img>"
IMG_CONTEXT_TOKEN = "<IMG_CONTEXT>"
QUAD_START_TOKEN, QUAD_END_TOKEN = "<quad>", "</quad>"
REF_START_TOKEN, REF_END_TOKEN = "<ref>", "</ref>"
BOX_START_TOKEN, BOX_END_TOKEN = "<box>", "</box>"
VISION_TOKENS = (
    IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN,
    QUAD_START_TOKEN, QUAD_END_TOKEN, REF_START_TOKEN, REF_END_TOKEN,
    BOX_START_TOKEN, BOX_END_TOKEN,
)
# Role and end tokens of the published templates (ChatML, InternLM2, Phi-3).
TEMPLATE_TOKENS = (
    "<|im_start|>", "<|im_end|>", "<|endoftext|>",
    "<|system|>", "<|user|>", "<|assistant|>", "<|end|>",
    "<s>", "</s>", "<unk>",
)

_DEFAULT_CORPUS = (
    "Hello, who are you? I am an AI assistant whose name is InternVL.",
    "Please describe the image shortly. The image shows a red square on a white background.",
    "What is in the picture? A cat sits on a mat next to a blue ball.",
    "Answer the question using a single word or phrase. Yes. No. 1 2 3 4 5 6 7 8 9 0",
    "Describe the two images in detail. Image-1: Image-2: Frame1: Frame2: A B C D",
    "Can you tell me a story? Once upon a time there was a small robot.",
)


def build_bpe_tokenizer(
    corpus: Iterable[str] = _DEFAULT_CORPUS,
    vocab_size: int = 512,
    extra_special_tokens: Sequence[str] = (),
    eos_token: str = "<|im_end|>",
    pad_token: str = "<|endoftext|>",
):
    """Train a byte-level BPE tokenizer carrying the InternVL special tokens.

    Byte-level, so every string encodes (no unknown tokens); used by the tests and by the
    embedded model. The special tokens get the first ids, in the order of
    `TEMPLATE_TOKENS + VISION_TOKENS + extra_special_tokens`.

    Args:
        corpus: training texts.
        vocab_size: target size including the 256 byte symbols and the special tokens.
        extra_special_tokens: more tokens that must never be split.
        eos_token / pad_token: set on the returned tokenizer.
    Returns:
        A `transformers` fast tokenizer (saveable with `save_pretrained`).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys([*TEMPLATE_TOKENS, *VISION_TOKENS, *extra_special_tokens]))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=eos_token,
        pad_token=pad_token,
        unk_token="<unk>",
        bos_token="<s>",
    )


# ---- loading a checkpoint's tokenizer ----------------------------------------------------

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")
# tokenizer_config.json keys we honour; everything else (auto_map, tokenizer_class, ...) is ignored.
_KEPT_CONFIG_KEYS = (
    "add_bos_token", "add_eos_token", "model_max_length", "padding_side",
    "clean_up_tokenization_spaces", "chat_template",
)


def load_tokenizer(path: str | Path, require_vision_tokens: bool = True):
    """Load a checkpoint folder's tokenizer without running any of the checkpoint's code.

    `tokenizer.json` wins when present (a `tokenizers` fast tokenizer, with the file's own
    normaliser and post-processor). Otherwise a sentencepiece `tokenizer.model` is loaded
    with InternLM2Tokenizer's behaviour (see `InternLM2SentencePieceTokenizer`); its ids for
    added tokens come from `tokenizer_config.json`'s `added_tokens_decoder`. `auto_map` and
    `tokenizer_class` are ignored.

    Args:
        path: the checkpoint folder, or the name of a shipped model (`tilevl-tiny`).
        require_vision_tokens: check that the InternVL tokens (`VISION_TOKENS`) exist.
    Returns:
        A `transformers` tokenizer.
    Raises:
        CheckpointError: the folder or its tokenizer files are missing or unreadable, or a
            vision token is missing (names the folder and the tokens).
    """
    from tilevl.assets import resolve_folder

    folder = resolve_folder(path)
    if not folder.is_dir():
        raise CheckpointError(
            f"tokenizer folder {folder} does not exist (looked for {' or '.join(TOKENIZER_FILES)})"
        )
    if (folder / "tokenizer.json").is_file():
        tokenizer = _load_tokenizer_json(folder)
    elif (folder / "tokenizer.model").is_file():
        tokenizer = _load_sentencepiece(folder)
    else:
        raise CheckpointError(
            f"no tokenizer in {folder}: looked for {' and '.join(TOKENIZER_FILES)}"
        )
    if require_vision_tokens:
        special_token_ids(tokenizer, where=str(folder))
    return tokenizer


def special_token_ids(tokenizer, where: str | None = None) -> dict[str, int]:
    """Resolve the InternVL image and grounding tokens to this tokenizer's ids.

    A token counts only when it is one unsplittable id: encoding its text gives exactly it.

    Args:
        tokenizer: a `transformers` tokenizer.
        where: names the source in the error (defaults to the tokenizer's `name_or_path`).
    Returns:
        `{token: id}` for every token of `VISION_TOKENS`.
    Raises:
        CheckpointError: some tokens are missing (names them and the source).
    """
    return _resolve(tokenizer, VISION_TOKENS, where)


def img_context_token_id(tokenizer) -> int:
    """Return the id of `<IMG_CONTEXT>`, the placeholder the visual embeddings replace.

    Raises:
        CheckpointError: the tokenizer lacks it.
    """
    return _resolve(tokenizer, (IMG_CONTEXT_TOKEN,), None)[IMG_CONTEXT_TOKEN]


def _resolve(tokenizer, tokens: Sequence[str], where: str | None) -> dict[str, int]:
    ids, missing = {}, []
    for token in tokens:
        token_id = tokenizer.convert_tokens_to_ids(token)
        ok = (
            isinstance(token_id, int)
            and tokenizer.convert_ids_to_tokens(token_id) == token
            and tokenizer.encode(token, add_special_tokens=False) == [token_id]
        )
        if ok:
            ids[token] = token_id
        else:
            missing.append(token)
    if missing:
        source = where or getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise CheckpointError(
            f"tokenizer of {source} lacks the InternVL tokens {missing} "
            "(each must be an added token that encodes to a single id)"
        )
    return ids


def _read_json(file: Path) -> dict[str, Any]:
    if not file.is_file():
        return {}
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{file}: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"{file}: expected a JSON object, got {type(value).__name__}")
    return value


def _load_tokenizer_json(folder: Path):
    from transformers import PreTrainedTokenizerFast

    # transformers 5 drops add_bos/eos_token when a tokenizer.json exists and keeps the file's
    # post-processor; transformers 4's Llama-family classes rebuilt it from these flags, which
    # the published checkpoints (e.g. Phi-3's add_bos_token=false) were made with.
    config = _read_json(folder / "tokenizer_config.json")
    flags = {k: bool(config[k]) for k in ("add_bos_token", "add_eos_token") if k in config}
    # The concrete class never resolves `auto_map`, so no checkpoint code can run.
    try:
        return PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True, **flags)
    except Exception as exc:  # tokenizers raises plain Exceptions for a bad file
        raise CheckpointError(f"cannot read {folder / 'tokenizer.json'}: {exc}") from exc


def _token_text(value: Any) -> Any:
    """A special token as saved (a string, or an AddedToken dict) → string."""
    if isinstance(value, Mapping):
        return value.get("content")
    return value


def _added_tokens(config: Mapping[str, Any], file: Path) -> dict[int, Any]:
    from tokenizers import AddedToken

    out = {}
    for key, spec in (config.get("added_tokens_decoder") or {}).items():
        try:
            token_id = int(key)
        except ValueError as exc:
            raise CheckpointError(f"{file}: added_tokens_decoder key {key!r} is not an id") from exc
        if isinstance(spec, str):
            spec = {"content": spec}
        if not isinstance(spec, Mapping) or not isinstance(spec.get("content"), str):
            raise CheckpointError(f"{file}: added_tokens_decoder[{key!r}] has no 'content'")
        out[token_id] = AddedToken(
            spec["content"],
            single_word=bool(spec.get("single_word", False)),
            lstrip=bool(spec.get("lstrip", False)),
            rstrip=bool(spec.get("rstrip", False)),
            normalized=bool(spec.get("normalized", False)),
            special=bool(spec.get("special", True)),
        )
    return out


def _load_sentencepiece(folder: Path):
    config_file = folder / "tokenizer_config.json"
    config = _read_json(config_file)
    special_map = _read_json(folder / "special_tokens_map.json")
    kwargs: dict[str, Any] = {k: config[k] for k in _KEPT_CONFIG_KEYS if k in config}
    # special_tokens_map.json overrides tokenizer_config.json, as transformers' loader does.
    for key in _SPECIAL_KEYS:
        value = _token_text(special_map.get(key, config.get(key)))
        if value is not None:
            kwargs[key] = value
    extra = special_map.get("additional_special_tokens", config.get("additional_special_tokens"))
    if extra:
        kwargs["extra_special_tokens"] = [_token_text(t) for t in extra]
    added = _added_tokens(config, config_file)
    cls = _internlm2_tokenizer_class()
    try:
        tokenizer = cls(vocab_file=str(folder / "tokenizer.model"), added_tokens_decoder=added, **kwargs)
    except (OSError, RuntimeError) as exc:  # sentencepiece's errors for an unreadable model
        raise CheckpointError(f"cannot read {folder / 'tokenizer.model'}: {exc}") from exc
    tokenizer.name_or_path = str(folder)
    pieces = tokenizer.sp_model.get_piece_size()
    for token_id, token in added.items():
        # An id inside the sentencepiece vocab must name that same piece, or the ids disagree.
        if token_id < pieces and tokenizer.sp_model.id_to_piece(token_id) != token.content:
            raise CheckpointError(
                f"{config_file}: added_tokens_decoder[{token_id}] is {token.content!r} but "
                f"tokenizer.model has {tokenizer.sp_model.id_to_piece(token_id)!r} at that id"
            )
    for token_id, token in added.items():
        if tokenizer.convert_tokens_to_ids(token.content) != token_id:
            raise CheckpointError(f"{config_file}: {token.content!r} does not resolve to id {token_id}")
    return tokenizer


@lru_cache(maxsize=None)
def _internlm2_tokenizer_class():
    """Build the sentencepiece tokenizer class on first use (keeps importing this module light)."""
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

    class InternLM2SentencePieceTokenizer(SentencePieceBackend):
        """InternLM2Tokenizer's behaviour on transformers' own sentencepiece backend.

        Text between added tokens is encoded by `sp_model.encode` as is (legacy mode: the
        model's own normaliser and dummy prefix apply to every chunk); `<s>` is prepended and
        no `</s>` appended by default; decoding joins pieces with `sp_model.decode` around
        special tokens and always applies `clean_up_tokenization`, as upstream does.
        """

        vocab_files_names = {"vocab_file": "tokenizer.model"}
        model_input_names = ["input_ids", "attention_mask"]

        def __init__(
            self,
            vocab_file: str,
            unk_token="<unk>",
            bos_token="<s>",
            eos_token="</s>",
            pad_token="</s>",
            add_bos_token: bool = True,
            add_eos_token: bool = False,
            clean_up_tokenization_spaces: bool = False,
            **kwargs,
        ):
            self.add_bos_token = add_bos_token
            self.add_eos_token = add_eos_token
            kwargs["legacy"] = True
            super().__init__(
                vocab_file=vocab_file,
                unk_token=unk_token,
                bos_token=bos_token,
                eos_token=eos_token,
                pad_token=pad_token,
                add_bos_token=add_bos_token,
                add_eos_token=add_eos_token,
                clean_up_tokenization_spaces=clean_up_tokenization_spaces,
                **kwargs,
            )

        def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
            bos = [self.bos_token_id] if self.add_bos_token else []
            eos = [self.eos_token_id] if self.add_eos_token else []
            return bos + token_ids_0 + (token_ids_1 or []) + eos

        def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens=False):
            if already_has_special_tokens:
                return super().get_special_tokens_mask(token_ids_0, token_ids_1, True)
            body = [0] * (len(token_ids_0) + len(token_ids_1 or []))
            return [1] * self.add_bos_token + body + [1] * self.add_eos_token

        def convert_tokens_to_string(self, tokens):
            # Upstream splits at special tokens; we also split at added tokens outside the
            # sentencepiece vocab, which upstream would have decoded as unknown pieces.
            breaks = set(self.all_special_tokens) | {
                t for t, i in self._added_tokens_encoder.items() if i >= self.sp_model.get_piece_size()
            }
            out, pieces, prev_is_special = "", [], False
            for token in tokens:
                if token in breaks:
                    if not prev_is_special:
                        out += " "
                    out += self.sp_model.decode(pieces) + token
                    pieces, prev_is_special = [], True
                else:
                    pieces.append(token)
                    prev_is_special = False
            out += self.sp_model.decode(pieces)
            return self.clean_up_tokenization(out)

    InternLM2SentencePieceTokenizer.__module__ = __name__
    InternLM2SentencePieceTokenizer.__qualname__ = "InternLM2SentencePieceTokenizer"
    return InternLM2SentencePieceTokenizer


def __getattr__(name: str):
    # Module-level lazy attribute, so pickling a loaded tokenizer (data-loader workers) works.
    if name == "InternLM2SentencePieceTokenizer":
        return _internlm2_tokenizer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
