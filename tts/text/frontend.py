"""One row's text -> everything the GPT stage needs, with clear errors for unusable text."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from tts.text.errors import TextError
from tts.text.normalizer import TextNormalizer
from tts.text.segment import DEFAULT_MAX_TOKENS, segment_tokens
from tts.text.tokenizer import TextTokenizer

# Longer rows are refused rather than silently taking hours; the workflow config may raise it.
DEFAULT_MAX_CHARS = 10_000


@dataclass
class TextPlan:
    """A row's text after the front-end: tokens, ids and the GPT segments.

    ``unknown`` lists the distinct characters the vocabulary lacks (in order of appearance);
    ``unknown_count`` counts every unknown token. ``chopped`` is true when some run without
    usable punctuation was cut by length alone.
    """

    text: str
    normalized: str
    tokens: list[str]
    ids: list[int]
    segments: list[list[str]]
    segment_ids: list[list[int]]
    unknown: list[str] = field(default_factory=list)
    unknown_count: int = 0
    chopped: bool = False

    def unknown_message(self) -> str | None:
        """A one-line warning naming the unknown characters, or None when there are none."""
        if not self.unknown_count:
            return None
        chars = " ".join(repr(c) for c in self.unknown)
        return f"{self.unknown_count} token(s) not in the vocabulary: {chars}"

    def to_dict(self) -> dict:
        """Plain JSON-able form (the workflow's text stage writes it for the GPU stage)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> TextPlan:
        """The inverse of :meth:`to_dict`; a missing or unknown field is an error."""
        return cls(**data)


class TextFrontend:
    """Normaliser + tokenizer + segmentation for the rows of a batch."""

    @classmethod
    def for_checkpoints(
        cls, cs, max_text_tokens_per_segment: int = DEFAULT_MAX_TOKENS
    ) -> TextFrontend:
        """The front-end of checkpoint set ``cs``: its ``bpe.model`` and, when the set has
        one, its ``glossary.yaml`` (as the reference reads them)."""
        glossary = cs.root / "glossary.yaml"
        return cls(
            cs.path("bpe"),
            glossary=glossary if glossary.is_file() else None,
            max_text_tokens_per_segment=max_text_tokens_per_segment,
        )

    def __init__(
        self,
        bpe_path: str | os.PathLike,
        glossary: str | os.PathLike | Mapping | None = None,
        max_text_tokens_per_segment: int = DEFAULT_MAX_TOKENS,
        quick_streaming_tokens: int = 0,
        max_chars: int = DEFAULT_MAX_CHARS,
        normalizer: TextNormalizer | None = None,
    ):
        if normalizer is None:
            normalizer = TextNormalizer(enable_glossary=True, glossary=glossary)
        elif glossary is not None:
            raise ValueError("pass either a normalizer or a glossary, not both")
        self.tokenizer = TextTokenizer(bpe_path, normalizer)
        self.max_text_tokens_per_segment = max_text_tokens_per_segment
        self.quick_streaming_tokens = quick_streaming_tokens
        self.max_chars = max_chars

    @property
    def normalizer(self) -> TextNormalizer:
        return self.tokenizer.normalizer

    def process(self, text: str) -> TextPlan:
        """Check, normalise, tokenize and segment one text; raises :class:`TextError`."""
        if not isinstance(text, str):
            raise TextError(f"text must be a string, not {type(text).__name__}")
        if not text.strip():
            raise TextError("text is empty")
        if len(text) > self.max_chars:
            raise TextError(
                f"text is {len(text)} characters long, over the maximum of {self.max_chars}"
            )
        tok = self.tokenizer
        normalized, tokens = tok.tokenize_with_text(text)
        if not tokens:
            raise TextError(f"text normalises to nothing: {text[:80]!r}")
        ids = tok.convert_tokens_to_ids(tokens)
        split = segment_tokens(
            tokens, self.max_text_tokens_per_segment, self.quick_streaming_tokens
        )
        unknown = tok.unknown_tokens(tokens)
        return TextPlan(
            text=text,
            normalized=normalized,
            tokens=tokens,
            ids=ids,
            segments=split.segments,
            segment_ids=[tok.convert_tokens_to_ids(s) for s in split.segments],
            unknown=list(dict.fromkeys(unknown)),
            unknown_count=len(unknown),
            chopped=split.chopped,
        )
