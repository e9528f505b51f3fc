"""RMU (r2f.methods.rmu): a few steps on the tiny model steer the chosen layer's forget activations to RMU's random
vector and leave its retain activations where the frozen model has them (measured here with a plain forward hook)."""

from __future__ import annotations

import json

import pytest
import torch

from r2f.errors import R2FInputError

from test_methods import tiny_setup  # noqa: F401  (the random tiny Llama and its data files)


def layer_output(model, layer: int, path) -> tuple[torch.Tensor, torch.Tensor]:
    """(output of decoder layer ``layer`` on every item's question+answer, answer-position mask), by a hook."""
    from transformers import AutoTokenizer

    from r2f.data.templates import encode_qa, template_for

    tok = AutoTokenizer.from_pretrained(model.name_or_path)
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    enc = encode_qa(tok, [r["question"] for r in recs], [r["answer"] for r in recs], template_for(tok), 512)
    seen = []
    handle = model.model.layers[layer].register_forward_hook(
        lambda _m, _i, out: seen.append(out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    handle.remove()
    return seen[0], enc["labels"] != -100


def mean_sq(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over answer positions of mean_d (a − b)²."""
    return float(((a - b) ** 2).mean(-1)[mask].mean())


def test_rmu_steers_forget_activations_to_its_vector_and_keeps_retain_ones(tiny_setup, tmp_path):  # noqa: F811
    """The forget and retain items of this random model look alike to it (the same sentence, another name), so
    ascent on one moves the other; the retain term must hold retain activations back: measured against the same
    run without it (α = 0)."""
    from transformers import AutoModelForCausalLM

    from r2f.methods import unlearn
    from r2f.methods.rmu import control_vector

    before = AutoModelForCausalLM.from_pretrained(tiny_setup["model"]).eval()
    f0, fmask = layer_output(before, 1, tiny_setup["forget"])
    r0, rmask = layer_output(before, 1, tiny_setup["retain"])
    u = control_vector(f0.shape[-1], 2.0, seed=0).expand_as(f0)
    moved = {}
    for alpha in (1.0, 0.0):
        out = unlearn(str(tiny_setup["model"]), tiny_setup["forget"], tiny_setup["retain"], method="rmu",
                      out=tmp_path / f"a{alpha}", steps=30, batch_size=16, seed=0, module_regex=r"model\.layers\.1",
                      alpha=alpha)
        after = AutoModelForCausalLM.from_pretrained(out).eval()
        moved[alpha] = (mean_sq(layer_output(after, 1, tiny_setup["forget"])[0], u, fmask),
                        mean_sq(layer_output(after, 1, tiny_setup["retain"])[0], r0, rmask))
        if alpha == 1.0:
            man = json.loads((out / "manifest.json").read_text())
    to_u_before = mean_sq(f0, u, fmask)
    assert moved[1.0][0] < 0.25 * to_u_before, (to_u_before, moved)  # forget activations went most of the way to u
    assert moved[1.0][1] < 0.25 * moved[0.0][1], moved  # retain activations held close to the frozen model's
    assert man["method_info"]["module"] == "model.layers.1"
    assert all({"rmu_forget", "rmu_retain"} <= set(e) for e in man["log"])


def test_rmu_defaults_are_openunlearnings_and_a_missing_layer_is_named(tiny_setup, tmp_path):  # noqa: F811
    from r2f.methods import get_method, unlearn

    opts = get_method("rmu").options  # configs/trainer/RMU.yaml
    assert (opts["module_regex"], opts["steering_coeff"], opts["gamma"], opts["alpha"],
            opts["trainable_params_regex"]) == (r"model\.layers\.7", 2.0, 1.0, 1.0, ".*")
    with pytest.raises(R2FInputError, match="model.layers.0") as exc:  # the tiny model has layers 0 and 1 only
        unlearn(str(tiny_setup["model"]), tiny_setup["forget"], tiny_setup["retain"], method="rmu",
                out=tmp_path / "o", steps=1)
    assert exc.value.source == "module_regex"
