"""Fake-quantized int8 weights for quantization-aware distillation.

The grid is exactly the one ONNX Runtime's dynamic quantization puts the exported weights on
(``quantize_dynamic(..., weight_type=QInt8, per_channel=True, reduce_range=True)``, see
:mod:`speechkd.quant.ort`): symmetric int8 in [-64, 64], one scale per output channel,
``scale = max|row| / 64``, round half to even. A channel is every row of an LSTM's ``weight_ih`` /
``weight_hh`` (one gate unit each; ORT's ``DynamicQuantizeLSTM`` quantizes W and R per row of
``4 * hidden``) and every output unit of the final linear layer (``MatMulInteger`` per column of the
transposed weight). Biases, CMVN and the activations stay float here; ONNX Runtime quantizes the
activations dynamically (uint8, one scale per GEMM call), which the tests measure rather than simulate.

The reduced range (7-bit magnitudes) is what keeps the int8 model exact on every x86 CPU: ONNX
Runtime's uint8 x int8 kernel for CPUs without VNNI (AVX2) adds pairs of products in int16 with
saturation, and 2 * 255 * 127 overflows it while 2 * 255 * 64 = 32,640 does not.

The gradient is the straight-through estimator: the forward sees the quantized weight, the
backward passes the gradient to the float weight unchanged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

QMAX = 64  # ONNX Runtime's reduce_range int8 grid: no int16 saturation on AVX2 (see above)


def fake_quant_int8(w: torch.Tensor) -> torch.Tensor:
    """``w`` (out, in) on the per-row symmetric int8 grid, with a straight-through gradient."""
    scale = w.detach().abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / QMAX
    q = torch.clamp(torch.round(w.detach() / scale), -QMAX, QMAX) * scale
    return w + (q - w).detach()


def lstm_weights(lstm: nn.LSTM) -> dict[str, torch.Tensor]:
    """The fake-quantized input and recurrent weights of every layer and direction of ``lstm``."""
    return {name: fake_quant_int8(getattr(lstm, name)) for name in lstm._flat_weights_names
            if name.startswith(("weight_ih", "weight_hh"))}


class FakeQuantLSTM(nn.LSTM):
    """An ``nn.LSTM`` whose forward sees its weights on the int8 grid (the float parameters receive the
    gradient). Same parameters and state-dict keys as the ``nn.LSTM`` it was made from."""

    _swapped = False

    @classmethod
    def from_float(cls, lstm: nn.LSTM) -> "FakeQuantLSTM":
        new = cls(lstm.input_size, lstm.hidden_size, num_layers=lstm.num_layers, bias=lstm.bias,
                  batch_first=lstm.batch_first, dropout=lstm.dropout, bidirectional=lstm.bidirectional,
                  proj_size=lstm.proj_size, device="meta")
        for name in lstm._flat_weights_names:
            setattr(new, name, getattr(lstm, name))  # the same Parameter objects: optimizer state is shared
        new.train(lstm.training)
        return new

    def forward(self, input, hx=None):
        if self._swapped:  # inside functional_call below: the quantized tensors are in place
            return super().forward(input, hx)
        self._swapped = True
        try:
            return torch.func.functional_call(self, lstm_weights(self), (input,) if hx is None else (input, hx))
        finally:
            self._swapped = False


class FakeQuantLinear(nn.Linear):
    """An ``nn.Linear`` whose forward sees its weight on the int8 grid (per output unit)."""

    @classmethod
    def from_float(cls, lin: nn.Linear) -> "FakeQuantLinear":
        new = cls(lin.in_features, lin.out_features, bias=lin.bias is not None, device="meta")
        new.weight, new.bias = lin.weight, lin.bias
        new.train(lin.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, fake_quant_int8(self.weight), self.bias)


def fake_quantize(model: nn.Module) -> nn.Module:
    """Quantization-aware training from outside the model: every ``nn.LSTM`` and the output layer of an
    LSTM-CTC ``model`` is replaced (in place) by its fake-quantized twin sharing the same parameters, so
    the model's forward and :meth:`step` see int8-grid weights. Its state dict is unchanged; applying
    it twice changes nothing. Returns ``model``."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.LSTM) and not isinstance(child, FakeQuantLSTM):
            setattr(model, name, FakeQuantLSTM.from_float(child))
        elif isinstance(child, nn.ModuleList):
            for i, m in enumerate(child):
                if isinstance(m, nn.LSTM) and not isinstance(m, FakeQuantLSTM):
                    child[i] = FakeQuantLSTM.from_float(m)
    if isinstance(model.out, nn.Linear) and not isinstance(model.out, FakeQuantLinear):
        model.out = FakeQuantLinear.from_float(model.out)
    return model


def is_fake_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, (FakeQuantLSTM, FakeQuantLinear)) for m in model.modules())


@torch.no_grad()
def bake(model: nn.Module) -> nn.Module:
    """A copy of an LSTM-CTC model whose float weights *are* the int8 grid points, with plain modules
    (no fake quantization): what the QAT stage saves, so that decode, export and ONNX Runtime's
    quantizer all see the weights the student was fine-tuned with. Baking twice changes nothing."""
    out = copy.deepcopy(model)
    for parent in [out, *out.children()]:
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.LSTM):
                plain = nn.LSTM(child.input_size, child.hidden_size, num_layers=child.num_layers, bias=child.bias,
                                batch_first=child.batch_first, dropout=child.dropout,
                                bidirectional=child.bidirectional, proj_size=child.proj_size)
                plain.load_state_dict(child.state_dict())
                for wname, w in lstm_weights(plain).items():
                    getattr(plain, wname).copy_(w)
                plain.flatten_parameters()
                plain.train(child.training)
                setattr(parent, name, plain.to(child.weight_ih_l0.device))
    lin = out.out
    plain = nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None).to(lin.weight.device)
    plain.load_state_dict(lin.state_dict())
    plain.weight.copy_(fake_quant_int8(plain.weight))
    out.out = plain
    return out
