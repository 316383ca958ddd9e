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
   (``loader_throughput_ratio``: audio seconds per second, workers over none; target >= 1 on the CPU), and,
   for reference, on-the-fly features (``featurize.on_the_fly``: fbank computed in the 2 workers) against
   stored ones (``on_the_fly_throughput_ratio``), with the share of time the loop waited for data.
3. ``teacher_cache``: a small BiLSTM teacher (``--steps`` steps) caches the first split's posteriors and
   N-best, 1 process (2 threads) against ``torchrun --nproc_per_node 2`` (1 thread each)
   (``cache_speedup_2_ranks``, target >= 1.6x on 2 cores), and 1 process on 1 thread against the 2 ranks
   (``cache_speedup_2_ranks_vs_1_thread``: how the ranks scale, as featurize's 1 worker against 2 ranks).
4. ``side by side``: two frame-KD students from that cache (``--steps`` steps each), one after the other in
   one process on 2 threads against two processes at once on 1 thread each (``side_by_side_speedup``: the
   first's total stage time over the second's longer stage).

    python benchmarks/scaling.py                     # exp/default's dev, test and test_unseen_voice
    python benchmarks/scaling.py --splits train      # 7 h of train audio
    python benchmarks/scaling.py --quick             # pipelines/quick's corpus, built if missing
    python benchmarks/scaling.py --splits train --parts cache   # the teacher cache on 7 h

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


def recipe(exp: Path, splits: list[str], workers: int, train_workers: int, steps: int, on_the_fly: bool = False
           ) -> str:
    corpus = exp / "corpus"
    src = ", ".join(f"{s}: {corpus / f'{s}.jsonl'}" for s in splits)
    common = (f"epochs: 1, max_steps: {steps}, max_frames: 10000, average_last: 1, dev_limit: 1, "
              f"train_split: {splits[0]}, dev_split: {splits[0]}")
    student = "{bidirectional: false, layers: 3, hidden: 256, stack: 3, dropout: 0.15}"
    return f"""name: scaling
seed: 1234
defaults:                 # the schedule every training stage shares
  train: {{{common}}}
  distill: {{{common}}}
stages:
  corpus: {{kind: nemo, splits: {{{src}}}}}
  featurize: {{num_workers: {workers}, shard_size: 100, cmvn_split: {splits[0]}, on_the_fly: {str(on_the_fly).lower()}}}
  tokenizer: {{kind: char, train_split: {splits[0]}}}
  teacher: {{type: train, model: {{bidirectional: true, layers: 2, hidden: 128, stack: 3}}}}
  teacher_cache: {{teachers: [teacher], splits: [{splits[0]}], shard_size: 50}}
  student:
    type: train
    model: {student}
    optim: {{lr: 0.006, warmup_steps: 10}}
    specaug: false
    workers: {train_workers}
  student_a: {{type: distill, model: {student}, kd: {{alpha: 0.9, delay: 0}}}}
  student_b: {{type: distill, model: {student}, kd: {{alpha: 0.9, delay: 0}}}}
"""


def stage_seconds(root: Path, stage: str) -> float:
    return float(json.loads((root / "scaling" / stage / ".done").read_text())["seconds"])


def run(root: Path, text: str, nproc: int, to: str, frm: str | None = None, threads: int = 0,
        wait: bool = True):
    """Run the recipe ``--from frm --to to`` on ``nproc`` torchrun ranks (1: a plain process); ``threads`` sets
    OMP_NUM_THREADS; ``wait=False`` returns the running process."""
    (root / "r").mkdir(parents=True, exist_ok=True)
    rf = root / "r" / "recipe.yaml"
    if not rf.exists() or rf.read_text() != text:
        rf.write_text(text)
    args = ["-m", "speechkd.cli", "run", str(rf), "--exp-root", str(root / "exp"), "--to", to]
    args += ["--from", frm] if frm else []
    cmd = ([str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", str(nproc), *args]
           if nproc > 1 else [sys.executable, *args])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads) if threads else "1" if nproc > 1 else
           os.environ.get("OMP_NUM_THREADS", "2")}
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
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
    ap.add_argument("--parts", default="featurize,train,cache,side",
                    help="which comparisons (featurize, train, cache, side), comma-separated")
    a = ap.parse_args()
    parts = set(a.parts.split(","))
    if not parts <= {"featurize", "train", "cache", "side"} or not parts:
        sys.exit(f"--parts {a.parts!r}: choose from featurize, train, cache, side")
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

    times: dict[str, list[float]] = {"1_rank": [], "2_ranks": [], "pool_2": [], "tp_0": [], "tp_2": [],
                                     "tp_otf": [], "wait_0": [], "wait_2": [], "wait_otf": [], "cache_1": [],
                                     "cache_1t": [], "cache_2": [], "seq": [], "sbs": []}
    tmp = Path(tempfile.mkdtemp(prefix="speechkd-scaling-"))
    try:
        for rep in range(a.repeats):
            for key, nproc, workers in (("1_rank", 1, 1), ("2_ranks", 2, 1), ("pool_2", 1, 2)):
                if "featurize" not in parts:
                    break
                root = tmp / f"{key}-{rep}"
                run(root, recipe(exp, splits, workers, 0, a.steps), nproc, "featurize")
                times[key].append(stage_seconds(root / "exp", "featurize"))
                print(f"featurize {key}: {times[key][-1]:.1f} s", flush=True)
            base = tmp / f"1_rank-{rep}"
            otf = tmp / f"otf-{rep}"
            run(base, recipe(exp, splits, 1, 0, a.steps), 1, "tokenizer")
            if "train" in parts:
                run(otf, recipe(exp, splits, 2, 2, a.steps, on_the_fly=True), 1, "tokenizer")
            for key, w, root, fly in (("tp_0", 0, base, False), ("tp_2", 2, base, False), ("tp_otf", 2, otf, True)):
                if "train" not in parts:
                    break
                run(root, recipe(exp, splits, 1, w, a.steps, on_the_fly=fly), 1, "student", frm="student")
                out = json.loads((root / "exp" / "scaling" / "student" / "outputs.json").read_text())
                times[key].append(float(out["audio_s_per_s"]))
                rows = (root / "exp" / "scaling" / "student" / "metrics.csv").read_text().splitlines()
                head, last = rows[0].split(","), rows[-1].split(",")
                times["wait" + key[2:]].append(float(last[head.index("data_wait_share")]))
                print(f"train with {w} loader workers{' on the fly' if fly else ''}: {times[key][-1]:.1f} audio s/s, "
                      f"{times['wait' + key[2:]][-1]:.1%} waiting for data", flush=True)
                shutil.rmtree(root / "exp" / "scaling" / "student")
            if not parts & {"cache", "side"}:
                continue
            run(base, recipe(exp, splits, 1, 0, a.steps), 1, "teacher", frm="teacher")
            for key, nproc, threads in (("cache_1", 1, 0), ("cache_1t", 1, 1), ("cache_2", 2, 0)):
                if "cache" not in parts and key != "cache_2":
                    continue
                run(base, recipe(exp, splits, 1, 0, a.steps), nproc, "teacher_cache", frm="teacher_cache",
                    threads=threads)
                times[key].append(stage_seconds(base / "exp", "teacher_cache"))
                print(f"teacher_cache on {nproc} rank(s){' (1 thread)' if threads else ''}: {times[key][-1]:.1f} s",
                      flush=True)
                if key != "cache_2":
                    shutil.rmtree(base / "exp" / "scaling" / "teacher_cache")
            if "side" not in parts:
                continue
            text = recipe(exp, splits, 1, 0, a.steps)
            run(base, text, 1, "student_b", frm="student_a")
            times["seq"].append(stage_seconds(base / "exp", "student_a") + stage_seconds(base / "exp", "student_b"))
            for x in "ab":
                shutil.rmtree(base / "exp" / "scaling" / f"student_{x}")
            together = [run(base, text, 1, f"student_{x}", frm=f"student_{x}", threads=1, wait=False) for x in "ab"]
            for p in together:
                if p.wait():
                    sys.exit(f"a side-by-side student failed:\n{p.stderr.read()[-3000:]}")
            times["sbs"].append(max(stage_seconds(base / "exp", f"student_{x}") for x in "ab"))
            print(f"two students: one after the other {times['seq'][-1]:.1f} s, side by side "
                  f"{times['sbs'][-1]:.1f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    result: dict = {"splits": splits, "repeats": a.repeats, "cores": os.cpu_count(), "parts": sorted(parts)}
    if "featurize" in parts:
        result.update(featurize_seconds_1_rank=round(med["1_rank"], 2), featurize_seconds_2_ranks=round(med["2_ranks"], 2),
                      featurize_seconds_pool_2_workers=round(med["pool_2"], 2),
                      featurize_speedup_2_ranks=round(med["1_rank"] / med["2_ranks"], 2),
                      featurize_2_ranks_vs_pool=round(med["pool_2"] / med["2_ranks"], 2))
    if "train" in parts:
        result.update(train_audio_s_per_s_workers_0=round(med["tp_0"], 1),
                      train_audio_s_per_s_workers_2=round(med["tp_2"], 1),
                      loader_throughput_ratio=round(med["tp_2"] / med["tp_0"], 3),
                      train_audio_s_per_s_on_the_fly_workers_2=round(med["tp_otf"], 1),
                      on_the_fly_throughput_ratio=round(med["tp_otf"] / med["tp_2"], 3),
                      data_wait_share_workers_0=med["wait_0"], data_wait_share_workers_2=med["wait_2"],
                      data_wait_share_on_the_fly=med["wait_otf"])
    if "cache" in parts:
        result.update(cache_seconds_1_rank=round(med["cache_1"], 2), cache_seconds_2_ranks=round(med["cache_2"], 2),
                      cache_speedup_2_ranks=round(med["cache_1"] / med["cache_2"], 2),
                      cache_seconds_1_rank_1_thread=round(med["cache_1t"], 2),
                      cache_speedup_2_ranks_vs_1_thread=round(med["cache_1t"] / med["cache_2"], 2))
    if "side" in parts:
        result.update(students_seconds_one_after_the_other=round(med["seq"], 2),
                      students_seconds_side_by_side=round(med["sbs"], 2),
                      side_by_side_speedup=round(med["seq"] / med["sbs"], 2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
