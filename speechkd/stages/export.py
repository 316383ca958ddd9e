"""Stage ``export``: export streaming models (the students and the baseline) to ONNX.

Writes ``<model stage>/model.onnx`` and ``tokens.txt`` per exported model, and ``summary.json``
(bytes, chunk, delay per model). A bidirectional model cannot stream: its export stops with a message.
With ``int8: true`` every model (and its sherpa flavour) also gets ``model.int8.onnx`` (ONNX Runtime
dynamic quantization, :mod:`speechkd.quant.ort`), and the fp32 and int8 files are compared through the
runtime on ``compare_split`` (:mod:`speechkd.eval.int8`): WER, S/D/I, blank rate, posterior change.
With ``lm`` (an lm stage) every model folder also gets ``lm.arpa`` and ``lm.json`` (the fusion weights: those a
decode stage of ``lm_from`` picked for that model with that LM, else ``alpha``/``beta``), so a shipped folder
decodes with the LM the way the recipe did (``speechkd transcribe`` and ``eval`` use it).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from speechkd.config import check_name, field, require
from speechkd.stages import MODEL_STAGES
from speechkd.quant.ort import quantize_int8
from speechkd.utils import atomic_write_text

log = logging.getLogger(__name__)
OUTPUT_FORMAT = 2  # 2: int8 weights on [-64, 64] (ONNX Runtime's reduce_range; 1: [-127, 127])


@dataclass
class Config:
    models: list[str] = field(default_factory=lambda: ["baseline"], help="train/distill stages whose model is exported")
    chunk_ms: float = field(160.0, help="default chunk the runtime feeds (ms)")
    sherpa: list[str] = field(default_factory=list, help="of those, models also exported for sherpa-onnx "
                                                         "(<model>/sherpa/), with a feature adapter")
    featurize: str = field("featurize", help="featurize stage whose train audio fits the sherpa feature adapter")
    adapter_files: int = field(300, help="sherpa: training files the feature adapter is fitted on")
    adapter_steps: int = field(3000, help="sherpa: optimisation steps of the feature adapter")
    int8: bool = field(False, help="also write model.int8.onnx (ONNX Runtime dynamic int8) beside every model.onnx")
    compare_split: str = field("test", help="int8: featurize split on which fp32 and int8 are compared ('' = none)")
    compare_limit: int = field(0, help="int8: compare on the first N utterances of that split (0 = all)")
    lm: str = field("", help="lm stage whose lm.arpa is shipped beside every model.onnx ('' = none)")
    lm_from: list[str] = field(default_factory=list, help="with lm: decode stages (decoder lm) whose tuned weights "
                                                          "ship with the model they decoded")
    alpha: float = field(0.5, help="with lm: LM weight for a model no lm_from stage decoded")
    beta: float = field(1.0, help="with lm: word bonus for a model no lm_from stage decoded")
    lm_beam: int = field(32, help="with lm: beam width shipped in lm.json")

    def __post_init__(self):
        require(len(self.models) >= 1, "models", "name at least one model stage")
        require(len(set(self.models)) == len(self.models), "models", "names a stage twice")
        require(self.chunk_ms > 0, "chunk_ms", f"must be > 0, got {self.chunk_ms}")
        require(set(self.sherpa) <= set(self.models), "sherpa", "may only name models the stage exports")
        require(self.adapter_files >= 1 and self.adapter_steps >= 1, "adapter_files", "and adapter_steps must be >= 1")
        require(self.compare_limit >= 0, "compare_limit", f"must be >= 0, got {self.compare_limit}")
        if self.compare_split:
            check_name(self.compare_split, "compare_split", "split name")
        require(bool(self.lm) or not self.lm_from, "lm_from", "needs lm (the LM the weights belong to)")
        require(self.lm_beam >= 1, "lm_beam", f"must be >= 1, got {self.lm_beam}")


def upstream(cfg: Config) -> list[tuple[str, str, tuple[str, ...]]]:
    ups = [(f"models[{i}]", m, MODEL_STAGES) for i, m in enumerate(cfg.models)]
    if cfg.sherpa or (cfg.int8 and cfg.compare_split):
        ups.append(("featurize", cfg.featurize, ("featurize",)))
    if cfg.lm:
        ups.append(("lm", cfg.lm, ("lm",)))
    ups += [(f"lm_from[{i}]", d, ("decode",)) for i, d in enumerate(cfg.lm_from)]
    return ups


def check(cfg: Config, lookup) -> None:
    from speechkd.stages import check_splits, planned_bidirectional

    for i, m in enumerate(cfg.models):
        if planned_bidirectional(lookup(m), lookup):
            raise ValueError(f"models[{i}]: {m!r} is a bidirectional model, which needs the whole utterance and "
                             "cannot stream; export unidirectional students and the baseline")
    if cfg.int8 and cfg.compare_split:
        check_splits([cfg.compare_split], lookup(cfg.featurize), lookup, "compare_split")


def int8_variant(cfg: Config, ctx, m: str) -> dict[str, Any]:
    """``<m>/model.int8.onnx``, its node report and, on ``compare_split``, what int8 changed."""
    from speechkd.eval.scoring import write_reports
    from speechkd.eval.int8 import compare_int8

    src, dst = ctx.out_dir / m / "model.onnx", ctx.out_dir / m / "model.int8.onnx"
    rep = {"path": f"{m}/model.int8.onnx", **quantize_int8(src, dst)}
    if cfg.compare_split:
        manifest = ctx.stage_dir(cfg.featurize) / f"{cfg.compare_split}.jsonl"
        c = compare_int8(src, dst, manifest, limit=cfg.compare_limit, chunk_ms=cfg.chunk_ms)
        per = c.pop("per_utterance")
        for kind in ("fp32", "int8"):  # recogs/errs per utterance, for paired comparisons in the report
            write_reports(ctx.out_dir / m / "compare", f"{cfg.compare_split}-{kind}", per["ids"], per["refs"], per[kind],
                          {"model": f"{m}/model{'.int8' if kind == 'int8' else ''}.onnx"})
        rep["compare"] = c = {"split": cfg.compare_split, "reports": f"{m}/compare", **c}
        log.info("%s %s: WER fp32 %.2f -> int8 %.2f (deletions %d -> %d, blank rate %.3f -> %.3f, max posterior "
                 "change %.3g)", m, cfg.compare_split, c["fp32"]["wer"], c["int8"]["wer"], c["fp32"]["deletions"],
                 c["int8"]["deletions"], c["fp32"]["blank_rate"], c["int8"]["blank_rate"], c["max_posterior_diff"])
    return rep


def run(cfg: Config, ctx) -> dict[str, Any]:
    from speechkd.export import export_streaming

    out: dict[str, Any] = {"models": {}}
    _remove_stale(cfg, ctx.out_dir)
    tuned = tuned_weights(cfg, ctx) if cfg.lm else {}
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
            if cfg.int8:
                sd = ctx.out_dir / m / "sherpa"
                rep = quantize_int8(sd / "model.onnx", sd / "model.int8.onnx")
                out["models"][m]["sherpa"]["int8"] = {"path": f"{m}/sherpa/model.int8.onnx", **rep}
        if cfg.int8:
            out["models"][m]["int8"] = int8_variant(cfg, ctx, m)
        if cfg.lm:
            out["models"][m]["lm"] = ship_lm(cfg, ctx, m, tuned)
    atomic_write_text(ctx.out_dir / "summary.json", json.dumps(out, indent=1) + "\n")
    return out


def tuned_weights(cfg: Config, ctx) -> dict[str, tuple[dict, str]]:
    """Model -> (the fusion settings a decode stage of ``lm_from`` tuned for it with ``cfg.lm``, that stage)."""
    out = {}
    for d in cfg.lm_from:
        summ = json.loads((ctx.stage_dir(d) / "summary.json").read_text())
        lm = summ.get("lm") if isinstance(summ, dict) else None
        if isinstance(lm, dict) and lm.get("stage") == cfg.lm:
            keys = ("alpha", "beta", "beam", "token_min_logp", "prune", "unk_offset", "unk_char", "recombine")
            out[Path(str(summ.get("model"))).parts[0]] = ({k: lm[k] for k in keys if k in lm}, d)
    return out


def ship_lm(cfg: Config, ctx, m: str, tuned: dict[str, tuple[dict, str]]) -> dict[str, Any]:
    """The LM into ``<m>/`` with the weights a decode stage of ``lm_from`` tuned for ``m`` (else the defaults)."""
    from speechkd.lm.files import BEAM_PRUNE, TOKEN_MIN_LOGP, UNK_CHAR, UNK_OFFSET, ship_lm as ship

    default = {"alpha": cfg.alpha, "beta": cfg.beta, "beam": cfg.lm_beam, "token_min_logp": TOKEN_MIN_LOGP,
               "prune": BEAM_PRUNE, "unk_offset": UNK_OFFSET, "unk_char": UNK_CHAR, "recombine": True}
    weights, tuned_by = tuned.get(m, (default, None))
    out = ship(ctx.stage_dir(cfg.lm), ctx.out_dir / m, weights)
    return {**out, "path": f"{m}/{out['path']}", "tuned_by": tuned_by}


def _remove_stale(cfg: Config, out_dir: Path) -> None:
    """A rerun writes every model folder afresh: files an earlier run wrote and this config would not (a
    ``model.int8.onnx`` after ``int8`` was turned off, a ``sherpa/`` flavour, a model no longer listed) are
    removed, so nothing in the stage folder is older than its weights."""
    import shutil

    if not out_dir.is_dir():
        return
    for d in out_dir.iterdir():
        if d.is_dir() and (d.name in cfg.models or (d / "model.onnx").exists()):
            shutil.rmtree(d)
            if d.name not in cfg.models:
                log.info("removed %s: exported by an earlier run, not in this stage's models", d)
