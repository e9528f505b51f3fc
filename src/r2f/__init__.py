"""r2f — Recover-to-Forget: efficient unlearning for LLMs.

Gradients are taken only with respect to small LoRA probe adapters over several paraphrased views of
what must be forgotten, decoded by a learned gradient decoder into full-size weight gradients, and
used to update the full model. The public API mirrors the CLI, option for option (docs/api.md):

- :func:`r2f.unlearn` — ``r2f unlearn``
- :func:`r2f.train_decoder` — ``r2f train-decoder``
- :func:`r2f.evaluate` — ``r2f eval``
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any  # noqa: E402

from r2f.api import evaluate, train_decoder  # noqa: E402  (light: heavy imports happen per call)

if TYPE_CHECKING:
    from r2f.methods import unlearn


def __getattr__(name: str) -> Any:
    # r2f.unlearn is r2f.methods.unlearn itself, imported on first use: it needs torch, which `import r2f`
    # (and so every CLI command, `r2f --version` included) should not pay for
    if name == "unlearn":
        from r2f.methods import unlearn

        return unlearn
    raise AttributeError(f"module 'r2f' has no attribute {name!r}")


__all__ = ["unlearn", "train_decoder", "evaluate", "__version__"]
