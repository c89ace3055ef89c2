"""Training, evaluation and publishing helpers for VTLM (not shipped with checkpoints)."""

# The licence of VTLM's code (pyproject.toml) and so of every model, export and Space card it publishes, as the Hub
# spells it.
LICENSE = "apache-2.0"
