"""File helpers: reading user files with exact error locations; atomic outputs (nothing partial is ever left at
the final path)."""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from r2f.errors import R2FInputError

#: Temporary siblings are named ``.NAME.PID.RANDOM.tmp``: the PID tells a live writer's from a killed one's.
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")


def read_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of a file; an unreadable file is bad input naming it."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise R2FInputError(f"cannot read: {exc.strerror or exc.__class__.__name__}", source=str(path)) from None


def read_text(path: str | os.PathLike) -> str:
    """The text of a UTF-8 file, a leading byte-order mark dropped.

    An unreadable file, or bytes that are not UTF-8, are bad input: the message names the line, column and byte
    offset of the first bad byte, so that it can be found in an editor or with ``head -c``.
    """
    return decode_text(read_bytes(path), path)


def decode_text(data: bytes, path: str | os.PathLike) -> str:
    """:func:`read_text` of bytes already read from ``path`` (named in the error)."""
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = bom + exc.start  # offset in the file, BOM included
        line = data.count(b"\n", 0, at) + 1
        column = at - data.rfind(b"\n", 0, at)  # 1-based, in bytes
        raise R2FInputError(f"not valid UTF-8: byte 0x{data[at]:02x} at line {line}, column {column} "
                            f"(byte offset {at})", source=f"{path}:{line}") from None


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value in a UTF-8 file; malformed JSON is bad input naming the file and line."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise R2FInputError(f"malformed JSON: {exc.msg}", source=f"{path}:{exc.lineno}") from None


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def clean_stale(out: str | os.PathLike, *, any_sibling: bool = False) -> list[Path]:
    """Remove what killed r2f processes left around ``out``: ``.NAME.PID.*.tmp`` entries whose PID is gone.

    Looks at ``out``'s own siblings (``any_sibling``: every sibling's, for a directory only r2f writes into, such
    as the model cache, where a killed run's leftovers of another output would otherwise stay until that output
    is written again) and, inside ``out``, two levels down (e.g. ``OUT/checkpoints``); then removes
    sub-directories of ``out`` that only held such leftovers. Entries of live processes stay.
    """
    out = Path(out)
    removed: list[Path] = []

    def sweep(directory: Path, only_name: str | None = None) -> None:
        try:
            entries = list(directory.iterdir())
        except OSError:
            return
        for p in entries:
            m = _TMP_RE.match(p.name)
            if m and (only_name is None or m.group("name") == only_name) and not _pid_alive(int(m.group("pid"))):
                _remove(p)
                removed.append(p)

    if out.parent.is_dir():
        sweep(out.parent, only_name=None if any_sibling else out.name)
    if out.is_dir() and not out.is_symlink():
        sweep(out)
        for sub in [p for p in out.iterdir() if p.is_dir() and not p.is_symlink()]:
            before = len(removed)
            sweep(sub)
            if len(removed) > before and not any(sub.iterdir()):
                sub.rmdir()
    return removed


def current_umask() -> int:
    """The process umask now (read at every write, so a umask set after import, e.g. by a caller, is honoured).

    Linux reports it in /proc/self/status; elsewhere it is read by setting and restoring it, which leaves a
    moment in which another thread's new file would get mode 0666, so that path is the fallback only.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a file r2f writes: that of a plain ``open`` under the current umask. (``mkstemp`` creates 0600 and
    safetensors' ``save_file`` re-creates its file 0600, which would leave models unreadable to a shared group.)"""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """Mode of a directory r2f creates: that of a plain ``mkdir`` under the current umask (``mkdtemp``: 0700)."""
    return 0o777 & ~current_umask()


def _plain_modes(root: Path) -> None:
    """Give ``root`` and everything below it the modes a plain write would have (before it is renamed into place)."""
    fmode, dmode = file_mode(), dir_mode()
    os.chmod(root, dmode)
    for base, dirs, files in os.walk(root):
        for d in dirs:
            os.chmod(os.path.join(base, d), dmode)
        for f in files:
            os.chmod(os.path.join(base, f), fmode)


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    fd, name = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(name, file_mode())
    return Path(name)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        # the writer may have re-created the file with its own mode (safetensors' save_file makes it 0600)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace``."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


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
    clean_stale(out)  # leftovers of a killed run on the same output are not the user's files
    if out.exists() and not out.is_dir():
        raise R2FInputError("--out exists and is not a directory", source=str(out))
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise R2FInputError("--out is a non-empty directory; pass --overwrite to replace it", source=str(out))
    return out


def is_within(child: str | os.PathLike, parent: str | os.PathLike) -> bool:
    """Whether ``child`` is ``parent`` or lies below it (symbolic links resolved)."""
    child, parent = Path(child).resolve(), Path(parent).resolve()
    return child == parent or parent in child.parents


def fresh_out_dir(out: str | os.PathLike, *, overwrite: bool = False, inputs: list[str | os.PathLike] = ()) -> Path:
    """An output directory a command fills file by file (demo, report): empty, or cleared with ``overwrite``.

    A non-empty ``out`` without ``overwrite`` is bad input (no stale files from another run survive next to new
    ones). ``inputs`` (the command's input paths) must not lie inside ``out``: clearing it would delete them.
    """
    out = check_out_dir(out, overwrite=overwrite)
    for p in inputs:
        if out.exists() and is_within(p, out):
            raise R2FInputError(f"input {p} lies inside --out; choose another output directory", source=str(out))
    if out.is_dir() and any(out.iterdir()):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to ``out``; rename it into place on success.

    On any exception the temporary directory is removed and ``out`` is untouched. A process killed
    (SIGKILL) inside the block leaves only a ``.NAME.PID.*.tmp`` sibling, never a half-written ``out``;
    :func:`clean_stale` removes it on the next write of the same output.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(out), suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        # what the block wrote through safetensors (model.safetensors, checkpoints) is 0600, mkdtemp's dir 0700
        _plain_modes(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        if not overwrite and any(out.iterdir()):
            shutil.rmtree(tmp, ignore_errors=True)
            raise R2FInputError("--out is a non-empty directory; pass --overwrite to replace it", source=str(out))
        trash = out.with_name(f"{_tmp_prefix(out)}old.tmp")
        os.replace(out, trash)
        os.replace(tmp, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out)
