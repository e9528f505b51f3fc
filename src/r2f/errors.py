"""Errors that the CLI turns into exit code 2 with one clear line."""

from __future__ import annotations


class R2FInputError(Exception):
    """Bad input from the user: a file, field, line or parameter at fault.

    The message must be one line that names the offending file/field/line,
    e.g. ``data/forget10.jsonl:3: field 'answer': missing``.
    """

    def __init__(self, message: str, *, source: str | None = None):
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


class R2FNumericalError(Exception):
    """A run that kept producing NaN/Inf (loss, gradients or weights) after its rolled-back retries.

    The CLI prints ``r2f: error: numerical failure: MSG`` on one line and exits 3; the last good
    checkpoint (if any) is left in place.
    """
