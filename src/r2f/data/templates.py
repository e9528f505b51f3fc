"""Prompt templates and tokenisation of question–answer pairs.

Plain models use the QA template of SPEC §4 (``Question: {q}\\nAnswer: {a}``); instruct models
(a tokenizer with a chat template) are prompted through that chat template, as OpenUnlearning's
per-model templates do. The loss is taken on answer tokens only (prompt positions get label -100).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

IGNORE_INDEX = -100
QA_PROMPT = "Question: {question}\nAnswer:"


@dataclass(frozen=True)
class PromptTemplate:
    kind: Literal["qa", "chat"] = "qa"

    def prompt(self, tokenizer, question: str) -> str:
        if self.kind == "chat":
            messages = [{"role": "user", "content": question}]
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return QA_PROMPT.format(question=question)

    def answer_text(self, answer: str) -> str:
        return answer if self.kind == "chat" else " " + answer


def template_for(tokenizer) -> PromptTemplate:
    """Chat template for instruct tokenizers, the QA template otherwise."""
    return PromptTemplate("chat" if getattr(tokenizer, "chat_template", None) else "qa")


def prompt_ids(tokenizer, question: str, template: PromptTemplate) -> list[int]:
    ids = tokenizer(template.prompt(tokenizer, question), add_special_tokens=False)["input_ids"]
    if template.kind == "qa" and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
    return ids


def answer_ids(tokenizer, answer: str, template: PromptTemplate) -> list[int]:
    ids = tokenizer(template.answer_text(answer), add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return ids


def untrainable(tokenizer, questions: Sequence[str], answer: str, template: PromptTemplate | None = None,
                max_length: int | None = None) -> str | None:
    """Why a QA pair gives no answer token to train or unlearn on, or None when it does.

    Refused: an answer the tokenizer turns into no tokens at all (a normalizer may drop everything), and a
    question view whose prompt fills ``max_length`` so that truncation leaves no answer token.
    """
    template = template or template_for(tokenizer)
    if not tokenizer(answer, add_special_tokens=False)["input_ids"]:
        return "field 'answer': tokenizes to no tokens"
    for v, q in enumerate(questions):
        n = len(prompt_ids(tokenizer, q, template))
        if max_length is not None and n >= max_length:
            field = "question" if v == 0 else f"paraphrased_question.{v - 1}"
            return (f"field '{field}': the prompt is {n} tokens, which leaves no answer token within "
                    f"max_length {max_length}")
    return None


def encode_qa(
    tokenizer,
    questions: Sequence[str],
    answers: Sequence[str],
    template: PromptTemplate | None = None,
    max_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask``/``labels`` with the loss on answer tokens only."""
    if len(questions) != len(answers):
        raise ValueError("questions and answers differ in length")
    template = template or template_for(tokenizer)
    pairs = [(prompt_ids(tokenizer, q, template), answer_ids(tokenizer, a, template)) for q, a in zip(questions, answers)]
    return collate_qa(pairs, pad_id(tokenizer), max_length)


def pad_id(tokenizer) -> int:
    """The id :func:`encode_qa` pads with: the pad token, else EOS, else 0."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


def collate_qa(pairs: Sequence[tuple[list[int], list[int]]], pad: int,
               max_length: int | None = None) -> dict[str, torch.Tensor]:
    """:func:`encode_qa`'s batch from token ids already made: (prompt ids, answer ids) per row."""
    rows, labels = [], []
    for p, t in pairs:
        ids, lab = p + t, [IGNORE_INDEX] * len(p) + t
        if max_length is not None:
            ids, lab = ids[:max_length], lab[:max_length]
        rows.append(ids)
        labels.append(lab)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    label_t = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, lab) in enumerate(zip(rows, labels)):
        input_ids[i, : len(r)] = torch.tensor(r)
        label_t[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(r)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": label_t}


def answer_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sequence *mean* answer-token NLL (shifted), shape (batch,). Padding-aware."""
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    nll = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.clamp_min(0).reshape(-1),
        reduction="none",
    ).view_as(shift_labels)
    nll = nll * mask
    return nll.sum(1) / mask.sum(1).clamp_min(1)
