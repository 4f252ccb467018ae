"""The GPT's prompt encoders through CUDA graphs, one per length bucket.

A prompt's w2v-bert features become the GPT's speaker latent (:meth:`UnifiedVoice.
get_conditioning`: a 6-block conformer and a perceiver) and, with the emotion prompt's, its
emotion vector (:meth:`EmotionPath.get_emo_conditioning`: another conformer and perceiver).
Each is ~300 small kernels for ~1.5 ms of GPU work at batch 1, so on a GPU its time is the
host's launching them: ``tts bench``'s emotion conditioning took 12.4 ms (run EI of
docs/benchmarks.md) for 3.4 ms of kernels.

Here each runs through :class:`~tts.fast.padded_graphs.PaddedGraphs`: the features are
zero-padded to a multiple of :data:`BUCKET` frames and the encoder is told their real length
(:meth:`ConformerEncoder.forward`'s ``frames``), so one graph serves every prompt of its
bucket and the kept frames get the unpadded input's values up to float rounding; a key's
graph is captured at its second call (a process that conditions one prompt of a length
captures nothing). The outputs (32 latents, one emotion vector) do not depend on the length.
The Engine installs the runners on CUDA; :func:`tts.fast.patched` routes the model methods
through them, so the parity fixtures check them on CUDA.

The speaker conditioning's CAMPPlus (the style vector from the prompt's Kaldi filterbanks) is
the same case, larger: ~950 small kernels (a 2-D ResNet head, 52 densely connected
context-aware layers). :func:`campplus_runner` runs it the same way, :data:`CAMPPLUS_BUCKET`
filterbank frames per bucket, with its ``frames`` argument (zeros past the real frames for
every convolution, the means over the real frames only); off CUDA it is the plain module.
"""

from __future__ import annotations

import torch
from torch import nn

from tts.fast.padded_graphs import PaddedGraphs, registered

BUCKET = 32  # w2v-bert frames (50 a second) per length bucket: 0.64 s of prompt
MAX_POSITIONS = 4096  # rows x bucketed frames; a prompt is at most 15 s (750 frames)
MAX_GRAPHS = 8  # graphs kept per encoder, least recently used dropped first
# Filterbank frames (100 a second) per CAMPPlus bucket: 1.28 s of prompt, 12 buckets up to the
# 15 s cut, so prompts of different lengths share graphs; the padding costs little GPU work.
CAMPPLUS_BUCKET = 128
CAMPPLUS_MAX_POSITIONS = 4096  # rows x bucketed frames; a prompt is at most 15 s (1500)
# Captures and replays by every runner (tests check that a pass really ran from a graph).
COUNTS = {"captures": 0, "replays": 0}


def speaker_runner(model: nn.Module) -> PaddedGraphs:
    """The runner of ``model``'s speaker encoders (a :class:`~tts.models.gpt.UnifiedVoice`)."""
    return _runner(model, "speaker", ("conditioning", "perceiver"))


def emotion_runner(model: nn.Module) -> PaddedGraphs:
    """The runner of ``model``'s emotion encoders (a model with the GPT's emotion path)."""
    return _runner(model, "emotion", ("emo_conditioning", "emo_perceiver"))


def _runner(model: nn.Module, name: str, prefixes: tuple[str, ...]) -> PaddedGraphs:
    """One runner per (model, encoder) (:func:`~tts.fast.padded_graphs.registered`). It holds
    the two modules, so a deep copy of a model with it installed runs the copy's."""
    from tts.models.gpt import encode_prompt

    return registered(
        model,
        name,
        [getattr(model, f"{prefix}_encoder") for prefix in prefixes],
        lambda modules: PaddedGraphs(
            encode_prompt,
            modules,
            name=f"GPT {name} conditioning CUDA graph capture",
            bucket=BUCKET,
            max_graphs=MAX_GRAPHS,
            max_positions=MAX_POSITIONS,
            trim=False,
            counts=COUNTS,
        ),
    )


def campplus_runner(model: nn.Module) -> PaddedGraphs:
    """The runner of a :class:`~tts.models.campplus.CAMPPlus`: ``runner(fbank)`` for
    ``fbank`` [B, T, 80] gives ``model(fbank)``. One per model, made on first use and kept as
    its ``graph_runner`` attribute (not in its state dict; a registry keyed by the model would
    keep the model alive through the runner, which holds it)."""
    runner = getattr(model, "graph_runner", None)
    if runner is None:
        runner = model.graph_runner = PaddedGraphs(
            _campplus_padded,
            model,
            name="CAMPPlus CUDA graph capture",
            bucket=CAMPPLUS_BUCKET,
            max_graphs=MAX_GRAPHS,
            max_positions=CAMPPLUS_MAX_POSITIONS,
            trim=False,
            counts=COUNTS,
            unpadded=_campplus_plain,
        )
    return runner


def _campplus_padded(model: nn.Module, fbank: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """CAMPPlus on filterbanks zero-padded past ``frames`` [B] (its plain forward, which
    :func:`tts.fast.patched` may have replaced)."""
    from tts.models.campplus import PLAIN_FORWARD

    return PLAIN_FORWARD(model, fbank, frames)


def _campplus_plain(model: nn.Module, fbank: torch.Tensor) -> torch.Tensor:
    from tts.models.campplus import PLAIN_FORWARD

    return PLAIN_FORWARD(model, fbank)


def graphed_campplus_forward(
    model: nn.Module, x: torch.Tensor, frames: torch.Tensor | None = None
) -> torch.Tensor:
    """A replacement for ``CAMPPlus.forward`` (:func:`tts.fast.patched`): already padded
    input (``frames`` given) runs as it is."""
    if frames is not None:
        return _campplus_padded(model, x, frames)
    return campplus_runner(model)(x)


def install(model: nn.Module) -> None:
    """Make ``model``'s get_conditioning and get_emo_conditioning (those it has) run through
    their runners (what the Engine does on CUDA)."""
    if hasattr(model, "conditioning_encoder"):
        model.speaker_encoder_runner = speaker_runner(model)
    if hasattr(model, "emo_conditioning_encoder"):
        model.emotion_encoder_runner = emotion_runner(model)


def graphed_get_conditioning(
    model: nn.Module, speech_conditioning_input: torch.Tensor, cond_mel_lengths=None
) -> torch.Tensor:
    """A replacement for ``UnifiedVoice.get_conditioning`` (:func:`tts.fast.patched`)."""
    from tts.models.gpt import _default_lengths

    x = speech_conditioning_input.transpose(1, 2)
    return speaker_runner(model)(x, _default_lengths(cond_mel_lengths, x))


def graphed_get_emo_conditioning(
    model: nn.Module, speech_conditioning_input: torch.Tensor, cond_mel_lengths=None
) -> torch.Tensor:
    """A replacement for ``EmotionPath.get_emo_conditioning`` (:func:`tts.fast.patched`)."""
    from tts.models.gpt import _default_lengths

    x = speech_conditioning_input.transpose(1, 2)
    return emotion_runner(model)(x, _default_lengths(cond_mel_lengths, x)).squeeze(1)
