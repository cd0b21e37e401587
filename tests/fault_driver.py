"""Run `python -m erasediff ARGS...` with one fault injected (tests/test_faults.py).

    python tests/fault_driver.py FAULT -- ARGS...

FAULT is one of
    none                         no fault
    signal:NAME:N                the process sends itself signal NAME (INT, TERM, KILL) right after step N
    kill:POINT:K                 SIGKILL at the K-th time (1-based) the run reaches POINT:
        ckpt_written             a checkpoint's temporary file is complete, not yet verified or renamed
        ckpt_half                a checkpoint's temporary file is half written
        ckpt_renamed             a checkpoint is in place, the directory entry not yet flushed
        ckpt_prune               a new checkpoint is in place, older ones not yet pruned
        model_saved              model/ is written, model_ema/ not yet (the end of a run)

The kernel delivers a self-sent signal as it would one from outside; SIGKILL cannot be caught, so
whatever the process was doing stops there, as on a cluster node that dies.
"""

import os
import signal
import sys

from erasediff import checkpoint
from erasediff import run as loop
from erasediff.cli import main


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _on_call(module, name: str, k: int, before: bool = False, action=None):
    """Replace module.name by a wrapper that dies on its k-th call (after the call unless `before`)."""
    real = getattr(module, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        hit = calls["n"] == k
        if hit and before:
            _die()
        out = real(*args, **kwargs)
        if hit:
            (action or (lambda *a: None))(*args, **kwargs)
            _die()
        return out

    setattr(module, name, wrapper)


def _truncate_half(tensors, path, metadata=None):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def install(fault: str) -> None:
    kind, *rest = fault.split(":")
    if kind == "none":
        return
    if kind == "signal":
        name, n = rest[0], int(rest[1])
        real_step = loop.Run.step

        def step(self):
            logs = real_step(self)
            if self.state.step == n:
                os.kill(os.getpid(), getattr(signal, f"SIG{name}"))
            return logs

        loop.Run.step = step
        return
    point, k = rest[0], int(rest[1])
    if point == "ckpt_written":
        _on_call(checkpoint, "save_file", k)
    elif point == "ckpt_half":
        _on_call(checkpoint, "save_file", k, action=_truncate_half)
    elif point == "ckpt_renamed":
        # fsync_dir follows the rename of a verified checkpoint
        _on_call(checkpoint, "fsync_dir", k, before=True)
    elif point == "ckpt_prune":
        _on_call(loop, "prune_checkpoints", k, before=True)
    elif point == "model_saved":
        _on_call(loop, "fix_modes", k)  # called once per saved model folder
    else:
        raise SystemExit(f"unknown fault point {point}")


if __name__ == "__main__":
    sep = sys.argv.index("--")
    install(sys.argv[1])
    sys.exit(main(sys.argv[sep + 1:]))
