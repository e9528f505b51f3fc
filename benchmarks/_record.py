"""Record a benchmark's latest numbers in BENCHMARKS.md (shared by every script in benchmarks/).

Each benchmark owns one block of BENCHMARKS.md between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``;
a new run replaces its block (so the file holds each benchmark's *latest* numbers) or appends it at the end
the first time. The block states the command, the date and the machine. Hand-written commentary lives outside
the blocks and is never touched.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shlex
import sys
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def machine() -> str:
    """One line: CPU model and cores (or the GPU), OS, torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"{cpu}, {os.cpu_count()} cores", platform.system()]
    try:
        import torch

        parts.append(f"torch {torch.__version__}")
        if torch.cuda.is_available():
            parts.insert(0, torch.cuda.get_device_name(0))
    except ImportError:
        pass
    return "; ".join(parts)


def command_line(argv: list[str] | None = None) -> str:
    argv = sys.argv if argv is None else argv
    script = os.path.relpath(os.path.abspath(argv[0]), BENCHMARKS_MD.parent) if argv else "?"
    return "python " + " ".join(shlex.quote(a) for a in [script, *argv[1:]])


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table; floats are shown with 3 significant decimals."""

    def cell(v) -> str:
        if v is None:
            return "–"
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e-2 and v != 0 else f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def record(name: str, title: str, body: str, *, path: Path | None = None, argv: list[str] | None = None) -> Path:
    """Replace (or append) benchmark ``name``'s block in BENCHMARKS.md with ``body`` plus command/date/machine."""
    path = Path(path or BENCHMARKS_MD)
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    block = (f"<!-- bench:{name} -->\n### {title}\n\n```bash\n{command_line(argv)}\n```\n\n"
             f"Recorded {when} on: {machine()}.\n\n{body.strip()}\n<!-- /bench:{name} -->")
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    print(f"recorded '{name}' in {path}")
    return path


def add_record_flag(parser) -> None:
    parser.add_argument("--no-record", action="store_true",
                        help="do not write the numbers into BENCHMARKS.md (they always go to --out)")
