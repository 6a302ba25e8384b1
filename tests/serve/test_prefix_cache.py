"""The cross-request prefix cache: keys, LRU budget, and replies equal to the uncached path.

A conversation resent turn by turn (as OpenAI clients do) must give the same greedy token
ids with the cache as without it, while the image goes through the vision tower once and
each turn prefills only what is new.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tilevl.chat.engine import model_template, pad_id, prepare_chat_prompt
from tilevl.inputs.image import preprocess
from tilevl.inputs.template import stop_token_ids
from tilevl.serve.prefix_cache import BLOCK, PrefixCache, image_key, prompt_keys
from tilevl.serve.scheduler import BatchScheduler, SamplingParams, Work
from tests.serve.helpers import make_image
from tests.serve.test_scheduler import Collector


def _kv(length: int, fill: float = 1.0, layers: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.full((1, 2, length, 4), fill), torch.full((1, 2, length, 4), -fill)) for _ in range(layers)]


def test_image_slots_are_keyed_by_the_picture_not_the_id():
    a, b = image_key(torch.zeros(2, 3, 8, 8)), image_key(torch.ones(2, 3, 8, 8))
    assert a == image_key(torch.zeros(2, 3, 8, 8)) and a != b
    ids = [5, 9, 9, 9, 9, 6]  # 9 = <IMG_CONTEXT>, one image of 4 slots
    with_a, with_b = prompt_keys(ids, 9, [a], [4]), prompt_keys(ids, 9, [b], [4])
    assert (with_a[[0, 5]] == [5, 6]).all() and (with_a[1:5] < 0).all() and len(set(with_a[1:5])) == 4
    assert (with_a[1:5] != with_b[1:5]).all()


def test_longest_prefix_by_token_and_entries_superseded():
    cache = PrefixCache(budget_bytes=2**20)
    first = np.arange(3 * BLOCK + 5, dtype=np.int64)
    cache.insert(first, _kv(len(first)))
    assert cache.lookup(np.arange(BLOCK - 1, dtype=np.int64), 100).length == 0  # no full block yet
    other = first.copy()
    other[2 * BLOCK + 3] = -7  # differs inside the third block
    match = cache.lookup(other, 1000)
    assert match.length == 2 * BLOCK + 3 and match.kv[0][0].shape == (1, 2, 2 * BLOCK + 3, 4)
    assert cache.lookup(first, len(first) - 1).length == len(first) - 1  # one token is left to feed
    longer = np.arange(5 * BLOCK, dtype=np.int64)  # a next turn: extends the first prompt
    cache.insert(longer, _kv(len(longer), 2.0))
    assert cache.summary()["prefixes"] == 1  # the first entry is contained in the new one
    match = cache.lookup(longer, 10**6)
    assert match.length == len(longer) and float(match.kv[1][1][0, 0, 0, 0]) == -2.0


def test_budget_evicts_the_least_recently_used():
    one = sum(k.numel() * 4 + v.numel() * 4 for k, v in _kv(2 * BLOCK))
    cache = PrefixCache(budget_bytes=2 * one)
    prompts = [np.arange(2 * BLOCK, dtype=np.int64) + 1000 * k for k in range(3)]
    cache.insert(prompts[0], _kv(2 * BLOCK))
    cache.insert(prompts[1], _kv(2 * BLOCK))
    assert cache.lookup(prompts[0], 10**6).length  # 0 is now the most recently used
    cache.insert(prompts[2], _kv(2 * BLOCK))
    assert cache.used <= cache.budget and cache.stats["evictions"] == 1
    assert cache.lookup(prompts[1], 10**6).length == 0 and cache.lookup(prompts[0], 10**6).length
    calls = []
    features = cache.image_features(b"k" * 16, lambda: calls.append(1) or torch.zeros(1, 4, 8))
    assert cache.image_features(b"k" * 16, lambda: calls.append(1)) is features and calls == [1]


@pytest.fixture(scope="module")
def tiny():
    from tilevl.resolve import open_model

    return open_model("tiny", quiet=True)


class TokenScheduler(BatchScheduler):
    """Records every choice's token ids (replies are compared by ids, not text)."""

    def _advance(self, row, token):
        self.ids.setdefault(id(row.work), (row.work, []))[1].append(token)  # the work kept alive
        return super()._advance(row, token)


def _conversation(model, tok, cache: PrefixCache | None, turns: int = 4):
    """A client resending the whole conversation each turn; returns each turn's token ids."""
    template = model_template(model)
    sched = TokenScheduler(model, tok, eos_ids=stop_token_ids(tok, template), text_stops=template.stop_strings,
                           pad_id=pad_id(tok, template), prefix_cache=cache)
    sched.ids = {}
    tiles = preprocess(make_image(100, 60, seed=5), model.image_settings)
    history, replies = [], []
    sched.start()
    try:
        for turn in range(turns):
            question = f"Question {turn}: what else is there?"
            ids, recorded = prepare_chat_prompt(model, tok, question, history, [tiles.shape[0]], template)
            sink = Collector()
            work = Work(ids, tiles, 1, SamplingParams(max_new_tokens=10), sink.update, sink.error,
                        image_tiles=[tiles.shape[0]])
            sched.submit(work)
            assert sink.done.wait(60)
            replies.append(sched.ids[id(work)][1])
            history.append((recorded, sink.texts[0]))
    finally:
        sched.stop()
    return replies


def test_resent_conversation_gives_the_same_token_ids_and_skips_the_work(tiny):
    model, tok = tiny
    plain = _conversation(model, tok, None)
    cache = PrefixCache(budget_bytes=2**28)
    cached = _conversation(model, tok, cache)
    assert cached == plain
    stats = cache.summary()
    assert stats["images_encoded"] == 1  # the image went through the vision tower once
    assert stats["hits"] == 3  # every turn after the first started from the previous prompt
    image_tokens = preprocess(make_image(100, 60, seed=5), model.image_settings).shape[0] * model.num_image_token
    assert stats["reused_tokens"] > 3 * image_tokens and stats["prefixes"] == 1
    # a second client opening with the same picture and question reuses all but one token
    again = _conversation(model, tok, cache, turns=1)
    assert again == plain[:1] and cache.summary()["hits"] == 4


def test_resent_images_are_not_decoded_again():
    from tilevl.serve.prefix_cache import TileMemo

    memo, made = TileMemo(capacity=2), []

    def make(value):
        return lambda: made.append(value) or torch.full((1, 3, 4, 4), float(value))

    first = memo.tiles("data:image/png;base64,AAAA", 6, make(1))
    assert memo.tiles("data:image/png;base64,AAAA", 6, make(2)) == first and made == [1]
    memo.tiles("data:image/png;base64,AAAA", 2, make(3))  # another tiling is another entry
    memo.tiles("/media/cat.png", 6, make(4))
    memo.tiles("/media/cat.png", 6, make(5))  # a file may change: never memoised
    assert made == [1, 3, 4, 5] and memo.hits == 1


def test_the_flag_turns_the_cache_off_and_health_counts(server):
    import argparse

    import httpx

    from tilevl.serve.commands import _add_common, settings_from_args

    parser = argparse.ArgumentParser()
    _add_common(parser, port=1)
    assert settings_from_args(parser.parse_args(["tiny"])).prefix_cache is True
    off = settings_from_args(parser.parse_args(["tiny", "--no-prefix-cache", "--cache-gb", "0.5"]))
    assert off.prefix_cache is False and off.cache_gb == 0.5
    before = httpx.get(server.url + "/health").json()["prefix_cache"]
    messages = [{"role": "user", "content": "Tell me about caches, please."}]
    for _ in range(2):
        httpx.post(server.url + "/v1/chat/completions", timeout=60,
                   json={"model": "tiny", "max_tokens": 2, "messages": messages}).raise_for_status()
    after = httpx.get(server.url + "/health").json()["prefix_cache"]
    assert after["hits"] >= before["hits"] + 1 and after["used_bytes"] <= after["budget_bytes"]
