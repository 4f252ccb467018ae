"""Parity handler for the BigVGAN vocoder, in weight-norm form and after weight-norm removal.

Internal outputs are captured with forward hooks: ``conv_pre``, ``ups{i}`` (output of the i-th
transposed conv) and ``conv_post_preclamp`` (``conv_post`` before the final clamp/tanh), all
recorded on the weight-norm model as the fixtures were.
"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path

import torch

from tts.checkpoints import CheckpointSet
from tts.parity import Comparison, FixtureSet, RunOptions, register


def _base(name: str) -> str:
    return re.split(r"[ (]", name.strip(), maxsplit=1)[0]


@functools.lru_cache(maxsize=4)
def _bigvgan(root: Path, device: str, dtype: torch.dtype):
    from tts.components import load_component

    model, _ = load_component("bigvgan", CheckpointSet.open(root))
    return model.to(device=device, dtype=dtype).eval()


def _hook_targets(model: torch.nn.Module, names: list[str]) -> dict[str, torch.nn.Module]:
    targets = {}
    for name in names:
        if name == "conv_pre":
            targets[name] = model.conv_pre
        elif name == "conv_post_preclamp":
            targets[name] = model.conv_post
        elif (m := re.fullmatch(r"ups(\d+)", name)) and int(m.group(1)) < len(model.ups):
            targets[name] = model.ups[int(m.group(1))][-1]
    return targets


@register("bigvgan")
def bigvgan(fs: FixtureSet, case: dict, opts: RunOptions) -> list[Comparison]:
    model = _bigvgan(fs.root, opts.device, opts.dtype)
    mel = fs.tensor(_base(case["inputs"]["mel"])).to(opts.device, opts.dtype)
    names = [_base(n) for n in case["outputs"]]
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        module.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
        for name, module in _hook_targets(model, names).items()
    ]
    try:
        captured["wav_weight_norm"] = model(mel)
    finally:
        for h in hooks:
            h.remove()
    fused = copy.deepcopy(model).remove_weight_norm()
    captured["wav_removed_weight_norm"] = fused(mel)

    out = []
    for name, key in case["outputs"].items():
        base = _base(name)
        if base not in captured:
            raise KeyError(f"{fs.name}/{case['id']}: no handler output for case output {name!r}")
        out.append(fs.compare(case, key, captured[base]))
    return out
