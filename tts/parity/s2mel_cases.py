"""Parity handlers for the s2mel fixture cases (gpt_layer, length regulator, DiT, CFM, chain).

Every shape, key and scalar comes from the case dict; models are loaded from the set's own
``s2mel.pth`` through the strict loader.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import torch

from tts.checkpoints import CheckpointSet
from tts.components import load_component
from tts.models.s2mel import S2Mel, target_lengths
from tts.parity import Comparison, FixtureSet, RunOptions, register

_SHAPE_EXPR = re.compile(r"^\[\s*([\w.]+)\.shape\[(-?\d+)\]\s*\]$")
_KEY_LIST = re.compile(r"^\[\s*([\w.]+)\s*\]$")


@lru_cache(maxsize=4)
def _load(root: str, device: str, dtype: torch.dtype) -> S2Mel:
    model, _ = load_component("s2mel", CheckpointSet.open(Path(root)))
    return model.to(device=device, dtype=dtype).eval()


def _model(fs: FixtureSet, opts: RunOptions) -> S2Mel:
    return _load(str(fs.root.resolve()), opts.device, opts.dtype)


def _to(t: torch.Tensor, opts: RunOptions) -> torch.Tensor:
    if t.dtype.is_floating_point:
        return t.to(device=opts.device, dtype=opts.dtype)
    return t.to(device=opts.device)


def _value(fs: FixtureSet, spec: str | int | list, opts: RunOptions) -> torch.Tensor:
    """A golden key, ``[key.shape[i]]`` (a length built from a golden tensor) or ``[key]``."""
    if isinstance(spec, int):
        return torch.tensor([spec], device=opts.device)
    if isinstance(spec, list):
        return torch.tensor(spec, device=opts.device)
    spec = spec.strip()
    m = _SHAPE_EXPR.match(spec)
    if m:
        return torch.tensor([fs.tensor(m.group(1)).shape[int(m.group(2))]], device=opts.device)
    m = _KEY_LIST.match(spec)
    if m and m.group(1) in fs.golden:
        return _to(fs.tensor(m.group(1)), opts).reshape(-1)
    return _to(fs.tensor(spec.split()[0]), opts)


def _inp(fs: FixtureSet, case: dict, name: str, opts: RunOptions) -> torch.Tensor:
    return _value(fs, case["inputs"][name], opts)


def _arg(fs: FixtureSet, case: dict, name: str, opts: RunOptions) -> torch.Tensor:
    spec = case.get("inputs", {}).get(name, case.get("args", {}).get(name))
    if spec is None:
        raise KeyError(f"{fs.name}/{case['id']}: neither inputs nor args give {name!r}")
    return _value(fs, spec, opts)


def _compare_outputs(
    fs: FixtureSet, case: dict, actual: dict[str, torch.Tensor], chain: bool = False
) -> list[Comparison]:
    """Compare every output the case lists; an output this port does not produce is an error."""
    out = []
    for name, key in case["outputs"].items():
        if name not in actual:
            raise KeyError(f"{fs.name}/{case['id']}: handler produced no output {name!r}")
        out.append(fs.compare(case, key, actual[name], chain=chain))
    return out


@register("gpt_layer")
def gpt_layer_case(fs: FixtureSet, case: dict, opts: RunOptions) -> list[Comparison]:
    model = _model(fs, opts)
    y = model.gpt_layer(_inp(fs, case, "x", opts))
    return _compare_outputs(fs, case, {"y": y})


@register("length_regulator_prompt", "length_regulator_generated")
def length_regulator_case(fs: FixtureSet, case: dict, opts: RunOptions) -> list[Comparison]:
    model = _model(fs, opts)
    x = _inp(fs, case, "x", opts)
    comparisons = []
    spec = case.get("inputs", {}).get("ylens", case.get("args", {}).get("ylens"))
    if isinstance(spec, str) and spec in fs.golden and spec in case.get("tolerance", {}):
        # The lengths are themselves an output of the chain: target_lengths(n_codes).
        ylens = target_lengths(torch.tensor([x.size(1)], device=opts.device))
        comparisons.append(fs.compare(case, spec, ylens))
    else:
        ylens = _arg(fs, case, "ylens", opts)
    taps: dict[str, torch.Tensor] = {}
    out, olens = model.length_regulator(x, ylens, taps=taps)
    actual = {"olens": olens, "content_in_proj": taps["content_in_proj"]}
    for name in case["outputs"]:
        if name not in actual:
            actual[name] = out
    return comparisons + _compare_outputs(fs, case, actual)


@register("dit_estimator_cfg_step0", "dit_estimator_masked")
def dit_case(fs: FixtureSet, case: dict, opts: RunOptions) -> list[Comparison]:
    model = _model(fs, opts)
    names = ("x", "prompt_x", "x_lens", "t", "style", "cond")
    x, prompt_x, x_lens, t, style, cond = (_inp(fs, case, n, opts) for n in names)
    taps: dict[str, torch.Tensor] = {}
    out = model.cfm.estimator(x, prompt_x, x_lens, t, style, cond, taps=taps)
    actual = {"out": out, **{f"internal.{k}": v for k, v in taps.items()}}
    return _compare_outputs(fs, case, actual)


def _run_cfm(
    fs: FixtureSet, case: dict, opts: RunOptions
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model = _model(fs, opts)
    args = case.get("args", {})
    if args.get("f0") is not None:
        raise NotImplementedError("f0 conditioning is not supported")
    mu = _inp(fs, case, "mu", opts)
    x_lens = _inp(fs, case, "x_lens", opts)
    prompt = _inp(fs, case, "prompt", opts)
    style = _inp(fs, case, "style", opts)
    noise = _inp(fs, case, "noise_z", opts)
    trace: dict[str, list[torch.Tensor]] = {}
    out = model.cfm.inference(
        mu,
        x_lens,
        prompt,
        style,
        n_timesteps=int(args["n_timesteps"]),
        temperature=float(args.get("temperature", 1.0)),
        cfg_rate=float(args["inference_cfg_rate"]),
        noise=noise,
        trace=trace,
    )
    actual = {"out": out, **{k: torch.stack(v) for k, v in trace.items()}}
    return out, actual


@register("cfm_inference_cfm25", "cfm_inference_cfm4", "cfm_inference_cfm4_nocfg")
def cfm_case(fs: FixtureSet, case: dict, opts: RunOptions) -> list[Comparison]:
    _, actual = _run_cfm(fs, case, opts)
    return _compare_outputs(fs, case, actual)


# ---------------------------------------------------------------------------------------------
# The whole s2mel chain: prompt audio + generated codes/latents -> waveform
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _aux(root: str, name: str, device: str, dtype: torch.dtype) -> torch.nn.Module:
    model, _ = load_component(name, CheckpointSet.open(Path(root)))
    if name == "bigvgan":
        model.remove_weight_norm()  # the reference vocodes with weight norm removed
    return model.to(device=device, dtype=dtype).eval()


def _set_tolerances(fs: FixtureSet, case: dict) -> dict:
    """The case with tolerances of keys it shares with the set's per-module cases merged in.

    The chain case carries tolerances only for its own ``chain.*`` keys; every other output is
    a golden of another case, whose entry (with its ``atol_chain``) applies.
    """
    merged: dict[str, dict] = {}
    for other in fs.cases:
        merged.update(other.get("tolerance", {}))
    merged.update(case.get("tolerance", {}))
    return {**case, "tolerance": merged}


def _key(spec: str) -> str:
    """Golden key of an input description such as ``'codec.vq2emb.codes (squeeze(1) = [1,T])'``."""
    return spec.strip().split()[0]


@register("s2mel_chain")
def s2mel_chain_case(fs: FixtureSet, case: dict, opts: RunOptions) -> list[Comparison]:
    from tts import audio

    root = str(fs.root.resolve())
    s2mel = _model(fs, opts)
    codec = _aux(root, "semantic_codec", opts.device, opts.dtype)
    campplus = _aux(root, "campplus", opts.device, opts.dtype)
    vocoder = _aux(root, "bigvgan", opts.device, opts.dtype)
    inputs = {_key(name): _to(fs.tensor(_key(spec)), opts) for name, spec in case["inputs"].items()}
    hard = fs.meta.get("hard_coded", {})
    sr = int(fs.config["s2mel"]["preprocess_params"]["sr"])
    sr_w2v = int(hard.get("sr_w2v", 16000))

    wave_22k = inputs["wave_22k"]
    got: dict[str, torch.Tensor] = {}
    # Prompt side
    got["wave_16k"] = wave_16k = audio.resample(wave_22k, sr, sr_w2v)
    got["ref_mel"] = ref_mel = audio.mel_spectrogram(
        wave_22k, **audio.mel_kwargs(fs.config["s2mel"])
    )
    _, got["S_ref"] = codec.quantize(inputs["prompt_features"])
    got["fbank_cmn"] = fbank_cmn = audio.campplus_features(wave_16k)
    got["style"] = style = campplus(fbank_cmn.unsqueeze(0))
    ylens = torch.tensor([ref_mel.size(2)], device=opts.device)
    got["prompt_condition"] = prompt_condition = s2mel.regulate(got["S_ref"], ylens)
    # Generated side
    codes = inputs["codes"]
    codes = codes.squeeze(1) if codes.dim() == 3 else codes  # [1, T]
    got["latent"] = s2mel.gpt_layer(inputs["gpt_latent"])
    got["vq2emb"] = codec.quantizer.vq2emb(codes.unsqueeze(1))  # [1, 1024, T], B=1 call
    got["S_infer"] = s_infer = got["vq2emb"].transpose(1, 2) + got["latent"]
    code_lens = torch.tensor([codes.size(-1)], device=opts.device)
    got["target_lengths"] = lens = target_lengths(code_lens)
    got["cond"] = cond = s2mel.regulate(s_infer, lens)
    got["cat_condition"] = cat = torch.cat([prompt_condition, cond], dim=1)
    x_lens = torch.tensor([cat.size(1)], device=opts.device)
    got["vc_full"] = vc = s2mel.cfm.inference(
        cat,
        x_lens,
        ref_mel,
        style,
        n_timesteps=int(hard.get("cfm_steps", 25)),
        cfg_rate=float(hard.get("cfg_rate", 0.7)),
        noise=inputs["noise"],
    )
    got["vc_target"] = vc_target = vc[:, :, ref_mel.size(-1) :]
    got["wav"] = wav = vocoder(vc_target).squeeze().unsqueeze(0)
    got["wav_int16_scale"] = torch.clamp(32767 * wav, -32767.0, 32767.0)

    full = _set_tolerances(fs, case)
    return _compare_outputs(fs, full, got, chain=True)
