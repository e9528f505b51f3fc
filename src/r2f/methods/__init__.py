"""Unlearning methods: one engine (``r2f.methods.engine``) runs every method.

- baselines with OpenUnlearning's losses and defaults: ``grad_ascent``, ``grad_diff``, ``npo``, ``simnpo``,
  and ``lora`` (LoRA-only unlearning, merged);
- ``r2f``: decoded LoRA-probe gradients → full-weight update with a retain guard; ``exact``: the same rule
  with exact gradients (oracle);
- one file per further method (``rmu``, ``wga``, …).

A method is registered by ``@register`` in its own module; every module of this package is imported here, so
adding a method is adding its file (docs/adding-a-method.md). ``METHODS`` (name → class) is the only list of
methods: validation, the CLI's error for an unknown name and the docs test read it.

``unlearn(model, forget, retain, method=..., out=...)`` is the public entry point.
"""

import importlib
import pkgutil

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
from r2f.methods.api import unlearn
from r2f.methods.losses import npo_loss, simnpo_loss

# Import every module of the package: the ones defining methods register them (import order does not matter;
# a module that fails to import is an error here, not a silently missing method).
for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")
del _mod

#: The registered names, read from the registry (kept for callers of the former hand-written tuple).
METHOD_NAMES = tuple(METHODS)

__all__ = ["unlearn", "METHODS", "METHOD_NAMES", "Engine", "EngineConfig", "Method", "LossMethod", "UpdateMethod",
           "StepContext", "QABatch", "RunResult", "get_method", "register", "npo_loss", "simnpo_loss"]
