"""Stage ``latency``: token emission latency of every exported streaming model, against a forced alignment
of the references on the teacher (see :mod:`speechkd.eval.latency`). Writes ``summary.json``: per model,
the median and 90th percentile of the emission latency and of the first-partial latency, in ms.

Under ``torchrun`` every rank aligns and measures every ``world``-th utterance; rank 0 merges the raw
latencies (the figures equal one process's).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from speechkd.config import check_name, field, require
from speechkd.stages import MODEL_STAGES
from speechkd.utils import atomic_write_text, gather_all, rank_world

DISTRIBUTED = True  # every rank measures a share of the utterances
ALONE = True  # it measures time: `run --jobs` starts nothing beside it


@dataclass
class Config:
    export: str = field("export", help="export stage whose models are measured")
    teacher: str = field("teacher", help="offline model whose Viterbi alignment gives the token end times")
    featurize: str = field("featurize", help="featurize stage holding the split")
    split: str = field("test", help="split measured")
    limit: int = field(0, help="measure only the first N utterances (0 = all)")
    chunk_ms: float = field(160.0, help="audio per chunk fed to the runtime (ms)")

    def __post_init__(self):
        check_name(self.split, "split", "split name")
        require(self.limit >= 0, "limit", f"must be >= 0, got {self.limit}")
        require(self.chunk_ms > 0, "chunk_ms", f"must be > 0, got {self.chunk_ms}")


def upstream(cfg: Config) -> list[tuple[str, str, tuple[str, ...]]]:
    return [("export", cfg.export, ("export",)), ("teacher", cfg.teacher, MODEL_STAGES),
            ("featurize", cfg.featurize, ("featurize",))]


def run(cfg: Config, ctx) -> dict[str, Any]:
    from speechkd.data.dataset import FeatureDataset
    from speechkd.data.manifest import read_manifest
    from speechkd.eval.latency import alignment_ends, measure_part, summarize
    from speechkd.models.bundle import load_bundle
    from speechkd.runtime.recognizer import StreamingRecognizer

    edir, tdir, fdir = ctx.stage_dir(cfg.export), ctx.stage_dir(cfg.teacher), ctx.stage_dir(cfg.featurize)
    teacher = load_bundle(tdir / "model.safetensors")
    tok = teacher.tokenizer
    manifest = fdir / f"{cfg.split}.jsonl"
    ds = FeatureDataset(manifest, tok, dim=teacher.cfg.input_dim)
    paths = {u.id: u.resolve_audio(fdir) for u in read_manifest(manifest)}
    exported = json.loads((edir / "summary.json").read_text())["models"]
    part = rank_world()
    # once, for every model (each rank its share)
    ends = alignment_ends(teacher.model, ds, limit=cfg.limit, blank=tok.blank_id, part=part)
    out: dict[str, Any] = {"split": cfg.split, "alignment": cfg.teacher, "models": {}}
    for name, info in exported.items():
        rec = StreamingRecognizer(edir / info["path"])
        raw = measure_part(rec, ends, teacher.frame_ms, ds, paths, limit=cfg.limit, chunk_ms=cfg.chunk_ms, part=part)
        out["models"][name] = {**summarize(gather_all(raw), rec.frame_ms, cfg.chunk_ms), "delay_ms": info["delay_ms"]}
    per_rank = gather_all(len(ends))  # utterances each rank aligned (outputs.json: how the work was shared)
    if part[0] != 0:
        return {}
    atomic_write_text(ctx.out_dir / "summary.json", json.dumps(out, indent=1) + "\n")
    return {**out, "aligned_per_rank": per_rank}
