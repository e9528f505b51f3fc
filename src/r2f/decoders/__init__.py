"""Gradient decoders: probe sketches (+ statistics) → full weight gradients, and the learned R2F decoder."""

from r2f.decoders.api import DEFAULT_DECODER, decoded_gradients, iter_decoded_gradients, load_decoder, resolve_decoder
from r2f.decoders.base import (
    BUILTIN,
    Decoder,
    ExactDecoder,
    LoraDecoder,
    LSDecoder,
    RowSketchDecoder,
    SigmaDecoder,
    SketchDecoder,
)
from r2f.decoders.fidelity import measure_cost, measure_fidelity
from r2f.decoders.learned import LearnedDecoder
from r2f.decoders.train import train_decoder, view_batches_for
from r2f.gradients.stats import collect_input_stats

__all__ = [
    "BUILTIN",
    "DEFAULT_DECODER",
    "Decoder",
    "ExactDecoder",
    "LoraDecoder",
    "LSDecoder",
    "RowSketchDecoder",
    "SigmaDecoder",
    "SketchDecoder",
    "LearnedDecoder",
    "collect_input_stats",
    "decoded_gradients",
    "iter_decoded_gradients",
    "load_decoder",
    "resolve_decoder",
    "measure_cost",
    "measure_fidelity",
    "train_decoder",
    "view_batches_for",
]
