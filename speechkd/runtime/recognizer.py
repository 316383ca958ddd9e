"""Streaming CTC recognition with an exported speechkd model.

Per stream: audio in chunks -> kaldi-native-fbank online fbank (options from the model's metadata)
-> ONNX Runtime with the LSTM state carried between chunks -> incremental greedy CTC decoding, or, with
``lm`` (an ARPA file, or True for the ``lm.arpa`` shipped beside the model), the LM-fused beam search carried
across chunks (partials from its best prefix, the final text what the offline search gives on the same
posteriors). A
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

from speechkd.data.audio import check_samples  # torch-free: the same refusal as training-side audio I/O
from speechkd.runtime.audio import PcmFormat, StreamResampler, parse_wav_header, read_audio, resample  # noqa: F401

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


BOUNDS = {"sample_rate": (1000, 384000), "stack": (1, 32), "feat_dim": (1, 1024), "vocab_size": (2, 1_000_000),
          "chunk_frames": (1, 100_000), "num_layers": (1, 128), "hidden_size": (1, 65536),
          "delay_frames": (0, 10_000), "flush_frames": (0, 100_000)}
WINDOWS = ("povey", "hamming", "hanning", "rectangular", "blackman", "sine")


def _int(meta, key: str, model: Path) -> int:
    lo, hi = BOUNDS[key]
    try:
        v = int(str(meta[key]).strip())
    except ValueError:
        raise ModelError(f"{model}: metadata {key}={str(meta[key])[:40]!r} is not an integer") from None
    if not lo <= v <= hi:
        raise ModelError(f"{model}: metadata {key}={v} is out of range [{lo}, {hi}]")
    return v


def _float(value, key: str, model: Path, lo: float, hi: float, *, open_lo: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ModelError(f"{model}: metadata {key}={str(value)[:40]!r} is not a number") from None
    if not (np.isfinite(v) and (v > lo if open_lo else v >= lo) and v <= hi):
        raise ModelError(f"{model}: metadata {key}={v:g} is out of range {'(' if open_lo else '['}{lo:g}, {hi:g}]")
    return v


def check_fbank(f, model: Path, sample_rate: int, feat_dim: int) -> dict:
    """The ``fbank`` metadata (a JSON object) checked value by value."""
    if not isinstance(f, dict):
        raise ModelError(f"{model}: metadata fbank is not a JSON object")
    need = ("sample_rate", "num_mel_bins", "frame_length_ms", "frame_shift_ms", "low_freq", "high_freq",
            "preemphasis", "window", "dither")
    missing = [k for k in need if k not in f]
    if missing:
        raise ModelError(f"{model}: metadata fbank lacks {', '.join(missing)}")
    if _float(f["sample_rate"], "fbank.sample_rate", model, 1000, 384000) != sample_rate:
        raise ModelError(f"{model}: metadata fbank.sample_rate differs from sample_rate={sample_rate}")
    if _float(f["num_mel_bins"], "fbank.num_mel_bins", model, 1, 1024) != feat_dim:
        raise ModelError(f"{model}: metadata fbank.num_mel_bins differs from feat_dim={feat_dim}")
    shift = _float(f["frame_shift_ms"], "fbank.frame_shift_ms", model, 1.0, 1000.0)
    _float(f["frame_length_ms"], "fbank.frame_length_ms", model, shift, 1000.0)
    nyq = sample_rate / 2
    _float(f["low_freq"], "fbank.low_freq", model, 0.0, nyq)
    _float(f["high_freq"], "fbank.high_freq", model, -nyq, nyq)
    _float(f["preemphasis"], "fbank.preemphasis", model, 0.0, 1.0)
    _float(f["dither"], "fbank.dither", model, 0.0, 1.0)
    if f["window"] not in WINDOWS:
        raise ModelError(f"{model}: metadata fbank.window={str(f['window'])[:40]!r} is not one of {', '.join(WINDOWS)}")
    return f


def _graph_dim(session, name: str, axis: int):
    for i in session.get_inputs():
        if i.name == name and len(i.shape) > axis and isinstance(i.shape[axis], int):
            return i.shape[axis]
    return None


def read_tokens(path: Path, vocab: int, blank_id: int) -> list[str]:
    """``tokens.txt`` (``symbol id`` per line): ids exactly 0..vocab-1, each once; symbols unique; the blank
    id holds ``<blk>`` (or ``<blank>``). Errors name ``file:line``."""
    if not path.is_file():
        raise ModelError(f"{path}: tokens file not found (it belongs beside the model)")
    if path.stat().st_size > 64 << 20:
        raise ModelError(f"{path}: tokens file is larger than 64 MB")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ModelError(f"{path}: tokens file is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ModelError(f"{path}: cannot read tokens: {e.strerror}") from None
    syms: dict[int, str] = {}
    seen: dict[str, int] = {}
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise ModelError(f"{path}:{n}: expected '<symbol> <id>'")
        sym, i = parts[0], int(parts[1])
        if i in syms:
            raise ModelError(f"{path}:{n}: id {i} appears twice")
        if sym in seen:
            raise ModelError(f"{path}:{n}: the symbol on this line appears twice (first at line {seen[sym]})")
        syms[i], seen[sym] = sym, n
    if sorted(syms) != list(range(vocab)):
        raise ModelError(f"{path}: ids must be 0..{vocab - 1} (the model's vocabulary), got {len(syms)} entries")
    if syms[blank_id] not in ("<blk>", "<blank>"):
        raise ModelError(f"{path}: id {blank_id} (the model's blank_id) is not <blk>")
    return [syms[i] for i in range(vocab)]


class StreamingRecognizer:
    """One stream of recognition with an exported model. ``model``: the ``model.onnx`` path; ``tokens.txt``
    is read from beside it. ``chunk_frames`` overrides the model's default chunk (input frames)."""

    def __init__(self, model: str | Path, *, tokens: str | Path | None = None, chunk_frames: int | None = None,
                 num_threads: int = 1, keep_log_probs: bool = False, lm: str | Path | bool | None = None,
                 lm_weights: dict | None = None):
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
        self.sample_rate = _int(meta, "sample_rate", model)
        self.stack = _int(meta, "stack", model)
        feat_dim = _int(meta, "feat_dim", model)
        vocab = _int(meta, "vocab_size", model)
        self.blank = int(meta["blank_id"]) if str(meta["blank_id"]).isdigit() else -1
        if not 0 <= self.blank < vocab:
            raise ModelError(f"{model}: metadata blank_id={str(meta['blank_id'])[:20]!r} is not an id in "
                             f"[0, {vocab - 1}]")
        self.layers, self.hidden = _int(meta, "num_layers", model), _int(meta, "hidden_size", model)
        self.delay_frames = _int(meta, "delay_frames", model)
        self.flush_frames = _int(meta, "flush_frames", model)
        try:
            fb = json.loads(meta["fbank"])
        except ValueError:
            raise ModelError(f"{model}: metadata fbank is not JSON") from None
        self.fbank = check_fbank(fb, model, self.sample_rate, feat_dim)
        self.frame_ms = _float(meta["frame_ms"], "frame_ms", model, 0.0, 10_000.0, open_lo=True)
        scale = _float(meta.get("waveform_scale", "1.0"), "waveform_scale", model, 0.0, 1e6, open_lo=True)
        if scale != 1.0:
            raise ModelError(f"{model}: metadata waveform_scale={scale:g}; this runtime feeds samples in [-1, 1] "
                             "(waveform_scale 1)")
        for name, axis, want, key in (("x", 2, feat_dim, "feat_dim"), ("h", 0, self.layers, "num_layers"),
                                      ("h", 2, self.hidden, "hidden_size")):
            got = _graph_dim(self.session, name, axis)
            if got is not None and got != want:
                raise ModelError(f"{model}: metadata {key}={want} does not match the graph's input {name!r} "
                                 f"(dimension {axis} is {got})")
        chunk = int(chunk_frames) if chunk_frames else _int(meta, "chunk_frames", model)
        self.chunk_frames = max(self.stack, chunk // self.stack * self.stack)
        self.symbols = read_tokens(Path(tokens) if tokens else model.parent / "tokens.txt", vocab, self.blank)
        self.keep_log_probs = keep_log_probs
        self.lm_decoder = None
        if lm is not None and lm is not False:
            from speechkd.lm.decoder import load_choice

            self.lm_decoder = load_choice(model, lm, self.symbols, self.blank, lm_weights)
        self.reset()

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
        self._beam = self.lm_decoder.stream() if self.lm_decoder is not None else None
        self.log_probs: list[np.ndarray] = []
        self.chunk_seconds: list[float] = []  # wall time of each ONNX call (for latency figures)
        self.resampled_from: int | None = None
        self._resampler: StreamResampler | None = None
        self._rate: int | None = None  # the stream's input sample rate (set by the first chunk)

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
        check_samples(x, "accept_waveform")
        sr = int(sample_rate)
        if sr <= 0:
            raise ValueError(f"sample_rate must be > 0 Hz, got {sample_rate}")
        if self._rate is not None and self._rate != sr:
            raise ValueError(f"the stream's sample rate changed from {self._rate} to {sr} Hz; "
                             "call reset() to start a new stream")
        self._rate = sr
        if sr != self.sample_rate:
            if self._resampler is None:
                self._resampler = StreamResampler(sr, self.sample_rate)
            self.resampled_from = sr
            x = self._resampler(x)
        self._feed(x)

    def _feed(self, x: np.ndarray) -> None:
        if x.size:
            self._fb.accept_waveform(float(self.sample_rate), x.tolist())
            self._drain(final=False)

    def input_finished(self) -> Result:
        """End of stream: flush the KD delay (trailing silence), run what is left, finalise the result."""
        if not self._finished:
            if self._resampler is not None:
                self._feed(self._resampler.flush())
            if self.flush_frames:
                n = int(round(self.flush_frames * float(self.fbank["frame_shift_ms"]) * self.sample_rate / 1000))
                self._fb.accept_waveform(float(self.sample_rate), [0.0] * n)
            self._fb.input_finished()
            self._drain(final=True)
            self._finished = True
            self._result.is_final = True
            if self._beam is not None:  # close the last word and score </s>: the offline search's result
                hyps = self._beam.finish(1)
                self._result.tokens = hyps[0].tokens if hyps else []
                self._result.text = detokenize([self.symbols[k] for k in self._result.tokens])
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
        if self._beam is not None:  # the LM-fused beam, carried across chunks; the partial is its best prefix
            self._out_frames += lp.shape[0]
            self._beam.accept(lp)
            r = self._result
            r.tokens = self._beam.best()
            r.text = detokenize([self.symbols[k] for k in r.tokens])
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


def transcribe_file(rec: StreamingRecognizer, path: str | Path, chunk_ms: float = 160.0, on_partial=None, *,
                    offset: float | None = None, duration: float | None = None) -> Result:
    """Stream one file (or its segment: ``offset``/``duration`` seconds) through ``rec`` in ``chunk_ms``
    pieces (a fresh stream); ``on_partial(text)`` is called whenever the partial text changes."""
    wav, sr = read_audio(path, offset, duration)
    rec.reset()
    step = max(1, int(sr * chunk_ms / 1000))
    last = ""
    for i in range(0, len(wav), step):
        rec.accept_waveform(wav[i : i + step], sr)
        if on_partial is not None and rec.result().text != last:
            last = rec.result().text
            on_partial(last)
    return rec.input_finished()


def transcribe_stream(rec: StreamingRecognizer, read, chunk_ms: float = 160.0, rate: int | None = None,
                      on_partial=None, head_bytes: int = 4096) -> tuple[Result, PcmFormat, bool]:
    """Stream a byte source (``read(n) -> bytes``, e.g. stdin) through ``rec``: a WAV stream (a RIFF header
    is detected and read) or raw 16-bit little-endian mono PCM at ``rate`` (default: the model's rate).
    Returns ``(result, format, was_wav)``."""
    head = b""
    while len(head) < 12:
        more = read(12 - len(head))
        if not more:
            break
        head += more
    wav = head[:4] == b"RIFF"
    if wav:
        while True:
            try:
                parsed = parse_wav_header(head)
                break
            except ValueError:
                if len(head) >= head_bytes:
                    raise
                more = read(min(512, head_bytes - len(head)))
                if not more:
                    raise
                head += more
        fmt, start = parsed
        if rate is not None and rate != fmt.rate:
            raise ValueError(f"--rate {rate} contradicts the WAV header on stdin ({fmt.rate} Hz)")
        pending = head[start:]
    else:
        fmt = PcmFormat(int(rate or rec.sample_rate))
        pending = head
    rec.reset()
    frame = fmt.width * fmt.channels
    step = max(1, int(fmt.rate * chunk_ms / 1000)) * frame
    last, eof = "", False
    while not eof:
        while len(pending) < step and not eof:
            more = read(step - len(pending))
            if more:
                pending += more
            else:
                eof = True
        n = len(pending) // frame * frame
        if n:
            rec.accept_waveform(fmt.decode(pending[:n]), fmt.rate)
            pending = pending[n:]
            if on_partial is not None and rec.result().text != last:
                last = rec.result().text
                on_partial(last)
    return rec.input_finished(), fmt, wav
