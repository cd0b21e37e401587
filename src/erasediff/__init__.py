"""EraseDiff and its baselines for machine unlearning in diffusion models."""

__version__ = "0.1.0"
