"""The batching scheduler without HTTP: replies equal transformers' generate, row by row.

Requests arrive while others decode (continuous batching), share the system-prompt cache,
carry images, sample with seeds, stop at strings, and leave the batch when cancelled.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from tilevl.chat.engine import model_template, pad_id, prepare_chat_prompt
from tilevl.inputs.image import preprocess
from tilevl.inputs.template import stop_token_ids
from tilevl.serve.scheduler import BatchScheduler, QueueFull, SamplingParams, Work, _visible
from tests.serve.helpers import make_image


@pytest.fixture(scope="module")
def tiny():
    from tilevl.resolve import open_model

    return open_model("tiny", quiet=True)


def _scheduler(model, tokenizer, *, prefix: bool = True, **kwargs) -> BatchScheduler:
    template = model_template(model)
    shared = []
    if prefix:
        ids, _ = prepare_chat_prompt(model, tokenizer, "x", None, [], template)
        end = stop_token_ids(tokenizer, template)[0]
        shared = ids[:ids.index(end) + 1]
    return BatchScheduler(model, tokenizer, eos_ids=stop_token_ids(tokenizer, template),
                          text_stops=template.stop_strings, pad_id=pad_id(tokenizer, template),
                          shared_prefix=shared, **kwargs)


class Collector:
    """Gathers a request's updates; `done` is set when every choice has finished."""

    def __init__(self, n: int = 1):
        self.texts, self.reasons, self.tokens, self.done = [""] * n, [None] * n, 0, threading.Event()
        self.deltas: list[str] = []

    def update(self, items):
        for u in items:
            self.texts[u.index] += u.text
            self.deltas.append(u.text)
            if u.finish_reason:
                self.reasons[u.index] = u.finish_reason
                self.tokens += u.completion_tokens
        if all(self.reasons):
            self.done.set()

    def error(self, status, message):
        raise AssertionError(f"{status}: {message}")


def _work(model, tokenizer, question, tiles=None, n=1, **params):
    ids, _ = prepare_chat_prompt(model, tokenizer, question, None, [tiles.shape[0]] if tiles is not None else [],
                                 model_template(model))
    sink = Collector(n)
    params.setdefault("max_new_tokens", 16)
    return Work(ids, tiles, n, SamplingParams(**params), sink.update, sink.error), sink


@pytest.mark.parametrize("prefix", [True, False])
def test_staggered_greedy_requests_equal_generate(tiny, prefix):
    model, tok = tiny
    sched = _scheduler(model, tok, prefix=prefix, max_batch_size=8)
    sched.start()
    tiles = preprocess(make_image(100, 60), model.image_settings)
    questions = ["Hello there", "<image>\nDescribe it", "a", "A longer question about many things"]
    jobs = []
    try:
        for k, q in enumerate(questions):
            jobs.append(_work(model, tok, q, tiles if "<image>" in q else None))
            sched.submit(jobs[-1][0])
            time.sleep(0.01 * k)  # later ones join a batch that is already decoding
        for _, sink in jobs:
            assert sink.done.wait(30)
    finally:
        sched.stop()
    for q, (_, sink) in zip(questions, jobs):
        pixels = tiles if "<image>" in q else None
        assert sink.texts[0] == model.chat(tok, pixels, q, dict(max_new_tokens=16, do_sample=False))
        assert 1 <= sink.tokens <= 16
    assert sched.stats["prefix_hits"] == (len(questions) if prefix else 0)
    assert sched.running == 0


def test_seeded_sampling_is_reproducible_and_choices_differ(tiny):
    model, tok = tiny
    sched = _scheduler(model, tok, max_batch_size=8)
    sched.start()
    try:
        results = []
        for _ in range(2):
            work, sink = _work(model, tok, "Pick", n=3, temperature=1.2, top_p=0.9, top_k=50, seed=3,
                               presence_penalty=0.5, frequency_penalty=0.2, repetition_penalty=1.1)
            sched.submit(work)
            assert sink.done.wait(30)
            results.append(sink.texts)
    finally:
        sched.stop()
    assert results[0] == results[1] and len(set(results[0])) > 1


def test_stop_strings_and_held_back_text(tiny):
    model, tok = tiny
    reference = model.chat(tok, None, "Tell", dict(max_new_tokens=24, do_sample=False))
    stop = reference[4:6]
    sched = _scheduler(model, tok)
    sched.start()
    try:
        work, sink = _work(model, tok, "Tell", max_new_tokens=24, stop=(stop,))
        sched.submit(work)
        assert sink.done.wait(30)
    finally:
        sched.stop()
    assert sink.texts[0] == reference[:reference.index(stop)].strip() and sink.reasons == ["stop"]
    assert stop not in "".join(sink.deltas)


def test_cancelled_rows_leave_the_batch_and_a_full_queue_refuses(tiny):
    model, tok = tiny
    sched = _scheduler(model, tok, max_batch_size=1, queue_size=1)
    sched.start()
    try:
        long_work, long_sink = _work(model, tok, "Go", max_new_tokens=1500)
        sched.submit(long_work)
        deadline = time.monotonic() + 10
        while sched.running == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        waiting, _ = _work(model, tok, "Wait")
        sched.submit(waiting)
        with pytest.raises(QueueFull):
            sched.submit(_work(model, tok, "Too many")[0])
        long_work.cancel()
        waiting.cancel()
        while (sched.running or sched.waiting) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert sched.running == 0 and not long_sink.done.is_set()
        assert sched.stats["cancelled"] >= 1
    finally:
        sched.stop()


def test_a_failing_step_fails_only_its_requests(tiny):
    model, tok = tiny
    sched = _scheduler(model, tok)
    errors = []
    bad_tiles = torch.zeros(1, 3, 9, 9)  # the wrong size: the vision tower raises
    ids, _ = prepare_chat_prompt(model, tok, "<image>\nx", None, [1], model_template(model))
    sched.submit(Work(ids, bad_tiles, 1, SamplingParams(max_new_tokens=4), lambda items: None,
                      lambda status, message: errors.append(status)))
    sched.start()
    try:
        deadline = time.monotonic() + 10
        while not errors and time.monotonic() < deadline:
            time.sleep(0.01)
        assert errors == [500]
        work, sink = _work(model, tok, "still alive?", max_new_tokens=4)
        sched.submit(work)
        assert sink.done.wait(30)
    finally:
        sched.stop()


def test_visible_text_holds_back_what_may_still_change():
    assert _visible("Hello wor", ("world!",), final=False) == "Hello"
    assert _visible("Hello\ufffd", (), final=False) == "Hello"
    assert _visible("  Hello  ", (), final=False) == "Hello"
    assert _visible("  Hello  ", (), final=True) == "Hello"
