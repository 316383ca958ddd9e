"""The distillation loss, composed from the terms in :mod:`speechkd.distill.losses`::

    L = alpha * tau^2 * KL(teacher || student)                        frame-level (top-k cache or online)
      + (1 - alpha) * [(1 - seq_weight) * CTC(reference) + seq_weight * L_seq]
      + hint_weight * hint                                           (online teacher only)

``L_seq`` is CTC on the teacher's 1-best (``seq: 1best``), on its N-best weighted by normalised
scores (``seq: nbest``), or cross-entropy to forward-backward occupancies constrained to the 1-best
(``seq: occupancy``). On a batch of untranscribed audio (no reference) the loss is::

    L_u = alpha * tau^2 * KL(teacher || student) + pseudo_weight * L_pseudo

where ``L_pseudo`` is CTC on the teacher's pseudo-labels (``pseudo: 1best`` or ``nbest``, weighted by
normalised scores) of the utterances whose confidence (the 1-best's posterior among the cached N-best) is
at least ``pseudo_threshold``; the others add nothing to it (it is a mean over the batch). The teacher's
posteriors are delayed by ``delay`` frames before matching.
:class:`KDObjective` is what the trainer calls; a hint projection is one of its ``heads``, trained
beside the student and never part of the student's weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from speechkd.config import field, require
from speechkd.distill import losses as L
from speechkd.distill.timing import delay_log_probs, delay_topk
from speechkd.train.objective import Forward, Objective, ctc_loss


@dataclass
class KDConfig:
    alpha: float = field(0.9, help="weight of frame-level KD (the rest goes to CTC / sequence KD)")
    temperature: float = field(1.0, help="KD temperature tau (loss scaled by tau^2)")
    delay: int | None = field(None, help="teacher delay in frames; null = estimate from the data")
    extra_delay: int = field(2, help="look-ahead frames added to the delay: the student emits this much later "
                                     "than the estimated spike lag, trading latency for accuracy")
    delay_reference: str = field("baseline", help="stage whose streaming model gives the student-side spikes "
                                                   "(read only when delay is null)")
    window: int = field(0, help="match the best teacher frame within +-window (0 = off; cache only). With a "
                                "peaky CTC teacher a neighbour of every spike is blank, so the student can "
                                "match blank everywhere: on synth-en window 1 doubled the deletions")
    seq: Literal["none", "1best", "nbest", "occupancy"] = field("none", help="sequence KD (cache only)")
    seq_weight: float = field(0.5, help="share of sequence KD in the non-frame part")
    nbest: int = field(4, help="hypotheses used by seq: nbest")
    online: bool = field(False, help="run the teacher online (dense KD) instead of reading the cache")
    teacher: str = field("teacher", help="teacher stage (read only with online: true)")
    hint_weight: float = field(0.0, help="weight of the hint loss on the last hidden layer (online only)")
    pseudo: Literal["none", "1best", "nbest"] = field("none", help="untranscribed audio: CTC on the teacher's "
                                                                  "pseudo-labels (its cached 1-best or N-best)")
    pseudo_weight: float = field(0.5, help="untranscribed audio: weight of the pseudo-label CTC term")
    pseudo_threshold: float = field(0.0, help="untranscribed audio: pseudo-labels of utterances whose confidence "
                                              "(1-best posterior among the N-best) is below this are not used")
    pseudo_nbest: int = field(4, help="hypotheses used by pseudo: nbest")

    def __post_init__(self):
        require(0.0 <= self.alpha <= 1.0, "alpha", f"must be in [0, 1], got {self.alpha}")
        require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        require(self.extra_delay >= 0, "extra_delay", f"must be >= 0, got {self.extra_delay}")
        require(self.window >= 0, "window", f"must be >= 0, got {self.window}")
        require(0.0 <= self.seq_weight <= 1.0, "seq_weight", f"must be in [0, 1], got {self.seq_weight}")
        require(self.nbest >= 1, "nbest", f"must be >= 1, got {self.nbest}")
        require(self.hint_weight >= 0, "hint_weight", f"must be >= 0, got {self.hint_weight}")
        require(self.pseudo_weight >= 0, "pseudo_weight", f"must be >= 0, got {self.pseudo_weight}")
        require(0.0 <= self.pseudo_threshold <= 1.0, "pseudo_threshold",
                f"must be in [0, 1] (a posterior), got {self.pseudo_threshold}")
        require(self.pseudo_nbest >= 1, "pseudo_nbest", f"must be >= 1, got {self.pseudo_nbest}")
        require(not (self.online and self.pseudo != "none"), "pseudo",
                "pseudo-labels come from the teacher cache's N-best; online: true has none")
        require(not (self.online and self.seq != "none"), "seq",
                f"{self.seq!r} needs the teacher cache's N-best; online: true has none (set seq: none or online: false)")
        require(not (self.online and self.window), "window",
                "window matching reads the cache; online: true does not support it (set window: 0 or online: false)")
        require(not (self.online and self.delay is None), "delay",
                "null estimates the delay from the teacher cache; with online: true give the delay in frames")
        require(not (self.hint_weight and not self.online), "hint_weight",
                "the hint loss needs the teacher's hidden states: set online: true")


def hint_dims(student_cfg, teacher_cfg) -> tuple[int, int]:
    """``(student, teacher)`` widths of the last hidden layer (projection or cells, times directions)."""
    def width(c):
        return (c.proj or c.hidden) * (2 if c.bidirectional else 1)

    return width(student_cfg), width(teacher_cfg)


class KDObjective(Objective):
    """The student's loss (see the module docstring). Give ``cache`` (offline KD) or ``teacher``
    (online KD); ``delay`` is the teacher delay in frames, already including any look-ahead."""

    def __init__(self, kd: KDConfig, blank: int, delay: int, *, cache=None, teacher=None, student_cfg=None):
        if kd.online and teacher is None:
            raise ValueError("online KD needs a teacher model")
        if not kd.online and cache is None:
            raise ValueError("cache KD needs a teacher cache")
        self.kd, self.blank, self.delay, self.cache, self.teacher = kd, blank, delay, cache, teacher
        self.needs_hidden = bool(kd.online and kd.hint_weight)
        self.heads = None
        if self.needs_hidden:
            s_dim, t_dim = hint_dims(student_cfg, teacher.cfg)
            self.heads = torch.nn.ModuleDict({"hint_proj": torch.nn.Linear(s_dim, t_dim)})

    def __call__(self, batch, fwd: Forward) -> torch.Tensor:
        if not getattr(batch, "transcribed", True):
            return self.untranscribed(batch, fwd)
        kd, lp, ol = self.kd, fwd.log_probs, fwd.lengths
        frames = lp.shape[1]
        frame = hint = None
        nbest = probs = ids = None
        if kd.online:
            with torch.no_grad():
                if self.needs_hidden:
                    tlp, tol, th = self.teacher(batch.feats, batch.feat_lens, return_hidden=True)
                else:
                    tlp, tol = self.teacher(batch.feats, batch.feat_lens)
            tlp = delay_log_probs(tlp, self.delay, tol, self.blank)
            frame = L.frame_kd_dense(lp, tlp[:, :frames], ol, kd.temperature)
            if self.needs_hidden:
                hint = L.hint_loss(fwd.hidden, th[:, :frames], self.heads["hint_proj"], ol)
        else:
            probs, ids, nbest = self.cache.batch(batch.ids, frames, lp.device)
            probs, ids = delay_topk(probs, ids, ol, self.delay, self.blank)
            if kd.alpha > 0:
                frame = (L.window_kd(lp, probs, ids, ol, kd.temperature, kd.window) if kd.window
                         else L.frame_kd(lp, probs, ids, ol, kd.temperature))
        ctc = ctc_loss(lp, ol, batch, self.blank)
        rest = ctc
        if kd.seq != "none":
            if kd.seq == "occupancy":
                gamma = L.occupancy_targets(probs, ids, ol, nbest, lp.shape[-1], self.blank)
                seq = L.occupancy_kd(lp, gamma, ol)
            else:
                seq = L.nbest_ctc(lp, ol, nbest, 1 if kd.seq == "1best" else kd.nbest, self.blank)
            rest = (1 - kd.seq_weight) * ctc + kd.seq_weight * seq
        loss = (1 - kd.alpha) * rest + kd.alpha * (frame if frame is not None else 0.0)
        if hint is not None:
            loss = loss + kd.hint_weight * hint
        return loss

    def untranscribed(self, batch, fwd: Forward) -> torch.Tensor:
        """``L_u`` (module docstring) on a batch of untranscribed audio: no reference, no CTC on it."""
        kd, lp, ol = self.kd, fwd.log_probs, fwd.lengths
        frames = lp.shape[1]
        loss = lp.new_zeros(())
        if kd.online:
            with torch.no_grad():
                tlp, tol = self.teacher(batch.feats, batch.feat_lens)
            tlp = delay_log_probs(tlp, self.delay, tol, self.blank)
            if kd.alpha > 0:
                loss = loss + kd.alpha * L.frame_kd_dense(lp, tlp[:, :frames], ol, kd.temperature)
            return loss
        probs, ids, nbest = self.cache.batch(batch.ids, frames, lp.device)
        if kd.alpha > 0:
            probs, ids = delay_topk(probs, ids, ol, self.delay, self.blank)
            loss = loss + kd.alpha * L.frame_kd(lp, probs, ids, ol, kd.temperature)
        if kd.pseudo != "none" and kd.pseudo_weight > 0:
            kept = [nb if self.cache.confidence(u) >= kd.pseudo_threshold else []
                    for u, nb in zip(batch.ids, nbest)]
            n = 1 if kd.pseudo == "1best" else kd.pseudo_nbest
            loss = loss + kd.pseudo_weight * L.nbest_ctc(lp, ol, kept, n, self.blank)
        return loss
