"""The sherpa-onnx flavour: a graph that ``sherpa_onnx.OnlineRecognizer.from_nemo_ctc`` loads.

sherpa-onnx's online NeMo CTC path binds inputs by position: features ``(batch, 80, window)``, an
int64 length, two float 4-D caches and an int64 cache length; outputs: log-probs ``(batch, frames,
vocab)``, lengths, then the three next caches. It reads ``window_size``, ``chunk_shift``,
``subsampling_factor``, ``vocab_size`` (without the blank) and ``cache_last_{channel,time}_dim1..3``.
Our LSTM state travels in the caches as ``(batch, layers, 1, hidden)``.

sherpa-onnx computes its own features and applies no CMVN. For NeMo CTC models, sherpa-onnx 2.0.1
computes librosa-style mel features: measured with a probe graph (its output token is the argmax mel
bin of each input frame), its frames equal kaldi-native-fbank's with ``is_librosa=True``, 0-8000 Hz,
a hann window, slaney norm, pre-emphasis 0.97 and ``snip_edges=false`` (:func:`sherpa_fbank_options`;
the kaldi defaults of its online transducer path do not apply). Our models train on kaldi fbank
(povey window, 20-8000 Hz), so the graph starts with a feature adapter: an affine map in the log
domain plus a small residual MLP (:class:`FeatureAdapter`), fitted by least squares on training audio
(:func:`fit_adapter`), then CMVN. The README gives the measured WER against our own runtime.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from speechkd.export.onnx import (ARTIFACTS, ExportError, clear_model_dir, export_graph, finish_onnx, streaming_bundle,
                                  write_tokens)
from speechkd.models.lstm_ctc import LSTMCTC
from speechkd.models.streaming import stream_chunk
from speechkd.utils import clean_on_failure

log = logging.getLogger(__name__)

def sherpa_fbank_options():
    """kaldi-native-fbank options equal to sherpa-onnx 2.0.1's features for NeMo CTC models (measured)."""
    import kaldi_native_fbank as knf

    o = knf.FbankOptions()
    fo = o.frame_opts
    fo.samp_freq, fo.dither, fo.snip_edges, fo.window_type, fo.preemph_coeff = 16000.0, 0.0, False, "hann", 0.97
    m = o.mel_opts
    m.num_bins, m.is_librosa, m.low_freq, m.high_freq, m.norm = 80, True, 0.0, 8000.0, "slaney"
    return o


def _knf_frames(opts, wav):
    """``(frames, bins)`` NumPy array of kaldi-native-fbank features of a whole waveform."""
    import kaldi_native_fbank as knf
    import numpy as np

    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(16000.0, wav.tolist())
    fb.input_finished()
    return np.stack([fb.get_frame(i) for i in range(fb.num_frames_ready)])


class FeatureAdapter(nn.Module):
    """sherpa-onnx's log-mel frames -> the model's: standardise, then an affine map plus a small residual MLP
    (the MLP recovers part of what sherpa's earlier log floor clips away)."""

    def __init__(self, dim: int = 80, hidden: int = 256):
        super().__init__()
        self.register_buffer("mu", torch.zeros(dim))
        self.register_buffer("sd", torch.ones(dim))
        self.lin = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, dim))

    def forward(self, x):
        z = (x - self.mu) / self.sd
        return self.lin(z) + self.mlp(z)


def adapter_frames(audio_files: list, fbank, max_files: int = 300):
    """Aligned ``(sherpa, ours)`` log-mel frames of up to ``max_files`` files (ours with ``snip_edges=False``)."""
    import numpy as np

    from speechkd.data.audio import load_audio
    from speechkd.features.fbank import compute_fbank

    theirs_opts = sherpa_fbank_options()
    X, Y = [], []
    for f in list(audio_files)[:max_files]:
        wav = load_audio(f, target_sr=16000)
        ours = compute_fbank(wav, fbank, snip_edges=False).numpy()
        theirs = _knf_frames(theirs_opts, wav)
        n = min(len(ours), len(theirs))
        X.append(theirs[:n])
        Y.append(ours[:n])
    if not X:
        raise ExportError("no audio to fit the sherpa-onnx feature adapter on")
    return torch.from_numpy(np.concatenate(X)).float(), torch.from_numpy(np.concatenate(Y)).float()


def fit_adapter(audio_files: list, fbank, max_files: int = 300, steps: int = 3000, seed: int = 0):
    """Fit a :class:`FeatureAdapter` by least squares (Adam, MSE) on 4/5 of the frames of ``audio_files``;
    returns ``(adapter, rms error on the held-out fifth)``. Deterministic for a seed."""
    X, Y = adapter_frames(audio_files, fbank, max_files)
    n = len(X) * 4 // 5
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ad = FeatureAdapter(X.shape[1])
    ad.mu.copy_(X[:n].mean(0))
    ad.sd.copy_(X[:n].std(0).clamp_min(1e-3))
    opt = torch.optim.Adam(ad.parameters(), 2e-3)
    for _ in range(steps):
        idx = torch.randint(0, n, (2048,), generator=g)
        loss = ((ad(X[idx]) - Y[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        err = float(((ad(X[n:]) - Y[n:]) ** 2).mean().sqrt())
    return ad.eval(), err


class SherpaGraph(nn.Module):
    def __init__(self, model: LSTMCTC, adapter: FeatureAdapter | None):
        super().__init__()
        self.model = model.eval()
        self.adapter = adapter

    def forward(self, x, length, cache_channel, cache_time, cache_len):
        m = self.model
        x = x.transpose(1, 2)  # (B, C, T) -> (B, T, C)
        if self.adapter is not None:
            x = self.adapter(x)  # sherpa-onnx's features -> the model's
        h = cache_channel[:, :, 0, :].transpose(0, 1)  # (B, L, 1, H) -> (L, B, H)
        c = cache_time[:, :, 0, :].transpose(0, 1)
        logp, h2, c2 = stream_chunk(x, h, c, cmvn_mean=m.cmvn_mean, cmvn_std=m.cmvn_std, stack=m.cfg.stack,
                                    lstms=m.fwd, out=m.out)
        out_len = torch.div(length, m.cfg.stack, rounding_mode="floor")
        return logp, out_len, h2.transpose(0, 1).unsqueeze(2), c2.transpose(0, 1).unsqueeze(2), cache_len + out_len


def export_sherpa(model_path: str | Path, out_dir: str | Path, *, chunk_ms: float = 160.0,
                  adapt_audio: list | None = None, adapter_steps: int = 3000) -> dict[str, Any]:
    """Write ``out_dir/model.onnx`` and ``tokens.txt`` for sherpa-onnx's online NeMo CTC recognizer from the
    model bundle at ``model_path``. ``adapt_audio``: training audio files to fit the feature adapter on
    (without it, no adapter: the model sees sherpa-onnx's features as they are, which costs accuracy)."""
    model_path, out_dir = Path(model_path), Path(out_dir)
    bundle = streaming_bundle(model_path)
    model, cfg, tok, fb = bundle.model.eval(), bundle.cfg, bundle.tokenizer, bundle.fbank
    if fb.sample_rate != 16000 or fb.num_mel_bins != 80 or fb.frame_shift_ms != 10.0:
        raise ExportError(f"{model_path}: sherpa-onnx computes 80-bin, 10 ms fbank at 16 kHz; the model was trained "
                          f"on {fb.num_mel_bins} bins, {fb.frame_shift_ms} ms at {fb.sample_rate} Hz")
    adapter, adapt_err = None, None
    if adapt_audio:
        adapter, adapt_err = fit_adapter(adapt_audio, fb, steps=adapter_steps)
        log.info("sherpa-onnx feature adapter: rms error %.3f (log-mel) on %d files", adapt_err,
                 min(len(adapt_audio), 300))
    window = max(cfg.stack, int(round(chunk_ms / 10.0 / cfg.stack)) * cfg.stack)
    L, H = cfg.layers, cfg.hidden
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_model_dir(out_dir)
    args = (torch.zeros(1, 80, window), torch.tensor([window], dtype=torch.int64), torch.zeros(1, L, 1, H),
            torch.zeros(1, L, 1, H), torch.zeros(1, dtype=torch.int64))
    tmp = out_dir / ".model.onnx.tmp"
    with clean_on_failure(out_dir, ARTIFACTS, "model.onnx", ExportError):
        export_graph(SherpaGraph(model, adapter), args, tmp,
                     ["audio_signal", "length", "cache_last_channel", "cache_last_time", "cache_last_channel_len"],
                     ["log_probs", "encoded_lengths", "cache_last_channel_next", "cache_last_time_next",
                      "cache_last_channel_len_next"],
                     {"audio_signal": {0: "batch"}, "length": {0: "batch"}, "cache_last_channel": {0: "batch"},
                      "cache_last_time": {0: "batch"}, "cache_last_channel_len": {0: "batch"},
                      "log_probs": {0: "batch"}})
    delay = bundle.delay_frames
    meta = {"model_type": "speechkd-lstm-ctc", "window_size": window, "chunk_shift": window,
            "subsampling_factor": cfg.stack, "vocab_size": cfg.vocab_size - 1,
            "cache_last_channel_dim1": L, "cache_last_channel_dim2": 1, "cache_last_channel_dim3": H,
            "cache_last_time_dim1": L, "cache_last_time_dim2": 1, "cache_last_time_dim3": H,
            "delay_frames": delay, "tail_padding_ms": (delay * cfg.stack + window) * 10,
            "feature_adapter": "none" if adapter is None else f"mlp, held-out rms {adapt_err:.3f}",
            "source": f"{bundle.provenance.get('stage') or model_path.parent.name}/{model_path.name}"}
    with clean_on_failure(out_dir, ARTIFACTS, "model.onnx", ExportError):
        finish_onnx(tmp, meta, out_dir / "model.onnx")
        # sherpa-onnx concatenates symbols; "▁" becomes a space in its text, so the word boundary is named so
        write_tokens(["\u2581" if t == "|" and tok.kind == "char" else t for t in tok.tokens()], out_dir / "tokens.txt")
    return {**meta, "bytes": (out_dir / "model.onnx").stat().st_size}
