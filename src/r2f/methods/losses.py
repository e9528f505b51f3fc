"""Loss functions of the unlearning methods, written to match OpenUnlearning's definitions.

All functions take right-padded batches from :func:`r2f.data.templates.encode_qa` (labels are -100 on
prompt and padding positions). Per-sequence NLLs are *summed* over answer tokens, as OpenUnlearning's
``compute_batch_nll`` does; ``token_mean_nll`` is the mean over all answer tokens of the batch, which is
what ``model(**inputs).loss`` returns in Hugging Face (used by GradAscent/GradDiff and the retain term).

Every mean takes ``dp`` (:class:`r2f.distributed.DataParallel`): in a data-parallel step the batch is a rank's
slice of the global batch and the mean divides by the global count, so the ranks' gradients sum to the
one-process gradient. The default, ``ONE_PROCESS``, is the mean over the batch given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from r2f.distributed import ONE_PROCESS, DataParallel
from r2f.models.answer_nll import sequence_nll

__all__ = ["sequence_nll", "token_mean_nll", "seq_mean", "npo_loss", "simnpo_loss"]


def token_mean_nll(seq_sum: torch.Tensor, seq_len: torch.Tensor, dp: DataParallel = ONE_PROCESS) -> torch.Tensor:
    """Mean NLL over all answer tokens of the batch (Hugging Face's ``outputs.loss``)."""
    return seq_sum.sum() / dp.count(seq_len.sum()).clamp_min(1)


def seq_mean(values: torch.Tensor, dp: DataParallel = ONE_PROCESS) -> torch.Tensor:
    """Mean over the sequences of the batch; with an active ``dp`` the batch is a rank's slice of the global
    batch and this is its contribution to the global mean (sum / global count)."""
    if not dp.active:
        return values.mean()
    return values.sum() / dp.count(torch.tensor(float(values.numel()), device=values.device))


def npo_loss(nll_theta: torch.Tensor, nll_ref: torch.Tensor, beta: float = 0.1,
             dp: DataParallel = ONE_PROCESS) -> torch.Tensor:
    """NPO forget loss, OpenUnlearning's ``compute_dpo_loss`` with only a losing response.

    ``-(2/β)·mean logσ(β·(NLL_θ − NLL_ref))`` with per-sequence *summed* NLLs; minimising it raises
    NLL_θ above the reference's, with a gradient that vanishes as the sequence is forgotten.
    """
    return -2.0 / beta * seq_mean(F.logsigmoid(beta * (nll_theta - nll_ref)), dp)


def simnpo_loss(nll_sum: torch.Tensor, n_tokens: torch.Tensor, beta: float = 4.5, delta: float = 0.0,
                dp: DataParallel = ONE_PROCESS) -> torch.Tensor:
    """SimNPO forget loss: ``-(2/β)·mean logσ(β·(NLL_θ/|y| − δ))`` (length-normalised, no reference)."""
    return -2.0 / beta * seq_mean(F.logsigmoid(beta * (nll_sum / n_tokens.clamp_min(1) - delta)), dp)
