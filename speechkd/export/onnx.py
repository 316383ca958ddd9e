"""Export a unidirectional LSTM-CTC model as a streaming ONNX graph.

Graph (opset 17, exported with ``torch.onnx.export(..., dynamo=False)``)::

    inputs   x (batch, frames, feat_dim)    raw log-mel fbank, frames a multiple of ``stack``
             h (layers, batch, hidden)      LSTM hidden state (zeros at the start of a stream)
             c (layers, batch, hidden)      LSTM cell state
    outputs  log_probs (batch, frames / stack, vocab)   natural-log CTC posteriors
             h_out, c_out                   the state to feed with the next chunk

Global CMVN and frame stacking are inside the graph. A chunk must hold a multiple of ``stack``
frames: the runtime keeps the remainder for the next chunk (what :meth:`LSTMCTC.step` does), and at
the end of a stream a trailing partial stack is dropped, as offline. Batch and time are dynamic.

The ONNX metadata (``custom_metadata_map``, string values) holds everything a runtime needs:
``speechkd_format``, ``sample_rate``, ``fbank`` (JSON of every fbank option), ``frame_shift_ms``,
``stack``, ``frame_ms`` (one output frame), ``feat_dim``, ``vocab_size``, ``blank_id``,
``tokenizer_kind``, ``chunk_frames`` (default input frames per chunk), ``num_layers``,
``hidden_size``, ``state_shape``, ``delay_frames`` / ``delay_ms`` (how late the KD student emits;
a runtime feeds that much trailing silence at the end of a stream), ``flush_frames`` (input
frames of silence to feed at the end), ``chunk_rule`` and ``fbank_framing`` (in words),
``waveform_scale`` (1: fbank is computed on samples in [-1, 1], not on Kaldi's int16 scale) and
``waveform`` (the same in words), ``source`` (the stage and file name of the model bundle) and
``provenance`` (JSON: the recipe, stage and fingerprint the bundle records). Every value comes from the
model bundle (:mod:`speechkd.models.bundle`), never from files beside it. The graph is a thin shell
around the one streaming core, :func:`speechkd.models.streaming.stream_chunk`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from speechkd.models.bundle import ModelBundle, load_bundle
from speechkd.models.lstm_ctc import LSTMCTC
from speechkd.models.streaming import stream_chunk
from speechkd.utils import atomic_write_text, clean_on_failure

log = logging.getLogger(__name__)

FORMAT = "speechkd-streaming-lstm-ctc-v1"
OPSET = 17
MAX_DELAY = 1000  # output frames; a runtime feeds delay * stack frames of silence at the end of a stream
# files an export writes into a model folder; a new export removes them all first, so a folder never
# holds files of two different models (a baseline's model.int8.onnx beside a student's model.onnx)
ARTIFACTS = ("model.onnx", "model.int8.onnx", "tokens.txt", "model-inferred.onnx", ".model.onnx.tmp",
             ".model.int8.onnx.tmp")


class ExportError(ValueError):
    """A model that cannot be exported for streaming (the message says why)."""


class StreamingGraph(nn.Module):
    """``(x, h, c) -> (log_probs, h_out, c_out)``: one chunk of the streaming model (see module docstring)."""

    def __init__(self, model: LSTMCTC):
        super().__init__()
        self.model = model.eval()

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        m = self.model
        return stream_chunk(x, h, c, cmvn_mean=m.cmvn_mean, cmvn_std=m.cmvn_std, stack=m.cfg.stack, lstms=m.fwd,
                            out=m.out)


def streaming_bundle(model_path: str | Path) -> ModelBundle:
    """The model bundle at ``model_path``, checked to be exportable as a streaming graph."""
    bundle = load_bundle(model_path)
    cfg = bundle.cfg
    if cfg.bidirectional:
        raise ExportError(f"{model_path}: a bidirectional model needs the whole utterance and cannot stream; "
                          "export a unidirectional student (or the baseline)")
    if cfg.proj:
        raise ExportError(f"{model_path}: LSTM projections (proj={cfg.proj}) have no ONNX LSTM equivalent")
    return bundle


def export_graph(graph: nn.Module, args: tuple, dst: Path, input_names: list[str], output_names: list[str],
                 dynamic_axes: dict) -> None:
    """``torch.onnx.export`` of ``graph`` (TorchScript exporter, explicit LSTM state) to ``dst``."""
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*batch_size other than 1.*")  # h0/c0 are inputs: batch is free
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")  # dynamo=False on purpose
        torch.onnx.export(graph, args, str(dst), dynamo=False, opset_version=OPSET, input_names=input_names,
                          output_names=output_names, dynamic_axes=dynamic_axes)


def write_tokens(tokens: list[str], path: Path) -> None:
    """``symbol id`` per line, the blank named ``<blk>`` (the sherpa-onnx / icefall tokens.txt)."""
    lines = []
    for i, t in enumerate(tokens):
        if any(ch.isspace() for ch in t):
            raise ExportError(f"token {i} {t!r} contains whitespace; tokens.txt cannot hold it")
        lines.append(f"{t} {i}")
    atomic_write_text(path, "\n".join(lines) + "\n")


def clear_model_dir(out_dir: Path) -> None:
    """Remove what an earlier export wrote into ``out_dir`` (see ``ARTIFACTS``); other files stay."""
    for n in ARTIFACTS:
        (out_dir / n).unlink(missing_ok=True)


def finish_onnx(tmp: Path, meta: dict[str, Any], dst: Path) -> None:
    """Add ``meta`` (values as strings) to the ONNX model at ``tmp`` and move it to ``dst``."""
    import onnx

    proto = onnx.load(str(tmp))
    for k, v in meta.items():
        p = proto.metadata_props.add()
        p.key, p.value = k, str(v)
    onnx.save(proto, str(tmp))
    tmp.replace(dst)


def export_streaming(model_path: str | Path, out_dir: str | Path, *, chunk_ms: float = 160.0,
                     delay_frames: int | None = None) -> dict[str, Any]:
    """Export the model bundle at ``model_path`` (a ``model.safetensors`` of a train, distill or qat stage) to
    ``out_dir/model.onnx`` and ``out_dir/tokens.txt``; the fbank options, tokenizer and delay come from the
    bundle (``delay_frames`` overrides the delay). Returns the metadata written."""
    model_path, out_dir = Path(model_path), Path(out_dir)
    bundle = streaming_bundle(model_path)
    model, cfg, tok, fbank = bundle.model.eval(), bundle.cfg, bundle.tokenizer, bundle.fbank
    delay = bundle.delay_frames if delay_frames is None else int(delay_frames)
    if not 0 <= delay <= MAX_DELAY:
        raise ExportError(f"delay_frames must be in [0, {MAX_DELAY}] output frames, got {delay}")
    chunk = max(cfg.stack, int(round(chunk_ms / fbank.frame_shift_ms / cfg.stack)) * cfg.stack)
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_model_dir(out_dir)
    x = torch.zeros(1, chunk, cfg.input_dim)
    h = torch.zeros(cfg.layers, 1, cfg.hidden)
    c = torch.zeros(cfg.layers, 1, cfg.hidden)
    tmp = out_dir / ".model.onnx.tmp"
    with clean_on_failure(out_dir, ARTIFACTS, "model.onnx", ExportError):
        export_graph(StreamingGraph(model), (x, h, c), tmp, ["x", "h", "c"], ["log_probs", "h_out", "c_out"],
                     {"x": {0: "batch", 1: "frames"}, "h": {1: "batch"}, "c": {1: "batch"},
                      "log_probs": {0: "batch", 1: "out_frames"}, "h_out": {1: "batch"}, "c_out": {1: "batch"}})
    meta = {
        "speechkd_format": FORMAT, "sample_rate": fbank.sample_rate, "fbank": json.dumps(asdict(fbank)),
        "frame_shift_ms": fbank.frame_shift_ms, "stack": cfg.stack, "frame_ms": fbank.frame_shift_ms * cfg.stack,
        "feat_dim": cfg.input_dim, "vocab_size": cfg.vocab_size, "blank_id": tok.blank_id,
        "tokenizer_kind": tok.kind, "chunk_frames": chunk, "num_layers": cfg.layers, "hidden_size": cfg.hidden,
        "state_shape": json.dumps([cfg.layers, "batch", cfg.hidden]), "delay_frames": delay,
        "delay_ms": delay * fbank.frame_shift_ms * cfg.stack, "flush_frames": delay * cfg.stack,
        "chunk_rule": f"x holds a multiple of stack={cfg.stack} frames; keep the remainder for the next chunk; "
                      "at the end of a stream feed flush_frames frames of silence, then drop a trailing partial stack",
        "fbank_framing": "kaldi snip_edges=true (frame t covers samples [t*hop, t*hop+window))",
        "waveform_scale": 1.0,
        "waveform": "mono float samples in [-1, 1] at sample_rate (int16 PCM divided by 32768), not Kaldi's "
                    "int16 scale",
        "source": f"{bundle.provenance.get('stage') or model_path.parent.name}/{model_path.name}",
        "provenance": json.dumps(bundle.provenance),
    }
    with clean_on_failure(out_dir, ARTIFACTS, "model.onnx", ExportError):
        finish_onnx(tmp, meta, out_dir / "model.onnx")
        write_tokens(tok.tokens(), out_dir / "tokens.txt")
    log.info("exported %s -> %s (chunk %d frames, delay %d frames)", model_path, out_dir / "model.onnx", chunk, delay)
    return {**meta, "bytes": (out_dir / "model.onnx").stat().st_size}
