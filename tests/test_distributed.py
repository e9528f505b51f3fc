"""Data-parallel runs (torchrun, 2 CPU processes over gloo) equal one process; FSDP updates equal unsharded ones.

Each multi-process case launches ``python -m torch.distributed.run --nproc_per_node 2`` on a free port
(standalone c10d rendezvous on localhost), with one torch thread per process; the one-process reference
runs in this process through the library API with the same arguments.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WEIGHT_RTOL = 1e-5
METRIC_TOL = 1e-6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], nproc: int = 2, timeout: int = 240) -> subprocess.CompletedProcess:
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "R2F_NO_PROGRESS": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--max-restarts=0",
           "-m", "r2f", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _close(a, b, tol: float, path: str = "") -> list[str]:
    """Paths where two JSON-like values differ by more than ``tol`` (numbers) or at all (other values)."""
    if isinstance(a, dict) and isinstance(b, dict):
        bad = [f"{path}: keys {sorted(set(a) ^ set(b))}"] if set(a) != set(b) else []
        for k in sorted(set(a) & set(b)):
            bad += _close(a[k], b[k], tol, f"{path}.{k}")
        return bad
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: lengths {len(a)} != {len(b)}"]
        return [e for i, (x, y) in enumerate(zip(a, b)) for e in _close(x, y, tol, f"{path}[{i}]")]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return [] if abs(a - b) <= tol * max(1.0, abs(b)) else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


@pytest.mark.parametrize("method,extra,options", [
    ("r2f", {"decoder": "sigma", "views": 2}, {}),  # probe sketches all-reduced
    # each view normalised as the global batch's view: its sketches summed over the ranks before their norm
    ("r2f", {"decoder": "sigma", "views": 2}, {"aggregate": "balanced"}),
    pytest.param("exact", {"views": 2}, {"aggregate": "balanced"}, marks=pytest.mark.slow),  # the same, exact G
    ("npo", {}, {})])  # full gradients all-reduced, AdamW
def test_unlearn_two_processes_equals_one(method, extra, options, world_dir, tiny_models, tmp_path):
    from r2f.methods import unlearn
    from r2f.threads import torch_threads

    # batch 5 over 2 ranks: uneven slices (2 + 3 items), so the global-count weighting matters
    common = dict(method=method, steps=2, batch_size=5, seed=0, **extra)
    with torch_threads(1):
        one = unlearn(str(tiny_models["full"]), world_dir / "forget10.jsonl", world_dir / "retain90.jsonl",
                      out=tmp_path / "one", **common, **options)
    flags = [x for k, v in extra.items() for x in (f"--{k}", str(v))]
    flags += [x for k, v in options.items() for x in ("-o", f"{k}={v}")]
    _torchrun(["unlearn", "--model", str(tiny_models["full"]), "--forget", str(world_dir / "forget10.jsonl"),
               "--retain", str(world_dir / "retain90.jsonl"), "--method", method, *flags,
               "--steps", "2", "--batch-size", "5", "--seed", "0", "--out", str(tmp_path / "two")])
    two = tmp_path / "two"
    w1, w2 = _weights(one), _weights(two)
    src = _weights(tiny_models["full"])
    assert set(w1) == set(w2)
    moved = 0
    for k in w1:
        rel = float((w2[k].double() - w1[k].double()).norm() / w1[k].double().norm().clamp_min(1e-30))
        assert rel <= WEIGHT_RTOL, f"{k}: relative difference {rel:.3g}"
        moved += int(not torch.equal(w1[k], src[k]))
    assert moved > 0  # the run really changed weights
    m1 = json.loads((one / "manifest.json").read_text())
    m2 = json.loads((two / "manifest.json").read_text())
    assert m1["distributed"] == {"world_size": 1}
    assert m2["distributed"]["world_size"] == 2
    assert m1["run_key"] == m2["run_key"]  # a 2-process run may resume a 1-process one and vice versa
    strip = lambda log: [{k: v for k, v in e.items() if k != "wall_s"} for e in log]
    assert not _close(strip(m1["log"]), strip(m2["log"]), 1e-5)
    assert not _close(m1["summary"], m2["summary"], 1e-5)
    assert not (two / "checkpoints").exists()


def _interrupted_run(stop_at: int, out: Path, model, forget, retain, **kw) -> None:
    """A one-process run that crashes at step index ``stop_at`` (its checkpoints stay, as after a kill)."""
    from r2f.methods import METHODS, unlearn

    cls = METHODS[kw["method"]]
    hook = "update" if hasattr(cls, "update") else "loss"
    original = getattr(cls, hook)

    def crash(self, model, forget, retain, ctx):
        if ctx.step == stop_at:
            raise KeyboardInterrupt("simulated crash")
        return original(self, model, forget, retain, ctx)

    setattr(cls, hook, crash)
    try:
        with pytest.raises(KeyboardInterrupt):
            unlearn(model, forget, retain, out=out, **kw)
    finally:
        setattr(cls, hook, original)


FSDP_CASES = [("r2f", {"decoder": "sigma", "views": 2}),  # sharded directions, keep-whitening, guard, line search
              ("npo", {})]  # FSDP's reduce-scattered gradients, AdamW on sharded parameters


@pytest.mark.parametrize("method,extra", FSDP_CASES + [
    pytest.param("exact", {"views": 2}, marks=pytest.mark.slow),  # exact gradients through FSDP's backward
    pytest.param("r2f", {"decoder": "sigma", "views": 2, "precondition": "adam"},  # Adam moments on row shards
                 marks=pytest.mark.slow),
    pytest.param("lora", {}, marks=pytest.mark.slow),  # a PEFT adapter on the sharded target, merged at the end
    pytest.param("grad_diff", {}, marks=pytest.mark.slow),
    pytest.param("wga", {}, marks=pytest.mark.slow)])
def test_unlearn_fsdp_resume_equals_one_process(method, extra, world_dir, tiny_models, tmp_path):
    """``--fsdp --resume`` under torchrun continues a one-process run's checkpoint on the sharded target (model,
    optimizer and method state split by rows), writes gathered checkpoints, and ends where one process ends."""
    from safetensors.torch import load_file

    from r2f.methods import unlearn
    from r2f.threads import torch_threads

    model, forget, retain = str(tiny_models["full"]), world_dir / "forget10.jsonl", world_dir / "retain90.jsonl"
    common = dict(method=method, steps=3, batch_size=5, seed=0, save_every=1, **extra)
    with torch_threads(1):
        one = unlearn(model, forget, retain, out=tmp_path / "one", **common)
        _interrupted_run(1, tmp_path / "two", model, forget, retain, **common)
    assert (tmp_path / "two" / "checkpoints" / "step-00000001").is_dir()
    flags = [x for k, v in extra.items() for x in ((f"--{k}", str(v)) if k in ("decoder", "views") else ("-o", f"{k}={v}"))]
    _torchrun(["unlearn", "--model", model, "--forget", str(forget), "--retain", str(retain), "--method", method,
               *flags, "--steps", "3", "--batch-size", "5", "--seed", "0", "--save-every", "1", "--fsdp", "--resume",
               "--out", str(tmp_path / "two")])
    two = tmp_path / "two"
    w1, w2, src = _weights(one), _weights(two), _weights(tiny_models["full"])
    assert set(w1) == set(w2)
    for k in w1:
        rel = float((w2[k].double() - w1[k].double()).norm() / w1[k].double().norm().clamp_min(1e-30))
        assert rel <= WEIGHT_RTOL, f"{k}: relative difference {rel:.3g}"
    assert any(not torch.equal(w1[k], src[k]) for k in w1)  # the run really changed weights
    m1 = json.loads((one / "manifest.json").read_text())
    m2 = json.loads((two / "manifest.json").read_text())
    assert m2["distributed"] == {"world_size": 2, "backend": "gloo", "fsdp": True}
    assert m2["resumed_from_step"] == 1 and m2["steps"]["done"] == 3
    assert m1["changed_parameters"] == m2["changed_parameters"]
    strip = lambda log: [{k: v for k, v in e.items() if k != "wall_s"} for e in log]
    assert not _close(strip(m1["log"]), strip(m2["log"]), 1e-5)
    # the last checkpoint was written under FSDP (gathered to rank 0): one-process format, the final weights
    ckpt = load_file(str(two / "checkpoints" / "step-00000003" / "model.safetensors"))
    for k, v in load_file(str(one / "checkpoints" / "step-00000003" / "model.safetensors")).items():
        assert torch.allclose(ckpt[k], v, rtol=1e-4, atol=1e-6), k
    state_one = load_file(str(one / "checkpoints" / "step-00000003" / "state.safetensors"))
    state_two = load_file(str(two / "checkpoints" / "step-00000003" / "state.safetensors"))
    assert set(state_one) == set(state_two)
    for k, v in state_one.items():  # optimizer / Adam moments, gathered from the shards
        if not k.startswith("rng."):
            rel = float((state_two[k].double() - v.double()).norm() / v.double().norm().clamp_min(1e-30))
            assert rel <= 1e-4, f"{k}: relative difference {rel:.3g}"


def test_fsdp_refuses_a_method_that_copies_the_model(tmp_path):
    """RMU deep-copies the target (its frozen model), which FSDP forbids: exit 2 naming --fsdp, before any work
    (also in one process, so the command line fails the same way on a laptop as under torchrun)."""
    from r2f.errors import R2FInputError
    from r2f.methods import unlearn

    with pytest.raises(R2FInputError, match="FSDP") as err:
        unlearn(str(tmp_path / "no-model"), tmp_path / "f.jsonl", tmp_path / "r.jsonl", method="rmu", fsdp=True,
                out=tmp_path / "out")
    assert err.value.source == "--fsdp" and not (tmp_path / "out").exists()


def test_eval_two_processes_equals_one(world_dir, tiny_models, tmp_path):
    from r2f.eval import evaluate

    kw = dict(max_items=5, batch_size=2, max_new_tokens=8)
    one = evaluate(str(tiny_models["full"]), world_dir, retain_model=str(tiny_models["retain"]), num_threads=1, **kw)
    out = tmp_path / "eval.json"
    _torchrun(["eval", "--model", str(tiny_models["full"]), "--data", str(world_dir), "--retain-model",
               str(tiny_models["retain"]), "--out", str(out), "--max-items", "5", "--batch-size", "2",
               "--max-new-tokens", "8", "--threads", "1"])
    two = json.loads(out.read_text())
    assert two["meta"]["distributed"]["world_size"] == 2 and one["meta"]["distributed"] == {"world_size": 1}
    assert two["meta"].pop("threads")["threads"] == 1  # recorded by r2f.evaluate (the command), not the suite
    for d in (one, two):
        d["meta"].pop("wall_s")
        d["meta"].pop("distributed")
    one = json.loads(json.dumps(one))  # the same JSON round trip as the written file
    bad = _close(one, two, METRIC_TOL)
    assert not bad, bad[:10]


def test_eval_realfacts_two_processes_equals_one(tiny_models, tmp_path):
    """r2f eval --bench realfacts under torchrun splits its scoring and generation over the ranks (the process group
    read once at evaluate_realfacts' entry) and gives the one-process numbers."""
    from r2f.eval.realfacts import evaluate_realfacts

    one = evaluate_realfacts(str(tiny_models["full"]), max_items=3, batch_size=2, max_new_tokens=4, num_threads=1)
    out = tmp_path / "eval.json"
    _torchrun(["eval", "--bench", "realfacts", "--model", str(tiny_models["full"]), "--out", str(out),
               "--max-items", "3", "--batch-size", "2", "--max-new-tokens", "4", "--threads", "1"])
    two = json.loads(out.read_text())
    assert two["meta"].pop("threads")["threads"] == 1  # recorded by r2f.evaluate (the command)
    for d in (one, two):
        d["meta"].pop("wall_s")
    # one process scores each prompt's candidates in one pass (candidate_nll), the ranks pair by pair: the same
    # values up to float rounding (test_realfacts: 1e-5)
    bad = _close(json.loads(json.dumps(one)), two, 1e-5)
    assert not bad, bad[:10]


# ---------------------------------------------------------------------------------------------- FSDP


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).float()


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 64, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[3, 7:] = 0
    labels = ids.clone()
    labels[:, :4] = -100
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _forget_loss(model, b, dp=None):
    """−token-mean NLL; with ``dp`` (a DataParallel) the mean divides by the global token count."""
    from r2f.distributed import ONE_PROCESS
    from r2f.methods.losses import sequence_nll, token_mean_nll

    return -token_mean_nll(*sequence_nll(model, b), dp or ONE_PROCESS)


def _fsdp_worker(rank: int, world: int, port: int, queue) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), R2F_NO_PROGRESS="1")
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from r2f import distributed as dist
        from r2f import fsdp
        from r2f.decoders import decoded_gradients
        from r2f.gradients import ProbeConfig

        probe, b, results = ProbeConfig(rank=4), _batch(), {}
        # reference: one process, the whole batch, unsharded weights
        ref = _tiny_llama()
        before = {n: p.detach().clone() for n, p in ref.named_parameters()}
        fsdp.apply_decoded_update(ref, decoded_gradients(ref, [b], "sigma", probe, _forget_loss), 0.05)
        # FSDP: each rank holds half of every weight's rows and sees half of the batch
        model = fsdp.shard_model(_tiny_llama())
        assert any(fsdp.is_sharded(p) for p in model.parameters())
        lo, hi = dist.shard_bounds(b["input_ids"].shape[0])
        dp = dist.DataParallel.current()
        assert dp.active
        dirs = decoded_gradients(model, [{k: v[lo:hi] for k, v in b.items()}], "sigma", probe,
                                 functools.partial(_forget_loss, dp=dp), reduce=True)
        fsdp.apply_decoded_update(model, dirs, 0.05)
        refp = dict(ref.named_parameters())
        for n, p in model.named_parameters():
            full = (p.full_tensor() if fsdp.is_sharded(p) else p).detach()
            r = refp[n].detach()
            results[n] = (float((full - r).norm() / r.norm().clamp_min(1e-30)), not torch.equal(r, before[n]))
        queue.put((rank, results))
    except BaseException as exc:  # report instead of hanging the parent
        queue.put((rank, repr(exc)))
        raise
    finally:
        torch.distributed.destroy_process_group()


def test_fsdp_decoded_update_equals_unsharded():
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_fsdp_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0], results
    for rank, res in results:
        assert isinstance(res, dict), f"rank {rank}: {res}"
        assert sum(changed for _, changed in res.values()) >= 14  # every probed projection moved
        for name, (rel, _) in res.items():
            assert rel <= WEIGHT_RTOL, f"rank {rank} {name}: relative difference {rel:.3g}"


@pytest.mark.slow  # ~20 s; the unlearn/eval cases above cover the same machinery in the default run
def test_train_decoder_two_processes_equals_one(world_dir, tiny_models, tmp_path):
    from safetensors.torch import load_file

    from r2f.decoders.train import train_decoder
    from r2f.threads import torch_threads

    with torch_threads(1):
        train_decoder(str(tiny_models["proxy"]), world_dir, rank=4, out=tmp_path / "one.safetensors", steps=30,
                      probe_seeds=1)
    _torchrun(["train-decoder", "--proxy", str(tiny_models["proxy"]), "--data", str(world_dir), "--rank", "4",
               "--steps", "30", "--probe-seeds", "1", "--out", str(tmp_path / "two.safetensors")])
    a, b = load_file(str(tmp_path / "one.safetensors")), load_file(str(tmp_path / "two.safetensors"))
    assert set(a) == set(b)
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=WEIGHT_RTOL, atol=1e-7), k
