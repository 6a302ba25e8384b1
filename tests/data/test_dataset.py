"""Tests of SFTDataset: every record kind, upstream's placeholder and tile rules, truncation.

Bad records of every kind must be left out and counted with file:line; an epoch is exactly
the valid records × repeat_time.
"""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from PIL import Image

from tilevl.checkpoint.tokenizer import IMG_CONTEXT_TOKEN, IMG_END_TOKEN
from tilevl.config import ModelConfig
from tilevl.data.dataset import REASONS, BadRecordError, SFTDataset
from tilevl.data.meta import DatasetSpec
from tilevl.errors import ConfigError
from tilevl.inputs.image import choose_grid
from tilevl.inputs.template import IGNORE_INDEX

TOKENS_PER_TILE = 4  # the tiny preset: 56 px tiles → 2×2 tokens after pixel shuffle


def turns(question="What is it?", answer="A red box.", *more):
    out = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    for i, value in enumerate(more):
        out.append({"from": "human" if i % 2 == 0 else "gpt", "value": value})
    return out


def write_jsonl(path, records):
    """Records are dicts (dumped) or raw strings (written as they are), one per line."""
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def config():
    return ModelConfig.from_name("tiny")


@pytest.fixture()
def media(tmp_path):
    Image.new("RGB", (200, 50), (220, 30, 30)).save(tmp_path / "wide.png")
    Image.new("RGB", (56, 56), (30, 30, 220)).save(tmp_path / "small.jpg")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return tmp_path


def make(tmp_path, records, tokenizer, config, **kwargs):
    return SFTDataset(write_jsonl(tmp_path / "ann.jsonl", records), tokenizer, config, **kwargs)


def answer(tokenizer, sample):
    """The supervised reply without its end-of-turn token."""
    return reply_text(tokenizer, sample).removesuffix("<|im_end|>")


def reply_text(tokenizer, sample):
    labels = sample["labels"]
    return tokenizer.decode(labels[labels != IGNORE_INDEX])


def count(tokenizer, sample, token):
    return int((sample["input_ids"] == tokenizer.convert_tokens_to_ids(token)).sum())


def test_one_image_gets_a_placeholder_and_its_tiles(tmp_path, media, tokenizer, config):
    ds = make(tmp_path, [{"image": "wide.png", "width": 200, "height": 50,
                          "conversations": turns()}], tokenizer, config)
    sample = ds[0]
    cols, rows = choose_grid(200, 50, 56, 1, 6)
    n = cols * rows + 1  # + the thumbnail
    assert sample["pixel_values"].shape == (n, 3, 56, 56) and sample["num_tiles"] == [n]
    assert count(tokenizer, sample, IMG_CONTEXT_TOKEN) == TOKENS_PER_TILE * n
    text = tokenizer.decode(sample["input_ids"])
    assert "user\n<img>" in text and f"{IMG_END_TOKEN}\nWhat is it?" in text
    assert reply_text(tokenizer, sample) == "A red box.<|im_end|>"  # labels: the reply only
    assert sample["input_ids"].dtype == torch.long
    assert sample["labels"].shape == sample["input_ids"].shape


def test_explicit_placeholder_is_kept_where_written(tmp_path, media, tokenizer, config):
    ds = make(tmp_path, [{"image": "small.jpg", "conversations": turns("Look: <image> now")}],
              tokenizer, config)
    text = tokenizer.decode(ds[0]["input_ids"])
    assert "user\nLook: <img>" in text and "</img> now" in text
    assert ds[0]["num_tiles"] == [1]


@pytest.mark.parametrize("key", ["image", "images"])
def test_several_images_split_the_tile_budget(tmp_path, media, tokenizer, config, key):
    record = {key: ["wide.png", "small.jpg", "wide.png"],
              "conversations": turns("<image> and <image>, then <image>?")}
    sample = make(tmp_path, [record], tokenizer, config)[0]
    # Upstream: max(1, max_dynamic_patch // num_images) = 6 // 3 = 2 tiles per image.
    cols, rows = choose_grid(200, 50, 56, 1, 2)
    wide = cols * rows + 1
    assert sample["num_tiles"] == [wide, 1, wide]
    assert sample["pixel_values"].shape[0] == 2 * wide + 1
    assert count(tokenizer, sample, IMG_END_TOKEN) == 3
    assert count(tokenizer, sample, IMG_CONTEXT_TOKEN) == TOKENS_PER_TILE * (2 * wide + 1)


def test_meta_max_dynamic_patch_overrides_the_model(tmp_path, media, tokenizer, config):
    path = write_jsonl(tmp_path / "a.jsonl", [{"image": "wide.png", "conversations": turns()}])
    spec = DatasetSpec.from_annotation(path, max_dynamic_patch=2)
    assert SFTDataset(spec, tokenizer, config)[0]["num_tiles"] == [3]  # (2, 1) grid + thumb


def test_pure_text_has_no_pixels_and_grounding_text_is_untouched(tmp_path, tokenizer, config):
    answer = "<ref>the cat</ref><box>[[10, 20, 300, 400]]</box>"
    records = [{"conversations": [{"from": "system", "value": "Be brief."}] + turns("Hi", answer),
                "image": ""}]
    sample = make(tmp_path, records, tokenizer, config)[0]
    assert sample["pixel_values"] is None and sample["num_tiles"] == []
    text = tokenizer.decode(sample["input_ids"])
    assert "system\nBe brief." in text and answer in text and "<img>" not in text
    assert reply_text(tokenizer, sample) == answer + "<|im_end|>"


def test_multi_turn_labels_cover_every_reply(tmp_path, tokenizer, config):
    sample = make(tmp_path, [{"conversations": turns("q1", "a1", "q2", "a2")}],
                  tokenizer, config)[0]
    assert reply_text(tokenizer, sample) == "a1<|im_end|>a2<|im_end|>"


def test_video_frames_become_image_placeholders(tmp_path, tokenizer, config):
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(12):
            frame = av.VideoFrame.from_image(Image.new("RGB", (64, 48), (i * 20, 0, 0)))
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    records = [{"video": "clip.mp4", "conversations": turns("What happens?")}]
    sample = make(tmp_path, records, tokenizer, config, num_video_frames=4)[0]
    assert sample["pixel_values"].shape == (4, 3, 56, 56) and sample["num_tiles"] == [1] * 4
    text = tokenizer.decode(sample["input_ids"])
    # Upstream's training prompt (internvl_chat_finetune.py, video_get_item).
    assert "user\nFrame-1: <img>" in text and "</img>\nFrame-2: <img>" in text
    assert "Frame-4: <img>" in text and "</img>\nWhat happens?" in text


def test_every_bad_record_is_counted_with_file_and_line(tmp_path, media, tokenizer, config):
    good = {"image": "small.jpg", "conversations": turns()}
    records = [
        good,                                                                  # 1
        '{"image": "small.jpg", "conversations": [',                           # 2 bad_json
        {"image": "gone.png", "conversations": turns()},                       # 3 missing_image
        {"image": "broken.png", "conversations": turns()},                     # 4 bad_image
        {"conversations": [{"from": "gpt", "value": "a"},
                           {"from": "human", "value": "q"}]},                  # 5 bad_turn_order
        {"image": "small.jpg", "conversations": turns("<image><image> two?")},  # 6 more tags
        {"image": ["small.jpg", "small.jpg"], "conversations": turns("<image> one?")},  # 7 fewer
        {"conversations": []},                                                 # 8 empty
        "",                                                                    # 9 blank: no item
        {"conversations": turns("q", "")},                                     # 10 bad_field
        {"conversations": turns("plain text", "fine")},                        # 11
    ]
    path = write_jsonl(tmp_path / "ann.jsonl", records)
    ds = SFTDataset(path, tokenizer, config)
    assert len(ds) == 2 and ds.valid_records == 2  # the bad ones are left out, not replaced
    assert [answer(tokenizer, ds[i]) for i in range(len(ds))] == ["A red box.", "fine"]
    assert ds.bad_records == {"bad_json": 1, "empty_conversations": 1, "bad_field": 1,
                              "bad_turn_order": 1, "image_count_mismatch": 2,
                              "missing_image": 1, "bad_image": 1}
    assert ds.stats.replacements == 0
    report = ds.report()
    for line, reason in [(2, "bad_json"), (3, "missing_image"), (4, "bad_image"),
                         (5, "bad_turn_order"), (6, "image_count_mismatch"),
                         (7, "image_count_mismatch"), (8, "empty_conversations"),
                         (10, "bad_field")]:
        assert f"{path}:{line}:" in report, (line, reason)
        assert any(e.startswith(f"{path}:{line}:") for e in ds.stats.examples[reason])
    assert "2 <image> tag(s) in the human turns for 1 image(s)" in report
    assert "1 <image> tag(s) in the human turns for 2 image(s)" in report
    assert set(ds.bad_records) <= set(REASONS)
    # A second pass counts nothing twice.
    [ds[i] for i in range(len(ds))]
    assert sum(ds.bad_records.values()) == 8


def test_scan_finds_the_same_records_and_gives_served_lengths(tmp_path, media, tokenizer, config):
    records = [{"image": "wide.png", "conversations": turns()},
               {"image": "gone.png", "conversations": turns()},
               {"conversations": turns("only text", "ok")},
               "not json"]
    ds = make(tmp_path, records, tokenizer, config)
    lengths = ds.scan()
    assert ds.bad_records == {"bad_json": 1, "missing_image": 1}
    assert len(lengths) == len(ds) == 2
    assert lengths == [len(ds[i]["input_ids"]) for i in range(len(ds))]
    assert ds.lengths == lengths and ds.stats.replacements == 0
    assert ds.scan() == lengths  # once


def test_an_epoch_is_exactly_valid_records_times_repeat(tmp_path, tokenizer, config):
    # 10 records of which 3 bad, repeat_time 2.5: 7 valid → 17 samples, each valid record
    # 2 or 3 times, never a bad record's slot filled by a good one.
    records = [{"conversations": turns(f"q{i}", f"a{i}")} for i in range(10)]
    for i in (2, 5, 6):
        records[i] = "not json"
    write_jsonl(tmp_path / "t.jsonl", records)
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"t": {"root": "", "annotation": "t.jsonl", "repeat_time": 2.5}}))
    ds = SFTDataset(meta, tokenizer, config, seed=1)
    assert len(ds) == int(7 * 2.5) == 17
    seen = [answer(tokenizer, ds[i]) for i in range(len(ds))]
    counts = {a: seen.count(a) for a in set(seen)}
    assert set(counts) == {f"a{i}" for i in (0, 1, 3, 4, 7, 8, 9)}
    assert sorted(counts.values()) == [2, 2, 2, 2, 3, 3, 3]
    assert ds.summary() == {"valid": 7, "bad": {"bad_json": 3}, "samples_per_epoch": 17}


def test_paths_leaving_the_root_are_refused_unless_allowed(tmp_path, media, tokenizer, config):
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (56, 56), (1, 2, 3)).save(data / "in.png")
    records = [{"image": "in.png", "conversations": turns()},
               {"image": "../small.jpg", "conversations": turns()},            # 2: ../
               {"image": str(media / "small.jpg"), "conversations": turns()},  # 3: absolute
               {"image": str(data / "in.png"), "conversations": turns()},      # absolute, inside
               {"image": "./in.png", "conversations": turns()}]
    ann = write_jsonl(data / "ann.jsonl", records)
    ds = SFTDataset(ann, tokenizer, config)
    assert len(ds) == 3 and ds.bad_records == {"outside_root": 2}
    assert f"{ann}:2: '../small.jpg' leaves the data root {data}" in ds.report()
    assert f"{ann}:3:" in ds.report()
    allowed = SFTDataset(ann, tokenizer, config, allow_outside_root=True)
    assert len(allowed) == 5 and allowed.bad_records == {}


def test_every_bad_place_is_written_not_only_the_first_five(tmp_path, tokenizer, config):
    records = [{"conversations": turns()}] + ["{broken"] * 8
    ds = make(tmp_path, records, tokenizer, config, max_examples=5)
    ds.scan()
    report = ds.report()
    assert report.count("ann.jsonl:") == 5 and "… and 3 more" in report
    rows = [json.loads(line) for line in
            ds.write_bad_records(tmp_path / "out" / "bad.jsonl").read_text().splitlines()]
    assert [r["place"] for r in rows] == [f"{tmp_path / 'ann.jsonl'}:{n}" for n in range(2, 10)]
    assert {r["reason"] for r in rows} == {"bad_json"}


def test_strict_mode_names_file_line_and_reason(tmp_path, media, tokenizer, config):
    records = [{"conversations": turns()}, {"image": "gone.png", "conversations": turns()}]
    ds = make(tmp_path, records, tokenizer, config, strict=True)
    with pytest.raises(BadRecordError) as info:
        ds[0]  # every record is checked on first use
    assert str(info.value).startswith(f"{tmp_path / 'ann.jsonl'}:2: missing_image: no such file")
    assert info.value.reason == "missing_image"
    with pytest.raises(BadRecordError, match=r"ann.jsonl:2: missing_image"):
        make(tmp_path, records, tokenizer, config, strict=True).scan()


def test_truncation_keeps_image_blocks_whole(tmp_path, media, tokenizer, config):
    long_answer = "word " * 400
    records = [{"image": "small.jpg", "conversations": turns("Describe.", long_answer)}]
    full = make(tmp_path, records, tokenizer, config, max_seq_length=100_000)[0]
    limit = len(full["input_ids"]) - 300
    sample = make(tmp_path, records, tokenizer, config, max_seq_length=limit)[0]
    assert len(sample["input_ids"]) == limit == len(sample["labels"])
    assert torch.equal(sample["input_ids"], full["input_ids"][:limit])
    assert count(tokenizer, sample, IMG_CONTEXT_TOKEN) == TOKENS_PER_TILE
    assert count(tokenizer, sample, IMG_END_TOKEN) == 1
    assert (sample["labels"] != IGNORE_INDEX).any()


def test_sample_whose_images_exceed_the_limit_is_dropped_as_too_long(tmp_path, media, tokenizer,
                                                                     config):
    records = [{"image": ["wide.png", "wide.png"], "conversations": turns("<image><image>")},
               {"conversations": turns("short", "ok")}]
    ok = make(tmp_path, records, tokenizer, config, max_seq_length=100_000)
    img_end = tokenizer.convert_tokens_to_ids(IMG_END_TOKEN)
    last_image_end = int((ok[0]["input_ids"] == img_end).nonzero()[-1]) + 1
    ds = make(tmp_path, records, tokenizer, config, max_seq_length=last_image_end - 1)
    assert len(ds) == 1 and ds.bad_records == {"too_long": 1}
    assert answer(tokenizer, ds[0]) == "ok" and "images end at token" in ds.report()
    # Exactly at the end of the images: no reply token left, also too long.
    ds = make(tmp_path, records, tokenizer, config, max_seq_length=last_image_end)
    assert len(ds) == 1 and "no reply token" in ds.report()


def test_meta_file_source_with_fractional_repeat(tmp_path, tokenizer, config):
    ann = write_jsonl(tmp_path / "t.jsonl", [{"conversations": turns(f"q{i}", f"a{i}")}
                                             for i in range(10)])
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"t": {"root": "", "annotation": "t.jsonl", "repeat_time": 1.5}}))
    ds = SFTDataset(meta, tokenizer, config, seed=3)
    again = SFTDataset(meta, tokenizer, config, seed=3)
    assert len(ds) == 15
    picks = [reply_text(tokenizer, ds[i]) for i in range(10, 15)]
    assert picks == [reply_text(tokenizer, again[i]) for i in range(10, 15)]
    assert ann.is_file()


def test_pickles_for_dataloader_workers(tmp_path, tokenizer, config):
    ds = make(tmp_path, [{"conversations": turns()}], tokenizer, config)
    first = ds[0]["input_ids"]
    clone = pickle.loads(pickle.dumps(ds))  # an open file handle would not pickle
    assert torch.equal(clone[0]["input_ids"], first)


def test_configuration_errors(tmp_path, tokenizer, config):
    path = write_jsonl(tmp_path / "a.jsonl", [{"conversations": turns()}])
    with pytest.raises(ConfigError, match="needs a template"):
        SFTDataset(path, tokenizer, config.replace(template=None))
    with pytest.raises(ConfigError, match="meta .json file, a .jsonl"):
        SFTDataset(tmp_path / "a.txt", tokenizer, config)
    with pytest.raises(ConfigError, match="no such annotation file"):
        SFTDataset(tmp_path / "absent.jsonl", tokenizer, config)
