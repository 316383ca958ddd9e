"""LSTM-CTC: bidirectional (teacher) or unidirectional (streaming student), one family.

Input: log-mel features ``(batch, frames, 80)`` at ``frame_shift_ms`` (10 ms) with lengths in frames. The model
applies global CMVN (buffers, so they travel with the weights), stacks ``stack`` consecutive
frames into one (``(batch, frames // stack, 80 * stack)``, a trailing partial stack is
dropped), runs the LSTM stack and a linear layer to ``vocab_size`` log-probabilities
``(batch, frames // stack, vocab)``.

A bidirectional layer runs its backward direction over a *length-aware* reversal of each
padded sequence, so padding never leaks into valid frames (and padded batches are about 3x
faster than packed sequences on the CPU). A unidirectional model has
:meth:`LSTMCTC.step` for chunked streaming, equal to the offline output; it calls the one streaming
core, :func:`speechkd.models.streaming.stream_chunk`, which the exported graphs call too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from speechkd.config import field, require
from speechkd.models.streaming import stream_chunk


@dataclass
class ModelConfig:
    input_dim: int = field(80, help="feature dimension (mel bins)")
    vocab_size: int = field(29, help="output tokens including the blank (id 0)")
    hidden: int = field(256, help="LSTM cells per direction")
    layers: int = field(3, help="LSTM layers")
    bidirectional: bool = field(True, help="BiLSTM (offline teacher) or unidirectional (streaming)")
    dropout: float = field(0.1, help="dropout between layers and before the output layer")
    proj: int = field(0, help="LSTM projection size per direction (0 = none)")
    stack: int = field(3, help="frames stacked into one before the LSTM (1-8); output frame = frame_shift_ms * stack")
    frame_shift_ms: float = field(10.0, help="input feature hop (ms); set from the featurize stage's fbank options")
    tokenizer: str = field("", help="fingerprint of the tokenizer's symbols; set by training, checked when decoding")

    def __post_init__(self):
        # upper bounds too: a config read from a file a user hands in must not allocate terabytes
        require(1 <= self.input_dim <= 4096, "input_dim", f"must be in [1, 4096], got {self.input_dim}")
        require(2 <= self.vocab_size <= 1_000_000, "vocab_size",
                f"must be in [2, 1000000] (blank + tokens), got {self.vocab_size}")
        require(1 <= self.hidden <= 16384, "hidden", f"must be in [1, 16384], got {self.hidden}")
        require(1 <= self.layers <= 64, "layers", f"must be in [1, 64], got {self.layers}")
        require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        require(0 <= self.proj < self.hidden or self.proj == 0, "proj",
                f"must be 0 (none) or in [1, hidden={self.hidden}), got {self.proj}")
        require(1 <= self.stack <= 8, "stack", f"must be in 1..8, got {self.stack}")
        require(self.frame_shift_ms > 0, "frame_shift_ms", f"must be > 0, got {self.frame_shift_ms}")

    @property
    def frame_ms(self) -> float:
        """Duration of one output frame (ms): the feature hop times the stack."""
        return self.frame_shift_ms * self.stack


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of ``x`` ``(batch, time, dim)`` within its length; padding stays in place."""
    b, t = x.shape[:2]
    ar = torch.arange(t, device=x.device).unsqueeze(0).expand(b, t)
    lens = lengths.to(x.device).unsqueeze(1)
    idx = torch.where(ar < lens, lens - 1 - ar, ar)
    return x.gather(1, idx.unsqueeze(-1).expand_as(x))


class LSTMCTC(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("cmvn_mean", torch.zeros(cfg.input_dim))
        self.register_buffer("cmvn_std", torch.ones(cfg.input_dim))
        out = cfg.proj or cfg.hidden
        dirs = 2 if cfg.bidirectional else 1
        self.fwd = nn.ModuleList()
        self.bwd = nn.ModuleList()
        in_dim = cfg.input_dim * cfg.stack
        for _ in range(cfg.layers):
            self.fwd.append(nn.LSTM(in_dim, cfg.hidden, batch_first=True, proj_size=cfg.proj))
            if cfg.bidirectional:
                self.bwd.append(nn.LSTM(in_dim, cfg.hidden, batch_first=True, proj_size=cfg.proj))
            in_dim = out * dirs
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(in_dim, cfg.vocab_size)

    def set_cmvn(self, mean, std) -> None:
        self.cmvn_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.cmvn_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(lengths, self.cfg.stack, rounding_mode="floor")

    def _stack(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        k = self.cfg.stack
        t2 = t // k
        return x[:, : t2 * k].reshape(b, t2, d * k)

    def encode(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Hidden states of every layer (``(batch, T', dim)`` each) and output lengths."""
        x = self._stack((feats - self.cmvn_mean) / self.cmvn_std)
        out_len = self.output_lengths(lengths)
        hiddens = []
        for i, f in enumerate(self.fwd):
            if i > 0:
                x = self.drop(x)
            h, _ = f(x)
            if self.cfg.bidirectional:
                hb, _ = self.bwd[i](reverse_padded(x, out_len))
                h = torch.cat([h, reverse_padded(hb, out_len)], dim=-1)
            hiddens.append(h)
            x = h
        return hiddens, out_len

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor, return_hidden: bool = False):
        """``feats (batch, frames, input_dim)`` -> ``(log_probs (batch, T', vocab), lengths (batch,))``.

        With ``return_hidden`` a third item is the last LSTM layer's output ``(batch, T', dim)``
        (for feature-based KD, so the encoder runs once per step)."""
        if feats.shape[1] < self.cfg.stack:  # not one whole stacked frame yet
            lp = feats.new_zeros(feats.shape[0], 0, self.cfg.vocab_size)
            out_len = self.output_lengths(lengths)
            if return_hidden:
                dim = (self.cfg.proj or self.cfg.hidden) * (2 if self.cfg.bidirectional else 1)
                return lp, out_len, feats.new_zeros(feats.shape[0], 0, dim)
            return lp, out_len
        hiddens, out_len = self.encode(feats, lengths)
        # float32 log-probs even under autocast (the losses and the decoders read them)
        logits = self.out(self.drop(hiddens[-1])).float()
        if return_hidden:
            return logits.log_softmax(-1), out_len, hiddens[-1]
        return logits.log_softmax(-1), out_len

    # -- streaming ---------------------------------------------------------------------------
    def init_state(self, batch: int = 1, device=None) -> dict[str, torch.Tensor]:
        """Zero state for :meth:`step`: per-layer ``h``/``c`` and a buffer of leftover frames."""
        cfg = self.cfg
        device = device or self.out.weight.device
        out = cfg.proj or cfg.hidden
        return {
            "h": torch.zeros(cfg.layers, batch, out, device=device),
            "c": torch.zeros(cfg.layers, batch, cfg.hidden, device=device),
            "pending": torch.zeros(batch, 0, cfg.input_dim, device=device),
        }

    def step(self, chunk: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Streaming: ``chunk (batch, frames, input_dim)`` of any length -> log-probs of the stacked frames
        it completes ``(batch, n, vocab)`` and the new state. Unidirectional models only."""
        if self.cfg.bidirectional:
            raise RuntimeError("step() needs a unidirectional model; a BiLSTM must see the whole utterance")
        x = torch.cat([state["pending"], chunk], dim=1)
        k = self.cfg.stack
        n = x.shape[1] // k
        pending = x[:, n * k :]
        if n == 0:
            return chunk.new_zeros(chunk.shape[0], 0, self.cfg.vocab_size), {**state, "pending": pending}
        logp, h, c = stream_chunk(x[:, : n * k], state["h"], state["c"], cmvn_mean=self.cmvn_mean,
                                  cmvn_std=self.cmvn_std, stack=k, lstms=self.fwd, out=self.out, between=self.drop)
        return logp, {"h": h, "c": c, "pending": pending}


def build_model(cfg: ModelConfig) -> LSTMCTC:
    """The only constructor; train, decode, distill and export all go through it."""
    return LSTMCTC(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
