"""Loss functions of the unlearning methods, written to match OpenUnlearning's definitions.

All functions take right-padded batches from :func:`r2f.data.templates.encode_qa` (labels are -100 on
prompt and padding positions). Per-sequence NLLs are *summed* over answer tokens, as OpenUnlearning's
``compute_batch_nll`` does; ``token_mean_nll`` is the mean over all answer tokens of the batch, which is
what ``model(**inputs).loss`` returns in Hugging Face (used by GradAscent/GradDiff and the retain term).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from r2f.data.templates import IGNORE_INDEX
from r2f.distributed import global_count, in_data_parallel

MODEL_KEYS = ("input_ids", "attention_mask")


def forward_logits(model, batch: dict) -> torch.Tensor:
    return model(**{k: batch[k] for k in MODEL_KEYS if k in batch}).logits


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token NLL with zeros off the answer, answer mask), both (batch, seq-1), shifted."""
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    nll = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.clamp_min(0).reshape(-1), reduction="none"
    ).view_as(shift_labels)
    return nll * mask, mask


def sequence_nll(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed answer NLL per sequence, answer-token count per sequence)."""
    nll, mask = token_nll(forward_logits(model, batch), batch["labels"])
    return nll.sum(1), mask.sum(1)


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
