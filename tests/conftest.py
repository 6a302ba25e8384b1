"""Shared fixtures: a tiny tokenizer and tiny models, built in-process and seeded."""

from __future__ import annotations

import pytest
import torch

from tilevl.checkpoint.tokenizer import IMG_CONTEXT_TOKEN, build_bpe_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    """A byte-level BPE tokenizer (≤ 512 ids) with the InternVL special tokens."""
    return build_bpe_tokenizer(vocab_size=400)


@pytest.fixture()
def tiny_model(tokenizer):
    """The `tiny` preset with seeded random weights, wired to the tiny tokenizer."""
    from tilevl import build_model

    model = build_model("tiny", seed=0)
    model.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    return model


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA: skip them, saying why, on machines without one."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible); the CPU tests cover the same code")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture()
def one_thread():
    """One intra-op thread: on 2 shared cores small models run several times faster so."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
