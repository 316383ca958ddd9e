"""Fake-quantized int8 weights for quantization-aware distillation.

The grid is exactly the one ONNX Runtime's dynamic quantization puts the exported weights on
(``quantize_dynamic(..., weight_type=QInt8, per_channel=True)``, see :mod:`speechkd.quant.ort`):
symmetric int8 in [-127, 127], one scale per output channel, ``scale = max|row| / 127``,
round half to even. That is every row of an LSTM's ``weight_ih`` / ``weight_hh`` (one gate unit
each; ORT's ``DynamicQuantizeLSTM`` quantizes W and R per row of ``4 * hidden``) and every output
unit of the final linear layer (``MatMulInteger`` per column of the transposed weight). Biases,
CMVN and the activations stay float here; ONNX Runtime quantizes the activations dynamically
(uint8, one scale per GEMM call), which the tests measure rather than simulate.

The gradient is the straight-through estimator: the forward sees the quantized weight, the
backward passes the gradient to the float weight unchanged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

QMAX = 127


def fake_quant_int8(w: torch.Tensor) -> torch.Tensor:
    """``w`` (out, in) on the per-row symmetric int8 grid, with a straight-through gradient."""
    scale = w.detach().abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / QMAX
    q = torch.clamp(torch.round(w.detach() / scale), -QMAX, QMAX) * scale
    return w + (q - w).detach()


def lstm_weights(lstm: nn.LSTM) -> dict[str, torch.Tensor]:
    """The fake-quantized input and recurrent weights of every layer and direction of ``lstm``."""
    return {name: fake_quant_int8(getattr(lstm, name)) for name in lstm._flat_weights_names
            if name.startswith(("weight_ih", "weight_hh"))}


def run_lstm(lstm: nn.LSTM, x: torch.Tensor, hc=None):
    """``lstm(x, hc)`` with its weights fake-quantized (the float parameters receive the gradient)."""
    return torch.func.functional_call(lstm, lstm_weights(lstm), (x,) if hc is None else (x, hc))


def run_linear(lin: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return nn.functional.linear(x, fake_quant_int8(lin.weight), lin.bias)


@torch.no_grad()
def bake(model: nn.Module) -> nn.Module:
    """A copy of an LSTM-CTC model whose float weights *are* the int8 grid points (fake quantization
    off): what the QAT stage saves, so that decode, export and ONNX Runtime's quantizer all see
    the weights the student was fine-tuned with. Baking twice changes nothing."""
    out = copy.deepcopy(model)
    out.fake_quant = False
    for m in out.modules():
        if isinstance(m, nn.LSTM):
            for name, w in lstm_weights(m).items():
                getattr(m, name).copy_(w)
            m.flatten_parameters()
    out.out.weight.copy_(fake_quant_int8(out.out.weight))
    return out
