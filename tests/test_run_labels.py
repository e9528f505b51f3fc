"""Progress lines name the run, not only the method: the demo's r2f and r2f_sketch must stay apart in a log."""

from __future__ import annotations

import sys

from test_methods import tiny_setup  # noqa: F401  (fixture: a random tiny model and forget/retain files)


def test_unlearn_progress_lines_name_the_run(tiny_setup, tmp_path, monkeypatch, capsys):  # noqa: F811
    from r2f.methods import unlearn

    monkeypatch.delenv("R2F_NO_PROGRESS", raising=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)  # a log: plain lines
    for name in ("grad_ascent", "ga_sketch"):
        unlearn(str(tiny_setup["model"]), tiny_setup["forget"], None, method="grad_ascent", out=tmp_path / name,
                steps=1, batch_size=2)
    err = capsys.readouterr().err
    assert "unlearn[grad_ascent]: 1/1" in err and "unlearn[ga_sketch: grad_ascent]: 1/1" in err
