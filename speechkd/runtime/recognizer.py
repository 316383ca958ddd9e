"""Streaming CTC recognition with an exported speechkd model.

Per stream: audio in chunks -> kaldi-native-fbank online fbank (options from the model's metadata)
-> ONNX Runtime with the LSTM state carried between chunks -> incremental greedy CTC decoding. A
service calls :meth:`StreamingRecognizer.accept_waveform` once per chunk, reads
:meth:`StreamingRecognizer.result` (partial text), and calls
:meth:`StreamingRecognizer.input_finished` at the end of the stream, which feeds the student's KD
delay worth of trailing silence so the last token is not lost, then finalises the result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REQUIRED = ("speechkd_format", "sample_rate", "fbank", "stack", "feat_dim", "vocab_size", "blank_id",
            "chunk_frames", "num_layers", "hidden_size", "delay_frames", "frame_ms", "flush_frames")


class ModelError(ValueError):
    """A file that is not a speechkd streaming model, or one whose metadata is incomplete."""


@dataclass
class Result:
    """``text`` so far; ``tokens`` and ``times_ms`` (the time of the output frame at which each token was
    emitted, from the stream start); ``is_final`` once :meth:`StreamingRecognizer.input_finished` ran."""

    text: str = ""
    tokens: list[int] = field(default_factory=list)
    times_ms: list[float] = field(default_factory=list)
    is_final: bool = False


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """``(samples float32 in [-1, 1], mono, sample_rate)`` of an audio file (soundfile); stereo is downmixed.
    Errors name the file."""
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: audio file does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: audio file is empty (0 bytes)")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile raises several types
        raise ValueError(f"{path}: cannot decode audio: {e}") from None
    if data.shape[0] == 0:
        raise ValueError(f"{path}: audio has no samples")
    return (data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]).astype(np.float32), int(sr)


def resample(samples: np.ndarray, sr: int, target: int) -> np.ndarray:
    if sr == target:
        return samples
    import soxr

    return soxr.resample(samples, sr, target).astype(np.float32)


class StreamingRecognizer:
    """One stream of recognition with an exported model. ``model``: the ``model.onnx`` path; ``tokens.txt``
    is read from beside it. ``chunk_frames`` overrides the model's default chunk (input frames)."""

    def __init__(self, model: str | Path, *, tokens: str | Path | None = None, chunk_frames: int | None = None,
                 num_threads: int = 1, keep_log_probs: bool = False):
        import onnxruntime as ort

        model = Path(model)
        if not model.exists():
            raise ModelError(f"{model}: model file not found")
        so = ort.SessionOptions()
        so.intra_op_num_threads = num_threads
        so.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own types for a file that is not ONNX
            raise ModelError(f"{model}: not an ONNX model ({str(e).splitlines()[0][:200]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        missing = [k for k in REQUIRED if k not in meta]
        if missing:
            raise ModelError(f"{model}: not a speechkd streaming model (metadata lacks {', '.join(missing)}); "
                             "export it with `speechkd export`")
        self.meta = meta
        self.sample_rate = int(meta["sample_rate"])
        self.stack = int(meta["stack"])
        self.blank = int(meta["blank_id"])
        self.layers, self.hidden = int(meta["num_layers"]), int(meta["hidden_size"])
        self.frame_ms = float(meta["frame_ms"])
        self.delay_frames = int(meta["delay_frames"])
        self.flush_frames = int(meta["flush_frames"])
        chunk = int(chunk_frames or meta["chunk_frames"])
        self.chunk_frames = max(self.stack, chunk // self.stack * self.stack)
        self.fbank = json.loads(meta["fbank"])
        self.symbols = self._read_tokens(Path(tokens) if tokens else model.parent / "tokens.txt",
                                         int(meta["vocab_size"]))
        self.keep_log_probs = keep_log_probs
        self.reset()

    @staticmethod
    def _read_tokens(path: Path, vocab: int) -> list[str]:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ModelError(f"{path}: cannot read tokens: {e}") from None
        syms: dict[int, str] = {}
        for n, line in enumerate(lines, 1):
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit():
                raise ModelError(f"{path}:{n}: expected '<symbol> <id>'")
            syms[int(parts[1])] = parts[0]
        if sorted(syms) != list(range(vocab)):
            raise ModelError(f"{path}: ids must be 0..{vocab - 1} (the model's vocabulary), got {len(syms)} entries")
        return [syms[i] for i in range(vocab)]

    def _new_fbank(self):
        import kaldi_native_fbank as knf

        f = self.fbank
        o = knf.FbankOptions()
        fo = o.frame_opts
        fo.samp_freq = float(f["sample_rate"])
        fo.frame_length_ms = float(f["frame_length_ms"])
        fo.frame_shift_ms = float(f["frame_shift_ms"])
        fo.dither = float(f["dither"])
        fo.preemph_coeff = float(f["preemphasis"])
        fo.window_type = str(f["window"])
        fo.snip_edges = True  # as torchaudio's kaldi.fbank, which the model was trained on
        fo.remove_dc_offset = True
        o.mel_opts.num_bins = int(f["num_mel_bins"])
        o.mel_opts.low_freq = float(f["low_freq"])
        o.mel_opts.high_freq = float(f["high_freq"])
        o.energy_floor = 0.0
        o.use_energy = False
        return knf.OnlineFbank(o)

    # -- the API a service calls ---------------------------------------------------------------
    def reset(self) -> None:
        """Start a new stream (state, features and text cleared)."""
        self._fb = self._new_fbank()
        self._next_frame = 0  # fbank frames consumed
        self._popped = 0  # fbank frames discarded from kaldi-native-fbank's buffer
        # fbank frames not yet run (fewer than a chunk, or a partial stack), rows of (frames, feat_dim)
        self._pending = np.zeros((0, int(self.fbank["num_mel_bins"])), np.float32)
        self._h = np.zeros((self.layers, 1, self.hidden), np.float32)
        self._c = np.zeros((self.layers, 1, self.hidden), np.float32)
        self._out_frames = 0
        self._prev = self.blank
        self._result = Result()
        self._finished = False
        self.log_probs: list[np.ndarray] = []
        self.chunk_seconds: list[float] = []  # wall time of each ONNX call (for latency figures)
        self.resampled_from: int | None = None

    def accept_waveform(self, samples, sample_rate: int) -> None:
        """Feed audio: ``samples`` float in [-1, 1], mono ``(n,)`` or ``(n, channels)`` (downmixed),
        at ``sample_rate`` (resampled to the model's rate if different)."""
        if self._finished:
            raise RuntimeError("input_finished() was called; call reset() to start a new stream")
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim == 2:
            x = x.mean(axis=1)
        if x.ndim != 1:
            raise ValueError(f"samples must be (n,) or (n, channels), got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("samples contain NaN or Inf")
        if int(sample_rate) != self.sample_rate:
            self.resampled_from = int(sample_rate)
            x = resample(x, int(sample_rate), self.sample_rate)
        if x.size:
            self._fb.accept_waveform(float(self.sample_rate), x.tolist())
            self._drain(final=False)

    def input_finished(self) -> Result:
        """End of stream: flush the KD delay (trailing silence), run what is left, finalise the result."""
        if not self._finished:
            if self.flush_frames:
                n = int(round(self.flush_frames * float(self.fbank["frame_shift_ms"]) * self.sample_rate / 1000))
                self._fb.accept_waveform(float(self.sample_rate), [0.0] * n)
            self._fb.input_finished()
            self._drain(final=True)
            self._finished = True
            self._result.is_final = True
        return self.result()

    def result(self) -> Result:
        r = self._result
        return Result(r.text, list(r.tokens), list(r.times_ms), r.is_final)

    # -- internals -----------------------------------------------------------------------------
    def _drain(self, final: bool) -> None:
        ready = self._fb.num_frames_ready
        if self._next_frame < ready:
            # np.array copies: get_frame returns a view of a buffer that pop() recycles
            new = np.array([self._fb.get_frame(i) for i in range(self._next_frame, ready)], np.float32)
            self._pending = np.concatenate([self._pending, new]) if len(self._pending) else new
            self._next_frame = ready
            self._fb.pop(ready - self._popped)  # the fbank keeps every frame unless told: memory stays bounded
            self._popped = ready
        n = len(self._pending) // self.chunk_frames * self.chunk_frames
        for i in range(0, n, self.chunk_frames):
            self._run(self._pending[i : i + self.chunk_frames])
        self._pending = self._pending[n:]
        if final:
            n = len(self._pending) // self.stack * self.stack  # a trailing partial stack is dropped, as offline
            if n:
                self._run(self._pending[:n])
            self._pending = self._pending[:0]

    def _run(self, frames: np.ndarray) -> None:
        import time

        x = np.ascontiguousarray(frames)[None]
        t0 = time.perf_counter()
        lp, self._h, self._c = self.session.run(None, {"x": x, "h": self._h, "c": self._c})
        self.chunk_seconds.append(time.perf_counter() - t0)
        lp = lp[0]
        if self.keep_log_probs:
            self.log_probs.append(lp)
        if not len(lp):
            return
        # greedy CTC, vectorised over the chunk: a token is emitted where the best symbol is not blank
        # and differs from the frame before (the previous chunk's last frame carries over)
        best = lp.argmax(-1)
        prev = np.concatenate(([self._prev], best[:-1]))
        emit = np.flatnonzero((best != self.blank) & (best != prev))
        self._prev = int(best[-1])
        self._out_frames += lp.shape[0]
        if emit.size:  # the text changes only with new tokens (detokenizing is O(tokens so far))
            r = self._result
            start = self._out_frames - lp.shape[0]
            r.tokens.extend(best[emit].tolist())
            r.times_ms.extend(((start + emit) * self.frame_ms).tolist())
            r.text = detokenize([self.symbols[k] for k in r.tokens])


def detokenize(symbols: list[str]) -> str:
    """Text of emitted symbols: sentencepiece pieces (``▁`` starts a word) or characters (``|`` is a space)."""
    s = "".join(symbols)
    s = s.replace("\u2581", " ") if any(p.startswith("\u2581") for p in symbols) else s.replace("|", " ")
    return " ".join(s.split())


def transcribe_file(rec: StreamingRecognizer, path: str | Path, chunk_ms: float = 160.0, on_partial=None) -> Result:
    """Stream one file through ``rec`` in ``chunk_ms`` pieces (a fresh stream); ``on_partial(text)`` is
    called whenever the partial text changes."""
    wav, sr = read_audio(path)
    rec.reset()
    step = max(1, int(sr * chunk_ms / 1000))
    last = ""
    for i in range(0, len(wav), step):
        rec.accept_waveform(wav[i : i + step], sr)
        if on_partial is not None and rec.result().text != last:
            last = rec.result().text
            on_partial(last)
    return rec.input_finished()
