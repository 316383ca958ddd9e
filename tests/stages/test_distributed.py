"""Stages under torchrun: the work is split across ranks and the result equals one process's."""

import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.stages.test_librispeech import RECIPE, SMALL, librispeech_tree

pytestmark = pytest.mark.slow


def _run(root: Path, exp: Path, nproc: int, to: str, *extra: str) -> subprocess.CompletedProcess:
    args = ["-m", "speechkd.cli", "run", str(RECIPE), f"corpus.root={root}", *SMALL, "featurize.shard_size=2",
            "--exp-root", str(exp), "--to", to, *extra]
    if nproc > 1:
        cmd = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", str(nproc), *args]
    else:
        cmd = [sys.executable, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("on_the_fly", [False, True])
def test_featurize_on_two_ranks_writes_what_one_process_writes(tmp_path, on_the_fly):
    root = librispeech_tree(tmp_path / "LibriSpeech")
    one, two = tmp_path / "one", tmp_path / "two"
    mode = f"featurize.on_the_fly={str(on_the_fly).lower()}"
    r = _run(root, one, 1, "featurize", mode)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run(root, two, 2, "featurize", mode)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = one / "librispeech" / "featurize", two / "librispeech" / "featurize"
    for name in ("train.jsonl", "dev.jsonl", "test.jsonl", "test_other.jsonl", "cmvn.json", "features.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    shards = sorted(p.relative_to(a) for p in (a / "shards").rglob("feats-*"))
    assert len(shards) == (1 if on_the_fly else 2) * 9 and shards == sorted(p.relative_to(b) for p in (b / "shards").rglob("feats-*"))
    assert all(filecmp.cmp(a / s, b / s, shallow=False) for s in shards)
    assert (b / ".done").exists()


def test_decode_on_two_ranks_writes_what_one_process_writes(tmp_path):
    """Each rank decodes every other batch, greedily and with the LM beam at every grid point; the texts are
    gathered, every rank picks the same weights, and rank 0's reports equal one process's byte for byte."""
    import shutil

    root = librispeech_tree(tmp_path / "LibriSpeech")
    one = tmp_path / "one"
    r = _run(root, one, 1, "decode_teacher", "decode_teacher.max_frames=300")  # several batches per split
    assert r.returncode == 0, r.stderr[-3000:]
    two = tmp_path / "two"
    shutil.copytree(one, two)
    r = _run(root, two, 2, "decode_teacher", "decode_teacher.max_frames=300", "--from", "decode_teacher", "--force")
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = one / "librispeech" / "decode_teacher", two / "librispeech" / "decode_teacher"
    files = sorted(p.name for p in a.iterdir() if p.name not in (".done", "config.yaml", "outputs.json"))
    assert "recogs-test_other-lm.txt" in files and "summary.json" in files
    assert files == sorted(p.name for p in b.iterdir() if p.name not in (".done", "config.yaml", "outputs.json"))
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_a_run_under_torchrun_leaves_the_process_group_it_joined(tmp_path):
    """Gloo's threads outliving the interpreter abort a rank at exit (SIGABRT, 'terminate called without an active
    exception', about one exit in three on two ranks): run_recipe leaves the group it joined, on every rank."""
    root = librispeech_tree(tmp_path / "LibriSpeech")
    script = tmp_path / "probe.py"
    script.write_text(
        "import sys\n"
        "import torch.distributed as dist\n"
        "from speechkd.stages.runner import run_recipe\n"
        f"run_recipe({str(RECIPE)!r}, exp_root={str(tmp_path / 'exp')!r}, to_stage='corpus',\n"
        f"           overrides=['corpus.root={root}'])\n"
        "print('left' if not dist.is_initialized() else 'still joined', flush=True)\n")
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2", str(script)]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("left") == 2 and "still" not in r.stdout, r.stdout


def test_latency_on_two_ranks_gives_one_process_figures(tmp_path):
    """Each rank aligns and streams every other utterance; rank 0's summary equals one process's."""
    import shutil

    root = librispeech_tree(tmp_path / "LibriSpeech")
    one = tmp_path / "one"
    r = _run(root, one, 1, "latency")
    assert r.returncode == 0, r.stderr[-3000:]
    two = tmp_path / "two"
    shutil.copytree(one, two)
    r = _run(root, two, 2, "latency", "--from", "latency", "--force")
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = (json.loads((d / "librispeech" / "latency" / "summary.json").read_text()) for d in (one, two))
    assert a == b and a["models"]["student_frame"]["tokens_matched"] > 0
    shares = json.loads((two / "librispeech" / "latency" / "outputs.json").read_text())["aligned_per_rank"]
    assert len(shares) == 2 and min(shares) > 0
