"""Scaling out on one machine: featurize split across torchrun ranks, and training batches built by DataLoader
workers.

Both contenders of each pair run the same stage on the same audio in fresh experiment folders, one after the
other, repeated (--repeats) with the median taken; a stage's own time is read from its ``.done`` marker
(process start-up is not counted).

1. ``featurize``: the corpus's splits (``--splits``, imported from the experiment's corpus manifests) with
   one worker process per rank: 1 rank against ``torchrun --nproc_per_node 2`` (``featurize_speedup_2_ranks``,
   target >= 1.6x on 2 cores), and, for reference, today's single process with a pool of 2 workers.
2. ``train``: the recipe's student architecture trained with CTC for ``--steps`` steps on those features,
   batches built in the training process (``workers: 0``) against 2 DataLoader workers that prefetch them
   (``loader_throughput_ratio``: audio seconds per second, workers over none; target >= 1 on the CPU).

    python benchmarks/scaling.py                     # exp/default's dev, test and test_unseen_voice
    python benchmarks/scaling.py --splits train      # 7 h of train audio
    python benchmarks/scaling.py --quick             # pipelines/quick's corpus, built if missing

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def recipe(exp: Path, splits: list[str], workers: int, train_workers: int, steps: int) -> str:
    corpus = exp / "corpus"
    src = ", ".join(f"{s}: {corpus / f'{s}.jsonl'}" for s in splits)
    return f"""name: scaling
seed: 1234
stages:
  corpus: {{kind: nemo, splits: {{{src}}}}}
  featurize: {{num_workers: {workers}, shard_size: 100, cmvn_split: {splits[0]}}}
  tokenizer: {{kind: char, train_split: {splits[0]}}}
  student:
    type: train
    model: {{bidirectional: false, layers: 3, hidden: 256, stack: 3, dropout: 0.15}}
    optim: {{lr: 0.006, warmup_steps: 10}}
    specaug: false
    epochs: 1
    max_steps: {steps}
    max_frames: 10000
    average_last: 1
    dev_limit: 1
    workers: {train_workers}
    train_split: {splits[0]}
    dev_split: {splits[0]}
"""


def stage_seconds(root: Path, stage: str) -> float:
    return float(json.loads((root / "scaling" / stage / ".done").read_text())["seconds"])


def run(root: Path, text: str, nproc: int, to: str, frm: str | None = None) -> None:
    (root / "r").mkdir(parents=True, exist_ok=True)
    rf = root / "r" / "recipe.yaml"
    rf.write_text(text)
    args = ["-m", "speechkd.cli", "run", str(rf), "--exp-root", str(root / "exp"), "--to", to]
    args += ["--from", frm] if frm else []
    cmd = ([str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", str(nproc), *args]
           if nproc > 1 else [sys.executable, *args])
    env = {**os.environ, "OMP_NUM_THREADS": "1" if nproc > 1 else os.environ.get("OMP_NUM_THREADS", "2")}
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    if r.returncode:
        sys.exit(f"{' '.join(cmd[:6])} ... failed:\n{r.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exp", default=str(REPO / "exp" / "default"), help="an experiment with a corpus stage")
    ap.add_argument("--splits", default="dev,test,test_unseen_voice", help="corpus splits to featurize (the first "
                                                                            "trains the student)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40, help="training steps per throughput run")
    ap.add_argument("--quick", action="store_true", help="pipelines/quick's corpus (built if missing), 1 repeat")
    a = ap.parse_args()
    exp = Path(a.exp)
    if a.quick:
        exp, a.repeats, a.steps = REPO / "exp" / "quick", 1, 10
        if not (exp / "corpus" / ".done").exists():
            subprocess.run([sys.executable, "-m", "speechkd.cli", "run", "pipelines/quick", "--to", "corpus"],
                           cwd=REPO, check=True)
        a.splits = "train,dev"
    splits = a.splits.split(",")
    if not (exp / "corpus" / ".done").exists():
        sys.exit(f"{exp}: no finished corpus stage (run make demo, or pass --quick)")

    times: dict[str, list[float]] = {"1_rank": [], "2_ranks": [], "pool_2": [], "tp_0": [], "tp_2": []}
    tmp = Path(tempfile.mkdtemp(prefix="speechkd-scaling-"))
    try:
        for rep in range(a.repeats):
            for key, nproc, workers in (("1_rank", 1, 1), ("2_ranks", 2, 1), ("pool_2", 1, 2)):
                root = tmp / f"{key}-{rep}"
                run(root, recipe(exp, splits, workers, 0, a.steps), nproc, "featurize")
                times[key].append(stage_seconds(root / "exp", "featurize"))
                print(f"featurize {key}: {times[key][-1]:.1f} s", flush=True)
            base = tmp / f"1_rank-{rep}"
            for key, w in (("tp_0", 0), ("tp_2", 2)):
                run(base, recipe(exp, splits, 1, w, a.steps), 1, "student", frm="tokenizer")
                out = json.loads((base / "exp" / "scaling" / "student" / "outputs.json").read_text())
                times[key].append(float(out["audio_s_per_s"]))
                print(f"train with {w} loader workers: {times[key][-1]:.1f} audio s/s", flush=True)
                shutil.rmtree(base / "exp" / "scaling" / "student")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"splits": splits, "repeats": a.repeats, "cores": os.cpu_count(),
              "featurize_seconds_1_rank": round(med["1_rank"], 2), "featurize_seconds_2_ranks": round(med["2_ranks"], 2),
              "featurize_seconds_pool_2_workers": round(med["pool_2"], 2),
              "featurize_speedup_2_ranks": round(med["1_rank"] / med["2_ranks"], 2),
              "featurize_2_ranks_vs_pool": round(med["pool_2"] / med["2_ranks"], 2),
              "train_audio_s_per_s_workers_0": round(med["tp_0"], 1), "train_audio_s_per_s_workers_2": round(med["tp_2"], 1),
              "loader_throughput_ratio": round(med["tp_2"] / med["tp_0"], 3)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
