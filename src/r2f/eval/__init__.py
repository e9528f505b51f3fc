"""Evaluation: TOFU/MUSE metrics with OpenUnlearning's names and exact definitions (see docs/metrics.md).

- :func:`evaluate` runs the suite and returns the eval.json dict; its settings are one :class:`EvalSpec`
  (:mod:`r2f.eval_spec`, outside this package so that the CLI reads it without torch);
- :data:`METRICS` is the registry (``name -> MetricSpec``); :func:`register_metric` adds one;
- :mod:`r2f.eval.functional` holds the pure, unit-tested definitions;
- :func:`evaluate_realfacts` runs the realfacts metrics (:mod:`r2f.eval.realfacts`, docs/realfacts.md).
"""

from r2f.eval.registry import METRICS, MetricSpec, register_metric
from r2f.eval.suite import DEFAULT_METRICS, EvalContext, evaluate, tokenizer_fingerprint
from r2f.eval.realfacts import REALFACTS_METRICS, evaluate_realfacts  # noqa: E402  (registers the realfacts metrics)
from r2f.eval_spec import EvalSpec

__all__ = ["METRICS", "MetricSpec", "register_metric", "DEFAULT_METRICS", "EvalContext", "EvalSpec", "evaluate", "tokenizer_fingerprint",
           "REALFACTS_METRICS", "evaluate_realfacts"]
