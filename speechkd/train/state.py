"""A training run's progress besides weights and optimizer (:class:`TrainState`), and the RNG states a
checkpoint holds."""

from __future__ import annotations

import time
from dataclasses import dataclass, field as dc_field
from typing import Any

import torch


def _rng_state() -> dict[str, Any]:
    st = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


@dataclass
class TrainState:
    """Everything about a run's progress that a checkpoint must hold besides weights and optimizer."""

    step: int = 0
    epoch: int = 0
    skipped: int = 0
    history: list[dict[str, Any]] = dc_field(default_factory=list)
    best: dict[str, Any] = dc_field(default_factory=lambda: {"cer": float("inf")})
    # this epoch's running counters (continue across a resume within the epoch)
    utt: int = 0
    sec: float = 0.0
    loss_sum: float = 0.0
    n_loss: int = 0
    wait: float = 0.0  # seconds the loop waited for its next batch
    elapsed: float = 0.0
    t0: float = dc_field(default_factory=time.time)

    def start_epoch(self) -> None:
        self.t0 = time.time() - self.elapsed

    def reset_counters(self) -> None:
        self.utt, self.sec, self.loss_sum, self.n_loss, self.elapsed, self.wait = 0, 0.0, 0.0, 0, 0.0, 0.0
        self.t0 = time.time()

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "skipped": self.skipped, "history": self.history,
                "best": self.best, "running": {"utt": self.utt, "sec": self.sec, "loss_sum": self.loss_sum,
                                               "n_loss": self.n_loss, "wait": self.wait,
                                               "elapsed": time.time() - self.t0}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainState":
        r = d.get("running", {})
        return cls(step=int(d["step"]), epoch=int(d["epoch"]), skipped=int(d["skipped"]), history=list(d["history"]),
                   best=dict(d["best"]), utt=int(r.get("utt", 0)), sec=float(r.get("sec", 0.0)),
                   loss_sum=float(r.get("loss_sum", 0.0)), n_loss=int(r.get("n_loss", 0)), wait=float(r.get("wait", 0.0)),
                   elapsed=float(r.get("elapsed", 0.0)))
