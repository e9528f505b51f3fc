"""Batched model passes: teacher-forced scoring and greedy generation.

Scoring sorts sequences by length, right-pads (``r2f.data.templates.encode_qa``) and takes every
per-sequence statistic from ONE forward (:func:`r2f.eval.functional.token_stats`). Generation
left-pads prompts and decodes greedily with the KV cache, cutting at EOS and stop strings.
"""

from __future__ import annotations

from typing import Sequence

import torch

from r2f.data.templates import PromptTemplate, encode_qa, prompt_ids
from r2f.distributed import ONE_PROCESS, DataParallel
from r2f.eval.functional import token_stats
from r2f.progress import progress

#: Stop strings for the plain QA template (a model that keeps going writes the next "Question:").
QA_STOP_STRINGS = ("\nQuestion:", "Question:", "\n\n")


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


@torch.inference_mode()
def score_pairs(
    model,
    tokenizer,
    questions: Sequence[str],
    answers: Sequence[str],
    template: PromptTemplate,
    *,
    batch_size: int = 32,
    k: float = 0.4,
    with_min_k_pp: bool = False,
    desc: str = "scoring",
    dp: DataParallel = ONE_PROCESS,
) -> dict[str, list]:
    """Teacher-forced statistics for each (question, answer) pair, in input order.

    Returns lists: ``avg_loss``, ``n_tokens``, ``min_k``, ``exact_memorization``,
    ``extraction_strength`` (and ``min_k_pp`` when asked) and ``answer_text`` (the decoded label
    tokens, special tokens skipped, used by the ZLib attack). With an active ``dp`` (torchrun) whole
    batches go round-robin over the ranks and come back in order: per-item values as in one process.
    """
    n = len(questions)
    model.eval()
    device = _device(model)
    lengths = [len(q) + len(a) for q, a in zip(questions, answers)]
    order = sorted(range(n), key=lambda i: lengths[i])
    keys = ["avg_loss", "n_tokens", "min_k", "exact_memorization", "extraction_strength"] + (["min_k_pp"] if with_min_k_pp else [])
    out: dict[str, list] = {key: [None] * n for key in keys}
    out["answer_text"] = [None] * n
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if dp.active:  # whole batches round-robin over ranks: per-item values as in one process
        done = dp.gather([_score_batch(model, tokenizer, questions, answers, template, idx, device, k,
                                       with_min_k_pp, keys) for idx in progress(dp.share(batches), desc=desc)],
                         len(batches))
        for idx, (vals, texts) in zip(batches, done):
            for key in keys:
                for j, i in enumerate(idx):
                    out[key][i] = vals[key][j]
            for j, i in enumerate(idx):
                out["answer_text"][i] = texts[j]
        return out
    for idx in progress(batches, desc=desc, total=len(batches)):
        enc = encode_qa(tokenizer, [questions[i] for i in idx], [answers[i] for i in idx], template)
        logits = model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device)).logits
        stats = token_stats(logits, enc["labels"].to(device), k=k, with_min_k_pp=with_min_k_pp)
        labels = enc["labels"]
        texts = tokenizer.batch_decode([row[row != -100].tolist() for row in labels], skip_special_tokens=True)
        for key in keys:
            vals = stats[key].tolist()
            for j, i in enumerate(idx):
                out[key][i] = vals[j]
        for j, i in enumerate(idx):
            out["answer_text"][i] = texts[j]
    return out


def _score_batch(model, tokenizer, questions, answers, template, idx, device, k, with_min_k_pp, keys):
    enc = encode_qa(tokenizer, [questions[i] for i in idx], [answers[i] for i in idx], template)
    logits = model(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device)).logits
    stats = token_stats(logits, enc["labels"].to(device), k=k, with_min_k_pp=with_min_k_pp)
    labels = enc["labels"]
    texts = tokenizer.batch_decode([row[row != -100].tolist() for row in labels], skip_special_tokens=True)
    return {key: stats[key].tolist() for key in keys}, texts


def cut_generation(text: str, stop_strings: Sequence[str]) -> str:
    """Cut at the earliest stop string, then strip (OpenUnlearning's post-processing)."""
    cut = len(text)
    for s in stop_strings:
        if s:
            pos = text.find(s)
            if pos != -1:
                cut = min(cut, pos)
    return text[:cut].strip()


@torch.inference_mode()
def generate_answers(
    model,
    tokenizer,
    questions: Sequence[str],
    template: PromptTemplate,
    *,
    batch_size: int = 32,
    max_new_tokens: int = 200,
    stop_strings: Sequence[str] | None = None,
    desc: str = "generating",
    dp: DataParallel = ONE_PROCESS,
) -> list[str]:
    """Greedy answers (left padding, KV cache), cut at EOS and stop strings, stripped; input order (with an
    active ``dp``, whole batches round-robin over the ranks, gathered back in order)."""
    if stop_strings is None:
        stop_strings = QA_STOP_STRINGS if template.kind == "qa" else ()
    n = len(questions)
    model.eval()
    device = _device(model)
    prompts = [prompt_ids(tokenizer, q, template) for q in questions]
    order = sorted(range(n), key=lambda i: len(prompts[i]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    gen_kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, use_cache=True, pad_token_id=pad, eos_token_id=eos)
    # sampling knobs a checkpoint's generation_config may carry would only trigger warnings under greedy
    gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    if stop_strings:
        gen_kwargs.update(stop_strings=list(stop_strings), tokenizer=tokenizer)
    out: list[str] = [""] * n
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    mine = dp.share(batches)
    texts_of: list[list[str]] = []
    for idx in progress(mine, desc=desc, total=len(mine)):
        rows = [prompts[i] for i in idx]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            input_ids[j, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[j, width - len(r) :] = 1
        seqs = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), **gen_kwargs)
        new = seqs[:, width:].tolist()
        texts = []
        for j, i in enumerate(idx):
            toks = new[j]
            if eos is not None and eos in toks:
                toks = toks[: toks.index(eos)]
            text = tokenizer.decode(toks, skip_special_tokens=True)
            texts.append(cut_generation(text, stop_strings))
        texts_of.append(texts)
    texts_of = dp.gather(texts_of, len(batches))
    for idx, texts in zip(batches, texts_of):
        for j, i in enumerate(idx):
            out[i] = texts[j]
    return out
