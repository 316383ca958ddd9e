"""Shared fixtures: a tiny synth-en corpus (built once per session) and audio helpers."""

from __future__ import annotations

import os
from pathlib import Path

# CUDA kernels run in numba's simulator where no GPU exists; this must happen before numba loads.
if "NUMBA_ENABLE_CUDASIM" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_HOURS = 0.02


def write_tone(path: Path, seconds: float = 1.0, sr: int = 16000, channels: int = 1, freq: float = 220.0,
               subtype: str | None = None) -> Path:
    """A deterministic tone with a little noise, so fbank has structure everywhere."""
    import soundfile as sf

    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(int(seconds * 1000) + channels)
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.shape)
    data = np.stack([x] * channels, 1) if channels > 1 else x
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data.astype(np.float32), sr, subtype=subtype)
    return path


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A ~1 minute synth-en corpus (all engines, all splits)."""
    from speechkd.data.synth import build_corpus, load_spec

    out = tmp_path_factory.mktemp("synth") / "corpus"
    build_corpus(load_spec(hours=TINY_HOURS), out, num_workers=2, progress=False)
    return out
