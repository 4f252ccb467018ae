"""Parity handlers for the text front-end (normaliser, tokenizer, segmentation).

The golden values are JSON (strings and lists), compared exactly; every field of every sentence
in the case's file is checked: normalised and pre-tokenised text, pieces, ids (both
``convert_tokens_to_ids`` and ``encode``), the unknown-token count, the segments and their ids
for every segment size the file holds (``segments_<N>``), whether that segmentation had to chop by
length, and the display decoding.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from tts.parity import Comparison, FixtureSet, RunOptions, register

_SEGMENT_KEY = re.compile(r"^segments_(\d+)$")


@dataclass
class JsonComparison(Comparison):
    """An exact comparison of two JSON-like values (strings, numbers, nested lists)."""

    def failure(self) -> str | None:
        if self.actual == self.expected and type(self.actual) is type(self.expected):
            return None
        return f"{self.key}: {_short(self.actual)} != golden {_short(self.expected)}"

    def max_abs_diff(self) -> float:
        return 0.0 if self.failure() is None else float("nan")


def _short(value: Any, limit: int = 300) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + "..."


@lru_cache(maxsize=8)
def _tokenizer(bpe_path: str):
    from tts.text import TextNormalizer, TextTokenizer

    return TextTokenizer(bpe_path, TextNormalizer(enable_glossary=True))


@register("tokenizer")
def tokenizer_case(fs: FixtureSet, case: dict, opts: RunOptions) -> list[Comparison]:
    from tts.text import TextError, TextFrontend, segment_tokens, spaced_cjk

    with open(fs.path(case["file"]), encoding="utf-8") as fh:
        golden = json.load(fh)
    bpe = str(fs.path(fs.meta.get("files", {}).get("bpe", "bpe.model")))
    tok = _tokenizer(bpe)
    frontend = TextFrontend(bpe, normalizer=tok.normalizer)
    out: list[Comparison] = []

    def check(key: str, actual: Any, expected: Any) -> None:
        out.append(JsonComparison(key, actual, expected, exact=True))

    spec = golden.get("bpe", {})
    for name, actual in (
        ("vocab_size", tok.vocab_size),
        ("unk_id", tok.unk_token_id),
        ("bos_id", tok.sp.bos_id()),
        ("eos_id", tok.sp.eos_id()),
    ):
        if name in spec:
            check(f"bpe.{name}", actual, spec[name])

    sentences = golden["cases"]
    if "n_sentences" in case:
        check("n_sentences", len(sentences), case["n_sentences"])
    for i, row in enumerate(sentences):
        text = row["text"]
        where = f"[{i}] {text[:30]!r}"
        normalized, tokens = tok.tokenize_with_text(text)
        if row.get("normalized") is None:
            # The reference skipped normalisation (empty or single-character text).
            check(f"{where}.normalized", normalized, text)
        else:
            check(f"{where}.normalized", normalized, row["normalized"])
        if row.get("pretokenized") is not None:
            check(f"{where}.pretokenized", spaced_cjk(normalized), row["pretokenized"])
        check(f"{where}.tokens", tokens, row["tokens"])
        ids = tok.convert_tokens_to_ids(tokens)
        check(f"{where}.ids", ids, row["ids"])
        if "encode_ids" in row:
            check(f"{where}.encode_ids", tok.encode(text), row["encode_ids"])
        if "unk_count" in row:
            check(f"{where}.unk_count", len(tok.unknown_tokens(tokens)), row["unk_count"])
        for key in row:
            m = _SEGMENT_KEY.match(key)
            if not m:
                continue
            size = int(m.group(1))
            # Segment the golden pieces, so a tokenisation slip does not hide a segmenter one.
            split = segment_tokens(row["tokens"], size)
            check(f"{where}.{key}", split.segments, row[key])
            if f"segment_ids_{size}" in row:
                seg_ids = [tok.convert_tokens_to_ids(s) for s in split.segments]
                check(f"{where}.segment_ids_{size}", seg_ids, row[f"segment_ids_{size}"])
            if f"{key}_warned_too_long" in row:
                check(
                    f"{where}.{key}_warned_too_long", split.chopped, row[f"{key}_warned_too_long"]
                )
        if "decoded" in row:
            check(f"{where}.decoded", tok.decode(row["ids"]), row["decoded"])

        # The row-level front-end agrees with the tokenizer, and refuses text with no tokens.
        if row["tokens"]:
            plan = frontend.process(text)
            check(f"{where}.frontend.tokens", plan.tokens, row["tokens"])
            check(f"{where}.frontend.ids", plan.ids, row["ids"])
        else:
            try:
                frontend.process(text)
                refused = False
            except TextError:
                refused = True
            check(f"{where}.frontend.refuses_empty", refused, True)
    return out
