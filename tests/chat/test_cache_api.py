"""chat, batch_chat and ChatSession use transformers' current cache API: no deprecation notice.

transformers 5.x renamed `past_key_values` to `cache` (the old name warns, and goes in a later
release); a notice on every turn would also mean chat breaks on the next upgrade.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

import torch

from tilevl.chat.engine import batch_chat
from tilevl.chat.session import ChatSession

GREEDY = dict(max_new_tokens=4, do_sample=False)


@contextlib.contextmanager
def deprecation_notices():
    """Collect every warning and every transformers log record that says "deprecat"."""
    found: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            if "deprecat" in record.getMessage().lower():
                found.append(record.getMessage())

    handler, logger = Collect(logging.DEBUG), logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield found
        found.extend(str(w.message) for w in caught if "deprecat" in str(w.message).lower()
                     or issubclass(w.category, (DeprecationWarning, FutureWarning)))
    finally:
        logger.removeHandler(handler)


def test_chat_batch_chat_and_session_emit_no_deprecation(tiny_model, tokenizer):
    pixels = torch.randn(3, 3, 56, 56)
    questions = ["<image>\nWhat is it?", "<image>\nDescribe the image in detail, please."]
    with deprecation_notices() as found:
        tiny_model.chat(tokenizer, pixels, "Describe the image.", GREEDY)
        batch_chat(tiny_model, tokenizer, pixels, questions, GREEDY, num_patches_list=[1, 2])  # shared prefix
        batch_chat(tiny_model, tokenizer, None, ["Hi", "Hello"], GREEDY)  # plain left-padded batch
        session = ChatSession(tiny_model, tokenizer, generation=GREEDY)
        session.ask("What is this?", images=[pixels[:1]])
        session.ask("And its colour?")  # reuses the cache
        session.ask("Once more.", generation=dict(GREEDY, num_beams=2))
    assert found == []


def test_the_server_scheduler_emits_no_deprecation(tiny_model, tokenizer):
    """The HTTP server's batching scheduler drives the LLM's cache itself: same API."""
    from tests.serve.test_scheduler import _scheduler, _work

    with deprecation_notices() as found:  # warnings from the scheduler's thread land here too
        sched = _scheduler(tiny_model, tokenizer, max_batch_size=4)
        sched.start()
        try:
            jobs = [_work(tiny_model, tokenizer, q, max_new_tokens=4) for q in ("Hello there", "a")]
            for work, _ in jobs:
                sched.submit(work)
            assert all(sink.done.wait(30) for _, sink in jobs)
        finally:
            sched.stop()
    assert found == []
