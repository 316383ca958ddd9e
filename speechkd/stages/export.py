"""Stage ``export``: export streaming models (the students and the baseline) to ONNX.

Writes ``<model stage>/model.onnx`` and ``tokens.txt`` per exported model, and ``summary.json``
(bytes, chunk, delay per model). A bidirectional model cannot stream: its export stops with a message.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from speechkd.config import field, require
from speechkd.utils import atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class Config:
    models: list[str] = field(default_factory=lambda: ["baseline"], help="train/distill stages whose model is exported")
    chunk_ms: float = field(160.0, help="default chunk the runtime feeds (ms)")

    def __post_init__(self):
        require(len(self.models) >= 1, "models", "name at least one model stage")
        require(len(set(self.models)) == len(self.models), "models", "names a stage twice")
        require(self.chunk_ms > 0, "chunk_ms", f"must be > 0, got {self.chunk_ms}")


def upstream(cfg: Config) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(f"models[{i}]", m, ("train", "distill")) for i, m in enumerate(cfg.models)]


def run(cfg: Config, ctx) -> dict[str, Any]:
    from speechkd.export import export_streaming

    out: dict[str, Any] = {"models": {}}
    for m in cfg.models:
        meta = export_streaming(ctx.stage_dir(m) / "model.safetensors", ctx.out_dir / m, chunk_ms=cfg.chunk_ms)
        out["models"][m] = {k: meta[k] for k in ("bytes", "chunk_frames", "delay_frames", "delay_ms", "frame_ms")}
        out["models"][m]["path"] = f"{m}/model.onnx"
    atomic_write_text(ctx.out_dir / "summary.json", json.dumps(out, indent=1) + "\n")
    return out
