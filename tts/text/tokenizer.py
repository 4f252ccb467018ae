"""Text -> sentencepiece tokens and ids, as IndexTTS2 feeds its GPT.

``encode`` normalises (:class:`~tts.text.normalizer.TextNormalizer`), puts spaces around every
CJK character and upper-cases everything (the vocabulary is upper-case), then runs the
checkpoint's ``bpe.model``. Two reference behaviours are kept: empty text gives no tokens, and a
text that is one character once stripped goes to sentencepiece as it is (not normalised, not
upper-cased). No BOS/EOS are added: the GPT adds its own start/stop text tokens.

Pieces the vocabulary lacks come out as single characters with the unknown id (2); they are
reported by :meth:`TextTokenizer.unknown_tokens`, never dropped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from tts.text.normalizer import TextNormalizer
from tts.text.segment import DEFAULT_MAX_TOKENS, Segmentation, segment_tokens, split_segments

# Hangul jamo, CJK radicals..Yi, Hangul syllables, compatibility ideographs and forms, halfwidth
# katakana/hangul, CJK extension B..: each such character becomes a word of its own.
_CJK_CHAR = re.compile(
    "([\u1100-\u11ff\u2e80-\ua4cf\ua840-\ud7af\uf900-\ufaff\ufe30-\ufe4f\uff65-\uffdc"
    "\U00020000-\U0002ffff])"
)
_LATIN_RUN = re.compile(r"([A-Z]+(?:[\s'-][A-Z-]+)*)", re.IGNORECASE)
_RUN_MARK = re.compile(r"(<sent_(\d+)>)")


def spaced_cjk(text: str, upper: bool = True) -> str:
    """``"你好 hello world"`` -> ``"你 好 HELLO WORLD"``: CJK characters split, text upper-cased."""
    words = (w.strip() for w in _CJK_CHAR.split(text.strip()))
    return " ".join(w.upper() if upper else w for w in words if w)


def unspaced_cjk(text: str, lower: bool = False) -> str:
    """Inverse of :func:`spaced_cjk` as the reference writes it (for display only).

    Runs of Latin words become ``<sent_i>`` placeholders and spaces are removed; a placeholder is
    put back only where one space-separated word holds more than one of them.
    """
    runs = _LATIN_RUN.findall(text)
    for i, run in enumerate(runs):
        text = text.replace(run, f"<sent_{i}>")
    words = text.split()
    for w, word in enumerate(words):
        marks = _RUN_MARK.findall(word)
        if len(marks) > 1:
            for mark, index in marks:
                word = word.replace(mark, runs[int(index)])
                if lower:
                    word = word.lower()
            words[w] = word
    return "".join(words)


class TextTokenizer:
    """SentencePiece tokenizer over ``bpe.model`` with IndexTTS2's normalisation and casing."""

    bos_token, eos_token, unk_token = "<s>", "</s>", "<unk>"
    bos_token_id, eos_token_id = 0, 1

    def __init__(self, bpe_path: str | os.PathLike, normalizer: TextNormalizer | None = None):
        from sentencepiece import SentencePieceProcessor

        path = Path(bpe_path)
        if not path.is_file():
            raise FileNotFoundError(f"sentencepiece model not found: {path}")
        self.bpe_path = path
        self.normalizer = normalizer if normalizer is not None else TextNormalizer()
        self.sp = SentencePieceProcessor(model_file=str(path))

    @property
    def vocab_size(self) -> int:
        return self.sp.GetPieceSize()

    @property
    def unk_token_id(self) -> int:
        return self.sp.unk_id()

    # ---- text -> tokens ---------------------------------------------------------------------

    def tokenize(self, text: str) -> list[str]:
        """Text -> sentencepiece pieces (e.g. ``["▁HE", "LL", "O"]``)."""
        return self.tokenize_with_text(text)[1]

    def encode(self, text: str) -> list[int]:
        """Text -> token ids."""
        return self._run(text, int)[1]

    def tokenize_with_text(self, text: str) -> tuple[str, list[str]]:
        """(normalised text, pieces); the normalised text is ``text`` itself when the
        empty-text or single-character shortcut applies."""
        return self._run(text, str)

    def _run(self, text: str, out_type: type) -> tuple[str, list]:
        if not text:
            return text, []
        if len(text.strip()) == 1:
            return text, self.sp.Encode(text, out_type=out_type)
        normalized = self.normalizer.normalize(text)
        return normalized, self.sp.Encode(spaced_cjk(normalized), out_type=out_type)

    # ---- tokens <-> ids ---------------------------------------------------------------------

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> list[int]:
        if isinstance(tokens, str):
            tokens = [tokens]
        return [self.sp.PieceToId(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]:
        if isinstance(ids, int):
            return self.sp.IdToPiece(ids)
        return [self.sp.IdToPiece(int(i)) for i in ids]

    def decode(self, ids: int | Sequence[int], lower: bool = False) -> str:
        """Ids -> text for display (English comes back mostly as ``<sent_i>`` placeholders)."""
        if isinstance(ids, int):
            ids = [ids]
        return unspaced_cjk(self.sp.Decode([int(i) for i in ids]), lower=lower)

    def unknown_tokens(self, tokens: Sequence[str]) -> list[str]:
        """The pieces of ``tokens`` the vocabulary lacks, in order, without the ``▁`` marker."""
        unk = self.unk_token_id
        return [t.lstrip("▁") or t for t in tokens if self.sp.PieceToId(t) == unk]

    # ---- segments ---------------------------------------------------------------------------

    def split_segments(
        self,
        tokens: Sequence[str],
        max_tokens: int = DEFAULT_MAX_TOKENS,
        quick_streaming_tokens: int = 0,
    ) -> list[list[str]]:
        """Tokens -> GPT segments of at most ``max_tokens`` (see :mod:`tts.text.segment`)."""
        return split_segments(tokens, max_tokens, quick_streaming_tokens)

    def segment(
        self,
        tokens: Sequence[str],
        max_tokens: int = DEFAULT_MAX_TOKENS,
        quick_streaming_tokens: int = 0,
    ) -> Segmentation:
        """Like :meth:`split_segments`, also telling whether a run was cut by length alone."""
        return segment_tokens(tokens, max_tokens, quick_streaming_tokens)
