"""Training configuration: the optimizer and schedule (:class:`OptimConfig`) and everything else a training
stage sets (:class:`TrainConfig`), checked when the recipe is loaded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from speechkd.config import ConfigError, field, require
from speechkd.data.augment import WaveAugment, noise_fingerprint
from speechkd.models.lstm_ctc import ModelConfig
from speechkd.train import precision as mp


@dataclass
class OptimConfig:
    lr: float = field(2e-3, help="peak learning rate (AdamW)")
    weight_decay: float = field(1e-2, help="AdamW weight decay")
    warmup_steps: int = field(200, help="linear warm-up steps")
    min_lr_ratio: float = field(0.05, help="cosine decay floor, as a fraction of lr")
    grad_clip: float = field(5.0, help="gradient norm clip (0 = off)")

    def __post_init__(self):
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        require(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        require(self.grad_clip >= 0, "grad_clip", f"must be >= 0 (0 = off), got {self.grad_clip}")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig, help="model (vocab_size is set from the tokenizer)")
    optim: OptimConfig = field(default_factory=OptimConfig, help="optimizer and schedule")
    epochs: int = field(10, help="epochs")
    max_frames: int = field(20000, help="padded input frames per batch (per process)")
    specaug: bool = field(True, help="SpecAugment on training batches")
    vtlp: float = field(0.0, help="vocal tract length perturbation: warp each training utterance's filterbank "
                                  "axis by a factor drawn from [1 - vtlp, 1 + vtlp] (0 = off; 0.1 is usual)")
    checkpoint_every: int = field(0, help="also checkpoint every N steps (0 = epoch ends only)")
    keep_last: int = field(2, help="resume checkpoints kept")
    average_last: int = field(3, help="final model = average of the last k epoch weights (1 = last)")
    dev_limit: int = field(0, help="score only the first N dev utterances each epoch (0 = all)")
    device: Literal["auto", "cpu", "cuda"] = field("auto", help="where to train")
    threads: int = field(0, help="torch CPU threads (0 = torch default)")
    workers: int = field(0, help="DataLoader worker processes that build and prefetch batches (0 = in the training "
                                 "process); the batches and their order do not depend on it", fingerprint=False)
    prefetch: int = field(2, help="batches each worker builds ahead", fingerprint=False)
    augment: WaveAugment = field(default_factory=WaveAugment, help="speed perturbation and additive noise on the "
                                 "training audio (needs a featurize stage run on_the_fly)",
                                 fingerprint="unless_default")
    fbank_on: Literal["workers", "device"] = field(
        "workers", help="with on-the-fly features: compute fbank where batches are built (the DataLoader workers, on "
                        "the CPU) or in the training process on its device (the GPU where there is one; on the CPU "
                        "the same features)", fingerprint="unless_default")
    global_batches: int = field(
        0, help="batches per optimizer step, all ranks together; each rank accumulates global_batches / world of "
                "them. The steps, schedule and random draws are then the same on every world size that divides it, "
                "and a run resumes exactly on any of them. 0 = one batch per rank per step (the global batch grows "
                "with the world size; a resume on another world size keeps the checkpoint's batches per step)",
        fingerprint="unless_default")
    max_steps: int = field(0, help="stop after this many steps in total (0 = no limit)")
    max_skipped_fraction: float = field(0.5, help="fail the stage when more than this fraction of an epoch's steps "
                                                  "were skipped as non-finite (a run that learns nothing)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = field(
        "auto", help="mixed precision: auto = bf16 on a CPU with native bf16 (else fp32), on CUDA bf16 where "
                     "supported (else fp16); fp16 is CUDA only. Weights, optimizer state and losses stay float32")

    def __post_init__(self):
        # the precision rules, checked with the recipe (not after the stages before this one ran)
        cuda = self.device != "cpu" and torch.cuda.is_available()
        try:
            mp.resolve_precision(self.precision, torch.device("cuda" if cuda else "cpu"))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        for k in ("epochs", "max_frames", "keep_last", "average_last"):
            require(getattr(self, k) >= 1, k, f"must be >= 1, got {getattr(self, k)}")
        require(0.0 <= self.vtlp < 0.5, "vtlp", f"must be in [0, 0.5), got {self.vtlp}")
        require(0.0 <= self.max_skipped_fraction < 1.0, "max_skipped_fraction",
                f"must be in [0, 1), got {self.max_skipped_fraction}")
        require(self.prefetch >= 1, "prefetch", f"must be >= 1, got {self.prefetch}")
        for k in ("checkpoint_every", "dev_limit", "threads", "max_steps", "workers", "global_batches"):
            require(getattr(self, k) >= 0, k, f"must be >= 0, got {getattr(self, k)}")


def augment_inputs(cfg, base=None) -> str | None:
    """A training stage's inputs from outside the experiment: the recordings of its ``augment.noise`` folder
    (:func:`~speechkd.data.augment.noise_fingerprint`). A folder that is missing or holds no recording is
    refused when the recipe is loaded, before any stage runs."""
    try:
        return noise_fingerprint(cfg.augment.noise)
    except OSError as e:
        raise ConfigError(str(e)) from None
