"""Cost of distillation per training step, same batches, one process, threads pinned.

Contenders (student = the default recipe's baseline architecture, forward + loss + backward + AdamW):
  * CTC only (the no-KD baseline);
  * KD from the teacher cache: frame KD (delayed) + N-best sequence KD, as ``student_both``;
  * KD from the cache, frame-level only, as ``student_frame``;
  * KD from an online teacher (the BiLSTM run on every batch, dense posteriors), frame-level.
Target: cache KD costs at most 1.2x CTC-only per step (so per epoch). Needs the default recipe run
through ``teacher_cache`` (otherwise it builds and uses the quick recipe's cache). The last line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="6 batches instead of 30")
    ap.add_argument("--exp", default=str(REPO / "exp" / "default"))
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import torch

    from speechkd.config import from_dict, load_yaml
    from speechkd.distill.cache import TeacherCache
    from speechkd.features.cmvn import CMVNStats
    from speechkd.models import ModelConfig, build_model
    from speechkd.distill.compose import KDConfig, KDObjective
    from speechkd.models.bundle import load_bundle
    from speechkd.data.dataset import FeatureDataset
    from speechkd.data.sampler import BucketingSampler
    from speechkd.train.objective import Forward, Objective

    from speechkd.utils import set_threads
    set_threads(a.threads)  # numba first: its pool would reset torch's threads
    exp = Path(a.exp)
    if not (exp / "teacher_cache" / ".done").exists():
        # no default run yet: build the quick recipe's cache (about a minute) and measure on that
        import os

        from speechkd.stages.runner import run_recipe

        print(f"{exp / 'teacher_cache'} not found; using pipelines/quick (run `make demo` for the full-size figures)")
        os.chdir(REPO)
        run_recipe(REPO / "pipelines" / "quick", to_stage="teacher_cache")
        exp = REPO / "exp" / "quick"
    stages = load_yaml(REPO / "pipelines" / "default" / "recipe.yaml")["stages"]
    tb = load_bundle(exp / "teacher" / "model.safetensors")
    tok, teacher = tb.tokenizer, tb.model
    ds = FeatureDataset(exp / "featurize" / "train.jsonl", tok)
    cache = TeacherCache(exp / "teacher_cache")
    stats = CMVNStats.load(exp / "featurize" / "cmvn.json")
    n = 6 if a.quick else 30
    batches = BucketingSampler(ds.lengths, stages["baseline"].get("max_frames", 10000), seed=0).batches(0)[:n]
    delay = load_bundle(exp / "student_frame" / "model.safetensors").delay_frames \
        if (exp / "student_frame" / "model.safetensors").exists() else 1

    def student():
        torch.manual_seed(0)
        m = build_model(from_dict(ModelConfig, {**stages["baseline"]["model"], "vocab_size": tok.vocab_size}))
        m.set_cmvn(stats.mean, stats.std)
        return m

    blank = tok.blank_id
    contenders = {
        "ctc": Objective(blank),
        "cache_both": KDObjective(KDConfig(alpha=0.5, delay=delay, seq="nbest", nbest=4), blank, delay, cache=cache),
        "cache_frame": KDObjective(KDConfig(alpha=0.5, delay=delay), blank, delay, cache=cache),
        "online_frame": KDObjective(KDConfig(alpha=0.5, delay=delay, online=True), blank, delay, teacher=teacher),
    }
    per_step: dict[str, list[float]] = {k: [] for k in contenders}
    models = {k: student() for k in contenders}
    opts = {k: torch.optim.AdamW(models[k].parameters(), 1e-3) for k in contenders}
    for bi, b in enumerate(batches):
        batch = ds.batch(b)
        for name, fn in contenders.items():  # interleaved, so machine noise hits all alike
            m, opt = models[name], opts[name]
            t0 = time.perf_counter()
            loss = fn(batch, Forward(*m(batch.feats, batch.feat_lens)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if bi > 0:  # the first batch warms caches and JIT
                per_step[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in per_step.items()}
    res = {"exp": str(exp), "steps": len(batches) - 1, "threads": a.threads, "delay_frames": delay,
           **{f"{k}_s_per_step": round(v, 4) for k, v in med.items()},
           "cache_both_vs_ctc": round(med["cache_both"] / med["ctc"], 3),
           "cache_frame_vs_ctc": round(med["cache_frame"] / med["ctc"], 3),
           "online_frame_vs_ctc": round(med["online_frame"] / med["ctc"], 3),
           "online_vs_cache_frame": round(med["online_frame"] / med["cache_frame"], 3),
           "target_cache_vs_ctc_max": 1.2}
    for k, v in med.items():
        print(f"{k:13s} {v * 1e3:8.1f} ms/step  ({v / med['ctc']:.2f}x CTC-only)")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
