import numpy as np
import pytest
import soundfile as sf

from speechkd.data.audio import AudioError, load_audio
from tests.conftest import write_tone


def test_resample_and_downmix(tmp_path):
    p = write_tone(tmp_path / "st.wav", seconds=1.0, sr=44100, channels=2, freq=440)
    wav = load_audio(p)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(len(wav) - 16000) <= 1
    # the 440 Hz tone survives resampling: its FFT peak stays at 440 Hz
    spec = np.abs(np.fft.rfft(wav[:16000]))
    assert abs(np.argmax(spec) * 16000 / 16000 - 440) <= 2


def test_offset_and_duration(tmp_path):
    p = write_tone(tmp_path / "a.wav", seconds=2.0)
    assert len(load_audio(p, offset=0.5, duration=1.0)) == 16000


@pytest.mark.parametrize("reason", ["missing", "empty_file", "unreadable", "no_samples", "non_finite"])
def test_bad_audio_reasons(tmp_path, reason):
    p = tmp_path / "x.wav"
    if reason == "empty_file":
        p.write_bytes(b"")
    elif reason == "unreadable":
        p.write_bytes(b"RIFF\x00\x00\x00\x00garbage" * 10)
    elif reason == "no_samples":
        sf.write(str(p), np.zeros(0, dtype=np.float32), 16000)
    elif reason == "non_finite":
        x = np.zeros(1600, dtype=np.float32)
        x[10] = np.nan
        sf.write(str(p), x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError) as e:
        load_audio(p)
    assert e.value.reason == reason and str(p) in str(e.value)
