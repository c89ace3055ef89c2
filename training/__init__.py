"""Training, evaluation and publishing helpers for VTLM (not shipped with checkpoints)."""
