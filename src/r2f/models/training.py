"""Train ladder models on a world directory (the ``full`` model, the ``retain`` oracle and the proxy).

Training text uses the QA template with the loss on answer tokens only (TOFU's fine-tuning recipe); a
pretrained base (``smollm2``) keeps its own tokenizer and chat template.
``full`` and ``retain`` share tokenizer, recipe and seed; ``retain`` only lacks the forget split, so it is
the retrain oracle that forget quality is measured against. Results are cached by data + config hash.

``documents=True`` (never the default) also trains on the authors' biographies (the world's ``documents/`` files of
the same authors: forget + retain for ``full``, retain for ``retain``, proxy for the proxy), as document units
(r2f.data.batching.document_units: chunks with the LM loss on every token), shuffled with the QA items. Such a
model has its own cache key; the key, batches and weights of a default model are exactly as before.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from r2f.data.batching import CHUNK_TOKENS, document_units
from r2f.data.loader import RETAIN_OF, SPLIT_FILES, load_documents, load_split
from r2f.data.templates import PromptTemplate, answer_ids, collate_qa, encode_qa, pad_id, prompt_ids, template_for
from r2f.data.world import DOCUMENTS_DIR, world_corpus
from r2f.errors import R2FInputError
from r2f.io import atomic_dir, clean_stale
from r2f.models.answer_nll import token_mean_answer_nll
from r2f.models.cache import cache_dir, hash_config, hash_files
from r2f.models.ladder import PROXY_SIZES, RECIPES, SIZES, build_model, recipe_dict
from r2f.models.loading import load_model, resolve_model_dir
from r2f.models.tokenizer import train_tokenizer
from r2f.progress import progress, quiet_hf_progress
from r2f.threads import model_threads_for
from r2f.typed import check_choice

TRAINING_VERSION = "1"
TOKENIZER_VOCAB = 1024


def training_items(data_dir: Path, size: str, split: str, forget: str):
    """The records a ladder model learns (world facts always included)."""
    if size not in PROXY_SIZES:  # before any file is read: the flag at fault, not a missing file
        check_choice("forget split", forget, tuple(RETAIN_OF), source="--forget")
    world_facts = load_split(data_dir, "world_facts")
    if size in PROXY_SIZES:
        return load_split(data_dir, "proxy") + world_facts
    retain = load_split(data_dir, RETAIN_OF[forget])
    if split == "retain":
        return retain + world_facts
    return load_split(data_dir, forget) + retain + world_facts


def training_documents(data_dir: Path, size: str, split: str, forget: str) -> list:
    """The biographies a ``documents=True`` model also learns: those of the authors its QA items come from."""
    if size in PROXY_SIZES:
        names = ["proxy"]
    else:
        names = [RETAIN_OF[forget]] if split == "retain" else [forget, RETAIN_OF[forget]]  # as training_items
    docs = []
    for name in names:
        path = data_dir / DOCUMENTS_DIR / f"{name}.jsonl"
        if not path.is_file():
            raise R2FInputError("documents=True needs the world's biographies (written by r2f world)",
                                source=str(path))
        docs += load_documents(path)
    return docs


def cache_key(data_dir: Path, size: str, split: str, forget: str, seed: int, documents: bool = False) -> str:
    files = [data_dir / f for f in SPLIT_FILES.values() if (data_dir / f).is_file()]
    config = {"v": TRAINING_VERSION, "size": size, "split": split, "seed": seed, "recipe": recipe_dict(size),
              "forget": forget if size not in PROXY_SIZES else None, "data": hash_files(files)}
    if documents:  # only then: a default model's key is the one it always had
        doc_files = sorted((data_dir / DOCUMENTS_DIR).glob("*.jsonl"))
        config["documents"] = {"data": hash_files(doc_files), "chunk_tokens": CHUNK_TOKENS}
    return hash_config(config)[:16]


def cached_model_dir(data_dir: Path, size: str, split: str, forget: str, seed: int, documents: bool = False,
                     key: str | None = None) -> Path:
    """Where :func:`train_model` keeps (or will keep) this model in the cache; nothing is trained or checked."""
    key = key or cache_key(data_dir, size, split, forget, seed, documents=documents)
    return cache_dir() / "models" / (f"{size}-{split}-{key}" if not documents else f"{size}-{split}-docs-{key}")


def train_model(data_dir: str | os.PathLike, size: str = "small", split: str = "full", forget: str = "forget10",
                out: str | os.PathLike | None = None, seed: int = 0, use_cache: bool = True,
                overwrite: bool = False, documents: bool = False) -> Path:
    """Train (or fetch from the cache) a ladder model; returns its directory (``out`` if given). ``documents``: also
    learn the same authors' biographies (module docstring; a separate cache key)."""
    data_dir = Path(data_dir)
    check_choice("size", size, SIZES, source="--size")
    check_choice("split", split, ("full", "retain"), source="--split")
    items = training_items(data_dir, size, split, forget)
    docs = training_documents(data_dir, size, split, forget) if documents else []
    key = cache_key(data_dir, size, split, forget, seed, documents=bool(documents))
    cached = cached_model_dir(data_dir, size, split, forget, seed, documents=bool(documents), key=key)
    clean_stale(cached, any_sibling=True)  # the cache is r2f's own: what killed trainings of any model left
    if not (use_cache and (cached / "model.safetensors").is_file()):
        with atomic_dir(cached, overwrite=True) as tmp:
            _train_into(tmp, data_dir, items, size, split, forget, seed, key, docs)
    if out is None:
        return cached
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for f in cached.iterdir():
            shutil.copy2(f, tmp / f.name)
    return Path(out)


def _train_into(target: Path, data_dir: Path, items, size: str, split: str, forget: str, seed: int, key: str,
                docs: list | None = None) -> None:
    recipe = RECIPES[size]
    quiet_hf_progress()
    torch.manual_seed(seed)
    if recipe.base:  # fine-tune a pretrained model with its own tokenizer and prompt template
        model, tokenizer = load_model(recipe.base)
        template = template_for(tokenizer)
    elif recipe.tokenizer:  # a fresh model speaking a pretrained model's tokenizer and prompt template
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(recipe.tokenizer))
        model = build_model(size, tokenizer, seed=seed)
        template = template_for(tokenizer)
    else:
        tokenizer = train_tokenizer(world_corpus(data_dir), TOKENIZER_VOCAB)
        model = build_model(size, tokenizer, seed=seed)
        template = PromptTemplate("qa")
    if docs:
        batches = _mixed_batches(tokenizer, items, docs, template, recipe.batch_size, recipe.epochs, seed)
    else:
        batches = _batches(tokenizer, items, template, recipe.batch_size, recipe.epochs, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, betas=(0.9, 0.98))
    warm = max(1, int(recipe.warmup * len(batches)))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / len(batches)))))
    model.train()
    start, losses = time.perf_counter(), []
    bar = progress(batches, desc=f"train {size}/{split}")
    with model_threads_for(model) as threads:
        for batch in bar:
            loss = token_mean_answer_nll(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    meta = {"r2f_model": {"size": size, "split": split, "forget": forget if size not in PROXY_SIZES else None,
                          "seed": seed, "cache_key": key, "data_dir": str(data_dir), "n_items": len(items),
                          "recipe": recipe_dict(size), "train_s": round(time.perf_counter() - start, 2),
                          "final_loss": sum(losses[-10:]) / max(1, len(losses[-10:])), "template": template.kind,
                          "n_params": sum(p.numel() for p in model.parameters()), "threads": threads.to_dict()}}
    if docs:
        meta["r2f_model"]["documents"] = {"n_documents": len(docs), "chunk_tokens": CHUNK_TOKENS}
    (target / "r2f_model.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _batches(tokenizer, items, template, batch_size: int, epochs: int, seed: int) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(epochs):
        order = torch.randperm(len(items), generator=gen).tolist()
        for i in range(0, len(order), batch_size):
            chunk = [items[j] for j in order[i: i + batch_size]]
            out.append(encode_qa(tokenizer, [c.question for c in chunk], [c.answer for c in chunk], template))
    return out


def _mixed_batches(tokenizer, items, docs, template, batch_size: int, epochs: int, seed: int) -> list[dict]:
    """:func:`_batches` over the QA items and the documents' units (each unit's chunk alone, the loss on its every
    token), shuffled together in every epoch."""
    rows = [(prompt_ids(tokenizer, it.question, template), answer_ids(tokenizer, it.answer, template)) for it in items]
    rows += [tuple(map(list, u.view_ids[0])) for u in document_units(tokenizer, docs, CHUNK_TOKENS, None)]
    gen, pad = torch.Generator().manual_seed(seed), pad_id(tokenizer)
    out = []
    for _ in range(epochs):
        order = torch.randperm(len(rows), generator=gen).tolist()
        out += [collate_qa([rows[j] for j in order[i: i + batch_size]], pad) for i in range(0, len(order), batch_size)]
    return out
