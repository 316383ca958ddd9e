"""Checkpoints and weights files: errors name the file, a full disk is one line, files follow the umask,
averaging; tokenizer files."""

import os

import pytest
import torch

from speechkd.train import checkpoint as ck


def test_checkpoint_errors_name_the_file(tmp_path):
    from speechkd.models import ModelConfig, build_model

    m = build_model(ModelConfig(hidden=8, layers=1, vocab_size=5, input_dim=4))
    p = tmp_path / "m.safetensors"
    ck.save_weights(m, p)
    assert isinstance(ck.load_model(p), type(m))
    with pytest.raises(ck.CheckpointError, match=r"m.safetensors: checkpoint is another architecture: hidden"):
        ck.load_model(p, expect=ModelConfig(hidden=16, layers=1, vocab_size=5, input_dim=4))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ck.CheckpointError, match="m.safetensors: corrupt or truncated"):
        ck.load_model(p)
    p.write_bytes(b"\x00" * 64)
    with pytest.raises(ck.CheckpointError, match="m.safetensors"):
        ck.load_model(p)
    with pytest.raises(ck.CheckpointError, match="not found"):
        ck.load_model(tmp_path / "nope.safetensors")
    d = ck.save_checkpoint(tmp_path / "ckpt-00000001", m, {"step": 1, "t": torch.ones(2)}, {"a": 1})
    assert ck.load_train_state(d)["step"] == 1
    (d / "train_state.pt").write_bytes(b"not a zip")
    with pytest.raises(ck.CheckpointError, match="train_state.pt: corrupt"):
        ck.load_train_state(d)
    assert not [x for x in tmp_path.iterdir() if x.name.startswith(".")]


def test_average_weights(tmp_path):
    from speechkd.models import ModelConfig, build_model

    ms = []
    for s in range(3):
        torch.manual_seed(s)
        m = build_model(ModelConfig(hidden=8, layers=1, vocab_size=5, input_dim=4))
        ck.save_weights(m, tmp_path / f"{s}.safetensors")
        ms.append(m)
    _, avg = ck.average_weights([tmp_path / f"{s}.safetensors" for s in range(3)])
    k = "out.weight"
    torch.testing.assert_close(avg[k], sum(m.state_dict()[k] for m in ms) / 3)


def test_disk_full_while_saving_a_checkpoint_is_one_line_naming_the_folder(tmp_path, monkeypatch):
    """Defect 11: ENOSPC while saving a checkpoint gave a safetensors traceback."""
    import safetensors.torch as st
    from speechkd.models import ModelConfig, build_model

    m = build_model(ModelConfig(hidden=8, layers=1, vocab_size=5, input_dim=4))
    real = st.save_file
    monkeypatch.setattr(st, "save_file", lambda t, f, metadata=None: real(t, "/dev/full", metadata=metadata))
    with pytest.raises(ck.CheckpointError) as e:
        ck.save_checkpoint(tmp_path / "ckpt-00000007", m, {"step": 7}, {})
    msg = str(e.value)
    assert "ckpt-00000007: cannot write checkpoint" in msg and "\n" not in msg
    assert not list(tmp_path.iterdir())  # no half-written folder or temp file is left


def test_written_files_follow_the_umask(tmp_path):
    """Defect 13: everything written atomically was mode 0600 and checkpoint folders 0700."""
    from speechkd.models import ModelConfig, build_model
    from speechkd.utils import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        m = build_model(ModelConfig(hidden=8, layers=1, vocab_size=5, input_dim=4))
        d = ck.save_checkpoint(tmp_path / "ckpt-00000001", m, {"step": 1}, {})
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
        assert d.stat().st_mode & 0o777 == 0o755
        assert (d / "model.safetensors").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.json", "{}")
        assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_tokenizer_file_errors_are_one_line(tmp_path):
    """Defect 11: tokenizer.json without 'symbols' raised a KeyError traceback."""
    import json

    from speechkd.text.tokenizer import TokenizerError, load_tokenizer

    for meta, match in (({"kind": "char"}, "needs 'symbols'"), ({"kind": "char", "symbols": ["a", "b"]}, "blank"),
                        ({"kind": "char", "symbols": "abc"}, "needs 'symbols'"), ([1, 2], "expected a JSON object"),
                        ({"kind": "sentencepiece", "model": "../x"}, "'model' must name"),
                        ({"kind": "sentencepiece", "model": "spm.model"}, "cannot read sentencepiece model"),
                        ({"kind": "wordpiece"}, "unknown tokenizer kind")):
        (tmp_path / "tokenizer.json").write_text(json.dumps(meta))
        with pytest.raises(TokenizerError, match=match) as e:
            load_tokenizer(tmp_path)
        assert "tokenizer.json" in str(e.value) or "spm.model" in str(e.value)
    (tmp_path / "spm.model").write_bytes(b"garbage")
    (tmp_path / "tokenizer.json").write_text(json.dumps({"kind": "sentencepiece", "model": "spm.model"}))
    with pytest.raises(TokenizerError, match="spm.model: not a sentencepiece model"):
        load_tokenizer(tmp_path)
