"""``r2f demo``: the whole pipeline on the embedded world, side by side with every baseline.

world → proxy, target ``full`` and retain oracle (cached) → decoder trained on the proxy (cached) →
unlearning of forget10 with every method at the same step budget → evaluation of every model and both
oracles → decoder fidelity on the target → ``report.json``/``.md``/``.html`` and a console table.

``--bench realfacts`` (``--target smollm2-base``) runs the same pipeline on SmolLM2-135M-Instruct as shipped: the
forget request is the realfacts ``forget`` split, every method may train on its ``retain`` split, the decoders
are the world proxy's (as for the SmolLM2 world target), every model is scored by ``r2f eval --bench realfacts``'s
metrics, and there is no retain oracle (no copy of SmolLM2 was pre-trained without the facts).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from rich.table import Table

from r2f.data.loader import RETAIN_OF, SPLIT_FILES, WORLD_FACTS_RETAIN, load_items, load_split
from r2f.data.realfacts import load_realfacts
from r2f.data.world import WorldConfig, jsonl_text, write_world
from r2f.decoders import measure_fidelity, train_decoder
from r2f.decoders.fidelity import mode_candidates
from r2f.decoders.learned import BASES, FORMAT_VERSION, LADDER_RULE, TRAINING_RULE
# the settings and rows live in a module without torch (the CLI's help reads them); offered here too
from r2f.demo_spec import (BENCH_FORGET, BENCH_TARGETS, DECODER_LADDER, DEMO_METHODS, DEMO_PYTHON_ONLY,  # noqa: F401
                           REALFACTS_METRICS, REALFACTS_STEPS, DemoConfig, DemoRow, ProxyDecoder, Target, demo_source)
from r2f.errors import R2FInputError
from r2f.eval import evaluate
from r2f.eval.realfacts import evaluate_realfacts
from r2f.gradients.probe import SEED_RULE
from r2f.io import fresh_out_dir, read_text, write_json_atomic, write_text_atomic
from r2f.methods import METHODS, unlearn
from r2f.models.cache import cache_dir, hash_config
from r2f.models.loading import resolve_model_dir
from r2f.models.training import train_model
from r2f.parallel import run_jobs, worker_count
from r2f.report import build_report
from r2f.report.build import format_value, steps_run

#: The R2F rows, whose method decodes gradients (``uses_decoder``; they run the method's defaults), and the
#: baselines (they run the configuration ``r2f bench`` chose, shipped in ``r2f/bench_chosen.json``, where it has
#: one: :func:`chosen_overrides`).
R2F_ROWS = tuple(n for n, row in DEMO_METHODS.items() if METHODS[row.method].uses_decoder)
BASELINES = tuple(n for n in DEMO_METHODS if n not in R2F_ROWS)
#: Baseline learning rates per target (absent: the method's default, tuned on ``small``). SmolLM2 (pretrained,
#: fine-tuned at 2e-4) needs far smaller AdamW steps: TOFU unlearns its fine-tuned models at 1e-5. R2F has no
#: entry: its line search sets its own step size on every target.
TARGET_LR: dict[str, dict[str, float]] = {
    "smollm2": {"grad_ascent": 5e-5, "grad_diff": 5e-5, "npo": 5e-5, "simnpo": 5e-5, "lora": 5e-4,
                "lora_npo": 5e-4, "rmu": 5e-5, "wga": 5e-5},
}
TARGET_LR["smollm2-base"] = TARGET_LR["smollm2"]  # the same pretrained weights, before any fine-tuning
#: The model a realfacts target is (a name or directory for ``r2f.models.loading.resolve_model_dir``).
BASE_MODELS = {"smollm2-base": "smollm2"}
#: Forget-set batches (of 4 facts × the views) on which the realfacts demo measures decoder fidelity.
REALFACTS_FIDELITY_BATCHES = 2
#: report.json key -> short console header
TABLE_COLUMNS = {"forget_quality": "FQ", "model_utility": "MU", "forget_Q_A_ROUGE": "forget ROUGE",
                 "retain_Q_A_ROUGE": "retain ROUGE", "privleak": "privleak", "decoder_cos": "dec cos",
                 "wall_s": "wall s", "peak_mem_mb": "peak MB"}
REALFACTS_TABLE_COLUMNS = {"forget_known": "forget known", "neighbour_known": "neighbour known",
                           "general_known": "general known", "heldout_ppl": "held-out ppl",
                           "decoder_cos": "dec cos", "wall_s": "wall s", "peak_mem_mb": "peak MB"}


def _stage(log: Callable[[str], None], timings: dict, name: str):
    class _Timer:
        def __enter__(self):
            log(f"[{name}] ...")
            self.t = time.perf_counter()

        def __exit__(self, *exc):
            timings[name] = round(time.perf_counter() - self.t, 2)
            if exc[0] is None:
                log(f"[{name}] done in {timings[name]:.1f}s")

    return _Timer()


@dataclass(frozen=True)
class Prepared:
    """What one seed's pipeline prepares before any unlearning: the world, its forget and retain files, the
    proxy, the target (``full``) and its retain oracle, and the decoders trained on the proxy (or its ladder:
    ``DECODER_LADDER``)."""

    world: Path
    forget_file: Path
    retain_file: Path
    proxy: Path
    full: Path
    retain: Path | None                # None: no retain oracle (realfacts)
    decoder: Path                      # access mode batch (the demo's r2f row)
    decoder_lora: Path | None = None   # access mode lora (the r2f_lora row), when that row runs
    ladder: tuple[Path, ...] = ()      # every proxy the decoders were trained on (``proxy`` first)

    def proxy_decoder(self, access: ProxyDecoder) -> Path:
        """The file of the proxy-trained decoder of ``access`` (a row's :attr:`DemoRow.proxy_decoder`)."""
        path = self.decoder if access == "batch" else self.decoder_lora
        if path is None:
            raise ValueError(f"no {access}-mode decoder was prepared (no row of this run uses one)")
        return path


def prepare(out: Path, cfg: DemoConfig, log: Callable[[str], None], timings: dict[str, float]) -> Prepared:
    """World (into ``out/world``) → forget and retain files → proxy, target and retain oracle → decoder; models
    and decoder come from the cache (``r2f.models.cache``) when they are there. Stage times go to ``timings``.
    With ``bench="realfacts"``: the realfacts splits and SmolLM2 as shipped, no retain oracle."""
    world = out / "world"
    with _stage(log, timings, "world"):
        write_world(world, WorldConfig(seed=cfg.seed), overwrite=True)
    if cfg.bench == "realfacts":
        forget_file, retain_file = write_realfacts_files(cfg.realfacts_data, out / "realfacts")
    else:
        forget_file = world / SPLIT_FILES[cfg.forget]
        retain_file = write_retain_file(world, cfg.forget, out / "retain_set.jsonl")

    with _stage(log, timings, "models"):
        ladder = tuple(train_model(world, size=size, seed=cfg.seed) for size in DECODER_LADDER[cfg.target])
        if cfg.bench == "realfacts":  # no retain oracle: no copy of the target was pre-trained without the facts
            full, retain = resolve_model_dir(BASE_MODELS[cfg.target]), None
        else:
            full = train_model(world, size=cfg.target, split="full", forget=cfg.forget, seed=cfg.seed)
            retain = train_model(world, size=cfg.target, split="retain", forget=cfg.forget, seed=cfg.seed)

    with _stage(log, timings, "decoder"):
        decoder = _cached_decoder(ladder, world, cfg, "batch")
        decoder_lora = _cached_decoder(ladder, world, cfg, "lora") if any(
            DEMO_METHODS[m].proxy_decoder == "lora" for m in cfg.methods) else None
    return Prepared(world=world, forget_file=forget_file, retain_file=retain_file,
                    proxy=ladder[0], full=full, retain=retain, decoder=decoder, decoder_lora=decoder_lora,
                    ladder=ladder)


def write_realfacts_files(data: str | None, out: Path) -> tuple[Path, Path]:
    """The realfacts forget split (the request) and retain split (what a method may train on; never scored) as
    JSONL files in ``out``, from the shipped benchmark or the directory ``data``."""

    bench = load_realfacts(data)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for split in ("forget", "retain"):
        files.append(write_text_atomic(out / f"{split}.jsonl",
                                       jsonl_text([it.model_dump() for it in bench.split(split)[1]])))
    return files[0], files[1]


def write_retain_file(world: Path, forget: str, out: Path) -> Path:
    """The retain data every method gets: the retain split of ``forget`` plus the retain half of the world facts
    (``world_facts_retain``), which is what a deployment has at hand when it must forget. The other half
    (``world_facts_eval``) is what model utility scores, so no method is shown the facts it is measured on."""
    facts = load_split(world, WORLD_FACTS_RETAIN)
    return write_text_atomic(out, (world / SPLIT_FILES[RETAIN_OF[forget]]).read_text(encoding="utf-8")
                             + jsonl_text([it.model_dump() for it in facts]))


def _cached_decoder(ladder: tuple[Path, ...], world: Path, cfg: DemoConfig, access: str) -> Path:
    """The decoder of this proxy ladder (usually the proxy alone) and access mode, trained once and then taken
    from the cache."""
    # the key names everything the file depends on, so a decoder from an older r2f is never picked up
    # (mode batch, and a ladder of one proxy, keep the key they had before modes and ladders existed)
    key = hash_config({"proxy": ladder[0].name,
                       **({"ladder": [p.name for p in ladder], "ladder_rule": LADDER_RULE} if len(ladder) > 1 else {}),
                       "rank": cfg.rank, "views": cfg.views, "seed": cfg.seed,
                       "format": FORMAT_VERSION, "bases": [b[0] for b in BASES], "seed_rule": SEED_RULE,
                       "rule": TRAINING_RULE, **({} if access == "batch" else {"access": access}),
                       **cfg.decoder_budget})[:16]
    decoder = cache_dir() / "decoders" / f"r2f-{key}.safetensors"
    if not decoder.is_file():
        decoder.parent.mkdir(parents=True, exist_ok=True)
        train_decoder(list(ladder), world, rank=cfg.rank, out=decoder, views=cfg.views, seed=cfg.seed,
                      access=access, **cfg.decoder_budget)
    return decoder


def run_method(prep: Prepared, cfg: DemoConfig, name: str, out: Path, overrides: dict | None = None) -> dict:
    """Unlearn ``cfg.forget`` from ``prep.full`` with the demo method ``name`` into ``out``. A baseline runs the
    configuration ``r2f bench`` chose (``cfg.bench_chosen``, :func:`chosen_overrides`); ``overrides``
    (e.g. a bench grid entry's ``lr`` or ``guard_budget``) replace the resulting options.

    Returns ``{"manifest", "dir", "method", "options"}``: the run's manifest and directory, the engine method and
    the options it ran with (a proxy-trained decoder as its file; ``views`` included for methods that use a decoder).
    """
    row = DEMO_METHODS[name]
    method, options = row.method, dict(row.options)
    if row.proxy_decoder is not None:
        options["decoder"] = str(prep.proxy_decoder(row.proxy_decoder))
    if "lr" not in options and name in TARGET_LR.get(cfg.target, {}):
        options["lr"] = TARGET_LR[cfg.target][name]
    if cfg.bench_chosen:
        options.update(chosen_overrides(name, cfg.target))
    options.update(overrides or {})
    if METHODS[method].uses_decoder:  # as many question views as the demo's decoder was trained on
        options.setdefault("views", cfg.views)
    run_dir = unlearn(prep.full, prep.forget_file, prep.retain_file, method=method, out=out, steps=cfg.steps,
                      seed=cfg.seed, overwrite=True, **options)
    return {"manifest": json.loads((Path(run_dir) / "manifest.json").read_text()), "dir": run_dir,
            "method": method, "options": options}


def run_demo(out: str | Path, cfg: DemoConfig | None = None, log: Callable[[str], None] = print, *,
             overwrite: bool = False) -> dict:
    """Run the demo into ``out`` (empty, or cleared first with ``overwrite``); returns the report dict."""
    cfg = cfg or DemoConfig()
    out = fresh_out_dir(out, overwrite=overwrite)
    timings: dict[str, float] = {}
    prep = prepare(out, cfg, log, timings)
    decoder = prep.decoder

    with _stage(log, timings, "fidelity"):
        where = fidelity_data(prep, cfg)
        fidelity = measure_fidelity(decoder, prep.full, split=cfg.forget, views=cfg.views, **where)
        write_json_atomic(out / "fidelity.json", fidelity)
        # the lora-mode decoder in its own mode (its closed forms are already in fidelity.json)
        cos_of = {str(decoder): fidelity["learned"]["cos_mean"]}
        if prep.decoder_lora is not None:
            fid_lora = measure_fidelity(prep.decoder_lora, prep.full, split=cfg.forget, views=cfg.views,
                                        access="lora", **{**where, "decoders": ("learned",), "cost": False})
            write_json_atomic(out / "fidelity_lora.json", fid_lora)
            cos_of[str(prep.decoder_lora)] = fid_lora["learned"]["cos_mean"]

    with _stage(log, timings, "unlearn+evaluate"):
        retain_eval = evaluate(prep.retain, prep.world, spec=cfg.eval_spec) if prep.retain is not None else None
        rows = ["original", *(["retrain"] if prep.retain is not None else []), *cfg.methods]
        jobs = [(prep, cfg, name, out / "runs" / name, retain_eval) for name in rows]
        # small targets run on one thread each: the rows go side by side on the cores that are free
        workers = worker_count(cfg.jobs, model=prep.full, jobs=len(jobs))
        results = run_jobs(demo_row, jobs, workers, on_done=lambda i, _: log(f"  {rows[i]} done"))
    runs: dict[str, dict] = {}
    for name, row in zip(rows, results):
        runs[name] = row
        if "method" in row and METHODS[row["method"]].uses_decoder:
            # measured like every decoder, the exact one included (fidelity_data names the rows' built-in ones)
            dec = row["options"].get("decoder") or METHODS[row["method"]].defaults.get("decoder")
            row["decoder_cos"] = cos_of.get(dec, fidelity.get(dec, {}).get("cos_mean"))

    with _stage(log, timings, "report"):
        report_runs = {name: {k: v for k, v in run.items() if k in ("eval", "manifest", "decoder_cos")}
                       for name, run in runs.items()}
        if "r2f" in report_runs:  # the learned decoder's fidelity goes with its row (absent when not run)
            report_runs["r2f"]["fidelity"] = fidelity
        title = f"r2f demo ({cfg.target}, realfacts {cfg.forget})" if cfg.bench == "realfacts" else \
            f"r2f demo ({cfg.target}, {cfg.forget})"
        report = build_report(report_runs, out, title=title,
                              notes=[*([realfacts_note(cfg)] if cfg.bench == "realfacts" else []),
                                     bench_chosen_note(cfg)])
    report["demo"] = {"config": asdict(cfg), "stage_s": timings, "decoder": str(decoder), "workers": workers}
    write_json_atomic(out / "report.json", report)
    return report


def row_decoder(row: DemoRow) -> str | None:
    """The built-in decoder (by name) a demo row decodes with: its ``decoder`` option, else its method's default;
    None for a row with a proxy-trained decoder (measured as ``learned``) or whose method decodes nothing."""
    if row.proxy_decoder is not None or not METHODS[row.method].uses_decoder:
        return None
    return row.options.get("decoder") or METHODS[row.method].defaults.get("decoder")


def fidelity_data(prep: Prepared, cfg: DemoConfig) -> dict:
    """``measure_fidelity``'s data and decoder keywords: the world split (and the world facts' Σ), or for realfacts
    a few batches of the forget facts, with Σ over as many retain facts as R2F takes it over. Measured: the learned
    decoder (on the world with every closed form of its mode, batch: :attr:`Prepared.decoder`) and the built-in
    decoder of every row that runs one (:func:`row_decoder`; ``exact`` too: its row's cosine is measured, not
    assumed)."""
    rows = tuple(dict.fromkeys(d for d in (row_decoder(DEMO_METHODS[m]) for m in cfg.methods) if d is not None))
    if cfg.bench != "realfacts":
        return {"data_dir": prep.world,
                "decoders": tuple(dict.fromkeys(("learned", *mode_candidates("batch"), *rows)))}
    decoders = ("learned", *rows)
    n_stats = int(METHODS["r2f"].defaults["stats_items"])
    return {"items": load_items(prep.forget_file), "stats_items": load_items(prep.retain_file)[:n_stats],
            "max_batches": REALFACTS_FIDELITY_BATCHES, "decoders": decoders, "cost": False}


def realfacts_note(cfg: DemoConfig) -> str:
    """What the realfacts demo unlearns from, with what, and what it cannot show."""

    bench = load_realfacts(cfg.realfacts_data)
    subjects = bench.measurement.get("forget_subjects") or []
    return (f"Target: {cfg.target}, {BASE_MODELS[cfg.target]} as shipped (no fine-tuning). Forget request: the "
            f"realfacts forget split, {len(bench.splits['forget'])} facts about {len(subjects)} subjects "
            f"({', '.join(subjects)}); every method may train on its retain split ({len(bench.splits['retain'])} "
            f"facts, never scored) and runs {cfg.steps} steps; the R2F rows decode with decoders trained on the "
            "world's proxy. Shares are of facts whose true answer ranks first among its candidates (chance 0.2 with "
            "4 wrong ones); there is no retain oracle.")


def evaluate_row(model: str | Path, prep: Prepared, cfg: DemoConfig, retain_eval: dict | None) -> dict:
    """The eval.json of one demo model: the world's metrics, or realfacts' :data:`REALFACTS_METRICS`."""
    if cfg.bench == "realfacts":
        return evaluate_realfacts(str(model), data=cfg.realfacts_data, spec=cfg.eval_spec)
    return evaluate(model, prep.world, retain_log=retain_eval, spec=cfg.eval_spec)


def demo_row(prep: Prepared, cfg: DemoConfig, name: str, out: Path, retain_eval: dict | None,
             overrides: dict | None = None) -> dict:
    """One row of the demo table: unlearn with demo method ``name`` into ``out`` and evaluate the result (for
    ``original`` and ``retrain``: evaluate the target and the retain oracle). A module-level function so that
    :func:`r2f.parallel.run_jobs` workers can run it. ``overrides``: as :func:`run_method`'s.

    Returns ``{"eval", "manifest", "dir", "method", "options"}`` (models only: ``{"eval", "model_dir"}``).
    """
    if name in ("original", "retrain"):
        model = prep.full if name == "original" else prep.retain
        return {"model_dir": model, "eval": evaluate_row(model, prep, cfg, retain_eval)}
    run = run_method(prep, cfg, name, out, overrides)
    ev = evaluate_row(run["dir"], prep, cfg, retain_eval)
    write_json_atomic(Path(run["dir"]) / "eval.json", ev)
    return {**run, "eval": ev}


# ----------------------------------------------------------------------------- the shipped bench choice
# What the demo's baselines run: here, not in r2f.bench (which writes the file and imports this module), so
# that the two modules import one way only.


@dataclass(frozen=True)
class Config:
    """One grid entry: a factor on the method's learning rate and options that replace the method's defaults.

    ``lr_scale`` multiplies the learning rate the demo would use (the method's ``default_lr``, or the demo's
    per-target :data:`TARGET_LR`); 1 passes no learning rate at all, so the method keeps its own.
    """

    lr_scale: float = 1.0
    options: tuple[tuple[str, float | int], ...] = ()

    @property
    def label(self) -> str:
        parts = [f"lr×{self.lr_scale:g}"] if self.lr_scale != 1.0 else []
        parts += [f"{k}={v:g}" for k, v in self.options]
        return ", ".join(parts) or "defaults"

    def to_json(self) -> dict:
        return {"label": self.label, "lr_scale": self.lr_scale, "options": dict(self.options)}

    def overrides(self, name: str, target: str) -> dict:
        """The ``run_method`` overrides of this entry for demo method ``name`` on ``target``."""
        out: dict = dict(self.options)
        if self.lr_scale != 1.0:
            base = TARGET_LR.get(target, {}).get(name, METHODS[DEMO_METHODS[name].method].default_lr)
            out["lr"] = self.lr_scale * base
        return out


#: The baselines' configurations the last full bench chose, a data file of the package that ``r2f demo`` runs
#: (:func:`chosen_overrides`); ``benchmarks/bench_chosen.py`` regenerates it from a bench.json.
CHOSEN_FILE = "bench_chosen.json"
CHOSEN_FORMAT = 1


@dataclass(frozen=True)
class Chosen:
    """A validated bench_chosen.json: the target the bench chose on and each listed baseline's configuration."""

    target: str
    configs: Mapping[str, Config]
    produced_by: Mapping[str, Any]
    source: str


def load_chosen(path: str | os.PathLike | None = None) -> Chosen:
    """Read and validate bench_chosen.json (the package's own by default); bad content is R2FInputError."""
    if path is None:
        with resources.as_file(resources.files("r2f").joinpath(CHOSEN_FILE)) as shipped:
            return load_chosen(shipped)
    try:
        record = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise R2FInputError(f"malformed JSON: {exc.msg}", source=f"{path}:{exc.lineno}") from None
    return parse_chosen(record, str(path))


def parse_chosen(record: Any, source: str) -> Chosen:
    def bad(field: str, why: str) -> R2FInputError:
        return R2FInputError(f"field '{field}': {why}", source=source)

    if not isinstance(record, dict):
        raise R2FInputError("expected a JSON object", source=source)
    if record.get("format") != CHOSEN_FORMAT:
        raise bad("format", f"expected {CHOSEN_FORMAT}, got {record.get('format')!r}")
    produced_by = record.get("produced_by")
    if not isinstance(produced_by, dict) or not isinstance(produced_by.get("target"), str):
        raise bad("produced_by.target", "missing (the target the bench chose on)")
    baselines = record.get("baselines")
    if not isinstance(baselines, dict):
        raise bad("baselines", "expected an object {method: configuration}")
    configs = {}
    for name, entry in baselines.items():
        if name not in BASELINES:
            raise bad(f"baselines.{name}", f"not a demo baseline (choose from {', '.join(BASELINES)})")
        scale = entry.get("lr_scale") if isinstance(entry, dict) else None
        if not _is_number(scale) or not (math.isfinite(scale) and scale > 0):
            raise bad(f"baselines.{name}.lr_scale", "expected a positive number")
        options = entry.get("options", {})
        if not isinstance(options, dict) or not all(_is_number(v) for v in options.values()):
            raise bad(f"baselines.{name}.options", "expected an object of numbers")
        configs[name] = Config(lr_scale=float(scale), options=tuple(options.items()))
    return Chosen(produced_by["target"], MappingProxyType(configs), MappingProxyType(produced_by), source)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def chosen_overrides(name: str, target: str, chosen: Chosen | None = None) -> dict:
    """The ``run_method`` overrides of the shipped choice for demo method ``name`` on ``target``: empty for the
    R2F rows, for a baseline without a bench entry and on a target the bench did not choose on."""
    chosen = chosen or load_chosen()
    if name in R2F_ROWS or target != chosen.target or name not in chosen.configs:
        return {}
    return chosen.configs[name].overrides(name, target)


def bench_chosen_note(cfg: DemoConfig) -> str:
    """One sentence for the report: which configuration each row ran and where it came from."""
    chosen = load_chosen()
    listed = [n for n in cfg.methods if n in chosen.configs]
    others = [n for n in cfg.methods if n in BASELINES and n not in listed]
    r2f_rows = [n for n in cfg.methods if n in R2F_ROWS]
    if not cfg.bench_chosen or cfg.target != chosen.target or not listed:
        why = "the shipped bench choice is turned off" if not cfg.bench_chosen else \
            f"r2f bench chose on target {chosen.target}, not {cfg.target}"
        parts = [f"Every baseline runs its demo options ({why})"]
    else:
        parts = [f"Baselines run the configuration r2f bench chose ("
                 + ", ".join(f"{n} {chosen.configs[n].label}" for n in listed)
                 + f"; from {chosen.produced_by.get('command')}, {chosen.produced_by.get('date')}"
                 + "".join(f"; {', '.join(a.get('methods', []))} from {a.get('command')}, {a.get('date')}"
                           for a in chosen.produced_by.get("additions", []))
                 + ", shipped as r2f/bench_chosen.json)"]
        if others:
            parts.append(f"{', '.join(others)} (no bench entry) "
                         + ("keeps its" if len(others) == 1 else "keep their") + " demo options")
    if r2f_rows:
        black_box = " (r2f_lora with access=lora: the black-box case)" if "r2f_lora" in r2f_rows else ""
        parts.append(f"the R2F rows ({', '.join(r2f_rows)}) run the method's defaults{black_box}")
    return "; ".join(parts) + "."


def console_table(report: dict) -> Table:
    cfg = report.get("demo", {}).get("config", {})
    if cfg.get("bench") == "realfacts":
        columns = REALFACTS_TABLE_COLUMNS
        table = Table(title=f"r2f demo: the realfacts forget split, target {cfg.get('target')} (as shipped)",
                      caption="shares of facts whose true answer ranks first among 5 candidates (chance 0.2): "
                              "forget lower is better, neighbour and general higher; held-out perplexity lower")
    else:
        columns = TABLE_COLUMNS
        table = Table(title=f"r2f demo: {cfg.get('forget', 'forget10')} on the embedded world, target "
                            f"{cfg.get('target', 'small')}",
                      caption="FQ forget quality (KS p-value vs the retain oracle; higher is better), MU model utility")
    table.add_column("method", no_wrap=True)
    table.add_column("steps", justify="right")
    for header in columns.values():
        table.add_column(header, justify="right")
    for name, row in report["methods"].items():
        # the report's per-column formats: every number of a column has the same shape
        table.add_row(name, steps_run(row), *(format_value(col, row.get(col)) for col in columns))
    return table
