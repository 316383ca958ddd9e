"""One training loop for every LSTM-CTC model (teachers, baselines, students).

AdamW with linear warm-up and cosine decay, gradient clipping, a guard that skips
non-finite losses (and counts them), SpecAugment (on the model's device), dev CER/WER every
epoch (through a ``validate`` function the caller gives: training does not import evaluation), a
metrics CSV, keep-best and averaging of the last k epoch checkpoints. CPU or CUDA is chosen automatically, and so is mixed precision (:mod:`speechkd.train.precision`: bf16 autocast
on a CPU with native bf16, AMP on CUDA; float32 weights, optimizer state and losses). Checkpoints
every ``checkpoint_every`` steps and at every epoch end make resume exact: after SIGKILL, a rerun
continues from the last checkpoint and, on the CPU, ends with the same weights as an uninterrupted
run. The checkpoint records the precision; resuming in another one is refused.

The loss is an :class:`~speechkd.train.objective.Objective`: plain CTC by default; distillation
passes its own, which may carry ``heads`` (e.g. a FitNets projection) that are trained and checkpointed beside the model
but never written into its deployable weights.

Under ``torchrun`` (a process group is initialised by the caller), the model is wrapped in
DistributedDataParallel, each rank trains on its share of the batches, and rank 0 evaluates
and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from speechkd.config import ConfigError
from speechkd.data.dataset import Batch, FeatureDataset, wave_features
from speechkd.data.sampler import BucketingSampler
from speechkd.features.specaug import spec_augment
from speechkd.features.vtlp import vtlp
from speechkd.models.bundle import ModelBundle, save_bundle
from speechkd.models.lstm_ctc import LSTMCTC, count_parameters
from speechkd.train import checkpoint as ck
from speechkd.train import precision as mp
from speechkd.train.loader import batches
from speechkd.train.config import OptimConfig, TrainConfig  # noqa: F401 (the trainer's public config)
from speechkd.train.objective import Forward, Objective
from speechkd.train.state import TrainState, _rng_state, _set_rng_state
from speechkd.utils import atomic_write_text, pick_device, progress, set_threads

log = logging.getLogger(__name__)


# scores a model on the dev set: ``validate(model, device) -> {"cer": percent, "wer": percent, ...}``
Validate = Callable[[LSTMCTC, torch.device], dict[str, Any]]


class TrainingFailed(RuntimeError):
    """Training that cannot learn: too many steps were skipped as non-finite."""


class _WithHeads(torch.nn.Module):
    """The unit DDP wraps and the optimizer updates: the model plus the objective's heads."""

    def __init__(self, model: LSTMCTC, heads: torch.nn.Module | None):
        super().__init__()
        self.model = model
        self.heads = heads

    def forward(self, feats, lens, return_hidden: bool = False):
        return self.model(feats, lens, return_hidden=return_hidden)


def lr_lambda(total_steps: int, warmup: int, floor: float) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        prog = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * prog))

    return f



class Trainer:
    """One training run: built from a config, resumed from its newest checkpoint, then :meth:`fit`."""

    def __init__(self, cfg: TrainConfig, bundle: ModelBundle, train_ds: FeatureDataset, out_dir: str | Path, *,
                 seed: int, validate: Validate, objective: Objective | None = None):
        self.cfg, self.bundle, self.model, self.train_ds = cfg, bundle, bundle.model, train_ds
        self.validate = validate
        self.out_dir = Path(out_dir)
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        if cfg.threads:
            set_threads(cfg.threads)
        self.device = pick_device(cfg.device)
        try:
            self.precision = mp.resolve_precision(cfg.precision, self.device)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.scaler = mp.grad_scaler(self.precision, self.device)
        self.objective = objective or Objective(bundle.tokenizer.blank_id)
        self.unit = _WithHeads(self.model, self.objective.heads).to(self.device)
        self.net: torch.nn.Module = self.unit
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.unit, device_ids=ids)
        if cfg.augment.active:
            train_ds.set_augment(cfg.augment)
        if cfg.fbank_on == "device":
            train_ds.set_wave_batches(True)
        self.ckpt_dir, self.epoch_dir = self.out_dir / "checkpoints", self.out_dir / "epochs"
        existing = ck.list_checkpoints(self.ckpt_dir)
        self._last = (existing[-1], ck.load_train_state(existing[-1])) if existing else None
        self.seed, self.accum = seed, self._accumulation()
        make = getattr(train_ds, "make_sampler", None)  # a MixedDataset interleaves untranscribed batches
        share = dict(seed=seed, rank=self.rank, world_size=self.world, accum=self.accum)
        self.sampler = (make(cfg.max_frames, **share) if make else
                        BucketingSampler(train_ds.lengths, cfg.max_frames, **share))
        self.steps_per_epoch = len(self.sampler.batches(0)) // self.accum
        total = self.steps_per_epoch * cfg.epochs
        self.total_steps = min(cfg.max_steps, total) if cfg.max_steps else total
        self.opt = torch.optim.AdamW(self.unit.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lr_lambda(self.total_steps, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio))
        self.gen = torch.Generator().manual_seed(seed + 1000 * self.rank)  # SpecAugment draws (per-rank stream)
        self.state = TrainState()
        self.run_cfg = {"train": asdict(cfg), "seed": seed, "world_size": self.world, "precision": self.precision,
                        "batches_per_step": self.sampler.per_step, "accumulate": self.accum}

    def _accumulation(self) -> int:
        """Batches each rank accumulates per step: global_batches / world, or (global_batches 0) one, unless the
        run resumes a checkpoint written on another world size, whose batches per step it keeps."""
        g = self.cfg.global_batches
        if g:
            if g % self.world:
                raise ConfigError(f"global_batches={g} is not a multiple of the world size ({self.world} ranks)")
            return g // self.world
        if self._last is None:
            return 1
        path, st = self._last
        per_step = int(st["sampler"].get("per_step", self.world))  # checkpoints older than per_step: as before
        if per_step == self.world:
            return 1
        if per_step % self.world:
            raise ck.CheckpointError(
                f"{path}: written with {per_step} batch(es) per step; {self.world} ranks cannot share that out "
                f"evenly: resume on a world size that divides {per_step}, or rerun the stage with --force")
        if self.rank == 0:
            log.warning("resuming a %d-batch-per-step run on %d rank(s): each accumulates %d batches per step (the "
                        "same data order and schedule; with global_batches: 0 the augmentation and dropout draws "
                        "are per rank, so they differ from an uninterrupted run; set global_batches to make them "
                        "the same on any world size)", per_step, self.world, per_step // self.world)
        return per_step // self.world

    def _audio_seed(self, local: int) -> int:
        """The seed of the audio perturbations of this rank's ``local``-th batch of the epoch (from its global
        place: the same on every world size, with or without workers, after a resume)."""
        return int(self._seeds(self.sampler.global_index(local), 3).generate_state(1)[0])

    def _seeds(self, g: int, *tag: int) -> np.random.SeedSequence:
        """The seed sequence of the epoch's ``g``-th global batch (``tag`` tells its uses apart)."""
        return np.random.SeedSequence([self.seed, self.sampler.epoch, g, *tag])

    def _draws(self, g: int) -> tuple[torch.Generator, int] | None:
        """With ``global_batches`` set, the random draws of the epoch's ``g``-th global batch come from its
        own seeds (SpecAugment and VTLP generator, dropout seed), whichever rank trains on it."""
        if not self.cfg.global_batches:
            return None
        a, b = self._seeds(g).generate_state(2, np.uint64)
        return torch.Generator().manual_seed(int(a >> np.uint64(1))), int(b >> np.uint64(1))

    # -- checkpoints ---------------------------------------------------------------------------
    def resume(self) -> bool:
        if self._last is None:
            return False
        last, st = self._last
        self.model.load_state_dict(ck.read_weights(last / "model.safetensors")[1])
        if self.objective.heads is not None:
            self.objective.heads.load_state_dict(ck.read_tensors(last / "heads.safetensors")[1])
        was = st.get("precision", "fp32")
        if was != self.precision:
            raise ck.CheckpointError(
                f"{last}: this run was trained in {was}, but precision {self.cfg.precision!r} resolves to "
                f"{self.precision} here; set precision: {was} to resume it exactly, or rerun the stage with --force")
        if "scaler" in st:
            self.scaler.load_state_dict(st["scaler"])
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        self.sampler.load_state_dict(st["sampler"])
        _set_rng_state(st["rng"])
        self.gen.set_state(st["specaug_rng"])
        self.state = TrainState.from_dict(st)
        if self.rank == 0:
            log.info("resuming from %s (epoch %d, step %d)", last, self.state.epoch, self.state.step)
        return True

    def save(self, epoch: int) -> None:
        if self.rank != 0:
            return
        self.state.epoch = epoch
        state = {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                 "sampler": self.sampler.state_dict(), "rng": _rng_state(), "specaug_rng": self.gen.get_state(),
                 "precision": self.precision, **self.state.to_dict()}
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        ck.save_checkpoint(self.ckpt_dir / f"ckpt-{self.state.step:08d}", self.model, state, self.run_cfg,
                           heads=self.objective.heads)
        ck.prune(self.ckpt_dir, self.cfg.keep_last)

    # -- one step and one epoch ----------------------------------------------------------------
    def _forward(self, batch: Batch, gen: torch.Generator) -> torch.Tensor:
        cfg = self.cfg
        feats = batch.feats
        if cfg.vtlp:
            feats = vtlp(feats, batch.feat_lens, max_warp=cfg.vtlp, generator=gen)
        if cfg.specaug:
            feats = spec_augment(feats, batch.feat_lens, generator=gen)
        with mp.autocast(self.precision, self.device):
            out = self.net(feats, batch.feat_lens, return_hidden=self.objective.needs_hidden)
        # losses in float32, outside autocast (a no-op cast in fp32)
        fwd = Forward(out[0].float(), out[1], out[2].float() if len(out) > 2 else None)
        return self.objective(batch, fwd)

    def step(self, group: list[tuple[int, Batch]]) -> None:
        """One optimizer step on this rank's ``(global index, batch)`` pairs; gradients are the mean over the
        step's batches of all ranks (a batch's loss is divided by the batches per rank, DDP averages ranks)."""
        cfg, st = self.cfg, self.state
        self.opt.zero_grad(set_to_none=True)
        good, losses = True, []
        for a, (g, batch) in enumerate(group):
            batch = batch.to(self.device)
            if batch.wave:  # fbank_on: device
                batch = wave_features(batch, self.train_ds.fbank(), self.train_ds.dim)
            draws = self._draws(g)
            sync = a == len(group) - 1 or self.world == 1
            with contextlib.ExitStack() as stack:
                if not sync:
                    stack.enter_context(self.net.no_sync())
                if draws is not None:  # dropout masks from the batch's own seed, the process's RNG untouched
                    stack.enter_context(torch.random.fork_rng(
                        devices=[self.device.index or 0] if self.device.type == "cuda" else [], device_type="cuda"))
                    torch.manual_seed(draws[1])
                loss = self._forward(batch, self.gen if draws is None else draws[0])
                finite = torch.tensor([1.0 if torch.isfinite(loss) else 0.0], device=self.device)
                if self.world > 1:
                    dist.all_reduce(finite, op=dist.ReduceOp.MIN)
                if finite.item() > 0 and good:
                    self.scaler.scale(loss / len(group) if len(group) > 1 else loss).backward()
                    losses.append(float(loss.detach()))
                else:
                    good = False
            st.utt += len(batch.ids)
            st.sec += batch.seconds
        if good:
            ok = True
            if cfg.optim.grad_clip:
                self.scaler.unscale_(self.opt)
                gn = torch.nn.utils.clip_grad_norm_(self.unit.parameters(), cfg.optim.grad_clip)
                ok = bool(torch.isfinite(gn))
            if self.scaler.is_enabled():  # fp16: the scaler skips an overflowing step and lowers its scale
                self.scaler.step(self.opt)
                self.scaler.update()
                st.skipped += 0 if ok else 1
            elif ok:
                self.opt.step()
            else:
                self.opt.zero_grad(set_to_none=True)
                st.skipped += 1
            st.loss_sum += sum(losses)
            st.n_loss += len(losses)
        else:
            self.opt.zero_grad(set_to_none=True)
            st.skipped += 1
            log.warning("step %d: non-finite loss, skipped (%d so far)", st.step, st.skipped)
        self.sched.step()
        st.step += 1

    def end_epoch(self, epoch: int) -> None:
        """Dev scoring, the metrics row, epoch weights and keep-best (rank 0)."""
        st, cfg = self.state, self.cfg
        elapsed = time.time() - st.t0
        counts = torch.tensor([st.utt, st.sec, st.loss_sum, st.n_loss], dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(counts)
        if self.rank != 0:
            return
        ev = self._validate()
        row = {"epoch": epoch + 1, "step": st.step, "train_loss": round(float(counts[2] / max(counts[3], 1)), 4),
               "dev_cer": ev["cer"], "dev_wer": ev["wer"], "lr": f"{self.sched.get_last_lr()[0]:.3e}",
               "utt_per_s": round(float(counts[0]) / elapsed, 2),
               "audio_s_per_s": round(float(counts[1]) / elapsed, 1), "epoch_seconds": round(elapsed, 1),
               "data_wait_share": round(st.wait / elapsed, 3) if elapsed > 0 else 0.0,
               "skipped_steps": st.skipped}
        st.history.append(row)
        log.info("epoch %d: loss %.3f, dev CER %.2f%% WER %.2f%%, %.0f s audio/s", epoch + 1, row["train_loss"],
                 ev["cer"], ev["wer"], row["audio_s_per_s"])
        ck.save_weights(self.model, self.epoch_dir / f"epoch-{epoch + 1:03d}.safetensors")
        for old in sorted(self.epoch_dir.glob("epoch-*.safetensors"))[:-cfg.average_last]:
            old.unlink()
        if ev["cer"] < st.best["cer"]:
            st.best = {"cer": ev["cer"], "wer": ev["wer"], "epoch": epoch + 1}
            save_bundle(self.bundle, self.out_dir / "best.safetensors")
        _write_csv(self.out_dir / "metrics.csv", st.history)

    def _validate(self) -> dict[str, Any]:
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return self.validate(self.model, self.device)
        finally:
            self.model.train(was)

    def _check_skipped(self, epoch: int, steps: int, skipped: int) -> None:
        if steps and skipped / steps > self.cfg.max_skipped_fraction:
            raise TrainingFailed(
                f"{self.out_dir}: {skipped} of {steps} steps of epoch {epoch + 1} were skipped because the loss or "
                f"its gradients were not finite (more than max_skipped_fraction={self.cfg.max_skipped_fraction}); "
                "check the features for NaN/Inf (featurize's cmvn.json and rejected/), or lower optim.lr")

    def fit(self) -> dict[str, Any]:
        cfg, st = self.cfg, self.state
        if self.rank == 0:
            log.info("training %s: %d parameters, %d steps/epoch, device %s, %s, world %d",
                     "BiLSTM" if self.model.cfg.bidirectional else "LSTM", count_parameters(self.model),
                     self.steps_per_epoch, self.device, self.precision, self.world)
        stop = False
        for epoch in range(st.epoch, cfg.epochs):
            if self.sampler.epoch != epoch:
                self.sampler.set_epoch(epoch)
            self.net.train()
            st.start_epoch()
            step0, skipped0 = st.step, st.skipped
            bar = progress(total=self.steps_per_epoch, initial=self.sampler.position // self.accum,
                           desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", disable=self.rank != 0)
            group: list[tuple[int, Batch]] = []
            t_ready = time.perf_counter()
            for _, batch in batches(self.sampler, self.train_ds, workers=cfg.workers, prefetch=cfg.prefetch,
                                    pin_memory=self.device.type == "cuda",
                                    seed_of=self._audio_seed if cfg.augment.active else None):
                st.wait += time.perf_counter() - t_ready  # the loop stood still until this batch was built
                group.append((self.sampler.global_index(self.sampler.position - 1), batch))
                if len(group) < self.accum:
                    t_ready = time.perf_counter()
                    continue
                self.step(group)
                group = []
                bar.update(1)
                if st.n_loss:
                    bar.set_postfix(loss=f"{st.loss_sum / st.n_loss:.3f}", refresh=False)
                if cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0:
                    self.save(epoch)
                if cfg.max_steps and st.step >= cfg.max_steps:
                    stop = True
                    break
                t_ready = time.perf_counter()
            bar.close()
            self._check_skipped(epoch, st.step - step0, st.skipped - skipped0)
            self.end_epoch(epoch)
            self.sampler.set_epoch(epoch + 1)
            st.reset_counters()
            self.save(epoch + 1)
            if self.world > 1:
                dist.barrier()
            if stop:
                break
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Average the last epochs into ``model.safetensors`` and score it (rank 0)."""
        st = self.state
        summary: dict[str, Any] = {"parameters": count_parameters(self.model), "steps": st.step,
                                   "skipped_steps": st.skipped, "best": st.best, "epochs_run": len(st.history),
                                   "precision": self.precision}
        if self.rank != 0:
            return summary
        eps = sorted(self.epoch_dir.glob("epoch-*.safetensors"))[-self.cfg.average_last:]
        _, avg = ck.average_weights(eps)
        self.model.load_state_dict(avg)
        save_bundle(self.bundle, self.out_dir / "model.safetensors")
        ev = self._validate()
        summary["final"] = {"dev_cer": ev["cer"], "dev_wer": ev["wer"], "averaged": [p.name for p in eps]}
        if st.history:
            summary["audio_s_per_s"] = round(sum(h["audio_s_per_s"] for h in st.history) / len(st.history), 1)
            summary["utt_per_s"] = round(sum(h["utt_per_s"] for h in st.history) / len(st.history), 2)
        return summary


def train(cfg: TrainConfig, bundle: ModelBundle, train_ds: FeatureDataset, out_dir: str | Path, *, seed: int,
          validate: Validate, objective: Objective | None = None) -> dict[str, Any]:
    """Train ``bundle.model`` and write ``out_dir/{model,best}.safetensors`` (model bundles: the weights and
    the bundle's description), ``metrics.csv``, ``checkpoints/``.

    ``validate(model, device) -> {"cer": ..., "wer": ...}`` scores the model on the dev set (percent) after
    every epoch; the lowest CER is kept as ``best``. ``objective`` replaces plain CTC (distillation).
    Resumes from the newest checkpoint in ``out_dir`` if there is one. Returns a summary (best dev
    CER/WER, throughput, parameters, skipped steps)."""
    t = Trainer(cfg, bundle, train_ds, out_dir, seed=seed, validate=validate, objective=objective)
    t.resume()
    return t.fit()


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
