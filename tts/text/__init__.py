"""Text front-end: normalisation, tokenisation and segmentation as IndexTTS2 does them.

Importing this package is cheap; the normalisation grammars load on first use.
"""

from tts.text.errors import TextError
from tts.text.frontend import DEFAULT_MAX_CHARS, TextFrontend, TextPlan
from tts.text.normalizer import TextNormalizer
from tts.text.segment import (
    DEFAULT_INTERVAL_SILENCE_MS,
    DEFAULT_MAX_TOKENS,
    Segmentation,
    join_with_silence,
    segment_tokens,
    silence_samples,
    split_segments,
)
from tts.text.tokenizer import TextTokenizer, spaced_cjk

__all__ = [
    "DEFAULT_INTERVAL_SILENCE_MS",
    "DEFAULT_MAX_CHARS",
    "DEFAULT_MAX_TOKENS",
    "Segmentation",
    "TextError",
    "TextFrontend",
    "TextNormalizer",
    "TextPlan",
    "TextTokenizer",
    "join_with_silence",
    "segment_tokens",
    "silence_samples",
    "spaced_cjk",
    "split_segments",
]
