"""The R2F update: decoded LoRA-probe gradients → full-weight step, with a retain guard and a line search.

Per step (our design; the paper only fixes "a step along the decoded gradient of an unlearning loss"). Every
value is a default that needs no tuning per target (docs/methods.md has the reasoning and the measurements):

1. the forget batch's K question views (original + paraphrases, each with the item's answer);
2. decoded gradient D_f of the forget objective (NPO, mean over views), per probed Linear, from LoRA-probe
   gradients taken *at the current weights* (``r2f.decoders.decoded_gradients``); the objective reads the
   answers' fact tokens only (``answer_tokens="fact"``: not the format tokens found in at least 10 % of the run's
   answers, ``r2f.methods.answer_tokens``);
3. retain guard (``guard="project"``): decoded gradient D_r of the retain NLL on the step's retain batch —
   from the retain file, else from the target's own answers to the forget questions asked about made-up people
   (else, when no forget item names a subject, to generic questions; ``r2f.methods.guard``);
   per module, when ⟨D_f, D_r⟩ < 0 the conflicting component is removed (PCGrad-style), then
   λ·‖D_f‖/‖D_r‖·D_r is added (``retain_weight`` λ = 3);
4. keep-whitening (``precondition="sigma"``, what ``"auto"`` picks unless the run may read probe gradients only):
   the forget and retain directions are taken in the geometry of the input statistic Σ_keep of the retain (or
   self-answered) text, ΔW ∝ D·(Σ_keep + δI)⁻¹, so that the step moves the layers' outputs least on the inputs
   the model must keep (``"adam"``, auto's choice in access mode lora: Adam's moments instead);
5. step size (``step_rule="search"``): a backtracking line search on the relative step η of the probed
   weights: the largest η (from the last accepted one) whose step raises the forget NLL while the guard NLL
   rises by at most ``guard_tol`` nats/token this step and ``guard_budget`` over the run (0.08; 0.04 on forget
   documents);
6. stop rule (``stop="shuffled"``): once the forget NLL reaches the initial model's NLL of shuffled
   (wrong, same-format) answers, stop if the collateral watch — the target's NLL of its own answers to r2f's
   generic questions, text no guard step looks at — has risen by more than ``guard_budget`` since the start; while
   it has not, go on (``past_threshold="while_clean"``: a model that forgets without visible collateral is taken
   deeper). Also stop when no step has fitted the guard for ``patience`` steps in a row (a step without one keeps
   the weights and moves on to the next batch), after one more try with balanced views (``fallback``); with
   forget items of several ledger requests (``request``), each request must reach its own threshold.

``exact`` is the same rule with exact gradients (the perfect-decoder oracle).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from r2f import gradients
from r2f.data.batching import is_documents, shuffled_answer_pairs, shuffled_unit_pairs
from r2f.data.loader import load_items
from r2f.data.schema import QAItem
from r2f.data.templates import IGNORE_INDEX
from r2f.decoders import DEFAULT_DECODER, Decoder, decoded_gradients, resolve_decoder
from r2f.decoders.learned import ACCESS_MODES
from r2f.errors import R2FInputError
# whole-module sums/checks (and the input-side product) also on FSDP row shards
from r2f.fsdp import all_finite, decoder_layers, input_side_matmul, scalar, shard_like
from r2f.methods.answer_tokens import fact_labels, format_token_ids
from r2f.methods.baselines import register_reference
from r2f.methods.config import MethodConfig, option
from r2f.methods.engine import Engine, QABatch, StepContext, UpdateMethod, register
from r2f.methods.guard import (GENERATED_SOURCE, RENAMED_SOURCE, DriftReference, RankGuard, self_answered_items,
                               self_made_retain)
from r2f.methods.losses import npo_loss, seq_mean, sequence_nll, token_mean_nll
from r2f.methods.reference import ReferenceNLL, ReferenceTopK, coarse_kl
from r2f.methods.rmu import activation_distance, control_vector, layer_output
from r2f.methods.wga import wga_loss
from r2f.models.answer_nll import answer_token_logits, answer_token_nll_flat, answer_token_scores, row_sums

#: Largest relative step the line search tries (a 5 % change of the probed weights in one step).
MAX_ETA = 0.05
#: ``guard_budget``'s default on QA forget data (r2f bench's choice on tune worlds 10 and 11).
GUARD_BUDGET = 0.08
#: ``guard_budget``'s default on forget documents: a unit's NLL is a mean over all its tokens, most of them text the
#: model predicts almost surely, so the same mean rise is a larger change on the tokens that carry facts (chosen on
#: world 0 of 0.08 and 0.04; validated on fresh worlds 32 and 33: BENCHMARKS.md, "Documents as forget data").
DOCUMENT_GUARD_BUDGET = 0.04
#: ``guard_measure=rank``: ``guard_budget``'s default, the share of the guard items whose true answer may stop ranking
#: first over the run (``guard_tol``, 0.02, is the same share in one step).
RANK_BUDGET = 0.05


@dataclass(frozen=True)
class R2FConfig(MethodConfig):
    """R2F's options (``-o key=value``; ``r2f methods r2f``): the defaults need no tuning per target
    (docs/methods.md has the reasoning and the measurements)."""

    decoder: str | Decoder | None = option(None, "decoder name or file (learned by default)")
    access: Literal["lora", "stats", "batch"] | None = option(
        None, "what the decoder may read: lora | stats | batch (default: the decoder's mode)")
    objective: Literal["ga", "npo", "wga", "rmu"] = option(
        "npo", "ga | npo | wga (WGA's token weights) | rmu (RMU's activation steering)")
    beta: float | None = option(None, "NPO β (default 0.1) or WGA β (default 1)")
    steer_layer: int | None = option(None, "rmu: decoder layer whose output is steered (default: depth // 4)")
    steer_scale: float = option(1.0, "rmu: norm of the random target ÷ the layer's mean forget-answer activation norm")
    views: int = option(4, "K question views per forget item")
    answer_tokens: Literal["fact", "all"] = option(
        "fact", "answer tokens of the forget loss: fact (not the format tokens: those in at least format_share of "
                "the run's answers, forget and guard items together; r2f.methods.answer_tokens) | all")
    format_share: float = option(0.1, "answer_tokens=fact: a token in at least this share of the answers is format")
    document_tokens: Literal["all", "fact"] = option(
        "all", "forget documents: the tokens of each unit the forget loss reads: all | fact (answer_tokens=fact's rule "
               "over the units and the guard's items: not the tokens found in at least format_share of them)")
    rank: int | None = option(None, "probe r_B (default: the decoder's, else 16)")
    rank_a: int | None = option(None, "probe r_A (default: the decoder's, else 2·rank)")
    probe_seed: int = option(0, "seed of the probe's random factors")
    target_modules: str | None = option(None, "regex of probed Linear names (default: attention + MLP projections)")
    aggregate: Literal["mean", "balanced", "momentum"] = option(
        "mean", "view aggregation: mean | balanced (each view's gradient over its own norm, then the mean: a view the "
                "model answers badly no longer sets the direction alone) | momentum")
    guard: Literal["project", "none"] = option("project", "retain guard: project | none")
    retain_data: Literal["auto", "file", "renamed", "generated"] = option(
        "auto", "guard data: auto (the file, else renamed, else generated) | file | renamed (the forget questions "
                "about made-up people, answered by the target) | generated (its answers to generic questions)")
    retain_weight: float = option(3.0, "λ of the added retain-descent term (relative to ‖D_f‖)")
    retain_loss: Literal["nll", "kl"] = option(
        "nll", "the retain direction's loss: nll (the retain answers' NLL) | kl (KL of the starting model's next-token "
               "distributions on the retain answers to the current ones: it pulls back what moved, and does not fit "
               "the answers' shared wording)")
    step_rule: Literal["search", "schedule"] = option(
        "search", "search (guarded line search, η adapts) | schedule (cosine decay from η)")
    guard_measure: Literal["nll", "kl", "rank"] = option(
        "nll", "search: what the guard bounds on its items: nll (their answer NLL) | kl (KL of the starting model's "
               "next-token distributions to the current ones; on generated text it lies on nll's trade-off curve, "
               "docs/methods.md) | rank (share of items whose true answer no longer ranks first among wrong "
               "candidates — their perturbed answers, else other items' answers — with the collateral watch's NLL "
               "bounded by 0.08 over the run in the same search)")
    guard_tol: float = option(0.02, "search: largest rise of the guard measure one step may cause (nats/token; rank: "
                                    "share of the items)")
    guard_budget: float | None = option(
        None, "search: largest rise of the guard measure over the whole run (default 0.08, r2f bench's choice; 0.04 "
              "when the forget data are documents, whose units' mean NLL dilutes a change over their every token; "
              "rank: 0.05)")
    backtracks: int = option(4, "search: halvings of η tried before the step is given up (as many doublings too)")
    patience: int | None = option(None, "search: steps in a row without an acceptable η before the run stops "
                                        "(default: one pass over the forget batches)")
    fallback: Literal["balanced", "none"] = option(
        "balanced", "search: when `patience` steps in a row found no η: go on with aggregate=balanced (once; the "
                    "run stops when those fail as long too) | none (stop)")
    guard_items: int = option(512, "guard items the line search scores (retain file, else self-answered; all of "
                                    "them up to this many)")
    retain_views: int = option(1, "question views of each retain item in the retain direction D_r")
    step_norm: Literal["module", "global"] = option("global", "module | global")
    precondition: Literal["auto", "sigma", "adam", "none"] = option(
        "auto", "auto (sigma, or adam when the run may read probe gradients only: access mode lora) | sigma (ΔW ∝ "
        "D·(Σ_keep + δI)⁻¹, Σ_keep the target's input statistic over the guard's retain text) | adam (per-coordinate "
        "Adam moments of the guarded direction) | none")
    min_step_ratio: float = option(0.1, "schedule: η_T / η of the cosine decay")
    stop: Literal["shuffled", "perturbed", "none"] = option("shuffled", "stop rule: shuffled | perturbed | none")
    stop_nll: float | None = option(None, "explicit stop threshold on the forget NLL (overrides every stop rule)")
    stop_window: int = option(1, "steps whose mean forget NLL is compared with the threshold")
    past_threshold: Literal["while_clean", "stop"] = option(
        "while_clean", "search: once the forget NLL reaches the stop threshold: while_clean (go on while the target's "
                       "NLL of its own answers to r2f's generic questions — the collateral watch — has risen by at most "
                       "guard_budget since the start; stop once it rises more) | stop (stop at the threshold)")
    stats: Literal["retain", "batch"] = option(
        "retain", "Σ statistics for decoders that use them: retain (generic text) | batch")
    stats_items: int = option(64, "retain items the Σ statistics are collected over")
    forgotten: str | None = option(
        None, "QA file of items earlier requests unlearned (r2f ledger passes it): kept forgotten (docs/methods.md)")
    hold: Literal["earlier", "run"] = option(
        "earlier", "items a step may not bring back (its part that would lower their NLL is removed): earlier "
                   "(`forgotten`'s only) | run (also this run's forget items: each step the batch of them whose "
                   "fact-token NLL rose least since the start)")
    sigma_damp: float = option(0.05, "precondition=sigma: δ ÷ the mean eigenvalue of Σ_keep")
    keep_text: Literal["guard+generated", "guard"] = option(
        "guard+generated", "precondition=sigma: Σ_keep's text: the guard's retain items and, when a retain file is "
        "given, the target's own answers to generic questions too | the guard's retain items only")

    def __post_init__(self) -> None:
        # checks a type cannot say; R2FInputError naming the option, as the type checks do
        for name in ("guard_tol", "guard_budget"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise R2FInputError("must be positive", source=name)
        if not 0 < self.format_share <= 1:
            raise R2FInputError("must be in (0, 1]", source="format_share")
        if self.patience is not None and self.patience < 1:
            raise R2FInputError("must be at least 1", source="patience")


@dataclass(frozen=True)
class ExactConfig(R2FConfig):
    decoder: str | Decoder | None = option("exact", "always the exact decoder (the perfect-decoder oracle)")


@register
class R2F(UpdateMethod):
    name = "r2f"
    needs_retain = False
    uses_decoder = True
    default_lr = 0.004  # η₀: the line search's first trial, a relative change ‖ΔW‖ = η₀·‖W‖ of the probed weights
    config_class = R2FConfig  # options, defaults and their checks (an unknown value is exit 2 naming it)
    config: R2FConfig
    # per forget item its request, and per request its stop threshold (set by setup; None: one threshold)
    groups: list[str] | None = None
    group_thresholds: dict[str, float] | None = None

    def setup(self, engine: Engine):
        self.decoder_obj = resolve_decoder(self.options["decoder"])
        self._check_access()
        model = engine.model
        self.probe = self._checked_probe(gradients, model)
        self.guard_source = self._retain_data(engine, model)
        self.retain_ref = self._retain_reference(engine, model) if self.config.retain_loss == "kl" else None
        self.format_ids = self._format_ids(engine)
        self.ref: ReferenceNLL | None = register_reference(
            engine, model, self.views, relabel=None if self.format_ids is None else self._fact_labels) \
            if self.config.objective == "npo" else None
        self.steer = self._steering(engine, model) if self.config.objective == "rmu" else None
        # Σ of the probed layers' inputs (or None): an object of its own name, not the ``stats`` option it follows
        self.sigma_stats = self._stats(engine, model, gradients)
        self.step_geometry = self._step_geometry()
        self.keep_info: dict[str, Any] | None = None  # Σ_keep's text and item count, set by _keep_root
        self._generated_items: list[QAItem] | None = None  # the target's answers to the generic questions, once
        self.keep_root = self._keep_root(engine, model) if self.step_geometry == "sigma" else None
        self.threshold = self._threshold(engine, model)
        # forget items of several requests (r2f ledger's renewal marks each with ``request``): each its own threshold
        self.groups, self.group_thresholds = self._request_groups(engine, model)
        self.window = max(1, int(self.config.stop_window))
        self.engine = engine
        # the guard's tolerance and budget are in the guard's unit; the collateral watch's budget in nats/token is
        # the NLL guard's (guard_budget, or its default) and stays at the default under a rank guard
        nll_budget = DOCUMENT_GUARD_BUDGET if is_documents(engine.forget) else GUARD_BUDGET
        ranked = self.config.guard_measure == "rank"
        chosen = None if self.config.guard_budget is None else float(self.config.guard_budget)
        self.guard_budget = chosen if chosen is not None else RANK_BUDGET if ranked else nll_budget
        self.watch_budget = nll_budget if ranked or chosen is None else chosen
        self.guard_tol = float(self.config.guard_tol)
        # the collateral watch (past_threshold=while_clean): the target's own answers to the generic questions and
        # their NLL at the start; None when there is no threshold, or the generic answers are the guard itself
        self.watch_items, self.watch_start = self._watch(engine, model)
        # line-search state (checkpointed): the guard items, their NLL at the start, the next first trial η
        # (the items themselves: ``guard_set``; the ``guard_items`` option is their number)
        self.guard_set = engine.retain_sample(int(self.config.guard_items))
        self.guard_measure = self.config.guard_measure
        self.drift: DriftReference | None = None
        if self.guard_measure == "kl" and self.guard_set:
            self.drift = DriftReference()
            self.drift.record(model, self._guard_batches())
        self.rank: RankGuard | None = None
        if self.guard_measure == "rank" and self.guard_set:
            from r2f.eval.realfacts import shares_prompts  # eval imports methods' modules: import late
            if not shares_prompts(model) or engine.dp.active:
                raise R2FInputError("guard_measure=rank needs a Hugging Face causal LM on one process",
                                    source="guard_measure")
            self.rank = RankGuard(self.guard_set, engine.tokenizer, engine.template)
        self.guard_start, self.guard_top1_start = self._guard_scores(model) if self.guard_set else (None, None)
        self.last_guard: float | None = self.guard_start
        # items earlier requests unlearned (r2f ledger): the step may not bring them back (_keep_forgotten)
        self.forgotten_items = load_items(self.config.forgotten) if self.config.forgotten else []
        self.forgotten_item_start = self._forgotten_nlls(model) if self.forgotten_items else None
        # hold=run: this run's forget items too, read on the forget loss's tokens (their fact tokens by default)
        if self.config.hold == "run" and is_documents(engine.forget):
            raise R2FInputError("hold=run reads QA forget items, not documents", source="hold")
        self.held_start = self._held_nlls(model) if self.config.hold == "run" else None
        self.next_eta: float | None = None
        self.halt: str | None = None
        self.failed_in_row = 0  # line searches in a row that found no step (checkpointed)
        # the views' aggregation now: the option's, until a run that would halt falls back (checkpointed)
        self.aggregate: str = self.config.aggregate
        self.moments: dict[str, torch.Tensor] = {}  # precondition=adam: first and second moments per weight
        self.adam_t = 0
        return model

    def _step_geometry(self) -> str:
        """The resolved ``precondition``. Keep-whitening reads forward statistics of the target, which the black-box
        case (``access=lora``: the target exposes probe gradients only) does not have; there ``auto`` is Adam's
        per-coordinate normalisation, which needs nothing but the direction, and ``sigma`` is refused. (A decoder
        that reads only ∇A, ∇B does not by itself make the run black-box: ``access`` says what the target allows.)"""
        if self.config.precondition == "auto":
            return "adam" if self.config.access == "lora" else "sigma"
        if self.config.precondition == "sigma" and self.config.access == "lora":
            raise R2FInputError("precondition=sigma reads the target's input statistics; access mode 'lora' allows "
                                "probe gradients only (use precondition=adam)", source="precondition")
        return self.config.precondition

    def _check_access(self) -> None:
        """``-o access=MODE`` bounds what the decoder may read; a decoder that needs more is refused."""
        needs = getattr(self.decoder_obj, "access", "lora")
        if self.config.access is None:
            return
        if ACCESS_MODES.index(needs) > ACCESS_MODES.index(self.config.access):
            named = getattr(self.decoder_obj, "source", self.options["decoder"])
            raise R2FInputError(f"decoder '{named}' needs access mode '{needs}', this run allows "
                                f"'{self.config.access}'", source="--option access")

    def _retain_data(self, engine: Engine, model) -> str:
        """The guard's data: the retain file, else the forget questions about made-up people, else (no forget item
        names a subject, or documents) the target's own answers to r2f's generic questions.

        ``retain_data="auto"`` (default): the retain file when one is given, else ``renamed`` (falling back to
        ``generated``). Both questions sets are answered by the target itself (``r2f.methods.guard``): no training
        data. The renamed questions ask what the forget request asks about others, which is what it harms; the
        generic questions protected general knowledge but not the forget set's neighbours (world 0: retain90 0.675×
        without a retain file, 0.885× with renamed questions; docs/methods.md). (File and generic answers together in
        the guard protected world facts less and stalled forgetting: docs/methods.md.)
        """
        if self.config.retain_data == "file" and not engine.retain:
            raise R2FInputError("retain_data=file needs a retain file", source="--retain")
        if engine.retain and self.config.retain_data in ("auto", "file"):
            return "file"
        wanted = GENERATED_SOURCE if self.config.retain_data == "generated" else RENAMED_SOURCE
        engine.retain, engine.retain_source = self_made_retain(model, engine.tokenizer, engine.template, engine.forget,
                                                               seed=engine.config.seed, source=wanted)
        return engine.retain_source

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return dict(self.moments), {"next_eta": self.next_eta, "halt": self.halt, "adam_t": self.adam_t,
                                    "failed_in_row": self.failed_in_row, "aggregate": self.aggregate,
                                    "last_guard": self.last_guard}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.moments = {k: v.clone() for k, v in tensors.items()}
        self.next_eta = meta.get("next_eta")
        self.halt = meta.get("halt")
        self.failed_in_row = int(meta.get("failed_in_row", 0))
        self.aggregate = meta.get("aggregate", self.config.aggregate)
        self.adam_t = int(meta.get("adam_t", 0))
        self.last_guard = meta.get("last_guard", self.guard_start)

    # -- pieces -----------------------------------------------------------------------------------
    def _checked_probe(self, gradients, model):
        """The probe, validated against the model and the decoder before any step (R2FInputError: exit 2)."""
        try:
            probe = gradients.ProbeConfig(**self._probe_kwargs())
        except (TypeError, ValueError) as exc:
            raise R2FInputError(f"invalid probe: {exc}", source="--option rank/rank_a") from None
        try:
            linears = gradients.target_linears(model, probe.target_modules)
        except re.error as exc:
            raise R2FInputError(f"invalid regular expression {probe.target_modules!r}: {exc}",
                                source="--option target_modules") from None
        if not linears:
            raise R2FInputError(f"no linear module of the model matches the probe pattern {probe.target_modules!r}",
                                source="--option target_modules")
        kinds = {gradients.module_kind(n) for n, _ in linears}
        check = getattr(self.decoder_obj, "check_compatible", None)
        if check is not None:
            check(probe, kinds)  # rank, seed rule, module kinds of a learned decoder
        return probe

    def _probe_kwargs(self) -> dict[str, Any]:
        """Probe shape: explicit options, else what a learned decoder was trained with, else 16 / 2·16."""
        trained = (getattr(self.decoder_obj, "meta", None) or {}).get("probe", {}) or {}
        kw: dict[str, Any] = {"seed": int(self.config.probe_seed)}
        if self.config.rank is not None:
            kw["rank"] = int(self.config.rank)
            kw["rank_a"] = int(self.config.rank_a) if self.config.rank_a is not None else None
        else:
            kw["rank"] = int(trained.get("rank", 16))
            kw["rank_a"] = self.config.rank_a if self.config.rank_a is not None else trained.get("rank_a")
        if self.config.target_modules or trained.get("target_modules"):
            kw["target_modules"] = self.config.target_modules or trained["target_modules"]
        if "scale" in trained:
            kw["scale"] = float(trained["scale"])
        return kw

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"probe": self.probe.to_dict(), "stop_threshold": self.threshold,
                                "request_thresholds": self.group_thresholds,
                                "guard": {"source": self.guard_source, "items": len(self.engine.retain),
                                          "measure": self.guard_measure,
                                          "scored": len(self.guard_set), "budget": self.guard_budget,
                                          "nll_start": self.guard_start, "top1_start": self.guard_top1_start},
                                "forgotten": None if not self.forgotten_items else {
                                    "file": str(self.config.forgotten), "items": len(self.forgotten_items),
                                    "nll_start": float(self.forgotten_item_start.mean())},
                                "stats": None if self.sigma_stats is None else {"source": self.guard_source,
                                                                                "tokens": self.sigma_stats.tokens},
                                "precondition": self.step_geometry,
                                "answer_tokens": {"mode": "all"} if self.format_ids is None else {
                                    "mode": "fact", "format_tokens": len(self.format_ids)},
                                "keep": self.keep_info,
                                "watch": None if self.watch_items is None else {
                                    "items": len(self.watch_items), "nll_start": self.watch_start,
                                    "budget": self.watch_budget}}
        if self.steer is not None:
            info["steering"] = self.steer[2]
        spec = self.options.get("decoder") or DEFAULT_DECODER
        # the file the decoder came from, also when it was named ("learned": the default decoder's file)
        path = Path(str(getattr(self.decoder_obj, "source", None) or spec))
        info["decoder"] = {"name": getattr(self.decoder_obj, "name", str(spec)),
                           "access": getattr(self.decoder_obj, "access", "lora"),
                           "base": getattr(self.decoder_obj, "base", None),
                           "file": str(path) if path.is_file() else None,
                           "sha256": getattr(self.decoder_obj, "sha256", None) if path.is_file() else None}
        return info

    def _stats(self, engine: Engine, model, gradients):
        """Input second moments Σ of the probed layers over retain text, once, at the initial weights.

        Decoders with a Σ prior (sigma, learned) are trained with Σ from generic text; retain data is the
        generic text an unlearning run has. ``stats="batch"`` leaves it to the step's own inputs.
        """
        if self.config.stats != "retain" or not getattr(self.decoder_obj, "uses_stats", False) or not engine.retain:
            return None
        return self._input_stats(engine, model, engine._summary_retain()[: int(self.config.stats_items)], "retain")

    def _input_stats(self, engine: Engine, model, items, source: str):
        """Σ of the probed layers' inputs over ``items`` (forward passes only, 16 items a batch)."""
        batches = [engine.make_batch(items[i:i + 16]).inputs for i in range(0, len(items), 16)]
        return gradients.collect_input_stats(model, batches, self.probe, source=source)

    def _generated(self, engine: Engine, model) -> list[QAItem]:
        """The target's greedy answers to r2f's generic questions, at the initial weights (made once per run)."""
        if self._generated_items is None:
            self._generated_items = self_answered_items(model, engine.tokenizer, engine.template)
        return self._generated_items

    def _watch(self, engine: Engine, model) -> tuple[list[QAItem] | None, float | None]:
        """The collateral watch's items and their mean answer NLL at the start (``past_threshold``).

        Why: the shuffled threshold is where a model that *memorised* its answers (``small``) has forgotten them;
        a pretrained model (SmolLM2) reaches it with the fact still preferred over wrong ones in other phrasings
        (forget quality 0.004–0.021 there, 0.088–0.273 when run deeper), while a memorising model taken deeper loses
        what it should keep (world facts 0.29× on world 1 with retain90). What tells them apart at the threshold is
        how much the model's answers to unrelated generic questions have moved: +0.6 nats/token on ``small`` worlds
        0 and 1, +0.01 on SmolLM2 worlds 0 and 28 (docs/methods.md, "Thirteenth round")."""
        # guard_measure=rank bounds the watch in every line search, so it needs no threshold
        needed = self.config.guard_measure == "rank" or (
            self.threshold is not None and self.config.past_threshold == "while_clean")
        if not needed or self.config.step_rule != "search" or self.guard_source == GENERATED_SOURCE:
            return None, None
        items = self._generated(engine, model)
        return (items, engine.mean_nll(model, items, chunk=32)) if items else (None, None)

    def _watch_entry(self, model) -> dict[str, float]:
        """The collateral watch's rise since the start, for the step's log (empty when there is no watch)."""
        if self.watch_items is None:
            return {}
        return {"watch_rise": self.engine.mean_nll(model, self.watch_items, chunk=32) - self.watch_start}

    def _keep_root(self, engine: Engine, model) -> dict[str, tuple[torch.Tensor, bool]]:
        """Per probed weight, R = (Σ_keep + δ·s̄·I)^-1/2: Σ_keep = E[x xᵀ] of the module's inputs over the guard's
        retain text (file or self-answered; ``stats_items`` items) at the initial weights, s̄ its mean eigenvalue.

        Why: a weight change ΔW moves a module's output on input x by ΔW·x, so its mean squared effect on the kept
        text is tr(ΔW Σ_keep ΔWᵀ). Among the steps with the same first-order effect on the forget loss, the one
        that disturbs the kept text least is ΔW ∝ D·Σ_keep⁻¹ (the input-side half of a natural-gradient step;
        ROME's C⁻¹ rule). δ keeps the directions the kept text never uses from dominating.
        """
        items = engine._summary_retain()[: int(self.config.stats_items)]
        if self.config.keep_text == "guard+generated" and self.guard_source in ("file", RENAMED_SOURCE):
            items = items + self._generated(engine, model)
            self.keep_info = {"text": "guard+generated", "items": len(items)}
            stats = self._input_stats(engine, model, items, "keep")
        else:  # the same items the decoder's Σ was taken over (when it takes one): no second pass
            self.keep_info = {"text": "guard", "items": len(items)}
            stats = self.sigma_stats if self.sigma_stats is not None else \
                self._input_stats(engine, model, items, "keep")
        return {module + ".weight": (keep_whitener(sigma, float(self.config.sigma_damp)),
                                     gradients.is_transposed(model.get_submodule(module)))
                for module, sigma in stats.sigma.items()}

    def _threshold(self, engine: Engine, model) -> float | None:
        """Forget NLL at which to stop: the model's NLL of *wrong* answers to the forget questions.

        ``shuffled`` (default) pairs each forget question with another forget item's answer (same ``kind``
        when the data has it): a wrong fact in the very format the model was trained on, which is what a
        model that never learned the item scores. ``perturbed`` uses the data's perturbed answers (their
        phrasing may differ from the trained format, which raises the threshold). On documents, ``shuffled`` pairs
        the first half of each unit with the second half of another document's unit at the same chunk position
        (:func:`r2f.data.batching.shuffled_unit_pairs`); ``perturbed`` has no text to use there (no threshold).
        """
        if self.config.stop_nll is not None:
            return float(self.config.stop_nll)
        if self.config.stop == "none":
            return None
        return self._wrong_answer_nll(engine, model, engine.forget)

    def _wrong_answer_nll(self, engine: Engine, model, items) -> float | None:
        """The ``stop`` rule's wrong-answer NLL of ``items`` (see :meth:`_threshold`); None without pairs."""
        documents = is_documents(items)
        if documents:  # a unit's first half with another document's second half; no perturbed text to use
            bos = [engine.tokenizer.bos_token_id] if engine.tokenizer.bos_token_id is not None else []
            pairs = shuffled_unit_pairs(items, bos) if self.config.stop == "shuffled" else []
        else:
            pairs = shuffled_answer_pairs(items) if self.config.stop == "shuffled" else \
                [(it.question, wrong) for it in items for wrong in it.perturbed_answer]
        if not pairs:
            return None
        vals = []
        with torch.no_grad():
            for i in range(0, len(pairs), 16):
                chunk = pairs[i: i + 16]
                b = engine.make_batch([items[0]] * len(chunk))
                inputs = b.collate(chunk) if documents else b.encode([q for q, _ in chunk], [a for _, a in chunk])
                s, n = sequence_nll(model, inputs)
                vals += (s / n.clamp_min(1)).tolist()
        return sum(vals) / len(vals)

    def _request_groups(self, engine: Engine, model) -> tuple[list[str] | None, dict[str, float] | None]:
        """Per forget item its ``request`` (the ledger's entry number, on every item of a renewing run), and per
        request the stop rule's threshold on its own items; (None, None) unless the items name two requests or
        more. Why: the stop rule reads a mean, and a renewed request already halfway forgotten lifts the union's
        mean to the threshold while the new request is still known (and same-kind answers of other people, which
        the union's shuffled pairs use, are less wrong than another question's: a lower threshold)."""
        if is_documents(engine.forget) or self.config.stop_nll is not None or self.threshold is None:
            return None, None
        named = [(it.model_extra or {}).get("request") for it in engine.forget]
        if None in named or len(set(named)) < 2:
            return None, None
        groups = [str(k) for k in named]
        thresholds = {}
        for g in dict.fromkeys(groups):
            value = self._wrong_answer_nll(engine, model, [it for it, h in zip(engine.forget, groups) if h == g])
            if value is None:
                return None, None
            thresholds[g] = value
        return groups, thresholds

    def _forget_set_entry(self, model) -> dict[str, Any]:
        """The log's whole-forget-set NLL after a step (what the stop rule reads) and, with several requests' items
        (:meth:`_request_groups`), each request's mean: one forward pass over the forget set for both."""
        per_item = self.engine.item_nlls(model, self.engine.forget, chunk=32)
        entry: dict[str, Any] = {"forget_set_nll": float(per_item.mean())}
        if self.groups is not None:
            out: dict[str, list[float]] = {}
            for g, v in zip(self.groups, per_item.float().cpu().tolist()):
                out.setdefault(g, []).append(v)
            entry["forget_request_nll"] = {g: sum(v) / len(v) for g, v in out.items()}
        return entry

    def _steering(self, engine: Engine, model) -> tuple[torch.nn.Module, torch.Tensor, dict[str, Any]]:
        """RMU's target: (the steered decoder layer, its fixed random target vector, what was chosen).

        The target's norm is ``steer_scale`` × the layer's mean activation norm on forget answers at the start,
        so the default needs no per-model coefficient (RMU's ``steering_coeff`` is tuned per model)."""
        layers = decoder_layers(model)
        if not layers:
            raise R2FInputError("the model has no stack of decoder layers to steer", source="objective")
        k = int(self.config.steer_layer) if self.config.steer_layer is not None else len(layers) // 4
        if not 0 <= k < len(layers):
            raise R2FInputError(f"layer {k} does not exist (the model has {len(layers)})", source="steer_layer")
        module = layers[k]
        with torch.no_grad():
            b = engine.make_batch(engine.forget[:32]).inputs
            act = layer_output(model, module, b)
            mask = b["labels"] != -100
            norm = float(act.float().norm(dim=-1)[mask].mean())
        target = control_vector(act.shape[-1], float(self.config.steer_scale) * norm, engine.config.seed)
        return module, target, {"layer": k, "activation_norm": norm, "target_norm": float(target.norm())}

    def _format_ids(self, engine: Engine) -> torch.Tensor | None:
        """``answer_tokens="fact"``: the format token ids over the forget and guard answers (on documents, with
        ``document_tokens="fact"``, over the forget units' text and the guard's items); None when the loss reads
        every token."""
        documents = is_documents(engine.forget)
        if self.config.answer_tokens == "all" or (documents and self.config.document_tokens == "all"):
            return None
        answers = []
        for records in (list(engine.forget), list(engine.retain)):  # a batch holds one kind: QA items or units
            for i in range(0, len(records), 32):
                labels = engine.make_batch(records[i:i + 32]).inputs["labels"]
                answers += [row[row != IGNORE_INDEX].tolist() for row in labels]
        return format_token_ids(answers, float(self.config.format_share))

    def _fact_labels(self, batch: dict) -> dict:
        """The batch as the forget loss reads it (NPO's reference NLLs are taken of the same tokens)."""
        return fact_labels(batch, self.format_ids)

    def forget_loss(self, model, batch: dict) -> torch.Tensor:
        if self.format_ids is not None and self.config.objective != "rmu":
            batch = self._fact_labels(batch)
        if self.config.objective == "rmu":
            module, target, _ = self.steer
            act = layer_output(model, module, batch)
            return seq_mean(activation_distance(act, target.to(act.device).expand_as(act), batch["labels"] != -100),
                            self.engine.dp)
        if self.config.objective == "wga":
            nll, _, counts = answer_token_nll_flat(model, batch)
            return wga_loss(nll, counts, 1.0 if self.config.beta is None else float(self.config.beta), self.engine.dp)
        s, n = sequence_nll(model, batch)
        if self.config.objective == "npo":
            return npo_loss(s, self.ref.lookup(batch), 0.1 if self.config.beta is None else float(self.config.beta),
                            self.engine.dp)
        return -token_mean_nll(s, n, self.engine.dp)

    def retain_loss(self, model, batch: dict) -> torch.Tensor:
        return token_mean_nll(*sequence_nll(model, batch), self.engine.dp)

    def _retain_reference(self, engine: Engine, model) -> ReferenceTopK:
        """retain_loss=kl: the starting model's top-k next tokens on every retain answer, in every retain view."""
        if is_documents(engine.retain):
            raise R2FInputError("retain_loss=kl reads QA retain items, not documents", source="retain_loss")
        ref = ReferenceTopK()
        for i in range(0, len(engine.retain), 32):
            ref.add(model, engine.make_batch(engine.retain[i:i + 32]).views(int(self.config.retain_views)))
        return ref

    def _retain_kl(self, model, batch: dict) -> torch.Tensor:
        """Mean over the batch's answer tokens of KL(start ‖ now), over the start's top-k tokens and the rest."""
        logits, _, _, counts = answer_token_logits(model, batch)
        ids, logp_start = self.retain_ref.lookup(batch)
        kl = coarse_kl(logp_start, torch.log_softmax(logits.float(), -1).gather(1, ids))
        return kl.sum() / self.engine.dp.count(counts.sum()).clamp_min(1)

    def step_size(self, step: int, total: int, lr: float) -> float:
        if total <= 1:
            return lr
        c = 0.5 * (1 + math.cos(math.pi * step / (total - 1)))
        return lr * (self.config.min_step_ratio + (1 - self.config.min_step_ratio) * c)

    def decoded(self, model, batches: list[dict], loss_fn) -> dict[str, torch.Tensor]:
        # data-parallel step: the batches are this rank's slices; sketches are summed over ranks before decoding
        dirs = decoded_gradients(model, batches, self.decoder_obj, self.probe, loss_fn, aggregate=self.aggregate,
                                 stats=self.sigma_stats, reduce=self.engine.dp.active, checked=True)  # checked at setup
        # FSDP: each direction becomes a DTensor of this rank's rows (like its weight); the rest of the rule
        # (guard, Adam moments, norms, W -= η·D) then runs on shards; module-wide sums go through fsdp.scalar
        return shard_like(model, dirs)

    # -- the hook ---------------------------------------------------------------------------------
    def update(self, model, forget: QABatch, retain: QABatch | None, ctx: StepContext) -> dict[str, Any]:
        g_f = self.decoded(model, forget.views(self.views), self.forget_loss)
        use_retain = (self.config.guard != "none" or self.config.retain_weight) and retain is not None
        if use_retain and self.retain_ref is not None:
            with torch.no_grad():  # retain_loss=kl: at the starting weights nothing has moved, and there is no direction
                use_retain = float(self._retain_kl(model, retain.views(1)[0])) > 1e-6
        retain_fn = self.retain_loss if self.retain_ref is None else self._retain_kl
        g_r = self.decoded(model, retain.views(int(self.config.retain_views)), retain_fn) if use_retain else None
        g_o = self.decoded(model, self._forgotten_batch(model).views(1), self.retain_loss) \
            if self.forgotten_items else None
        g_h = self.decoded(model, self._held_batch(model).views(1), self._held_loss) \
            if self.held_start is not None else None
        params = dict(model.named_parameters())
        if self.keep_root is not None:  # the guard works in the whitened geometry D·R; mapped back, ΔW ∝ D·Σ_keep⁻¹
            g_f = self._whiten(g_f)
            g_r = None if g_r is None else self._whiten(g_r)
            g_o = None if g_o is None else self._whiten(g_o)
        directions, out = self._guarded_directions(g_f, g_r, params)
        for g in (g_o, g_h):
            if g is not None:
                directions = self._keep_forgotten(directions, g)
        if self.keep_root is not None:
            directions = self._whiten(directions)
        for name, d in directions.items():  # the engine rolls the step back and retries with a smaller step
            if not all_finite(d):
                return {"step_size": ctx.lr, "numerical_fault": f"decoded gradient of {name} is not finite"}
        if self.step_geometry == "adam":
            directions = self._adam(directions)
        unit = self._unit_steps(directions, params)
        if self.config.step_rule == "schedule":
            eta = self.step_size(ctx.step, ctx.total_steps, ctx.lr)
            self._apply(params, directions, unit, eta)
            return {"step_size": eta, **out}
        return {**self._line_search(model, forget, params, directions, unit, ctx), **out}

    def _whiten(self, directions: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """D·R per module (R symmetric, on the weight's input side: R·D for a transposed Conv1D weight)."""
        out = {}
        for n, d in directions.items():
            if n in self.keep_root:
                root, transposed = self.keep_root[n]
                d = input_side_matmul(d.float(), root, transposed=transposed)
            out[n] = d
        return out

    def _guarded_directions(self, g_f, g_r, params) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Per module: remove the part of D_f that raises the retain loss, add λ·‖D_f‖/‖D_r‖·D_r."""
        directions: dict[str, torch.Tensor] = {}
        n_conflict, cos_sum = 0, 0.0
        for name, d in g_f.items():
            if name not in params:
                raise KeyError(f"decoded gradient for unknown parameter {name}")
            d = d.detach().float()
            if g_r is not None and name in g_r:
                r = g_r[name].detach().float()
                rr = scalar((r * r).sum())
                dot = scalar((d * r).sum())
                if rr > 0:
                    cos_sum += dot / math.sqrt(rr * max(scalar((d * d).sum()), 1e-30))
                    if self.config.guard == "project" and dot < 0:
                        d = d - (dot / rr) * r
                        n_conflict += 1
                    if self.config.retain_weight:
                        d = d + float(self.config.retain_weight) * (scalar(d.norm()) / math.sqrt(rr)) * r
            directions[name] = d
        out = {}
        if g_r is not None and directions:
            out = {"guard_conflicts": n_conflict / len(directions), "cos_forget_retain": cos_sum / len(directions)}
        return directions, out

    @torch.no_grad()
    def _forgotten_nlls(self, model) -> torch.Tensor:
        """Per earlier-request item, its mean answer NLL (forward passes only)."""
        return self.engine.item_nlls(model, self.forgotten_items, chunk=32).float().cpu()

    def _forgotten_batch(self, model) -> QABatch:
        """The step's batch of earlier requests' items: the ``batch_size`` whose NLL fell most since this run
        started (the ones coming back; a fixed batch in turn protected only itself and let others return)."""
        return self._coming_back(self.forgotten_items, self.forgotten_item_start, self._forgotten_nlls(model))

    def _coming_back(self, items, start: torch.Tensor, now: torch.Tensor) -> QABatch:
        """The ``batch_size`` of ``items`` whose NLL fell most (rose least) from ``start`` to ``now``."""
        k = min(len(items), self.engine.config.batch_size)
        order = torch.argsort(start - now, descending=True, stable=True)[:k].tolist()
        return self.engine.make_batch([items[i] for i in order])

    def _held_loss(self, model, batch: dict) -> torch.Tensor:
        """hold=run: the NLL of the tokens the forget loss reads, whose descent would bring the items back."""
        return self.retain_loss(model, self._fact_labels(batch) if self.format_ids is not None else batch)

    @torch.no_grad()
    def _held_nlls(self, model) -> torch.Tensor:
        """hold=run: per forget item, the mean NLL of the tokens the forget loss reads."""
        out = []
        for i in range(0, len(self.engine.forget), 32):
            inputs = self.engine.make_batch(self.engine.forget[i:i + 32]).inputs
            s, n = sequence_nll(model, self._fact_labels(inputs) if self.format_ids is not None else inputs)
            out.append((s / n.clamp_min(1)).float().cpu())
        return torch.cat(out)

    def _held_batch(self, model) -> QABatch:
        """hold=run: the ``batch_size`` forget items whose NLL rose least since the start (a step's forget batch
        rises; the retain-descent term and later batches' steps then gave most of it back: realfacts, BENCHMARKS)."""
        was_training = model.training
        model.eval()
        now = self._held_nlls(model)
        model.train(was_training)
        return self._coming_back(self.engine.forget, self.held_start, now)

    @staticmethod
    def _keep_forgotten(directions, g_o) -> dict[str, torch.Tensor]:
        """Per module, the retain guard's projection mirrored for the earlier requests' items: remove the part of
        the step that would lower their NLL (the step is −η·d, so ⟨d, D_o⟩ > 0 is a first-order relapse)."""
        out = {}
        for name, d in directions.items():
            o = g_o.get(name)
            if o is not None:
                o = o.detach().float()
                oo, dot = scalar((o * o).sum()), scalar((d * o).sum())
                if oo > 0 and dot > 0:
                    d = d - (dot / oo) * o
            out[name] = d
        return out

    def _adam(self, directions: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Adam's bias-corrected m̂/(√v̂+ε) of the guarded directions (β = 0.9, 0.999), kept across steps.

        Why: a raw gradient step (decoded or exact alike) concentrates the change on the few coordinates with
        large gradients and wipes general knowledge the guard never sees (world facts 1.00 → 0.71–0.79 on
        ``small``); per-coordinate normalisation, as AdamW gives the baselines, keeps it (0.97–1.00). The moments
        only rescale coordinates: the line search still sets the step's length. ε is relative to the largest
        √v̂, so the rule stays free of the gradient's scale.
        """
        self.adam_t += 1
        t = self.adam_t
        out = {}
        for n, d in directions.items():
            m = self.moments.setdefault(f"m.{n}", torch.zeros_like(d))
            v = self.moments.setdefault(f"v.{n}", torch.zeros_like(d))
            m.mul_(0.9).add_(d, alpha=0.1)
            v.mul_(0.999).addcmul_(d, d, value=0.001)
            vhat = (v / (1 - 0.999 ** t)).sqrt_()
            out[n] = (m / (1 - 0.9 ** t)).div_(vhat.add_(1e-8 * scalar(vhat.max().clamp_min(1e-30))))
        return out

    def _unit_steps(self, directions, params) -> dict[str, float]:
        """Per module, the multiplier of D that changes the weights by a relative η = 1 (global or per module)."""
        if self.config.step_norm == "global":
            w_norm = math.sqrt(sum(scalar(params[n].detach().float().pow(2).sum()) for n in directions))
            d_norm = math.sqrt(sum(scalar(d.pow(2).sum()) for d in directions.values()))
            return {n: (w_norm / d_norm if d_norm > 0 else 0.0) for n in directions}
        unit = {}
        for n, d in directions.items():
            dn = scalar(d.norm())
            unit[n] = scalar(params[n].detach().float().norm()) / dn if dn > 0 else 0.0
        return unit

    @staticmethod
    @torch.no_grad()
    def _apply(params, directions, unit, eta: float, base: dict[str, torch.Tensor] | None = None) -> None:
        """W ← W − η·unit·D (from ``base`` when given, i.e. a trial restarted from the step's start)."""
        for n, d in directions.items():
            w = params[n]
            if base is not None:
                w.copy_(base[n])
            if unit[n] and math.isfinite(unit[n]):
                w.sub_((eta * unit[n] * d).to(w.dtype))

    @torch.no_grad()
    def _forget_batch_nll(self, model, forget: QABatch) -> float:
        s, n = sequence_nll(model, forget.inputs)
        per_item = s / n.clamp_min(1)
        return self.engine.dp.mean(per_item)

    def _guard_batches(self):
        return (self.engine.make_batch(self.guard_set[i:i + 32]).inputs for i in range(0, len(self.guard_set), 32))

    @torch.no_grad()
    def _guard_scores(self, model) -> tuple[float, float]:
        """The guard items' score — mean answer NLL (the mean over items of each item's mean token NLL), or with
        ``guard_measure`` kl the same mean of KL(start ‖ now) — and the share of their answer tokens that are the
        model's top-1 prediction (one forward pass)."""
        was_training = model.training
        model.eval()
        if self.rank is not None:
            score, top1_share = self.rank.scores(model)  # (share not first, mean margin)
        elif self.drift is not None:
            score, top1_share = self.drift.scores(model, self._guard_batches())
        else:
            nlls, hits, tokens = [], 0, 0
            for inputs in self._guard_batches():
                nll, top1, rows, counts = answer_token_scores(model, inputs)
                nlls.append(row_sums(nll, rows, counts.shape[0]) / counts.clamp_min(1))
                hits, tokens = hits + int(top1.sum()), tokens + int(counts.sum())
            score, top1_share = float(torch.cat(nlls).mean()), hits / max(tokens, 1)
        model.train(was_training)
        return score, top1_share

    def _line_search(self, model, forget: QABatch, params, directions, unit, ctx: StepContext) -> dict[str, Any]:
        """The largest η (from the last accepted η, doubled after a first-try success) whose step raises the
        forget NLL while the guard NLL rises by at most ``guard_tol`` this step and ``guard_budget`` in all.

        A trial within the guard that leaves the forget NLL where it was is too short to show (a very confident
        model at its first steps, whose forget NLL is ~0.002) and doubles η, never up to an η that broke the guard.
        Forward passes only: a trial costs two small forwards, against a probe backward over K views.
        No acceptable η after ``backtracks`` halvings (or doublings): the weights stay, and the run stops once
        ``patience`` steps in a row (default: one pass over the forget batches) found none. (Until the ninth round
        the first such step stopped the run: one hard batch ended a world-1 run at step 5, its forget set untouched.)
        """
        was_training = model.training
        model.eval()
        # both at the step's starting weights: the engine's logged forget signal of this batch, and the guard
        # NLL the previous accepted trial measured (same weights; kept in the checkpointed state)
        f0 = ctx.signals["forget_nll"] if "forget_nll" in ctx.signals else self._forget_batch_nll(model, forget)
        g0 = self.last_guard if self.last_guard is not None else self._guard_scores(model)[0]
        base = {n: params[n].detach().clone() for n in directions}
        # first trial: the last accepted η (doubled after a first-try success), else --lr; ctx.lr and the
        # engine's step_scale both carry the halving after a rolled-back numerical fault
        eta = min(self.next_eta * ctx.engine.step_scale if self.next_eta is not None else ctx.lr, MAX_ETA)
        accepted, why, trials = False, "", 0
        f = g = acc = float("nan")
        watch: float | None = None  # the collateral watch's rise at the trial's weights (rank guard only)
        too_big: float | None = None  # the smallest η seen to break the guard this step
        measure = self.guard_measure.upper()
        halvings = 0
        tried: list[dict[str, Any]] = []  # every trial and its verdict, for the step's log
        for trials in range(1, 2 * (int(self.config.backtracks) + 1) + 1):
            self._apply(params, directions, unit, eta, base=base)
            f, (g, acc) = self._forget_batch_nll(model, forget), self._guard_scores(model)
            tried.append({"eta": eta, "forget_nll": f, "guard": g})
            # a rank guard is blind to how text is worded: the collateral watch's NLL bounds that in the same search
            watch = self._watch_entry(model).get("watch_rise") if self.rank is not None else None
            if watch is not None:
                tried[-1]["watch_rise"] = watch
            if not (math.isfinite(f) and math.isfinite(g)):
                why = "non-finite loss"
            elif g - g0 > self.guard_tol:
                why = f"guard {measure} rose {g - g0:.4f} > guard_tol {self.guard_tol:g}"
            elif self.guard_start is not None and g - self.guard_start > self.guard_budget:
                why = f"guard {measure} rose {g - self.guard_start:.4f} in all > guard_budget {self.guard_budget:g}"
            elif watch is not None and watch > self.watch_budget:
                why = f"collateral watch rose {watch:.4f} in all > {self.watch_budget:g}"
            elif f <= f0:
                # within the guard but the forget NLL did not move: the step is too short to show (a very
                # confident model at the first steps), so try a longer one, short of any η that broke the guard
                why = f"forget NLL did not rise ({f:.4f} <= {f0:.4f})"
                longer = min(2 * eta, MAX_ETA)
                if longer > eta and (too_big is None or longer < too_big):
                    tried[-1]["verdict"] = why
                    eta = longer
                    continue
                # no longer step to try (η at its cap, or the next one broke the guard): a step this long may
                # overshoot the forget NLL's rise, so shorter ones are tried, as after a guard break
            else:
                accepted = True
                tried[-1]["verdict"] = "accepted"
                break
            tried[-1]["verdict"] = why
            too_big = eta if too_big is None else min(too_big, eta)
            if halvings == int(self.config.backtracks):
                break
            eta, halvings = 0.5 * eta, halvings + 1
        model.train(was_training)
        if not accepted:
            self._apply(params, directions, unit, 0.0, base=base)
            self.last_guard = g0
            self.failed_in_row += 1
            patience = self.engine.batches_per_epoch if self.config.patience is None else int(self.config.patience)
            fell_back = {}
            if self.failed_in_row >= patience and self.config.fallback == "balanced" and self.aggregate != "balanced":
                # the same batch and weights give the same direction again; each view over its own norm is a
                # different one (a paraphrase the model answers badly no longer sets it alone: docs/methods.md)
                self.aggregate, self.failed_in_row = "balanced", 0
                fell_back = {"fallback": "aggregate=balanced"}
            elif self.failed_in_row >= patience:
                self.halt = (f"no step within the guard in {self.failed_in_row} step(s) in a row; the last after "
                             f"{trials} trials ({why})")
            # the stop rule reads the forget set's NLL: unchanged weights, but measured, not the batch's
            return {"step_size": 0.0, "trials": trials, "search": tried, "forget_nll_after": f0, "guard_nll": g0,
                    **fell_back,
                    **self._forget_set_entry(model), **self._watch_entry(model)}
        self.failed_in_row = 0
        self.next_eta = min(2 * eta if trials == 1 else eta, MAX_ETA)
        self.last_guard = g
        # the stop rule reads the whole forget set's NLL after the step: one batch's NLL swings by ±50 %
        # between batches and made the run stop late, well past the oracle's level
        forget_all = self._forget_set_entry(model)
        o = float(self._forgotten_nlls(model).mean()) if self.forgotten_items else None
        return {"step_size": eta, "trials": trials, "search": tried, "forget_nll_after": f,
                "forget_set_nll": forget_all.pop("forget_set_nll"), "guard_nll": g,
                "guard_margin" if self.rank is not None else "guard_top1": acc,
                **({"forgotten_nll": o} if o is not None else {}), **forget_all,
                # a rank guard's search measured the watch at these weights already
                **({"watch_rise": watch} if watch is not None else self._watch_entry(model))}

    def should_stop(self, ctx: StepContext, log: list[dict]) -> str | None:
        if self.halt is not None:
            return self.halt
        if self.threshold is None or len(log) < self.window:
            return None
        if self.group_thresholds is not None:
            reached = self._groups_reached(log[-self.window:])
            if reached is None:
                return None
        else:
            recent = [e.get("forget_set_nll", e["forget_nll"]) for e in log[-self.window:]]
            mean = sum(recent) / len(recent)
            if mean < self.threshold:
                return None
            what = "forget NLL" if self.window == 1 else f"forget NLL (mean of the last {self.window} steps)"
            reached = f"{what} {mean:.4f} reached the threshold {self.threshold:.4f}"
        rise = log[-1].get("watch_rise")
        if rise is None:
            return reached
        budget = self.watch_budget
        # no visible collateral yet: forgetting deeper costs nothing the run can see, so it goes on
        return f"{reached}; the collateral watch rose {rise:.4f} > {budget:g}" if rise > budget else None

    def _groups_reached(self, recent: list[dict]) -> str | None:
        """With several requests' items: "every request's forget NLL reached its threshold" once each has (the
        mean over the stop window), else None."""
        logged = [e.get("forget_request_nll") for e in recent]
        if any(e is None for e in logged):
            return None
        margins = {g: sum(e[g] for e in logged) / len(logged) - t for g, t in self.group_thresholds.items()}
        if min(margins.values()) < 0:
            return None
        least = min(margins, key=margins.get)
        return (f"every request's forget NLL reached its threshold ({len(margins)} requests; the least margin "
                f"{margins[least]:+.4f}, request {least})")


@register
class Exact(R2F):
    """The R2F rule with exact gradients: the perfect-decoder oracle."""

    name = "exact"
    config_class = ExactConfig

    def __init__(self, **options: Any):
        if options.get("decoder") not in (None, "exact"):
            raise R2FInputError("method 'exact' always uses the exact decoder; use --method r2f for others",
                                source="--decoder")
        super().__init__(**options)


def keep_whitener(sigma: torch.Tensor, damp: float) -> torch.Tensor:
    """R = (Σ + damp·s̄·I)^-1/2 (symmetric, float32) of an input second moment Σ, s̄ its mean eigenvalue.

    D·R·R = D·(Σ + damp·s̄·I)⁻¹: R is applied once before the retain guard (which then works in the whitened
    geometry) and once after. Eigen-decomposition in float64: Σ of a few thousand tokens is rank-deficient.
    """
    evals, evecs = torch.linalg.eigh(sigma.double())
    evals = evals.clamp_min(0)
    damped = evals + damp * float(evals.mean().clamp_min(1e-30))
    return ((evecs * damped.rsqrt()) @ evecs.T).float()
