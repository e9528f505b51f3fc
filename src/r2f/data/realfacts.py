"""``realfacts``: real-world facts that SmolLM2-135M-Instruct knows as shipped, for unlearning pre-trained knowledge.

The benchmark ships in the package (``r2f/data/resources/realfacts/``, read through :mod:`importlib.resources`):

- ``facts.jsonl``: every hand-written candidate fact as a QA record (r2f's schema) with ``id``, ``subject``,
  ``subject_type``, ``relation``, ``target`` (the short answer a greedy generation must contain) and ``aliases``;
- ``kept.json``: the measurement that chose the facts SmolLM2 knows (rank of the true answer among its candidates,
  plain QA prompt and chat template), the counts per relation, and the splits;
- ``heldout.txt``: generic encyclopedic prose, never used for training or unlearning, for perplexity.

A forget request is "everything about these subjects": all kept facts of the forget subjects (countries). The
rule that made the splits is :func:`assign_splits`; ``docs/realfacts.md`` describes it. ``benchmarks/
realfacts_build.py`` rebuilds all three files. Every problem with a file is an :class:`R2FInputError` that names
the file, the line or field, e.g. ``facts.jsonl:7: field 'relation': missing``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from r2f.data.loader import item_locations, load_items
from r2f.data.schema import QAItem
from r2f.errors import R2FInputError
from r2f.io import read_json, read_text, write_json_atomic, write_text_atomic

BENCH = "realfacts"
FACTS_FILE, KEPT_FILE, HELDOUT_FILE = "facts.jsonl", "kept.json", "heldout.txt"
#: Splits that are evaluated, and the one that an unlearning method may be shown as retain data.
EVAL_SPLITS = ("forget", "neighbour", "general")
SPLITS = (*EVAL_SPLITS, "retain")
#: The forget request: all kept facts of N_FORGET_SUBJECTS subjects of this type that have at least MIN_FACTS.
FORGET_SUBJECT_TYPE, N_FORGET_SUBJECTS, MIN_FACTS = "country", 10, 3
#: Caps on the evaluated neighbours (subjects) and general facts (per relation), so that one evaluation of SmolLM2
#: takes about a minute on 2 cores; what the caps leave out goes to retain.
N_NEIGHBOUR_SUBJECTS, N_GENERAL_PER_RELATION = 12, 8
#: Fields every record needs besides r2f's QA schema, and the least number of question views and candidates.
EXTRA_FIELDS = ("id", "subject", "relation", "target")
MIN_PARAPHRASES, MIN_PERTURBED = 3, 3
SPLIT_RULE = (
    f"forget: every kept fact of the first {N_FORGET_SUBJECTS} '{FORGET_SUBJECT_TYPE}' subjects with at least "
    f"{MIN_FACTS} kept facts, subjects in sha256('realfacts|' + subject) order; the other '{FORGET_SUBJECT_TYPE}' "
    "subjects alternate in that order between neighbour (1st, 3rd ...) and retain (2nd, 4th ...), each with all its "
    f"kept facts, until {N_NEIGHBOUR_SUBJECTS} subjects are neighbours (the rest go to retain); facts of the other "
    "relations alternate per relation, in sha256('realfacts|' + id) order, between general (1st, 3rd ...) and "
    f"retain, until a relation has {N_GENERAL_PER_RELATION} general facts (the rest go to retain); a non-forget "
    "fact whose question or answer names a forget subject is excluded from every split"
)


def shipped_root() -> resources.abc.Traversable:
    """The directory of the shipped benchmark inside the installed package."""
    return resources.files("r2f.data").joinpath(f"resources/{BENCH}")


@dataclass(frozen=True)
class RealFacts:
    """The loaded benchmark: all candidate facts, the kept ones, the splits and the held-out paragraphs."""

    root: str
    facts: Mapping[str, QAItem]  # id -> record, file order
    kept: tuple[str, ...]
    splits: Mapping[str, tuple[str, ...]]  # split name -> ids
    heldout: tuple[str, ...]
    measurement: Mapping[str, object]

    def split(self, name: str) -> tuple[list[str], list[QAItem]]:
        """(ids, records) of one split, in the split's order."""
        ids = list(self.splits[name])
        return ids, [self.facts[i] for i in ids]

    def kept_items(self) -> tuple[list[str], list[QAItem]]:
        return list(self.kept), [self.facts[i] for i in self.kept]


def _digest(text: str) -> str:
    return hashlib.sha256(f"{BENCH}|{text}".encode("utf-8")).hexdigest()


def _extra(item: QAItem, name: str):
    return (item.model_extra or {}).get(name)


def _bare(subject: str) -> str:
    return subject[4:] if subject.startswith("the ") else subject


def _names(item: QAItem, subject: str) -> bool:
    """Whether the question or answer of ``item`` names ``subject`` as a whole word."""
    pattern = re.compile(rf"(?<!\w){re.escape(_bare(subject))}(?!\w)")
    return bool(pattern.search(item.question) or pattern.search(item.answer))


def assign_splits(ids: Sequence[str], items: Sequence[QAItem], request: int = 0) -> dict[str, list[str]]:
    """The deterministic splits of the kept facts (:data:`SPLIT_RULE`); also lists ``excluded`` ids.

    Reads only the records, so the same kept set always gives the same splits, whatever the file order.
    ``request`` k > 0 makes another forget request by the same rule: the (k+1)-th run of
    :data:`N_FORGET_SUBJECTS` eligible subjects in the same order is forgotten, every other subject (those of
    request 0 too) is a candidate neighbour or retain subject. The shipped splits are request 0; the others are
    for choosing a method's settings on requests that the reported one never saw (:func:`write_request`).
    """
    if request < 0:
        raise R2FInputError(f"must be >= 0, got {request}", source="request")
    by_subject: dict[str, list[str]] = {}
    others: dict[str, list[str]] = {}
    item_of = dict(zip(ids, items))
    for i, it in zip(ids, items):
        if _extra(it, "subject_type") == FORGET_SUBJECT_TYPE:
            by_subject.setdefault(_extra(it, "subject"), []).append(i)
        else:
            others.setdefault(_extra(it, "relation"), []).append(i)
    subjects = sorted(by_subject, key=_digest)
    eligible = [s for s in subjects if len(by_subject[s]) >= MIN_FACTS]
    forget_subjects = eligible[request * N_FORGET_SUBJECTS:(request + 1) * N_FORGET_SUBJECTS]
    if request and len(forget_subjects) < N_FORGET_SUBJECTS:
        raise R2FInputError(f"{request} does not exist: {len(eligible)} subjects have {MIN_FACTS}+ facts "
                            f"(requests 0–{len(eligible) // N_FORGET_SUBJECTS - 1})", source="request")
    out: dict[str, list[str]] = {name: [] for name in (*SPLITS, "excluded")}
    for s in forget_subjects:
        out["forget"].extend(by_subject[s])

    def entangled(i: str) -> bool:
        return any(_names(item_of[i], s) for s in forget_subjects)

    rest = [s for s in subjects if s not in forget_subjects]
    for rank, s in enumerate(rest):
        neighbour = rank % 2 == 0 and rank // 2 < N_NEIGHBOUR_SUBJECTS
        for i in by_subject[s]:
            out["excluded" if entangled(i) else ("neighbour" if neighbour else "retain")].append(i)
    for relation in sorted(others):
        ordered = sorted(others[relation], key=_digest)
        out["excluded"].extend(i for i in ordered if entangled(i))
        for rank, i in enumerate(i for i in ordered if not entangled(i)):
            general = rank % 2 == 0 and rank // 2 < N_GENERAL_PER_RELATION
            out["general" if general else "retain"].append(i)
    out["forget_subjects"] = forget_subjects
    return out


def write_request(out_dir: str | os.PathLike, request: int, root: str | os.PathLike | None = None) -> Path:
    """A realfacts directory whose splits are forget request ``request`` (:func:`assign_splits`) of the shipped
    benchmark (or the one in ``root``): the same facts, kept set and held-out text, written to ``out_dir`` for
    ``DemoConfig(realfacts_data=...)`` and ``r2f eval --bench realfacts --data``."""
    with _root_dir(root) as d:
        record = read_json(d / KEPT_FILE)
        bench = load_realfacts(d)
        splits = assign_splits(list(bench.kept), [bench.facts[i] for i in bench.kept], request=request)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name in (FACTS_FILE, HELDOUT_FILE):
            write_text_atomic(out / name, (d / name).read_text(encoding="utf-8"))
    forget_subjects = splits.pop("forget_subjects")
    record.update(forget_subjects=forget_subjects, request=request, splits=splits,
                  sizes={k: len(v) for k, v in splits.items()})
    if request:  # the shipped reference shares are request 0's splits
        record.pop("reference", None)
        record["split_rule"] = f"{record.get('split_rule', SPLIT_RULE)}; request {request}: the forget subjects are " \
                               f"eligible subjects {request * N_FORGET_SUBJECTS + 1}–{(request + 1) * N_FORGET_SUBJECTS}"
    write_json_atomic(out / KEPT_FILE, record)
    return out


# ----------------------------------------------------------------------------------------------------- loading
@contextlib.contextmanager
def _root_dir(root: str | os.PathLike | None) -> Iterator[Path]:
    if root is None:
        with resources.as_file(shipped_root()) as path:
            yield Path(path)
        return
    path = Path(root)
    if not path.is_dir():
        raise R2FInputError("realfacts directory not found", source=str(path))
    yield path


def load_facts(path: str | os.PathLike) -> dict[str, QAItem]:
    """``facts.jsonl`` checked record by record: r2f's schema, the extra fields, enough views and candidates."""
    path = Path(path)
    items = load_items(path)
    where = item_locations(path)
    facts: dict[str, QAItem] = {}
    for it, loc in zip(items, where):
        for name in EXTRA_FIELDS:
            value = _extra(it, name)
            if value is None:
                raise R2FInputError(f"field '{name}': missing", source=loc)
            if not isinstance(value, str) or not value.strip():
                raise R2FInputError(f"field '{name}': must be a non-empty string", source=loc)
        aliases = _extra(it, "aliases")
        if aliases is not None and (not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases)):
            raise R2FInputError("field 'aliases': must be a list of non-empty strings", source=loc)
        if len(it.paraphrased_question) < MIN_PARAPHRASES:
            raise R2FInputError(f"field 'paraphrased_question': {len(it.paraphrased_question)} paraphrases, at least "
                                f"{MIN_PARAPHRASES} needed", source=loc)
        if len(it.perturbed_answer) < MIN_PERTURBED:
            raise R2FInputError(f"field 'perturbed_answer': {len(it.perturbed_answer)} wrong candidates, at least "
                                f"{MIN_PERTURBED} needed", source=loc)
        if it.answer in it.perturbed_answer:
            raise R2FInputError("field 'perturbed_answer': holds the true answer", source=loc)
        fid = _extra(it, "id")
        if fid in facts:
            raise R2FInputError(f"field 'id': duplicate id '{fid}'", source=loc)
        facts[fid] = it
    return facts


def _load_kept(path: Path, facts: Mapping[str, QAItem]) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]], dict]:
    src = str(path)
    if not path.is_file():
        raise R2FInputError("file not found", source=src)
    record = read_json(path)
    if not isinstance(record, dict):
        raise R2FInputError("expected a JSON object", source=src)

    def ids_at(field: str, value: object) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(i, str) for i in value):
            raise R2FInputError(f"field '{field}': must be a list of fact ids", source=src)
        unknown = [i for i in value if i not in facts]
        if unknown:
            raise R2FInputError(f"field '{field}': unknown fact id '{unknown[0]}'", source=src)
        return tuple(value)

    kept = ids_at("kept", record.get("kept"))
    if not kept:
        raise R2FInputError("field 'kept': no facts", source=src)
    splits_raw = record.get("splits")
    if not isinstance(splits_raw, dict):
        raise R2FInputError("field 'splits': missing", source=src)
    splits: dict[str, tuple[str, ...]] = {}
    seen: dict[str, str] = {}
    kept_set = set(kept)
    for name in SPLITS:
        if name not in splits_raw:
            raise R2FInputError(f"field 'splits.{name}': missing", source=src)
        ids = ids_at(f"splits.{name}", splits_raw[name])
        for i in ids:
            if i not in kept_set:
                raise R2FInputError(f"field 'splits.{name}': fact '{i}' is not kept", source=src)
            if i in seen:
                raise R2FInputError(f"field 'splits.{name}': fact '{i}' is also in '{seen[i]}'", source=src)
            seen[i] = name
        splits[name] = ids
    for name in EVAL_SPLITS:
        if not splits[name]:
            raise R2FInputError(f"field 'splits.{name}': empty", source=src)
    return kept, splits, record


def load_heldout(path: str | os.PathLike) -> tuple[str, ...]:
    """The held-out paragraphs: blocks of text separated by blank lines."""
    path = Path(path)
    if not path.is_file():
        raise R2FInputError("file not found", source=str(path))
    paragraphs = tuple(" ".join(block.split()) for block in re.split(r"\n\s*\n", read_text(path)) if block.strip())
    if not paragraphs:
        raise R2FInputError("no text", source=str(path))
    return paragraphs


def load_realfacts(root: str | os.PathLike | None = None) -> RealFacts:
    """The shipped benchmark, or one in the directory ``root`` (same three files)."""
    with _root_dir(root) as d:
        facts = load_facts(d / FACTS_FILE)
        kept, splits, record = _load_kept(d / KEPT_FILE, facts)
        heldout = load_heldout(d / HELDOUT_FILE)
        where = "shipped" if root is None else str(root)
    measurement = {k: v for k, v in record.items() if k not in ("facts", "kept", "splits")}
    return RealFacts(root=where, facts=facts, kept=kept, splits=splits, heldout=heldout, measurement=measurement)
