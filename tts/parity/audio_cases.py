"""Parity handlers for the audio front end and the CAMPPlus speaker encoder.

Inputs, output keys, call arguments and tolerances come from each case; every output a case
lists must be produced here (an unknown output name is an error, never skipped). CAMPPlus is
loaded from the set's own file through the strict loader.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import torch

from tts import audio
from tts.checkpoints import CheckpointSet
from tts.parity import Comparison, FixtureSet, RunOptions, register


def _base(name: str) -> str:
    """Names may carry a description: 'head_out(FCM)' -> 'head_out', 'x (note)' -> 'x'."""
    return re.split(r"[ (]", name.strip(), maxsplit=1)[0]


def _input(fs: FixtureSet, case: dict, name: str, opts: RunOptions) -> torch.Tensor:
    return fs.tensor(_base(case["inputs"][name])).to(opts.device, opts.dtype)


def _compare_all(fs: FixtureSet, case: dict, produced: dict[str, torch.Tensor]) -> list[Comparison]:
    out = []
    for name, key in case["outputs"].items():
        base = _base(name)
        if base not in produced:
            raise KeyError(f"{fs.name}/{case['id']}: no handler output for case output {name!r}")
        out.append(fs.compare(case, key, produced[base]))
    return out


@functools.lru_cache(maxsize=8)
def _campplus(root: Path, device: str, dtype: torch.dtype):
    from tts.components import load_component

    model, _ = load_component("campplus", CheckpointSet.open(root))
    return model.to(device=device, dtype=dtype).eval()


@register("resample_22k_to_16k")
def resample_22k_to_16k(fs: FixtureSet, case: dict, opts: RunOptions) -> list[Comparison]:
    wave = _input(fs, case, "wave", opts)
    return _compare_all(fs, case, {"wave_16k": audio.resample(wave, 22050, 16000)})


@register("mel_spectrogram")
def mel_spectrogram(fs: FixtureSet, case: dict, opts: RunOptions) -> list[Comparison]:
    y = _input(fs, case, "y", opts)
    mel = audio.mel_spectrogram(y, **case.get("args", {}))
    return _compare_all(fs, case, {"mel": mel})


@register("kaldi_fbank")
def kaldi_fbank(fs: FixtureSet, case: dict, opts: RunOptions) -> list[Comparison]:
    wave = _input(fs, case, "waveform", opts)
    fbank = audio.kaldi_fbank(wave)
    cmn = audio.campplus_features(wave)
    return _compare_all(fs, case, {"fbank": fbank, "fbank_cmn": cmn})


@register("campplus", "campplus_long")
def campplus(fs: FixtureSet, case: dict, opts: RunOptions) -> list[Comparison]:
    model = _campplus(fs.root, opts.device, opts.dtype)
    x = _input(fs, case, "x", opts)
    if x.dim() == 2:  # stored as [T, 80]; the reference call adds the batch axis
        x = x.unsqueeze(0)
    head_out = model.head(x.transpose(1, 2))
    style = model(x)
    return _compare_all(fs, case, {"style": style, "head_out": head_out})
