"""Load TOFU-shaped records from JSON or JSONL, r2f's world or TOFU's own files.

Every problem is reported as one line naming the file, line (JSONL) or record index (JSON)
and the field at fault, raised as :class:`r2f.errors.R2FInputError`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Sequence

from pydantic import BaseModel, ValidationError

from r2f.data.schema import Document, QAItem
from r2f.errors import R2FInputError
from r2f.io import decode_text, read_bytes, read_text
from r2f.typed import check_choice

#: Logical split name -> file name inside a world directory (TOFU's naming).
SPLIT_FILES: dict[str, str] = {
    "forget01": "forget01.jsonl",
    "forget05": "forget05.jsonl",
    "forget10": "forget10.jsonl",
    "retain99": "retain99.jsonl",
    "retain95": "retain95.jsonl",
    "retain90": "retain90.jsonl",
    "holdout": "holdout.jsonl",
    "world_facts": "world_facts.jsonl",
    "proxy": "proxy.jsonl",
}

#: The retain split that complements each forget split.
RETAIN_OF = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}

#: Logical splits that are one half of a file split's records and have no file of their own:
#: name -> (file split, half). The world facts' retain half may go into retain (guard) data; the evaluation
#: half is what the ``wf_*`` metrics and model utility score, so utility is never measured on data a method was
#: shown while unlearning. Models still train on the whole file (general knowledge every model has).
WORLD_FACTS_RETAIN, WORLD_FACTS_EVAL = "world_facts_retain", "world_facts_eval"
HALF_SPLITS: Mapping[str, tuple[str, str]] = MappingProxyType({
    WORLD_FACTS_RETAIN: ("world_facts", "retain"),
    WORLD_FACTS_EVAL: ("world_facts", "eval"),
})
#: The rule of :func:`half_positions`, in words (eval.json and the docs state it).
HALVES_RULE = ("records grouped by their 'kind' field (records without one form one group), in file order; "
               "within each group the 1st, 3rd, 5th ... record is in the eval half, the 2nd, 4th ... in the "
               "retain half")


#: What a forget file holds: ``auto`` (documents when its first record has ``text`` and no ``question``, or the file
#: is a ``.txt``; QA items otherwise), ``qa`` or ``documents`` (the ``text`` of every record, e.g. the world's
#: biographies, which are long-answer QA items too).
FORGET_KINDS = ("auto", "qa", "documents")
#: A plain-text file is one document.
TEXT_SUFFIXES = (".txt",)


def _validate(record: object, where: str, model: type[BaseModel] = QAItem) -> BaseModel:
    if not isinstance(record, dict):
        raise R2FInputError(f"expected a JSON object, got {type(record).__name__}", source=where)
    try:
        return model.model_validate(record)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "record"
        kind = "missing" if err["type"] == "missing" else err["msg"]
        raise R2FInputError(f"field '{field}': {kind}", source=where) from None


def record_type(record: object, kind: str) -> type[BaseModel]:
    """The record type of a file, decided by ``kind`` or (``auto``) by its first record."""
    if kind == "documents" or (kind == "auto" and isinstance(record, dict) and "question" not in record
                               and "text" in record):
        return Document
    return QAItem


def load_items(path: str | os.PathLike, *, allow_empty: bool = False) -> list[QAItem]:
    """Read a ``.jsonl`` (one object per line) or ``.json`` (a list, or ``{"data": [...]}``) file."""
    return read_items(path, allow_empty=allow_empty)[0]


def read_items(path: str | os.PathLike, *, allow_empty: bool = False) -> tuple[list[QAItem], str]:
    """:func:`load_items` and the sha256 of the file's bytes (what a manifest records), from one read of the file."""
    return read_records(path, "qa", allow_empty=allow_empty)


def read_records(path: str | os.PathLike, kind: str = "auto", *,
                 allow_empty: bool = False) -> tuple[list[QAItem] | list[Document], str]:
    """The records of a forget (or retain) file, QA items or :class:`Document` s by ``kind`` (:data:`FORGET_KINDS`),
    and the sha256 of its bytes. A ``.txt`` file is one document (its whole text); a JSON/JSONL file of documents
    holds ``{"text": ..., "paraphrases": [...]}`` records. Every problem: one line naming the file and line."""
    check_choice("kind", kind, FORGET_KINDS, source="--forget-kind")
    path = Path(path)
    if not path.is_file():
        raise R2FInputError("file not found", source=str(path))
    data = read_bytes(path)
    text = decode_text(data, path)
    if path.suffix.lower() in TEXT_SUFFIXES:
        if kind == "qa":
            raise R2FInputError("a .txt file is one document, not QA items", source=str(path))
        items: list = [_validate({"text": text}, str(path), Document)] if text.strip() or not allow_empty else []
    else:
        items = _parse_json(path, text, kind) if _is_json_list(path, text) else _parse_jsonl(path, text, kind)
    if not items and not allow_empty:
        raise R2FInputError("no records (empty split)", source=str(path))
    return items, hashlib.sha256(data).hexdigest()


def load_documents(path: str | os.PathLike) -> list[Document]:
    """The documents of a ``.txt`` / JSON / JSONL file (:func:`read_records` with ``kind="documents"``)."""
    return read_records(path, "documents")[0]


def item_locations(path: str | os.PathLike) -> list[str]:
    """Where each record of :func:`load_items` ``(path)`` sits: ``FILE:LINE`` (JSONL) or ``FILE[INDEX]`` (JSON)."""
    path = Path(path)
    text = read_text(path)
    if path.suffix.lower() in TEXT_SUFFIXES:
        return [str(path)]
    if _is_json_list(path, text):
        return [f"{path}[{i}]" for i in range(len(_parse_json(path, text, "auto")))]
    return [f"{path}:{n}" for n, line in enumerate(_lines(text), start=1) if line.strip()]


def _lines(text: str) -> list[str]:
    # JSONL records are separated by "\n" only: str.splitlines() would also split inside JSON strings that
    # hold U+2028, U+0085 … verbatim (valid JSON). A "\r" before the "\n" is JSON whitespace.
    return text.split("\n")


def _is_json_list(path: Path, text: str) -> bool:
    return path.suffix == ".json" and not _looks_like_jsonl(text)


def _looks_like_jsonl(text: str) -> bool:
    lines = [ln for ln in _lines(text) if ln.strip()]
    return len(lines) > 1 and lines[0].lstrip().startswith("{") and lines[0].rstrip().endswith("}")


def _parse_jsonl(path: Path, text: str, kind: str = "qa") -> list:
    items, model = [], None
    for lineno, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise R2FInputError(f"malformed JSON: {exc.msg} (column {exc.colno})", source=f"{path}:{lineno}") from None
        except (ValueError, RecursionError) as exc:  # e.g. integers beyond Python's digit limit, deep nesting
            raise R2FInputError(f"malformed JSON: {_first_line(exc)}", source=f"{path}:{lineno}") from None
        model = model or record_type(record, kind)
        items.append(_validate(record, f"{path}:{lineno}", model))
    return items


def _parse_json(path: Path, text: str, kind: str = "qa") -> list:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise R2FInputError(f"malformed JSON: {exc.msg}", source=f"{path}:{exc.lineno}") from None
    except (ValueError, RecursionError) as exc:
        raise R2FInputError(f"malformed JSON: {_first_line(exc)}", source=str(path)) from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise R2FInputError("expected a list of records (or {\"data\": [...]})", source=str(path))
    model = record_type(data[0], kind) if data else QAItem
    return [_validate(rec, f"{path}[{i}]", model) for i, rec in enumerate(data)]


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else exc.__class__.__name__


def half_positions(items: Sequence[QAItem], half: str) -> list[int]:
    """Positions in ``items`` of the records in ``half`` (``"retain"`` or ``"eval"``), by :data:`HALVES_RULE`.

    Alternating within each kind (rather than cutting the file in two) gives both halves every kind of fact
    that has at least two records, in the file's own proportions; the eval half gets the odd one of a kind, so
    evaluation covers every kind. The rule reads only the records, so it applies to any world-facts file
    (TOFU's has no ``kind``: its records alternate in file order).
    """
    if half not in ("retain", "eval"):
        raise ValueError(f"half must be 'retain' or 'eval', got {half!r}")
    seen: dict[str, int] = {}
    positions = []
    for i, item in enumerate(items):
        # kind is an extra field of any JSON type: its canonical JSON text is a hashable group key
        key = json.dumps((item.model_extra or {}).get("kind"), sort_keys=True, default=str)
        rank = seen.get(key, 0)
        seen[key] = rank + 1
        if (rank % 2 == 0) == (half == "eval"):
            positions.append(i)
    return positions


def split_exists(data_dir: str | os.PathLike, split: str) -> bool:
    """Whether the named split (a file split or a half of one) has its file in ``data_dir``."""
    file_split = HALF_SPLITS[split][0] if split in HALF_SPLITS else split
    return any(c.is_file() for c in _candidates(Path(data_dir), file_split))


def _candidates(data_dir: Path, split: str) -> tuple[Path, Path]:
    """The files a file split may live in: its JSONL name, then TOFU's ``.json`` of the same stem."""
    name = SPLIT_FILES.get(split, f"{split}.jsonl")
    return data_dir / name, data_dir / f"{Path(name).stem}.json"


def load_split_positions(data_dir: str | os.PathLike, split: str) -> tuple[list[int], list[QAItem]]:
    """:func:`load_split` with each record's position in its file (the index eval.json reports it under)."""
    if split in HALF_SPLITS:
        file_split, half = HALF_SPLITS[split]
        items = _load_file_split(data_dir, file_split)
        positions = half_positions(items, half)
        return positions, [items[i] for i in positions]
    items = _load_file_split(data_dir, split)
    return list(range(len(items))), items


def load_split(data_dir: str | os.PathLike, split: str) -> list[QAItem]:
    """Load a named split (``forget10``, ``retain90``, ``world_facts`` …) from a world/TOFU directory.

    Also accepts TOFU's ``.json`` files, a ``split`` that is itself a file path, and the halves of
    :data:`HALF_SPLITS` (``world_facts_retain``, ``world_facts_eval``), read from their file split.
    """
    return load_split_positions(data_dir, split)[1]


def _load_file_split(data_dir: str | os.PathLike, split: str) -> list[QAItem]:
    data_dir = Path(data_dir)
    if Path(split).suffix in (".json", ".jsonl") and Path(split).is_file():
        return load_items(split)
    if not data_dir.is_dir():
        raise R2FInputError("data directory not found", source=str(data_dir))
    candidates = _candidates(data_dir, split)
    for candidate in candidates:
        if candidate.is_file():
            return load_items(candidate)
    raise R2FInputError(f"split '{split}' not found (expected {candidates[0].name})", source=str(data_dir))
