"""The streaming ONNX contract: a graph with explicit LSTM state, CMVN and frame stacking inside,
metadata that a runtime without Python or speechkd can read, and ``tokens.txt``."""

from speechkd.export.onnx import ExportError, export_streaming

__all__ = ["export_streaming", "ExportError"]
