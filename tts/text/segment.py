"""Cutting a token sequence into GPT-sized segments, and the silence between their waveforms.

The cut points and merge rule are the reference's (``split_segments_by_token``), quirks kept,
because they decide what each GPT call sees:

* tokens are walked in order; as soon as the segment being built holds a comma (``,``/``▁,``) it
  is re-split on commas, else as soon as it holds ``-`` it is re-split on hyphens (both
  recursively, with the same rules);
* otherwise the segment ends after a sentence mark (``. ! ? ▁. ▁? ▁...``) once it has more than
  two tokens; if the next token is an apostrophe it is appended too, **and also starts the next
  segment** (the reference's loop does not skip it);
* a segment that would exceed ``max_tokens`` is chopped every ``max_tokens`` tokens (with a
  warning);
* finally neighbours are merged while the sum fits in ``max_tokens`` and more than
  ``quick_streaming_tokens`` tokens have been seen, or while the sum fits in ``max_tokens / 2``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

SENTENCE_MARKS: tuple[str, ...] = (".", "!", "?", "▁.", "▁?", "▁...")
COMMA_MARKS: tuple[str, ...] = (",", "▁,")
HYPHEN_MARKS: tuple[str, ...] = ("-",)
APOSTROPHES: tuple[str, ...] = ("'", "▁'")

DEFAULT_MAX_TOKENS = 120
DEFAULT_INTERVAL_SILENCE_MS = 200


@dataclass
class Segmentation:
    """Segments of tokens, and whether some run had to be chopped by length alone."""

    segments: list[list[str]]
    chopped: bool = False


def _split(
    tokens: Sequence[str], marks: Sequence[str], max_tokens: int, quick: int, out: Segmentation
) -> list[list[str]]:
    if not tokens:
        return []
    pieces: list[list[str]] = []
    current: list[str] = []
    for i, token in enumerate(tokens):
        current.append(token)
        if not any(m in marks for m in COMMA_MARKS) and any(m in current for m in COMMA_MARKS):
            pieces.extend(_split(current, COMMA_MARKS, max_tokens, quick, out))
        elif "-" not in marks and "-" in current:
            pieces.extend(_split(current, HYPHEN_MARKS, max_tokens, quick, out))
        elif len(current) <= max_tokens:
            if token in marks and len(current) > 2:
                if i + 1 < len(tokens) and tokens[i + 1] in APOSTROPHES:
                    current.append(tokens[i + 1])  # ...and it is seen again next iteration
                pieces.append(current)
                current = []
            continue
        else:
            out.chopped = True
            pieces.extend(current[j : j + max_tokens] for j in range(0, len(current), max_tokens))
        current = []
    if current:
        pieces.append(current)

    merged: list[list[str]] = []
    seen = 0
    for piece in pieces:
        seen += len(piece)
        if not piece:
            continue
        if merged and len(merged[-1]) + len(piece) <= max_tokens and seen > quick:
            merged[-1] = merged[-1] + piece
        elif merged and len(merged[-1]) + len(piece) <= max_tokens / 2:
            merged[-1] = merged[-1] + piece
        else:
            merged.append(piece)
    return merged


def segment_tokens(
    tokens: Sequence[str],
    max_tokens: int = DEFAULT_MAX_TOKENS,
    quick_streaming_tokens: int = 0,
    marks: Sequence[str] = SENTENCE_MARKS,
) -> Segmentation:
    """Split ``tokens`` (sentencepiece pieces) into segments of at most ``max_tokens``."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
    out = Segmentation(segments=[])
    out.segments = _split(list(tokens), tuple(marks), max_tokens, quick_streaming_tokens, out)
    return out


def split_segments(
    tokens: Sequence[str],
    max_tokens: int = DEFAULT_MAX_TOKENS,
    quick_streaming_tokens: int = 0,
) -> list[list[str]]:
    """:func:`segment_tokens` that only returns the segments (warns when it chopped by length)."""
    result = segment_tokens(tokens, max_tokens, quick_streaming_tokens)
    if result.chopped:
        warnings.warn(
            f"a run of tokens without usable punctuation exceeded {max_tokens} tokens and was "
            "cut by length alone",
            RuntimeWarning,
            stacklevel=2,
        )
    return result.segments


# --------------------------------------------------------------------------------------------
# Silence between segments.


def silence_samples(
    interval_ms: float = DEFAULT_INTERVAL_SILENCE_MS, sample_rate: int = 22050
) -> int:
    """Samples of silence between two segments: ``int(sr * ms / 1000)`` (200 ms -> 4410)."""
    if interval_ms <= 0:
        return 0
    return int(sample_rate * interval_ms / 1000.0)


def join_with_silence(wavs, interval_ms: float = DEFAULT_INTERVAL_SILENCE_MS, sample_rate=22050):
    """Concatenate ``[channels, samples]`` waveforms along time with zeros between them.

    No silence before the first or after the last segment; ``interval_ms <= 0`` joins directly.
    """
    import torch

    wavs = list(wavs)
    if not wavs:
        raise ValueError("no waveforms to join")
    gap = silence_samples(interval_ms, sample_rate)
    parts = []
    for i, wav in enumerate(wavs):
        if i and gap:
            parts.append(wav.new_zeros(wav.shape[0], gap))
        parts.append(wav)
    return torch.cat(parts, dim=1)
