"""A tamper-evident ledger of deletion requests: ``r2f ledger init | apply | verify | show | report``.

A deletion request arrives after the ones before it and applies to the model the earlier ones produced, so the
ledger keeps every model version and, per request, what was asked (the forget file, copied), how it was honoured
(method and full configuration), which model it changed into which (fingerprints) and what was measured then
(forget metrics of this and every earlier request, and utility, before and after) with a verdict: whether each
request's answers are still at least as unlikely as wrong answers were before it was applied (:func:`is_forgotten`).
Records chain by hash, so an auditor can re-check the whole history with :func:`verify` without re-running
anything.

Layout of a ledger directory ``L`` (docs/ledger.md)::

    L/ledger.json                    the init record: source model path, fingerprint and per-file sha256
    L/entries/0001/entry.json        one request: hashes, config, verification record, prev_hash, hash
    L/entries/0001/request/forget.*  the request's forget file, byte for byte
    L/entries/0001/model/            the model version it produced (loads with AutoModelForCausalLM)
    L/pending/model/                 an apply in progress (unlearn's --out: its checkpoints), then gone
    L/report.html                    written by :func:`write_report` (not covered by verify)

An apply commits by renaming one finished directory, ``entries/NNNN``, into place (:func:`r2f.io.atomic_dir`):
until then the ledger is as it was. The unlearning run itself lives in ``pending/`` so that ``resume=True``
continues it from its checkpoints exactly as ``r2f unlearn --resume`` does.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import fcntl
import hashlib
import html
import json
import math
import os
import shlex
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from r2f import __version__
from r2f.data.loader import load_items
from r2f.errors import R2FInputError
from r2f.io import atomic_dir, check_out_dir, is_within, read_text, write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from r2f.data.schema import QAItem

# Model, method and evaluation imports (torch), numpy and the plots (matplotlib) are made inside the functions that
# use them, each marked "deferred": the CLI imports this module at start-up (commands/ledger.py), and it must start
# without torch (tests/test_imports.py); `r2f ledger show` and `verify` need none of them.

FORMAT = 1
LEDGER_FILE = "ledger.json"
ENTRIES = "entries"
PENDING = "pending"
ENTRY_FILE = "entry.json"
REQUEST_DIR = "request"
MODEL_DIR = "model"
REPORT_FILE = "report.html"
#: The forget-side numbers of the verification record (docs/ledger.md): ROUGE-L recall of the greedy answer,
#: mean answer-token NLL and P̄ = mean exp(−NLL), as r2f eval's forget_Q_A_ROUGE and forget_Q_A_Prob define them.
METRICS = ("rougeL_recall", "answer_nll", "answer_prob")


# ----------------------------------------------------------------------------- hashing
def _canonical(obj: Any) -> bytes:
    """The bytes a record's hash is taken over: sorted keys, no whitespace, no NaN (JSON has none)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def record_hash(record: dict) -> str:
    """sha256 of a record without its own ``hash`` field (it includes ``prev_hash``: that is the chain)."""
    return hashlib.sha256(_canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digests(directory: str | os.PathLike) -> dict[str, str]:
    """sha256 of every file below ``directory`` by relative path: verify names the file that changed."""
    root = Path(directory)
    return {str(p.relative_to(root)): file_sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _fingerprint(directory: Path) -> str:
    # deferred (torch): see the note under the module's imports
    from r2f.models.loading import model_fingerprint

    return model_fingerprint(directory)


def _finite(obj: Any) -> Any:
    """NaN/Inf as None, so that every record is strict JSON and hashes the same after a round trip."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- reading a ledger
def _root(ledger: str | os.PathLike) -> Path:
    """The ledger directory, or exit-2 input error naming it."""
    root = Path(ledger)
    if not root.is_dir():
        raise R2FInputError("ledger directory not found", source=str(root))
    if not (root / LEDGER_FILE).is_file():
        raise R2FInputError(f"not an r2f ledger ({LEDGER_FILE} missing; create one with r2f ledger init)",
                            source=str(root))
    return root


def _read_record(path: Path) -> dict:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise R2FInputError(f"not valid JSON (line {exc.lineno}: {exc.msg})", source=str(path)) from None
    if not isinstance(data, dict):
        raise R2FInputError("expected a JSON object", source=str(path))
    return data


def read_init(ledger: str | os.PathLike) -> dict:
    """The init record (``ledger.json``)."""
    return _read_record(_root(ledger) / LEDGER_FILE)


def _entry_dirs(root: Path) -> tuple[list[Path], list[str]]:
    """``entries/NNNN`` in index order, and problems with what else is there (names, gaps)."""
    base = root / ENTRIES
    if not base.is_dir():
        return [], [f"{ENTRIES}/: missing"]
    dirs, problems = [], []
    for p in sorted(base.iterdir()):
        if p.name.startswith("."):  # a temporary directory of an apply in progress or killed (r2f.io)
            continue
        if p.is_dir() and p.name.isdigit():
            dirs.append(p)
        else:
            problems.append(f"{ENTRIES}/{p.name}: not a ledger entry")
    dirs.sort(key=lambda p: int(p.name))
    for k, p in enumerate(dirs, start=1):
        if int(p.name) != k:
            problems.append(f"entry {k}: missing ({ENTRIES}/{p.name} follows entry {k - 1})")
            return dirs[: k - 1], problems
    return dirs, problems


def entries(ledger: str | os.PathLike) -> list[dict]:
    """Every entry record, oldest first, as stored (no checks: :func:`verify` checks)."""
    root = _root(ledger)
    dirs, _ = _entry_dirs(root)
    return [_read_record(d / ENTRY_FILE) for d in dirs if (d / ENTRY_FILE).is_file()]


def show(ledger: str | os.PathLike) -> list[dict]:
    """The entries as ``r2f ledger show --json`` prints them: oldest first, with ``request_sha256``, ``parent``
    and ``child`` fingerprints, ``method`` and ``path`` (the child model version's directory)."""
    root = _root(ledger)
    dirs, _ = _entry_dirs(root)
    out = []
    for d in dirs:
        if not (d / ENTRY_FILE).is_file():
            continue
        e = _read_record(d / ENTRY_FILE)
        out.append({"index": e.get("index"), "time": e.get("time"), "request_sha256": e.get("request_sha256"),
                    "request_items": (e.get("request") or {}).get("items"),
                    "authors": (e.get("request") or {}).get("authors"),
                    "method": e.get("method"), "renewed": e.get("renewed") or [],
                    "parent": (e.get("parent") or {}).get("fingerprint"),
                    "child": (e.get("child") or {}).get("fingerprint"), "path": str((d / MODEL_DIR).resolve()),
                    "config": e.get("config"), "verification": e.get("verification"),
                    "prev_hash": e.get("prev_hash"), "hash": e.get("hash")})
    return out


def head(ledger: str | os.PathLike) -> str | None:
    """The newest record's hash (the init record's when no request was applied): publish it to anchor the chain."""
    root = _root(ledger)
    recs = entries(root)
    return (recs[-1] if recs else read_init(root)).get("hash")


def latest_model(ledger: str | os.PathLike) -> Path:
    """The directory of the ledger's newest model version (the source model before the first request)."""
    root = _root(ledger)
    dirs, _ = _entry_dirs(root)
    return dirs[-1] / MODEL_DIR if dirs else Path(read_init(root)["source"]["path"])


# ----------------------------------------------------------------------------- verify
def _compare_files(recorded: dict, directory: Path, who: str) -> list[str]:
    """Which files of a model directory changed, appeared or went missing against their recorded sha256."""
    if not directory.is_dir():
        return [f"{who}: model directory missing"]
    now = file_digests(directory)
    problems = [f"{who}: model file {name} changed" for name, sha in recorded.items()
                if name in now and now[name] != sha]
    problems += [f"{who}: model file {name} missing" for name in recorded if name not in now]
    problems += [f"{who}: unexpected model file {name}" for name in now if name not in recorded]
    return problems


def _check_model(recorded: dict, directory: Path, who: str) -> list[str]:
    """A model version against its record: per-file hashes (naming the file) and the fingerprint."""
    problems = _compare_files(recorded.get("files") or {}, directory, who)
    if not problems and directory.is_dir() and _fingerprint(directory) != recorded.get("fingerprint"):
        problems.append(f"{who}: model fingerprint does not match the record")
    return problems


def verify(ledger: str | os.PathLike, *, check_source: bool = True) -> dict:
    """Recompute every hash and fingerprint of the ledger; returns ``{"ok", "entries", "head", "problems",
    "notes"}``. Each problem is one line naming the record at fault (``init`` or ``entry N``).

    Checked: each record's own hash, the chain (each entry's ``prev_hash`` is the previous record's hash, its
    ``parent`` the previous model's fingerprint), each request file's sha256, each model version's files and
    fingerprint, and (``check_source``) the source model when it is still where ``init`` found it (a missing
    source is a note, not a failure: an auditor may hold the ledger without it).
    """
    root = _root(ledger)
    problems: list[str] = []
    notes: list[str] = []
    init = read_init(root)
    if init.get("hash") != record_hash(init):
        problems.append(f"init ({LEDGER_FILE}): record changed (its hash does not match)")
    source = init.get("source") or {}
    src_path = Path(source.get("path") or "")
    if check_source:
        if source.get("path") and src_path.is_dir():
            problems += _check_model(source, src_path, f"init (source model {src_path})")
        else:
            notes.append(f"source model {source.get('path')} not found: not checked")
    dirs, listing = _entry_dirs(root)
    problems += listing
    prev_hash, prev_fp = init.get("hash"), source.get("fingerprint")
    for k, d in enumerate(dirs, start=1):
        who = f"entry {k} ({ENTRIES}/{d.name})"
        if not (d / ENTRY_FILE).is_file():
            problems.append(f"{who}: {ENTRY_FILE} missing")
            prev_hash = prev_fp = None
            continue
        try:
            e = _read_record(d / ENTRY_FILE)
        except R2FInputError as exc:
            problems.append(f"{who}: {ENTRY_FILE} unreadable ({exc})")
            prev_hash = prev_fp = None
            continue
        if e.get("hash") != record_hash(e):
            problems.append(f"{who}: record changed ({ENTRY_FILE}'s hash does not match)")
        if e.get("index") != k:
            problems.append(f"{who}: index {e.get('index')} where {k} belongs")
        if prev_hash is not None and e.get("prev_hash") != prev_hash:
            problems.append(f"{who}: chain broken (prev_hash is not the hash of "
                            f"{'init' if k == 1 else f'entry {k - 1}'})")
        if prev_fp is not None and (e.get("parent") or {}).get("fingerprint") != prev_fp:
            problems.append(f"{who}: parent fingerprint is not the {'source model' if k == 1 else f'entry {k - 1} model'}'s")
        req = e.get("request") or {}
        req_file = d / REQUEST_DIR / str(req.get("file", ""))
        if not req.get("file") or not req_file.is_file():
            problems.append(f"{who}: request file missing")
        elif file_sha256(req_file) != e.get("request_sha256"):
            problems.append(f"{who}: request file {REQUEST_DIR}/{req['file']} changed")
        problems += _check_model(e.get("child") or {}, d / MODEL_DIR, who)
        expected = {ENTRY_FILE, REQUEST_DIR, MODEL_DIR}
        problems += [f"{who}: unexpected file {p.name}" for p in d.iterdir() if p.name not in expected]
        if (d / REQUEST_DIR).is_dir():
            problems += [f"{who}: unexpected file {REQUEST_DIR}/{p.name}" for p in (d / REQUEST_DIR).iterdir()
                         if p.name != req.get("file")]
        prev_hash, prev_fp = e.get("hash"), (e.get("child") or {}).get("fingerprint")
    if (root / PENDING).exists():
        notes.append(f"an apply is in progress or was interrupted ({PENDING}/): not part of the ledger")
    return {"ok": not problems, "entries": len(dirs), "head": prev_hash, "problems": problems, "notes": notes}


# ----------------------------------------------------------------------------- init
def init(model: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Start a ledger at ``out`` for ``model`` (a model directory or ``smollm2``): record its path, fingerprint
    and per-file sha256. The model is only read; every later version is written inside the ledger."""
    # deferred (torch): see the note under the module's imports
    from r2f.models.loading import resolve_model_dir

    src = resolve_model_dir(model).resolve()
    out = Path(out)
    if is_within(out, src) or is_within(src, out):
        raise R2FInputError("the ledger must not be the source model directory, inside it, or contain it",
                            source=str(out))
    check_out_dir(out, overwrite=overwrite, protect=[src])
    record = {"r2f_ledger": FORMAT, "created": _now(), "r2f_version": _version(),
              "source": {"model": str(model), "path": str(src), "fingerprint": _fingerprint(src),
                         "files": file_digests(src)}}
    record["hash"] = record_hash(record)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / ENTRIES).mkdir()
        write_json_atomic(tmp / LEDGER_FILE, record)
    return out


def _version() -> str:

    return __version__


# ----------------------------------------------------------------------------- measuring
def request_metrics(model: Any, tokenizer: Any, items: Sequence[QAItem], *, max_new_tokens: int = 200,
                    batch_size: int = 32, desc: str = "ledger eval") -> dict:
    """Forget-side numbers of one file on one model: mean ROUGE-L recall of the greedy answer (r2f eval's
    ``*_Q_A_ROUGE``), mean answer-token NLL and P̄ (``*_Q_A_Prob``), with r2f.eval's own generation and scoring."""
    # deferred (numpy, torch): see the note under the module's imports
    import numpy as np

    from r2f.data.templates import template_for
    from r2f.eval.functional import nanmean, rouge_scores
    from r2f.eval.scoring import generate_answers, score_pairs

    template = template_for(tokenizer)
    questions, answers = [it.question for it in items], [it.answer for it in items]
    gens = generate_answers(model, tokenizer, questions, template, batch_size=batch_size,
                            max_new_tokens=max_new_tokens, desc=f"{desc}: generating")
    losses = score_pairs(model, tokenizer, questions, answers, template, batch_size=batch_size,
                         desc=f"{desc}: scoring")["avg_loss"]
    return _finite({"items": len(items),
                    "rougeL_recall": nanmean(rouge_scores(a, g)["rougeL_recall"] for a, g in zip(answers, gens)),
                    "answer_nll": nanmean(losses),
                    "answer_prob": nanmean(float(np.exp(-x)) for x in losses)})


def forget_bar(model: Any, tokenizer: Any, items: Sequence[QAItem], *, batch_size: int = 32,
               desc: str = "ledger bar") -> dict | None:
    """The bar a request's answers must reach to count as forgotten: ``model``'s mean answer NLL of the request's
    questions each paired with another item's answer of the same kind (R2F's ``shuffled`` stop threshold),
    scored as :func:`request_metrics` scores ``answer_nll``. None when no such pair exists (one item, or every
    answer the same): no bar, no verdict."""
    # deferred (torch): see the note under the module's imports
    from r2f.data.batching import shuffled_answer_pairs
    from r2f.data.templates import template_for
    from r2f.eval.functional import nanmean
    from r2f.eval.scoring import score_pairs

    pairs = shuffled_answer_pairs(items)
    if not pairs:
        return None
    losses = score_pairs(model, tokenizer, [q for q, _ in pairs], [a for _, a in pairs], template_for(tokenizer),
                         batch_size=batch_size, desc=f"{desc}: scoring")["avg_loss"]
    return _finite({"answer_nll": nanmean(losses), "pairs": len(pairs)})


def is_forgotten(after: dict | None, bar: dict | None) -> bool | None:
    """The ledger's verdict on one request at one model version: its answer NLL has reached its bar (measured on the
    model the request was applied to). None without a bar or a measured NLL."""
    nll, level = (after or {}).get("answer_nll"), (bar or {}).get("answer_nll")
    if not isinstance(nll, (int, float)) or not isinstance(level, (int, float)):
        return None
    return bool(nll >= level)


class _Meter:
    """Measures files on a ledger's models, reusing what an earlier entry recorded for the same model fingerprint,
    file sha256, item count and generation length: a model version is measured once, when it is the child."""

    def __init__(self, chain: list[dict], device: str | None, threads: int | None, max_new_tokens: int):
        self.known: dict[tuple[str, str, int], dict] = {}
        for e in chain:
            rec = e.get("verification") or {}
            if rec.get("max_new_tokens") != max_new_tokens:
                continue  # measured with another generation length: not the same number
            parent, child = (e.get("parent") or {}).get("fingerprint"), (e.get("child") or {}).get("fingerprint")
            for row in [rec.get("request") or {}, *(rec.get("earlier") or []), *(rec.get("utility") or [])]:
                for fp, key in ((parent, "before"), (child, "after")):
                    value = row.get(key) or {}
                    if fp and row.get("sha256") and isinstance(value.get("items"), int):
                        self.known[(fp, row["sha256"], value["items"])] = value
        self.device, self.threads, self.max_new_tokens = device, threads, max_new_tokens
        self.loaded: dict[str, tuple[Any, Any]] = {}

    def _run(self, model_dir: Path, fingerprint: str, fn, *args, **kwargs):
        """``fn(model, tokenizer, *args, **kwargs)`` on the model with that fingerprint, loaded once per meter, under
        the thread count the model's size and the free cores call for."""
        # deferred (torch): see the note under the module's imports
        from r2f.models.loading import load_model
        from r2f.threads import model_threads_for

        if fingerprint not in self.loaded:
            net, tok = load_model(model_dir)
            self.loaded[fingerprint] = (net.to(self.device) if self.device else net, tok)
        net, tok = self.loaded[fingerprint]
        with model_threads_for(net, self.threads):
            return fn(net, tok, *args, **kwargs)

    def measure(self, model_dir: Path, fingerprint: str, sha: str, items: Sequence[QAItem], label: str) -> dict:
        key = (fingerprint, sha, len(items))
        if key not in self.known:
            self.known[key] = self._run(model_dir, fingerprint, request_metrics, items,
                                        max_new_tokens=self.max_new_tokens, desc=label)
        return self.known[key]

    def bar(self, model_dir: Path, fingerprint: str, items: Sequence[QAItem], label: str) -> dict | None:
        """:func:`forget_bar` of ``items`` on that model."""
        return self._run(model_dir, fingerprint, forget_bar, items, desc=label)


# ----------------------------------------------------------------------------- apply
@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One apply at a time per ledger (an flock on the directory itself: no lock file to leave behind)."""
    fd = os.open(root, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise R2FInputError("another r2f ledger apply is running on this ledger", source=str(root)) from None
        yield
    finally:
        os.close(fd)


def _data_file(path: str | os.PathLike) -> tuple[list[QAItem], dict]:
    """Items of a data file and its record (path, sha256 of the bytes read, items); exit 2 naming it."""
    path = Path(path)
    items = load_items(path)  # not found / not UTF-8 / bad record: exit 2 naming FILE:LINE
    return items, {"path": str(path.resolve()), "sha256": file_sha256(path), "items": len(items)}


def pending_dir(ledger: str | os.PathLike) -> Path:
    """Where an apply runs unlearning (unlearn's ``--out``; its checkpoints make it resumable)."""
    return Path(ledger) / PENDING / MODEL_DIR


def _prepare_pending(root: Path, resume: bool, restart: bool) -> Path:
    pending = pending_dir(root)
    if restart:
        shutil.rmtree(root / PENDING, ignore_errors=True)
    held = pending.is_dir() and any(pending.iterdir())
    if resume and not held:
        raise R2FInputError("--resume: no interrupted apply in this ledger (drop --resume to start one)",
                            source=str(root / PENDING))
    if held and not resume:
        raise R2FInputError("an interrupted apply is pending here; pass --resume (with the same request and "
                            "options) to continue it, or --restart to discard it", source=str(root / PENDING))
    if not held:
        shutil.rmtree(root / PENDING, ignore_errors=True)  # an empty leftover: nothing to continue
    return pending


def _request_items(root: Path, chain: list[dict], k: int) -> list[QAItem]:
    """Entry ``k``'s request items (the ledger's verified copy)."""
    return load_items(root / ENTRIES / f"{k:04d}" / REQUEST_DIR / chain[k - 1]["request"]["file"])


def _items_file(path: Path, parts: Sequence[tuple[int, Sequence[QAItem]]]) -> Path:
    """``parts`` (entry number, its request's items) as one JSONL file, written atomically; each item carries
    ``request``, its entry (R2F's stop rule gives each request its own threshold)."""
    lines = [json.dumps({**it.model_dump(exclude_none=True), "request": k}, ensure_ascii=False)
             for k, items in parts for it in items]
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def _earlier_requests_file(root: Path, chain: list[dict], keep: Sequence[int]) -> Path:
    """The union of the items of the earlier requests ``keep`` (entry numbers), written beside the pending run:
    what a method keeps forgotten while it honours the next request. Rebuilt from the verified copies on every
    apply."""
    return _items_file(root / PENDING / "earlier_requests.jsonl", [(k, _request_items(root, chain, k)) for k in keep])


def renewal_due(chain: list[dict]) -> list[int]:
    """The earlier entries whose requests the newest model version does not keep forgotten, by the newest entry's
    verdicts (its own request's and every earlier one's): what the next apply forgets again with its request."""
    if not chain:
        return []
    v = chain[-1].get("verification") or {}
    due = list(relapsed_entries(v) or [])
    if (v.get("request") or {}).get("forgotten") is False:
        due.append(len(chain))
    return sorted(due)


def apply(
    ledger: str | os.PathLike,
    forget: str | os.PathLike,
    method: str = "r2f",
    *,
    retain: str | os.PathLike | None = None,
    utility: Sequence[str | os.PathLike] = (),
    decoder: str | os.PathLike | None = None,
    steps: int | None = None,
    lr: float | None = None,
    views: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    save_every: int = 0,
    resume: bool = False,
    restart: bool = False,
    device: str | None = None,
    max_failures: int = 3,
    threads: int | None = None,
    max_new_tokens: int = 200,
    eval_max_items: int | None = None,
    renew: bool = True,
    **options: Any,
) -> dict:
    """Honour one deletion request: unlearn ``forget`` from the ledger's newest model version with ``method``
    (every option as in ``r2f.unlearn``), measure, and commit a new entry with a new model version. Returns the
    entry record.

    Measured before (on the parent) and after (on the child): this request's forget file, every earlier request's
    forget file (the ledger's copies) and each ``utility`` file (without any, the ``retain`` file when given);
    ``eval_max_items`` caps the items of the utility files. ``renew``: the earlier requests the parent no longer
    keeps forgotten (:func:`renewal_due`: the parent entry's verdicts) are forgotten again in the same run, their
    items added to the request's (docs/ledger.md, "Renewal"); the entry records which. Bad input, or a ledger
    that fails the checks :func:`verify` makes, raises :class:`R2FInputError` before anything is written.
    ``save_every``/``resume``: checkpoints in ``L/pending/model/checkpoints``, continued as ``r2f unlearn
    --resume`` does; ``restart`` discards an interrupted apply.
    """
    # deferred (torch): see the note under the module's imports
    from r2f.methods import unlearn
    from r2f.methods.base import METHODS, check_method
    from r2f.threads import check_threads

    root = _root(ledger)
    check_method(method)
    if resume and restart:
        raise R2FInputError("give --resume or --restart, not both", source="--restart")
    if max_new_tokens < 1:
        raise R2FInputError("must be at least 1", source="--max-new-tokens")
    if eval_max_items is not None and eval_max_items < 1:
        raise R2FInputError("must be at least 1", source="--eval-max-items")
    check_threads(threads)
    with _locked(root):
        state = verify(root, check_source=False)
        if not state["ok"]:
            raise R2FInputError(f"{state['problems'][0]}; run r2f ledger verify", source=str(root))
        init_rec, chain = read_init(root), entries(root)
        parent_dir = latest_model(root)
        parent_fp = (chain[-1]["child"] if chain else init_rec["source"])["fingerprint"]
        if not chain and _check_model(init_rec["source"], parent_dir, "source model"):
            raise R2FInputError("the source model changed since r2f ledger init (or is gone); a ledger applies "
                                "requests to the model it recorded", source=str(parent_dir))
        forget_items, forget_info = _data_file(forget)
        retain_info = _data_file(retain)[1] if retain is not None else None
        util_paths = list(utility) or ([retain] if retain is not None else [])
        util = [(Path(p), *_data_file(p)) for p in util_paths]
        index = len(chain) + 1
        pending = _prepare_pending(root, resume, restart)
        # a request the parent no longer keeps forgotten is honoured again with this one: the run forgets the
        # union (first-order protection of earlier requests slows their relapse but does not stop it)
        renewed = renewal_due(chain) if renew else []
        run_forget = _items_file(root / PENDING / "run_forget.jsonl",
                                 [(index, forget_items), *((k, _request_items(root, chain, k)) for k in renewed)]) \
            if renewed else Path(forget)
        run_forget_sha = file_sha256(run_forget) if renewed else forget_info["sha256"]
        kept = [k for k in range(1, len(chain) + 1) if k not in renewed]
        if kept and "forgotten" in (METHODS[method].defaults or {}) and "forgotten" not in options:
            # a method that can keep earlier requests forgotten is shown them (their union, from the ledger's copies)
            options["forgotten"] = str(_earlier_requests_file(root, chain, kept))

        try:
            run = unlearn(str(parent_dir), run_forget, retain, method=method, decoder=decoder, out=pending,
                          steps=steps, seed=seed, lr=lr, views=views, batch_size=batch_size, save_every=save_every,
                          resume=resume, device=device, max_failures=max_failures, threads=threads, **options)
        except R2FInputError:
            if not resume:  # refused before it ran: the files written for it go too (bad input writes nothing)
                shutil.rmtree(root / PENDING, ignore_errors=True)
            raise
        manifest = json.loads((Path(run) / "manifest.json").read_text(encoding="utf-8"))
        if manifest["data"]["forget"]["sha256"] != run_forget_sha:
            raise R2FInputError("the file changed while the request ran; apply it again", source=str(forget))
        shutil.rmtree(pending / "checkpoints", ignore_errors=True)  # the run is done; the ledger keeps the model
        child = {"fingerprint": _fingerprint(pending), "files": file_digests(pending)}

        meter = _Meter(chain, device, threads, max_new_tokens)

        def before_after(items: Sequence[QAItem], sha: str, label: str) -> dict:
            return {"before": meter.measure(parent_dir, parent_fp, sha, items, f"{label} (parent)"),
                    "after": meter.measure(pending, child["fingerprint"], sha, items, f"{label} (child)")}


        earlier = []
        for k, e in enumerate(chain, start=1):
            req_file = root / ENTRIES / f"{k:04d}" / REQUEST_DIR / e["request"]["file"]
            row = {"entry": k, "sha256": e["request_sha256"],
                   **before_after(load_items(req_file), e["request_sha256"], f"entry {k} request")}
            # judged against the bar of its own entry (its parent's shuffled answers): a relapse shows as False
            bar_k = ((e.get("verification") or {}).get("request") or {}).get("bar")
            earlier.append({**row, "forgotten": is_forgotten(row["after"], bar_k)})
        this = {"sha256": forget_info["sha256"], **before_after(forget_items, forget_info["sha256"], "this request"),
                "bar": meter.bar(parent_dir, parent_fp, forget_items, "this request: bar (parent)")}
        this["forgotten"] = is_forgotten(this["after"], this["bar"])
        verification = {
            "metrics": list(METRICS), "max_new_tokens": max_new_tokens, "max_items": eval_max_items,
            "request": this,
            "earlier": earlier,
            "utility": [{"name": p.name, "path": info["path"], "sha256": info["sha256"],
                         **before_after(items[:eval_max_items], info["sha256"], f"utility {p.name}")}
                        for p, items, info in util],
        }
        authors = sorted({a for a in (it.author for it in forget_items) if a})
        suffix = "".join(Path(forget).suffixes[-1:]) or ".jsonl"
        entry = _finite({
            "r2f_ledger_entry": FORMAT, "index": index, "time": _now(), "r2f_version": _version(),
            "request_sha256": forget_info["sha256"],
            "request": {"file": f"forget{suffix}", "given_path": forget_info["path"], "items": forget_info["items"],
                        "authors": authors},
            "method": method,
            "renewed": renewed,
            "config": {**manifest["config"], "decoder": manifest.get("decoder"), "requested_steps": steps,
                       "save_every": save_every, "max_failures": max_failures},
            "run": {"steps_done": manifest["steps"]["done"], "stop_reason": manifest["steps"]["stop_reason"],
                    "resumed_from_step": manifest.get("resumed_from_step"), "summary": manifest.get("summary"),
                    "cost": manifest.get("cost")},
            "retain": retain_info,
            "parent": {"fingerprint": parent_fp,
                       "path": str(parent_dir) if not chain else f"{ENTRIES}/{index - 1:04d}/{MODEL_DIR}"},
            "child": {**child, "path": f"{ENTRIES}/{index:04d}/{MODEL_DIR}"},
            "verification": verification,
            "prev_hash": (chain[-1] if chain else init_rec)["hash"],
        })
        entry["hash"] = record_hash(entry)
        request_bytes = Path(forget).read_bytes()
        if hashlib.sha256(request_bytes).hexdigest() != forget_info["sha256"]:
            raise R2FInputError("the file changed while the request ran; apply it again", source=str(forget))
        with atomic_dir(root / ENTRIES / f"{index:04d}") as tmp:
            (tmp / REQUEST_DIR).mkdir()
            (tmp / REQUEST_DIR / entry["request"]["file"]).write_bytes(request_bytes)
            write_json_atomic(tmp / ENTRY_FILE, entry)
            os.replace(pending, tmp / MODEL_DIR)  # last: nothing after it can fail but the commit itself
        shutil.rmtree(root / PENDING, ignore_errors=True)
    return entry


def interrupted_message(ledger: str | os.PathLike | None, args: Sequence[str]) -> str:
    """The CLI's Ctrl-C line for ``r2f ledger apply`` (``args``: its command line; ``ledger``: the ledger it names,
    None when the line names none): the ledger is unchanged, and what ``--resume`` can continue (a checkpoint, or
    a finished run whose measuring was cut short). ``r2f.commands.ledger`` reads the ledger off the line."""
    args = list(args)
    run = pending_dir(ledger) if ledger else None
    steps = sorted(run.glob("checkpoints/step-*/state.json")) if run else []
    kept = f"checkpoint kept at {steps[-1].parent}" if steps else (
        f"finished unlearning run kept at {run}" if run and (run / "manifest.json").is_file() else None)
    if kept is None:
        return "r2f: interrupted; the ledger is unchanged and no run was kept (use --save-every to keep checkpoints)"
    again = args if "--resume" in args else [*args, "--resume"]
    return f"r2f: interrupted; the ledger is unchanged; {kept}; continue with: r2f {shlex.join(again)}"


# ----------------------------------------------------------------------------- report
def sequence_table(ledger: str | os.PathLike) -> dict:
    """The numbers :func:`write_report` plots, per entry (0 = before the first request): every request's forget
    ROUGE-L recall once it is in the ledger, and each utility file's ROUGE-L recall."""
    recs = entries(ledger)
    forget: dict[int, list[tuple[int, float | None]]] = {}
    util: dict[str, list[tuple[int, float | None]]] = {}
    for e in recs:
        k, v = e["index"], e.get("verification") or {}
        req = v.get("request") or {}
        forget.setdefault(k, []).extend([(k - 1, (req.get("before") or {}).get("rougeL_recall")),
                                         (k, (req.get("after") or {}).get("rougeL_recall"))])
        for row in v.get("earlier") or []:
            forget.setdefault(row["entry"], []).append((k, (row.get("after") or {}).get("rougeL_recall")))
        for row in v.get("utility") or []:
            series = util.setdefault(row["name"], [])
            if not series:
                series.append((k - 1, (row.get("before") or {}).get("rougeL_recall")))
            series.append((k, (row.get("after") or {}).get("rougeL_recall")))
    return {"entries": len(recs), "forget_rouge": {str(k): v for k, v in forget.items()},
            "utility_rouge": util}


def _curves_png(table: dict, forget_lines: dict[str, float], utility_lines: dict[str, float]) -> bytes | None:
    """Forget ROUGE of every request and utility ROUGE against the number of requests applied."""
    # deferred (matplotlib): see the note under the module's imports
    from r2f.report.plots import _png, plt

    if not table["entries"]:
        return None
    fig, (ax_f, ax_u) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    def xy(pts: list[tuple[int, float | None]]) -> tuple[list[int], list[float]]:
        kept = [(x, y) for x, y in pts if y is not None]
        return [x for x, _ in kept], [y for _, y in kept]

    for k, pts in table["forget_rouge"].items():
        ax_f.plot(*xy(pts), marker="o", ms=3, lw=1, label=f"request {k}")
    for name, pts in table["utility_rouge"].items():
        ax_u.plot(*xy(pts), marker="o", ms=4, lw=1.5, label=name)
    for ax, lines in ((ax_f, forget_lines), (ax_u, utility_lines)):
        at: dict[float, list[str]] = {}  # one line and one label per height (two thresholds may coincide)
        for label, y in lines.items():
            at.setdefault(y, []).append(label)
        for y, labels in at.items():
            ax.axhline(y, color="grey", lw=0.8, ls="--")
            ax.text(0, y, " " + " = ".join(labels), va="bottom", fontsize=7, color="grey")
    ax_f.set_title("forget ROUGE-L recall of each request")
    ax_u.set_title("utility ROUGE-L recall")
    for ax in (ax_f, ax_u):
        ax.set_xlabel("requests applied")
        ax.set_xticks(range(table["entries"] + 1))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    ax_f.set_ylabel("ROUGE-L recall")
    return _png(fig)


def write_report(ledger: str | os.PathLike, *, forget_lines: dict[str, float] | None = None,
                 utility_lines: dict[str, float] | None = None, checks: Sequence[tuple[str, bool, str]] = (),
                 title: str = "r2f ledger") -> Path:
    """Write ``L/report.html``: the entries, the forget/utility curves over the sequence of requests, and the
    caller's ``checks`` (name, passed, detail) and horizontal reference lines (label → ROUGE) on either panel."""
    root = _root(ledger)
    table, rows = sequence_table(root), show(root)
    png = _curves_png(table, forget_lines or {}, utility_lines or {})
    esc = html.escape
    parts = [f"<!doctype html><meta charset='utf-8'><title>{esc(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}td,th{padding:2px 8px;"
             "border-bottom:1px solid #ddd;font-size:13px}code{font-size:12px}</style>",
             f"<h1>{esc(title)}</h1><p>{len(rows)} request(s); head hash <code>{esc(str(head(root)))}</code>. "
             "Check the chain with <code>r2f ledger verify</code>.</p>"]
    if png:
        parts.append(f"<img alt='forget and utility ROUGE over the requests' "
                     f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    if checks:
        parts.append("<h2>Checks</h2><table><tr><th>check</th><th>result</th><th>detail</th></tr>")
        parts += [f"<tr><td>{esc(n)}</td><td>{'pass' if ok else 'FAIL'}</td><td>{esc(d)}</td></tr>"
                  for n, ok, d in checks]
        parts.append("</table>")
    parts.append("<h2>Entries</h2><table><tr><th>#</th><th>time</th><th>method</th><th>authors</th>"
                 "<th>request sha256</th><th>forget ROUGE before → after</th><th>forgotten (NLL ≥ bar)</th>"
                 "<th>earlier requests not forgotten</th><th>forgot again</th><th>child</th></tr>")
    for r in rows:
        req = (r.get("verification") or {}).get("request") or {}
        b, a = (req.get("before") or {}).get("rougeL_recall"), (req.get("after") or {}).get("rougeL_recall")
        parts.append(f"<tr><td>{r['index']}</td><td>{esc(str(r['time']))}</td><td>{esc(str(r['method']))}</td>"
                     f"<td>{esc(', '.join(r.get('authors') or []))}</td><td><code>{esc(str(r['request_sha256'])[:16])}"
                     f"</code></td><td>{short_number(b)} → {short_number(a)}</td><td>{esc(verdict_text(req))}</td>"
                     f"<td>{esc(relapsed_text(r.get('verification')))}</td>"
                     f"<td>{esc(entries_text(r.get('renewed') or []))}</td>"
                     f"<td><code>{esc(str(r['child'])[:16])}</code></td></tr>")
    parts.append("</table>")
    return write_text_atomic(root / REPORT_FILE, "\n".join(parts) + "\n")


def verdict_text(row: dict) -> str:
    """A request row's verdict as a table cell: "yes (NLL 3.900 ≥ 3.400)", "NO (NLL 0.046 < 3.720)" or "–"
    without one."""
    verdict = row.get("forgotten")
    if verdict is None:
        return "–"
    nll, bar = (row.get("after") or {}).get("answer_nll"), (row.get("bar") or {}).get("answer_nll")
    return f"{'yes' if verdict else 'NO'} (NLL {short_number(nll)} {'≥' if verdict else '<'} {short_number(bar)})"


def relapsed_entries(verification: dict | None) -> list[int] | None:
    """The earlier entries whose requests an entry's child no longer keeps forgotten; None without verdicts (a
    first entry, or a ledger written before them)."""
    rows = (verification or {}).get("earlier") or []
    if not any(r.get("forgotten") is not None for r in rows):
        return None
    return [r["entry"] for r in rows if r.get("forgotten") is False]


def entries_text(numbers: Sequence[int]) -> str:
    """Entry numbers as words: "entries 4, 5", "entry 4" or "none"."""
    return ("entry " if len(numbers) == 1 else "entries ") + ", ".join(map(str, numbers)) if numbers else "none"


def relapsed_text(verification: dict | None) -> str:
    """:func:`relapsed_entries` as a table cell: "entries 4, 5", "entry 4", "none", or "–" without verdicts."""
    lost = relapsed_entries(verification)
    return "–" if lost is None else entries_text(lost)


def short_number(v: Any) -> str:
    """Three decimals, or a dash for a missing number (tables and CLI lines)."""
    return f"{v:.3f}" if isinstance(v, (int, float)) else "–"


__all__ = ["init", "apply", "verify", "show", "entries", "head", "latest_model", "request_metrics", "forget_bar",
           "is_forgotten", "renewal_due", "write_report", "sequence_table", "verdict_text", "relapsed_entries",
           "relapsed_text", "entries_text", "record_hash", "file_digests", "pending_dir", "interrupted_message",
           "METRICS"]
