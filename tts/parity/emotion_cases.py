"""Parity handlers for the emotion cases (group d of the GPT fixtures).

* ``emo_normalize_emo_vec``: the UI's vector softening, values inline in the case.
* ``emo_find_most_similar_cosine``: the row picked per emotion group for a style vector.
* ``trace_emovector`` / ``trace_emoaudio``: the reference's ``infer`` driven up to s2mel, replayed
  with our own front end (tokenizer), argument planning and emotion resolution
  (:mod:`tts.emotion`), generation and the GPT's second pass.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import torch

from tts.emotion import (
    EmotionMatrices,
    find_most_similar_cosine,
    normalize_emo_vec,
)
from tts.generation import trim_at_stop
from tts.parity import Comparison, FixtureSet, RunOptions, register


def _values_comparison(
    key: str, actual: list[float], expected: list[float], case: dict
) -> Comparison:
    tol = case.get("tolerance", {})
    return Comparison(
        key,
        torch.tensor(actual, dtype=torch.float64),
        torch.tensor(expected, dtype=torch.float64),
        rtol=float(tol.get("rtol", 0.0)),
        atol=float(tol.get("atol", 0.0)),
    )


@register("emo_normalize_emo_vec")
def normalize_case(fs: FixtureSet, case: dict, opts: RunOptions) -> list[Comparison]:
    out = []
    for i, item in enumerate(case["values"]):
        for flag, key in ((True, "apply_bias_true"), (False, "apply_bias_false")):
            actual = normalize_emo_vec(item["input"], apply_bias=flag)
            out.append(_values_comparison(f"values[{i}].{key}", actual, item[key], case))
    return out


@functools.lru_cache(maxsize=4)
def _matrices(root: Path) -> EmotionMatrices:
    from tts.checkpoints import load_config

    return EmotionMatrices.from_config(root, load_config(root / "config.yaml"))


@register("emo_find_most_similar_cosine")
def cosine_case(fs: FixtureSet, case: dict, opts: RunOptions) -> list[Comparison]:
    (out_key,) = case["outputs"]
    style_key = next(k for k in case["inputs"] if k.endswith("style"))
    style = fs.tensor(style_key).to(opts.device, opts.dtype)
    matrices = _matrices(fs.root).to(opts.device)
    expected_groups = case["inputs"].get("emo_num")
    if expected_groups is not None and list(matrices.emo_num) != list(expected_groups):
        raise AssertionError(f"emo_num {list(matrices.emo_num)} != case {expected_groups}")
    picked = [find_most_similar_cosine(style, block) for block in matrices.spk]
    # The same through the production path (EmotionMatrices.pick).
    assert matrices.pick(style) == picked
    return [fs.compare(case, out_key, torch.tensor(picked, dtype=torch.int64))]


# ---------------------------------------------------------------------------------------------
# infer() traces
# ---------------------------------------------------------------------------------------------

_CACHED = re.compile(r"(cache_\w+)\s*=\s*([A-Za-z_]\w*(?:\.\w+)+)")
_GEN_KWARGS = (
    "do_sample",
    "top_p",
    "top_k",
    "temperature",
    "num_return_sequences",
    "length_penalty",
    "num_beams",
    "repetition_penalty",
)


@functools.lru_cache(maxsize=4)
def _gpt_model(root: Path, device: str, dtype: torch.dtype):
    from tts.checkpoints import CheckpointSet
    from tts.components import load_component

    model, _ = load_component("gpt", CheckpointSet.open(root))
    return model.to(device=device, dtype=dtype).eval()


@functools.lru_cache(maxsize=4)
def _frontend(bpe_path: Path):
    from tts.text.frontend import TextFrontend

    return TextFrontend(bpe_path)


def _cached_inputs(fs: FixtureSet) -> dict[str, str]:
    """What the traces pre-filled the reference's caches with: cache name -> golden key.

    Read from the ``how`` text of the set's trace cases (one of them describes the setup for
    all: "cache_spk_cond=b1.spk_feat, ...").
    """
    found: dict[str, str] = {}
    for other in fs.cases:
        if str(other.get("id", "")).startswith("trace_"):
            for name, key in _CACHED.findall(str(other.get("how", ""))):
                found.setdefault(name, key)
    return found


def _golden_key_in(fs: FixtureSet, text: object) -> str | None:
    """The golden key written inside a placeholder such as ``"(cached b1.emo_feat)"``."""
    if not isinstance(text, str):
        return None
    for token in re.findall(r"[A-Za-z_]\w*(?:\.\w+)+", text):
        if token in fs.golden:
            return token
    return None


def _exact(key: str, actual: list, expected: list, dtype: torch.dtype) -> Comparison:
    return Comparison(
        key, torch.tensor(actual, dtype=dtype), torch.tensor(expected, dtype=dtype), exact=True
    )


@register("trace_emovector", "trace_emoaudio")
def trace_case(fs: FixtureSet, case: dict, opts: RunOptions) -> list[Comparison]:
    """Replay infer(): text front end, emotion planning/resolution, generation, second pass.

    The fixture pre-filled the reference's caches with stored features (speaker/emotion w2v-bert
    features, the CAMPPlus style); we feed the same tensors to the same stages. The second pass
    runs on the stored sampled codes, cut at the first stop code by our own trimming, so that it
    is checked independently of sampling.
    """
    from tts.emotion import plan_emotion, resolve_emotion

    args = case["args"]
    observed = case.get("observed", {})
    calls = observed.get("calls", {})
    cached = _cached_inputs(fs)
    dev, dt = opts.device, opts.dtype
    gpt = _gpt_model(fs.root, dev, dt)

    spk_key = cached.get("cache_spk_cond")
    style_key = cached.get("cache_s2mel_style")
    if spk_key is None or style_key is None:
        raise KeyError(f"{fs.name}/{case['id']}: no trace case tells the cached inputs")
    spk_cond = fs.tensor(spk_key).to(dev, dt)
    style = fs.tensor(style_key).to(dev, dt)

    # A separate emotion prompt is named by its stored features; without one the speaker
    # prompt is the emotion prompt (its emotion-chain features were cached as cache_emo_cond).
    emo_prompt_key = _golden_key_in(fs, args.get("emo_audio_prompt"))
    plan = plan_emotion(
        args["text"],
        emo_audio_prompt=emo_prompt_key,
        emo_alpha=args.get("emo_alpha", 1.0),
        emo_vector=args.get("emo_vector"),
    )
    emo_key = plan.emo_audio if plan.emo_audio is not None else cached.get("cache_emo_cond")
    if emo_key is None:
        raise KeyError(f"{fs.name}/{case['id']}: no emotion features for the speaker prompt")
    emo_cond = fs.tensor(str(emo_key)).to(dev, dt)

    result: list[Comparison] = []
    before = args.get("emo_vector_before_normalize_emo_vec")
    if before is not None:
        result.append(
            _values_comparison(
                "args.emo_vector (normalize_emo_vec)",
                normalize_emo_vec(before),
                args["emo_vector"],
                {"tolerance": {"rtol": 0.0, "atol": 1e-12}},
            )
        )
    if "scaled_emo_vector" in observed:
        result.append(
            _exact(
                "observed.scaled_emo_vector",
                list(plan.emo_vector or []),
                observed["scaled_emo_vector"],
                torch.float64,
            )
        )
    merge_kw = calls.get("merge_emovec_call", {}).get("keyword", {})
    alpha_seen = observed.get("emo_alpha_used_in_merge", merge_kw.get("alpha"))
    if alpha_seen is not None:
        result.append(
            _exact("observed.merge alpha", [plan.merge_alpha], [alpha_seen], torch.float64)
        )

    matrices = _matrices(fs.root).to(dev)
    emo = resolve_emotion(
        gpt,
        spk_cond,
        emo_cond,
        plan,
        style=style,
        matrices=matrices,
        use_random=bool(args.get("use_random", False)),
    )
    if "picked_indices" in observed:
        result.append(
            _exact(
                "observed.picked_indices",
                emo.indices or [],
                observed["picked_indices"],
                torch.int64,
            )
        )

    # Text: the production front end; the traces have one segment.
    from tts.checkpoints import CheckpointSet

    bpe = CheckpointSet(root=fs.root, config=fs.config).path("bpe")
    plan_text = _frontend(bpe).process(args["text"])
    text_tokens = torch.tensor(plan_text.segment_ids[0], dtype=torch.int32, device=dev)[None]

    gen_kw = calls.get("inference_speech_call", {}).get("keyword", {})
    options = {k: gen_kw[k] for k in _GEN_KWARGS if k in gen_kw}
    max_new = int(gen_kw.get("max_generate_length", args.get("max_mel_tokens", 1500)))
    generator = torch.Generator(device=dev)
    if "torch_manual_seed" in args:
        generator.manual_seed(int(args["torch_manual_seed"]))
    width = torch.tensor([spk_cond.shape[-1]], device=dev)
    emo_width = torch.tensor([emo_cond.shape[-1]], device=dev)
    out, cond_latent = gpt.inference_speech(
        spk_cond,
        text_tokens,
        emo_speech_condition=emo_cond,
        cond_lengths=width,
        emo_cond_lengths=emo_width,
        emo_vec=emo.emovec,
        max_generate_length=max_new,
        generator=generator,
        warn_on_limit=False,
        **options,
    )

    prefix = case["id"]
    codes = None
    for key in case["outputs"]:
        name = key[len(prefix) + 1 :] if key.startswith(prefix + ".") else key.rsplit(".", 1)[-1]
        if name == "text_tokens":
            result.append(fs.compare(case, key, text_tokens.long()))
        elif name == "merge_emovec_out":
            result.append(fs.compare(case, key, emo.merged))
        elif name == "emovec_mat":
            if emo.emovec_mat is None:
                raise AssertionError(f"{case['id']}: no emotion-vector mix was made")
            result.append(fs.compare(case, key, emo.emovec_mat))
        elif name == "emo_vec_final":
            result.append(fs.compare(case, key, emo.emovec))
        elif name == "cond_latent":
            result.append(fs.compare(case, key, cond_latent))
        elif name == "codes_sampled":
            # Marked informational (it depends on the RNG stream), but on CPU a generator seeded
            # like the reference's torch.manual_seed draws the same numbers, so the beam
            # sampling must then give the same codes. Other devices have other streams.
            if torch.device(dev).type == "cpu":
                result.append(_exact(key, out.codes.tolist(), fs.tensor(key).tolist(), torch.int64))
            else:
                assert out.codes.shape[0] == text_tokens.shape[0]
        elif name == "forward_codes":
            codes, _ = trim_at_stop(
                fs.tensor(f"{prefix}.codes_sampled").to(dev), gpt.stop_mel_token
            )
            result.append(fs.compare(case, key, codes))
        elif name == "forward_latent":
            fwd = fs.tensor(f"{prefix}.forward_codes").to(dev) if codes is None else codes
            latent = gpt(
                cond_latent,
                text_tokens,
                torch.tensor([text_tokens.shape[-1]], device=dev),
                fwd,
                torch.tensor([fwd.shape[-1]], device=dev),
                emo_cond,
                cond_mel_lengths=width,
                emo_cond_mel_lengths=emo_width,
                emo_vec=emo.emovec,
                use_speed=torch.zeros(spk_cond.size(0), dtype=torch.long, device=dev),
            )
            result.append(fs.compare(case, key, latent))
        else:
            raise KeyError(f"{case['id']}: no rule for output {key!r}")
    return result
