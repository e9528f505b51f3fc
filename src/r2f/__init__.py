"""r2f — Recover-to-Forget: efficient unlearning for LLMs.

Gradients are taken only with respect to small LoRA probe adapters over several paraphrased views of
what must be forgotten, decoded by a learned gradient decoder into full-size weight gradients, and
used to update the full model. The public API mirrors the CLI:

- :func:`r2f.unlearn` — ``r2f unlearn``
- :func:`r2f.train_decoder` — ``r2f train-decoder``
- :func:`r2f.evaluate` — ``r2f eval``
"""

from __future__ import annotations

__version__ = "0.1.0"


def unlearn(*args, **kwargs):
    """Unlearn a forget set from a model; see :func:`r2f.methods.unlearn`."""
    from r2f.methods import unlearn as _unlearn

    return _unlearn(*args, **kwargs)


def train_decoder(*args, **kwargs):
    """Train an R2F gradient decoder on a proxy model; see :func:`r2f.decoders.train_decoder`."""
    from r2f.decoders import train_decoder as _train_decoder

    return _train_decoder(*args, **kwargs)


def evaluate(*args, **kwargs):
    """Evaluate a model with OpenUnlearning's metrics; see :func:`r2f.eval.evaluate`."""
    from r2f.eval import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


__all__ = ["unlearn", "train_decoder", "evaluate", "__version__"]
