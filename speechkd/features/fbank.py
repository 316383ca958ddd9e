"""Kaldi-compatible log-mel filterbanks through ``torchaudio.compliance.kaldi.fbank``.

Functional core :func:`compute_fbank` with explicit parameters, and a thin :class:`Fbank`
module. Frames are 25 ms windows every 10 ms (``snip_edges``: ``1 + (samples - 400) // 160``
frames at 16 kHz); output is natural-log mel energies, shape ``(frames, num_mel_bins)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from speechkd.config import field, require


@dataclass
class FbankOptions:
    sample_rate: int = field(16000, help="input sample rate (Hz)")
    num_mel_bins: int = field(80, help="mel filters")
    frame_length_ms: float = field(25.0, help="window length (ms)")
    frame_shift_ms: float = field(10.0, help="hop (ms)")
    low_freq: float = field(20.0, help="lowest mel filter edge (Hz)")
    high_freq: float = field(0.0, help="highest edge (Hz); <= 0 means Nyquist + high_freq")
    preemphasis: float = field(0.97, help="pre-emphasis coefficient")
    window: Literal["povey", "hamming", "hanning", "rectangular", "blackman"] = field("povey", help="kaldi window type")
    dither: float = field(0.0, help="dither amount (0 keeps features deterministic)")

    def __post_init__(self):
        require(self.sample_rate > 0, "sample_rate", f"must be > 0 Hz, got {self.sample_rate}")
        require(self.num_mel_bins >= 1, "num_mel_bins", f"must be >= 1, got {self.num_mel_bins}")
        require(self.frame_length_ms > 0, "frame_length_ms", f"must be > 0, got {self.frame_length_ms}")
        require(0 < self.frame_shift_ms <= self.frame_length_ms, "frame_shift_ms",
                f"must be in (0, frame_length_ms={self.frame_length_ms}], got {self.frame_shift_ms}")
        nyquist = self.sample_rate / 2
        high = self.high_freq if self.high_freq > 0 else nyquist + self.high_freq
        require(0 <= self.low_freq < high <= nyquist, "low_freq",
                f"need 0 <= low_freq < high_freq <= Nyquist ({nyquist:g} Hz); got low {self.low_freq}, high {high:g}")
        require(0 <= self.preemphasis < 1, "preemphasis", f"must be in [0, 1), got {self.preemphasis}")
        require(self.dither >= 0, "dither", f"must be >= 0, got {self.dither}")

    def num_frames(self, num_samples: int) -> int:
        win = int(self.sample_rate * self.frame_length_ms / 1000)
        hop = int(self.sample_rate * self.frame_shift_ms / 1000)
        return 0 if num_samples < win else 1 + (num_samples - win) // hop


def compute_fbank(wav: np.ndarray | torch.Tensor, opts: FbankOptions | None = None, *,
                  snip_edges: bool = True) -> torch.Tensor:
    """Log-mel fbank of a mono waveform ``(samples,)`` in [-1, 1] -> ``(frames, num_mel_bins)`` float32.
    ``snip_edges=False`` centres frame t at t * hop (kaldi's other framing), for comparisons only."""
    from torchaudio.compliance import kaldi

    opts = opts or FbankOptions()
    x = torch.as_tensor(wav, dtype=torch.float32)
    if x.ndim != 1:
        raise ValueError(f"expected a mono waveform of shape (samples,), got {tuple(x.shape)}")
    if snip_edges and opts.num_frames(x.numel()) == 0:
        return torch.zeros(0, opts.num_mel_bins)
    return kaldi.fbank(
        x.unsqueeze(0), sample_frequency=opts.sample_rate, num_mel_bins=opts.num_mel_bins,
        frame_length=opts.frame_length_ms, frame_shift=opts.frame_shift_ms, low_freq=opts.low_freq,
        high_freq=opts.high_freq, preemphasis_coefficient=opts.preemphasis, window_type=opts.window,
        dither=opts.dither, energy_floor=0.0, snip_edges=snip_edges,
    )


class Fbank(torch.nn.Module):
    """Module wrapper: ``forward(wav (samples,)) -> (frames, num_mel_bins)``."""

    def __init__(self, opts: FbankOptions | None = None):
        super().__init__()
        self.opts = opts or FbankOptions()

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return compute_fbank(wav, self.opts)


def read_fbank_options(feat_dir) -> FbankOptions:
    """The fbank options a featurize stage used (its ``features.json``): what a model trained on its
    features records in its bundle, and what on-the-fly features are computed with. A missing or broken
    file is an error, never a default."""
    import json
    from pathlib import Path

    from speechkd.config import ConfigError, from_dict

    p = Path(feat_dir) / "features.json"
    try:
        raw = json.loads(p.read_text())["fbank"]
        return from_dict(FbankOptions, raw, where=f"{p}: fbank")
    except (OSError, ValueError, KeyError, TypeError, ConfigError) as e:
        reason = e.strerror if isinstance(e, OSError) else type(e).__name__
        raise ValueError(f"{p}: cannot read the featurize stage's fbank options ({reason}); rerun that stage") \
            from None
