"""Verification of generated speech: intelligibility (ASR -> WER/CER), speaker similarity and
audio sanity, with a per-row verdict against configurable thresholds.

The workflow builds one :class:`Scorer` from the ``scoring`` section of its config and calls
:meth:`Scorer.score_rows` (or :meth:`Scorer.score` for one row). Every row gets a flat dict of
scalars, ready for metrics.tsv and the report; bad audio (unreadable, NaN, silent, clipped, too
short) yields a row with ``verdict == "fail"`` and the reasons, never an exception.

Config (``scoring`` section; every key optional)::

    asr: pocketsphinx            # or whisper, none, or {en: whisper, zh: whisper, default: ...}
    whisper_dir: /models/whisper-large-v3   # or {en: ..., zh: ...}
    whisper_dtype: float32       # float16 / bfloat16 on a GPU
    whisper_batch_size: 8
    language: auto               # en / zh / auto (CJK characters -> zh)
    similarity: resemblyzer      # or campplus, or none
    checkpoints: /models/IndexTTS-2   # checkpoint set for similarity: campplus
    device: cpu
    thresholds: {max_wer: 0.5, max_cer: 0.5, min_similarity: null, min_duration_s: 0.3,
                 max_duration_s: null, min_rms_dbfs: -50, max_clip_fraction: 0.001}
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tts.scoring.asr import ASR_SAMPLE_RATE, ASRBackend, asr_name_for, make_asr, whisper_dir_for
from tts.scoring.metrics import (
    Thresholds,
    audio_problems,
    audio_stats,
    detect_language,
    error_rates,
    normalize_for_scoring,
    verdict,
)
from tts.scoring.similarity import (
    DEFAULT_MIN_SIMILARITY,
    SpeakerEncoder,
    cosine_similarity,
    make_encoder,
    similarity_name,
)

__all__ = [
    "CONFIG_KEYS",
    "ScoreRequest",
    "Scorer",
    "Thresholds",
    "error_rates",
    "normalize_for_scoring",
    "read_audio",
    "score_row",
    "verdict",
]

CONFIG_KEYS = (
    "asr",
    "whisper_dir",
    "whisper_dtype",
    "whisper_batch_size",
    "language",
    "similarity",
    "checkpoints",
    "device",
    "thresholds",
)


class AudioReadError(ValueError):
    """A file that cannot be decoded as audio."""


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode a file to mono float32 at its own rate (channels averaged). No value checks."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioReadError(f"{path}: no such file")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile's errors are RuntimeError/LibsndfileError/TypeError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise AudioReadError(f"{path}: not a readable audio file: {first}") from None
    return data.mean(axis=1).astype(np.float32), int(sr)


def to_16k(wave: np.ndarray, sr: int) -> np.ndarray:
    """Resample to the 16 kHz that every ASR and similarity backend takes (soxr HQ)."""
    import soxr

    if sr == ASR_SAMPLE_RATE:
        return np.asarray(wave, dtype=np.float32)
    return soxr.resample(wave, sr, ASR_SAMPLE_RATE, quality="HQ").astype(np.float32)


@dataclass
class ScoreRequest:
    """One row to verify: generated audio, the text it should say, optionally the speaker prompt."""

    audio: str | os.PathLike
    text: str
    speaker: str | os.PathLike | None = None
    id: str | None = None
    language: str | None = None  # None: scoring.language, else detected from the text


def _round(x: float | None, digits: int = 4) -> float | None:
    """Rounded for the report; ``None`` for a missing or non-finite value (plain JSON)."""
    if x is None or not math.isfinite(x):
        return None
    return round(x, digits)


class Scorer:
    """Scores rows with the backends the ``scoring`` config names; models load on first use.

    Config mistakes (unknown keys or backends, Whisper without a model directory, CAMPPlus
    without a checkpoint set) raise ``ValueError`` here, before any row is scored.
    """

    def __init__(self, config: dict | None = None) -> None:
        cfg = dict(config or {})
        unknown = sorted(set(cfg) - set(CONFIG_KEYS))
        if unknown:
            raise ValueError(f"scoring: unknown key(s) {unknown}; known: {list(CONFIG_KEYS)}")
        self.cfg = cfg
        self.thresholds = Thresholds.from_config(cfg.get("thresholds"))
        lang = str(cfg.get("language") or "auto")
        if lang not in ("auto", "en", "zh"):
            raise ValueError(f"scoring.language: {lang!r}; choose en, zh or auto")
        self.language = None if lang == "auto" else lang
        for language in ("en", "zh"):
            if asr_name_for(cfg, language) == "whisper":
                d = Path(whisper_dir_for(cfg, language))
                if not (d / "config.json").is_file():
                    raise ValueError(
                        f"scoring.whisper_dir: {d} holds no Whisper model (config.json missing)"
                    )
        self.similarity_backend = similarity_name(cfg)
        if self.similarity_backend == "campplus":
            ckpt = cfg.get("checkpoints")
            if not ckpt or not (Path(ckpt) / "config.yaml").is_file():
                raise ValueError(
                    f"scoring.checkpoints: {ckpt!r} is not a checkpoint set (config.yaml missing); "
                    "similarity: campplus needs one"
                )
        self._asr: dict[str, ASRBackend] = {}
        self._encoder: SpeakerEncoder | None = None
        self._speaker_cache: dict[str, object] = {}

    # -- backends -----------------------------------------------------------------------------

    def asr(self, language: str) -> ASRBackend:
        """The ASR backend for ``language`` (built once, shared by the languages that name it)."""
        name = asr_name_for(self.cfg, language)
        key = name if name == "pocketsphinx" else f"{name}:{whisper_dir_for(self.cfg, language)}"
        if key not in self._asr:
            self._asr[key] = make_asr(name, self.cfg, language)
        return self._asr[key]

    def encoder(self) -> SpeakerEncoder | None:
        if self.similarity_backend is None:
            return None
        if self._encoder is None:
            self._encoder = make_encoder(self.similarity_backend, self.cfg)
        return self._encoder

    def min_similarity(self) -> float | None:
        if self.thresholds.min_similarity is not None:
            return self.thresholds.min_similarity
        return DEFAULT_MIN_SIMILARITY.get(self.similarity_backend or "")

    def speaker_embedding(self, path: str | os.PathLike):
        """Embedding of a speaker prompt, cached per file (prompts repeat across rows)."""
        key = str(Path(path).resolve())
        if key not in self._speaker_cache:
            wave, sr = read_audio(path)
            stats = audio_stats(wave, sr)
            if stats["non_finite"] or stats["peak"] is None or stats["peak"] < 1e-4:
                raise ValueError(f"{path}: speaker prompt is silent, empty or has NaN/Inf samples")
            self._speaker_cache[key] = self.encoder().embed(to_16k(wave, sr))
        return self._speaker_cache[key]

    # -- scoring ------------------------------------------------------------------------------

    def score(
        self,
        audio: str | os.PathLike,
        text: str,
        speaker: str | os.PathLike | None = None,
        language: str | None = None,
        id: str | None = None,
    ) -> dict:
        """Score one row; see :meth:`score_rows`."""
        return self.score_rows([ScoreRequest(audio, text, speaker, id, language)])[0]

    def score_rows(self, rows: list[ScoreRequest]) -> list[dict]:
        """Score rows (ASR batched per language). One flat dict per row, in order:

        ``id, audio, text, language, transcript, wer, cer, asr, similarity, similarity_backend,
        duration_s, rms_dbfs, clip_fraction, verdict ("pass"/"fail"/"unchecked"), reasons``
        (``"; "``-joined) - rates are fractions (0.05 = 5 %), ``None`` where not measured.
        """
        results: list[dict] = []
        waves: list[np.ndarray | None] = []
        for row in rows:
            language = row.language or self.language or detect_language(row.text)
            res = {
                "id": row.id,
                "audio": str(row.audio),
                "text": row.text,
                "language": language,
                "transcript": None,
                "wer": None,
                "cer": None,
                "asr": None,
                "similarity": None,
                "similarity_backend": None,
                "duration_s": None,
                "rms_dbfs": None,
                "clip_fraction": None,
                "audio_problems": [],
                "errors": [],
            }
            wave16 = None
            try:
                wave, sr = read_audio(row.audio)
                stats = audio_stats(wave, sr)
                res["duration_s"] = _round(stats["duration_s"])
                res["rms_dbfs"] = _round(stats["rms_dbfs"], 2)
                res["clip_fraction"] = _round(stats["clip_fraction"], 6)
                res["audio_problems"] = audio_problems(stats, self.thresholds)
                unusable = stats["non_finite"] or stats["peak"] is None or stats["peak"] < 1e-4
                if not unusable:
                    wave16 = to_16k(wave, sr)
            except AudioReadError as exc:
                res["audio_problems"] = [str(exc)]
            results.append(res)
            waves.append(wave16)

        self._transcribe(results, waves)
        self._similarity(results, waves, rows)
        for res in results:
            v = verdict(res, self.thresholds, self.min_similarity())
            res["verdict"] = v["verdict"]
            res["reasons"] = "; ".join(v["reasons"])
            del res["audio_problems"], res["errors"]
        return results

    def _transcribe(self, results: list[dict], waves: list[np.ndarray | None]) -> None:
        by_lang: dict[str, list[int]] = {}
        for i, (res, w) in enumerate(zip(results, waves, strict=True)):
            if w is not None:
                by_lang.setdefault(res["language"], []).append(i)
        for language, idx in by_lang.items():
            if asr_name_for(self.cfg, language) == "none":
                for i in idx:
                    results[i]["asr"] = "none"
                continue
            try:
                backend = self.asr(language)
            except Exception as exc:
                for i in idx:
                    results[i]["errors"].append(f"ASR unavailable: {exc}")
                continue
            if not backend.supports(language):
                for i in idx:
                    results[i]["asr"] = backend.name
                    results[i]["errors"].append(
                        f"ASR {backend.name} does not transcribe {language!r} (set scoring.asr)"
                    )
                continue
            try:
                texts = backend.transcribe([waves[i] for i in idx], language)
            except Exception:  # one bad clip must not sink the batch: retry one at a time
                texts = []
                for i in idx:
                    try:
                        texts.append(backend.transcribe([waves[i]], language)[0])
                    except Exception as exc:
                        texts.append(None)
                        results[i]["errors"].append(f"ASR failed: {type(exc).__name__}: {exc}")
            for i, text in zip(idx, texts, strict=True):
                res = results[i]
                res["asr"] = backend.name
                if text is None:
                    continue
                res["transcript"] = text
                rates = error_rates(res["text"], text, language)
                res["wer"], res["cer"] = _round(rates.wer), _round(rates.cer)
                if rates.note:
                    res["errors"].append(rates.note)

    def _similarity(
        self, results: list[dict], waves: list[np.ndarray | None], rows: list[ScoreRequest]
    ) -> None:
        if self.similarity_backend is None:
            return
        for res, wave, row in zip(results, waves, rows, strict=True):
            if row.speaker is None or wave is None:
                continue
            try:
                enc = self.encoder()
                res["similarity_backend"] = enc.name
                spk = self.speaker_embedding(row.speaker)
                sim = cosine_similarity(spk, enc.embed(wave))
                if math.isfinite(sim):
                    res["similarity"] = _round(sim)
                else:  # an all-zero embedding: nothing voice-like in one of the two files
                    res["errors"].append(
                        "similarity undefined (an embedding is zero or not finite)"
                    )
            except Exception as exc:
                res["errors"].append(f"similarity failed: {type(exc).__name__}: {exc}")


def score_row(
    audio: str | os.PathLike,
    text: str,
    speaker: str | os.PathLike | None = None,
    config: dict | None = None,
    scorer: Scorer | None = None,
) -> dict:
    """Score one generated file (convenience around :class:`Scorer`; pass ``scorer`` to reuse
    loaded models across calls)."""
    return (scorer or Scorer(config)).score(audio, text, speaker)
