"""The translation pipeline against a fake OpenAI server on 127.0.0.1 and the local `tiny` model:
the paper's prompt, markup survival (a dropped <box> is reported with file:line, not written),
values that need no translation, and resuming."""

from __future__ import annotations

import argparse
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tilevl.jsonl import read_jsonl_lines
from tilevl.recipes.translate import (
    LocalBackend,
    OpenAIBackend,
    markup_problems,
    needs_translation,
    translate_file,
    translation_prompt,
)

pytestmark = pytest.mark.usefixtures("one_thread")


RECORDS = [
    {"id": "a", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is in the picture?"},
        {"from": "gpt", "value": "A red circle on a white page."}]},
    {"id": "b", "image": "b.png", "conversations": [
        {"from": "human", "value": "<image>\nWhere is <ref>the cat</ref>?"},
        {"from": "gpt", "value": "<ref>the DROPBOX cat</ref><box>[[10, 20, 300, 400]]</box>"}]},
    {"id": "c", "image": "c.png", "conversations": [
        {"from": "human", "value": "<image>\nWhich colour?\nA. red\nB. blue"},
        {"from": "gpt", "value": "B"}]},
    {"conversations": [{"from": "human", "value": "Say hello in a friendly way."},
                       {"from": "gpt", "value": "Hello there, friend!"}]},
    {"id": "e", "conversations": [
        {"from": "human", "value": "<image>\nFind the dog."},
        {"from": "gpt", "value": "<ref>the SHIFT dog</ref><box>[[1, 2, 3, 4]]</box>"}]},
]


class FakeOpenAI(BaseHTTPRequestHandler):
    """Translates by tagging the text; breaks it where the text asks (DROPBOX, SHIFT)."""

    requests: list[dict] = []
    sabotage = True

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        text = body["messages"][1]["content"].removeprefix("Text for translation: ")
        reply = "【中】" + text
        if self.sabotage and "DROPBOX" in text:
            reply = re.sub(r"<box>.*?</box>", "", reply)
        if self.sabotage and "SHIFT" in text:
            reply = reply.replace("[[1, 2, 3, 4]]", "[[1, 2, 3, 5]]")
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    FakeOpenAI.requests, FakeOpenAI.sabotage = [], True
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def data(tmp_path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
    return path


def test_the_prompt_is_the_papers():
    prompt = translation_prompt("zh", keep_markup=False)
    assert prompt.startswith("You are a translator proficient in English and Chinese. Your task is "
                             "to translate the following English text into Chinese, focusing on a "
                             "natural and fluent result that avoids \u201ctranslationese.\u201d")
    for point in ("1. Keep proper nouns, brands, and geographical names in English.",
                  "5. For acronyms, provide the full form in Chinese with the English acronym in "
                  "parentheses."):
        assert point in prompt
    assert "<box>" not in prompt and "<box>" in translation_prompt("zh")
    assert "Japanese" in translation_prompt("ja")


def test_markup_checks():
    box = "<ref>cat</ref><box>[[10, 20, 300, 400]]</box>"
    assert markup_problems(box, "<ref>猫</ref><box>[[10, 20, 300, 400]]</box>") == []
    assert markup_problems(box, "<ref>猫</ref>") == [
        "'<box>' 1 → 0", "'</box>' 1 → 0", "coordinates [[10, 20, 300, 400]] → []"]
    assert markup_problems(box, "<ref>猫</ref><box>[[10, 20, 300, 401]]</box>") == [
        "coordinates [[10, 20, 300, 400]] → [[10, 20, 300, 401]]"]
    assert markup_problems("<image>\nhi", "你好") == ["'<image>' 1 → 0"]
    assert not needs_translation("B") and not needs_translation("<box>[[1, 2, 3, 4]]</box>")
    assert needs_translation("<ref>the cat</ref>") and needs_translation("Yes")


def test_openai_backend_reports_broken_markup_and_resumes(server, data, tmp_path):
    out = tmp_path / "out.jsonl"
    backend = OpenAIBackend(server, "fake-translator", workers=3)
    report = translate_file(backend, data, out, "zh", batch_size=2, progress=False)
    assert (report["written"], report["failed"], report["values_copied"]) == (3, 2, 1)
    assert [(f["where"], f["id"]) for f in report["failures"]] == [
        (f"{data}:2", "b"), (f"{data}:5", "e")]
    assert report["failures"][0]["problems"] == [
        "conversations[1]: '<box>' 1 → 0", "conversations[1]: '</box>' 1 → 0",
        "conversations[1]: coordinates [[10, 20, 300, 400]] → []"]
    assert "coordinates [[1, 2, 3, 4]] → [[1, 2, 3, 5]]" in report["failures"][1]["problems"][0]
    written = {r["id"]: r for _, r in read_jsonl_lines(out)}
    assert set(written) == {"a", "c", "in-4"}  # the id-less line gets FILE_STEM-LINE
    assert written["a"]["conversations"][0]["value"] == "<image>\n【中】What is in the picture?"
    assert written["c"]["conversations"][1]["value"] == "B"  # a bare letter is copied
    asked = FakeOpenAI.requests
    assert len(asked) == 9 and all(r["model"] == "fake-translator" for r in asked)
    assert asked[0]["messages"][0] == {"role": "system", "content": translation_prompt("zh")}
    assert not any("<image>" in r["messages"][1]["content"] for r in asked)
    saved = json.loads((tmp_path / "out.report.json").read_text())
    assert saved["failed"] == 2 and saved["prompt"]["source"].startswith("InternVL 1.5")

    FakeOpenAI.requests, FakeOpenAI.sabotage = [], False
    again = translate_file(backend, data, out, "zh", batch_size=2, progress=False)
    assert (again["already_done"], again["written"], again["failed"]) == (3, 2, 0)
    assert len(FakeOpenAI.requests) == 4  # only b and e are asked again
    assert [r["id"] for _, r in read_jsonl_lines(out)] == ["a", "c", "in-4", "b", "e"]


def test_unreachable_endpoint_is_a_reported_failure(data, tmp_path):
    backend = OpenAIBackend("http://127.0.0.1:9/v1", "x", retries=1, timeout=2)
    report = translate_file(backend, data, tmp_path / "out.jsonl", limit=1, progress=False)
    assert report["failed"] == 1 and "failed 1x" in report["failures"][0]["problems"][0]


def test_command_exit_status_and_file_line(server, data, tmp_path, capsys):
    from tilevl.recipes.commands import add_recipe_parsers

    parser = argparse.ArgumentParser()
    add_recipe_parsers(parser.add_subparsers())
    args = parser.parse_args(["recipe", "translate", "--data", str(data), "--out",
                              str(tmp_path / "o.jsonl"), "--backend", f"openai:{server}",
                              "--model-name", "fake", "--no-progress"])
    assert args.func(args) == 0  # 3 written, 2 failed: counted and listed, not a failed run
    captured = capsys.readouterr()
    assert "3 records translated into Chinese" in captured.out and "2 failed" in captured.out
    assert f"{data}:2: b: conversations[1]: '<box>' 1 → 0" in captured.err
    assert "2 record(s) not written" in captured.err


def test_translate_exit_status():
    from tilevl.recipes.commands import translate_exit_status

    assert translate_exit_status({"written": 3, "failed": 2}) == 0
    assert translate_exit_status({"written": 3, "failed": 2}, strict=True) == 1
    assert translate_exit_status({"written": 0, "failed": 5}) == 1  # nothing got through
    assert translate_exit_status({"written": 0, "failed": 0}) == 0  # all done already


def test_local_tiny_model_translates_in_batches(tiny_model, tokenizer, data, tmp_path):
    out = tmp_path / "local.jsonl"
    # Inside the chat template a literal <image> would be an image slot: it must not crash.
    two = {"id": "two", "conversations": [
        {"from": "human", "value": "Image-1: <image>\nImage-2: <image>\nWhat differs?"},
        {"from": "gpt", "value": "The colour."}]}
    with open(data, "a", encoding="utf-8") as f:
        f.write(json.dumps(two) + "\n")
    backend = LocalBackend(tiny_model, tokenizer, batch_size=4, max_new_tokens=6, name="tiny")
    report = translate_file(backend, data, out, "zh", progress=False)
    # Random weights reply with noise: text-only values pass, boxes cannot survive.
    written = {r["id"]: r for _, r in read_jsonl_lines(out)}
    assert {"a", "c", "in-4"} <= set(written)
    assert {f["id"] for f in report["failures"]} <= {"b", "e", "two"}
    assert {"b", "e"} <= {f["id"] for f in report["failures"]}
    assert written["a"]["conversations"][0]["value"].startswith("<image>\n")
    assert report["backend"] == {"backend": "local", "model": "tiny", "max_new_tokens": 6}
