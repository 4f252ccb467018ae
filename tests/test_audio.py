"""Audio front end: odd-but-valid prompts, clear errors for bad ones, features, WAV output."""

import math

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from tts import audio
from tts.audio import AudioError


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _tone(sr: int, seconds: float, channels: int = 1, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    cols = [amp * np.sin(2 * math.pi * (220.0 * (c + 1)) * t) for c in range(channels)]
    data = np.stack(cols, axis=1).astype(np.float32)
    return data[:, 0] if channels == 1 else data


# ---------------------------------------------------------------------------------------------
# Odd but valid prompts
# ---------------------------------------------------------------------------------------------


def test_multichannel_is_averaged(tmp_path):
    data = _tone(22050, 0.5, channels=3)
    path = tmp_path / "three.wav"
    sf.write(path, data, 22050, subtype="FLOAT")
    wave, sr = audio.load_audio(path)
    assert sr == 22050
    np.testing.assert_array_equal(wave.numpy(), np.mean(data.T, axis=0))


@pytest.mark.parametrize("native_sr", [8000, 96000, 44100])
def test_resampled_like_librosa(tmp_path, native_sr):
    data = _tone(native_sr, 0.7)
    path = tmp_path / f"tone_{native_sr}.wav"
    sf.write(path, data, native_sr, subtype="FLOAT")
    wave, sr = audio.load_audio(path)
    assert sr == 22050
    expected_len = math.ceil(len(data) * 22050 / native_sr)
    assert wave.shape == (expected_len,)
    ref = soxr.resample(data, native_sr, 22050, quality="soxr_hq")
    n = min(len(ref), expected_len)
    np.testing.assert_array_equal(wave.numpy()[:n], ref[:n])
    # 16 kHz (emotion) path
    wave16, sr16 = audio.load_prompt(path, sr=16000)
    assert sr16 == 16000 and wave16.shape == (1, math.ceil(len(data) * 16000 / native_sr))


@pytest.mark.parametrize(
    "fmt, subtype, ext", [("FLAC", "PCM_16", "flac"), ("OGG", "VORBIS", "ogg")]
)
def test_flac_and_ogg(tmp_path, fmt, subtype, ext):
    data = _tone(22050, 0.5)
    path = tmp_path / f"tone.{ext}"
    sf.write(path, data, 22050, format=fmt, subtype=subtype)
    wave, sr = audio.load_audio(path)
    assert sr == 22050 and abs(wave.shape[0] - len(data)) <= 1
    assert wave.dtype == torch.float32
    assert float(wave.abs().max()) > 0.3


def test_long_prompt_is_cut_to_15_seconds(tmp_path):
    data = _tone(22050, 16.0, amp=0.3)
    path = tmp_path / "long.wav"
    sf.write(path, data, 22050, subtype="PCM_16")
    wave, sr = audio.load_prompt(path)
    assert wave.shape == (1, 15 * 22050) and sr == 22050
    emo, sr16 = audio.load_prompt(path, sr=16000)
    assert emo.shape == (1, 15 * 16000) and sr16 == 16000
    short, _ = audio.load_prompt(path, max_seconds=20)
    assert short.shape == (1, len(data))


def test_prompt_rates_from_one_decode_equal_separate_loads(tmp_path):
    """``load_prompt_rates`` (one decode, resampled per rate) gives exactly what a
    ``load_prompt`` per rate gives, the 15 s cut included; a silent file fails at any rate."""
    data = _tone(24000, 16.0, amp=0.3)
    path = tmp_path / "long24k.wav"
    sf.write(path, data, 24000, subtype="PCM_16")
    both = audio.load_prompt_rates(path, (22050, 16000))
    assert [w.shape for w in both] == [(1, 15 * 22050), (1, 15 * 16000)]
    for wave, sr in zip(both, (22050, 16000), strict=True):
        assert torch.equal(wave, audio.load_prompt(path, sr)[0])
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(8000, dtype=np.float32), 16000)
    with pytest.raises(audio.AudioError, match="silent"):
        audio.load_prompt_rates(silent, (22050, 16000))


def test_clipped_prompt_loads(tmp_path):
    data = np.clip(_tone(22050, 0.5, amp=3.0), -1.0, 1.0)
    path = tmp_path / "clipped.wav"
    sf.write(path, data, 22050, subtype="PCM_16")
    wave, _ = audio.load_audio(path)
    assert float(wave.max()) == pytest.approx(32767 / 32768)
    assert float(wave.min()) == -1.0


def test_int16_scaling_is_soundfile_float(tmp_path):
    path = tmp_path / "pcm.wav"
    samples = np.array([0, 16384, -32768, 32767] * 100, dtype=np.int16)
    sf.write(path, samples, 22050, subtype="PCM_16")
    wave, _ = audio.load_audio(path)
    np.testing.assert_array_equal(wave.numpy(), samples.astype(np.float32) / 32768.0)


# ---------------------------------------------------------------------------------------------
# Bad prompts
# ---------------------------------------------------------------------------------------------


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty.wav.*empty"):
        audio.load_audio(path)


def test_non_audio_file(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 20)
    with pytest.raises(AudioError, match=r"notes.wav.*not a readable audio file"):
        audio.load_audio(path)


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        audio.load_prompt(tmp_path / "nope.wav")


def test_zero_frames(tmp_path):
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 22050, subtype="PCM_16")
    with pytest.raises(AudioError, match="no audio samples"):
        audio.load_audio(path)


def test_silence(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(22050, dtype=np.float32), 22050, subtype="PCM_16")
    with pytest.raises(AudioError, match=r"silence.wav.*silent"):
        audio.load_prompt(path)


def test_nan(tmp_path):
    data = _tone(22050, 0.2)
    data[100] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, data, 22050, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan.wav.*NaN"):
        audio.load_audio(path)


def test_audio_error_is_value_error():
    assert issubclass(AudioError, ValueError)


# ---------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------


def test_mel_shape_and_filters():
    y = torch.from_numpy(_tone(22050, 1.0)).unsqueeze(0)
    mel = audio.mel_spectrogram(y)
    n = y.shape[1]
    assert mel.shape == (1, 80, (n + 768 - 1024) // 256 + 1)
    fb = audio.slaney_mel_filters(22050, 1024, 80)
    assert fb.shape == (80, 513) and fb.dtype == torch.float32
    import torchaudio

    ta = torchaudio.functional.melscale_fbanks(
        513, 0.0, 11025.0, 80, 22050, norm="slaney", mel_scale="slaney"
    )
    assert torch.allclose(fb, ta.T, atol=1e-6, rtol=0)


def test_mel_kwargs_fmax_quirk():
    cfg = {
        "preprocess_params": {
            "sr": 22050,
            "spect_params": {
                "n_fft": 1024,
                "win_length": 1024,
                "hop_length": 256,
                "n_mels": 80,
                "fmin": 0,
            },
        }
    }
    assert audio.mel_kwargs(cfg)["fmax"] is None
    cfg["preprocess_params"]["spect_params"]["fmax"] = "None"
    assert audio.mel_kwargs(cfg)["fmax"] is None
    cfg["preprocess_params"]["spect_params"]["fmax"] = 11025
    assert audio.mel_kwargs(cfg)["fmax"] == 8000


def test_fbank_and_cmn():
    wave = torch.from_numpy(_tone(16000, 1.0)).unsqueeze(0)
    fb = audio.kaldi_fbank(wave)
    assert fb.shape == (98, 80)
    cmn = audio.campplus_features(wave)
    assert torch.allclose(cmn.mean(0), torch.zeros(80), atol=1e-4)


def test_resample_length():
    wave = torch.from_numpy(_tone(22050, 1.0)).unsqueeze(0)
    out = audio.resample(wave, 22050, 16000)
    assert out.shape == (1, 16000)
    assert audio.resample(wave, 22050, 22050) is wave


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def test_save_wav_scaling_and_atomic(tmp_path):
    pcm = torch.tensor([[0.0, 32767.0, -32767.0, 16383.5, -1.0, 40000.0]])
    path = tmp_path / "out" / "speech.wav"
    assert audio.save_wav(path, pcm, 22050) == path
    info = sf.info(path)
    assert info.samplerate == 22050 and info.subtype == "PCM_16" and info.channels == 1
    data, _ = sf.read(path, dtype="int16")
    assert data.tolist() == [0, 32767, -32768, 16384, -1, 32767]
    assert [p.name for p in path.parent.iterdir()] == ["speech.wav"]
    # overwrite in place
    audio.save_wav(path, torch.zeros(1, 10), 22050)
    assert sf.info(path).frames == 10
    assert [p.name for p in path.parent.iterdir()] == ["speech.wav"]


def test_save_wav_failure_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "x.wav"
    audio.save_wav(path, torch.ones(1, 5), 22050)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(sf, "write", boom)
    with pytest.raises(OSError, match="disk full"):
        audio.save_wav(path, torch.zeros(1, 7), 22050)
    assert [p.name for p in tmp_path.iterdir()] == ["x.wav"]
    assert sf.info(path).frames == 5
