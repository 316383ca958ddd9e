"""Audio I/O through soundfile: load, downmix to mono, resample to 16 kHz.

Returned waveforms are float32 NumPy arrays of shape ``(samples,)`` in [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
MAX_PEAK = 100.0  # float audio is expected in [-1, 1]; beyond this it is corrupt (fbank would overflow)


class AudioError(ValueError):
    """Audio that cannot be used. ``reason`` is a short machine-readable code."""

    def __init__(self, path: str | Path, reason: str, detail: str):
        super().__init__(f"{path}: {detail}")
        self.path = str(path)
        self.reason = reason
        self.detail = detail


def resample(wav: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited sinc resampling (torchaudio) of a ``(samples,)`` float32 array."""
    if orig_sr == target_sr:
        return wav
    import torch
    import torchaudio.functional as AF

    out = AF.resample(torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)), orig_sr, target_sr)
    return out.numpy()


def load_audio(path: str | Path, *, offset: float | None = None, duration: float | None = None,
               target_sr: int = SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray:
    """Load ``path`` (any format libsndfile reads) as mono float32 at ``target_sr``.

    ``offset`` and ``duration`` are in seconds (``duration=None`` reads to the end). The header is
    read first: if what would be read is longer than ``max_seconds``, nothing is decoded and the
    error's reason is ``too_long``. Other reasons: ``missing``, ``not_a_file``, ``empty_file``,
    ``unreadable``, ``no_samples``, ``non_finite`` or ``out_of_range`` (a float file whose samples
    reach beyond +-``MAX_PEAK``: its features would not be finite).
    """
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise AudioError(path, "missing", "audio file does not exist")
    if not path.is_file():
        raise AudioError(path, "not_a_file", "is not a regular file (a folder, FIFO or device); give an audio file")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty_file", "audio file is empty (0 bytes)")
    offset = offset or 0.0
    try:
        with sf.SoundFile(str(path)) as f:
            sr = f.samplerate
            start = min(int(round(offset * sr)), f.frames)
            frames = f.frames - start if duration is None else min(int(round(duration * sr)), f.frames - start)
            if max_seconds is not None and frames / sr > max_seconds:
                raise AudioError(path, "too_long", f"{frames / sr:.2f}s is longer than max_duration={max_seconds}s "
                                                   "(header; not decoded)")
            if start:
                f.seek(start)
            data = f.read(frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as e:
        if isinstance(e, AudioError):
            raise
        raise AudioError(path, "unreadable", f"cannot decode audio: {e}") from None
    if data.shape[0] == 0:
        raise AudioError(path, "no_samples", "audio has no samples" + (f" at offset {offset}s" if offset else ""))
    wav = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    check_samples(wav, path)
    return resample(np.ascontiguousarray(wav, dtype=np.float32), sr, target_sr)


def check_samples(wav: np.ndarray, path: str | Path) -> None:
    """Refuse NaN/Inf samples (reason ``non_finite``) and float samples beyond +-``MAX_PEAK``
    (``out_of_range``; audio is expected in [-1, 1]). The one check every path applies: featurize, the
    torch and ONNX evaluators, the streaming runtime and sherpa-onnx scoring."""
    if not np.isfinite(wav).all():
        n = int((~np.isfinite(wav)).sum())
        raise AudioError(path, "non_finite", f"audio has {n} NaN/Inf samples")
    peak = float(np.max(np.abs(wav))) if wav.size else 0.0
    if peak > MAX_PEAK:
        raise AudioError(path, "out_of_range", f"samples reach {peak:.3g}; audio must lie in [-1, 1] (float files "
                                               f"beyond +-{MAX_PEAK:g} are refused: their features overflow)")


def audio_info(path: str | Path) -> tuple[int, int]:
    """``(sample_rate, frames)`` from the header, without decoding."""
    import soundfile as sf

    info = sf.info(str(path))
    return int(info.samplerate), int(info.frames)
