"""SpecAugment (Park et al. 2019): frequency and time masking, a train-time transform.

Operates on padded batches ``(batch, time, freq)`` with ``lengths`` in frames; masks never
touch padding, and the time-mask width adapts to each utterance's length.
"""

from __future__ import annotations

import torch


def spec_augment(x: torch.Tensor, lengths: torch.Tensor, *, num_freq_masks: int = 2, max_freq_width: int = 27,
                 num_time_masks: int = 2, max_time_frac: float = 0.05, max_time_width: int = 40,
                 generator: torch.Generator | None = None, fill: float = 0.0) -> torch.Tensor:
    """Return a masked copy of ``x`` ``(batch, time, freq)``; masked cells are set to ``fill``."""
    if x.ndim != 3:
        raise ValueError(f"expected (batch, time, freq), got {tuple(x.shape)}")
    out = x.clone()
    b, _, f = x.shape
    g = generator
    for i in range(b):
        t_len = int(lengths[i])
        for _ in range(num_freq_masks):
            w = int(torch.randint(0, max_freq_width + 1, (1,), generator=g))
            if w == 0 or w >= f:
                continue
            f0 = int(torch.randint(0, f - w + 1, (1,), generator=g))
            out[i, :t_len, f0 : f0 + w] = fill
        t_max = min(max_time_width, int(max_time_frac * t_len))
        for _ in range(num_time_masks):
            if t_max < 1:
                break
            w = int(torch.randint(0, t_max + 1, (1,), generator=g))
            if w == 0:
                continue
            t0 = int(torch.randint(0, t_len - w + 1, (1,), generator=g))
            out[i, t0 : t0 + w, :] = fill
    return out


class SpecAugment(torch.nn.Module):
    """Module form; identity in ``eval()`` mode."""

    def __init__(self, num_freq_masks: int = 2, max_freq_width: int = 27, num_time_masks: int = 2,
                 max_time_frac: float = 0.05, max_time_width: int = 40):
        super().__init__()
        self.kw = dict(num_freq_masks=num_freq_masks, max_freq_width=max_freq_width, num_time_masks=num_time_masks,
                       max_time_frac=max_time_frac, max_time_width=max_time_width)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.training:
            return x
        return spec_augment(x, lengths, generator=generator, **self.kw)
