"""The demo's settings and its rows, without torch: ``r2f demo --help`` reads its options' defaults and help from
:class:`DemoConfig` at start-up (the CLI imports no torch), as ``r2f eval`` reads :class:`r2f.eval_spec.EvalSpec`.

:mod:`r2f.demo` runs them; it re-exports every name here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, Mapping

from r2f.data.loader import RETAIN_OF
from r2f.errors import R2FInputError
from r2f.eval_spec import DEFAULT_FORGET, Bench, EvalSpec, flag
from r2f.typed import TypedRecord, check_choice, check_value, option

#: The decoder ``prepare`` trains on the proxy for a demo row, by its access mode (r2f.decoders.learned.ACCESS_MODES):
#: ``batch`` is :attr:`Prepared.decoder` (the r2f row), ``lora`` :attr:`Prepared.decoder_lora` (the black-box case).
ProxyDecoder = Literal["batch", "lora"]


@dataclass(frozen=True)
class DemoRow:
    """One row of the demo table: the engine method, its options, and which proxy-trained decoder it runs with."""

    method: str
    options: Mapping[str, Any] = field(default_factory=dict)
    #: the demo's own decoder, trained on the proxy, that the row decodes with (passed as its file in ``decoder``);
    #: None: the options name the decoder (a built-in one), or the method uses none
    proxy_decoder: ProxyDecoder | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))  # a shared table: read-only


#: report name -> its row. All run at the same step budget. The R2F rows run the method's own defaults (update
#: rule, step size, stop rule); only the decoder differs between them, and r2f_lora declares the black-box case
#: (``access=lora``: the target exposes probe gradients only, so the rule reads no statistic of it either).
DEMO_METHODS: Mapping[str, DemoRow] = MappingProxyType({
    "r2f": DemoRow("r2f", proxy_decoder="batch"),
    "r2f_lora": DemoRow("r2f", {"access": "lora"}, proxy_decoder="lora"),  # the black-box case: ∇A, ∇B only
    "r2f_sketch": DemoRow("r2f", {"decoder": "sketch"}),
    "r2f_exact": DemoRow("exact"),
    "lora": DemoRow("lora"),
    # LoRA-only in R2F's form: the same objective (NPO), a retain term and the same 4 question views, so that the
    # comparison with R2F isolates the gradient source (a trained adapter vs decoded full-weight gradients)
    "lora_npo": DemoRow("lora", {"objective": "npo", "alpha": 1.0, "views": 4}),
    "grad_ascent": DemoRow("grad_ascent"),
    "grad_diff": DemoRow("grad_diff"),
    "npo": DemoRow("npo"),
    "simnpo": DemoRow("simnpo"),
    # OpenUnlearning's RMU steers layer 7 of 32; the ladder targets have 2 (tiny) to 4 (small) layers, and their
    # layer 1 sits at about the same relative depth in small (every other option: OpenUnlearning's defaults)
    "rmu": DemoRow("rmu", {"module_regex": r"model\.layers\.1"}),
    "wga": DemoRow("wga"),
})

#: The targets of each bench: the world's ladder (``tiny`` with --quick) and SmolLM2 fine-tuned on the world;
#: realfacts unlearns from SmolLM2 as shipped.
BENCH_TARGETS: Mapping[str, tuple[str, ...]] = MappingProxyType({"world": ("small", "smollm2", "tiny"),
                                                                 "realfacts": ("smollm2-base",)})
#: The proxy ladder each target's decoders are trained on (``r2f.models.ladder``): the proxy alone for the world's
#: own ladder targets (its decoder already beats the closed forms there, and the demo has 10 minutes cold), the
#: proxy plus its wide and SmolLM2-tokenizer members for the SmolLM2 targets, whose width and tokenizer the proxy
#: alone lacks (docs/decoder.md §3.2; about 7 minutes more, once per world seed).
DECODER_LADDER: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "small": ("proxy",), "tiny": ("proxy",), **dict.fromkeys(("smollm2", "smollm2-base"),
                                                             ("proxy", "proxy_wide", "proxy_smoltok"))})
#: The realfacts demo's step budget: two passes over the 37 forget facts at batch 8 (the world demo's 30 steps on
#: a 135M target do not fit its 20-minute budget on 2 cores), and what its evaluation scores (no greedy
#: generation: ``*_gen_match`` is ``r2f eval --bench realfacts``'s).
REALFACTS_STEPS = 10
REALFACTS_METRICS = ("forget_known", "neighbour_known", "general_known", "heldout_ppl",
                     "mia_loss_forget_vs_neighbour")

#: A demo target: the world's ladder (``tiny`` is the quick demo's), SmolLM2 fine-tuned on the world, or SmolLM2 as
#: shipped (``smollm2-base``, the realfacts bench's only target).
Target = Literal["small", "smollm2", "tiny", "smollm2-base"]
#: The forget splits of each bench (the first is the default): the world's three, realfacts' one.
BENCH_FORGET: Mapping[str, tuple[str, ...]] = MappingProxyType({"world": (DEFAULT_FORGET, *sorted(
    s for s in RETAIN_OF if s != DEFAULT_FORGET)), "realfacts": ("forget",)})
#: The settings with no ``r2f demo`` / ``r2f bench`` flag (Python only): an error names them as they are spelt here.
DEMO_PYTHON_ONLY = ("realfacts_data", "forget", "rank", "views", "eval_retain_items", "bench_chosen")


def demo_source(name: str) -> str:
    """What an error about a demo setting names: its CLI flag (``--target``), or its Python name."""
    return name if name in DEMO_PYTHON_ONLY else flag(name)


@dataclass(frozen=True)
class DemoConfig(TypedRecord):
    """The demo's settings, checked at construction (an error names the ``r2f demo`` flag) and frozen; ``None``
    settings resolve to the bench's default in ``__post_init__`` (as :class:`r2f.eval_spec.EvalSpec` resolves its
    own), so every reader sees a complete record."""

    quick: bool = option(False, "Tiny target and a shorter budget (about 2 minutes): the target small runs as "
                                "tiny, 20 steps.")
    target: Target = option("small", "Target model: small, smollm2 (SmolLM2-135M fine-tuned on the world first; "
                                     "about 75 minutes cold on 2 CPU cores), tiny (--quick's), or smollm2-base "
                                     "(SmolLM2 as shipped) with --bench realfacts.")
    bench: Bench = option("world", "What is forgotten, and how it is scored: the world's forget split or the "
                                   "realfacts benchmark (--target smollm2-base).")
    realfacts_data: str | None = option(None, "A realfacts directory (default: the shipped benchmark).")
    forget: str | None = option(None, "The forget split (default: the world's forget10; realfacts has one, forget).")
    seed: int = option(0, "Seed for the world, the models and every method.")
    rank: int = option(16, "Probe rank of the decoders trained on the proxy.")
    views: int = option(4, "Question views per forget item.")
    steps: int | None = option(None, "Unlearning step budget, the same for every method (default: 30; 20 with "
                                     f"--quick; {REALFACTS_STEPS} on realfacts).")
    eval_retain_items: int | None = option(48, "Retain items scored per evaluation (None: all).")
    methods: tuple[str, ...] = option(tuple(DEMO_METHODS), "The demo rows to run (DEMO_METHODS' names).")
    bench_chosen: bool = option(True, "Baselines run the shipped r2f bench choice (r2f bench itself turns it off).")
    jobs: int | None = option(None, "Rows run side by side (None: the free cores / threads per row; "
                                    "r2f.parallel).")

    def __post_init__(self) -> None:
        if isinstance(self.methods, list):  # a list given for the rows is frozen as a tuple
            object.__setattr__(self, "methods", tuple(self.methods))
        if isinstance(self.realfacts_data, os.PathLike):  # a directory given as a path is kept as its name
            object.__setattr__(self, "realfacts_data", os.fspath(self.realfacts_data))
        hints = self.types()
        for f in self.fields():
            check_value(f.name, getattr(self, f.name), hints[f.name], source=demo_source(f.name))
        if self.target not in BENCH_TARGETS[self.bench]:
            raise R2FInputError(
                f"--bench realfacts unlearns from SmolLM2 as shipped: use smollm2-base, not {self.target}"
                if self.bench == "realfacts" else
                f"{self.target} (SmolLM2 as shipped) knows no world to forget: add --bench realfacts",
                source="--target")
        if self.quick and self.bench == "realfacts":
            raise R2FInputError("the quick demo is the world's on tiny; drop it with --bench realfacts",
                                source="--quick")
        for name in self.methods:
            check_choice("demo method", name, tuple(DEMO_METHODS), source=demo_source("methods"))
        if self.jobs is not None and self.jobs < 1:
            raise R2FInputError(f"must be at least 1, got {self.jobs}", source=demo_source("jobs"))
        if self.forget is not None:
            check_choice(f"{self.bench} forget split", self.forget, BENCH_FORGET[self.bench],
                         source=demo_source("forget"))
        # the resolved values (frozen: set once, here, before any reader sees the record)
        object.__setattr__(self, "forget", self.forget or BENCH_FORGET[self.bench][0])
        if self.quick and self.target == "small":  # the quick demo's stand-in for small
            object.__setattr__(self, "target", "tiny")
        if self.steps is None:
            object.__setattr__(self, "steps", REALFACTS_STEPS if self.bench == "realfacts" else
                               20 if self.quick else 30)

    @property
    def decoder_budget(self) -> dict:
        """Decoder training size: the quick demo trains on fewer proxy pairs (one probe draw)."""
        return {"max_items": 48, "probe_seeds": 1} if self.quick else {}

    @property
    def eval_spec(self) -> EvalSpec:
        """The evaluation settings every model of a run is scored with (``r2f.eval.evaluate(..., spec=)``; on
        realfacts ``r2f.eval.evaluate_realfacts``: its :data:`REALFACTS_METRICS`, every fact)."""
        if self.bench == "realfacts":
            return EvalSpec(bench="realfacts", metrics=REALFACTS_METRICS, seed=self.seed)
        return EvalSpec(forget=self.forget, max_items=self.eval_retain_items, seed=self.seed)
