"""One writer per output folder, and the one place that decides "new, resume or refuse" for a run.

Every command that writes a folder (a training run, a sample folder, an evaluation) first claims it:
the folder is created (parents too) and an exclusive lock is taken on DIR/.lock for as long as the
command runs. The lock is the kernel's (`fcntl.flock`): it goes away with the process on any exit,
kill -9 included, so a lock left by a dead process never blocks a re-run; the file keeps the pid
and host of the last holder, which a second process names in its error. The decision about the
folder's contents is taken while holding the lock, so two processes can never both find a folder
empty and both fill it. A claim that fails, or a command that fails before writing anything, leaves
the file system as it found it (docs/reliability.md).

A training run directory is a model only once its `COMPLETE` marker exists: it is written last,
after the weights, and removed first when a finished run is extended with more steps.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ErasediffError

LOCK = ".lock"
COMPLETE = "COMPLETE"
CONFIG = "config.resolved.yaml"


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 200).decode(errors="replace").split()
    if len(text) >= 2:
        return f"pid {text[0]} on {text[1]}"
    return "pid unknown"


def _visible(folder: Path) -> list[Path]:
    """The folder's entries that belong to a result (not the lock, not temporary files being written)."""
    return [p for p in folder.iterdir() if p.name != LOCK and not (p.name.startswith(".") and p.name.endswith(".tmp"))]


class FolderClaim:
    """An exclusive, process-lifetime claim on a folder (a context manager; see the module docstring).

    created: the topmost folder the claim made (None: the folder existed). On an exception inside the
    `with` block the folders the claim made are removed again if nothing but the lock was written.
    """

    def __init__(self, path: str | Path, what: str = "output folder"):
        self.path = Path(path)
        self.what = what
        self.created: Path | None = None  # the topmost folder this claim made (the path or an ancestor)
        self._made_lock = False
        self._fd: int | None = None
        if self.path.exists() and not self.path.is_dir():
            raise ErasediffError(f"{what} {self.path} is a file, not a folder: choose another path")
        missing = [p for p in (self.path, *self.path.parents) if not p.exists()]
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.created = missing[-1] if missing else None
            lock = self.path / LOCK
            self._made_lock = not lock.exists()
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            self._undo()
            raise ErasediffError(f"cannot write {what} {self.path}: {exc.strerror or exc} "
                                 "(choose a writable --output-dir)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise ErasediffError(f"cannot lock {what} {self.path}: {exc.strerror}") from None
            raise ErasediffError(f"{what} {self.path} is in use by another process ({holder}): wait for it to "
                                 "finish or stop it (one writer per folder)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd

    def _undo(self) -> None:
        """Remove what the claim itself made (lock file, new folders), if nothing else was written since."""
        try:
            if self._made_lock:
                (self.path / LOCK).unlink(missing_ok=True)
            if self.created is None:
                return
            for p in (self.path, *self.path.parents):
                if not p.is_dir() or any(p.iterdir()):
                    return
                p.rmdir()
                if p == self.created:
                    return
        except OSError:
            return  # best effort: never hide the error that brought us here

    def release(self, undo: bool = False) -> None:
        if self._fd is not None:
            if undo:
                self._undo()
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def is_empty(self) -> bool:
        return not _visible(self.path)

    def __enter__(self) -> "FolderClaim":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release(undo=exc_type is not None and self.is_empty())


@dataclass(frozen=True)
class RunDirView:
    """What a claim found (picklable: the main process sends it to the others under a launcher)."""

    path: Path
    resume: bool
    checkpoints: list[Path]
    complete: dict[str, Any] | None


@dataclass
class RunDirClaim:
    """The result of `claim_run_dir`: the held folder and what it holds."""

    folder: FolderClaim
    resume: bool  # continue the run found there (False: a new run in an empty folder)
    checkpoints: list[Path] = field(default_factory=list)  # newest first
    complete: dict[str, Any] | None = None  # the COMPLETE marker of a finished run

    @property
    def path(self) -> Path:
        return self.folder.path

    def view(self) -> RunDirView:
        return RunDirView(self.path, self.resume, list(self.checkpoints), self.complete)

    def __enter__(self) -> "RunDirClaim":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.folder.__exit__(exc_type, exc, tb)


def checkpoints_newest_first(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("step_*.safetensors"), reverse=True)


def read_complete(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / COMPLETE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def claim_run_dir(path: str | Path, resume: bool) -> RunDirClaim:
    """Claim a training run directory: the only place that decides new / resume / refuse.

    - empty or missing folder: a new run (`resume` there is refused: nothing to continue);
    - a run of this project (config.resolved.yaml) with `resume`: continue it from its newest
      checkpoint, from step 0 if it was stopped before its first one, or extend a finished run;
    - anything else is refused with one line that says what to do.
    """
    folder = FolderClaim(path, "run directory")
    run_dir = folder.path
    try:
        if folder.is_empty():
            if resume:
                raise ErasediffError(f"nothing to resume: {run_dir} holds no run (leave out --resume to start one)")
            return RunDirClaim(folder, resume=False)
        complete = read_complete(run_dir)
        ckpts = checkpoints_newest_first(run_dir)
        if not (run_dir / CONFIG).is_file():
            raise ErasediffError(f"{run_dir} is not empty and holds no run of this project (no {CONFIG}): choose "
                                 "another --output-dir (results are never overwritten)")
        if not resume:
            if complete is not None:
                raise ErasediffError(
                    f"run directory {run_dir} holds a finished run ({complete.get('steps')} steps): results are never "
                    "overwritten; choose another --output-dir or --seed, or pass --resume with a larger train.steps "
                    "to continue it")
            where = f"its newest checkpoint is {ckpts[0].name}" if ckpts else "it has no checkpoint yet"
            raise ErasediffError(f"run directory {run_dir} holds an unfinished run ({where}): pass --resume to "
                                 "continue it, or choose another --output-dir or --seed")
        return RunDirClaim(folder, resume=True, checkpoints=ckpts, complete=complete)
    except BaseException:
        folder.release(undo=folder.is_empty())
        raise
