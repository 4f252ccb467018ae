"""Speech recognisers behind one interface, for intelligibility scoring.

Two backends:

* ``pocketsphinx`` - the embedded default. pocketsphinx 5.x ships a US-English acoustic model,
  a 3-gram language model and the CMU dictionary inside its wheel, so it runs with no download.
  English only; far weaker than Whisper (see docs/scoring.md for measured error rates).
* ``whisper`` - Whisper through transformers from a local model directory (``scoring.whisper_dir``;
  seed-tts-eval and the IndexTTS2 paper use whisper-large-v3 for English). Loaded with
  ``local_files_only=True``: nothing is fetched from a hub.

Every backend takes mono float32 waveforms at 16 kHz and returns one transcript per waveform.
:func:`make_asr` builds one from the ``scoring`` config section.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

ASR_SAMPLE_RATE = 16000


class ASRBackend(Protocol):
    """A speech recogniser: ``name`` goes into every report row it produced."""

    name: str

    def supports(self, language: str) -> bool:
        """Whether this backend can transcribe ``language`` (``"en"``, ``"zh"``, ...)."""
        ...

    def transcribe(self, waves: list[np.ndarray], language: str) -> list[str]:
        """Transcripts of 16 kHz mono float32 waveforms, in order."""
        ...


def _pcm16(wave: np.ndarray) -> bytes:
    return (
        (np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
    )


class PocketSphinxASR:
    """pocketsphinx 5.x with the US-English model bundled in its wheel.

    Cepstral mean normalisation is per utterance (``cmn=batch``), so a transcript does not depend
    on which rows were decoded before it.
    """

    def __init__(self) -> None:
        import pocketsphinx

        self._decoder = pocketsphinx.Decoder(
            samprate=ASR_SAMPLE_RATE, cmn="batch", loglevel="FATAL"
        )
        version = _dist_version("pocketsphinx")
        self.name = f"pocketsphinx-{version}/en-us" if version else "pocketsphinx/en-us"

    def supports(self, language: str) -> bool:
        return language == "en"

    def transcribe(self, waves: list[np.ndarray], language: str = "en") -> list[str]:
        if language != "en":
            raise ValueError(f"{self.name} transcribes English only, not {language!r}")
        out = []
        for wave in waves:
            dec = self._decoder
            dec.start_utt()
            dec.process_raw(_pcm16(wave), full_utt=True)
            dec.end_utt()
            hyp = dec.hyp()
            out.append(hyp.hypstr.strip() if hyp is not None else "")
        return out


class WhisperASR:
    """Whisper (any size) from a local transformers model directory.

    Clips up to 30 s are decoded in batches; longer ones go through transformers' sequential
    long-form decoding one at a time. ``language`` is passed to ``generate`` (no detection).
    """

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 8,
    ) -> None:
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"{model_dir}: no Whisper model here (expected config.json, model weights and "
                "tokenizer files, e.g. a local copy of openai/whisper-large-v3)"
            )
        self.processor = WhisperProcessor.from_pretrained(model_dir, local_files_only=True)
        self.model = WhisperForConditionalGeneration.from_pretrained(
            model_dir, local_files_only=True, dtype=getattr(torch, dtype)
        )
        self.model.to(device).eval()
        self.device, self.dtype = device, getattr(torch, dtype)
        self.batch_size = batch_size
        self.name = f"whisper:{model_dir.name}"

    def supports(self, language: str) -> bool:
        return True

    def _generate(self, waves: list[np.ndarray], language: str, long_form: bool) -> list[str]:
        import torch

        extra = {"truncation": False, "padding": "longest", "return_attention_mask": True}
        feats = self.processor.feature_extractor(
            [np.asarray(w, dtype=np.float32) for w in waves],
            sampling_rate=ASR_SAMPLE_RATE,
            return_tensors="pt",
            **(extra if long_form else {}),
        )
        kwargs = {"input_features": feats.input_features.to(self.device, self.dtype)}
        if long_form:
            kwargs["attention_mask"] = feats.attention_mask.to(self.device)
        with torch.inference_mode():
            ids = self.model.generate(**kwargs, language=language, task="transcribe")
        if not torch.is_tensor(ids):  # long-form generate may return a dict
            ids = ids["sequences"]
        return [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]

    def transcribe(self, waves: list[np.ndarray], language: str = "en") -> list[str]:
        limit = 30 * ASR_SAMPLE_RATE
        out: list[str | None] = [None] * len(waves)
        short = [i for i, w in enumerate(waves) if len(w) <= limit]
        for start in range(0, len(short), self.batch_size):
            idx = short[start : start + self.batch_size]
            for i, text in zip(
                idx, self._generate([waves[i] for i in idx], language, False), strict=True
            ):
                out[i] = text
        for i, w in enumerate(waves):
            if out[i] is None:
                out[i] = self._generate([w], language, True)[0]
        return [t or "" for t in out]


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


ASR_BACKENDS = ("pocketsphinx", "whisper", "none")  # none: no intelligibility scores


@lru_cache(maxsize=1)
def _pocketsphinx() -> PocketSphinxASR:
    """One decoder per process (loading the model takes seconds; decoding keeps no state)."""
    return PocketSphinxASR()


def asr_name_for(cfg: dict, language: str) -> str:
    """The backend that the ``scoring`` config names for ``language``.

    ``scoring.asr`` is a backend name for every language or a mapping ``{language: name}``
    (``default`` key as fallback); the built-in default is ``pocketsphinx``; ``none`` turns
    intelligibility scoring off.
    """
    choice = cfg.get("asr") or "pocketsphinx"
    if isinstance(choice, dict):
        choice = choice.get(language) or choice.get("default") or "pocketsphinx"
    choice = str(choice)
    if choice not in ASR_BACKENDS:
        raise ValueError(
            f"scoring.asr: unknown backend {choice!r}; choose from {list(ASR_BACKENDS)}"
        )
    return choice


def whisper_dir_for(cfg: dict, language: str) -> str:
    """``scoring.whisper_dir``: one directory, or a mapping ``{language: dir}`` (``default`` key)."""
    d = cfg.get("whisper_dir")
    if isinstance(d, dict):
        d = d.get(language) or d.get("default")
    if not d:
        raise ValueError(
            f"scoring.asr is 'whisper' for {language!r} but scoring.whisper_dir names no model "
            "directory (a local copy of e.g. openai/whisper-large-v3)"
        )
    return str(d)


def make_asr(name: str, cfg: dict | None = None, language: str = "en") -> ASRBackend:
    """Build backend ``name`` with the settings of the ``scoring`` config section ``cfg``."""
    cfg = cfg or {}
    if name == "pocketsphinx":
        return _pocketsphinx()
    if name == "whisper":
        return WhisperASR(
            whisper_dir_for(cfg, language),
            device=str(cfg.get("device", "cpu")),
            dtype=str(cfg.get("whisper_dtype", "float32")),
            batch_size=int(cfg.get("whisper_batch_size", 8)),
        )
    raise ValueError(f"unknown ASR backend {name!r}; choose from {list(ASR_BACKENDS[:-1])}")
