"""One training loop for every LSTM-CTC model (teachers, baselines, students).

AdamW with linear warm-up and cosine decay, gradient clipping, a guard that skips
non-finite losses (and counts them), SpecAugment, dev greedy CER/WER every epoch, a
metrics CSV, keep-best and averaging of the last k epoch checkpoints. CPU or CUDA is chosen
automatically. Checkpoints every ``checkpoint_every`` steps and at every epoch end make
resume exact: after SIGKILL, a rerun continues from the last checkpoint and, on the CPU,
ends with the same weights as an uninterrupted run.

Under ``torchrun`` (a process group is initialised by the caller), the model is wrapped in
DistributedDataParallel, each rank trains on its share of the batches, and rank 0 evaluates
and writes checkpoints.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from speechkd.config import field
from speechkd.eval.scoring import greedy_decode, score
from speechkd.features.specaug import spec_augment
from speechkd.models.lstm_ctc import LSTMCTC, ModelConfig, count_parameters
from speechkd.train import checkpoint as ck
from speechkd.train.data import Batch, BucketingSampler, FeatureDataset
from speechkd.utils import atomic_write_text, progress

log = logging.getLogger(__name__)


@dataclass
class OptimConfig:
    lr: float = field(2e-3, help="peak learning rate (AdamW)")
    weight_decay: float = field(1e-2, help="AdamW weight decay")
    warmup_steps: int = field(200, help="linear warm-up steps")
    min_lr_ratio: float = field(0.05, help="cosine decay floor, as a fraction of lr")
    grad_clip: float = field(5.0, help="gradient norm clip (0 = off)")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig, help="model (vocab_size is set from the tokenizer)")
    optim: OptimConfig = field(default_factory=OptimConfig, help="optimizer and schedule")
    epochs: int = field(10, help="epochs")
    max_frames: int = field(20000, help="padded input frames per batch (per process)")
    specaug: bool = field(True, help="SpecAugment on training batches")
    checkpoint_every: int = field(0, help="also checkpoint every N steps (0 = epoch ends only)")
    keep_last: int = field(2, help="resume checkpoints kept")
    average_last: int = field(3, help="final model = average of the last k epoch weights (1 = last)")
    dev_limit: int = field(0, help="score only the first N dev utterances each epoch (0 = all)")
    device: str = field("auto", help="auto | cpu | cuda")
    threads: int = field(0, help="torch CPU threads (0 = torch default)")
    max_steps: int = field(0, help="stop after this many steps in total (0 = no limit)")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if dist.is_initialized() and torch.cuda.is_available():
            return torch.device("cuda", dist.get_rank() % torch.cuda.device_count())
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def lr_lambda(total_steps: int, warmup: int, floor: float) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        prog = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * prog))

    return f


@torch.no_grad()
def evaluate(model: LSTMCTC, ds: FeatureDataset, tokenizer, device, max_frames: int, limit: int = 0) -> dict[str, Any]:
    """Greedy CER/WER (percent) on ``ds``; returns the score dict plus ``ids``/``hyps``."""
    model.eval()
    idx = list(range(len(ds) if not limit else min(limit, len(ds))))
    idx.sort(key=lambda i: ds.lengths[i])
    ids, refs, hyps = [], [], []
    sampler = BucketingSampler([ds.lengths[i] for i in idx], max(max_frames, max(ds.lengths)), seed=0, shuffle=False)
    for b in sampler.batches(0):
        batch = ds.batch([idx[j] for j in b]).to(device)
        lp, ol = model(batch.feats, batch.feat_lens)
        for uid, text, seq in zip(batch.ids, batch.texts, greedy_decode(lp, ol, tokenizer.blank_id)):
            ids.append(uid)
            refs.append(text)
            hyps.append(tokenizer.decode(seq))
    out = score(refs, hyps)
    out.update(ids=ids, refs=refs, hyps=hyps)
    return out


def _rng_state() -> dict[str, Any]:
    st = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def ctc_loss(log_probs: torch.Tensor, out_lens: torch.Tensor, batch: Batch, blank: int = 0) -> torch.Tensor:
    """Mean over the batch of per-utterance CTC loss divided by target length (torch's 'mean')."""
    return F.ctc_loss(log_probs.transpose(0, 1), batch.targets, out_lens, batch.target_lens, blank=blank,
                      reduction="mean", zero_infinity=True)


LossFn = Callable[[LSTMCTC, Batch, torch.Tensor, torch.Tensor], torch.Tensor]


def train(cfg: TrainConfig, model: LSTMCTC, train_ds: FeatureDataset, dev_ds: FeatureDataset, tokenizer,
          out_dir: str | Path, *, seed: int, loss_fn: LossFn | None = None) -> dict[str, Any]:
    """Train ``model`` and write ``out_dir/{model,best}.safetensors``, ``metrics.csv``, ``checkpoints/``.

    ``loss_fn(model, batch, log_probs, out_lens)`` replaces plain CTC (used by distillation).
    Returns a summary (best dev CER/WER, throughput, parameters, skipped steps)."""
    out_dir = Path(out_dir)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    model.to(device)
    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = BucketingSampler(train_ds.lengths, cfg.max_frames, seed=seed, rank=rank, world_size=world)
    steps_per_epoch = len(sampler.batches(0))
    total = steps_per_epoch * cfg.epochs if not cfg.max_steps else min(cfg.max_steps, steps_per_epoch * cfg.epochs)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio))
    gen = torch.Generator().manual_seed(seed + 1000 * rank)
    loss_fn = loss_fn or (lambda m, b, lp, ol: ctc_loss(lp, ol, b, tokenizer.blank_id))
    ckpt_dir, epoch_dir = out_dir / "checkpoints", out_dir / "epochs"
    step, start_epoch, skipped = 0, 0, 0
    history: list[dict[str, Any]] = []
    running = {"utt": 0, "sec": 0.0, "loss_sum": 0.0, "n_loss": 0, "elapsed": 0.0}  # this epoch so far
    best: dict[str, Any] = {"cer": float("inf")}
    run_cfg = {"train": asdict(cfg), "seed": seed, "world_size": world}

    existing = ck.list_checkpoints(ckpt_dir)
    if existing:
        last = existing[-1]
        model.load_state_dict(ck.read_weights(last / "model.safetensors")[1])
        st = ck.load_train_state(last)
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        sampler.load_state_dict(st["sampler"])
        _set_rng_state(st["rng"])
        gen.set_state(st["specaug_rng"])
        step, start_epoch, skipped = int(st["step"]), int(st["epoch"]), int(st["skipped"])
        history, best = list(st["history"]), dict(st["best"])
        running = dict(st.get("running", running))
        if rank == 0:
            log.info("resuming from %s (epoch %d, step %d)", last, start_epoch, step)

    n_utt, n_sec, loss_sum, n_loss, t0 = 0, 0.0, 0.0, 0, time.time()

    def save(epoch: int) -> None:
        if rank != 0:
            return
        state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "sampler": sampler.state_dict(),
                 "rng": _rng_state(), "specaug_rng": gen.get_state(), "step": step, "epoch": epoch,
                 "skipped": skipped, "history": history, "best": best,
                 "running": {"utt": n_utt, "sec": n_sec, "loss_sum": loss_sum, "n_loss": n_loss,
                             "elapsed": time.time() - t0}}
        ck.save_checkpoint(ckpt_dir / f"ckpt-{step:08d}", model, state, run_cfg)
        ck.prune(ckpt_dir, cfg.keep_last)

    if rank == 0:
        log.info("training %s: %d parameters, %d steps/epoch, device %s, world %d", "BiLSTM" if model.cfg.bidirectional
                 else "LSTM", count_parameters(model), steps_per_epoch, device, world)
    stop = False
    for epoch in range(start_epoch, cfg.epochs):
        if sampler.epoch != epoch:
            sampler.set_epoch(epoch)
        net.train()
        # counters continue across a resume within the epoch
        n_utt, n_sec, loss_sum, n_loss = running["utt"], running["sec"], running["loss_sum"], running["n_loss"]
        t0 = time.time() - running["elapsed"]
        running = {"utt": 0, "sec": 0.0, "loss_sum": 0.0, "n_loss": 0, "elapsed": 0.0}
        bar = progress(total=steps_per_epoch, initial=sampler.position, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       unit="batch", disable=rank != 0)
        for b in sampler:
            batch = train_ds.batch(b).to(device)
            feats = batch.feats
            if cfg.specaug:
                feats = spec_augment(feats.cpu(), batch.feat_lens.cpu(), generator=gen).to(device)
            lp, ol = net(feats, batch.feat_lens)
            loss = loss_fn(model, batch, lp, ol)
            finite = torch.tensor([1.0 if torch.isfinite(loss) else 0.0], device=device)
            if world > 1:
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            opt.zero_grad(set_to_none=True)
            if finite.item() > 0:
                loss.backward()
                if cfg.optim.grad_clip:
                    gn = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                    if not torch.isfinite(gn):
                        opt.zero_grad(set_to_none=True)
                        skipped += 1
                    else:
                        opt.step()
                else:
                    opt.step()
                loss_sum += float(loss.detach())
                n_loss += 1
            else:
                skipped += 1
                log.warning("step %d: non-finite loss, skipped (%d so far)", step, skipped)
            sched.step()
            step += 1
            n_utt += len(batch.ids)
            n_sec += batch.seconds
            bar.update(1)
            if n_loss:
                bar.set_postfix(loss=f"{loss_sum / n_loss:.3f}", refresh=False)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                save(epoch)
            if cfg.max_steps and step >= cfg.max_steps:
                stop = True
                break
        bar.close()
        elapsed = time.time() - t0
        counts = torch.tensor([n_utt, n_sec, loss_sum, n_loss], dtype=torch.float64, device=device)
        if world > 1:
            dist.all_reduce(counts)
        if rank == 0:
            ev = evaluate(model, dev_ds, tokenizer, device, cfg.max_frames, cfg.dev_limit)
            row = {"epoch": epoch + 1, "step": step, "train_loss": round(float(counts[2] / max(counts[3], 1)), 4),
                   "dev_cer": ev["cer"], "dev_wer": ev["wer"], "lr": f"{sched.get_last_lr()[0]:.3e}",
                   "utt_per_s": round(float(counts[0]) / elapsed, 2),
                   "audio_s_per_s": round(float(counts[1]) / elapsed, 1), "epoch_seconds": round(elapsed, 1),
                   "skipped_steps": skipped}
            history.append(row)
            log.info("epoch %d: loss %.3f, dev CER %.2f%% WER %.2f%%, %.0f s audio/s", epoch + 1, row["train_loss"],
                     ev["cer"], ev["wer"], row["audio_s_per_s"])
            ck.save_weights(model, epoch_dir / f"epoch-{epoch + 1:03d}.safetensors")
            for old in sorted(epoch_dir.glob("epoch-*.safetensors"))[:-max(cfg.average_last, 1)]:
                old.unlink()
            if ev["cer"] < best["cer"]:
                best = {"cer": ev["cer"], "wer": ev["wer"], "epoch": epoch + 1}
                ck.save_weights(model, out_dir / "best.safetensors")
            _write_csv(out_dir / "metrics.csv", history)
        sampler.set_epoch(epoch + 1)
        n_utt, n_sec, loss_sum, n_loss, t0 = 0, 0.0, 0.0, 0, time.time()
        save(epoch + 1)
        if world > 1:
            dist.barrier()
        if stop:
            break

    summary: dict[str, Any] = {"parameters": count_parameters(model), "steps": step, "skipped_steps": skipped,
                               "best": best, "epochs_run": len(history)}
    if rank == 0:
        eps = sorted(epoch_dir.glob("epoch-*.safetensors"))[-max(cfg.average_last, 1):]
        mcfg, avg = ck.average_weights(eps)
        model.load_state_dict(avg)
        ck.save_weights(model, out_dir / "model.safetensors")
        ev = evaluate(model, dev_ds, tokenizer, device, cfg.max_frames, cfg.dev_limit)
        summary["final"] = {"dev_cer": ev["cer"], "dev_wer": ev["wer"], "averaged": [p.name for p in eps]}
        if history:
            summary["audio_s_per_s"] = round(sum(h["audio_s_per_s"] for h in history) / len(history), 1)
            summary["utt_per_s"] = round(sum(h["utt_per_s"] for h in history) / len(history), 2)
    return summary


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
