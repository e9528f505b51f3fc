"""Checkpoints of an unlearning run: safetensors files plus JSON, never pickle.

A checkpoint ``ROOT/step-NNNNNNNN`` holds the model weights (``model.safetensors``), the optimizer's and the
method's tensors and the RNG states (``state.safetensors``), and ``state.json``: the step, the log, the cost so
far, the numerics record and the run key. Loading one refuses a checkpoint of another configuration (its run
key differs) and restores every RNG, so that a resumed run is bit-identical to an uninterrupted one on CPU.

Under FSDP every rank takes part in a save (the gathers are collectives) and rank 0 alone writes the full
tensors, so a checkpoint has the one-process format and resumes either way; on load every rank reads the full
checkpoint and keeps its rows.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import _remove_duplicate_names, load_file, load_model, save_file, save_model

from r2f.distributed import ONE_PROCESS, DataParallel
from r2f.errors import R2FInputError
from r2f.fsdp import full_state_dict, full_tensor, load_full_state_dict, shard_state_tensor
from r2f.io import atomic_dir, write_json_atomic
from r2f.methods.base import Method

CHECKPOINT_FORMAT = 1


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root`` (None when there is none)."""
    if not root.is_dir():
        return None
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and (p / "state.json").is_file())
    return done[-1] if done else None


class Checkpointer:
    """Saves and loads the checkpoints of one run under ``root`` (keeping the newest ``keep``).

    ``sharded``: the model is FSDP-sharded (r2f.fsdp); ``device``: where a one-process load puts the weights;
    ``dp``: the run's data-parallel context (its main rank alone keeps the gathered tensors and writes).
    """

    def __init__(self, root: Path, *, keep: int = 1, sharded: bool = False,
                 device: torch.device | str | None = None, dp: DataParallel = ONE_PROCESS):
        self.root = Path(root)
        self.keep = keep
        self.dp = dp
        self.sharded = sharded
        self.device = device

    def latest(self) -> Path | None:
        return latest_checkpoint(self.root)

    def save(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, method: Method,
             state: dict) -> Path:
        """Write checkpoint ``step`` (``state``: the JSON-able run state; RNGs and tensors are added here)."""
        final = self.root / f"step-{step:08d}"
        tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
        np_state = np.random.get_state()
        tensors["rng.numpy.keys"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
        meta: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "rng": {"python": _py_rng_to_json(random.getstate()),
                    "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])]},
            **state,
        }
        # FSDP: every rank calls this (the gathers are collectives, in the same order everywhere); rank 0 alone
        # keeps the full tensors and writes, so a checkpoint has the one-process format and resumes either way
        keep = self.dp.is_main
        if optimizer is not None:
            sd = optimizer.state_dict()
            for pid, pstate in sd["state"].items():
                for k, v in pstate.items():
                    if not torch.is_tensor(v):
                        raise TypeError(f"non-tensor optimizer state {k}")
                    full = full_tensor(v, keep=keep)
                    if full is not None:
                        tensors[f"optim.{pid}.{k}"] = full.contiguous()
            meta["optimizer"] = {"param_groups": sd["param_groups"]}
        m_tensors, m_meta = method.state()
        for k, v in m_tensors.items():
            full = full_tensor(v, keep=keep)
            if full is not None:
                tensors[f"method.{k}"] = full.contiguous()
        meta["method_state"] = m_meta
        model_sd = full_state_dict(model) if self.sharded else None
        if not keep:
            return final
        with atomic_dir(final, overwrite=True) as tmp:
            if model_sd is not None:
                _save_state_dict(model_sd, tmp / "model.safetensors")
            else:
                save_model(model, str(tmp / "model.safetensors"))
            save_file(tensors, str(tmp / "state.safetensors"))
            write_json_atomic(tmp / "state.json", meta)
        old = sorted(p for p in self.root.glob("step-*") if p.is_dir() and p != final)
        for p in old[: max(0, len(old) - (self.keep - 1))]:
            shutil.rmtree(p, ignore_errors=True)
        return final

    def load(self, path: Path, run_key: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
             method: Method) -> dict:
        """Restore checkpoint ``path`` into the model, optimizer, method and RNGs; returns its ``state.json``."""
        meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise R2FInputError(f"unsupported checkpoint format {meta.get('format')}", source=str(path))
        if meta.get("run_key") != jsonable(run_key):
            diff = _first_difference(meta.get("run_key") or {}, jsonable(run_key))
            raise R2FInputError(f"--resume: the run in this directory used another configuration ({diff})",
                                source=str(path.parent.parent))
        if self.sharded:  # every rank reads the full checkpoint and keeps its rows
            weights = load_file(str(path / "model.safetensors"))
            missing, unexpected = load_full_state_dict(model, weights), sorted(set(weights) - set(model.state_dict()))
        else:
            missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False,
                                             device=str(self.device))
        if missing or unexpected:
            raise R2FInputError(f"checkpoint does not match the model (missing {list(missing)[:3]}, "
                                f"unexpected {list(unexpected)[:3]})", source=str(path))
        tensors = load_file(str(path / "state.safetensors"))
        if optimizer is not None:
            # optimizer state ids number the parameters in group order; a sharded parameter's state is sharded too
            flat = [p for g in optimizer.param_groups for p in g["params"]]
            state: dict[int, dict[str, torch.Tensor]] = {}
            for k, v in tensors.items():
                if k.startswith("optim."):
                    _, pid, name = k.split(".", 2)
                    state.setdefault(int(pid), {})[name] = shard_state_tensor(v, flat[int(pid)]) \
                        if int(pid) < len(flat) else v
            optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
        method.load_state(self._method_tensors(tensors, model), meta.get("method_state", {}))
        torch.set_rng_state(tensors["rng.torch"])
        if torch.cuda.is_available():
            cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
            if cuda:
                torch.cuda.set_rng_state_all(cuda)
        random.setstate(_py_rng_from_json(meta["rng"]["python"]))
        name, pos, has_gauss, cached = meta["rng"]["numpy"]
        np.random.set_state((name, tensors["rng.numpy.keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
        return meta

    def _method_tensors(self, tensors: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The method's checkpointed tensors; under FSDP, one named ``<prefix>.<parameter name>`` with that
        parameter's shape (R2F's Adam moments ``m.…``/``v.…``) is laid out like the parameter (this rank's rows)."""
        out = {k[len("method."):]: v for k, v in tensors.items() if k.startswith("method.")}
        if not self.sharded:
            return out
        params = dict(model.named_parameters())
        for k, v in out.items():
            p = params.get(k.split(".", 1)[1]) if "." in k else None
            if p is not None:
                out[k] = shard_state_tensor(v, p)
        return out


def jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (what a checkpoint's run key is compared in)."""
    return json.loads(json.dumps(obj, default=str))


def _save_state_dict(sd: dict[str, torch.Tensor], path: Path) -> None:
    """A gathered state dict written as ``save_model`` writes the model (a tied weight once, under the name
    ``save_model`` keeps, with the same metadata), so one-process and FSDP checkpoints resume each other."""
    metadata: dict[str, str] = {}
    sd = dict(sd)
    for kept, removed in _remove_duplicate_names(sd).items():
        for name in removed:
            metadata[name] = kept
            del sd[name]
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=metadata or None)


def _py_rng_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _py_rng_from_json(obj: list) -> tuple:
    version, internal, gauss = obj
    return (version, tuple(internal), gauss)


def _first_difference(a: dict, b: dict) -> str:
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            return f"{k}: {a.get(k)!r} then, {b.get(k)!r} now"
    return "unknown difference"


__all__ = ["CHECKPOINT_FORMAT", "Checkpointer", "jsonable", "latest_checkpoint"]
