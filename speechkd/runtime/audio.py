"""Audio for the runtime, torch-free: files (any rate, resampled with soxr), a resampler that keeps its
state across chunks, and the WAV/raw-PCM parsing of a stream on stdin."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechkd.data.audio import check_samples  # torch-free: the same refusal as training-side audio I/O


def read_audio(path: str | Path, offset: float | None = None,
               duration: float | None = None) -> tuple[np.ndarray, int]:
    """``(samples float32 in [-1, 1], mono, sample_rate)`` of an audio file (soundfile); stereo is downmixed.
    ``offset``/``duration`` (seconds) read a segment. Errors name the file."""
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: audio file does not exist")
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file (a folder, FIFO or device); give an audio file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: audio file is empty (0 bytes)")
    try:
        with sf.SoundFile(str(path)) as f:
            sr = f.samplerate
            start = min(int(round((offset or 0.0) * sr)), f.frames)
            n = f.frames - start if duration is None else min(int(round(duration * sr)), f.frames - start)
            if start:
                f.seek(start)
            data = f.read(frames=n, dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile raises several types
        raise ValueError(f"{path}: cannot decode audio: {str(e)[:200]}") from None
    if data.shape[0] == 0:
        raise ValueError(f"{path}: audio has no samples" + (f" at offset {offset}s" if offset else ""))
    x = (data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]).astype(np.float32)
    check_samples(x, str(path))
    return x, int(sr)


def resample(samples: np.ndarray, sr: int, target: int) -> np.ndarray:
    """Resample a whole signal (soxr)."""
    if sr == target:
        return samples
    import soxr

    return soxr.resample(samples, sr, target).astype(np.float32)


class StreamResampler:
    """Resampling that keeps its filter state across chunks (soxr's stream API), so the output does not
    depend on how a stream is cut into chunks; :meth:`flush` returns what the filter still holds."""

    def __init__(self, in_rate: int, out_rate: int):
        import soxr

        self.in_rate, self.out_rate = int(in_rate), int(out_rate)
        self._rs = soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="float32", quality="HQ")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._rs.resample_chunk(np.ascontiguousarray(x, np.float32), last=False)

    def flush(self) -> np.ndarray:
        return self._rs.resample_chunk(np.zeros(0, np.float32), last=True)


# bounds every value of a model's metadata is checked against when it is loaded (a model is a file a
# user hands in: a wrong value must be a clear error, not a crash, a hang or a huge allocation)
@dataclass
class PcmFormat:
    """How a byte stream holds samples: ``rate`` (Hz), ``channels``, ``width`` (bytes per sample) and
    ``kind`` (``int`` little-endian signed PCM, or ``float`` IEEE)."""

    rate: int
    channels: int = 1
    width: int = 2
    kind: str = "int"

    def decode(self, buf: bytes) -> np.ndarray:
        """Whole frames of ``buf`` -> mono float32 in [-1, 1]."""
        if self.kind == "float":
            x = np.frombuffer(buf, "<f4" if self.width == 4 else "<f8").astype(np.float32)
        elif self.width == 1:  # 8-bit WAV is unsigned
            x = (np.frombuffer(buf, np.uint8).astype(np.float32) - 128.0) / 128.0
        elif self.width == 3:
            b = np.frombuffer(buf, np.uint8).reshape(-1, 3).astype(np.int32)
            v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
            x = (np.where(v >= 1 << 23, v - (1 << 24), v) / float(1 << 23)).astype(np.float32)
        else:
            x = np.frombuffer(buf, {2: "<i2", 4: "<i4"}[self.width]).astype(np.float32) / float(1 << (8 * self.width - 1))
        return x.reshape(-1, self.channels).mean(axis=1) if self.channels > 1 else x


def parse_wav_header(head: bytes) -> tuple[PcmFormat, int] | None:
    """``(format, offset of the first sample)`` when ``head`` starts with a RIFF/WAVE header (as ``arecord``
    writes by default, with a placeholder data size), ``None`` when it does not start with ``RIFF``.
    Raises ValueError for a WAV header it cannot stream (compressed formats, no ``data`` chunk in ``head``)."""
    import struct

    if head[:4] != b"RIFF":
        return None
    if head[8:12] != b"WAVE":
        raise ValueError("stdin starts with RIFF but is not a WAVE file")
    pos, fmt = 12, None
    while pos + 8 <= len(head):
        cid, size = head[pos:pos + 4], struct.unpack("<I", head[pos + 4:pos + 8])[0]
        if cid == b"fmt ":
            if pos + 24 > len(head):
                break
            tag, ch, rate, _, _, bits = struct.unpack("<HHIIHH", head[pos + 8:pos + 24])
            if tag == 0xFFFE and pos + 34 <= len(head):  # WAVE_FORMAT_EXTENSIBLE: the sub-format's tag
                tag = struct.unpack("<H", head[pos + 32:pos + 34])[0]
            if tag not in (1, 3) or bits % 8 or not 1 <= bits // 8 <= 8 or ch < 1 or rate < 1:
                raise ValueError(f"the WAV on stdin is not plain PCM or float (format tag {tag}, {bits} bits); "
                                 "convert it, e.g. sox in.wav -b 16 -e signed out.wav")
            if (tag == 3 and bits not in (32, 64)) or (tag == 1 and bits not in (8, 16, 24, 32)):
                raise ValueError(f"the WAV on stdin has {bits}-bit samples of a kind that cannot be read")
            fmt = PcmFormat(rate, ch, bits // 8, "float" if tag == 3 else "int")
        elif cid == b"data":
            if fmt is None:
                raise ValueError("the WAV on stdin has its data before its 'fmt ' chunk")
            return fmt, pos + 8
        pos += 8 + size + (size & 1)
    raise ValueError("the WAV header on stdin is incomplete or too long (no 'data' chunk in its first bytes)")


