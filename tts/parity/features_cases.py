"""Parity handlers for the semantic side: MaskGCT codec and w2v-bert-2.0 features.

Every output a case lists is compared; an output name this module does not know is an error
(so a new fixture field cannot be skipped silently). Inputs, output keys and tolerances come
from the case; models are loaded from the set's own files through the strict loader.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import torch

from tts.checkpoints import CheckpointSet
from tts.parity import Comparison, FixtureSet, RunOptions, register


def _base(name: str) -> str:
    """Output names may carry a description: 'quantized (S_ref)' -> 'quantized'."""
    return name.split(" ", 1)[0]


def _unknown(fs: FixtureSet, case: dict, name: str) -> KeyError:
    return KeyError(f"{fs.name}/{case['id']}: no handler output for case output {name!r}")


@functools.lru_cache(maxsize=8)
def _codec(root: Path, device: str, dtype: torch.dtype):
    from tts.components import load_component

    model, _ = load_component("semantic_codec", CheckpointSet.open(root))
    return model.to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=8)
def _semantic(root: Path, device: str, dtype: torch.dtype):
    from tts.models.w2v_bert import SemanticFeatures

    return SemanticFeatures.from_checkpoints(CheckpointSet.open(root), device=device, dtype=dtype)


@register("semantic_codec_quantize")
def semantic_codec_quantize(fs: FixtureSet, case: dict, opts: RunOptions) -> list[Comparison]:
    codec = _codec(fs.root, opts.device, opts.dtype)
    x = fs.tensor(case["inputs"]["x"]).to(opts.device, opts.dtype)
    codes, quantized, enc, z_e = codec.quantize_detailed(x)
    # The public entry point must agree with the detailed one.
    codes_pub, quantized_pub = codec.quantize(x)
    if not (torch.equal(codes_pub, codes) and torch.equal(quantized_pub, quantized)):
        raise AssertionError("RepCodec.quantize and quantize_detailed disagree")
    produced = {"codes": codes, "quantized": quantized, "encoder_out": enc, "z_e": z_e}
    out = []
    for name, key in case["outputs"].items():
        if _base(name) not in produced:
            raise _unknown(fs, case, name)
        out.append(fs.compare(case, key, produced[_base(name)]))
    return out


@register("semantic_codec_vq2emb")
def semantic_codec_vq2emb(fs: FixtureSet, case: dict, opts: RunOptions) -> list[Comparison]:
    codec = _codec(fs.root, opts.device, opts.dtype)
    vq = fs.tensor(case["inputs"]["vq"]).to(opts.device)
    if vq.dim() == 2:  # stored as codes [1, T]: the reference call adds the quantizer axis
        vq = vq.unsqueeze(1)
    emb = codec.quantizer.vq2emb(vq)  # reference call: [1, 1, T] -> [1, hidden, T]
    batched = codec.vq2emb(vq[:, 0]).transpose(1, 2)  # our [B, T] entry point agrees
    if not torch.equal(batched, emb):
        raise AssertionError("RepCodec.vq2emb and quantizer.vq2emb disagree")
    out = []
    for name, key in case["outputs"].items():
        if _base(name) != "emb":
            raise _unknown(fs, case, name)
        out.append(fs.compare(case, key, emb))
    return out


@register("w2vbert_feature_extractor", "w2vbert_feature_extractor_even")
def w2vbert_feature_extractor(fs: FixtureSet, case: dict, opts: RunOptions) -> list[Comparison]:
    sem = _semantic(fs.root, opts.device, opts.dtype)
    feats, mask = sem.extract(fs.tensor(case["inputs"]["raw_speech"]))
    produced = {"input_features": feats, "attention_mask": mask}
    out = []
    for name, key in case["outputs"].items():
        if _base(name) not in produced:
            raise _unknown(fs, case, name)
        out.append(fs.compare(case, key, produced[_base(name)]))
    return out


_HIDDEN = re.compile(r"hidden_states_(\d+)$")


@register("w2vbert_hidden17_normalized", "w2vbert_hidden17_normalized_even")
def w2vbert_hidden17_normalized(fs: FixtureSet, case: dict, opts: RunOptions) -> list[Comparison]:
    sem = _semantic(fs.root, opts.device, opts.dtype)
    feats = fs.tensor(case["inputs"]["input_features"])
    mask = fs.tensor(case["inputs"]["attention_mask"])
    names = [_base(n) for n in case["outputs"]]
    want_all = any(_HIDDEN.match(n) for n in names)
    last, hidden_states = sem.hidden(feats, mask, output_hidden_states=want_all)
    out = []
    for name, key in case["outputs"].items():
        base = _base(name)
        if base == "feat":
            actual = sem.normalize(last)
        elif m := _HIDDEN.match(base):
            index = int(m.group(1))
            if index > sem.layer:
                raise KeyError(
                    f"{fs.name}/{case['id']}: hidden_states[{index}] is past layer {sem.layer}"
                )
            actual = hidden_states[index]
        else:
            raise _unknown(fs, case, name)
        out.append(fs.compare(case, key, actual))
    return out
