"""Two nodes on localhost: the quick recipe's training and cache stages under ``torchrun --nnodes 2`` with c10d
rendezvous (one gloo process per node, the experiment folder shared as a cluster's file system would be)
give the same teacher, teacher cache and student as one process with the same global batch."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from speechkd.stages.runner import run_recipe
from speechkd.train import checkpoint as ck
from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.tts]

QUICK = REPO / "pipelines" / "quick" / "recipe.yaml"
# one epoch each and two batches per step, all ranks together (1 process accumulates both)
SET = ["teacher.epochs=1", "baseline.epochs=1", "defaults.distill.epochs=1", "teacher.global_batches=2",
       "baseline.global_batches=2", "defaults.distill.global_batches=2", "teacher.max_frames=4000",
       "baseline.max_frames=4000", "defaults.distill.max_frames=4000"]
STAGES = ("teacher", "student_frame")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_train_and_cache_what_one_process_does(tmp_path):
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        run_recipe(QUICK, exp_root=tmp_path / "one", to_stage="lm", overrides=SET)
    finally:
        os.chdir(cwd)
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    args = ["-m", "speechkd.cli", "run", str(QUICK), *SET, "--from", "teacher", "--to", "student_frame"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, *args, "--exp-root", str(tmp_path / "one")], cwd=REPO, capture_output=True,
                       text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    node = [torchrun, "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint",
            f"127.0.0.1:{_free_port()}", "--rdzv_id", "speechkd-two-nodes", *args, "--exp-root", str(tmp_path / "two")]
    procs = [subprocess.Popen(node, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    log = "".join(err for _, err in outs)
    assert "rank 1 of 2" in log or "rank 0 of 2" in log, log[-2000:]
    one, two = tmp_path / "one" / "quick", tmp_path / "two" / "quick"
    for st in STAGES:
        a = ck.read_weights(one / st / "model.safetensors")[1]
        b = ck.read_weights(two / st / "model.safetensors")[1]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), st
        cfg = __import__("json").loads((ck.list_checkpoints(two / st / "checkpoints")[-1] / "config.json").read_text())
        assert cfg["world_size"] == 2 and cfg["batches_per_step"] == 2, st
    ca, cb = one / "teacher_cache", two / "teacher_cache"
    files = sorted(p.relative_to(ca) for p in ca.rglob("*") if p.is_file() and p.name not in (".done", "outputs.json"))
    assert any(f.suffix == ".safetensors" or "shard" in str(f) for f in files), files
    assert files == sorted(p.relative_to(cb) for p in cb.rglob("*")
                           if p.is_file() and p.name not in (".done", "outputs.json"))
    for f in files:
        if f.name == "config.yaml":
            continue
        assert (ca / f).read_bytes() == (cb / f).read_bytes(), f
