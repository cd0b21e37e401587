"""Test-wide settings, and the pre-imported Python the script smoke tests run their commands with."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

FORKSERVER = Path(__file__).resolve().parent / "forkserver.py"
# what the experiment scripts' commands import; the server imports it once (tests/forkserver.py)
PRELOAD = [
    "erasediff.cli", "erasediff.loop", "erasediff.evaluate", "erasediff.sample_folders", "erasediff.report",
    "erasediff.classifier_training", "erasediff.methods.selective_amnesia", "erasediff.methods.salun",
    "erasediff.backbones.stable_diffusion", "erasediff.generate", "erasediff.metrics.nudity", "erasediff.precompute",
    "erasediff.evaluate_sd",
    "transformers.models.clip.modeling_clip", "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion",
]


@pytest.fixture(autouse=True)
def _one_thread():
    # pytest-xdist runs two workers on two cores: one thread each avoids oversubscription.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def fast_python(tmp_path_factory):
    """Path of a `python` for the scripts' PYTHON: commands fork from a pre-imported server."""
    folder = tmp_path_factory.mktemp("fs")
    sock = folder / "s"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen([sys.executable, str(FORKSERVER), "serve", str(sock), *PRELOAD], env=env,
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert server.stdout.readline().strip() == "ready", "the fork server did not start"
        shim = folder / "python"
        shim.write_text(f'#!/bin/sh\nFORKSERVER_PYTHON="{sys.executable}" exec "{sys.executable}" -S "{FORKSERVER}" '
                        f'client "{sock}" "$@"\n')
        shim.chmod(0o755)
        yield str(shim)
    finally:
        server.kill()
        server.wait()
