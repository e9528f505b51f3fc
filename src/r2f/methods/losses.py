"""Loss functions of the unlearning methods, written to match OpenUnlearning's definitions.

All functions take right-padded batches from :func:`r2f.data.templates.encode_qa` (labels are -100 on
prompt and padding positions). Per-sequence NLLs are *summed* over answer tokens, as OpenUnlearning's
``compute_batch_nll`` does; ``token_mean_nll`` is the mean over all answer tokens of the batch, which is
what ``model(**inputs).loss`` returns in Hugging Face (used by GradAscent/GradDiff and the retain term).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from r2f.distributed import global_count, in_data_parallel
from r2f.models.answer_nll import sequence_nll

__all__ = ["sequence_nll", "token_mean_nll", "seq_mean", "npo_loss", "simnpo_loss"]


def token_mean_nll(seq_sum: torch.Tensor, seq_len: torch.Tensor) -> torch.Tensor:
    """Mean NLL over all answer tokens of the batch (Hugging Face's ``outputs.loss``)."""
    return seq_sum.sum() / global_count(seq_len.sum()).clamp_min(1)


def seq_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over the sequences of the batch; inside ``r2f.distributed.data_parallel`` the batch is a rank's
    slice of the global batch and this is its contribution to the global mean (sum / global count)."""
    if not in_data_parallel():
        return values.mean()
    return values.sum() / global_count(torch.tensor(float(values.numel()), device=values.device))


def npo_loss(nll_theta: torch.Tensor, nll_ref: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """NPO forget loss, OpenUnlearning's ``compute_dpo_loss`` with only a losing response.

    ``-(2/β)·mean logσ(β·(NLL_θ − NLL_ref))`` with per-sequence *summed* NLLs; minimising it raises
    NLL_θ above the reference's, with a gradient that vanishes as the sequence is forgotten.
    """
    return -2.0 / beta * seq_mean(F.logsigmoid(beta * (nll_theta - nll_ref)))


def simnpo_loss(nll_sum: torch.Tensor, n_tokens: torch.Tensor, beta: float = 4.5, delta: float = 0.0) -> torch.Tensor:
    """SimNPO forget loss: ``-(2/β)·mean logσ(β·(NLL_θ/|y| − δ))`` (length-normalised, no reference)."""
    return -2.0 / beta * seq_mean(F.logsigmoid(beta * (nll_sum / n_tokens.clamp_min(1) - delta)))
