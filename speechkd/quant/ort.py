"""Post-training int8 of an exported model with ONNX Runtime's dynamic quantization.

``quantize_dynamic(weight_type=QInt8, per_channel=True, reduce_range=True)`` on the LSTM, MatMul
and Gemm nodes. ``reduce_range`` puts the weights on [-64, 64]: ONNX Runtime's uint8 x int8 kernel on
x86 CPUs without VNNI (AVX2) sums pairs of products in int16 with saturation, which full-range
weights overflow (on a 2-core AMD EPYC with AVX2 only, a student's test WER rose from 62.52 in
fp32 to 64.26 in full-range int8; 62.42 with the reduced range). The same file is then exact on
every CPU.

* every ``LSTM`` becomes ``com.microsoft.DynamicQuantizeLSTM`` (int8 W and R, one scale per gate
  row; the input and the recurrent state are quantized to uint8 on the fly, per GEMM call). ONNX
  Runtime does this only when W and R are 3-D initializers and drops a ``layout`` attribute; our
  exporter writes exactly that (opset 17, ``layout`` absent), and :func:`quantize_int8` refuses
  a result in which any LSTM stayed float;
* every ``MatMul`` (the output layer; the sherpa feature adapter) becomes ``DynamicQuantizeLinear``
  + ``MatMulInteger`` with per-column int8 weights;
* everything else stays float: CMVN (``Sub``, ``Div``), the reshapes, bias ``Add``, ``LogSoftmax``.

The report says which nodes were quantized and which compute nodes stayed float.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

QUANTIZED_OPS = ("DynamicQuantizeLSTM", "MatMulInteger", "DynamicQuantizeMatMul", "QGemm", "ConvInteger")
FLOAT_WEIGHT_OPS = ("LSTM", "MatMul", "Gemm", "Conv", "GRU", "RNN")


class QuantizationError(RuntimeError):
    """Quantization left a weight-bearing node in float (the message names it)."""


def graph_report(path: str | Path) -> dict[str, Any]:
    """Node counts of an ONNX model: ``quantized`` (int8 nodes by type), ``float_weight_nodes`` (LSTM /
    MatMul / Gemm still in float, by name) and ``float_ops`` (every other op type and its count)."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    ops = Counter(n.op_type for n in g.node)
    return {
        "quantized": {k: v for k, v in ops.items() if k in QUANTIZED_OPS},
        "float_weight_nodes": [f"{n.op_type}:{n.name or n.output[0]}" for n in g.node if n.op_type in FLOAT_WEIGHT_OPS],
        "float_ops": {k: v for k, v in sorted(ops.items()) if k not in QUANTIZED_OPS
                      and k not in ("Constant", "DynamicQuantizeLinear")},
    }


def quantize_int8(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Write the int8 version of the ONNX model ``src`` to ``dst`` (its metadata is kept, plus
    ``quantization``); returns the :func:`graph_report` of the result with both sizes."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from speechkd.utils import clean_on_failure

    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp")
    inferred = src.with_name(f"{src.stem}-inferred.onnx")  # ONNX Runtime's shape-inference copy
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a 'run pre-processing' hint through the root logger
    with clean_on_failure(dst.parent, (tmp.name, dst.name, inferred.name), dst.name, QuantizationError):
        try:
            quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                             op_types_to_quantize=["LSTM", "MatMul", "Gemm"])
        finally:
            root.setLevel(level)
            inferred.unlink(missing_ok=True)
        _finish_int8(src, tmp, dst)
    return _report(src, dst)


def _finish_int8(src: Path, tmp: Path, dst: Path) -> None:
    import onnx

    before = graph_report(src)
    n_lstm = sum(1 for x in before["float_weight_nodes"] if x.startswith("LSTM:"))
    rep = graph_report(tmp)
    n_qlstm = rep["quantized"].get("DynamicQuantizeLSTM", 0)
    if rep["float_weight_nodes"] or n_qlstm != n_lstm:
        tmp.unlink(missing_ok=True)
        raise QuantizationError(f"{src}: ONNX Runtime left {rep['float_weight_nodes']} in float "
                                f"({n_qlstm} of {n_lstm} LSTMs quantized); an LSTM needs 3-D W/R initializers")
    proto = onnx.load(str(tmp))
    meta = {p.key: p for p in proto.metadata_props}
    value = ("int8: ONNX Runtime quantize_dynamic, weights int8 in [-64, 64] symmetric per channel (reduce_range), "
             "activations uint8 dynamic")
    if "quantization" in meta:
        meta["quantization"].value = value
    else:
        p = proto.metadata_props.add()
        p.key, p.value = "quantization", value
    onnx.save(proto, str(tmp))
    tmp.replace(dst)


def _report(src: Path, dst: Path) -> dict[str, Any]:
    rep = graph_report(dst)
    rep.update(bytes=dst.stat().st_size, fp32_bytes=src.stat().st_size,
               size_ratio=round(src.stat().st_size / dst.stat().st_size, 2))
    log.info("int8 %s: %s quantized, float ops %s, %.2fx smaller", dst, rep["quantized"], rep["float_ops"],
             rep["size_ratio"])
    return rep
