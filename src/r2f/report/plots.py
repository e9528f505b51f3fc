"""Matplotlib figures of a report, returned as PNG bytes (Agg backend, no display needed)."""

from __future__ import annotations

import io
import math
import re
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

_FQ_FLOOR = 1e-300


def run_colors(names) -> dict[str, str]:
    """One stable colour per run, shared by every figure."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {n: cycle[i % len(cycle)] for i, n in enumerate(names)}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)) else None


def fq_vs_mu(methods: dict[str, dict], colors: dict[str, str] | None = None) -> bytes | None:
    """Forget quality (log scale) against model utility, one labelled point per method."""
    pts = [(n, _num(m.get("model_utility")), _num(m.get("forget_quality"))) for n, m in methods.items()]
    pts = [(n, mu, fq) for n, mu, fq in pts if mu is not None and fq is not None]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for n, mu, fq in pts:
        clipped = fq <= 0
        y = max(fq, _FQ_FLOOR)
        ax.scatter([mu], [y], s=60, marker="v" if clipped else "o", zorder=3, color=(colors or {}).get(n))
        ax.annotate(n + (" (FQ=0)" if clipped else ""), (mu, y), textcoords="offset points", xytext=(6, 4), fontsize=9)
    ax.set_yscale("log")
    ax.set_xlabel("model utility (harmonic mean; higher is better)")
    ax.set_ylabel("forget quality (KS p-value, log; higher is better)")
    ax.axhline(0.05, color="grey", lw=0.8, ls="--")
    ax.text(ax.get_xlim()[0], 0.05, " p = 0.05", va="bottom", fontsize=8, color="grey")
    ax.grid(True, which="major", alpha=0.3)
    ax.set_title("Forget quality vs model utility")
    return _png(fig)


def known_shares(methods: dict[str, dict], colors: dict[str, str] | None = None) -> bytes | None:
    """realfacts: the forget, neighbour and general known shares of each method (grouped bars, chance at 0.2)."""
    splits = ("forget", "neighbour", "general")
    names = [n for n, m in methods.items() if any(_num(m.get(f"{s}_known")) is not None for s in splits)]
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(max(6.5, 0.9 * len(names) + 3), 3.8))
    width = 0.8 / len(splits)
    for k, (split, hatch) in enumerate(zip(splits, ("", "//", ".."))):
        vals = [_num(methods[n].get(f"{split}_known")) or 0.0 for n in names]
        ax.bar([i + (k - 1) * width for i in range(len(names))], vals, width, hatch=hatch, edgecolor="white",
               color=[(colors or {}).get(n, "#4C72B0") for n in names], label=split)
    ax.axhline(0.2, color="grey", lw=0.8, ls="--")
    ax.text(-0.45, 0.2, "chance", ha="left", va="bottom", fontsize=8, color="grey")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=9)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of facts known")
    ax.legend(fontsize=8, ncol=3, loc="upper right")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title("Facts known per split (forget: lower is better; neighbour, general: higher)")
    return _png(fig)


#: Per-step keys plotted on a log y-axis: NLLs and losses, which gradient ascent drives from ~1 to 30 and beyond
#: (on a linear axis every other method's curve is then a flat line at the bottom).
_LOG_KEY = re.compile(r"(^|_)(nll|loss)$")


def log_axis(key: str, values: list[float]) -> bool:
    """Whether the panel of ``key`` gets a log y-axis: an NLL or loss whose values are all positive."""
    return bool(_LOG_KEY.search(key)) and bool(values) and min(values) > 0


def steps(logs: dict[str, list[dict]], max_panels: int = 6, colors: dict[str, str] | None = None) -> bytes | None:
    """PNG of :func:`steps_figure`, or None when the logs hold no numeric key."""
    fig = steps_figure(logs, max_panels=max_panels, colors=colors)
    return _png(fig) if fig is not None else None


def steps_figure(logs: dict[str, list[dict]], max_panels: int = 6,
                 colors: dict[str, str] | None = None) -> Figure | None:
    """One panel per numeric key of the per-step logs, one line per run; NLL/loss panels on a log y-axis."""
    keys: list[str] = []
    for log in logs.values():
        for row in log:
            for k, v in row.items():
                if k != "step" and _num(v) is not None and k not in keys:
                    keys.append(k)
    keys = keys[:max_panels]
    if not keys:
        return None
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        plotted: list[float] = []
        for run, log in logs.items():
            xs = [r.get("step", i) for i, r in enumerate(log) if _num(r.get(key)) is not None]
            ys = [float(r[key]) for r in log if _num(r.get(key)) is not None]
            if ys:
                ax.plot(xs, ys, marker="." if len(ys) < 40 else None, label=run, color=(colors or {}).get(run))
                plotted += ys
        on_log = log_axis(key, plotted)
        if on_log:
            ax.set_yscale("log")
        ax.set_title(f"{key} (log scale)" if on_log else key, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=9, bbox_to_anchor=(0.5, -0.02 - 0.04 * math.ceil(len(labels) / 5)))
    fig.suptitle("Metrics per unlearning step")
    fig.tight_layout()
    return fig


def short_module(name: str) -> str:
    """'model.layers.3.self_attn.q_proj.weight' -> 'L3.q_proj'."""
    name = re.sub(r"\.weight$", "", name)
    m = re.search(r"layers\.(\d+)\.(?:[a-z_]+\.)?([A-Za-z0-9_]+)$", name)
    return f"L{m.group(1)}.{m.group(2)}" if m else name.split(".")[-1] if len(name) > 24 else name


def fidelity_heatmap(fidelity: dict[str, dict], title: str = "") -> bytes | None:
    """Per-module cosine (all of G, and on the unobserved block) for each decoder: a decoder × module heatmap."""
    decoders = [d for d, v in fidelity.items() if isinstance(v, dict) and isinstance(v.get("per_module"), list) and v["per_module"]]
    if not decoders:
        return None
    modules: list[str] = []
    for d in decoders:
        for pm in fidelity[d]["per_module"]:
            if pm.get("name") not in modules:
                modules.append(pm.get("name"))
    panels = [("cos", "cosine with the exact gradient"), ("cos_unobserved", "cosine on the unobserved block")]
    panels = [p for p in panels if any(_num(pm.get(p[0])) is not None for d in decoders for pm in fidelity[d]["per_module"])]
    width = max(6.0, 0.32 * len(modules) + 2.5)
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, (0.45 * len(decoders) + 1.2) * len(panels) + 1.2), squeeze=False,
                             sharex=True, layout="constrained")
    im = None
    for p_i, (ax, (key, label)) in enumerate(zip(axes[:, 0], panels)):
        grid = []
        for d in decoders:
            by = {pm.get("name"): _num(pm.get(key)) for pm in fidelity[d]["per_module"]}
            grid.append([by.get(m) if by.get(m) is not None else float("nan") for m in modules])
        im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_yticks(range(len(decoders)), decoders)
        ax.set_xticks(range(len(modules)), [short_module(m) for m in modules], rotation=90, fontsize=7)
        ax.tick_params(axis="x", labelbottom=p_i == len(panels) - 1)
        ax.set_title(label, fontsize=10)
        if len(modules) * len(decoders) <= 120:
            for i, row in enumerate(grid):
                for j, v in enumerate(row):
                    if not math.isnan(v):
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v < 0.6 else "black")
    if im is not None:
        fig.colorbar(im, ax=axes[:, 0].tolist(), shrink=0.8, label="cosine")
    fig.suptitle(f"Per-module gradient fidelity{(' — ' + title) if title else ''}")
    return _png(fig)


def cost(methods: dict[str, dict], colors: dict[str, str] | None = None) -> bytes | None:
    """Wall time and peak memory per method (bars)."""
    names = [n for n, m in methods.items() if _num(m.get("wall_s")) is not None or _num(m.get("peak_mem_mb")) is not None]
    if not names:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 1.1 * len(names) + 4), 3.6))
    for ax, key, label in ((axes[0], "wall_s", "wall time (s)"), (axes[1], "peak_mem_mb", "peak memory (MB)")):
        vals = [_num(methods[n].get(key)) or 0.0 for n in names]
        bars = ax.bar(range(len(names)), vals, color=[(colors or {}).get(n, "#4C72B0") for n in names])
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=9)
        ax.set_ylabel(label)
        ax.grid(True, axis="y", alpha=0.3)
        for b, v in zip(bars, vals):
            ax.annotate(f"{v:.3g}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    fig.suptitle("Cost per method (same machine, same run: compare as ratios)")
    fig.tight_layout()
    return _png(fig)
