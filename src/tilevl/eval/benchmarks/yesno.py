"""Yes/no benchmarks: MME, POPE, HallusionBench and MiniBench's `pope.jsonl`.

Reads VLMEvalKit TSVs, LLaVA/POPE jsonl, MME's per-subtask txt files; builds InternVL's prompts.
"""

from __future__ import annotations

from pathlib import Path

from tilevl.errors import InputError
from tilevl.eval.benchmarks.common import (
    Sample,
    as_index,
    check_unique,
    decode_base64_image,
    is_missing,
    read_json_or_jsonl,
    read_tsv,
    resolve_image,
)
from tilevl.eval.metrics import parse_yes_no

# Metadata the yes/no scorers group by (MME image pairs, POPE splits, HallusionBench
# figure/question groups); copied onto the record when the row has them.
_META = ("category", "subcategory", "set_id", "figure_id", "question_id", "visual_input",
         "split", "l2-category")


def _tsv_samples(path: Path, image_root) -> list[Sample]:
    rows = read_tsv(path)
    by_index = {str(r["index"]).strip(): r.get("image") or "" for r in rows}
    samples = []
    for number, row in enumerate(rows, 2):
        where = f"{path}:{number}"
        cell = (row.get("image") or "").strip()
        # A short cell names the row that holds the picture (VLMEvalKit); MME's two
        # questions per image share it, which is also the key of MME's acc+ pairs.
        owner = cell if cell and len(cell) <= 64 and cell in by_index else str(row["index"]).strip()
        b64 = by_index.get(owner, "")
        if b64:
            image = decode_base64_image(b64, where)
        elif not is_missing(row.get("image_path")):
            image = resolve_image(row["image_path"], path.parent, image_root, where)
        else:
            image = None  # HallusionBench's visual_input=0 questions have no image
        record = _record(row, where)
        record.setdefault("image", row.get("image_path") or owner)
        samples.append(Sample(index=as_index(row["index"]), question=str(row["question"]),
                              image=image, record=record))
    return samples


def _record(row: dict, where: str) -> dict:
    record: dict = {}
    gold = next((row[k] for k in ("answer", "label", "gt_answer") if not is_missing(row.get(k))), None)
    if gold is not None:
        record["answer"] = str(gold).strip()
    for name in _META:
        if not is_missing(row.get(name)):
            record[name.replace("-", "_")] = row[name]
    if "category" not in record and "split" in record:
        record["category"] = record["split"]  # POPE: the scorer reads the split as category
    if "question" not in row and "text" not in row:
        raise InputError(f"{where}: no question")
    return record


def _jsonl_samples(path: Path, image_root) -> list[Sample]:
    samples = []
    for number, row in enumerate(read_json_or_jsonl(path), 1):
        where = f"{path}:{number}"
        record = _record(row, where)
        stored = row.get("image")
        record.setdefault("image", stored)
        index = next((row[k] for k in ("index", "question_id", "id") if k in row), number - 1)
        image = resolve_image(stored, path.parent, image_root, where)
        question = row.get("question", row.get("text"))
        samples.append(Sample(index=as_index(index), question=str(question), image=image,
                              record=record))
    return samples


def _mme_folder(path: Path, image_root) -> list[Sample]:
    # InternVL eval/mme: one `<subtask>.txt` per subtask, lines "image<TAB>question<TAB>gt",
    # images under images/<subtask>/ (internvl_chat/eval/mme/eval.py).
    samples = []
    for txt in sorted(path.glob("*.txt")):
        subtask = txt.stem
        lines = txt.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3:
                raise InputError(f"{txt}:{number}: expected 'image<TAB>question<TAB>answer'")
            image_name, question, gold = parts[:3]
            where = f"{txt}:{number}"
            roots = [image_root] if image_root else []
            image = None
            for rel in (f"images/{subtask}/{image_name}", f"{subtask}/{image_name}", image_name):
                try:
                    image = resolve_image(rel, path, roots[0] if roots else None, where)
                    break
                except InputError:
                    continue
            if image is None:
                raise InputError(f"{where}: image {image_name!r} not found under {path}")
            samples.append(Sample(index=f"{subtask}/{number}", question=question, image=image,
                                  record={"answer": gold.strip(), "category": subtask,
                                          "image": f"{subtask}/{image_name}"}))
    return samples


def read_yes_no(path: str | Path, image_root: str | Path | None = None) -> list[Sample]:
    """Read a yes/no benchmark into samples.

    Accepts a VLMEvalKit TSV (MME.tsv, HallusionBench.tsv), a jsonl/json with `question` or
    `text`, `answer` or `label`, `image`, and `split`/`category` (POPE, LLaVA's
    llava_pope_test.jsonl with `--image-root` at val2014, MiniBench pope.jsonl), or a folder
    of MME `<subtask>.txt` files as InternVL's MME script reads them.

    Args:
        path: the file or folder.
        image_root: where relative image paths live.

    Returns:
        Samples whose `record` holds `answer`, `category` and the grouping fields present
        (`image`, `subcategory`, `set_id`, `figure_id`, `question_id`).
    """
    path = Path(path)
    if path.is_dir():
        samples = _mme_folder(path, image_root)
    elif path.suffix == ".tsv":
        samples = _tsv_samples(path, image_root)
    else:
        samples = _jsonl_samples(path, image_root)
    return check_unique(samples, path)


def yes_no_key(style: str):
    """A vote key that reads yes/no with one benchmark's official rule.

    Args:
        style: "mme", "pope" or "vlmevalkit" (see `parse_yes_no`).

    Returns:
        `key(sample, answer) -> "yes" | "no" | None`.
    """
    def key(sample: Sample, answer: str):
        return parse_yes_no(answer, style)

    return key
