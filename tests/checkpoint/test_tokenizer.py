"""Tokenizer loading without remote code: InternLM2-style sentencepiece folders and tokenizer.json.

The sentencepiece model is trained here, and the folder is written the way an InternVL
checkpoint with InternLM2 has it (auto_map to a remote class, added_tokens_decoder ids).
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
import sentencepiece as spm

from tilevl.checkpoint.tokenizer import (
    IMG_CONTEXT_TOKEN,
    VISION_TOKENS,
    build_bpe_tokenizer,
    img_context_token_id,
    load_tokenizer,
    special_token_ids,
)
from tilevl.errors import CheckpointError

TEMPLATE = ("<|im_start|>", "<|im_end|>")
CORPUS = [
    "Hello, who are you? I am an AI assistant whose name is InternVL.",
    "Please describe the image shortly.\nThe image shows a red square on a white background.",
    "What is in the picture? A cat sits on a mat next to a blue ball.",
    "Answer the question using a single word or phrase. Yes. No. 1 2 3 4 5 6 7 8 9 0",
    "请描述这张图片。 Can you tell me a story? Once upon a time there was a small robot.",
] * 4
TEXTS = [
    "Hello, who are you?",
    "  leading spaces and\nnew lines\n\ttabs",
    "Chinese 图片 and an emoji 🙂 fall back to bytes",
    "",
]


def train_sentencepiece(tmp: Path, extra_symbols=()) -> Path:
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(CORPUS), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp / "sp"), vocab_size=420, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True,
        user_defined_symbols=[*TEMPLATE, *extra_symbols],
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )
    return tmp / "sp.model"


def _added(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True}


def write_internlm2_folder(folder: Path, model: Path, vision_in_sp: bool = False,
                           with_vision: bool = True, **config_overrides) -> Path:
    """Write tokenizer.model + tokenizer_config.json + special_tokens_map.json like InternVL's."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(model.read_bytes())
    sp = spm.SentencePieceProcessor(model_file=str(model))
    size = sp.get_piece_size()
    added = {str(i): _added(sp.id_to_piece(i)) for i in range(3)}
    added.update({str(sp.piece_to_id(t)): _added(t) for t in TEMPLATE})
    vision = list(VISION_TOKENS) if with_vision else []
    for j, token in enumerate(vision):
        added[str(sp.piece_to_id(token) if vision_in_sp else size + j)] = _added(token)
    extra = [*TEMPLATE, *vision]
    config = {
        "added_tokens_decoder": added,
        "additional_special_tokens": extra,
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "tokenizer_class": "InternLM2Tokenizer",
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>",
        "clean_up_tokenization_spaces": False, "model_max_length": 4096,
        **config_overrides,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    special_map = {"bos_token": {"content": "<s>", "lstrip": False}, "eos_token": "</s>",
                   "pad_token": "</s>", "unk_token": "<unk>", "additional_special_tokens": extra}
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map))
    # A remote-code file that must never be imported: it would leave a marker behind.
    marker = folder / "IMPORTED"
    (folder / "tokenization_internlm2.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    return folder


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory) -> Path:
    return train_sentencepiece(tmp_path_factory.mktemp("sp"))


@pytest.fixture(scope="module")
def internlm2_folder(sp_model, tmp_path_factory) -> Path:
    return write_internlm2_folder(tmp_path_factory.mktemp("ckpt") / "InternVL-tiny", sp_model)


def _encode_like_upstream(sp, text: str) -> list[int]:
    """InternLM2Tokenizer: split at added tokens, sentencepiece-encode each piece, prepend <s>."""
    pattern = "(" + "|".join(re.escape(t) for t in (*TEMPLATE, *VISION_TOKENS, "<s>", "</s>")) + ")"
    ids = [sp.bos_id()]
    for chunk in re.split(pattern, text):
        if chunk in (*TEMPLATE, "<s>", "</s>"):
            ids.append(sp.piece_to_id(chunk))
        elif chunk in VISION_TOKENS:
            ids.append(sp.get_piece_size() + VISION_TOKENS.index(chunk))
        elif chunk:
            ids.extend(sp.encode(chunk))
    return ids


def test_sentencepiece_folder_loads_without_remote_code(internlm2_folder, sp_model):
    tok = load_tokenizer(internlm2_folder)
    assert type(tok).__module__ == "tilevl.checkpoint.tokenizer"
    assert not (internlm2_folder / "IMPORTED").exists()
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    for text in TEXTS:
        ids = tok(text).input_ids
        assert ids == [sp.bos_id(), *sp.encode(text)], text  # <s> added, no </s>
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (1, 2, 2, 0)
    assert len(tok) == sp.get_piece_size() + len(VISION_TOKENS)


def test_added_tokens_split_text_like_upstream(internlm2_folder, sp_model):
    tok = load_tokenizer(internlm2_folder)
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    text = "<|im_start|>user\n<img>" + IMG_CONTEXT_TOKEN * 3 + "</img>\nDescribe <ref>a cat</ref><|im_end|>"
    ids = tok(text).input_ids
    assert ids == _encode_like_upstream(sp, text)
    assert ids.count(img_context_token_id(tok)) == 3
    # Upstream decodes pieces with sentencepiece and puts a space before each run of special
    # tokens (even a leading one); chat decodes with skip_special_tokens, which avoids it.
    assert tok.decode(tok("Hello <img>", add_special_tokens=False).input_ids) == " Hello <img>"
    assert tok.decode(tok("<img>Hi", add_special_tokens=False).input_ids) == " <img>Hi"
    # Every chunk between added tokens got its own dummy-prefix "▁", which decodes to a space.
    assert tok.decode(ids, skip_special_tokens=True) == "user\n \nDescribe  a cat"


def test_special_token_ids_resolve_to_checkpoint_ids(internlm2_folder, sp_model):
    tok = load_tokenizer(internlm2_folder)
    size = spm.SentencePieceProcessor(model_file=str(sp_model)).get_piece_size()
    assert special_token_ids(tok) == {t: size + i for i, t in enumerate(VISION_TOKENS)}
    assert img_context_token_id(tok) == size + 2


def test_vision_tokens_inside_the_sentencepiece_vocab(tmp_path):
    model = train_sentencepiece(tmp_path, extra_symbols=VISION_TOKENS)
    folder = write_internlm2_folder(tmp_path / "ckpt", model, vision_in_sp=True)
    tok = load_tokenizer(folder)
    sp = spm.SentencePieceProcessor(model_file=str(model))
    assert special_token_ids(tok) == {t: sp.piece_to_id(t) for t in VISION_TOKENS}
    assert len(tok) == sp.get_piece_size()


def test_config_flags_and_upstream_cleanup(tmp_path, sp_model):
    folder = write_internlm2_folder(tmp_path / "ckpt", sp_model, add_eos_token=True, add_bos_token=False)
    tok = load_tokenizer(folder)
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    assert tok("Yes. No.").input_ids == [*sp.encode("Yes. No."), sp.eos_id()]
    assert tok.get_special_tokens_mask(sp.encode("Yes"))[-1] == 1
    # InternLM2Tokenizer.convert_tokens_to_string always runs clean_up_tokenization.
    assert tok.decode(tok("a , b", add_special_tokens=False).input_ids) == "a, b"


def test_pickle_and_save_round_trip(internlm2_folder, tmp_path):
    tok = load_tokenizer(internlm2_folder)
    text = "<img><IMG_CONTEXT></img> What is in the picture?"
    assert pickle.loads(pickle.dumps(tok))(text).input_ids == tok(text).input_ids
    tok.save_pretrained(tmp_path / "saved")
    again = load_tokenizer(tmp_path / "saved")
    assert again(text).input_ids == tok(text).input_ids
    assert special_token_ids(again) == special_token_ids(tok)


def test_tokenizer_json_folder_ignores_auto_map(tmp_path):
    reference = build_bpe_tokenizer()
    reference.save_pretrained(tmp_path)
    config_file = tmp_path / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.update(auto_map={"AutoTokenizer": ["tokenization_x.RemoteTokenizer", None]},
                  tokenizer_class="RemoteTokenizer")
    config_file.write_text(json.dumps(config))
    (tmp_path / "tokenizer.model").write_bytes(b"not read: tokenizer.json wins")
    tok = load_tokenizer(tmp_path)
    text = "<|im_start|>user\n<img><IMG_CONTEXT></img>Hello, who are you?<|im_end|>"
    assert tok(text).input_ids == reference(text).input_ids
    assert tok.decode(tok(text).input_ids) == text
    assert special_token_ids(tok) == {t: reference.convert_tokens_to_ids(t) for t in VISION_TOKENS}


def test_tokenizer_json_honours_add_bos_token_flags(tmp_path):
    from tokenizers import processors

    reference = build_bpe_tokenizer()
    bos = reference.convert_tokens_to_ids("<s>")
    reference.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    reference.save_pretrained(tmp_path)
    plain = reference("Hello", add_special_tokens=False).input_ids
    assert load_tokenizer(tmp_path)("Hello").input_ids == [bos, *plain]  # the file's own rule
    config_file = tmp_path / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "add_bos_token": False, "add_eos_token": True}))
    tok = load_tokenizer(tmp_path)
    assert tok("Hello").input_ids == [*plain, tok.eos_token_id]


def test_missing_folder_or_files_name_the_path(tmp_path):
    with pytest.raises(CheckpointError, match=r"no_such_dir.*tokenizer\.json.*tokenizer\.model"):
        load_tokenizer(tmp_path / "no_such_dir")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"tokenizer\.json and tokenizer\.model"):
        load_tokenizer(tmp_path)


def test_missing_vision_tokens_name_folder_and_tokens(tmp_path, sp_model):
    folder = write_internlm2_folder(tmp_path / "plain-llm", sp_model, with_vision=False)
    with pytest.raises(CheckpointError, match=r"plain-llm.*<img>.*<IMG_CONTEXT>.*</box>"):
        load_tokenizer(folder)
    tok = load_tokenizer(folder, require_vision_tokens=False)
    with pytest.raises(CheckpointError, match="IMG_CONTEXT"):
        img_context_token_id(tok)
    bpe = build_bpe_tokenizer()
    assert special_token_ids(bpe)[IMG_CONTEXT_TOKEN] == bpe.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)


def test_broken_files_raise_checkpoint_errors(tmp_path, sp_model):
    folder = write_internlm2_folder(tmp_path / "bad-id", sp_model)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"]["5"] = _added("<weird>")  # id 5 is a byte piece in the model
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"added_tokens_decoder\[5\]"):
        load_tokenizer(folder)
    (folder / "tokenizer_config.json").write_text('{"bos_token": "<s>",\n  oops}')
    with pytest.raises(CheckpointError, match=r"tokenizer_config\.json: invalid JSON at line 2"):
        load_tokenizer(folder)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "tokenizer.model").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match=r"corrupt.*tokenizer\.model"):
        load_tokenizer(corrupt)
    (corrupt / "tokenizer.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"tokenizer\.json"):
        load_tokenizer(corrupt)
