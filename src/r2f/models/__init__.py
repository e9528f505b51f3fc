"""Models: loading (directories and the offline SmolLM2), the model ladder, tokenizers and training."""

from r2f.models.loading import load_model, model_fingerprint, SMOLLM2

__all__ = ["load_model", "model_fingerprint", "SMOLLM2"]
