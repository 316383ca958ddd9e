"""The CLI is thin: decoding imports nothing from the training package; config help shows nested keys."""

import subprocess
import sys

from tests.conftest import REPO


def test_decode_and_config_do_not_import_the_trainer(tmp_path):
    code = f"""
import sys
from pathlib import Path
from speechkd.cli import main
from speechkd.features.fbank import FbankOptions
from speechkd.models import ModelBundle, ModelConfig, build_model, save_bundle
from speechkd.text.tokenizer import CharTokenizer
tok = CharTokenizer()
m = build_model(ModelConfig(input_dim=80, vocab_size=tok.vocab_size, hidden=8, layers=1))
save_bundle(ModelBundle(m, tok, FbankOptions()), Path({str(tmp_path)!r}) / "model.safetensors")
rc = main(["decode", "--model", {str(tmp_path / "model.safetensors")!r}, "--out", {str(tmp_path / "o")!r}, {str(tmp_path / "missing.jsonl")!r}])
assert rc == 2, rc
loaded = sorted(m for m in sys.modules if m.startswith("speechkd.train"))
print("LOADED", loaded)
assert main(["config", "distill"]) == 0  # documents the training stages, so it may load their configs
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "LOADED []" in r.stdout
    assert "kd.delay_reference = 'baseline'" in r.stdout and "model.layers = 3" in r.stdout
    assert "missing.jsonl: cannot open manifest" in r.stderr


def test_a_closed_output_pipe_ends_quietly():
    """`speechkd config | head -1` printed "error: [Errno 32] Broken pipe" once head had left."""
    p = subprocess.Popen([sys.executable, "-m", "speechkd.cli", "config"], cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before anything is written
    err = p.stderr.read().decode()
    assert p.wait() == 141 and "Broken pipe" not in err and "Traceback" not in err, err
