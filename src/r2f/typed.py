"""Typed, frozen option records: the field helper and the value checks that a method's ``Config``
(:mod:`r2f.methods.config`) and the evaluation's :class:`r2f.eval_spec.EvalSpec` share.

A field made with :func:`option` carries its default and one line of help; :class:`TypedRecord` reads the fields
back (defaults, types, a description per field for help and docs) and :func:`check_value` validates a value against
its annotation: a ``Literal`` names its choices, another type names the option and the expected type. Values are
validated, not converted. Light on purpose (no torch): the CLI builds its help from these records at start-up.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Sequence, Union

from r2f.errors import R2FInputError


def option(default: Any, help: str) -> Any:
    """A record field: its default and one line of help (CLI help, ``r2f methods``, docs)."""
    return dataclasses.field(default=default, metadata={"help": help})


class TypedRecord:
    """Mixin of a frozen dataclass whose fields are made with :func:`option`: its fields, defaults, types and help."""

    @classmethod
    def fields(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))  # type: ignore[arg-type]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: f.default for f in cls.fields()}

    @classmethod
    def types(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    @classmethod
    def help(cls, name: str) -> str:
        """The help line of field ``name``."""
        return next(f.metadata.get("help", "") for f in cls.fields() if f.name == name)

    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        """Per field: name, type (as written), choices (a Literal's), default and help."""
        hints = cls.types()
        return [{"name": f.name, "type": type_name(hints[f.name]), "choices": choices(hints[f.name]),
                 "default": f.default, "help": f.metadata.get("help", "")} for f in cls.fields()]

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in self.fields()}


def check_value(name: str, value: Any, hint: Any, source: str | None = None) -> None:
    """R2FInputError (source: ``source``, else the option's name) unless ``value`` fits the type ``hint``."""
    allowed = choices(hint)
    if allowed is not None:
        check_choice(name, value, allowed, source)
        return
    if not _fits(value, hint):
        raise R2FInputError(f"expected {type_name(hint)}, got {value!r}", source=source or name)


def check_choice(name: str, value: Any, allowed: Sequence[Any], source: str | None = None) -> None:
    """R2FInputError (source: ``source``, else ``name``) unless ``value`` is one of ``allowed``; the message lists
    them. The one wording of an unknown value, whether the choices come from a ``Literal`` or from a table."""
    if value not in allowed:
        raise R2FInputError(f"unknown {name} '{value}' (choose from {', '.join(map(str, allowed))})",
                            source=source or name)


def _args(hint: Any) -> tuple:
    return typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)


def choices(hint: Any) -> tuple | None:
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
        if typing.get_origin(arg) is tuple and isinstance(value, tuple):
            if all(_fits(v, typing.get_args(arg)[0]) for v in value):
                return True
        if isinstance(arg, type) and arg not in (bool, int, float, str) and isinstance(value, arg):
            return True
    return False


def type_name(hint: Any) -> str:
    names = []
    for arg in _args(hint):
        if typing.get_origin(arg) is Literal:
            names.append(" | ".join(repr(v) for v in typing.get_args(arg)))
        elif typing.get_origin(arg) is tuple:
            names.append(f"tuple of {type_name(typing.get_args(arg)[0])}")
        else:
            names.append("None" if arg is type(None) else getattr(arg, "__name__", str(arg)))
    return " | ".join(names)


__all__ = ["TypedRecord", "check_choice", "check_value", "choices", "option", "type_name"]
