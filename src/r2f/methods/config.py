"""Typed method options: one frozen dataclass per method, with defaults, types and help in one place.

A method's ``Config`` (a subclass of :class:`MethodConfig`, fields made with :func:`option`) is the single source
of its options: ``Method.defaults`` is read from it, ``Method(**options)`` validates against it (an unknown
option names every valid one with its default; a ``Literal`` field names its choices; a value of the wrong type
names the option), and ``r2f methods`` prints it as the options' help. PEFT's ``LoraConfig`` is the model: a
dataclass with help metadata and checks at construction.

Values are validated, not converted: an ``int`` given for a ``float`` option stays the ``int`` it was (the manifest
and the run key record what was given).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

from r2f.errors import R2FInputError


def option(default: Any, help: str) -> Any:
    """A config field: its default and one line of help (``r2f methods``, docs)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class MethodConfig:
    """Base of a method's typed options (frozen: a run's options do not change once validated)."""

    @classmethod
    def fields(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: f.default for f in cls.fields()}

    @classmethod
    def types(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        """Per option: name, type (as written), choices (a Literal's), default and help."""
        hints = cls.types()
        return [{"name": f.name, "type": _type_name(hints[f.name]), "choices": _choices(hints[f.name]),
                 "default": f.default, "help": f.metadata.get("help", "")} for f in cls.fields()]

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

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in self.fields()}


def check_value(name: str, value: Any, hint: Any) -> None:
    """R2FInputError (source: the option) unless ``value`` fits the type ``hint``."""
    choices = _choices(hint)
    if choices is not None:
        if value not in choices:
            raise R2FInputError(f"unknown {name} '{value}' (choose from {', '.join(map(str, choices))})", source=name)
        return
    if not _fits(value, hint):
        raise R2FInputError(f"expected {_type_name(hint)}, got {value!r}", source=name)


def _args(hint: Any) -> tuple:
    return typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)


def _choices(hint: Any) -> tuple | None:
    """A Literal's values (with None when the Literal is Optional), or None for another type."""
    out: list = []
    for arg in _args(hint):
        if typing.get_origin(arg) is Literal:
            out += list(typing.get_args(arg))
        elif arg is type(None):
            out.append(None)
        else:
            return None
    return tuple(out)


def _fits(value: Any, hint: Any) -> bool:
    for arg in _args(hint):
        if arg is type(None) and value is None:
            return True
        if arg is bool and isinstance(value, bool):
            return True
        if arg is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if arg is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if arg is str and isinstance(value, str):
            return True
        if isinstance(arg, type) and arg not in (bool, int, float, str) and isinstance(value, arg):
            return True
    return False


def _type_name(hint: Any) -> str:
    names = []
    for arg in _args(hint):
        if typing.get_origin(arg) is Literal:
            names.append(" | ".join(repr(v) for v in typing.get_args(arg)))
        else:
            names.append("None" if arg is type(None) else getattr(arg, "__name__", str(arg)))
    return " | ".join(names)


__all__ = ["MethodConfig", "check_value", "option"]
