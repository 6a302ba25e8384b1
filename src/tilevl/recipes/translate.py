"""InternVL 1.5's data translation pipeline (Fig. 5): every `conversations[*].value` of a jsonl
training set translated by an LLM with the paper's prompt, markup checked to survive.

Backends: a local tilevl model (`local:MODEL`, batched through `batch_chat`) or any
OpenAI-compatible `/chat/completions` endpoint (`openai:URL`, standard library only).
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tilevl.errors import ConfigError, InputError
from tilevl.jsonl import append_jsonl, iter_jsonl_objects, read_jsonl_lines, write_json

# InternVL 1.5 report (Chen et al. 2024, "How Far Are We to GPT-4V?"), Fig. 5, the data
# translation pipeline's prompt, verbatim. The copy we have lost its line breaks ("points:1.
# Keep"); each numbered point is put on its own line, as the figure lays it out.
TRANSLATION_SYSTEM_PROMPT = (
    "You are a translator proficient in English and {language}. Your task is to translate the "
    "following English text into {language}, focusing on a natural and fluent result that "
    "avoids \u201ctranslationese.\u201d Please consider these points:\n"
    "1. Keep proper nouns, brands, and geographical names in English.\n"
    "2. Retain technical terms or jargon in English, but feel free to explain in {language} if "
    "necessary.\n"
    "3. Use {language} idiomatic expressions for English idioms or proverbs to ensure cultural "
    "relevance.\n"
    "4. Ensure quotes or direct speech sound natural in {language}, maintaining the original\u2019s "
    "tone.\n"
    "5. For acronyms, provide the full form in {language} with the English acronym in parentheses."
)
TRANSLATION_USER_PROMPT = "Text for translation: {text}"  # Fig. 5's user turn
# Ours, not the paper's (its data is translated before markup matters to it): grounding
# records would lose their boxes. Off with keep_markup=False / --paper-prompt.
MARKUP_RULE = ("\n6. Keep the markup <image>, <ref>, </ref>, <box>, </box>, <quad> and </quad> "
               "exactly as written, with the same numbers inside <box>[[...]]</box>; translate "
               "only the words between <ref> and </ref>.")
LANGUAGES = {"zh": "Chinese", "zh-cn": "Simplified Chinese", "zh-tw": "Traditional Chinese",
             "ja": "Japanese", "ko": "Korean", "fr": "French", "de": "German", "es": "Spanish",
             "it": "Italian", "pt": "Portuguese", "ru": "Russian", "ar": "Arabic", "vi": "Vietnamese",
             "th": "Thai", "id": "Indonesian", "en": "English"}

MARKUP_TAGS = ("<image>", "<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>")
_COORDS = re.compile(r"<(box|quad)>(.*?)</\1>", re.DOTALL)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_IMAGE_PREFIX = re.compile(r"^(?:<image>\s*)+")
_WORD = re.compile(r"[^\W\d_]{2,}")
# Inside InternVL's chat template a literal <image> is an image slot; the local backend sends
# this stand-in instead and swaps it back in the reply.
_LOCAL_IMAGE = "<IMAGE>"


def language_name(code: str) -> str:
    """'zh' → 'Chinese'; any other text is taken as the language's name ("Swahili")."""
    return LANGUAGES.get(code.lower(), code)


def translation_prompt(language: str, keep_markup: bool = True) -> str:
    """The system prompt of Fig. 5 for `language` (a code or a name), plus our markup rule.

    Args:
        language: the target language ("zh", "Chinese", …).
        keep_markup: append MARKUP_RULE (False: the paper's prompt only).

    Returns:
        The system prompt text.
    """
    name = language_name(language)
    return TRANSLATION_SYSTEM_PROMPT.format(language=name) + (MARKUP_RULE if keep_markup else "")


# ---- markup ---------------------------------------------------------------------------------------
def markup_signature(text: str) -> dict:
    """What must be identical before and after translation.

    Returns:
        `{"tags": {tag: count}, "coordinates": [[numbers of each <box>/<quad>], ...]}`.
    """
    tags = {tag: text.count(tag) for tag in MARKUP_TAGS if tag in text}
    coordinates = [[float(n) for n in _NUMBER.findall(inner)] for _, inner in _COORDS.findall(text)]
    return {"tags": tags, "coordinates": coordinates}


def markup_problems(before: str, after: str) -> list[str]:
    """How the markup of `after` differs from `before` (empty when it survived).

    Args:
        before: the original text.
        after: its translation.

    Returns:
        Messages like "'<box>' 1 → 0" or "coordinates [[1, 2, 3, 4]] → [[1, 2, 3, 5]]".
    """
    a, b = markup_signature(before), markup_signature(after)
    problems = [f"{tag!r} {a['tags'].get(tag, 0)} → {b['tags'].get(tag, 0)}"
                for tag in MARKUP_TAGS if a["tags"].get(tag, 0) != b["tags"].get(tag, 0)]
    if a["coordinates"] != b["coordinates"]:
        problems.append(f"coordinates {_fmt(a['coordinates'])} → {_fmt(b['coordinates'])}")
    return problems


def _fmt(coordinates: list[list[float]]) -> str:
    return json.dumps([[int(v) if v.is_integer() else v for v in box] for box in coordinates])


def needs_translation(text: str) -> bool:
    """False for values with no word outside the markup ("B", "3", a bare box): copied as is."""
    bare = _COORDS.sub(" ", text)
    for tag in MARKUP_TAGS:
        bare = bare.replace(tag, " ")
    return bool(_WORD.search(bare))


def clean_reply(text: str) -> str:
    """Strip the reply and an echoed "Text for translation:" lead-in."""
    text = text.strip()
    lead = TRANSLATION_USER_PROMPT.split("{", 1)[0].strip()
    return text[len(lead):].strip() if text.startswith(lead) else text


# ---- backends --------------------------------------------------------------------------------------
@dataclass
class Reply:
    """One translation: the text, or why there is none."""

    text: str | None
    error: str | None = None


class LocalBackend:
    """A tilevl model, greedy, `batch_size` texts per `batch_chat` call.

    Args:
        model, tokenizer: from `tilevl.resolve.open_model`.
        batch_size: texts per generate call.
        max_new_tokens: the longest translation.
        name: how reports name the model.
    """

    def __init__(self, model, tokenizer, batch_size: int = 8, max_new_tokens: int = 1024,
                 name: str = "local"):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens

    def describe(self) -> dict:
        return {"backend": "local", "model": self.name, "max_new_tokens": self.max_new_tokens}

    def translate(self, system: str, texts: Sequence[str]) -> list[Reply]:
        """Translate `texts` (greedy), `batch_size` at a time."""
        import torch

        from tilevl.chat.engine import batch_chat

        replies: list[Reply] = []
        config = {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                chunk = [TRANSLATION_USER_PROMPT.format(text=t.replace("<image>", _LOCAL_IMAGE))
                         for t in texts[start:start + self.batch_size]]
                out = batch_chat(self.model, self.tokenizer, None, chunk, config,
                                 num_patches_list=[0] * len(chunk), system_message=system)
                replies += [Reply(clean_reply(o).replace(_LOCAL_IMAGE, "<image>")) for o in out]
        return replies


class OpenAIBackend:
    """An OpenAI-compatible `/chat/completions` endpoint, `workers` requests at a time.

    Args:
        url: the API base (`http://127.0.0.1:8000/v1`) or the full `/chat/completions` URL.
        model: the model name sent with each request.
        api_key: sent as a Bearer token when given.
        workers: concurrent requests.
        temperature: 0 keeps translations reproducible.
        max_tokens: the longest reply (None: the server's default).
        retries, timeout: attempts per text and seconds per request.
    """

    def __init__(self, url: str, model: str, api_key: str | None = None, workers: int = 4,
                 temperature: float = 0.0, max_tokens: int | None = None, retries: int = 3,
                 timeout: float = 120.0):
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"--backend openai:URL needs an http(s) URL, got {url!r}")
        if not model:
            raise ConfigError("--backend openai:URL needs --model-name (the name the server serves)")
        base = url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model, self.api_key, self.workers = model, api_key, max(1, workers)
        self.temperature, self.max_tokens = temperature, max_tokens
        self.retries, self.timeout = max(1, retries), timeout

    def describe(self) -> dict:
        return {"backend": "openai", "url": self.url, "model": self.model,
                "temperature": self.temperature}

    def complete(self, system: str, text: str) -> Reply:
        """One request; transient failures are retried with backoff, then reported."""
        body = {"model": self.model, "temperature": self.temperature,
                "messages": [{"role": "system", "content": system},
                             {"role": "user", "content": TRANSLATION_USER_PROMPT.format(text=text)}]}
        if self.max_tokens:
            body["max_tokens"] = self.max_tokens
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode("utf-8")
        error = ""
        for attempt in range(self.retries):
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    reply = json.loads(response.read().decode("utf-8"))
                return Reply(clean_reply(str(reply["choices"][0]["message"]["content"] or "")))
            except (urllib.error.URLError, OSError, KeyError, IndexError, TypeError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                if attempt + 1 < self.retries:
                    time.sleep(min(2.0, 0.2 * 2 ** attempt))
        return Reply(None, f"request to {self.url} failed {self.retries}x ({error})")

    def translate(self, system: str, texts: Sequence[str]) -> list[Reply]:
        """Translate `texts`, `workers` requests in flight; order is kept."""
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(lambda t: self.complete(system, t), texts))


def open_backend(spec: str, model_name: str | None = None, *, batch_size: int = 8,
                 max_new_tokens: int = 1024, api_key: str | None = None, workers: int = 4,
                 device: str = "cpu", dtype: str | None = None):
    """`local:MODEL` (a folder or preset) or `openai:URL` → a backend.

    Raises:
        ConfigError: for another prefix, naming the two forms.
    """
    kind, _, target = spec.partition(":")
    if kind == "local" and target:
        from tilevl.resolve import open_model

        model, tokenizer = open_model(target, dtype=dtype, device=device, quiet=True)
        model.eval()
        return LocalBackend(model, tokenizer, batch_size, max_new_tokens, name=model_name or target)
    if kind == "openai" and target:
        return OpenAIBackend(target, model_name or "", api_key=api_key, workers=workers,
                             max_tokens=max_new_tokens)
    raise ConfigError(f"--backend {spec!r}: use local:MODEL (folder or preset) or openai:URL")


# ---- the pipeline ------------------------------------------------------------------------------------
def read_records(path: str | Path) -> list[tuple[int, dict]]:
    """A jsonl training set as (line, record); ids are filled in and checked to be unique.

    A record without an `id` gets `"{file stem}-{line}"` (resuming keys on ids).

    Raises:
        InputError: naming file and line of a bad line or a repeated id.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--data {path}: no such file")
    rows, seen = [], {}
    for number, record in iter_jsonl_objects(path):
        record.setdefault("id", f"{path.stem}-{number}")
        key = str(record["id"])
        if key in seen:
            raise InputError(f"{path}:{number}: id {key!r} repeats line {seen[key]}")
        seen[key] = number
        rows.append((number, record))
    return rows


def _texts(record: dict) -> list[tuple[int, str, str]]:
    """(turn, image prefix, body) of every value; the leading `<image>\\n` is not text."""
    out = []
    for turn, message in enumerate(record["conversations"]):
        value = message["value"]
        prefix = _IMAGE_PREFIX.match(value)
        cut = prefix.end() if prefix else 0
        out.append((turn, value[:cut], value[cut:]))
    return out


def _check_record(record: dict) -> str | None:
    convs = record.get("conversations")
    if not isinstance(convs, list) or not convs:
        return "no 'conversations' list"
    for turn, message in enumerate(convs):
        if not isinstance(message, dict) or not isinstance(message.get("value"), str):
            return f"conversations[{turn}] has no string 'value'"
    return None


def translate_file(backend, data: str | Path, out: str | Path, language: str = "zh", *,
                   batch_size: int = 16, keep_markup: bool = True, limit: int | None = None,
                   progress: bool = True, overwrite: bool = False) -> dict:
    """Translate every conversation value of a jsonl set into `language`; resumable.

    Records whose id is already in `out` are skipped. A record is written only when every
    value kept its markup (counts of `<image>`, `<ref>`, `<box>`, `<quad>` and the box
    coordinates); the others are listed in the report with `file:line` and retried by the
    next run.

    Args:
        backend: `LocalBackend`, `OpenAIBackend` or anything with `translate(system, texts)
            -> list[Reply]` (and `describe()`).
        data: the input jsonl (InternVL's `{"id", "image", "conversations": [...]}` lines).
        out: the output jsonl (appended to).
        language: the target language, a code ("zh") or a name.
        batch_size: records per backend call (all their values go together).
        keep_markup: append our markup rule to the paper's prompt.
        limit: only the first N records.
        progress: show a tqdm bar.
        overwrite: start `out` afresh.

    Returns:
        The report (also written to `OUT_STEM.report.json`).
    """
    from tqdm.auto import tqdm

    out = Path(out)
    rows = read_records(data)
    rows = rows[:limit] if limit else rows
    if overwrite:
        out.unlink(missing_ok=True)
    done = {str(r.get("id")) for _, r in read_jsonl_lines(out)}
    todo = [(n, r) for n, r in rows if str(r["id"]) not in done]
    system = translation_prompt(language, keep_markup)
    failures: list[dict] = []
    counts = Counter()
    bar = tqdm(total=len(todo), unit="record", desc=f"translate → {language}", disable=not progress)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        jobs = []  # (chunk position, turn, prefix, body)
        for position, (number, record) in enumerate(chunk):
            problem = _check_record(record)
            if problem:
                failures.append({"where": f"{data}:{number}", "id": record["id"], "problems": [problem]})
                continue
            jobs += [(position, turn, prefix, body) for turn, prefix, body in _texts(record)]
        asked = [job for job in jobs if needs_translation(job[3])]
        replies = backend.translate(system, [job[3] for job in asked]) if asked else []
        answer = {(j[0], j[1]): r for j, r in zip(asked, replies)}
        counts.update(values_translated=len(asked), values_copied=len(jobs) - len(asked))
        written = []
        for position, (number, record) in enumerate(chunk):
            mine = [j for j in jobs if j[0] == position]
            if not mine:
                continue
            problems, new = [], json.loads(json.dumps(record))
            for _, turn, prefix, body in mine:
                reply = answer.get((position, turn))
                if reply is None:
                    continue  # nothing to translate: copied
                if reply.text is None:
                    problems.append(f"conversations[{turn}]: {reply.error}")
                    continue
                value = prefix + reply.text
                lost = markup_problems(record["conversations"][turn]["value"], value)
                problems += [f"conversations[{turn}]: {p}" for p in lost]
                new["conversations"][turn]["value"] = value
            if problems:
                failures.append({"where": f"{data}:{number}", "id": record["id"], "problems": problems})
            else:
                written.append(new)
        append_jsonl(out, written)
        counts["written"] += len(written)
        bar.update(len(chunk))
    bar.close()
    report = {"input": str(data), "output": str(out), "language": language_name(language),
              "backend": backend.describe() if hasattr(backend, "describe") else {},
              "prompt": {"system": system, "user": TRANSLATION_USER_PROMPT,
                         "source": "InternVL 1.5 report, Fig. 5 (data translation pipeline)",
                         "markup_rule_added": keep_markup},
              "records": len(rows), "already_done": len(rows) - len(todo),
              "written": counts["written"], "failed": len(failures),
              "values_translated": counts["values_translated"],
              "values_copied": counts["values_copied"],
              "output_records": len(read_jsonl_lines(out)), "failures": failures}
    write_json(out.with_name(f"{out.stem}.report.json"), report)
    return report


def format_failures(report: dict, limit: int = 20) -> str:
    """The failed records as `file:line: id: problems` lines (at most `limit`)."""
    lines = [f"{f['where']}: {f['id']}: {'; '.join(f['problems'])}" for f in report["failures"][:limit]]
    if len(report["failures"]) > limit:
        lines.append(f"... and {len(report['failures']) - limit} more (see the report file)")
    return "\n".join(lines)


__all__ = ["LANGUAGES", "MARKUP_RULE", "TRANSLATION_SYSTEM_PROMPT", "TRANSLATION_USER_PROMPT",
           "LocalBackend", "OpenAIBackend", "Reply", "clean_reply", "format_failures",
           "language_name", "markup_problems", "markup_signature", "needs_translation",
           "open_backend", "read_records", "translate_file", "translation_prompt"]
