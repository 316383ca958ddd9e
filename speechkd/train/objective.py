"""The training-loss interface: what a model produced for a batch, and the loss over it.

The trainer calls an :class:`Objective` on every batch; plain CTC is the default, distillation
(:mod:`speechkd.distill.compose`) supplies its own. Both use this module, so the distillation
library does not sit on top of the training loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from speechkd.data.dataset import Batch


@dataclass
class Forward:
    """What the model produced for a batch: ``log_probs (B, T', V)``, ``lengths (B,)`` in output
    frames and, when the objective asks for it, the last LSTM layer ``hidden (B, T', dim)``."""

    log_probs: torch.Tensor
    lengths: torch.Tensor
    hidden: torch.Tensor | None = None


def ctc_loss(log_probs: torch.Tensor, out_lens: torch.Tensor, batch: Batch, blank: int = 0) -> torch.Tensor:
    """Mean over the batch of per-utterance CTC loss divided by target length (torch's 'mean')."""
    return F.ctc_loss(log_probs.transpose(0, 1), batch.targets, out_lens, batch.target_lens, blank=blank,
                      reduction="mean", zero_infinity=True)


class Objective:
    """A training loss. Subclasses set ``needs_hidden`` (the trainer then returns hidden states
    from the same forward pass) and ``heads`` (modules trained beside the model, never part of it)."""

    needs_hidden: bool = False
    heads: torch.nn.Module | None = None

    def __init__(self, blank: int = 0):
        self.blank = blank

    def __call__(self, batch: Batch, fwd: Forward) -> torch.Tensor:
        return ctc_loss(fwd.log_probs, fwd.lengths, batch, self.blank)
