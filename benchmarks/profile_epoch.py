"""Where a teacher training step spends its time: data loading, forward (the LSTMs, the length-aware
reversal of the backward direction), the loss, backward, gradient clipping and the optimizer.

Runs the recipe's teacher (or ``--stage``) with the trainer's own pieces on an experiment's features
(``--exp``, e.g. exp/default) for ``--steps`` steps (0 = one whole epoch) under ``torch.profiler``, in
``--precision`` (fp32 or bf16). Phases are ``record_function`` ranges around each piece of the step;
the reversal is the ``aten::gather`` calls of the forward and their backward. Padding is counted from
the sampler's batches (padded frames over real frames). Profiler overhead inflates every phase a
little; read the shares, not the seconds. ``--quick``: the quick recipe's teacher on its tiny corpus
(built up to the tokenizer if missing), a few steps. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PHASES = ("data", "forward", "loss", "backward", "clip", "optimizer")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exp", type=Path, help="experiment dir with featurize and tokenizer stages (e.g. exp/default)")
    ap.add_argument("--stage", default="teacher", help="train stage of the recipe whose config is used")
    ap.add_argument("--steps", type=int, default=60, help="steps to profile (0 = one whole epoch)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="pipelines/quick (built if missing), 4 steps")
    a = ap.parse_args()
    recipe = REPO / "pipelines" / ("quick" if a.quick else "default")
    if a.quick:
        import os

        from speechkd.stages.runner import run_recipe

        a.exp, a.steps = REPO / "exp" / "quick", min(a.steps or 4, 4)
        if not (a.exp / "tokenizer" / ".done").exists():
            os.chdir(REPO)
            run_recipe(recipe, to_stage="tokenizer")
    if a.exp is None:
        ap.error("--exp is required (or --quick)")

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from speechkd.config import from_dict, load_yaml
    from speechkd.stages import train as train_stage
    from speechkd.stages.runner import StageContext
    from speechkd.train.precision import autocast
    from speechkd.train.objective import Forward
    from speechkd.train.trainer import Trainer

    from speechkd.utils import set_threads
    set_threads(a.threads)  # numba first: its pool would reset torch's threads
    stages = load_yaml(recipe / "recipe.yaml")["stages"]
    body = {k: v for k, v in stages[a.stage].items() if k != "type"}
    cfg = from_dict(train_stage.Config, {**body, "precision": a.precision, "threads": a.threads, "device": "cpu"})
    with tempfile.TemporaryDirectory() as tmp:
        ctx = StageContext("bench", a.exp, Path(tmp), 1234, a.exp)
        torch.manual_seed(1234)
        bundle, tr, dev = train_stage.prepare(cfg, ctx)
        t = Trainer(cfg, bundle, tr, tmp, seed=1234,
                    validate=train_stage.dev_scorer(dev, bundle.tokenizer, cfg.max_frames, cfg.dev_limit))
        batches = t.sampler.batches(0)
        batches = batches[: a.steps] if a.steps else batches
        real = sum(tr.lengths[i] for b in batches for i in b)
        padded = sum(len(b) * max(tr.lengths[i] for i in b) for b in batches)
        t.net.train()

        def one(b):
            with record_function("data"):
                batch = tr.batch(b)
            with record_function("forward"), autocast(t.precision, t.device):
                out = t.net(batch.feats, batch.feat_lens)
            with record_function("loss"):
                loss = t.objective(batch, Forward(out[0].float(), out[1]))
            t.opt.zero_grad(set_to_none=True)
            with record_function("backward"):
                loss.backward()
            with record_function("clip"):
                torch.nn.utils.clip_grad_norm_(t.unit.parameters(), cfg.optim.grad_clip)
            with record_function("optimizer"):
                t.opt.step()
            return batch.seconds

        one(batches[0])  # warm-up, not profiled
        t0 = time.perf_counter()
        audio = 0.0
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for b in batches[1:]:
                audio += one(b)
        wall = time.perf_counter() - t0

    ev = prof.key_averages()
    by = {e.key: e for e in ev}
    phase = {p: by[p].cpu_time_total / 1e6 for p in PHASES if p in by}
    total = sum(phase.values())
    lstm_f = sum(e.self_cpu_time_total for e in ev if "rnn" in e.key.lower() and "backward" not in e.key.lower())
    lstm_b = sum(e.self_cpu_time_total for e in ev if "rnn" in e.key.lower() and "backward" in e.key.lower())
    gather = sum(e.self_cpu_time_total for e in ev if e.key in ("aten::gather",))
    gather_b = sum(e.self_cpu_time_total for e in ev if e.key in ("aten::scatter_add_", "aten::scatter_add",
                                                                  "GatherBackward0"))
    res = {"stage": a.stage, "precision": a.precision, "threads": a.threads, "steps": len(batches) - 1,
           "wall_s": round(wall, 1), "audio_s_per_s_profiled": round(audio / wall, 1),
           "padding_overhead": round(padded / real - 1, 4),
           "share": {p: round(v / total, 4) for p, v in phase.items()},
           "lstm_forward_share": round(lstm_f / 1e6 / total, 4), "lstm_backward_share": round(lstm_b / 1e6 / total, 4),
           "reversal_share": round((gather + gather_b) / 1e6 / total, 4)}
    for p, v in phase.items():
        print(f"{p:10s} {v:8.2f} s  {100 * v / total:5.1f}%")
    print(f"of which: LSTM kernels forward {100 * res['lstm_forward_share']:.1f}%, backward "
          f"{100 * res['lstm_backward_share']:.1f}%; reversal (gather + its backward) {100 * res['reversal_share']:.2f}%")
    print(f"padding: {100 * res['padding_overhead']:.1f}% more frames than the utterances hold")
    print("top ops by self CPU time:")
    for e in sorted(ev, key=lambda e: -e.self_cpu_time_total)[:12]:
        print(f"  {e.key[:50]:50s} {e.self_cpu_time_total / 1e6:8.2f} s  {e.count:6d} calls")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
