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
    sherpa: list[str] = field(default_factory=list, help="of those, models also exported for sherpa-onnx "
                                                         "(<model>/sherpa/), with a feature adapter")
    featurize: str = field("featurize", help="featurize stage whose train audio fits the sherpa feature adapter")
    adapter_files: int = field(300, help="sherpa: training files the feature adapter is fitted on")
    adapter_steps: int = field(3000, help="sherpa: optimisation steps of the feature adapter")

    def __post_init__(self):
        require(len(self.models) >= 1, "models", "name at least one model stage")
        require(len(set(self.models)) == len(self.models), "models", "names a stage twice")
        require(self.chunk_ms > 0, "chunk_ms", f"must be > 0, got {self.chunk_ms}")
        require(set(self.sherpa) <= set(self.models), "sherpa", "may only name models the stage exports")
        require(self.adapter_files >= 1 and self.adapter_steps >= 1, "adapter_files", "and adapter_steps must be >= 1")


def upstream(cfg: Config) -> list[tuple[str, str, tuple[str, ...]]]:
    ups = [(f"models[{i}]", m, ("train", "distill")) for i, m in enumerate(cfg.models)]
    if cfg.sherpa:
        ups.append(("featurize", cfg.featurize, ("featurize",)))
    return ups


def run(cfg: Config, ctx) -> dict[str, Any]:
    from speechkd.export import export_streaming

    out: dict[str, Any] = {"models": {}}
    for m in cfg.models:
        meta = export_streaming(ctx.stage_dir(m) / "model.safetensors", ctx.out_dir / m, chunk_ms=cfg.chunk_ms)
        out["models"][m] = {k: meta[k] for k in ("bytes", "chunk_frames", "delay_frames", "delay_ms", "frame_ms")}
        out["models"][m]["path"] = f"{m}/model.onnx"
        if m in cfg.sherpa:
            from speechkd.data.manifest import read_manifest
            from speechkd.export.sherpa import export_sherpa

            fdir = ctx.stage_dir(cfg.featurize)
            rows = read_manifest(fdir / "train.jsonl")
            step = max(1, len(rows) // cfg.adapter_files)
            audio = [u.resolve_audio(fdir) for u in rows[::step]][: cfg.adapter_files]
            sm = export_sherpa(ctx.stage_dir(m) / "model.safetensors", ctx.out_dir / m / "sherpa", chunk_ms=cfg.chunk_ms,
                               adapt_audio=audio, adapter_steps=cfg.adapter_steps)
            out["models"][m]["sherpa"] = {"path": f"{m}/sherpa/model.onnx", "bytes": sm["bytes"],
                                          "feature_adapter": sm["feature_adapter"],
                                          "tail_padding_ms": sm["tail_padding_ms"]}
    atomic_write_text(ctx.out_dir / "summary.json", json.dumps(out, indent=1) + "\n")
    return out
