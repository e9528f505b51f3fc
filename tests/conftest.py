"""Shared fixtures: a small generated world and trained tiny models (session-scoped, hermetic cache)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("R2F_NO_PROGRESS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# demo and bench rows one at a time: tests replace stages with in-process stubs that worker processes would not
# see (r2f.parallel has its own tests, tests/test_parallel.py)
os.environ.setdefault("R2F_JOBS", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _hermetic_cache(tmp_path_factory):
    """Every test session trains into its own cache, never the user's."""
    if "R2F_TEST_CACHE" in os.environ:  # opt-in reuse across local runs
        os.environ["R2F_CACHE"] = os.environ["R2F_TEST_CACHE"]
    else:
        os.environ["R2F_CACHE"] = str(tmp_path_factory.mktemp("r2f-cache"))
    yield


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory):
    """The default embedded world (seed 0)."""
    from r2f.data.world import WorldConfig, write_world

    return write_world(tmp_path_factory.mktemp("world") / "world", WorldConfig(seed=0))


@pytest.fixture(scope="session")
def tiny_models(world_dir):
    """Trained ``tiny`` models: ``full`` and ``retain`` (forget10 removed) and a ``tiny``-sized proxy.

    The proxy fixture uses the ``proxy`` recipe (narrower/shallower than ``small``) on the proxy pool.
    """
    from r2f.models.training import train_model

    return {
        "full": train_model(world_dir, size="tiny", split="full"),
        "retain": train_model(world_dir, size="tiny", split="retain"),
        "proxy": train_model(world_dir, size="proxy", split="full"),
    }


def item_answer_nlls(model_dir, items):
    """Per item, its mean answer-token NLL under the model in ``model_dir`` (transformers loading, 16 a batch)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r2f.data.templates import encode_qa
    from r2f.methods.losses import sequence_nll

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    vals = []
    with torch.no_grad():
        for i in range(0, len(items), 16):
            chunk = items[i:i + 16]
            s, n = sequence_nll(model, encode_qa(tok, [it.question for it in chunk], [it.answer for it in chunk]))
            vals.append(s / n)
    return torch.cat(vals)


def answer_prob(model_dir, items) -> float:
    """Mean over items of P̄ = exp(−mean answer-token NLL) (OpenUnlearning's probability metric)."""
    import torch

    return float(torch.exp(-item_answer_nlls(model_dir, items)).mean())


def mean_answer_nll(model_dir, items) -> float:
    """Mean over items of the mean answer-token NLL (R2F's logged signals: guard, forget set, collateral watch)."""
    return float(item_answer_nlls(model_dir, items).mean())
