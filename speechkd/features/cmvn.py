"""Global cepstral mean and variance normalisation over the training features."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from speechkd.utils import atomic_write_text


@dataclass
class CMVNStats:
    """Per-dimension ``mean`` and ``std`` (float64 accumulation), plus the frame ``count``."""

    mean: np.ndarray
    std: np.ndarray
    count: int

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps({"mean": self.mean.tolist(), "std": self.std.tolist(),
                                                  "count": self.count}))

    @classmethod
    def load(cls, path: str | Path) -> "CMVNStats":
        d = json.loads(Path(path).read_text())
        st = cls(np.asarray(d["mean"], dtype=np.float64), np.asarray(d["std"], dtype=np.float64), int(d["count"]))
        if not (np.isfinite(st.mean).all() and np.isfinite(st.std).all() and (st.std > 0).all()):
            raise ValueError(f"{path}: CMVN statistics hold NaN/Inf or a non-positive std; rerun featurize")
        return st


def cmvn_sums(chunks: Iterable[np.ndarray]) -> tuple[np.ndarray | None, np.ndarray | None, int]:
    """Per-dimension sums of the frames of ``(frames, dim)`` chunks and of their squares (float64), and the
    frame count (``None`` sums when there is no frame)."""
    s = sq = None
    n = 0
    for c in chunks:
        c64 = np.asarray(c, dtype=np.float64)
        if c64.size == 0:
            continue
        s = c64.sum(0) if s is None else s + c64.sum(0)
        sq = (c64**2).sum(0) if sq is None else sq + (c64**2).sum(0)
        n += c64.shape[0]
    return s, sq, n


def compute_cmvn(chunks: Iterable[np.ndarray], *, floor: float = 1e-5) -> CMVNStats:
    """Accumulate statistics over ``(frames, dim)`` chunks; ``std`` is floored at ``floor``."""
    s, sq, n = cmvn_sums(chunks)
    if n == 0 or s is None or sq is None:
        raise ValueError("no frames to compute CMVN statistics from")
    return stats_from_sums(s, sq, n, floor=floor)


def stats_from_sums(s: np.ndarray, sq: np.ndarray, n: int, *, floor: float = 1e-5) -> CMVNStats:
    """Statistics from per-dimension sums of frames and of their squares over ``n`` frames."""
    mean = s / n
    var = np.maximum(sq / n - mean**2, 0.0)
    std = np.maximum(np.sqrt(var), floor)
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        raise ValueError(f"CMVN statistics over {n} frames are not finite: the features hold NaN/Inf or values "
                         "too large to square")
    return CMVNStats(mean, std, n)


def apply_cmvn(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` broadcast over ``(..., dim)``."""
    return (x - mean) / std


class GlobalCMVN(torch.nn.Module):
    """Thin module holding CMVN as buffers (so it travels with a model's state dict)."""

    def __init__(self, stats: CMVNStats):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(stats.mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(stats.std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_cmvn(x, self.mean, self.std)
