"""Run several `python -m erasediff` commands in one launched group of processes (tests/test_distributed.py).

    torchrun --standalone --nproc_per_node N tests/dist_driver.py COMMANDS.json RECORD_DIR [KILL_AFTER_STEP]

COMMANDS.json holds a list of argv lists (what follows `python -m erasediff`); they run one after the
other in the same processes, so the group starts (and pays its imports) once. Exits with the first
non-zero status. Every process appends one line per training step to RECORD_DIR/rank<r>.jsonl: the run
directory, the step, the step's logs as this process sees them and a checksum of its trainable weights,
so a test can compare the processes. KILL_AFTER_STEP: the main process SIGKILLs itself right after that
training step, as a node that dies (the launcher then stops the others).
"""

import json
import os
import signal
import sys

import torch

from erasediff import run
from erasediff.cli import main


def _instrument(record_dir: str, kill_after: int | None) -> None:
    real_step, real_execute = run.Run.step, run.Run.execute
    where = {}

    def execute(self, view, progress=True):
        where["run_dir"] = str(view.path)
        return real_execute(self, view, progress)

    def step(self):
        logs = real_step(self)
        s = self.state
        checksum = float(sum(p.detach().double().sum() for p in s.params))
        with open(os.path.join(record_dir, f"rank{s.procs.rank}.jsonl"), "a") as f:
            f.write(json.dumps({"run_dir": where["run_dir"], "step": s.step, "logs": logs, "checksum": checksum}) + "\n")
        if kill_after is not None and s.step == kill_after and s.procs.is_main:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return logs

    run.Run.execute, run.Run.step = execute, step


if __name__ == "__main__":
    torch.set_num_threads(1)
    _instrument(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
    with open(sys.argv[1]) as f:
        commands = json.load(f)
    for argv in commands:
        code = main(argv)
        if code:
            sys.exit(code)
