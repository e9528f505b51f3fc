"""Gradient sources: LoRA-probe sketches and exact gradients of the probed Linear layers."""

from r2f.gradients.probe import (
    DEFAULT_PATTERN,
    KIND_ALIASES,
    MODULE_KINDS,
    SEED_RULE,
    ProbeConfig,
    Sketches,
    activation_backward,
    attach_probe,
    default_loss,
    exact_gradients,
    is_transposed,
    module_kind,
    probe_factors,
    probe_gradients,
    target_linears,
    to_weight_layout,
    weight_matrix,
)
from r2f.gradients.stats import InputStats, collect_input_stats

__all__ = [
    "DEFAULT_PATTERN",
    "KIND_ALIASES",
    "MODULE_KINDS",
    "SEED_RULE",
    "ProbeConfig",
    "Sketches",
    "activation_backward",
    "attach_probe",
    "default_loss",
    "exact_gradients",
    "is_transposed",
    "module_kind",
    "probe_factors",
    "probe_gradients",
    "target_linears",
    "to_weight_layout",
    "weight_matrix",
    "InputStats",
    "collect_input_stats",
]
