"""Text normalisation, WER/CER, audio sanity checks and the per-row verdict.

Error rates are computed after one normalisation, :func:`normalize_for_scoring`, applied to the
reference text and to the ASR hypothesis alike: the TTS text front-end first (so ``"12"`` becomes
``"twelve"`` on both sides, and a number read correctly is not an error), then case folding and
punctuation removal. English rows are scored by words (WER, and CER over the normalised string);
Chinese rows by characters only (CER over the characters, whitespace dropped), as seed-tts-eval
does.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import asdict, dataclass, fields
from functools import lru_cache

import numpy as np

# CJK Unified Ideographs (+ extension A) and the CJK compatibility block.
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})


def detect_language(text: str) -> str:
    """``"zh"`` when the text holds any CJK ideograph, else ``"en"``."""
    return "zh" if _CJK.search(text) else "en"


# ---------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _front_end():
    """The TTS text front-end's normaliser, or ``None`` while tts.text.normalizer is absent."""
    try:
        from tts.text.normalizer import TextNormalizer
    except ImportError:
        return None
    return TextNormalizer()


_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))


def _int_words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for value, word in _SCALES:
        if n >= value:
            head, rest = divmod(n, value)
            return f"{_int_words(head)} {word}" + ("" if rest == 0 else " " + _int_words(rest))
    raise AssertionError(n)  # unreachable: every n >= 100 meets a scale


def _number_words(match: re.Match) -> str:
    whole, frac = match.group(1).replace(",", ""), match.group(2)
    if len(whole) > 12:  # an identifier, not a quantity: read digit by digit
        words = " ".join(_ONES[int(d)] for d in whole)
    else:
        words = _int_words(int(whole))
    if frac:
        words += " point " + " ".join(_ONES[int(d)] for d in frac)
    return f" {words} "


_NUMBER = re.compile(r"(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?")


def _fallback_front_end(text: str) -> str:
    """Stand-in for the front-end while it is absent: English numbers to words, ``%``, ``&``."""
    text = text.replace("%", " percent ").replace("&", " and ")
    return _NUMBER.sub(_number_words, text)


def front_end_normalize(text: str, language: str) -> str:
    """What the TTS front-end would say for ``text`` (numbers, symbols, abbreviations expanded).

    The one place the scorer depends on the front-end: tts.text.normalizer's
    ``TextNormalizer().normalize`` when it exists, a small English number expander otherwise.
    """
    normalizer = _front_end()
    if normalizer is not None:
        try:
            return normalizer.normalize(text)
        except Exception:  # the front-end failing on an odd hypothesis must not sink the row
            pass
    return _fallback_front_end(text) if language == "en" else text


def normalize_for_scoring(text: str, language: str | None = None) -> str:
    """Reference and hypothesis go through this before WER/CER.

    Front-end expansion, NFKC, case folding, curly to straight apostrophes, every punctuation or
    symbol character to a space (apostrophes inside words kept: "don't"), whitespace collapsed.
    """
    language = language or detect_language(text)
    # straight apostrophes first, so that the front-end sees "it's" whichever quote was typed
    text = front_end_normalize(text.translate(_APOSTROPHES), language)
    text = unicodedata.normalize("NFKC", text).casefold().translate(_APOSTROPHES)
    out = []
    for i, ch in enumerate(text):
        cat = unicodedata.category(ch)
        if ch == "'":
            inside = 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum()
            out.append(ch if inside else " ")
        elif cat[0] in "PS" or cat in ("Cc", "Cf"):
            out.append(" ")
        else:
            out.append(ch)
    return " ".join("".join(out).split())


# ---------------------------------------------------------------------------------------------
# Error rates
# ---------------------------------------------------------------------------------------------


@dataclass
class ErrorRates:
    """WER/CER of one hypothesis against one reference (``None`` where not defined)."""

    language: str
    reference_norm: str
    hypothesis_norm: str
    wer: float | None
    cer: float | None
    note: str = ""


def error_rates(reference: str, hypothesis: str, language: str | None = None) -> ErrorRates:
    """WER and CER of ``hypothesis`` against ``reference`` after :func:`normalize_for_scoring`.

    English: WER over words and CER over the normalised string. Chinese: CER over characters
    (whitespace dropped), WER ``None``. An empty normalised reference gives ``None`` rates and a
    note, never an exception; an empty hypothesis against a non-empty reference is 100 % deletions.
    """
    import jiwer

    language = language or detect_language(reference)
    ref = normalize_for_scoring(reference, language)
    hyp = normalize_for_scoring(hypothesis or "", language)
    if not ref:
        return ErrorRates(
            language, ref, hyp, None, None, "reference text is empty after normalisation"
        )
    if language == "zh":
        ref_chars, hyp_chars = ref.replace(" ", ""), hyp.replace(" ", "")
        cer = 1.0 if not hyp_chars else float(jiwer.cer(ref_chars, hyp_chars))
        return ErrorRates(language, ref, hyp, None, cer)
    if not hyp:
        return ErrorRates(language, ref, hyp, 1.0, 1.0)
    return ErrorRates(language, ref, hyp, float(jiwer.wer(ref, hyp)), float(jiwer.cer(ref, hyp)))


# ---------------------------------------------------------------------------------------------
# Audio sanity and verdicts
# ---------------------------------------------------------------------------------------------


@dataclass
class Thresholds:
    """Per-row pass/fail limits (config ``scoring.thresholds``); ``None`` switches a check off."""

    max_wer: float | None = 0.5
    max_cer: float | None = 0.5
    # None: the similarity backend's own default (DEFAULT_MIN_SIMILARITY in similarity.py).
    min_similarity: float | None = None
    min_duration_s: float | None = 0.3
    max_duration_s: float | None = None
    min_rms_dbfs: float | None = -50.0
    max_clip_fraction: float | None = 0.001

    @classmethod
    def from_config(cls, cfg: dict | None) -> Thresholds:
        """Build from a mapping; unknown keys raise ``ValueError`` naming them."""
        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(
                f"scoring.thresholds: unknown key(s) {unknown}; known: {sorted(known)}"
            )
        return cls(**{k: None if v is None else float(v) for k, v in cfg.items()})

    def as_dict(self) -> dict:
        return asdict(self)


# A sample at or above this magnitude counts as clipped (16-bit full scale reads as 0.99997).
CLIP_LEVEL = 0.999
# Peak below this (about -80 dBFS) is digital silence whatever the other limits say.
SILENT_PEAK = 1e-4


def audio_stats(wave: np.ndarray, sample_rate: int) -> dict:
    """Duration, peak, RMS level (dBFS) and clipped-sample fraction of a mono float waveform.

    Non-finite samples make every level ``None`` and set ``non_finite`` to their count.
    """
    wave = np.asarray(wave, dtype=np.float64).reshape(-1)
    n = int(wave.size)
    stats: dict = {"duration_s": n / float(sample_rate) if sample_rate > 0 else 0.0}
    bad = int(n - np.isfinite(wave).sum())
    stats["non_finite"] = bad
    if bad or n == 0:
        stats.update(peak=None, rms_dbfs=None, clip_fraction=None)
        return stats
    peak = float(np.abs(wave).max())
    rms = float(np.sqrt(np.mean(wave * wave)))
    stats["peak"] = peak
    stats["rms_dbfs"] = 20.0 * math.log10(rms) if rms > 0 else -math.inf
    stats["clip_fraction"] = float(np.mean(np.abs(wave) >= CLIP_LEVEL))
    return stats


def audio_problems(stats: dict, t: Thresholds) -> list[str]:
    """Human-readable problems of a waveform under ``t`` (empty list: the audio is usable)."""
    dur = stats["duration_s"]
    if stats.get("non_finite"):
        return [f"audio has {stats['non_finite']} NaN/Inf samples"]
    if dur <= 0:
        return ["audio has no samples"]
    problems = []
    if t.min_duration_s is not None and dur < t.min_duration_s:
        problems.append(f"audio too short ({dur:.3f} s < {t.min_duration_s:g} s)")
    if t.max_duration_s is not None and dur > t.max_duration_s:
        problems.append(f"audio too long ({dur:.1f} s > {t.max_duration_s:g} s)")
    if stats["peak"] < SILENT_PEAK:
        problems.append(f"audio is silent (peak {stats['peak']:.1e})")
    elif t.min_rms_dbfs is not None and stats["rms_dbfs"] < t.min_rms_dbfs:
        problems.append(
            f"audio nearly silent (RMS {stats['rms_dbfs']:.1f} dBFS < {t.min_rms_dbfs:g})"
        )
    if t.max_clip_fraction is not None and stats["clip_fraction"] > t.max_clip_fraction:
        problems.append(
            f"audio clipped ({100 * stats['clip_fraction']:.2f} % of samples at full scale"
            f" > {100 * t.max_clip_fraction:g} %)"
        )
    return problems


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def verdict(row: dict, t: Thresholds, min_similarity: float | None = None) -> dict:
    """Pass/fail of one scored row.

    ``row`` holds the scores (``wer``, ``cer``, ``similarity``: float or ``None``), the audio
    problems (``audio_problems``: list of str) and any ``error`` strings (``errors``). Returns
    ``{"verdict": "pass" | "fail" | "unchecked", "reasons": [...]}``: ``fail`` when any limit
    is broken or the audio is unusable; ``unchecked`` when nothing failed but a configured check
    could not run (no ASR for the language, no speaker prompt given is *not* counted); ``pass``
    otherwise. ``min_similarity`` overrides ``t.min_similarity`` (the backend's default).
    """
    reasons: list[str] = list(row.get("audio_problems") or [])
    failed = bool(reasons)
    unchecked: list[str] = []
    for key, limit in (("wer", t.max_wer), ("cer", t.max_cer)):
        value = row.get(key)
        if limit is None or value is None:
            continue
        if not math.isfinite(value) or value > limit:
            reasons.append(f"{key} {_fmt(value)} > {limit:g}")
            failed = True
    asr_off = row.get("asr") == "none"  # intelligibility switched off by the config
    if row.get("wer") is None and row.get("cer") is None and not failed and not asr_off:
        unchecked.append("intelligibility not measured")
    floor = t.min_similarity if t.min_similarity is not None else min_similarity
    sim = row.get("similarity")
    if sim is not None and floor is not None and (not math.isfinite(sim) or sim < floor):
        reasons.append(f"similarity {_fmt(sim)} < {floor:g}")
        failed = True
    for err in row.get("errors") or []:
        (reasons if failed else unchecked).append(err)
    if failed:
        return {"verdict": "fail", "reasons": reasons}
    if unchecked:
        return {"verdict": "unchecked", "reasons": reasons + unchecked}
    return {"verdict": "pass", "reasons": reasons}
