"""Continuous batching: one worker thread decodes every running request in one batch.

Waiting requests are admitted between decoding steps: they are prefilled together (left
padded), then their KV cache rows join the running batch's. The engine sees token ids and
tiles only; it knows nothing of HTTP, and reports text deltas through a callback.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from tilevl.chat.engine import left_pad
from tilevl.serve.prefix_cache import PrefixCache, image_key, prompt_keys

log = logging.getLogger("tilevl.serve")


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens (OpenAI's knobs plus transformers' repetition penalty)."""

    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: no cut
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Update:
    """What happened to one choice in one step: new text and, at the end, why it ended."""

    index: int
    text: str = ""
    finish_reason: str | None = None  # "stop" | "length"
    completion_tokens: int = 0


@dataclass
class Work:
    """One request, ready to run.

    Attributes:
        prompt_ids: the rendered prompt, image slots expanded.
        tiles: [T, 3, S, S] tiles of all its images in slot order, or None.
        n: choices to generate (rows that share the prompt's prefill).
        params: sampling settings.
        on_update: called from the worker thread with this step's updates of this request.
        on_error: called from the worker thread with (status, message) when the engine fails.
        image_tiles: tiles of each image, in slot order (None: one image holds all tiles).
        image_keys: `prefix_cache.image_key` of each image (None: computed when needed).
    """

    prompt_ids: list[int]
    tiles: torch.Tensor | None
    n: int
    params: SamplingParams
    on_update: Callable[[list[Update]], None]
    on_error: Callable[[int, str], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    image_tiles: list[int] | None = None
    image_keys: list[bytes] | None = None

    def cancel(self) -> None:
        """Stop generating for this request (its rows leave the batch at the next step)."""
        self.cancelled.set()


class QueueFull(Exception):
    """The waiting queue holds `queue_size` requests already."""


@dataclass
class _Row:
    work: Work
    index: int
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the visible text already reported
    done: bool = False


class BatchScheduler:
    """Owns the model while it runs: admits work, prefills, decodes, reports.

    Args:
        model: a `VisionLanguageModel` (only this thread touches it once started).
        tokenizer: decodes the replies.
        eos_ids: token ids that end a reply (the template's end tokens).
        text_stops: strings that end a reply wherever they appear in the text.
        pad_id: id written into left padding (masked out).
        max_batch_size: rows (choices) decoded together.
        queue_size: requests that may wait for a free row; more raise QueueFull.
        shared_prefix: ids most prompts start with (the default system block); its KV cache
            is computed once and copied into every prompt that starts with it.
        max_prefill_tokens: prompt tokens prefilled between two decoding steps (at least one
            request is always admitted), so a burst does not stall running replies for long.
        prefix_cache: KV of earlier prompts and image features to reuse (None: none kept).
    """

    # Harmony templates' replies are marked by special tokens (channel headers): keep them.
    keep_special_tokens: bool = False

    def __init__(self, model, tokenizer, *, eos_ids: Sequence[int], text_stops: Sequence[str] = (),
                 pad_id: int, max_batch_size: int = 16, queue_size: int = 64,
                 shared_prefix: Sequence[int] = (), max_prefill_tokens: int = 4096,
                 prefix_cache: PrefixCache | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.eos_ids = set(eos_ids)
        self.text_stops = tuple(s for s in text_stops if s)
        self.pad_id = pad_id
        self.max_batch_size = max_batch_size
        self.queue_size = queue_size
        self.shared_prefix = list(shared_prefix)
        self.max_prefill_tokens = max_prefill_tokens
        self.prefix_cache = prefix_cache
        self._prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer [1, H, P, D]
        self._waiting: deque[Work] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._reset_batch()
        self.stats = {"steps": 0, "prefills": 0, "max_rows": 0, "finished": 0, "cancelled": 0,
                      "prefill_tokens": 0, "prefix_hits": 0}

    # ---- the outside (any thread) -----------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tilevl-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, work: Work) -> None:
        """Queue `work`; raises QueueFull when `queue_size` requests wait already."""
        if work.n > self.max_batch_size:
            raise ValueError(f"n={work.n} is more than max_batch_size={self.max_batch_size}")
        with self._cond:
            if len(self._waiting) >= self.queue_size:
                raise QueueFull(f"{len(self._waiting)} requests are waiting (queue_size={self.queue_size})")
            self._waiting.append(work)
            self._cond.notify()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._rows)

    # ---- the worker thread ------------------------------------------------------------------
    def _reset_batch(self) -> None:
        self._rows: list[_Row] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [B, W] 1 on real tokens
        self._positions: torch.Tensor | None = None  # [B] position id of the next token
        self._pending: torch.Tensor | None = None  # [B] sampled, not yet in the cache

    def _run(self) -> None:
        torch.set_grad_enabled(False)  # per thread: this one only ever runs inference
        while True:
            with self._cond:
                while not self._stopping and not self._waiting and not self._rows:
                    self._cond.wait()
                if self._stopping:
                    break
                admitted = self._admit()
            if admitted:
                self._guard(admitted, self._prefill, admitted)
            if self._rows:
                self._guard([r.work for r in self._rows], self._decode_step)
        for work in list(self._waiting) + list({id(r.work): r.work for r in self._rows}.values()):
            work.on_error(503, "the server is shutting down")

    def _admit(self) -> list[Work]:
        """Take waiting work while its rows fit the batch (called holding the lock)."""
        free = self.max_batch_size - len(self._rows)
        admitted, tokens = [], 0
        while self._waiting and self._waiting[0].n <= free:
            if admitted and tokens + len(self._waiting[0].prompt_ids) > self.max_prefill_tokens:
                break
            work = self._waiting.popleft()
            if work.cancelled.is_set():
                self.stats["cancelled"] += 1
                continue
            admitted.append(work)
            free -= work.n
            tokens += len(work.prompt_ids)
        return admitted

    def _guard(self, works: Sequence[Work], fn, *args) -> None:
        """Run a step; if it fails, fail the requests it touched and keep serving the rest."""
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - a bad step must not kill the server
            log.exception("generation step failed")
            failed = {id(w) for w in works}
            for work in {id(w): w for w in works}.values():
                work.on_error(500, "generation failed inside the server (see the server log)")
            keep = [i for i, r in enumerate(self._rows) if id(r.work) not in failed]
            if len(keep) != len(self._rows):
                try:
                    self._select(keep)
                except Exception:  # noqa: BLE001 - the batch state is unusable: start over
                    for work in {id(r.work): r.work for r in self._rows}.values():
                        work.on_error(500, "generation failed inside the server")
                    self._reset_batch()

    def _prefill(self, works: list[Work]) -> None:
        """Run the prompts of newly admitted work and merge their cache rows into the batch.

        With a prefix cache, a prompt that starts like an earlier one (of any request) is
        prefilled alone from that prefix's KV; the others go the way below, together.
        """
        if self.prefix_cache is not None:
            misses = []
            for work in works:
                match = self.prefix_cache.lookup(self._keys(work), len(work.prompt_ids) - 1)
                if match.length:
                    self._prefill_group([work], match.length, match.kv)
                    self.stats["prefix_hits"] += 1  # as for the shared prefix: started from known KV
                else:
                    misses.append(work)
            works = misses
            if not works:
                return
        prefix = self.shared_prefix
        shared = [w for w in works if prefix and len(w.prompt_ids) > len(prefix)
                  and w.prompt_ids[:len(prefix)] == prefix]
        others = [w for w in works if not any(w is s for s in shared)]
        if shared:
            self._prefill_group(shared, len(prefix))
            self.stats["prefix_hits"] += len(shared)
        if others:
            self._prefill_group(others, 0)

    # ---- the cross-request prefix cache ------------------------------------------------------
    def _image_keys(self, work: Work) -> list[bytes]:
        if work.image_keys is None:
            work.image_keys = [image_key(t) for t in self._split_tiles(work)]
        return work.image_keys

    @staticmethod
    def _split_tiles(work: Work) -> list[torch.Tensor]:
        if work.tiles is None:
            return []
        return list(torch.split(work.tiles, work.image_tiles or [work.tiles.shape[0]]))

    def _keys(self, work: Work):
        """The prompt's cache keys (ids, each image slot standing for its image), computed once."""
        keys = getattr(work, "_cache_keys", None)
        if keys is None:
            tokens = [t.shape[0] * self.model.num_image_token for t in self._split_tiles(work)]
            keys = prompt_keys(work.prompt_ids, self.model.img_context_token_id, self._image_keys(work), tokens)
            work._cache_keys = keys
        return keys

    def _cached_features(self, works: list[Work], skip: int) -> torch.Tensor | None:
        """[1, N, H] visual tokens of the slots after the first `skip` ids of each work, with
        each image through the vision tower only once across requests."""
        parts = []
        for work in works:
            images = self._split_tiles(work)
            if not images:
                continue
            done = sum(1 for t in work.prompt_ids[:skip] if t == self.model.img_context_token_id)
            flat = []
            for tiles, key in zip(images, self._image_keys(work)):
                count = tiles.shape[0] * self.model.num_image_token
                if done >= count:  # all its slots are in the reused prefix
                    done -= count
                    continue
                features = self.prefix_cache.image_features(key, lambda t=tiles: self.model.extract_feature(t))
                flat.append(features.reshape(-1, features.shape[-1])[done:])
                done = 0
            parts.extend(flat)
        return torch.cat(parts)[None] if parts else None

    def _remember(self, works: list[Work], cache: DynamicCache, mask: torch.Tensor) -> None:
        """Keep each prompt's KV (its real columns only: no padding) for later requests."""
        layers = _layers(cache)
        for row, work in enumerate(works):
            real = mask[row].bool()
            kv = [(layer.keys[row:row + 1][:, :, real], layer.values[row:row + 1][:, :, real]) for layer in layers]
            self.prefix_cache.insert(self._keys(work), kv)

    def _prefix_cache(self, rows: int) -> DynamicCache:
        """A cache holding the shared prefix for `rows` rows (computed on first use)."""
        if self._prefix_kv is None:
            llm = self.model.language_model
            ids = torch.tensor([self.shared_prefix], device=self.model.device)
            out = llm(input_ids=ids, cache=DynamicCache(), use_cache=True, logits_to_keep=1)
            self._prefix_kv = [(layer.keys, layer.values) for layer in _layers(out.cache)]
        return DynamicCache(ddp_cache_data=[(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1))
                                            for k, v in self._prefix_kv])

    def _prefill_group(self, works: list[Work], skip: int,
                       prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        """Prefill `works` whose first `skip` ids are a prefix whose KV is known: the shared
        system prefix, or `prefix_kv` (per layer [1, H, skip, D], one work) from the cache.

        The layout is [prefix | left padding | rest of the prompt]: padding in the middle is
        fine, as keys carry their position in RoPE, not their column, and the mask hides it.
        """
        model, llm = self.model, self.model.language_model
        device = model.device
        ids, rest_mask = left_pad([w.prompt_ids[skip:] for w in works], self.pad_id)  # [k, R]
        ids, rest_mask = ids.to(device), rest_mask.to(device)
        if self.prefix_cache is None:
            tiles = [w.tiles for w in works if w.tiles is not None]
            # [T, tokens, H] for all tiles of the group, in row order = slot order of the batch
            features = model.extract_feature(torch.cat(tiles)) if tiles else None
        else:
            features = self._cached_features(works, skip)
        embeds = model.embed_inputs(ids, visual_features=features)
        positions = skip + (rest_mask.cumsum(-1) - 1).clamp(min=0)
        mask = torch.cat([torch.ones(len(works), skip, dtype=rest_mask.dtype, device=device), rest_mask], 1)
        if prefix_kv is not None:
            cache = DynamicCache(ddp_cache_data=prefix_kv)
        else:
            cache = self._prefix_cache(len(works)) if skip else DynamicCache()
        out = llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                  cache=cache, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1].float()  # [k, V]
        if self.prefix_cache is not None:
            self._remember(works, out.past_key_values, mask)
            self.prefix_cache.stats["prefilled_tokens"] += int(rest_mask.sum())
        # n > 1: every choice gets its own copy of the prompt's cache row.
        source = torch.repeat_interleave(torch.arange(len(works), device=device),
                                         torch.tensor([w.n for w in works], device=device))
        cache = out.cache
        if len(source) != len(works):
            cache.batch_select_indices(source)
        rows = []
        for w in works:
            for index in range(w.n):
                gen = None
                if w.params.seed is not None:
                    gen = torch.Generator(device=device).manual_seed((w.params.seed + index) % 2**63)
                rows.append(_Row(w, index, gen))
        self._merge(rows, cache, mask[source], mask.sum(-1)[source])
        self.stats["prefills"] += 1
        self.stats["prefill_tokens"] += int(rest_mask.sum())
        self._sample_and_report(logits[source], range(len(self._rows) - len(rows), len(self._rows)))

    def _merge(self, rows: list[_Row], cache: DynamicCache, mask: torch.Tensor, positions: torch.Tensor) -> None:
        """Append rows to the batch, left-padding the shorter side's cache to one width."""
        if self._cache is None:
            self._rows, self._cache, self._mask, self._positions = rows, cache, mask, positions
            self._pending = torch.zeros(len(rows), dtype=torch.long, device=mask.device)
            return
        width = max(self._mask.shape[1], mask.shape[1])
        old, new = _layers(self._cache), _layers(cache)
        for layer_old, layer_new in zip(old, new):
            for name in ("keys", "values"):
                a, b = getattr(layer_old, name), getattr(layer_new, name)
                setattr(layer_old, name, torch.cat([_pad_left(a, width), _pad_left(b, width)]))
        self._mask = torch.cat([_pad_left(self._mask, width), _pad_left(mask, width)])
        self._positions = torch.cat([self._positions, positions])
        self._pending = torch.cat([self._pending, torch.zeros(len(rows), dtype=torch.long, device=mask.device)])
        self._rows += rows

    def _decode_step(self) -> None:
        """Feed every row its pending token, sample the next one, report, drop finished rows."""
        llm = self.model.language_model
        ones = torch.ones(len(self._rows), 1, dtype=self._mask.dtype, device=self._mask.device)
        self._mask = torch.cat([self._mask, ones], dim=1)
        out = llm(input_ids=self._pending[:, None], attention_mask=self._mask,
                  position_ids=self._positions[:, None], cache=self._cache, use_cache=True)
        self._cache = out.cache
        self._positions = self._positions + 1
        self.stats["steps"] += 1
        self.stats["max_rows"] = max(self.stats["max_rows"], len(self._rows))
        self._sample_and_report(out.logits[:, -1].float(), range(len(self._rows)))

    def _sample_and_report(self, logits: torch.Tensor, row_ids: range) -> None:
        """Pick a token per row, turn it into text updates, then drop rows that ended."""
        rows = [self._rows[i] for i in row_ids]
        tokens = self._sample(logits, rows)
        updates: dict[int, tuple[Work, list[Update]]] = {}
        for i, row, token in zip(row_ids, rows, tokens):
            if row.work.cancelled.is_set():
                continue  # dropped below
            self._pending[i] = token
            update = self._advance(row, token)
            if update is not None:
                updates.setdefault(id(row.work), (row.work, []))[1].append(update)
        for work, items in updates.values():
            try:
                work.on_update(items)
            except Exception:  # noqa: BLE001 - a broken listener cancels only its request
                log.exception("a request's update callback failed; cancelling it")
                work.cancel()
        # Rows of cancelled requests also leave, including those not sampled this time.
        for row in self._rows:
            if row.work.cancelled.is_set() and not row.done:
                row.done = True
                self.stats["cancelled"] += 1
        keep = [i for i, r in enumerate(self._rows) if not r.done]
        if len(keep) != len(self._rows):
            self._select(keep)

    def _sample(self, logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        """[B, V] logits → one token per row under each row's own settings."""
        greedy = logits.argmax(-1).tolist()
        picks = []
        for b, row in enumerate(rows):
            p = row.work.params
            plain = p.presence_penalty == 0 and p.frequency_penalty == 0 and p.repetition_penalty == 1
            if p.temperature == 0 and plain:
                picks.append(greedy[b])
                continue
            scores = logits[b]
            if not plain and row.tokens:
                scores = _penalize(scores, row.tokens, p)
            if p.temperature == 0:
                picks.append(int(scores.argmax()))
                continue
            scores = scores / p.temperature
            if p.top_k and p.top_k < scores.shape[-1]:
                cut = torch.topk(scores, p.top_k).values[-1]
                scores = scores.masked_fill(scores < cut, float("-inf"))
            probs = torch.softmax(scores, -1)
            if p.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                # keep the smallest prefix whose mass reaches top_p (the first token always)
                drop = sorted_probs.cumsum(-1) - sorted_probs >= p.top_p
                probs = probs.scatter(0, order, sorted_probs.masked_fill(drop, 0.0))
            picks.append(int(torch.multinomial(probs, 1, generator=row.generator)))
        return picks

    def _advance(self, row: _Row, token: int) -> Update | None:
        """Add a token to a row; return the text that became visible and the finish reason."""
        params = row.work.params
        finish = None
        if token in self.eos_ids:
            finish = "stop"
        else:
            row.tokens.append(token)
        text = self.tokenizer.decode(row.tokens, skip_special_tokens=not self.keep_special_tokens)
        stops = self.text_stops + params.stop
        cuts = [text.find(s) for s in stops if s in text]
        if cuts:
            text, finish = text[:min(cuts)], "stop"
        if finish is None and len(row.tokens) >= params.max_new_tokens:
            finish = "length"
        visible = _visible(text, stops, final=finish is not None)
        delta = visible[row.sent:]
        row.sent = max(row.sent, len(visible))
        if finish is not None:
            row.done = True
            self.stats["finished"] += 1
            return Update(row.index, delta, finish, len(row.tokens) + (token in self.eos_ids))
        return Update(row.index, delta) if delta else None

    def _select(self, keep: list[int]) -> None:
        """Keep only rows `keep`; cut cache columns that are padding in every remaining row."""
        if not keep:
            self._reset_batch()
            return
        index = torch.tensor(keep, device=self._mask.device)
        self._rows = [self._rows[i] for i in keep]
        self._cache.batch_select_indices(index)
        self._mask, self._positions = self._mask[index], self._positions[index]
        self._pending = self._pending[index]
        used = self._mask.any(0).nonzero()
        first = int(used[0]) if len(used) else 0
        if first:
            for layer in _layers(self._cache):
                layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]
            self._mask = self._mask[:, first:]


def _layers(cache: DynamicCache):
    return cache.layers


def _pad_left(x: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad dim -2 (cache [B, H, L, D]) or dim -1 (mask [B, L]) on the left to `width`."""
    if x.dim() == 2:
        return torch.nn.functional.pad(x, (width - x.shape[-1], 0))
    return torch.nn.functional.pad(x, (0, 0, width - x.shape[-2], 0))


def _penalize(scores: torch.Tensor, tokens: list[int], p: SamplingParams) -> torch.Tensor:
    """OpenAI's presence/frequency penalties and transformers' repetition penalty."""
    scores = scores.clone()
    ids, counts = torch.tensor(tokens, device=scores.device).unique(return_counts=True)
    ids = ids[ids < scores.shape[-1]]
    counts = counts[: len(ids)].to(scores.dtype)
    if p.repetition_penalty != 1:
        seen = scores[ids]
        scores[ids] = torch.where(seen > 0, seen / p.repetition_penalty, seen * p.repetition_penalty)
    scores[ids] -= p.frequency_penalty * counts + p.presence_penalty
    return scores


def _visible(text: str, stops: Sequence[str], *, final: bool) -> str:
    """The part of a reply that can be shown now and will not change.

    The reply is reported stripped (as `clean_response` does), so trailing white space
    waits; so do a half-decoded character (U+FFFD) and a tail that may start a stop string.
    """
    text = text.lstrip()
    if final:
        return text.rstrip()
    while True:  # cutting one kind of tail can expose another ("Hello wor" -> "Hello ")
        cut = text.rstrip().rstrip("\ufffd")
        hold = 0
        for stop in stops:
            for k in range(min(len(stop) - 1, len(cut)), 0, -1):
                if cut.endswith(stop[:k]):
                    hold = max(hold, k)
                    break
        cut = cut[:len(cut) - hold]
        if cut == text:
            return text
        text = cut
