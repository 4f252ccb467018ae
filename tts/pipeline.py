"""End-to-end IndexTTS2 inference, in stages that the workflow can cache as files.

Stages (each a method of :class:`Engine`, each batched over rows):

1. :meth:`Engine.speaker_conditioning` - one speaker prompt file -> features (cached per file).
2. :meth:`Engine.emotion_conditioning` - one request's emotion settings -> emotion vector.
3. :meth:`Engine.semantic_tokens` - text + conditioning -> semantic codes and GPT latents (GPU).
4. :meth:`Engine.render` - codes + latents + speaker features -> 22.05 kHz waveform (GPU).

Every stage returns one :class:`RowResult` per input row: a failing row (bad text, NaN in a
tensor, out of memory after retries) never takes the other rows of its batch down with it.
Intermediate results are plain ``dict[str, torch.Tensor]`` saved with safetensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

SAMPLE_RATE = 22050

# Official generation defaults (infer_v2); the workflow config may override any of them.
DEFAULT_SAMPLING: dict[str, float | int | bool] = {
    "do_sample": True,
    "top_k": 30,
    "top_p": 0.8,
    "temperature": 0.8,
    "num_beams": 3,
    "repetition_penalty": 10.0,
    "length_penalty": 0.0,
    "max_mel_tokens": 1500,
    "max_text_tokens_per_segment": 120,
    "interval_silence_ms": 200,
}


@dataclass
class SynthesisRequest:
    """One row of work: what to say, in which voice, with which emotion and sampling."""

    id: str
    text: str
    speaker: Path
    emo_audio: Path | None = None
    emo_alpha: float = 1.0
    emo_vector: list[float] | None = None
    emo_text: str | None = None  # use the Qwen emotion model on this text ("" = the row's text)
    use_random: bool = False
    seed: int | None = None
    sampling: dict = field(default_factory=dict)  # overrides of DEFAULT_SAMPLING

    def sampling_options(self) -> dict:
        return {**DEFAULT_SAMPLING, **self.sampling}


@dataclass
class RowResult:
    """The outcome of one row in one stage: ``value`` when ok, else ``error`` says why."""

    id: str
    value: dict[str, torch.Tensor] | None = None
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per sub-stage

    @property
    def ok(self) -> bool:
        return self.error is None
