"""Stage ``report``: the WER report of the whole experiment (the last stage of every recipe).

Writes ``report.json``, ``report.md`` and ``report.html`` (one self-contained file, plots embedded)
into the stage folder, from what the stages it follows left (:mod:`speechkd.eval.report`). It reads
the stages named in ``after`` and the stages they read, nothing else (the runner enforces it), plus
the streaming benchmark named in ``rtf``, whose content is fingerprinted; a rerun of any of them
reruns it. A missing input is listed as absent.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from speechkd.config import field, require

log = logging.getLogger(__name__)


@dataclass
class Config:
    after: list[str] = field(default_factory=list, help="stages the report follows; it reads them and the stages "
                                                        "they read (their reruns rerun it)")
    teacher: str = field("teacher", help="the teacher's stage name (gap closed, posteriors plot)")
    baseline: str = field("baseline", help="the no-KD baseline's stage name (paired comparisons, gap closed)")
    student: str = field("", help="student drawn in the posteriors plot ('' = the best on test)")
    split: str = field("test", help="split of the posteriors plot")
    featurize: str = field("featurize", help="featurize stage (features of the plotted utterance)")
    rtf: str = field("", help="a streaming benchmark's JSON (benchmarks/streaming.py writes "
                              "exp/<recipe>/benchmarks/streaming.json) whose real-time factors go into the report; "
                              "its content is fingerprinted ('' = no RTF column)")

    pairs: list[list[str]] = field(default_factory=list, help="more paired comparisons [a, b] (b against a, with their "
                                                             "LM rows) besides every student against the baseline")

    def __post_init__(self):
        require(len(set(self.after)) == len(self.after), "after", "names a stage twice")
        for i, p in enumerate(self.pairs):
            require(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) and x for x in p),
                    f"pairs[{i}]", f"must be [model_a, model_b], got {p!r}")


# the report reads the stages in ``after`` and every stage they read (decode stages and the models they decode,
# the corpus manifests): the runner lets it read all of those, and only those
READS_ANCESTORS = True


def upstream(cfg: Config) -> list[tuple[str, str, tuple[str, ...]]]:
    from speechkd.stages import STAGE_TYPES

    return [(f"after[{i}]", s, tuple(STAGE_TYPES)) for i, s in enumerate(cfg.after)]


def fingerprint_inputs(cfg: Config, base: Path | None = None) -> str | None:
    """The content of the benchmark file named in ``rtf`` (a new benchmark reruns the report)."""
    if not cfg.rtf:
        return None
    from speechkd.config import read_small_file

    return hashlib.sha256(read_small_file(Path(cfg.rtf), "report.rtf")).hexdigest()


def run(cfg: Config, ctx) -> dict[str, Any]:
    from speechkd.eval.decode import first_utterance_posteriors
    from speechkd.eval.report import best_student, build, write_report

    exp = ctx.exp_dir
    # the stages the runner lets it read (None when called without a runner: every folder)
    rep = build(exp, teacher=cfg.teacher, baseline=cfg.baseline, seed=ctx.seed, stages=ctx.reads, rtf=cfg.rtf or None,
                pairs=[(a, b) for a, b in cfg.pairs])
    student = cfg.student or best_student(rep, cfg.split)
    post = None
    if student:
        try:
            models = {m: ctx.stage_dir(m) / "model.safetensors" for m in (cfg.teacher, student)}
            post = first_utterance_posteriors(models, ctx.stage_dir(cfg.featurize) / f"{cfg.split}.jsonl")
        except Exception as e:  # the plot is optional: say why it is missing
            log.warning("posteriors plot left out: %s", e)
    paths = write_report(exp, ctx.out_dir, teacher=cfg.teacher, baseline=cfg.baseline, seed=ctx.seed, posteriors=post,
                         rep=rep)
    for p in paths.values():
        log.info("report: %s", p)
    return {k: str(v) for k, v in paths.items()} | {"models": len(rep["models"]), "absent": rep["absent"]}
