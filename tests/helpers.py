"""Shared helpers for the tests: tiny configs on the offline digits data (CPU, seconds)."""

from pathlib import Path

from erasediff.experiment import load_config

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "DDPM" / "configs" / "digits" / "smoke"

# A smaller net than the demo's so that a step takes milliseconds.
TINY = [
    "model.arch.block_out_channels=[16, 32]",
    "model.arch.down_block_types=[DownBlock2D, DownBlock2D]",
    "model.arch.up_block_types=[UpBlock2D, UpBlock2D]",
    "model.arch.norm_num_groups=8",
    "data.batch_size=16",
    "device=cpu",
]


def tiny_config(name: str, *overrides: str):
    """A smoke config (`pretrain` or `erasediff`) shrunk further by TINY and `overrides`."""
    return load_config(SMOKE / f"{name}.yaml", [*TINY, *overrides])
