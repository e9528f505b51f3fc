"""``EvalSpec``: the settings of one evaluation, validated and frozen where ``r2f eval``, :func:`r2f.evaluate` and
the demo hand over to the suite (:func:`r2f.eval.evaluate`).

One frozen dataclass holds every setting of an evaluation (not its inputs: the model, the data directory and the
retain oracle are passed beside it) with its type, default and one line of help; ``r2f eval``'s option help is read
from it, and ``__post_init__`` checks every value (an error names the CLI flag: ``--batch-size``) and resolves the
bench-dependent defaults (``forget`` → ``forget10`` on the world, ``max_new_tokens`` → 200 on the world, 32 on
realfacts), so that the suite receives a complete, checked record. Outside :mod:`r2f.eval` on purpose: that package
imports torch, and the CLI builds its help from this module at start-up.
"""

from __future__ import annotations

import math
import os
import typing
from dataclasses import dataclass
from typing import Any, Literal, Mapping

from r2f.errors import R2FInputError
from r2f.typed import TypedRecord, check_value, option

#: What an evaluation scores against: the world/TOFU suite, or the realfacts benchmark (docs/realfacts.md).
Bench = Literal["world", "realfacts"]
BENCHES: tuple[str, ...] = typing.get_args(Bench)
#: The forget split of a world evaluation when none is named.
DEFAULT_FORGET = "forget10"
#: The greedy generation budget when none is given, per bench.
DEFAULT_MAX_NEW_TOKENS: Mapping[str, int] = {"world": 200, "realfacts": 32}
#: The settings that are the world suite's alone (realfacts has fixed splits and no retain oracle).
WORLD_ONLY = ("forget", "retain_split", "relearn", "documents")
#: Python names of :func:`r2f.eval.evaluate`'s keywords that predate the spec -> the spec's field.
SUITE_ALIASES: Mapping[str, str] = {"forget_split": "forget", "num_threads": "threads"}


#: The settings with no ``r2f eval`` flag (Python only).
PYTHON_ONLY = ("metrics", "relearn_batch_size", "stop_strings", "k", "seed")


def flag(name: str) -> str:
    """The CLI flag of a setting: ``batch_size`` → ``--batch-size``."""
    return "--" + name.replace("_", "-")


def source(name: str) -> str:
    """What an error about a setting names: its CLI flag, or its Python name when it has no flag."""
    return name if name in PYTHON_ONLY else flag(name)


@dataclass(frozen=True)
class EvalSpec(TypedRecord):
    """The settings of one evaluation (``r2f eval``'s options and the suite's Python-only ones, :data:`PYTHON_ONLY`),
    checked at construction."""

    bench: Bench = option("world", "What to evaluate against: 'world' (TOFU-style metrics on --data) or 'realfacts' "
                                   "(real-world knowledge of a pre-trained model; docs/realfacts.md).")
    forget: str | None = option(None, "Forget split (forget01|forget05|forget10; default forget10). World only.")
    retain_split: str | None = option(None, "Retain split scored for utility (default: the complement of --forget, "
                                            "e.g. retain90 for forget10).")
    documents: str | None = option(None, "Also the document metrics (verbatim extraction ROUGE-L of forget, retain "
                                         "and holdout documents; loss MIA AUC forget vs holdout) of this documents "
                                         "split (e.g. forget10 = DATA/documents/forget10.jsonl) or file. World only; "
                                         "docs/metrics.md.")
    metrics: tuple[str, ...] | None = option(None, "Python only: the metric names to compute (r2f.eval.METRICS; "
                                                   "default: every metric of the bench).")
    relearn: int = option(0, "Relearning attack: N fine-tuning steps on half the forget split (0 = off).")
    relearn_lr: float = option(1e-4, "Learning rate of the relearning attack.")
    relearn_batch_size: int = option(8, "Python only: forget items per step of the relearning attack.")
    batch_size: int = option(32, "Sequences per forward / generation batch.")
    max_new_tokens: int | None = option(None, "Greedy generation budget for ROUGE (default 200) or, with --bench "
                                              "realfacts, for the generation match (default 32).")
    stop_strings: tuple[str, ...] | None = option(None, "Python only: strings that end a generated answer (default: "
                                                        "the QA template's when the model has no chat template).")
    k: float = option(0.4, "Python only: the fraction of lowest-probability tokens Min-K% averages (0 < k <= 1).")
    max_items: int | None = option(None, "Use only the first N items of each split (quick checks).")
    seed: int = option(0, "Python only: seed of the relearning attack's fine-tuning.")
    threads: int | None = option(None, "torch intra-op threads during the evaluation (default: r2f.threads' policy).")

    def __post_init__(self) -> None:
        for name in ("metrics", "stop_strings"):  # a list given for a sequence is frozen as a tuple
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, tuple)):
                try:
                    object.__setattr__(self, name, tuple(value))
                except TypeError:
                    pass  # not iterable: the type check below names it
        if isinstance(self.documents, os.PathLike):  # a documents file given as a path is kept as its name
            object.__setattr__(self, "documents", os.fspath(self.documents))
        hints = self.types()
        for f in self.fields():
            check_value(f.name, getattr(self, f.name), hints[f.name], source=source(f.name))
        for name, low in (("relearn", 0), ("relearn_batch_size", 1), ("batch_size", 1), ("max_new_tokens", 1),
                          ("max_items", 1), ("threads", 1)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise R2FInputError(f"must be >= {low}", source=source(name))
        if not (math.isfinite(self.relearn_lr) and self.relearn_lr > 0):
            raise R2FInputError("must be a positive number", source=source("relearn_lr"))
        if not 0 < self.k <= 1:
            raise R2FInputError("must be in (0, 1]", source=source("k"))
        if self.bench == "realfacts":
            for name in WORLD_ONLY:
                if getattr(self, name) not in (None, 0):
                    raise R2FInputError("only for --bench world (realfacts has fixed splits and no retain oracle)",
                                        source=source(name))
        else:
            object.__setattr__(self, "forget", self.forget or DEFAULT_FORGET)
        if self.max_new_tokens is None:
            object.__setattr__(self, "max_new_tokens", DEFAULT_MAX_NEW_TOKENS[self.bench])

    @classmethod
    def of(cls, spec: "EvalSpec | None", settings: dict[str, Any], caller: str = "evaluate") -> "EvalSpec":
        """``spec`` as it is, or the spec of keyword ``settings`` (the suite's older names, ``forget_split`` and
        ``num_threads``, accepted); both at once, or an unknown keyword, is a TypeError as for any call."""
        if spec is not None:
            if settings:
                raise TypeError(f"{caller}() takes spec= or settings as keywords, not both: {', '.join(settings)}")
            if not isinstance(spec, cls):
                raise TypeError(f"{caller}() spec= must be an EvalSpec, got {type(spec).__name__}")
            return spec
        valid = {f.name for f in cls.fields()}
        named: dict[str, Any] = {}
        for key, value in settings.items():
            name = SUITE_ALIASES.get(key, key)
            if name not in valid:
                raise TypeError(f"{caller}() got an unexpected keyword argument '{key}'")
            if name in named:
                raise TypeError(f"{caller}() got '{key}' and another name of the same setting")
            named[name] = value
        return cls(**named)


__all__ = ["BENCHES", "Bench", "DEFAULT_FORGET", "DEFAULT_MAX_NEW_TOKENS", "EvalSpec", "PYTHON_ONLY", "flag", "source"]
