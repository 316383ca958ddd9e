"""Token emission latency: the teacher alignment is computed once, and the end-of-stream flush is measured in
the model's own frame shift (it was a hard-coded 10 ms)."""

from types import SimpleNamespace

import numpy as np
import soundfile as sf

from speechkd.eval.latency import measure


class FakeRecognizer:
    """Emits nothing until the end of the stream, then tokens [1, 2] at 40 and 80 ms."""

    frame_ms, blank, flush_frames = 40.0, 0, 4
    fbank = {"frame_shift_ms": 12.5}

    def reset(self):
        pass

    def accept_waveform(self, wav, sr):
        pass

    def result(self):
        return SimpleNamespace(tokens=[])

    def input_finished(self):
        return SimpleNamespace(tokens=[1, 2], times_ms=[40.0, 80.0])


class DS(list):
    pass


def test_first_partial_after_the_flush_uses_the_models_hop(tmp_path):
    sf.write(str(tmp_path / "u.wav"), np.zeros(16000, np.float32), 16000)  # 1000 ms
    ds = DS([("u", None, [1, 2], None)])
    out = measure(FakeRecognizer(), {"u": np.array([0, 1])}, 40.0, ds, {"u": tmp_path / "u.wav"}, chunk_ms=100)
    # the first text appears after the audio and the flush: 1000 + 4 frames x 12.5 ms; the first token ends at
    # the end of teacher frame 0 (40 ms)
    assert out["first_partial_median_ms"] == 1000 + 4 * 12.5 - 40
    # emitted at frames 1 and 2 (40 and 80 ms) against ends at 0 and 40 ms: 40 ms each
    assert out["emission_median_ms"] == 40.0 and out["tokens_matched"] == 2


def test_utterances_without_an_alignment_are_left_out(tmp_path):
    sf.write(str(tmp_path / "u.wav"), np.zeros(1600, np.float32), 16000)
    out = measure(FakeRecognizer(), {}, 40.0, DS([("u", None, [1], None)]), {"u": tmp_path / "u.wav"})
    assert out["tokens_matched"] == 0 and out["emission_median_ms"] is None
