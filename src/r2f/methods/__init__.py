"""Unlearning methods: one engine (``r2f.methods.engine``) runs every method.

- baselines with OpenUnlearning's losses and defaults: ``grad_ascent``, ``grad_diff``, ``npo``, ``simnpo``,
  and ``lora`` (LoRA-only unlearning, merged);
- ``r2f``: decoded LoRA-probe gradients → full-weight update with a retain guard; ``exact``: the same rule
  with exact gradients (oracle).

``unlearn(model, forget, retain, method=..., out=...)`` is the public entry point.
"""

from r2f.methods.engine import (
    METHODS,
    Engine,
    EngineConfig,
    LossMethod,
    Method,
    QABatch,
    RunResult,
    StepContext,
    UpdateMethod,
    get_method,
    register,
)
from r2f.methods import baselines as _baselines  # noqa: F401  (registers the baselines)
from r2f.methods import r2f as _r2f  # noqa: F401  (registers r2f and exact)
from r2f.methods.api import unlearn
from r2f.methods.losses import npo_loss, simnpo_loss

METHOD_NAMES = ("r2f", "grad_ascent", "grad_diff", "npo", "simnpo", "lora", "exact")

__all__ = ["unlearn", "METHODS", "METHOD_NAMES", "Engine", "EngineConfig", "Method", "LossMethod", "UpdateMethod",
           "StepContext", "QABatch", "RunResult", "get_method", "register", "npo_loss", "simnpo_loss"]
