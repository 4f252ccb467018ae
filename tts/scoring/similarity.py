"""Speaker similarity: cosine similarity of speaker embeddings of the prompt and the output.

Two backends:

* ``resemblyzer`` - the embedded default: the trained GE2E speaker encoder (3-layer LSTM over
  40-band mel frames, 256-d d-vectors) whose weights ship inside the ``resemblyzer`` wheel
  (``resemblyzer/pretrained.pt``, Apache-2.0). Only the weight file is used: the network, the
  mel front-end and the preprocessing are re-implemented here in torch, which reproduces
  ``VoiceEncoder.embed_utterance(preprocess_wav(...))`` (tests compare the two) without
  importing librosa.
* ``campplus`` - the official IndexTTS2 speaker model (CAM++ 192-d, ``campplus_cn_common.bin``)
  from the checkpoint set named by ``scoring.checkpoints``, loaded through
  ``tts.components.load_component("campplus", cs)``, fed the Kaldi fbank features of
  :func:`tts.audio.campplus_features` as the reference feeds it.

Every backend takes 16 kHz mono float32 waveforms. Similarity values of different backends are
on different scales: compare thresholds per backend (docs/scoring.md).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

SIM_SAMPLE_RATE = 16000
SIMILARITY_BACKENDS = ("resemblyzer", "campplus")
# A row's similarity must reach this unless scoring.thresholds.min_similarity says otherwise.
# resemblyzer: measured on espeak-ng/flite voices (docs/scoring.md); campplus: the usual SV range.
DEFAULT_MIN_SIMILARITY = {"resemblyzer": 0.75, "campplus": 0.5}


class SpeakerEncoder(Protocol):
    """A speaker-embedding model: ``name`` goes into every report row it produced."""

    name: str

    def embed(self, wave: np.ndarray) -> torch.Tensor:
        """One 1-D embedding of a 16 kHz mono float32 waveform."""
        ...


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two 1-D embeddings, in float64."""
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    denom = float(a.norm() * b.norm())
    if denom == 0.0 or not math.isfinite(denom):
        return float("nan")
    return float(a @ b) / denom


# ---------------------------------------------------------------------------------------------
# resemblyzer (GE2E d-vector), embedded
# ---------------------------------------------------------------------------------------------

# Front-end and model sizes of the shipped encoder.
_MEL_BANDS, _N_FFT, _HOP = 40, 400, 160  # 25 ms window, 10 ms hop at 16 kHz
_PARTIAL_FRAMES = 160  # 1.6 s per partial utterance
_HIDDEN, _LAYERS = 256, 3
_TARGET_DBFS = -30.0
_VAD_WINDOW = 480  # 30 ms at 16 kHz, one webrtcvad decision
_VAD_SMOOTH, _VAD_MAX_SILENCE = 8, 6


def resemblyzer_weights_path() -> Path:
    """Where the installed resemblyzer wheel keeps its trained encoder (the package is not
    imported: its __init__ pulls in librosa)."""
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the 'resemblyzer' package is not installed; it ships the embedded speaker encoder "
            "(pip install resemblyzer==0.1.4, pinned in pyproject.toml)"
        )
    path = Path(spec.origin).parent / "pretrained.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: resemblyzer's bundled encoder weights are missing")
    return path


class GE2EEncoder(nn.Module):
    """LSTM speaker encoder: mel frames ``[B, T, 40]`` -> L2-normalised ReLU embedding ``[B, 256]``."""

    def __init__(self, n_mels: int = _MEL_BANDS, hidden: int = _HIDDEN, layers: int = _LAYERS):
        super().__init__()
        self.lstm = nn.LSTM(n_mels, hidden, layers, batch_first=True)
        self.linear = nn.Linear(hidden, hidden)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)
        emb = torch.relu(self.linear(hidden[-1]))
        return emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _moving_average(x: np.ndarray, width: int) -> np.ndarray:
    """Centered moving average with zero padding ((width-1)//2 before, width//2 after)."""
    padded = np.concatenate([np.zeros((width - 1) // 2), x, np.zeros(width // 2)])
    c = np.cumsum(padded, dtype=float)
    c[width:] = c[width:] - c[:-width]
    return c[width - 1 :] / width


class ResemblyzerEncoder:
    """The resemblyzer GE2E encoder with its preprocessing, re-implemented in torch.

    Preprocessing (16 kHz input): raise the level to -30 dBFS if quieter, then drop long
    silences with webrtcvad (aggressiveness 3, 30 ms windows, 8-window smoothing, 6-window
    dilation). Embedding: power mel spectrogram (librosa defaults: Hann window, centered with
    zero padding, Slaney mel scale and norm), 1.6 s partials at 1.3 per second, mean of the
    partial embeddings, L2-normalised.
    """

    def __init__(self, device: str = "cpu") -> None:
        import torchaudio

        state = torch.load(resemblyzer_weights_path(), map_location="cpu", weights_only=True)
        model_state = {
            k: v for k, v in state["model_state"].items() if not k.startswith("similarity_")
        }
        self.model = GE2EEncoder()
        self.model.load_state_dict(model_state, strict=True)
        self.model.to(device).eval()
        self.device = device
        self.mel_fb = torchaudio.functional.melscale_fbanks(
            _N_FFT // 2 + 1,
            0.0,
            SIM_SAMPLE_RATE / 2,
            _MEL_BANDS,
            SIM_SAMPLE_RATE,
            norm="slaney",
            mel_scale="slaney",
        ).to(device)  # [freq, mel]
        self.window = torch.hann_window(_N_FFT, periodic=True, dtype=torch.float32).to(device)
        self.name = "resemblyzer-ge2e"

    # -- preprocessing ------------------------------------------------------------------------

    @staticmethod
    def normalize_volume(wave: np.ndarray) -> np.ndarray:
        rms = float(np.sqrt(np.mean((wave.astype(np.float64) * 32767) ** 2)))
        if rms == 0.0:
            return wave
        change = _TARGET_DBFS - 20 * math.log10(rms / 32767)
        return wave * (10 ** (change / 20)) if change > 0 else wave

    @staticmethod
    def trim_long_silences(wave: np.ndarray) -> np.ndarray:
        """Keep voiced 30 ms windows (smoothed, dilated); all of ``wave`` if none is voiced."""
        import webrtcvad

        wave = wave[: len(wave) - len(wave) % _VAD_WINDOW]
        if len(wave) == 0:
            return wave
        pcm = np.round(wave * 32767).astype("<i2")
        vad = webrtcvad.Vad(3)
        flags = np.array(
            [
                vad.is_speech(pcm[s : s + _VAD_WINDOW].tobytes(), sample_rate=SIM_SAMPLE_RATE)
                for s in range(0, len(pcm), _VAD_WINDOW)
            ],
            dtype=float,
        )
        mask = np.round(_moving_average(flags, _VAD_SMOOTH)).astype(bool)
        width = _VAD_MAX_SILENCE + 1
        mask = np.convolve(mask.astype(float), np.ones(width), mode="same") > 0.5
        keep = np.repeat(mask, _VAD_WINDOW)
        return wave[keep] if keep.any() else wave

    def preprocess(self, wave: np.ndarray) -> np.ndarray:
        wave = np.asarray(wave, dtype=np.float32)
        return self.trim_long_silences(self.normalize_volume(wave)).astype(np.float32)

    # -- embedding ----------------------------------------------------------------------------

    def mel_frames(self, wave: np.ndarray) -> torch.Tensor:
        """Power mel spectrogram ``[frames, 40]`` as librosa.feature.melspectrogram computes it."""
        x = torch.as_tensor(np.asarray(wave, dtype=np.float32), device=self.device)
        spec = torch.stft(
            x,
            _N_FFT,
            _HOP,
            window=self.window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()  # [freq, frames]
        return (self.mel_fb.T @ power).T.contiguous()

    @staticmethod
    def partial_slices(
        n_samples: int, rate: float = 1.3, min_coverage: float = 0.75
    ) -> list[slice]:
        """Frame ranges of the 1.6 s partial utterances covering ``n_samples`` (GE2E inference)."""
        n_frames = int(np.ceil((n_samples + 1) / _HOP))
        step = max(1, int(np.round((SIM_SAMPLE_RATE / rate) / _HOP)))
        starts = range(0, max(1, n_frames - _PARTIAL_FRAMES + step + 1), step)
        slices = [slice(s, s + _PARTIAL_FRAMES) for s in starts]
        last = slices[-1]
        coverage = (n_samples - last.start * _HOP) / (_PARTIAL_FRAMES * _HOP)
        if coverage < min_coverage and len(slices) > 1:
            slices = slices[:-1]
        return slices

    @torch.inference_mode()
    def embed_preprocessed(self, wave: np.ndarray) -> torch.Tensor:
        """Embedding of an already preprocessed 16 kHz waveform (``[256]``, unit norm)."""
        slices = self.partial_slices(len(wave))
        need = slices[-1].stop * _HOP
        if need >= len(wave):
            wave = np.pad(wave, (0, need - len(wave)))
        mel = self.mel_frames(wave)
        partials = torch.stack([mel[s] for s in slices])
        emb = self.model(partials).mean(dim=0)
        return (emb / emb.norm().clamp_min(1e-12)).cpu()

    def embed(self, wave: np.ndarray) -> torch.Tensor:
        return self.embed_preprocessed(self.preprocess(wave))


# ---------------------------------------------------------------------------------------------
# CAMPPlus (official IndexTTS2 speaker model), from the checkpoint set
# ---------------------------------------------------------------------------------------------


class CAMPPlusEncoder:
    """CAM++ from ``campplus_cn_common.bin`` of a checkpoint set (strict load)."""

    def __init__(self, checkpoints: str | Path, device: str = "cpu") -> None:
        from tts.checkpoints import CheckpointSet
        from tts.components import load_component

        cs = CheckpointSet.open(checkpoints)
        module, _report = load_component("campplus", cs)
        self.model = module.to(device).eval()
        self.device = device
        self.name = "campplus" + ("-DEMO" if cs.is_demo else "")

    @torch.inference_mode()
    def embed(self, wave: np.ndarray) -> torch.Tensor:
        from tts.audio import campplus_features

        x = torch.as_tensor(np.asarray(wave, dtype=np.float32)).unsqueeze(0)
        feat = campplus_features(x).to(self.device)
        return self.model(feat.unsqueeze(0)).reshape(-1).float().cpu()


def similarity_name(cfg: dict) -> str | None:
    """``scoring.similarity``: a backend name, or ``none``/``null`` to skip similarity."""
    name = cfg.get("similarity", "resemblyzer")
    if name is None or str(name).lower() in ("none", "off", "false"):
        return None
    name = str(name)
    if name not in SIMILARITY_BACKENDS:
        raise ValueError(
            f"scoring.similarity: unknown backend {name!r}; choose from {list(SIMILARITY_BACKENDS)} or none"
        )
    return name


def make_encoder(name: str, cfg: dict | None = None) -> SpeakerEncoder:
    """Build similarity backend ``name`` with the settings of the ``scoring`` config section."""
    cfg = cfg or {}
    device = str(cfg.get("device", "cpu"))
    if name == "resemblyzer":
        return ResemblyzerEncoder(device=device)
    if name == "campplus":
        ckpt = cfg.get("checkpoints")
        if not ckpt:
            raise ValueError(
                "scoring.similarity is 'campplus' but scoring.checkpoints names no checkpoint set "
                "(the directory holding config.yaml and campplus_cn_common.bin)"
            )
        return CAMPPlusEncoder(ckpt, device=device)
    raise ValueError(
        f"unknown similarity backend {name!r}; choose from {list(SIMILARITY_BACKENDS)}"
    )
