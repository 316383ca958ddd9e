"""Trainer: exact resume after SIGKILL, DDP with torchrun, the non-finite guard, decode's tokenizer check
(each trains on a small synthesized corpus: slow, and needs the TTS engines)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from speechkd.stages.runner import run_recipe
from speechkd.train import checkpoint as ck
from speechkd.train.precision import cpu_runs_bf16_lstm
from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.tts]

BASE = """
name: t
seed: 5
stages:
  corpus: {hours: 0.01}
  featurize: {num_workers: 1}
  tokenizer: {kind: char}
"""
# bf16 autocast where the CPU runs a bf16 LSTM at all (natively or emulated); fp32 on an AVX2-only CPU
PREC = "bf16" if cpu_runs_bf16_lstm() else "fp32"
TEACHER = """
  teacher:
    type: train
    model: {bidirectional: true, layers: 2, hidden: 96, stack: 3, dropout: 0.2}
    epochs: 8
    max_frames: 1200
    checkpoint_every: 1
    keep_last: 2
    average_last: 2
    precision: {precision}
""".replace("{precision}", PREC)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """corpus + featurize + tokenizer once; tests copy the exp folder."""
    root = tmp_path_factory.mktemp("trainer")
    recipe = root / "recipe.yaml"
    recipe.write_text(BASE + TEACHER)
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        run_recipe(recipe, exp_root=root / "exp", to_stage="tokenizer")
    finally:
        os.chdir(cwd)
    return recipe, root / "exp"


def _copy(prepared, dst: Path) -> Path:
    shutil.copytree(prepared[1], dst / "exp")
    return dst / "exp"


def _cli(recipe, exp, *extra, **kw):
    return [sys.executable, "-m", "speechkd.cli", "run", str(recipe), "--exp-root", str(exp), *extra]


def test_sigkill_mid_epoch_then_resume_gives_identical_weights(prepared, tmp_path):
    """Under bf16 autocast (emulated where the CPU has no native bf16; fp32 where it runs no bf16 LSTM): resume is
    still exact."""
    recipe, _ = prepared
    a = _copy(prepared, tmp_path / "a")
    b = _copy(prepared, tmp_path / "b")
    r = subprocess.run(_cli(recipe, a), cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]

    ckdir = b / "t" / "teacher" / "checkpoints"
    proc = subprocess.Popen(_cli(recipe, b), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        cks = ck.list_checkpoints(ckdir)
        if cks and int(cks[-1].name.split("-")[1]) >= 5:
            os.killpg(proc.pid, signal.SIGKILL)
            killed_at = cks[-1].name
            break
        time.sleep(0.01)
    proc.wait()
    assert killed_at, "training finished before it could be killed"
    assert not (b / "t" / "teacher" / ".done").exists()
    r = subprocess.run(_cli(recipe, b), cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from" in r.stderr and f"device cpu, {PREC}" in r.stderr
    ta = ck.read_weights(a / "t" / "teacher" / "model.safetensors")[1]
    tb = ck.read_weights(b / "t" / "teacher" / "model.safetensors")[1]
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    import csv

    def learning_columns(p):  # timing columns differ between runs; learning ones must not
        rows = list(csv.DictReader(open(p)))
        return [(r["epoch"], r["step"], r["train_loss"], r["dev_cer"], r["dev_wer"], r["lr"]) for r in rows]

    assert learning_columns(a / "t" / "teacher" / "metrics.csv") == learning_columns(b / "t" / "teacher" / "metrics.csv")


def test_torchrun_two_processes_on_cpu(prepared, tmp_path):
    recipe, _ = prepared
    exp = _copy(prepared, tmp_path)
    rec = tmp_path / "recipe.yaml"
    rec.write_text(BASE + TEACHER.replace("epochs: 8", "epochs: 1"))
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "speechkd.cli", "run", str(rec),
                        "--exp-root", str(exp)], cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = exp / "t" / "teacher"
    assert (out / ".done").exists()
    last = ck.list_checkpoints(out / "checkpoints")[-1]
    state = ck.load_train_state(last)
    assert state["epoch"] == 1 and state["step"] > 0 and "optimizer" in state
    cfg = __import__("json").loads((last / "config.json").read_text())
    assert cfg["world_size"] == 2
    model = ck.load_model(out / "model.safetensors")
    assert model.cfg.bidirectional and (out / "metrics.csv").exists()


GLOBAL = """
  teacher:
    type: train
    model: {layers: 1, hidden: 32, dropout: 0.2}
    epochs: 2
    max_frames: 1200
    global_batches: 2
    vtlp: 0.1
    checkpoint_every: 1
    keep_last: 100
    average_last: 1
    precision: fp32
"""


def test_global_batches_make_two_ranks_train_what_one_process_trains_and_resume_on_another_world_size(
        prepared, tmp_path):
    """global_batches: 2 on 2 ranks (DDP, one batch each) and on 1 process (accumulating two): the same weights
    bit for bit (SpecAugment, VTLP and dropout draw from each batch's own seed). The 2-rank run, cut back to a
    mid-epoch checkpoint, resumes on 1 process and ends with those weights too."""
    _, exp0 = prepared
    rec = tmp_path / "recipe.yaml"
    rec.write_text(BASE + GLOBAL)
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        shutil.copytree(exp0, d)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(_cli(rec, one), cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    torchrun = Path(sys.executable).with_name("torchrun")
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", *_cli(rec, two)[1:]], cwd=REPO,
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]

    def weights(exp):
        return ck.read_weights(exp / "t" / "teacher" / "model.safetensors")[1]

    wa, wb = weights(one), weights(two)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    out = two / "t" / "teacher"
    cks = ck.list_checkpoints(out / "checkpoints")
    assert ck.load_train_state(cks[-1])["sampler"]["per_step"] == 2
    assert __import__("json").loads((cks[-1] / "config.json").read_text())["world_size"] == 2
    steps_per_epoch = int(cks[-1].name.split("-")[1]) // 2
    cut = [c for c in cks if int(c.name.split("-")[1]) <= steps_per_epoch // 2]
    assert cut and len(cut) < len(cks)
    for c in cks[len(cut):]:
        shutil.rmtree(c)
    (out / ".done").unlink()
    r = subprocess.run(_cli(rec, two), cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming from {cut[-1]}" in r.stderr, r.stderr[-2000:]
    wc = weights(two)
    assert all(torch.equal(wa[k], wc[k]) for k in wa)


def _tiny_training(prepared, tmp_path, epochs: int):
    """A 1x16 LSTM ready to train on the prepared corpus: ``(cfg, out_dir, (bundle, train, dev))``."""
    from speechkd.config import from_dict
    from speechkd.stages import train as train_stage
    from speechkd.stages.runner import StageContext

    exp = _copy(prepared, tmp_path)
    out = exp / "t" / "x"
    out.mkdir()
    cfg = from_dict(train_stage.Config, {"model": {"layers": 1, "hidden": 16}, "epochs": epochs, "max_frames": 1200})
    return cfg, out, train_stage.prepare(cfg, StageContext("t", exp / "t", out, 0, REPO))


def _scorer(bundle, dev, cfg):
    from speechkd.stages.train import dev_scorer

    return dev_scorer(dev, bundle.tokenizer, cfg.max_frames, cfg.dev_limit)


def test_nonfinite_losses_are_skipped_and_counted(prepared, tmp_path):
    from speechkd.train.objective import Objective
    from speechkd.train.trainer import train

    cfg, out, (bundle, tr, dev) = _tiny_training(prepared, tmp_path, epochs=1)
    calls = []

    class Flaky(Objective):
        def __call__(self, batch, fwd):
            calls.append(1)
            loss = super().__call__(batch, fwd)
            return loss * float("nan") if len(calls) == 2 else loss

    summary = train(cfg, bundle, tr, out, seed=0, objective=Flaky(), validate=_scorer(bundle, dev, cfg))
    assert summary["skipped_steps"] == 1 and summary["steps"] == len(calls) > 2
    assert all(torch.isfinite(p).all() for p in bundle.model.parameters())


def test_decode_refuses_a_model_file_whose_tokenizer_does_not_match_the_model(prepared, tmp_path):
    """Defect 8: a char model decoded with a sentencepiece tokenizer reported a 126% WER; the reverse raised
    IndexError. The tokenizer now travels inside the model file, and a file whose tokenizer does not fit its
    model (tampered, or written by hand) is refused. Defect 12: two manifests with one file name overwrote each
    other's reports."""
    import json
    import shutil as sh

    from speechkd.data.dataset import FeatureDataset
    from speechkd.features.fbank import FbankOptions
    from speechkd.models import ModelBundle, ModelConfig, build_model, save_bundle
    from speechkd.models.io import read_tensors, save_tensors
    from speechkd.text.tokenizer import CharTokenizer, tokenizer_fingerprint, train_tokenizer

    _, exp = prepared
    feat = exp / "t" / "featurize"
    char = CharTokenizer()
    model = build_model(ModelConfig(input_dim=80, vocab_size=char.vocab_size, hidden=8, layers=1,
                                    bidirectional=False, tokenizer=tokenizer_fingerprint(char)))
    mdir = tmp_path / "m"
    save_bundle(ModelBundle(model, char, FbankOptions()), mdir / "model.safetensors")
    texts = [u for u in FeatureDataset(feat / "train.jsonl", char).texts]
    spm = train_tokenizer("sentencepiece", texts, vocab_size=char.vocab_size)  # the same size: only the fingerprint tells
    spm_big = train_tokenizer("sentencepiece", texts, vocab_size=60)
    meta, tensors = read_tensors(mdir / "model.safetensors")
    for name, tok, match in (("same", spm, "trained with another tokenizer"), ("big", spm_big, "outputs 29 tokens")):
        bad = tmp_path / name / "model.safetensors"
        save_tensors({**tensors, "tokenizer.spm_model": torch.frombuffer(bytearray(tok.model_proto), dtype=torch.uint8)},
                     bad, {**meta, "tokenizer": json.dumps({"kind": "sentencepiece"})})
        r = subprocess.run([sys.executable, "-m", "speechkd.cli", "decode", "--model", str(bad), "--out",
                            str(tmp_path / "o"), str(feat / "dev.jsonl")], capture_output=True, text=True)
        assert r.returncode == 2 and match in r.stderr and str(bad) in r.stderr and "Traceback" not in r.stderr, \
            r.stderr
    # two manifests both called dev.jsonl: both reports are kept, under different names
    other = tmp_path / "copy"
    sh.copytree(feat, other)
    cli = [sys.executable, "-m", "speechkd.cli", "decode", "--model", str(mdir / "model.safetensors"), "--out",
           str(tmp_path / "o")]
    r = subprocess.run([*cli, str(feat / "dev.jsonl"), str(other / "dev.jsonl")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    summaries = sorted(p.name for p in (tmp_path / "o").glob("wer-summary-*.json"))
    assert summaries == ["wer-summary-copy_dev.json", "wer-summary-featurize_dev.json"]
    assert json.loads((tmp_path / "o" / "wer-summary-copy_dev.json").read_text())["manifest"] == str(other / "dev.jsonl")


def test_a_run_whose_steps_are_all_skipped_fails_naming_the_cause(prepared, tmp_path):
    """Issue 20, 1: every step non-finite (NaN features) used to end as success with 'loss 0.000'."""
    from speechkd.train.objective import Objective
    from speechkd.train.trainer import TrainingFailed, train

    cfg, out, (bundle, tr, dev) = _tiny_training(prepared, tmp_path, epochs=2)

    class Broken(Objective):
        def __call__(self, batch, fwd):
            return super().__call__(batch, fwd) * float("nan")

    with pytest.raises(TrainingFailed, match=r"steps of epoch 1 were skipped because the loss .* not finite"):
        train(cfg, bundle, tr, out, seed=0, objective=Broken(), validate=_scorer(bundle, dev, cfg))
    assert not (out / "model.safetensors").exists()


@pytest.mark.parametrize("content", [None, "{not json", '{"fbank": {"frame_shift_ms": -1}}'])
def test_a_missing_or_broken_features_json_stops_training_instead_of_assuming_10_ms(prepared, tmp_path, content):
    """Issue 21: training assumed a 10 ms hop when features.json was broken, and export fell back to default fbank
    options with a warning; the fbank options now go into the model bundle, so they must be readable."""
    from speechkd.config import from_dict
    from speechkd.stages import train as train_stage
    from speechkd.stages.runner import StageContext

    exp = _copy(prepared, tmp_path)
    f = exp / "t" / "featurize" / "features.json"
    f.unlink() if content is None else f.write_text(content)
    out = exp / "t" / "x"
    out.mkdir()
    cfg = from_dict(train_stage.Config, {"model": {"layers": 1, "hidden": 16}, "epochs": 1})
    with pytest.raises(ValueError, match=r"features.json: cannot read the featurize stage's fbank options"):
        train_stage.prepare(cfg, StageContext("t", exp / "t", out, 0, REPO))


def test_dataloader_workers_train_the_same_weights_and_resume_where_the_loop_was(prepared, tmp_path):
    """Workers only build the batches the sampler chose, in its order: 2 workers give the weights of 0; the
    sampler's position counts the batches the loop used (not the ones prefetched), so a run stopped by
    max_steps and continued ends where an uninterrupted one does."""
    from dataclasses import replace

    from speechkd.train.trainer import train

    from speechkd.utils import seed_everything

    weights = []
    for workers in (0, 2):
        seed_everything(0)  # as the runner does before every stage: the same initial weights
        cfg, out, (bundle, tr, dev) = _tiny_training(prepared, tmp_path / f"w{workers}", epochs=2)
        cfg = replace(cfg, workers=workers, prefetch=3)
        summary = train(cfg, bundle, tr, out, seed=0, validate=_scorer(bundle, dev, cfg))
        weights.append({k: v.clone() for k, v in bundle.model.state_dict().items()})
    assert summary["steps"] > 4
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    import csv

    shares = [float(r["data_wait_share"]) for r in csv.DictReader(open(out / "metrics.csv"))]
    assert len(shares) == 2 and all(0.0 <= x < 1.0 for x in shares)  # the share of time spent waiting for data

    from speechkd.train.objective import Objective
    from speechkd.train.trainer import Trainer

    class Died(Exception):
        pass

    class Crash(Objective):  # the run dies in its 4th step, with batches prefetched beyond it
        calls = 0

        def __call__(self, batch, fwd):
            Crash.calls += 1
            if Crash.calls == 4:
                raise Died
            return super().__call__(batch, fwd)

    seed_everything(0)
    cfg, out, (bundle, tr, dev) = _tiny_training(prepared, tmp_path / "stop", epochs=2)
    cfg = replace(cfg, workers=2, checkpoint_every=1)
    with pytest.raises(Died):
        train(cfg, bundle, tr, out, seed=0, objective=Crash(), validate=_scorer(bundle, dev, cfg))
    state = ck.load_train_state(ck.list_checkpoints(out / "checkpoints")[-1])
    assert (state["step"], state["sampler"]["position"]) == (3, 3)  # not the 3 + prefetched
    _, _, (bundle2, tr2, dev2) = _tiny_training(prepared, tmp_path / "fresh", epochs=2)
    t = Trainer(cfg, bundle2, tr2, out, seed=0, validate=_scorer(bundle2, dev2, cfg))
    assert t.resume() and t.sampler.position == 3
    t.fit()
    assert all(torch.equal(weights[0][k], bundle2.model.state_dict()[k]) for k in weights[0])
