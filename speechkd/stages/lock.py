"""Locking an experiment folder so that two runs never write it at once."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path


class LockedError(RuntimeError):
    """Another run holds the experiment folder."""


def _holder(fd: int) -> str:
    try:
        h = json.loads(os.pread(fd, 4096, 0).decode().split("\n")[0] or "{}")
    except (ValueError, OSError):
        h = {}
    if not h:
        return "another speechkd run"
    return (f"another speechkd run (pid {h.get('pid', '?')} on {h.get('host', '?')}, since {h.get('started', '?')}: "
            f"{h.get('command', '?')})")


def _take(path: Path, mode: int, what: str) -> int:
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        who = _holder(fd)
        os.close(fd)
        raise LockedError(f"{what} is in use by {who}; wait for it to finish, or give this run another "
                          "--exp-root") from None
    if mode == fcntl.LOCK_EX:
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join(sys.argv)[:500]})
        os.ftruncate(fd, 0)
        os.pwrite(fd, (info + "\n").encode(), 0)
    return fd


@contextmanager
def exp_lock(exp_dir: Path, stage: str | None = None, shared: bool = False):
    """Lock an experiment folder for a run (released when the process ends, even on SIGKILL).

    A run of several stages holds ``exp_dir/.lock`` exclusively. A run of exactly one stage (``--from S
    --to S``, which writes only ``S``) holds it shared plus ``exp_dir/.locks/S.lock`` exclusively, so
    different single stages can train side by side (``benchmarks/kd_sweep.py`` does), but never beside a
    run of several stages or of the same stage. ``shared`` holds only ``exp_dir/.lock`` shared: a run that
    starts its stages as single-stage runs of their own (``--jobs``). A refused run fails at once, naming the
    holder."""
    import fcntl

    exp_dir.mkdir(parents=True, exist_ok=True)
    fds = []
    try:
        if shared:
            fds.append(_take(exp_dir / ".lock", fcntl.LOCK_SH, str(exp_dir)))
        elif stage is None:
            fds.append(_take(exp_dir / ".lock", fcntl.LOCK_EX, str(exp_dir)))
        else:
            fds.append(_take(exp_dir / ".lock", fcntl.LOCK_SH, str(exp_dir)))
            (exp_dir / ".locks").mkdir(exist_ok=True)
            fds.append(_take(exp_dir / ".locks" / f"{stage}.lock", fcntl.LOCK_EX, f"stage {stage!r} of {exp_dir}"))
        yield
    finally:
        for fd in fds:
            os.close(fd)


