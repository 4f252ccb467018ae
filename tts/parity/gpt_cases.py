"""Parity handlers for the UnifiedVoice cases of the GPT fixtures (groups a, b, c).

* (a) conditioning: ``cond_spk_*``, ``cond_emo_*``, ``merge_*``;
* (b) teacher-forced forward: ``fwd_*`` (latents, and mel logits recomputed after a generation
  prefix);
* (c) generation: ``gen_*`` (greedy and beam search, B = 1 and a left-padded B = 2).

Tensors are found by *role* from the case itself: the golden keys named in its ``call`` string,
``inputs`` and ``kwargs`` (e.g. ``b2.spk_feat``, ``merge_b1.emovec``) and the output keys by
suffix (``.latent``, ``.codes``, ``.scores_topk_values`` ...). Sizes (top-k width, number of
steps, lengths) come from the golden tensors and the case's kwargs, never from constants.
"""

from __future__ import annotations

import functools
import re
import warnings
from pathlib import Path

import torch

from tts.parity import Comparison, FixtureSet, RunOptions, register

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_LEN_EXPR = re.compile(r"torch\.tensor\(\[\s*(\w+)\s*\]\)")
# Generation kwargs of the reference call that map onto our GenerationConfig.
_GEN_OPTIONS = (
    "do_sample",
    "top_k",
    "top_p",
    "temperature",
    "repetition_penalty",
    "length_penalty",
    "num_beams",
    "num_return_sequences",
    "early_stopping",
)


@functools.lru_cache(maxsize=4)
def _model(root: Path, device: str, dtype: torch.dtype):
    from tts.checkpoints import CheckpointSet
    from tts.components import load_component

    model, _ = load_component("gpt", CheckpointSet.open(root))
    return model.to(device=device, dtype=dtype).eval()


def _gpt(fs: FixtureSet, opts: RunOptions):
    return _model(fs.root, opts.device, opts.dtype)


def _golden_keys(fs: FixtureSet, text: str) -> list[str]:
    """Golden keys written in ``text``, in order (``gen.x.text_tokens.int()`` -> its key)."""
    found = []
    for dotted in _KEY.findall(text):
        parts = dotted.split(".")
        for n in range(len(parts), 1, -1):
            if (key := ".".join(parts[:n])) in fs.golden:
                found.append(key)
                break
    return list(dict.fromkeys(found))


class _Case:
    """Golden tensors of a case, addressed by role (key suffix)."""

    def __init__(self, fs: FixtureSet, case: dict, opts: RunOptions):
        self.fs, self.case, self.opts = fs, case, opts
        text = " ".join([case.get("call", ""), *map(str, case.get("inputs", {}))])
        text += " " + " ".join(str(v) for v in self.kwargs().values())
        self.keys = _golden_keys(fs, text)

    def kwargs(self) -> dict:
        """The case's kwargs; a case saying "...same kw" borrows those of its group's first."""
        if "kwargs" in self.case:
            return dict(self.case["kwargs"])
        if "same kw" in self.case.get("call", ""):
            for other in self.fs.cases:
                if other.get("group") == self.case.get("group") and "kwargs" in other:
                    return dict(other["kwargs"])
        return {}

    def find(self, suffix: str, required: bool = True) -> str | None:
        hits = [k for k in self.keys if k.endswith("." + suffix)]
        if not hits:
            if required:
                raise KeyError(f"{self.case['id']}: no input tensor '*.{suffix}' in the case")
            return None
        return hits[0]

    def get(self, suffix: str, required: bool = True) -> torch.Tensor | None:
        key = self.find(suffix, required)
        if key is None:
            return None
        t = self.fs.tensor(key).to(self.opts.device)
        return t.to(self.opts.dtype) if t.is_floating_point() else t

    def out(self, suffix: str) -> str | None:
        hits = [k for k in self.case["outputs"] if k.endswith("." + suffix)]
        return hits[0] if hits else None

    def lengths(self, suffix: str, feat: torch.Tensor) -> torch.Tensor:
        """A ``*_lens`` input if the case has one, else infer_v2's ``[feature width]``."""
        lens = self.get(suffix, required=False)
        if lens is not None:
            return lens
        return torch.tensor([feat.shape[-1]], device=feat.device)

    def compare(self, key: str, actual: torch.Tensor) -> Comparison:
        return self.fs.compare(self.case, key, actual.detach().cpu())


# ---------------------------------------------------------------------------------------------
# (a) conditioning
# ---------------------------------------------------------------------------------------------


@register("cond_spk_b2", "cond_spk_b1_inferv2")
def cond_spk(fs: FixtureSet, case: dict, opts: RunOptions) -> list[Comparison]:
    c = _Case(fs, case, opts)
    feat = c.get("spk_feat")
    latent = _gpt(fs, opts).get_conditioning(feat.transpose(1, 2), c.lengths("spk_lens", feat))
    (key,) = case["outputs"]
    return [c.compare(key, latent)]


@register("cond_emo_b2")
def cond_emo(fs: FixtureSet, case: dict, opts: RunOptions) -> list[Comparison]:
    c = _Case(fs, case, opts)
    gpt = _gpt(fs, opts)
    feat = c.get("emo_feat")
    lens = c.lengths("emo_lens", feat)
    result = []
    if (key := c.out("emo_cond")) is not None:
        result.append(c.compare(key, gpt.get_emo_conditioning(feat.transpose(1, 2), lens)))
    if (key := c.out("emovec")) is not None:
        result.append(c.compare(key, gpt.get_emovec(feat, lens)))
    return result


@register("merge_b2", "merge_b1_inferv2")
def merge(fs: FixtureSet, case: dict, opts: RunOptions) -> list[Comparison]:
    c = _Case(fs, case, opts)
    spk, emo = c.get("spk_feat"), c.get("emo_feat")
    alpha = float(case.get("inputs", {}).get("alpha", case.get("alpha", 1.0)))
    vec = _gpt(fs, opts).merge_emovec(
        spk, emo, c.lengths("spk_lens", spk), c.lengths("emo_lens", emo), alpha=alpha
    )
    (key,) = case["outputs"]
    return [c.compare(key, vec)]


# ---------------------------------------------------------------------------------------------
# (b) teacher-forced forward
# ---------------------------------------------------------------------------------------------


def _full_lengths(tokens: torch.Tensor) -> torch.Tensor:
    return torch.full((tokens.size(0),), tokens.size(1), dtype=torch.int64, device=tokens.device)


@register("fwd_b1", "fwd_b2_padded", "fwd_b2_fullcond")
def forward_case(fs: FixtureSet, case: dict, opts: RunOptions) -> list[Comparison]:
    c = _Case(fs, case, opts)
    gpt = _gpt(fs, opts)
    call = case.get("call", "")
    text, codes = c.get("text_tokens"), c.get("mel_codes")
    text_lens = c.get("text_lens", required=False)
    mel_lens = c.get("mel_lens", required=False)
    text_lens = _full_lengths(text) if text_lens is None else text_lens
    mel_lens = _full_lengths(codes) if mel_lens is None else mel_lens
    emo_feat = c.get("emo_feat")
    emo_vec = None if "emo_vec=None" in call else c.get("emovec")
    do_spk_cond = "do_spk_cond=True" in call
    if do_spk_cond:
        cond = c.get("spk_feat")
        cond_lens = c.lengths("spk_lens", cond)
    else:
        cond = c.get("latent")
        cond_lens = None
    latent = gpt(
        cond,
        text,
        text_lens,
        codes,
        mel_lens,
        emo_feat,
        cond_mel_lengths=cond_lens,
        emo_cond_mel_lengths=c.lengths("emo_lens", emo_feat),
        emo_vec=emo_vec,
        use_speed=torch.zeros(text.size(0), dtype=torch.long, device=text.device),
        do_spk_cond=do_spk_cond,
    )
    result = [c.compare(c.out("latent"), latent)]
    if (key := c.out("mel_logits")) is not None:
        if emo_vec is None:
            emo_vec = gpt.get_emovec(emo_feat, c.lengths("emo_lens", emo_feat))
        speaker = gpt.get_conditioning(cond.transpose(1, 2), cond_lens) if do_spk_cond else cond
        conds = gpt.conditioning_prefix(speaker, emo_vec, text.size(0))
        prefix, valid = gpt.prepare_gpt_inputs(conds, text)
        codes_in = codes if text.size(0) > 1 else codes[:, : int(mel_lens[0])]
        result.append(c.compare(key, gpt.mel_logits_teacher_forced(prefix, valid, codes_in)))
    return result


# ---------------------------------------------------------------------------------------------
# (c) generation
# ---------------------------------------------------------------------------------------------


def _resolve(c: _Case, value: object, feats: dict[str, torch.Tensor]) -> object:
    """A kwargs value: a golden key, ``torch.tensor([T_x])`` (frames of feature x) or a scalar."""
    if isinstance(value, str):
        if value in c.fs.golden:
            t = c.fs.tensor(value).to(c.opts.device)
            return t.to(c.opts.dtype) if t.is_floating_point() else t
        m = _LEN_EXPR.fullmatch(value.strip())
        if m:
            name = m.group(1)
            if name.startswith("T_") and name[2:] in feats:
                return torch.tensor([feats[name[2:]].shape[1]], device=c.opts.device)
            if name.isdigit():
                return torch.tensor([int(name)], device=c.opts.device)
        raise ValueError(f"{c.case['id']}: cannot interpret kwarg value {value!r}")
    return value


def _call_kwargs(call: str) -> dict[str, str]:
    """``name=<golden key>`` pairs written in the call string."""
    return dict(re.findall(r"(\w+)=(" + _KEY.pattern + ")", call))


@register(
    "gen_greedy_text0",
    "gen_beam3_text0",
    "gen_greedy_text1",
    "gen_beam3_text1",
    "gen_greedy_batch2",
)
def generation_case(fs: FixtureSet, case: dict, opts: RunOptions) -> list[Comparison]:
    c = _Case(fs, case, opts)
    gpt = _gpt(fs, opts)
    call = case.get("call", "")
    args = call[call.index("(") + 1 :]
    positional = _golden_keys(fs, args.split("=")[0])
    spk_key, text_key = positional[0], positional[1]
    spk = c.fs.tensor(spk_key).to(opts.device, opts.dtype)
    text = c.fs.tensor(text_key).to(opts.device).int()  # infer_v2 feeds int32 ids

    kwargs = c.kwargs()
    kwargs.update(_call_kwargs(call))
    emo_in = kwargs.get("emo_speech_condition")
    feats = {"spk": spk}
    if isinstance(emo_in, str) and emo_in in fs.golden:
        feats["emo"] = fs.tensor(emo_in)
    call_num_beams = re.search(r"num_beams=(\d+)", call)
    if call_num_beams:
        kwargs["num_beams"] = int(call_num_beams.group(1))
    resolved = {k: _resolve(c, v, feats) for k, v in kwargs.items()}

    options = {k: resolved[k] for k in _GEN_OPTIONS if k in resolved}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out, cond_latent = gpt.inference_speech(
            spk,
            text,
            emo_speech_condition=resolved.get("emo_speech_condition"),
            cond_lengths=resolved.get("cond_lengths"),
            emo_cond_lengths=resolved.get("emo_cond_lengths"),
            emo_vec=resolved.get("emo_vec"),
            max_generate_length=resolved.get("max_generate_length"),
            output_scores=True,
            output_logits=True,
            **options,
        )

    result = []
    scores = out.scores.transpose(0, 1)  # [rows, steps, vocab]
    for key in case["outputs"]:
        name = key.rsplit(".", 1)[-1]
        expected = fs.tensor(key)
        if name == "codes":
            actual = out.codes
        elif name == "scores":
            actual = scores[0] if expected.ndim == 2 else scores
        elif name == "raw_logits_step0":
            actual = out.logits[0, 0]
        elif name == "scores_step0":
            actual = out.scores[0, 0]
        elif name in ("scores_topk_values", "scores_topk_indices"):
            top = torch.topk(scores, expected.shape[-1], dim=-1)
            actual = top.values if name.endswith("values") else top.indices
        elif name == "cond_latent":
            actual = cond_latent
        elif name == "sequences_scores":
            actual = out.sequences_scores
        elif name == "beam_indices":
            actual = out.beam_indices[0] if expected.ndim == 1 else out.beam_indices
        elif name == "forward_latent":
            actual = _forward_latent(gpt, cond_latent, text, out.codes, resolved)
        else:
            raise KeyError(f"{case['id']}: no rule for output {key!r}")
        result.append(c.compare(key, actual))
    return result


def _forward_latent(
    gpt, cond_latent: torch.Tensor, text: torch.Tensor, codes: torch.Tensor, resolved: dict
) -> torch.Tensor:
    """infer_v2's second pass: codes cut at the first stop code, full-length lengths."""
    stops = (codes[0] == gpt.stop_mel_token).nonzero()
    n = int(stops[0, 0]) if stops.numel() else codes.size(1)
    codes = codes[:, :n]
    emo_feat = resolved.get("emo_speech_condition")
    width = torch.tensor([emo_feat.shape[-1]], device=text.device) if emo_feat is not None else None
    return gpt(
        cond_latent,
        text,
        torch.tensor([text.size(1)], device=text.device),
        codes,
        torch.tensor([n], device=text.device),
        emo_feat,
        cond_mel_lengths=width,
        emo_cond_mel_lengths=width,
        emo_vec=resolved.get("emo_vec"),
        use_speed=torch.zeros(text.size(0), dtype=torch.long, device=text.device),
    )
