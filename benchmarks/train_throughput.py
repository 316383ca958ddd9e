"""Training throughput (seconds of audio per wall second) of the recipe's teacher and baseline (student).

1. Ours against a peer: ``LSTMCTC`` on padded batches (the BiLSTM's backward direction runs on a
   length-aware reversal) against the same sizes built from ``torch.nn.LSTM(bidirectional=...)`` over
   packed sequences, the usual way to keep padding out of a BiLSTM.
2. Mixed precision: ours in bf16 autocast (``speechkd.train.precision``, what ``precision: auto`` picks
   on a CPU with native bf16) against ours in float32 -> ``bf16_speedup_teacher``,
   ``bf16_speedup_student``. The two alternate repeat by repeat.

Same random batches (lengths drawn like synth-en's, 1.5-7 s), forward + CTC + backward + AdamW step,
threads pinned, median of --repeats. Runs on CUDA too when it is there (--device).

3. The accuracy cost, with ``--exp EXP`` (an experiment with featurize and tokenizer stages, e.g.
   exp/default): the real trainer trains the teacher and the student (CTC only) for ``--steps`` steps in
   fp32 and in bf16 on the same schedule and scores dev CER/WER (``dev_cer_teacher_fp32``, ...), with
   the wall time of each run.

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class PackedPeer:
    """torch.nn.LSTM over packed sequences, with the same stacking and output layer."""

    def __init__(self, cfg, device):
        import torch

        self.cfg = cfg
        self.lstm = torch.nn.LSTM(cfg.input_dim * cfg.stack, cfg.hidden, cfg.layers, batch_first=True,
                                  bidirectional=cfg.bidirectional, dropout=cfg.dropout).to(device)
        self.out = torch.nn.Linear(cfg.hidden * (2 if cfg.bidirectional else 1), cfg.vocab_size).to(device)

    def parameters(self):
        return list(self.lstm.parameters()) + list(self.out.parameters())

    def __call__(self, feats, lengths):
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        b, t, d = feats.shape
        k = self.cfg.stack
        x = feats[:, : t // k * k].reshape(b, t // k, d * k)
        ol = lengths // k
        packed = pack_padded_sequence(x, ol.cpu(), batch_first=True, enforce_sorted=False)
        h, _ = self.lstm(packed)
        h, _ = pad_packed_sequence(h, batch_first=True, total_length=x.shape[1])
        return self.out(h).log_softmax(-1), ol


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--exp", type=Path, help="experiment dir (featurize + tokenizer) for the dev-CER comparison")
    ap.add_argument("--steps", type=int, default=300, help="training steps per run of the dev-CER comparison")
    a = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from speechkd.config import from_dict, load_yaml
    from speechkd.models import ModelConfig, build_model
    from speechkd.train.precision import autocast, cpu_runs_bf16_lstm, resolve_precision

    from speechkd.utils import set_threads
    set_threads(a.threads)  # numba first: its pool would reset torch's threads
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if a.device == "auto" else a.device))
    stages = load_yaml(Path(__file__).resolve().parents[1] / "pipelines" / "default" / "recipe.yaml")["stages"]
    g = torch.Generator().manual_seed(0)
    n_batches = 2 if a.quick else 6
    max_frames = stages["teacher"].get("max_frames", 10000) * (1 if device.type == "cpu" else 8)
    batches = []
    for _ in range(n_batches):
        lens = torch.randint(150, 700, (256,), generator=g)
        per = max(1, int(max_frames // int(lens.max())))
        lens = lens[:per].sort(descending=True).values
        feats = torch.randn(len(lens), int(lens.max()), 80, generator=g)
        tl = torch.clamp(lens // 8, min=1)
        batches.append((feats, lens, torch.randint(1, 29, (int(tl.sum()),), generator=g), tl))

    def run(model, params, precision="fp32") -> float:
        opt = torch.optim.AdamW(params, 1e-3)
        sec = 0.0
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for feats, lens, tg, tl in batches:
            f, l = feats.to(device), lens.to(device)
            with autocast(precision, device):
                lp, ol = model(f, l)
            lp = lp.float()
            loss = F.ctc_loss(lp.transpose(0, 1), tg.to(device), ol, tl.to(device), zero_infinity=True)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sec += float(lens.sum()) / 100
        if device.type == "cuda":
            torch.cuda.synchronize()
        return sec / (time.perf_counter() - t0)

    res: dict = {"device": str(device), "threads": a.threads, "repeats": a.repeats}
    for name in ("teacher", "baseline"):
        mcfg = from_dict(ModelConfig, {**stages[name]["model"], "dropout": 0.0})
        ours = build_model(mcfg).to(device)
        peer = PackedPeer(mcfg, device)
        run(ours, list(ours.parameters()))  # warm-up
        run(peer, peer.parameters())
        o = statistics.median(run(ours, list(ours.parameters())) for _ in range(a.repeats))
        p = statistics.median(run(peer, peer.parameters()) for _ in range(a.repeats))
        res[f"{name}_audio_s_per_s"] = round(o, 1)
        res[f"{name}_packed_peer_audio_s_per_s"] = round(p, 1)
        res[f"{name}_ratio_vs_packed"] = round(o / p, 2)
        print(f"{name:9s} ours {o:9.1f} s audio/s   packed nn.LSTM {p:9.1f} s audio/s   ratio {o / p:.2f}", flush=True)

    low = resolve_precision("auto", device)
    low = "bf16" if low == "fp32" else low  # emulated bf16 where the CPU has none: the figure then says so
    if low == "bf16" and device.type == "cpu" and not cpu_runs_bf16_lstm():
        print("mixed precision: skipped, oneDNN runs no bf16 LSTM on this CPU (no AVX-512)", file=sys.stderr)
        low = None
    res["mixed_precision"] = low
    for name, key in (("teacher", "teacher"), ("baseline", "student")) if low else ():
        mcfg = from_dict(ModelConfig, {**stages[name]["model"], "dropout": 0.0})
        ours = build_model(mcfg).to(device)
        params = list(ours.parameters())
        run(ours, params, low)  # warm-up
        t32, t16 = [], []
        for _ in range(a.repeats):
            t32.append(run(ours, params, "fp32"))
            t16.append(run(ours, params, low))
        o32, o16 = statistics.median(t32), statistics.median(t16)
        res[f"{key}_fp32_audio_s_per_s"] = round(o32, 1)
        res[f"{key}_{low}_audio_s_per_s"] = round(o16, 1)
        res[f"{low}_speedup_{key}"] = round(o16 / o32, 2)
        print(f"{key:9s} fp32 {o32:9.1f} s audio/s   {low} {o16:9.1f} s audio/s   speedup {o16 / o32:.2f}", flush=True)

    if a.exp and low:
        res.update(dev_cost(a.exp, stages, a.steps, a.threads, low, a.device))
    print(json.dumps(res))


def dev_cost(exp: Path, stages: dict, steps: int, threads: int, low: str, device: str) -> dict:
    """Train the recipe's teacher and baseline for ``steps`` steps in fp32 and in ``low`` precision with
    the real trainer on ``exp``'s features; dev CER/WER and wall seconds of each."""
    import tempfile

    import torch

    from speechkd.config import from_dict
    from speechkd.stages import train as train_stage
    from speechkd.stages.runner import StageContext
    from speechkd.train.trainer import train

    out: dict = {"dev_steps": steps}
    with tempfile.TemporaryDirectory() as tmp:
        for name, key in (("teacher", "teacher"), ("baseline", "student")):
            for prec in ("fp32", low):
                body = {k: v for k, v in stages[name].items() if k != "type"}
                cfg = from_dict(train_stage.Config, {**body, "epochs": 1000, "max_steps": steps, "average_last": 1,
                                                     "precision": prec, "threads": threads, "device": device})
                run_dir = Path(tmp) / f"{name}-{prec}"
                run_dir.mkdir()
                ctx = StageContext("bench", exp, run_dir, 1234, exp)
                torch.manual_seed(1234)
                bundle, tr, dev = train_stage.prepare(cfg, ctx)
                t0 = time.perf_counter()
                summary = train(cfg, bundle, tr, run_dir, seed=1234,
                                validate=train_stage.dev_scorer(dev, bundle.tokenizer, cfg.max_frames, cfg.dev_limit))
                wall = time.perf_counter() - t0
                out[f"dev_cer_{key}_{prec}"] = summary["final"]["dev_cer"]
                out[f"dev_wer_{key}_{prec}"] = summary["final"]["dev_wer"]
                out[f"train_seconds_{key}_{prec}"] = round(wall, 1)  # with two dev scorings
                out[f"train_audio_s_per_s_{key}_{prec}"] = summary["audio_s_per_s"]  # training steps only
                print(f"{key:9s} {prec}: {steps} steps in {wall:7.1f} s, dev CER {summary['final']['dev_cer']:.2f} "
                      f"WER {summary['final']['dev_wer']:.2f}", flush=True)
            out[f"dev_cer_delta_{key}"] = round(out[f"dev_cer_{key}_{low}"] - out[f"dev_cer_{key}_fp32"], 2)
            out[f"train_speedup_{key}"] = round(out[f"train_audio_s_per_s_{key}_{low}"] /
                                                out[f"train_audio_s_per_s_{key}_fp32"], 2)
    return out


if __name__ == "__main__":
    main()
