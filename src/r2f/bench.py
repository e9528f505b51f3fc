"""``r2f bench``: the fair comparison protocol, every method with the same tuning budget.

1. **Grid.** Every method tries the same number of configurations from its declared grid (:data:`GRIDS`, or
   :data:`QUICK_GRIDS` with ``--quick``): R2F rows vary their own options around the defaults (which are one
   entry), baselines scale their learning rate around their default.
2. **Tuning, on validation worlds.** Every configuration is run on the tune seeds' worlds (disjoint from the report
   seeds) and one rule picks a configuration per method (:func:`select_config`): the highest mean forget quality
   over the tune seeds among the configurations whose model utility is at least ``MU_RATIO`` (0.9) × the original
   model's on every tune seed; if none qualifies, the configuration with the highest minimum utility ratio.
   Remaining ties go to the higher mean utility ratio, then to the earlier grid entry (the defaults come first).
3. **Report.** Every method runs its chosen configuration on the report seeds' worlds (at least 3); ``bench.json``
   and ``bench.md`` give per-seed values, mean ± sd, and how many seeds pass FQ ≥ ``FQ_MIN`` with
   MU ≥ ``MU_RATIO`` × the original's.

Each world is prepared by the demo's own pipeline (:func:`r2f.demo.prepare`; models and decoders are cached), and
each method runs and is evaluated exactly as in the demo (:func:`r2f.demo.run_method`, the same eval settings).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping, Sequence

from r2f.data.loader import WORLD_FACTS_EVAL, WORLD_FACTS_RETAIN
# the shipped choice's reader (Config, Chosen, load_chosen, chosen_overrides) lives in r2f.demo, which runs it;
# r2f.bench keeps offering it (this module writes the file)
from r2f.demo import (BASELINES, CHOSEN_FILE, CHOSEN_FORMAT, DEMO_METHODS, R2F_ROWS, TARGET_LR, Chosen,  # noqa: F401
                      Config, DemoConfig, Prepared, chosen_overrides, load_chosen, parse_chosen, prepare, run_method)
from r2f.errors import R2FInputError, R2FNumericalError
from r2f.io import fresh_out_dir, write_json_atomic, write_text_atomic
from r2f.parallel import run_jobs, worker_count
from r2f.eval import evaluate
from r2f.report.build import FQ_MIN, MU_RATIO, eval_summary, md_table
from r2f.typed import check_choice

# A report seed passes with forget quality ≥ FQ_MIN at model utility ≥ MU_RATIO × the original's on the same
# world: the report's headline criterion. MU_RATIO is also the tuning constraint of :func:`select_config`.
#: The rule of :func:`select_config`, in words (bench.json and bench.md state it).
SELECTION_RULE = (f"highest mean forget quality over the tune seeds among the configurations whose model utility "
                  f"is ≥ {MU_RATIO:g}× the original model's on every tune seed; if none qualifies, the "
                  f"configuration with the highest minimum utility ratio; remaining ties: higher mean utility "
                  f"ratio, then the earlier grid entry")
BENCH_FORMAT = 1


# R2F sets its own step size by line search, so its grid varies what bounds that search (guard_budget, default
# 0.08: one step towards utility, 0.05, and the former default, 0.12) and how many question views it averages
# (views, default 4), the two levers of utility on the validation worlds (docs/methods.md); baselines' one knob is
# the learning rate.
_R2F_GRID = (Config(), Config(options=(("guard_budget", 0.05),)), Config(options=(("guard_budget", 0.12),)),
             Config(options=(("views", 2),)))
_LR_GRID = tuple(Config(lr_scale=s) for s in (1.0, 0.5, 2.0, 4.0))
#: method -> its configurations (defaults first). Every method has the same number: the same tuning budget.
GRIDS: Mapping[str, tuple[Config, ...]] = MappingProxyType(
    {n: _R2F_GRID if n in R2F_ROWS else _LR_GRID for n in DEMO_METHODS})
#: ``--quick``: two configurations per method, the defaults and one step towards utility (guard_budget 0.05, lr×0.5):
#: the selection rule's constraint is utility, which the quick demo's defaults often miss on ``tiny``.
QUICK_GRIDS: Mapping[str, tuple[Config, ...]] = MappingProxyType(
    {n: (_R2F_GRID[0], _R2F_GRID[1]) if n in R2F_ROWS else (_LR_GRID[0], _LR_GRID[1]) for n in DEMO_METHODS})


@dataclass(frozen=True)
class BenchConfig:
    """The protocol's inputs; invalid ones raise :class:`R2FInputError` naming the flag."""

    quick: bool = False
    tune_seeds: tuple[int, ...] | None = None     # None: (10, 11), or (10,) with quick
    report_seeds: tuple[int, ...] = (1, 2, 3)
    methods: tuple[str, ...] = tuple(DEMO_METHODS)
    steps: int | None = None                      # None: the demo's budget (30, or 20 with quick)
    jobs: int | None = None                       # trials side by side (None: free cores / threads per trial)

    def __post_init__(self) -> None:
        if self.tune_seeds is None:
            object.__setattr__(self, "tune_seeds", (10,) if self.quick else (10, 11))
        if not self.methods:
            raise R2FInputError(f"no method given (choose from {', '.join(DEMO_METHODS)})", source="--methods")
        for name in self.methods:
            check_choice("method", name, tuple(DEMO_METHODS), source="--methods")
        for flag, seeds in (("--tune-seeds", self.tune_seeds), ("--report-seeds", self.report_seeds)):
            if not seeds or len(set(seeds)) != len(seeds):
                raise R2FInputError("needs distinct seeds", source=flag)
        if len(self.report_seeds) < 3:
            raise R2FInputError(f"needs at least 3 seeds (got {len(self.report_seeds)})", source="--report-seeds")
        overlap = sorted(set(self.tune_seeds) & set(self.report_seeds))
        if overlap:  # a configuration chosen on a report world would be scored on its own validation data
            raise R2FInputError(f"seed(s) {', '.join(map(str, overlap))} also in --report-seeds; tune and report "
                                "worlds must be disjoint", source="--tune-seeds")
        if self.jobs is not None and self.jobs < 1:
            raise R2FInputError(f"must be at least 1, got {self.jobs}", source="--jobs")
        if self.steps is not None and self.steps < 1:
            raise R2FInputError("must be at least 1", source="--steps")

    @property
    def grids(self) -> Mapping[str, tuple[Config, ...]]:
        return QUICK_GRIDS if self.quick else GRIDS

    def demo_config(self, seed: int) -> DemoConfig:
        """The demo's settings for one world: target, step budget, decoder budget, eval settings. The grid is
        around the demo's own options, not around a previous bench's choice (``bench_chosen`` off)."""
        return DemoConfig(quick=self.quick, seed=seed, steps=self.steps, methods=list(self.methods),
                          bench_chosen=False)


def parse_seeds(text: str, flag: str) -> tuple[int, ...]:
    """``"10,11"`` → ``(10, 11)``; anything else is bad input naming ``flag``."""
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise R2FInputError(f"expected comma-separated integers, got '{text}'", source=flag) from None


# ----------------------------------------------------------------------------- the selection rule
@dataclass(frozen=True)
class Score:
    """One run's numbers: forget quality, model utility, and the original model's utility on the same world.
    A run that failed (diverged) has ``None`` values: it scores 0 for both."""

    forget_quality: float | None
    model_utility: float | None
    original_utility: float

    @property
    def fq(self) -> float:
        return _finite(self.forget_quality)

    @property
    def mu_ratio(self) -> float:
        return _finite(self.model_utility) / self.original_utility if self.original_utility > 0 else 0.0

    @property
    def passes(self) -> bool:
        return self.fq >= FQ_MIN and self.mu_ratio >= MU_RATIO


def _finite(x: float | None) -> float:
    return x if x is not None and math.isfinite(x) else 0.0


def qualifies(runs: Sequence[Score]) -> bool:
    """The rule's constraint: utility ≥ ``MU_RATIO`` × the original's on every tune seed."""
    return all(s.mu_ratio >= MU_RATIO for s in runs)


def select_config(scores: Sequence[Sequence[Score]]) -> tuple[int, str]:
    """The rule: ``scores[i]`` are configuration i's runs on the tune seeds (grid order). Returns (i, why) with why
    ``"qualified"`` or ``"fallback"``. See :data:`SELECTION_RULE`."""
    if not scores or any(not runs for runs in scores):
        raise ValueError("every configuration needs at least one tune-seed score")
    fmean = statistics.fmean
    qualified = [i for i, runs in enumerate(scores) if qualifies(runs)]
    if qualified:
        # max() keeps the first of equal keys: ties left after both criteria go to the earlier grid entry
        best = max(qualified, key=lambda i: (fmean(s.fq for s in scores[i]), fmean(s.mu_ratio for s in scores[i])))
        return best, "qualified"
    best = max(range(len(scores)), key=lambda i: (min(s.mu_ratio for s in scores[i]),
                                                 fmean(s.mu_ratio for s in scores[i])))
    return best, "fallback"


# ----------------------------------------------------------------------------- running
@dataclass(frozen=True)
class _World:
    """One prepared seed: its pipeline outputs, the demo settings, the retain oracle's eval (every run's
    ``retain_log``), the original model's utility and the preparation's stage times."""

    cfg: DemoConfig
    prep: Prepared
    retain_eval: dict
    original_utility: float
    timings: dict[str, float]


def _world(out: Path, bench: BenchConfig, seed: int, log: Callable[[str], None]) -> _World:

    cfg = bench.demo_config(seed)
    timings: dict[str, float] = {}
    prep = prepare(out, cfg, lambda m: log(f"seed {seed}: {m}"), timings)
    retain_eval = evaluate(prep.retain, prep.world, spec=cfg.eval_spec)
    original = evaluate(prep.full, prep.world, retain_log=retain_eval, spec=cfg.eval_spec)
    return _World(cfg, prep, retain_eval, float(eval_summary(original)["model_utility"]), timings)


def _trial(world: _World, name: str, config: Config, out: Path, keep_model: bool) -> dict:
    """Run and evaluate one configuration on one world; the record of ``bench.json``. Module-level, positional
    arguments: :func:`r2f.parallel.run_jobs` workers run it."""
    t0 = time.perf_counter()
    record: dict = {"seed": world.cfg.seed, "config": config.label}
    try:
        run = run_method(world.prep, world.cfg, name, out, config.overrides(name, world.cfg.target))
    except R2FNumericalError as exc:  # a diverging configuration is a result of the grid, not a bench failure
        score = Score(None, None, world.original_utility)
        record.update(status=f"diverged: {exc}")
    else:
        ev = evaluate(run["dir"], world.prep.world, retain_log=world.retain_eval, spec=world.cfg.eval_spec)
        write_json_atomic(Path(run["dir"]) / "eval.json", ev)
        summary = eval_summary(ev)
        score = Score(summary.get("forget_quality"), summary.get("model_utility"), world.original_utility)
        steps = run["manifest"].get("steps") or {}
        record.update(status="ok", steps_done=steps.get("done"), stop_reason=steps.get("stop_reason"))
        if not keep_model:  # tuning runs are kept for their numbers only: manifest.json and eval.json
            for p in Path(run["dir"]).iterdir():
                if p.name not in ("manifest.json", "eval.json"):
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
    record.update(forget_quality=score.forget_quality, model_utility=score.model_utility,
                  mu_ratio=round(score.mu_ratio, 6), passes=score.passes,
                  wall_s=round(time.perf_counter() - t0, 2))
    record["_score"] = score
    return record


def _fmt_trial(phase: str, name: str, rec: dict) -> str:
    fq = "—" if rec["forget_quality"] is None else f"{rec['forget_quality']:.2e}"
    mu = "—" if rec["model_utility"] is None else f"{rec['model_utility']:.3f}"
    return (f"[{phase} seed {rec['seed']}] {name} ({rec['config']}): FQ {fq}, MU {mu} "
            f"({rec['mu_ratio']:.2f}× original), {rec['wall_s']:.1f}s")


def _mean_sd(xs: list[float]) -> dict:
    """Mean and sample standard deviation (n − 1); failed runs count as 0."""
    return {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0}


def run_bench(out: str | Path, bench: BenchConfig | None = None, log: Callable[[str], None] = print, *,
              overwrite: bool = False) -> dict:
    """Run the protocol into ``out`` (empty, or cleared with ``overwrite``); writes and returns ``bench.json``."""
    bench = bench or BenchConfig()
    out = fresh_out_dir(out, overwrite=overwrite)
    t_start = time.perf_counter()
    grids = {n: bench.grids[n] for n in bench.methods}
    stage_s: dict[str, dict] = {}

    def phase(kind: str, seeds: Sequence[int], configs: Callable[[str], Sequence[int]]) -> dict:
        """Every method × grid entry ``configs(method)`` on every seed of ``kind``: {seed: (world, {method:
        [records]})}; a run's directory is ``KIND/seed-S/runs/METHOD/I`` for grid entry I."""
        results = {}
        for seed in seeds:
            world = _world(out / kind / f"seed-{seed}", bench, seed, log)
            stage_s[f"{kind} seed {seed}"] = world.timings
            todo = [(name, i) for name in bench.methods for i in configs(name)]
            jobs = [(world, name, grids[name][i], out / kind / f"seed-{seed}" / "runs" / name / str(i),
                     kind == "report") for name, i in todo]
            # small targets run on one thread each: trials go side by side on the cores that are free
            workers = worker_count(bench.jobs, model=world.prep.full, jobs=len(jobs))
            records = run_jobs(_trial, jobs, workers, on_done=lambda j, rec: log(_fmt_trial(kind, todo[j][0], rec)))
            per_method: dict[str, list[dict]] = {name: [] for name in bench.methods}
            for (name, _), rec in zip(todo, records):
                per_method[name].append(rec)
            results[seed] = (world, per_method)
        return results

    tuned = phase("tune", bench.tune_seeds, lambda n: range(len(grids[n])))
    chosen: dict[str, tuple[int, str]] = {}
    for name in bench.methods:
        scores = [[tuned[s][1][name][i]["_score"] for s in bench.tune_seeds] for i in range(len(grids[name]))]
        chosen[name] = select_config(scores)
        log(f"[select] {name}: {grids[name][chosen[name][0]].label} ({chosen[name][1]})")
    reported = phase("report", bench.report_seeds, lambda n: [chosen[n][0]])

    cfg0 = bench.demo_config(bench.report_seeds[0])
    methods = {}
    for name in bench.methods:
        idx, why = chosen[name]
        tuning = []
        for i, config in enumerate(grids[name]):
            recs = [tuned[s][1][name][i] for s in bench.tune_seeds]
            tuning.append({**config.to_json(), "qualifies": qualifies([r["_score"] for r in recs]),
                           "mean_forget_quality": statistics.fmean(r["_score"].fq for r in recs),
                           "min_mu_ratio": min(r["_score"].mu_ratio for r in recs),
                           "runs": [_public(r) for r in recs]})
        report = {str(s): _public(reported[s][1][name][0]) for s in bench.report_seeds}
        scores = [reported[s][1][name][0]["_score"] for s in bench.report_seeds]
        methods[name] = {
            "method": DEMO_METHODS[name].method, "trials": len(grids[name]),
            # each entry with the options it ran with on this target (a scaled learning rate made absolute)
            "grid": [{**c.to_json(), "overrides": c.overrides(name, cfg0.target)} for c in grids[name]],
            "tuning_runs": len(grids[name]) * len(bench.tune_seeds), "tune_seeds": list(bench.tune_seeds),
            "report_seeds": list(bench.report_seeds),
            "chosen": {**grids[name][idx].to_json(), "index": idx, "why": why},
            "tuning": tuning, "report": report,
            "summary": {"forget_quality": _mean_sd([s.fq for s in scores]),
                        "model_utility": _mean_sd([_finite(s.model_utility) for s in scores]),
                        "mu_ratio": _mean_sd([s.mu_ratio for s in scores]),
                        "passing": sum(s.passes for s in scores), "seeds": len(scores)},
        }
    result = {
        "format": BENCH_FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "protocol": {"target": cfg0.target, "forget": cfg0.forget, "steps": cfg0.steps, "quick": bench.quick,
                     "eval_retain_items": cfg0.eval_retain_items, "tune_seeds": list(bench.tune_seeds),
                     "report_seeds": list(bench.report_seeds), "methods": list(bench.methods),
                     "selection_rule": SELECTION_RULE,
                     # what the runs' retain data held and model utility scored (r2f.data.loader.HALF_SPLITS)
                     "world_facts_halves": {"retain_data": WORLD_FACTS_RETAIN, "model_utility": WORLD_FACTS_EVAL},
                     "pass": {"forget_quality_min": FQ_MIN, "mu_ratio_min": MU_RATIO}},
        "original": {"model_utility": {str(s): reported[s][0].original_utility for s in bench.report_seeds},
                     "tune_model_utility": {str(s): tuned[s][0].original_utility for s in bench.tune_seeds}},
        "methods": methods,
        "stage_s": stage_s,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    write_json_atomic(out / "bench.json", result)
    write_text_atomic(out / "bench.md", bench_markdown(result))
    return result


def _public(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if not k.startswith("_")}


# ----------------------------------------------------------------------------- tables
def _pm(stat: dict, spec: str) -> str:
    return f"{stat['mean']:{spec}} ± {stat['sd']:{spec}}"


def _num(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


SUMMARY_HEADER = ("method", "chosen", "by rule", "FQ mean ± sd", "MU mean ± sd", "MU/orig mean ± sd", "passing")


def summary_rows(result: dict) -> list[list[str]]:
    """The original model's utility, then one row per method: its chosen configuration and which branch of the rule
    chose it, mean ± sd over the report seeds, and how many report seeds pass."""
    orig = list(result["original"]["model_utility"].values())
    rows = [["original", "—", "—", "—", _pm(_mean_sd(orig), ".3f"), "1.00", "—"]]
    for name, m in result["methods"].items():
        s = m["summary"]
        rows.append([name, m["chosen"]["label"], m["chosen"]["why"], _pm(s["forget_quality"], ".2e"),
                     _pm(s["model_utility"], ".3f"), _pm(s["mu_ratio"], ".2f"), f"{s['passing']}/{s['seeds']}"])
    return rows


def bench_markdown(result: dict) -> str:
    """``bench.md``: the summary, the per-seed values and the tuning trials."""
    p = result["protocol"]
    seeds = [str(s) for s in p["report_seeds"]]
    per_seed = [[name] + [f"{_num(m['report'][s]['forget_quality'], '.2e')} / "
                          f"{_num(m['report'][s]['model_utility'], '.3f')} ({m['report'][s]['mu_ratio']:.2f}×)"
                          for s in seeds] for name, m in result["methods"].items()]
    per_seed.insert(0, ["original", *(f"— / {result['original']['model_utility'][s]:.3f}" for s in seeds)])
    tuning = [[name, t["label"], f"{t['mean_forget_quality']:.2e}", f"{t['min_mu_ratio']:.2f}",
               "yes" if t["qualifies"] else "no", "**chosen**" if i == m["chosen"]["index"] else ""]
              for name, m in result["methods"].items() for i, t in enumerate(m["tuning"])]
    return "\n\n".join([
        f"# r2f bench: {p['forget']} on target {p['target']}" + (" (quick)" if p["quick"] else ""),
        f"Tune seeds {', '.join(map(str, p['tune_seeds']))}; report seeds {', '.join(seeds)}; {p['steps']} unlearning "
        f"steps per run; every method tried {len(next(iter(result['methods'].values()))['grid'])} configurations. "
        f"Selection rule: {p['selection_rule']}. A report seed passes with FQ ≥ {p['pass']['forget_quality_min']:g} "
        f"and MU ≥ {p['pass']['mu_ratio_min']:g}× the original model's on that world.",
        "## Summary over the report seeds",
        md_table(list(SUMMARY_HEADER), summary_rows(result)),
        "FQ: forget quality (KS-test p-value against the retain oracle; higher is better). MU: model utility. "
        "sd: sample standard deviation over the report seeds; a diverged run counts as 0.",
        "## Per report seed (FQ / MU (MU/original))",
        md_table(["method", *(f"seed {s}" for s in seeds)], per_seed),
        "## Tuning (on the tune seeds)",
        md_table(["method", "configuration", "mean FQ", "min MU/original",
                   f"MU ≥ {p['pass']['mu_ratio_min']:g}× on every seed", ""], tuning),
    ]) + "\n"



# ----------------------------------------------------------------------------- the shipped choice (r2f demo)
def chosen_record(result: dict, *, command: str, bench_json: str, date: str | None = None,
                  note: str | None = None) -> dict:
    """The content of bench_chosen.json from a bench.json ``result``: which run produced it (``command``, the
    ``bench_json`` path, ``date``: the run's ``created`` day unless given; its protocol; ``note``, e.g. how that
    run differs from the current protocol) and every baseline's chosen configuration. The R2F rows are left out:
    the demo runs the method's defaults, and a configuration the bench prefers becomes R2F's default rather than
    a demo-only setting."""
    try:
        p = result["protocol"]
        methods = result["methods"]
        baselines = {name: {k: methods[name]["chosen"][k] for k in ("label", "lr_scale", "options", "why")}
                     for name in methods if name in BASELINES}
        produced_by = {"command": command, "bench_json": bench_json,
                       "date": date or str(result.get("created", ""))[:10] or None,
                       **{k: p[k] for k in ("target", "forget", "steps", "quick", "tune_seeds", "report_seeds",
                                            "selection_rule")},
                       # absent from runs before the world-facts halves: their retain data held every world fact
                       "world_facts_halves": p.get("world_facts_halves"), **({"note": note} if note else {})}
    except (KeyError, TypeError) as exc:  # not a bench.json: name what is missing
        raise R2FInputError(f"not a bench.json (field {exc} missing or malformed)", source=bench_json) from None
    unlisted = [n for n in BASELINES if n not in baselines]
    record = {
        "format": CHOSEN_FORMAT,
        "produced_by": produced_by,
        "scope": _chosen_scope(produced_by["target"], unlisted),
        "baselines": baselines,
    }
    parse_chosen(record, bench_json)  # the file must load back
    return record


#: produced_by fields that must agree before two runs' choices can be shipped together
_PROTOCOL_FIELDS = ("target", "forget", "steps", "quick", "tune_seeds", "report_seeds", "selection_rule",
                    "world_facts_halves")


def merge_chosen(shipped: dict, addition: dict) -> dict:
    """``shipped`` (a bench_chosen.json record) with the baselines of ``addition`` (a :func:`chosen_record` of a
    later run, e.g. ``r2f bench --methods rmu,wga`` for methods added after the full run) added.

    Both runs must share the protocol (target, forget split, step budget, seeds, selection rule, world-facts
    halves), so every shipped choice was made by the same rules; otherwise R2FInputError names the field. The
    later run is listed under ``produced_by.additions`` with the methods it contributed; a method in both takes
    the later choice."""
    first, later = shipped["produced_by"], addition["produced_by"]
    for field in _PROTOCOL_FIELDS:
        if first.get(field) != later.get(field):
            raise R2FInputError(f"field 'produced_by.{field}': {later.get(field)!r} differs from the shipped "
                                f"run's {first.get(field)!r}; choices from different protocols cannot be "
                                "shipped together", source=str(later.get("bench_json")))
    baselines = {**shipped["baselines"], **addition["baselines"]}
    extra = {k: later[k] for k in ("command", "bench_json", "date", "note") if later.get(k)}
    produced_by = {**first, "additions": [*first.get("additions", []),
                                          {**extra, "methods": sorted(addition["baselines"])}]}
    unlisted = [n for n in BASELINES if n not in baselines]
    record = {**shipped, "produced_by": produced_by, "baselines": baselines,
              "scope": _chosen_scope(produced_by["target"], unlisted)}
    parse_chosen(record, str(later.get("bench_json")))
    return record


def _chosen_scope(target: str, unlisted: list[str]) -> str:
    return (f"r2f demo on target {target} runs every baseline listed under 'baselines' with its chosen lr_scale (a "
            f"factor on the demo's learning rate for that method) and options. The R2F rows ({', '.join(R2F_ROWS)}) "
            f"run the method's defaults. Demo baselines without a bench entry ({', '.join(unlisted) or 'none'}) keep "
            f"their demo options, as does every baseline on other targets.")
