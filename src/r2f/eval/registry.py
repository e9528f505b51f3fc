"""The metric registry (OpenUnlearning style).

A metric is a function ``fn(ctx) -> {"agg_value": float | None, "value_by_index": {idx: {...}}}``
registered under its OpenUnlearning name. ``ctx`` is an :class:`r2f.eval.suite.EvalContext`; a metric
that depends on another calls ``ctx.metric(name)`` (cached), the way OpenUnlearning's
``pre_compute`` works. ``needs`` lists the logical splits the metric reads ("forget", "retain",
"holdout", "world_facts"); the suite skips a metric whose splits are absent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

MetricFn = Callable[["object"], dict]


@dataclass(frozen=True)
class MetricSpec:
    name: str
    fn: MetricFn
    needs: frozenset[str] = field(default_factory=frozenset)
    needs_reference: bool = False
    doc: str = ""


METRICS: dict[str, MetricSpec] = {}


def register_metric(name: str, *, needs: tuple[str, ...] = (), needs_reference: bool = False) -> Callable[[MetricFn], MetricFn]:
    """Decorator: ``@register_metric("forget_Q_A_Prob", needs=("forget",))``."""

    def deco(fn: MetricFn) -> MetricFn:
        if name in METRICS:
            raise ValueError(f"metric {name!r} registered twice")
        METRICS[name] = MetricSpec(name, fn, frozenset(needs), needs_reference, (fn.__doc__ or "").strip())
        return fn

    return deco
