"""Audio front end: prompt loading, resampling, the s2mel mel spectrogram, Kaldi fbank, WAV output.

Everything here reproduces what the reference inference does to a prompt file (spec 2.2/2.3):

* :func:`load_audio` behaves like ``librosa.load(path, sr=...)``: soundfile decodes to float32,
  channels are averaged, and the signal is resampled with soxr's "HQ" quality, then padded or
  trimmed to ``ceil(n * target / native)`` samples.
* :func:`load_prompt` adds the 15 s cut (``_load_and_cut_audio``); the speaker path loads at
  22050 Hz, the emotion path at 16000 Hz (:func:`load_prompt_rates`: both from one decode).
* :func:`resample` is torchaudio's ``Resample`` transform with its defaults (the speaker prompt's
  22.05 kHz -> 16 kHz step).
* :func:`mel_spectrogram` is the s2mel reference mel (Slaney filters, log with floor 1e-5).
* :func:`kaldi_fbank` / :func:`campplus_features` are the CAMPPlus input features.
* :func:`save_wav` writes 16-bit PCM atomically with the reference's output scaling.

Bad input files raise :class:`AudioError` (a ``ValueError``) naming the file and the reason.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

SPEAKER_SAMPLE_RATE = 22050
EMOTION_SAMPLE_RATE = 16000
PROMPT_MAX_SECONDS = 15.0
# A prompt whose peak stays below this (about -80 dBFS, a few 16-bit steps) carries no voice.
SILENCE_PEAK = 1e-4
# Full scale of the reference's PCM-scale output waveform (``clamp(32767 * wav, ...)``).
PCM16_MAX = 32767.0


class AudioError(ValueError):
    """An audio file cannot be used as a prompt. The message names the file and the reason."""


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _read_file(path: Path) -> tuple[np.ndarray, int]:
    """Decode with soundfile to float32, shaped like librosa's ``(channels, n)`` or ``(n,)``."""
    import soundfile as sf

    if not path.exists():
        raise AudioError(f"{path}: file not found")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, expected an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: file is empty (0 bytes)")
    try:
        with sf.SoundFile(str(path)) as desc:
            native_sr = int(desc.samplerate)
            data = desc.read(frames=-1, dtype="float32", always_2d=False).T
    except (RuntimeError, sf.LibsndfileError, TypeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AudioError(
            f"{path}: not a readable audio file (soundfile reads WAV, FLAC, OGG, ...): {reason}"
        ) from None
    return data, native_sr


def _to_mono(data: np.ndarray) -> np.ndarray:
    """Average every leading (channel) axis, in float32, as librosa.to_mono does."""
    if data.ndim > 1:
        data = np.mean(data, axis=tuple(range(data.ndim - 1)))
    return data


def _soxr_resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """librosa.resample(res_type="soxr_hq", fix=True): soxr, then pad/trim to ceil(n * ratio)."""
    import soxr

    if orig_sr == target_sr:
        return y
    n_out = int(np.ceil(y.shape[-1] * (float(target_sr) / orig_sr)))
    out = soxr.resample(y, orig_sr, target_sr, quality="soxr_hq")
    if out.shape[-1] > n_out:
        out = out[..., :n_out]
    elif out.shape[-1] < n_out:
        out = np.pad(out, [(0, 0)] * (out.ndim - 1) + [(0, n_out - out.shape[-1])])
    return np.asarray(out, dtype=y.dtype)


def load_audio(
    path: str | os.PathLike, sr: int | None = SPEAKER_SAMPLE_RATE
) -> tuple[torch.Tensor, int]:
    """Load a file as mono float32 at ``sr`` Hz (``None``: native rate), like ``librosa.load``.

    Returns ``(wave [N], sample_rate)``. Raises :class:`AudioError` for missing, empty,
    undecodable, sample-less, non-finite or silent audio.
    """
    path = Path(path)
    y, native_sr = _decode(path)
    return _at_rate(path, y, native_sr, native_sr if sr is None else int(sr))


def _decode(path: Path) -> tuple[np.ndarray, int]:
    """The file's samples, mono float32, and its rate; :class:`AudioError` for files without
    usable samples."""
    data, native_sr = _read_file(path)
    if data.size == 0 or data.shape[-1] == 0:
        raise AudioError(f"{path}: contains no audio samples")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: contains NaN or infinite sample values")
    return np.ascontiguousarray(_to_mono(data)), native_sr


def _at_rate(path: Path, y: np.ndarray, native_sr: int, target: int) -> tuple[torch.Tensor, int]:
    """Decoded samples ``y`` resampled to ``target`` Hz as ``librosa.load`` does; raises
    :class:`AudioError` when the result is silent."""
    y = _soxr_resample(y, native_sr, target)
    peak = float(np.abs(y).max()) if y.size else 0.0
    if peak < SILENCE_PEAK:
        raise AudioError(
            f"{path}: is silent (peak amplitude {peak:.2e}); a prompt needs audible speech"
        )
    return torch.from_numpy(np.ascontiguousarray(y)), target


def cut_audio(wave: torch.Tensor, sr: int, max_seconds: float = PROMPT_MAX_SECONDS) -> torch.Tensor:
    """Keep the first ``int(max_seconds * sr)`` samples of the last axis."""
    limit = int(max_seconds * sr)
    return wave[..., :limit] if wave.shape[-1] > limit else wave


def load_prompt(
    path: str | os.PathLike, sr: int = SPEAKER_SAMPLE_RATE, max_seconds: float = PROMPT_MAX_SECONDS
) -> tuple[torch.Tensor, int]:
    """Load a prompt as the reference does: ``[1, N]`` float32 at ``sr``, cut to ``max_seconds``.

    ``sr=22050`` is the speaker path, ``sr=16000`` the emotion path.
    """
    wave, rate = load_audio(path, sr)
    return cut_audio(wave.unsqueeze(0), rate, max_seconds), rate


def load_prompt_rates(
    path: str | os.PathLike, rates: tuple[int, ...], max_seconds: float = PROMPT_MAX_SECONDS
) -> list[torch.Tensor]:
    """:func:`load_prompt` at each of ``rates`` (``[1, N]`` float32 each), the file decoded once.

    The reference loads a prompt that is also the emotion prompt twice (22.05 and 16 kHz);
    decoding is deterministic, so one decode resampled twice gives the same samples.
    """
    path = Path(path)
    y, native_sr = _decode(path)
    out = []
    for sr in rates:
        wave, rate = _at_rate(path, y, native_sr, int(sr))
        out.append(cut_audio(wave.unsqueeze(0), rate, max_seconds))
    return out


# ---------------------------------------------------------------------------------------------
# Resampling and features
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _resampler(orig_sr: int, new_sr: int, device: str, dtype: torch.dtype) -> torch.nn.Module:
    import torchaudio

    # torchaudio defaults: sinc_interp_hann, lowpass width 6, rolloff 0.99; the kernel is built in
    # float64 and cached as float32 (the functional form would build it in the input's dtype).
    return torchaudio.transforms.Resample(orig_sr, new_sr).to(device=device, dtype=dtype)


def resample(wave: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """torchaudio ``Resample(orig_sr, new_sr)`` with its defaults, along the last axis."""
    if orig_sr == new_sr:
        return wave
    return _resampler(int(orig_sr), int(new_sr), str(wave.device), wave.dtype)(wave)


def _hz_to_slaney_mel(f: torch.Tensor) -> torch.Tensor:
    # Linear below 1 kHz (200/3 Hz per mel), logarithmic above (27 mels per factor 6.4).
    f_sp = 200.0 / 3.0
    log_step = math.log(6.4) / 27.0
    linear = f / f_sp
    logpart = 1000.0 / f_sp + torch.log(torch.clamp(f, min=1e-10) / 1000.0) / log_step
    return torch.where(f >= 1000.0, logpart, linear)


def _slaney_mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    f_sp = 200.0 / 3.0
    log_step = math.log(6.4) / 27.0
    min_log_mel = 1000.0 / f_sp
    return torch.where(m >= min_log_mel, 1000.0 * torch.exp(log_step * (m - min_log_mel)), f_sp * m)


def slaney_mel_filters(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> torch.Tensor:
    """``[n_mels, n_fft // 2 + 1]`` mel filterbank equal to ``librosa.filters.mel`` defaults.

    Slaney mel scale, triangles between ``n_mels + 2`` points equally spaced in mel, each scaled
    by ``2 / (upper edge - lower edge)`` in Hz (Slaney area norm). Evaluated in float64 and
    returned as float32, as librosa does (torchaudio's ``melscale_fbanks`` with the same options
    works in float32 and differs by ~1e-7).
    """
    fmax = sample_rate / 2.0 if fmax is None else float(fmax)
    f64 = torch.float64
    fft_freqs = torch.arange(n_fft // 2 + 1, dtype=f64) * (float(sample_rate) / n_fft)
    mel_lo, mel_hi = _hz_to_slaney_mel(torch.tensor([float(fmin), fmax], dtype=f64))
    edges = _slaney_mel_to_hz(torch.linspace(float(mel_lo), float(mel_hi), n_mels + 2, dtype=f64))
    widths = edges[1:] - edges[:-1]
    offsets = edges[:, None] - fft_freqs[None, :]  # [n_mels + 2, n_freqs]
    rising = -offsets[:-2] / widths[:-1, None]
    falling = offsets[2:] / widths[1:, None]
    # librosa stores the triangles as float32, then scales them by the float64 area factors.
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0).float().double()
    area = 2.0 / (edges[2:] - edges[:-2])
    return (weights * area[:, None]).float()


@lru_cache(maxsize=8)
def _mel_tables(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None, win_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    return slaney_mel_filters(sample_rate, n_fft, n_mels, fmin, fmax), torch.hann_window(win_size)


@lru_cache(maxsize=8)
def _mel_tables_on(
    device: str, dtype: torch.dtype, *table_args
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_mel_tables` on ``device`` in ``dtype``, copied there once: a copy from the host
    makes the host wait for the GPU's queue to drain, which in the middle of the prompt
    conditioning kept it from queueing the next model's kernels meanwhile."""
    return tuple(t.to(device=device, dtype=dtype) for t in _mel_tables(*table_args))


def mel_spectrogram(
    y: torch.Tensor,
    n_fft: int = 1024,
    num_mels: int = 80,
    sampling_rate: int = SPEAKER_SAMPLE_RATE,
    hop_size: int = 256,
    win_size: int = 1024,
    fmin: float = 0,
    fmax: float | None = None,
    center: bool = False,
) -> torch.Tensor:
    """The s2mel reference mel: ``[B, T] -> [B, num_mels, frames]`` log-magnitude mel.

    Reflect-pad ``(n_fft - hop) / 2`` on both sides, STFT with a periodic Hann window,
    magnitude ``sqrt(re^2 + im^2 + 1e-9)``, Slaney mel filters, ``log(clamp(x, 1e-5))``.
    ``fmax=None`` means Nyquist. With ``center=False`` there are ``(N + pad*2 - n_fft)//hop + 1``
    frames.
    """
    basis, window = _mel_tables_on(
        str(y.device), y.dtype, sampling_rate, n_fft, num_mels, float(fmin), fmax, win_size
    )
    pad = int((n_fft - hop_size) / 2)
    y = torch.nn.functional.pad(y.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(
        y,
        n_fft,
        hop_length=hop_size,
        win_length=win_size,
        window=window,
        center=center,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    spec = torch.view_as_real(spec)
    magnitude = torch.sqrt(spec.pow(2).sum(-1) + 1e-9)
    return torch.log(torch.clamp(torch.matmul(basis, magnitude), min=1e-5))


def mel_kwargs(s2mel_config: dict) -> dict:
    """Keyword arguments of :func:`mel_spectrogram` from the config's ``s2mel`` section.

    Reproduces infer_v2: ``fmax`` is ``None`` (Nyquist) when the config says ``"None"`` or
    omits it, and 8000 for *any* other value (spec pitfall 11).
    """
    pre = s2mel_config["preprocess_params"]
    spect = pre["spect_params"]
    fmax_cfg = spect.get("fmax", "None")
    return {
        "n_fft": int(spect["n_fft"]),
        "win_size": int(spect["win_length"]),
        "hop_size": int(spect["hop_length"]),
        "num_mels": int(spect["n_mels"]),
        "sampling_rate": int(pre["sr"]),
        "fmin": spect.get("fmin", 0),
        "fmax": None if fmax_cfg == "None" else 8000,
        "center": False,
    }


def kaldi_fbank(
    wave_16k: torch.Tensor, num_mel_bins: int = 80, sample_rate: int = 16000
) -> torch.Tensor:
    """Kaldi fbank of a ``[1, N]`` (or ``[N]``) waveform in [-1, 1]: ``[frames, num_mel_bins]``.

    torchaudio.compliance.kaldi.fbank with dither 0 and the Kaldi defaults (25 ms / 10 ms
    Povey window, pre-emphasis 0.97, DC removal, snip edges, log power mel). The waveform is
    *not* scaled to 16-bit range (spec pitfall 12).
    """
    import torchaudio

    if wave_16k.dim() == 1:
        wave_16k = wave_16k.unsqueeze(0)
    return torchaudio.compliance.kaldi.fbank(
        wave_16k, num_mel_bins=num_mel_bins, dither=0, sample_frequency=sample_rate
    )


def campplus_features(wave_16k: torch.Tensor) -> torch.Tensor:
    """CAMPPlus input: Kaldi fbank minus its per-bin mean over time, ``[frames, 80]``."""
    feat = kaldi_fbank(wave_16k)
    return feat - feat.mean(dim=0, keepdim=True)


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def pcm16_samples(wav: torch.Tensor) -> np.ndarray:
    """int16 samples the reference writes for a PCM-scale waveform (values in ±32767).

    The reference divides by 32767, clamps to [-1, 1] and lets the encoder convert float to
    16-bit as FFmpeg/SoX do: ``clip(round(x * 32768), -32768, 32767)``.
    """
    x = wav.detach().to(device="cpu", dtype=torch.float32) / PCM16_MAX
    x = x.clamp(-1.0, 1.0) * 32768.0
    return torch.round(x).clamp(-32768, 32767).to(torch.int16).numpy()


def save_wav(
    path: str | os.PathLike, wav: torch.Tensor, sample_rate: int = SPEAKER_SAMPLE_RATE
) -> Path:
    """Write a PCM-scale waveform (``[N]`` or ``[channels, N]``) as 16-bit PCM WAV, atomically.

    The file is written under a temporary name in the same folder and renamed over ``path``,
    so a reader never sees a half-written WAV. Parent folders are created.
    """
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = pcm16_samples(wav)
    if samples.ndim == 2:
        samples = samples.T  # soundfile wants (frames, channels)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        sf.write(str(tmp), samples, int(sample_rate), subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_wav(
    path: str | os.PathLike, wav: torch.Tensor, sample_rate: int = SPEAKER_SAMPLE_RATE
) -> Path:
    """Write a float waveform in [-1, 1] (``[N]``) as 16-bit PCM WAV, atomically.

    The pipeline keeps audio in [-1, 1]; this applies the reference's PCM scaling
    (clamp(32767 * x)) and then :func:`save_wav`.
    """
    return save_wav(
        path, torch.clamp(32767.0 * wav.detach().float(), -PCM16_MAX, PCM16_MAX), sample_rate
    )
