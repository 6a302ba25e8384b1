"""The choice judge as VLMEvalKit's `extract_answer_from_item` runs it: up to three asks until a
reply reads, then a (seeded) draw among the letters and Z; replies read with `can_infer`.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tilevl.eval.judge import CHOICE_ATTEMPTS, Judge

OPTIONS = {"A": "red", "B": "blue"}


class _Scripted(BaseHTTPRequestHandler):
    replies: list = []
    asked = 0

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        content = _Scripted.replies[min(_Scripted.asked, len(_Scripted.replies) - 1)]
        _Scripted.asked += 1
        data = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Judge(f"http://127.0.0.1:{server.server_address[1]}/v1", "scripted")
    server.shutdown()


def _script(replies):
    _Scripted.replies, _Scripted.asked = replies, 0


def test_judge_is_asked_again_until_its_reply_reads(judge):
    _script(["Hmm, hard to say", "the answer is b"])
    assert judge.choose("Which colour?", OPTIONS, "the cold one") == "B"
    assert _Scripted.asked == 2 and judge.decided == 1 and judge.guessed == 0


def test_judge_saying_z_is_a_decision(judge):
    _script(["Z"])
    assert judge.choose("Which colour?", OPTIONS, "a spider") == "Z"
    assert _Scripted.asked == 1 and judge.decided == 1


def test_unreadable_judge_replies_end_in_a_reproducible_draw(judge):
    _script(["I cannot tell"])
    first = judge.choose("Which colour?", OPTIONS, "the cold one")
    assert _Scripted.asked == CHOICE_ATTEMPTS == 3
    assert first in ("A", "B", "Z") and judge.guessed == 1 and judge.decided == 0
    picks = {judge.choose("Which colour?", OPTIONS, "the cold one") for _ in range(3)}
    assert picks == {first}
    assert judge.summary()["guessed"] == 4


def test_an_unreachable_judge_is_not_asked_three_times():
    # a closed port: one failed request (retries=1), then the draw, as upstream's retries end
    judge = Judge("http://127.0.0.1:9/v1", "nobody", retries=1, timeout=0.5)
    assert judge.choose("Which colour?", OPTIONS, "the cold one") in ("A", "B", "Z")
    assert len(judge.errors) == 1 and judge.guessed == 1 and judge.decided == 0
