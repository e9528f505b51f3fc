"""Typed method options: one frozen dataclass per method, with defaults, types and help in one place.

A method's ``Config`` (a subclass of :class:`MethodConfig`, fields made with :func:`option`) is the single source
of its options: ``Method.defaults`` is read from it, ``Method(**options)`` validates against it (an unknown
option names every valid one with its default; a ``Literal`` field names its choices; a value of the wrong type
names the option), and ``r2f methods`` prints it as the options' help. PEFT's ``LoraConfig`` is the model: a
dataclass with help metadata and checks at construction. The field helper and the checks are
:mod:`r2f.typed`'s, shared with the evaluation's :class:`r2f.eval_spec.EvalSpec`.

Values are validated, not converted: an ``int`` given for a ``float`` option stays the ``int`` it was (the manifest
and the run key record what was given).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from r2f.errors import R2FInputError
from r2f.typed import TypedRecord, check_value, option


@dataclass(frozen=True)
class MethodConfig(TypedRecord):
    """Base of a method's typed options (frozen: a run's options do not change once validated)."""

    @classmethod
    def build(cls, method: str, options: dict[str, Any]) -> "MethodConfig":
        """The config of ``options`` (missing ones take their defaults); R2FInputError naming the option at fault."""
        valid = {f.name for f in cls.fields()}
        unknown = sorted(set(options) - valid)
        if unknown:
            listed = ", ".join(f"{f.name} ({f.default!r})" for f in cls.fields()) or "none"
            raise R2FInputError(f"unknown option(s) {', '.join(unknown)} for method '{method}'; valid options "
                                f"(default): {listed}", source="--method")
        hints = cls.types()
        for name, value in options.items():
            check_value(name, value, hints[name])
        return cls(**options)


__all__ = ["MethodConfig", "check_value", "option"]
