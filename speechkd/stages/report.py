"""Stage ``report``: the WER report of the whole experiment (the last stage of every recipe).

Writes ``report.json``, ``report.md`` and ``report.html`` (one self-contained file, plots embedded)
into the stage folder, from what every other stage left (:mod:`speechkd.eval.report`). It reads the
stages' files, not their configs, so it names no upstream stage beyond those it must follow; it is
fingerprinted on them so a rerun of any model reruns it. A missing input is listed as absent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from speechkd.config import field, require

log = logging.getLogger(__name__)


@dataclass
class Config:
    after: list[str] = field(default_factory=list, help="stages the report follows (their reruns rerun it)")
    teacher: str = field("teacher", help="the teacher's stage name (gap closed, posteriors plot)")
    baseline: str = field("baseline", help="the no-KD baseline's stage name (paired comparisons, gap closed)")
    student: str = field("", help="student drawn in the posteriors plot ('' = the best on test)")
    split: str = field("test", help="split of the posteriors plot")
    featurize: str = field("featurize", help="featurize stage (features of the plotted utterance)")

    def __post_init__(self):
        require(len(set(self.after)) == len(self.after), "after", "names a stage twice")


def upstream(cfg: Config) -> list[tuple[str, str, tuple[str, ...]]]:
    from speechkd.stages import STAGE_TYPES

    return [(f"after[{i}]", s, tuple(STAGE_TYPES)) for i, s in enumerate(cfg.after)]


def run(cfg: Config, ctx) -> dict[str, Any]:
    from speechkd.eval.report import best_student, build, posteriors_of_one_utterance, write_report

    exp = ctx.exp_dir
    rep = build(exp, teacher=cfg.teacher, baseline=cfg.baseline, seed=ctx.seed)
    student = cfg.student or best_student(rep, cfg.split)
    post = None
    if student:
        try:
            post = posteriors_of_one_utterance(exp, [cfg.teacher, student], cfg.split, cfg.featurize)
        except Exception as e:  # the plot is optional: say why it is missing
            log.warning("posteriors plot left out: %s", e)
    paths = write_report(exp, ctx.out_dir, teacher=cfg.teacher, baseline=cfg.baseline, seed=ctx.seed, posteriors=post,
                         rep=rep)
    for p in paths.values():
        log.info("report: %s", p)
    return {k: str(v) for k, v in paths.items()} | {"models": len(rep["models"]), "absent": rep["absent"]}
