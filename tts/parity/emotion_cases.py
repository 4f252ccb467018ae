"""Parity handlers for the emotion cases (group d of the GPT fixtures).

* ``emo_normalize_emo_vec``: the UI's vector softening, values inline in the case.
* ``emo_find_most_similar_cosine``: the row picked per emotion group for a style vector.
* ``trace_emovector`` / ``trace_emoaudio``: the reference's ``infer`` driven up to s2mel, replayed
  with our own front end (tokenizer), argument planning and emotion resolution
  (:mod:`tts.emotion`), generation and the GPT's second pass.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from tts.emotion import (
    EmotionMatrices,
    find_most_similar_cosine,
    normalize_emo_vec,
)
from tts.parity import Comparison, FixtureSet, RunOptions, register


def _values_comparison(key: str, actual: list[float], expected: list[float], case: dict
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
