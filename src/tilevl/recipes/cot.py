"""CoT-consistency training data (MMAlaya2's first step): sample k chain-of-thought answers per
labelled multiple-choice question, keep the questions whose majority answer is the label.

`build_cot_data(sampler, data, out)` is the API (`tilevl recipe cot-data` its command); a
sampler is `ModelSampler(model, tokenizer)` or, in tests, any callable with its signature.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tilevl.errors import ConfigError, InputError
from tilevl.eval.benchmarks import BenchSpec, Sample, get_benchmark
from tilevl.eval.benchmarks.common import final_answer
from tilevl.eval.benchmarks.mmbench import choice_key
from tilevl.jsonl import append_jsonl, read_jsonl_lines, write_json

# MMBench's circular copies sit at index + k·1e6 (tilevl.minibench.formats.CIRCULAR_STRIDE).
CIRCULAR_STRIDE = 1_000_000
_MCQ_KINDS = ("mmbench", "mcq", "mmvp", "mmmu")
_ANSWER_LINE = re.compile(r"answer\s*[:：]", re.IGNORECASE)

# A sampler answers a batch: (questions, prompts, k, batch number) → k replies per question.
Sampler = Callable[[Sequence[Sample], Sequence[str], int, int], list[list[str]]]


@dataclass
class CotSettings:
    """How questions are chosen, sampled and filtered (everything but the model).

    Attributes:
        samples: k chain-of-thought answers per question.
        min_agreement: a question is kept when more than this share of the k answers is
            the label (0.5: a strict majority of all k, unreadable answers included).
        max_traces: correct reasoning traces written per kept question (0: all of them).
        batch_size: questions per sampler call.
        circular: also use MMBench's circular copies (index ≥ 1e6); off by default since
            they repeat an image with rotated options.
        limit: only the first N questions (after dropping circular copies).
        bench: the reader (`tilevl.eval.benchmarks` name); default by suffix: .tsv →
            mmbench, .jsonl/.json → plain-mcq.
        id_prefix: record ids are `{id_prefix}{index}` (+ `_t{j}` for the j-th extra trace).
        image_root: where relative image paths of a jsonl file live.
    """

    samples: int = 5
    min_agreement: float = 0.5
    max_traces: int = 1
    batch_size: int = 8
    circular: bool = False
    limit: int | None = None
    bench: str | None = None
    id_prefix: str = "cot_"
    image_root: str | None = None

    def check(self) -> None:
        """Refuse values that cannot work, naming the field."""
        if self.samples < 1:
            raise ConfigError(f"samples: must be >= 1, got {self.samples}")
        if not 0 <= self.min_agreement < 1:
            raise ConfigError(f"min_agreement: must be in [0, 1), got {self.min_agreement}")
        if self.max_traces < 0 or self.batch_size < 1:
            raise ConfigError("max_traces must be >= 0 and batch_size >= 1")


@dataclass
class Verdict:
    """What k answers to one question say.

    Attributes:
        label: the gold letter.
        letters: the letter each answer picks (None: unreadable).
        votes: letter → count, in first-seen order.
        majority: the letter with more than `min_agreement`·k votes, or None.
        kept: majority == label.
        reason: "kept", "majority_wrong" or "no_majority".
    """

    label: str
    letters: list[str | None]
    votes: dict[str, int]
    majority: str | None
    kept: bool
    reason: str


class ModelSampler:
    """k sampled replies per question from a tilevl model: one `batch_chat` call per draw.

    Seeds depend on (seed, batch number, draw) only, so a resumed run draws what an
    uninterrupted one would have.

    Args:
        model, tokenizer: from `tilevl.resolve.open_model`.
        temperature, top_p: sampling settings (k = 1 answers greedily).
        max_new_tokens: reply length (reasoning needs room).
        max_tiles: tiles per image (InternVL's MCQ budget is 6).
        seed: base seed.
    """

    def __init__(self, model, tokenizer, *, temperature: float = 0.7, top_p: float | None = None,
                 max_new_tokens: int = 1024, max_tiles: int = 6, seed: int = 0):
        if temperature <= 0:
            raise ConfigError("temperature must be > 0: greedy answers would all agree")
        self.model, self.tokenizer = model, tokenizer
        self.temperature, self.top_p, self.seed = temperature, top_p, seed
        self.max_new_tokens, self.max_tiles = max_new_tokens, max_tiles

    def describe(self) -> dict:
        """What changes the replies (it keys resuming)."""
        from tilevl.eval.runner import model_fingerprint

        return {"model": model_fingerprint(self.model, self.tokenizer),
                "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed,
                "max_new_tokens": self.max_new_tokens, "max_tiles": self.max_tiles}

    def __call__(self, samples: Sequence[Sample], prompts: Sequence[str], k: int,
                 batch_number: int) -> list[list[str]]:
        import torch

        from tilevl.chat.engine import batch_chat
        from tilevl.inputs.image import preprocess

        tiles, patches = [], []
        for sample in samples:
            if sample.image is None:
                patches.append(0)
                continue
            pixels = preprocess(sample.image, self.model.image_settings, max_num=self.max_tiles)
            tiles.append(pixels)
            patches.append(pixels.shape[0])
        pixel_values = torch.cat(tiles) if tiles else None
        outputs: list[list[str]] = [[] for _ in samples]
        with torch.inference_mode():
            for draw in range(k):
                config = {"max_new_tokens": self.max_new_tokens, "do_sample": k > 1,
                          "temperature": self.temperature, "top_p": self.top_p,
                          "seed": self.seed + 100_003 * batch_number + draw}
                replies = batch_chat(self.model, self.tokenizer, pixel_values, list(prompts),
                                     config, num_patches_list=patches)
                for kept, reply in zip(outputs, replies):
                    kept.append(reply)
        return outputs


# ---- the filter -------------------------------------------------------------------------------
def judge_answers(sample: Sample, outputs: Sequence[str], min_agreement: float = 0.5) -> Verdict:
    """Read the final letter of each reply and decide whether the question is kept.

    Args:
        sample: the question (`record["answer"]`, `record["options"]`).
        outputs: the k raw replies.
        min_agreement: the share of all k replies the majority must exceed.

    Returns:
        The Verdict.
    """
    label = str(sample.record["answer"]).strip().upper()
    letters = [choice_key(sample, final_answer(text)) for text in outputs]
    votes: dict[str, int] = {}
    for letter in letters:
        if letter is not None:
            votes[letter] = votes.get(letter, 0) + 1
    # Unreadable replies count in k: a question the model mostly cannot answer is not kept.
    winners = [letter for letter, n in votes.items() if n > min_agreement * len(outputs)]
    majority = max(winners, key=votes.get) if winners else None
    kept = majority == label
    reason = "kept" if kept else ("majority_wrong" if majority else "no_majority")
    return Verdict(label, letters, votes, majority, kept, reason)


def training_trace(text: str, letter: str) -> str:
    """A reply as a training target: its reasoning, then exactly "Answer: X" as the last line.

    Args:
        text: the raw reply (its answer reads as `letter`).
        letter: the gold letter.

    Returns:
        The reasoning before the last "Answer:" plus "Answer: {letter}".
    """
    matches = list(_ANSWER_LINE.finditer(text))
    reasoning = text[:matches[-1].start()] if matches else text
    reasoning = reasoning.rstrip().rstrip("*#").rstrip()
    return f"{reasoning}\nAnswer: {letter}" if reasoning else f"Answer: {letter}"


def pick_traces(outputs: Sequence[str], verdict: Verdict, limit: int) -> list[str]:
    """The replies that reach the label, those with reasoning first, at most `limit` (0: all)."""
    right = [text for text, letter in zip(outputs, verdict.letters) if letter == verdict.label]
    # A bare "Answer: B" teaches no reasoning; prefer traces that have some (stable order).
    right.sort(key=lambda text: not training_trace(text, verdict.label).count("\n"))
    return right[:limit] if limit else right


# ---- images of the training records ---------------------------------------------------------------
def _image_bytes(image) -> tuple[bytes, str]:
    """Encoded bytes and a file suffix for a Sample's image (bytes, path or data URL)."""
    if isinstance(image, (bytes, bytearray)):
        data = bytes(image)
    elif isinstance(image, str) and image.startswith("data:"):
        data = base64.b64decode(image.split(",", 1)[1])
    else:
        return Path(image).read_bytes(), Path(image).suffix.lower() or ".png"
    from PIL import Image

    kind = (Image.open(io.BytesIO(data)).format or "png").lower()
    return data, "." + {"jpeg": "jpg"}.get(kind, kind)


def save_image(image, folder: Path) -> tuple[str, int, int]:
    """Store a question's image under `folder`, named by content (circular copies share one).

    Returns:
        (file name relative to `folder`, width, height).
    """
    from PIL import Image

    data, suffix = _image_bytes(image)
    name = hashlib.sha256(data).hexdigest()[:20] + suffix
    target = folder / name
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(target)
    with Image.open(io.BytesIO(data)) as img:
        return name, img.width, img.height


def make_records(sample: Sample, prompt: str, traces: Sequence[str], label: str, images: Path,
                 id_prefix: str) -> list[dict]:
    """Training records in the seeds' format, one per trace.

    Returns:
        `{"id", "image", "width", "height", "conversations": [human, gpt]}` dicts (no image
        keys for a text-only question).
    """
    records = []
    image = save_image(sample.image, images) if sample.image is not None else None
    for j, trace in enumerate(traces):
        record = {"id": f"{id_prefix}{sample.index}" + (f"_t{j}" if j else "")}
        if image is not None:
            record.update(image=image[0], width=image[1], height=image[2])
        human = f"<image>\n{prompt}" if image is not None else prompt
        record["conversations"] = [{"from": "human", "value": human},
                                   {"from": "gpt", "value": training_trace(trace, label)}]
        records.append(record)
    return records


# ---- the run ---------------------------------------------------------------------------------------
def output_paths(out: str | Path) -> dict[str, Path]:
    """Where `build_cot_data(out=...)` writes: records, progress, report, meta, images."""
    out = Path(out)
    return {"records": out, "progress": out.with_name(f"{out.stem}.progress.jsonl"),
            "report": out.with_name(f"{out.stem}.report.json"),
            "meta": out.with_name("meta.json"), "images": out.parent / "images"}


def load_questions(data: str | Path, settings: CotSettings) -> tuple[BenchSpec, list[Sample]]:
    """Read a labelled multiple-choice file and keep the questions the settings select.

    Raises:
        InputError: for a file that is not multiple choice or a question without a label.
    """
    data = Path(data)
    if not data.exists():
        raise InputError(f"--data {data}: no such file")
    name = settings.bench or ("mmbench" if data.suffix == ".tsv" else "plain-mcq")
    spec = get_benchmark(name)
    if spec.kind not in _MCQ_KINDS:
        raise ConfigError(f"--bench {name}: CoT consistency needs multiple choice ({spec.kind} is not)")
    samples = spec.read(data, settings.image_root)
    if not settings.circular:
        samples = [s for s in samples if not (isinstance(s.index, int) and s.index >= CIRCULAR_STRIDE)]
    samples = samples[:settings.limit] if settings.limit else samples
    for sample in samples:
        options = sample.record.get("options") or {}
        label = str(sample.record.get("answer", "")).strip().upper()
        if label not in options:
            raise InputError(f"{data}: question {sample.index!r} has no answer label among its "
                             f"options ({', '.join(options) or 'none'}); cot-data needs labelled MCQ")
    return spec, samples


def _start(paths: dict[str, Path], settings: dict, overwrite: bool) -> dict[str, dict]:
    """Clear or check an earlier run's files; returns its progress rows by index."""
    if overwrite:
        for key in ("records", "progress", "report"):
            paths[key].unlink(missing_ok=True)
        return {}
    rows = read_jsonl_lines(paths["progress"])
    if not rows:
        return {}
    before = rows[0][1].get("settings")
    if before != settings:
        changed = sorted(k for k in set(before or {}) | set(settings)
                         if (before or {}).get(k) != settings.get(k))
        raise ConfigError(f"{paths['progress']}: made with other settings ({', '.join(changed)}); "
                          "pass --overwrite (overwrite=True) or choose another --out")
    return {str(row["index"]): row for _, row in rows[1:]}


def build_cot_data(sampler: Sampler, data: str | Path, out: str | Path,
                   settings: CotSettings | None = None, *, progress: bool = True,
                   overwrite: bool = False) -> dict:
    """Sample, filter and write CoT training data; resumable (done questions are skipped).

    Writes `out` (training jsonl), `images/` and `meta.json` beside it (an entry named after
    `out`'s stem), `STEM.progress.jsonl` (every question's k replies and verdict) and
    `STEM.report.json` (kept/dropped per category).

    Args:
        sampler: `ModelSampler`, or any callable `(samples, prompts, k, batch_number) ->
            k replies per sample`; a `describe()` method, when present, keys resuming.
        data: a labelled MCQ file (MMBench TSV, or the plain jsonl of `plain-mcq`).
        out: the training jsonl to write.
        settings: the CotSettings.
        progress: show a tqdm bar.
        overwrite: start over instead of resuming.

    Returns:
        The report dict (also written to `STEM.report.json`).
    """
    from tqdm.auto import tqdm

    settings = settings or CotSettings()
    settings.check()
    spec, samples = load_questions(data, settings)
    paths = output_paths(out)
    described = sampler.describe() if hasattr(sampler, "describe") else type(sampler).__name__
    identity = {**{k: v for k, v in asdict(settings).items() if k not in ("batch_size", "limit")},
                "data": Path(data).name, "sampler": described}
    done = _start(paths, identity, overwrite)
    if not done:
        paths["progress"].unlink(missing_ok=True)
        append_jsonl(paths["progress"], [{"settings": identity}])
    written = {row.get("id") for _, row in read_jsonl_lines(paths["records"])}
    batches = [samples[i:i + settings.batch_size] for i in range(0, len(samples), settings.batch_size)]
    todo = [(n, [s for s in b if str(s.index) not in done]) for n, b in enumerate(batches)]
    todo = [(n, b) for n, b in todo if b]
    bar = tqdm(total=sum(len(b) for _, b in todo), unit="q", desc="cot-data", disable=not progress)
    for number, batch in todo:
        prompts = [spec.prompt(s, True, None) for s in batch]
        outputs = sampler(batch, prompts, settings.samples, number)
        if len(outputs) != len(batch) or any(len(o) != settings.samples for o in outputs):
            raise InputError(f"the sampler returned {[len(o) for o in outputs]} replies for "
                             f"{len(batch)} questions × {settings.samples}")
        records, rows = [], []
        for sample, prompt, replies in zip(batch, prompts, outputs):
            verdict = judge_answers(sample, replies, settings.min_agreement)
            traces = pick_traces(replies, verdict, settings.max_traces) if verdict.kept else []
            made = make_records(sample, prompt, traces, verdict.label, paths["images"],
                                settings.id_prefix)
            # A kill between the two appends leaves records without a progress line; their
            # question is redone and the ids already on disk are not written twice.
            records += [r for r in made if r["id"] not in written]
            rows.append({"index": sample.index, "category": str(sample.record.get("category", "")),
                         "label": verdict.label, "letters": verdict.letters, "votes": verdict.votes,
                         "majority": verdict.majority, "kept": verdict.kept, "reason": verdict.reason,
                         "records": [r["id"] for r in made], "outputs": list(replies)})
        append_jsonl(paths["records"], records)
        append_jsonl(paths["progress"], rows)
        written.update(r["id"] for r in records)
        done.update({str(r["index"]): r for r in rows})
        bar.update(len(batch))
    bar.close()
    report = summarise([done[str(s.index)] for s in samples], identity)
    report["files"] = {k: str(v) for k, v in paths.items()}
    report["records"] = len(read_jsonl_lines(paths["records"]))
    _write_meta(paths, report["records"])
    write_json(paths["report"], report)
    return report


def summarise(rows: Sequence[dict], settings: dict | None = None) -> dict:
    """Kept/dropped counts per category (and in total) from progress rows.

    Args:
        rows: one progress row per question.
        settings: stored with the counts.

    Returns:
        `{"questions", "kept", "dropped", "keep_rate", "reasons", "per_category": {...},
        "settings"}`.
    """
    def count(group: Sequence[dict]) -> dict:
        reasons: dict[str, int] = {}
        for row in group:
            reasons[row["reason"]] = reasons.get(row["reason"], 0) + 1
        kept = reasons.get("kept", 0)
        return {"questions": len(group), "kept": kept, "dropped": len(group) - kept,
                "keep_rate": kept / len(group) if group else 0.0,
                "traces": sum(len(r["records"]) for r in group),
                "reasons": {k: v for k, v in reasons.items() if k != "kept"}}

    categories: dict[str, list[dict]] = {}
    for row in rows:
        categories.setdefault(row.get("category") or "uncategorised", []).append(row)
    return {**count(rows), "per_category": {c: count(g) for c, g in sorted(categories.items())},
            "settings": settings or {}}


def format_report(report: dict) -> str:
    """The per-category counts as a fixed-width table."""
    lines = [f"{'category':32s} {'questions':>9s} {'kept':>6s} {'dropped':>7s} {'keep %':>7s}"]
    for name, c in [*report["per_category"].items(), ("total", report)]:
        lines.append(f"{name:32s} {c['questions']:9d} {c['kept']:6d} {c['dropped']:7d} "
                     f"{100 * c['keep_rate']:7.1f}")
    return "\n".join(lines)


def _write_meta(paths: dict[str, Path], length: int) -> None:
    # One meta.json per folder: other entries (another run's stem) are kept.
    meta_path = paths["meta"]
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
    meta[paths["records"].stem] = {"root": "images/", "annotation": paths["records"].name,
                                   "data_augment": False, "repeat_time": 1, "length": length}
    write_json(meta_path, meta)


__all__ = ["CotSettings", "ModelSampler", "Verdict", "build_cot_data", "format_report",
           "judge_answers", "load_questions", "make_records", "output_paths", "pick_traces",
           "summarise", "training_trace"]
