"""The bad-input policy: ``skip`` (count, list, summarise) or ``fail`` (a clear error).

Checks cover the manifest level (duplicate ids, empty transcripts, characters the model
cannot emit) and the audio level (missing, empty, undecodable, no samples, NaN/Inf, digital
silence, duration mismatch, too short for CTC). Rejections are appended to a JSONL file as
they happen, so a crash never loses the list.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

Policy = Literal["skip", "fail"]


class BadInputError(ValueError):
    """Raised under the ``fail`` policy; names the utterance, its file and the problem."""

    def __init__(self, utt_id: str, path: str, reason: str, detail: str):
        super().__init__(f"utterance {utt_id!r} ({path}): {reason}: {detail}")
        self.utt_id, self.path, self.reason, self.detail = utt_id, path, reason, detail


@dataclass
class Rejection:
    id: str
    path: str
    reason: str
    detail: str


class BadInputLog:
    """Applies a policy to rejected utterances and keeps a running record of them."""

    def __init__(self, policy: Policy = "skip", out_file: Path | None = None):
        if policy not in ("skip", "fail"):
            raise ValueError(f"bad-input policy must be 'skip' or 'fail', got {policy!r}")
        self.policy = policy
        self.out_file = Path(out_file) if out_file else None
        self.rejected: list[Rejection] = []

    def reject(self, utt_id: str, path: str, reason: str, detail: str) -> None:
        r = Rejection(utt_id, str(path), reason, detail)
        self.rejected.append(r)
        if self.out_file is not None:
            self.out_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.out_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(r.__dict__) + "\n")
        if self.policy == "fail":
            raise BadInputError(utt_id, str(path), reason, detail)
        log.debug("skipping %s (%s): %s", utt_id, reason, detail)

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r.reason for r in self.rejected).items()))

    def summary(self) -> str:
        if not self.rejected:
            return "no bad input"
        parts = ", ".join(f"{k}: {v}" for k, v in self.counts().items())
        where = f" (listed in {self.out_file})" if self.out_file else ""
        return f"skipped {len(self.rejected)} utterance(s): {parts}{where}"


def ctc_min_frames(token_ids: list[int]) -> int:
    """Fewest CTC frames that can emit ``token_ids``: one per token plus a blank between repeats."""
    repeats = sum(1 for a, b in zip(token_ids, token_ids[1:]) if a == b)
    return len(token_ids) + repeats
