"""Atomic output helpers: nothing partial is ever left at the final path."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from r2f.errors import R2FInputError


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace``."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def check_out_dir(out: str | os.PathLike, *, overwrite: bool = False, protect: list[str | os.PathLike] = ()) -> Path:
    """Validate an output directory before any work starts (exit-2 errors, nothing written)."""
    out = Path(out)
    for p in protect:
        if p is not None and Path(p).exists() and out.resolve() == Path(p).resolve():
            raise R2FInputError("--out points at the source model; refusing to overwrite it", source=str(out))
    if out.exists() and not out.is_dir():
        raise R2FInputError("--out exists and is not a directory", source=str(out))
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise R2FInputError("--out is a non-empty directory; pass --overwrite to replace it", source=str(out))
    return out


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to ``out``; rename it into place on success.

    On any exception the temporary directory is removed and ``out`` is untouched.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        if not overwrite and any(out.iterdir()):
            shutil.rmtree(tmp, ignore_errors=True)
            raise R2FInputError("--out is a non-empty directory; pass --overwrite to replace it", source=str(out))
        trash = out.with_name(f".{out.name}.old.{os.getpid()}")
        os.replace(out, trash)
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)
