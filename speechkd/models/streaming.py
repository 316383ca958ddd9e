"""The streaming LSTM-CTC arithmetic, written once.

:func:`stream_chunk` is a pure function with explicit parameters (torchaudio's ``functional`` style):
global CMVN, frame stacking, the unidirectional LSTM layers with carried state, and the output
projection to log-probabilities. :meth:`LSTMCTC.step <speechkd.models.lstm_ctc.LSTMCTC.step>`, the
streaming ONNX graph (:mod:`speechkd.export.onnx`) and the sherpa-onnx graph
(:mod:`speechkd.export.sherpa`) are thin shells around it, so the three cannot drift apart.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch


def stream_chunk(x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, *, cmvn_mean: torch.Tensor,
                 cmvn_std: torch.Tensor, stack: int, lstms: Sequence[Callable], out: Callable,
                 between: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunk of a unidirectional LSTM-CTC model.

    ``x (batch, frames, feat_dim)``: raw log-mel frames, ``frames`` a multiple of ``stack``;
    ``h (layers, batch, hidden)`` and ``c (layers, batch, hidden)``: the state after the previous
    chunk (zeros at the start of a stream). ``lstms``: one single-layer LSTM per layer, called as
    ``lstm(x, (h_i, c_i)) -> (y, (h_i', c_i'))``; ``out``: the output layer (hidden -> vocab logits);
    ``between``: applied before every layer after the first and before ``out`` (dropout in training,
    nothing at inference).

    Returns ``(log_probs (batch, frames // stack, vocab), h', c')``: natural-log posteriors of the
    stacked frames and the state to feed with the next chunk.
    """
    dim = cmvn_mean.numel() * stack  # a constant of the graph (the feature dimension is fixed by the model)
    x = (x - cmvn_mean) / cmvn_std
    x = x.reshape(x.shape[0], -1, dim)
    hs, cs = [], []
    for i, lstm in enumerate(lstms):
        if i > 0 and between is not None:
            x = between(x)
        x, (hi, ci) = lstm(x, (h[i : i + 1].contiguous(), c[i : i + 1].contiguous()))
        hs.append(hi)
        cs.append(ci)
    if between is not None:
        x = between(x)
    return out(x).log_softmax(-1), torch.cat(hs, 0), torch.cat(cs, 0)
