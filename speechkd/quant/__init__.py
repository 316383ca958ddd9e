"""int8 students: fake-quantized weights for quantization-aware distillation (:mod:`.fake`, applied to a
model from outside) and ONNX Runtime post-training quantization of an exported model (:mod:`.ort`)."""

from speechkd.quant.fake import bake, fake_quant_int8, fake_quantize, is_fake_quantized
from speechkd.quant.ort import QuantizationError, graph_report, quantize_int8

__all__ = ["bake", "fake_quant_int8", "fake_quantize", "is_fake_quantized", "quantize_int8", "graph_report",
           "QuantizationError"]
