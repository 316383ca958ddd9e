"""Small shared helpers: atomic writes, seeding, device choice, logging setup."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger("speechkd")


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)  # elsewhere: the classic read-and-restore
    os.umask(old)
    return old


def default_mode(directory: bool = False) -> int:
    """The mode ``open()``/``mkdir()`` would give a new file or folder under the current umask.
    ``tempfile.mkstemp``/``mkdtemp`` create 0600/0700 regardless; atomic writes restore this."""
    return (0o777 if directory else 0o666) & ~current_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder, then rename.

    The file gets the mode a plain ``open(path, "w")`` would give it (the umask applies)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), default_mode())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def pick_device(name: str = "auto"):
    """Where a model runs: ``auto`` is CUDA when present (under DDP, the rank's GPU), else the CPU; or
    ``cpu``/``cuda``. The one place that chooses (training, decoding, caching and evaluation ask it)."""
    import torch
    import torch.distributed as dist

    if name == "auto":
        if dist.is_available() and dist.is_initialized() and torch.cuda.is_available():
            return torch.device("cuda", dist.get_rank() % torch.cuda.device_count())
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for, but no CUDA device is available")
    return torch.device(name)


def rank_world() -> tuple[int, int]:
    """``(rank, world size)`` of the process group ``torchrun`` started, or ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_all(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` outside a process group."""
    rank, world = rank_world()
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def set_threads(n: int) -> None:
    """Run torch and the numba kernels on ``n`` threads. numba's pool starts first: starting it sets the
    OpenMP thread count torch shares to numba's (a process told to use 1 thread would otherwise run torch on
    every core once a numba kernel ran, oversubscribing the cores of jobs run side by side or of torchrun
    ranks)."""
    import torch

    try:
        import numba

        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    except ImportError:  # pragma: no cover
        pass
    torch.set_num_threads(n)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (the one seed at entry)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass


def stable_hash(obj: Any) -> str:
    """Hex SHA-256 of the canonical JSON of ``obj``."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def chunked(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def progress(iterable=None, **kw):
    """tqdm with a calmer refresh when stderr is not a terminal (CI logs, files)."""
    import sys

    from tqdm import tqdm

    if not sys.stderr.isatty():
        kw.setdefault("mininterval", 15.0)
    return tqdm(iterable, **kw)


def _disk_full(e: BaseException, where: Path) -> bool:
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return True
    try:  # protobuf and ONNX Runtime report a short write as a corrupt file, not as ENOSPC
        return shutil.disk_usage(where).free < (1 << 20)
    except OSError:
        return False


@contextmanager
def clean_on_failure(out_dir: Path, names: tuple[str, ...], what: str, error: type[Exception] = OSError):
    """Run a step that writes files; on any failure remove ``names`` from ``out_dir`` (nothing half-written
    stays) and turn a full disk into a one-line ``error`` naming the file."""
    try:
        yield
    except BaseException as e:
        for n in names:
            (out_dir / n).unlink(missing_ok=True)
        if isinstance(e, Exception) and _disk_full(e, out_dir):
            raise error(f"{out_dir / what}: the disk is full (no space left while writing it); free some "
                        "space and run again (nothing half-written was left)") from None
        raise
