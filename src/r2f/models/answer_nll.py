"""Answer-token NLL of a causal LM, computing logits only where there is an answer token.

Every loss in r2f (training, unlearning objectives, probe gradients) is a function of the NLL of answer
tokens; prompt and padding positions carry label -100. The output head (vocabulary × hidden) is one of the
largest matrices of a small LM (a fifth of SmolLM2-135M's forward FLOPs), so running it on the answer
positions only — typically a third of the tokens — saves that share in the forward *and* the backward pass.
The result equals the full-logits computation up to float rounding (``tests/test_models.py``).

Models whose logits are not just ``head(last hidden state)`` (logit soft-capping or scaling, wrappers that
must run their own ``forward``) take the plain path.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from r2f.data.templates import IGNORE_INDEX

MODEL_KEYS = ("input_ids", "attention_mask")
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def _body_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(transformer body, output head) when logits = head(body(...).last_hidden_state), else None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT adapter's target
    if any(type(m).__name__.startswith("FSDP") for m in (model, base)) or not hasattr(model, "get_decoder"):
        return None  # FSDP2 unshards through the root's forward hooks: never bypass them
    cfg = getattr(model, "config", None)
    if cfg is None or any(getattr(cfg, k, None) not in (None, 1, 1.0) for k in _LOGIT_TRANSFORMS):
        return None
    try:
        body, head = model.get_decoder(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if not isinstance(head, nn.Linear) or body is None or body is model:
        return None
    return body, head


def answer_token_nll_flat(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(NLL of every answer token, its row index, answer-token count per row) for a right-padded QA batch."""
    nll, _, rows, counts = answer_token_scores(model, batch)
    return nll, rows, counts


def answer_token_logits(model: nn.Module, batch: dict
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits at every answer-token position (tokens × vocabulary), the answer tokens, their row index,
    answer-token count per row) for a right-padded QA batch: one forward pass."""
    dev = next(model.parameters()).device
    inputs = {k: batch[k].to(dev) for k in MODEL_KEYS if k in batch}
    target = batch["labels"].to(dev)[:, 1:]
    keep = target != IGNORE_INDEX
    rows = keep.nonzero(as_tuple=True)[0]
    parts = _body_and_head(model)
    if parts is None:
        logits = model(**inputs).logits[:, :-1][keep]
    else:
        body, head = parts
        hidden = body(**inputs).last_hidden_state[:, :-1][keep]
        logits = head(hidden)
    return logits, target[keep], rows, keep.sum(1)


def answer_token_scores(model: nn.Module, batch: dict
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(NLL of every answer token, whether it is the model's top-1 token, its row index, answer-token count per
    row) for a right-padded QA batch: one forward pass."""
    logits, target, rows, counts = answer_token_logits(model, batch)
    nll = F.cross_entropy(logits.float(), target, reduction="none")
    return nll, logits.argmax(-1) == target, rows, counts


def row_sums(values: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Per-token ``values`` summed per sequence (``rows``: each token's row index), shape (n_rows,)."""
    return torch.zeros(n_rows, dtype=values.dtype, device=values.device).index_add(0, rows, values)


def sequence_nll(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed answer NLL per sequence, answer-token count per sequence), both of shape (batch,)."""
    nll, rows, counts = answer_token_nll_flat(model, batch)
    return row_sums(nll, rows, counts.shape[0]), counts


def mean_answer_nll(model: nn.Module, batch: dict) -> torch.Tensor:
    """Mean over sequences of each sequence's mean answer-token NLL (the probe's default loss)."""
    sums, counts = sequence_nll(model, batch)
    return (sums / counts.clamp_min(1)).mean()


def token_mean_answer_nll(model: nn.Module, batch: dict) -> torch.Tensor:
    """Mean NLL over every answer token of the batch (what ``model(**batch).loss`` returns)."""
    nll, _, counts = answer_token_nll_flat(model, batch)
    return nll.sum() / counts.sum().clamp_min(1)
