"""Reports: report.json, report.md and a self-contained report.html with plots, from run results.

``build_report(runs, out_dir)`` takes in-memory results (used by ``r2f demo``); ``load_runs(dirs)``
reads run directories holding any of eval.json, manifest.json, fidelity.json (``r2f report``).
"""

from r2f.report.build import METHOD_COLUMNS, build_report, eval_summary, load_run, load_runs, method_row

__all__ = ["METHOD_COLUMNS", "build_report", "eval_summary", "load_run", "load_runs", "method_row"]
