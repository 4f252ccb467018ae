"""Text normalisation as IndexTTS2 does it: numbers, dates, units... spelled out in words.

The heavy lifting is WeTextProcessing's finite-state normalisers (``tn.chinese`` and
``tn.english``, the backend the reference uses on Linux). Around them sit the reference's own
pre- and post-processing, reproduced here because the checkpoints were trained on its output:

1. ``<word|reading>`` pronunciation annotations are hidden behind placeholders and restored last.
2. Language choice: Chinese if the text has a CJK ideograph, has no ASCII letter, is an e-mail
   address, or holds a tonal pinyin syllable (``xuan4``); English otherwise.
3. ``what's``/``it's``... become ``what is``/``it is``; the user glossary is applied.
4. Hyphens inside letter-initial technical terms (``GPT-5-nano``) are protected so that the
   normaliser does not read them as minus signs; on the Chinese path tonal pinyin syllables and
   hyphenated Chinese names (``克里斯托弗·诺兰``) are protected too.
5. After the normaliser: restore what was protected (j/q/x + u pinyin is respelt with ``v`` and
   upper-cased), then map CJK punctuation, quotes and brackets to the few ASCII marks the
   tokenizer knows.

Importing this module is cheap: the finite-state machines load on the first ``normalize`` call
(a few seconds; the very first use on a machine also compiles the Chinese grammar, ~15 s, into a
cache directory) and are shared by every :class:`TextNormalizer` of the process.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from tts.text.errors import TextError

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Patterns. Each one accepts the same strings as the reference's.

# ``<字|读音>``: a pronunciation annotation the G2P stage reads later; kept verbatim.
_PRON_ANNOTATION = re.compile(r"<[^|>\n]+\|[^>\n]+>")

_HAS_IDEOGRAPH = re.compile(r"[\u4e00-\u9fff]")
_HAS_ASCII_LETTER = re.compile(r"[a-zA-Z]")
_EMAIL = re.compile(r"^[a-zA-Z0-9]+@[a-zA-Z0-9]+\.[a-zA-Z]+$")

# A tonal pinyin syllable: optional initial, a final (or the bare ``ng``/``er``), tone 1-5,
# not preceded by a Latin letter (so ``beta1`` and ``voice2`` are not pinyin). Case-insensitive.
_PINYIN_INITIAL = r"(?:[zcs]h|[bpmfdtnlgkhjqxzcsryw])"
_PINYIN_FINAL = (
    r"(?:[uvü]ang?|i[ao]ng|[aeio]ng|ia[no]|uai|[aeiuv]n|[ae]i|u[aio]|ao|ou|i[aue]|[uüv]e"
    r"|[aeiouüv])"
)
PINYIN_TONE = re.compile(
    rf"(?<![a-z])(?:{_PINYIN_INITIAL}?{_PINYIN_FINAL}|ng|er)[1-5]", re.IGNORECASE
)
# j/q/x followed by u/ü is written with v in the tokenizer's vocabulary (ju4 -> JV4).
_JQX_U = re.compile(r"([jqx])[uü](n|e|an)*(\d)", re.IGNORECASE)

# Chinese names joined by a middle dot or dash: 克里斯托弗·诺兰, 约瑟夫·高登-莱维特.
_CHINESE_NAME = re.compile(r"[\u4e00-\u9fff]+(?:[-·—][\u4e00-\u9fff]+){1,2}")

# Letter-initial words with inner hyphens: GPT-5-nano, F5-TTS (not phone numbers 135-4567).
_TECH_TERM = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)+")
_HYPHEN_MARK = "<H>"
_HYPHEN_MARK_SPACED = re.compile(r"\s*<H>\s*")

# Only these English "X's" are expanded to "X is" (not possessives).
_CONTRACTION = re.compile(
    r"(what|where|who|which|how|here|there|it|he|she|that|this)'s", re.IGNORECASE
)

# Punctuation map applied to the normaliser's output. Order matters: at each position the
# first listed key that matches wins (so "，" shadows "，，，", exactly as in the reference).
_CHAR_MAP: tuple[tuple[str, str], ...] = (
    ("：", ","),
    ("；", ","),
    (";", ","),
    ("，", ","),
    ("。", "."),
    ("！", "!"),
    ("？", "?"),
    ("\n", " "),
    ("·", "-"),
    ("、", ","),
    ("...", "…"),
    (",,,", "…"),
    ("，，，", "…"),
    ("……", "…"),
    ("“", "'"),
    ("”", "'"),
    ('"', "'"),
    ("‘", "'"),
    ("’", "'"),
    ("（", "'"),
    ("）", "'"),
    ("(", "'"),
    (")", "'"),
    ("《", "'"),
    ("》", "'"),
    ("【", "'"),
    ("】", "'"),
    ("[", "'"),
    ("]", "'"),
    ("—", "-"),
    ("～", "-"),
    ("~", "-"),
    ("「", "'"),
    ("」", "'"),
    (":", ","),
)
# The Chinese path also reads "$" as a full stop (the normaliser has already spoken amounts).
_ZH_CHAR_MAP: tuple[tuple[str, str], ...] = (("$", "."), *_CHAR_MAP)


def _char_mapper(table: tuple[tuple[str, str], ...]) -> Callable[[str], str]:
    lookup = dict(table)
    pattern = re.compile("|".join(re.escape(key) for key, _ in table))
    return lambda text: pattern.sub(lambda m: lookup[m.group()], text)


_map_chars = _char_mapper(_CHAR_MAP)
_map_chars_zh = _char_mapper(_ZH_CHAR_MAP)


def _letters(index: int) -> str:
    """0 -> a, 25 -> z, 26 -> aa, ... (bijective base 26): distinct ASCII placeholder tags."""
    out = ""
    while True:
        out = chr(ord("a") + index % 26) + out
        index = index // 26 - 1
        if index < 0:
            return out


class _Placeholders:
    """Swap every match of a pattern for ``<prefix_tag>`` before normalising, and back after.

    Equal matches share one placeholder; tags follow first appearance.
    """

    def __init__(self, template: str):
        self.template = template
        self.originals: dict[str, str] = {}  # placeholder -> original text

    def hide(self, pattern: re.Pattern[str], text: str) -> str:
        by_text: dict[str, str] = {}

        def swap(m: re.Match[str]) -> str:
            found = m.group(0)
            if found not in by_text:
                key = self.template.format(_letters(len(self.originals)))
                by_text[found] = key
                self.originals[key] = found
            return by_text[found]

        return pattern.sub(swap, text)

    def restore(self, text: str, transform: Callable[[str], str] = lambda s: s) -> str:
        for key, original in self.originals.items():
            text = text.replace(key, transform(original))
        return text


def respell_pinyin(syllable: str) -> str:
    """j/q/x syllables as the vocabulary spells them: ``xuan4`` -> ``XVAN4``, ``ju3`` -> ``JV3``.

    Other syllables are returned unchanged (case kept).
    """
    if syllable[0] not in "jqxJQX":
        return syllable
    return _JQX_U.sub(r"\g<1>v\g<2>\g<3>", syllable).upper()


# --------------------------------------------------------------------------------------------
# Backend: WeTextProcessing, loaded once per process.

_BACKEND_LOCK = threading.Lock()
_BACKEND: tuple[object, object] | None = None

_ZH_FILES = ("zh_tn_tagger.fst", "zh_tn_verbalizer.fst")


def cache_root() -> Path:
    """Where compiled normaliser grammars are kept (``TTS_TEXT_CACHE`` overrides)."""
    if os.environ.get("TTS_TEXT_CACHE"):
        return Path(os.environ["TTS_TEXT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "indextts2-pipeline" / "text"


def _zh_cache_dir() -> Path:
    from importlib.metadata import version

    tag = f"wetextprocessing-{version('WeTextProcessing')}_pynini-{version('pynini')}"
    # The grammar options are part of the key: the reference keeps interjections and erhua.
    return cache_root() / tag / "zh_tn_keep-interjections_keep-erhua"


def _zh_ready(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _ZH_FILES)


def _load_zh(remove_interjections: bool = False, remove_erhua: bool = False) -> object:
    """The Chinese normaliser, compiling its grammar into the cache on first use.

    The compiled FSTs are written to a private temporary folder and moved into place, so that
    concurrent first uses (parallel workflow jobs) never read a half-written file.
    """
    from tn.chinese.normalizer import Normalizer

    options = {"remove_interjections": remove_interjections, "remove_erhua": remove_erhua}
    final = _zh_cache_dir()
    if not _zh_ready(final):
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
        except OSError:  # read-only cache: use the temporary folder instead
            final = (
                Path(tempfile.gettempdir())
                / "indextts2-pipeline-text"
                / final.relative_to(final.parents[1])
            )
            final.parent.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
        try:
            if not _zh_ready(final):
                log.info("compiling the Chinese text-normalisation grammar into %s", final)
                Normalizer(cache_dir=str(work), overwrite_cache=True, **options)
                final.mkdir(exist_ok=True)
                for name in _ZH_FILES:
                    os.replace(work / name, final / name)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return Normalizer(cache_dir=str(final), overwrite_cache=False, **options)


def _load_en() -> object:
    from tn.english.normalizer import Normalizer

    return Normalizer(overwrite_cache=False)  # the grammar shipped inside the wheel


def load_backend() -> tuple[object, object]:
    """(Chinese, English) WeTextProcessing normalisers, shared by the whole process."""
    global _BACKEND
    if _BACKEND is None:
        with _BACKEND_LOCK:
            if _BACKEND is None:
                import tn.processor  # noqa: F401  (sets up the "wetext" logger)

                # WeTextProcessing logs every grammar load at INFO on its own handler.
                logging.getLogger("wetext").setLevel(logging.WARNING)
                _BACKEND = (_load_zh(), _load_en())
    return _BACKEND


# --------------------------------------------------------------------------------------------


class TextNormalizer:
    """Spell out numbers, dates, units... in Chinese, English and mixed text.

    ``glossary`` (a YAML path or a mapping) gives readings for terms, applied before normalising
    when ``enable_glossary`` is true: ``{"C++": {"en": "C plus plus", "zh": "C 加加"},
    "TTS": "T T S"}``. Matching is case-insensitive, longest term first; a mapping value without
    the current language leaves the term as it is.
    """

    def __init__(
        self,
        enable_glossary: bool = True,
        glossary: str | os.PathLike | Mapping | None = None,
    ):
        self.enable_glossary = enable_glossary
        self.glossary: dict[str, str | dict[str, str]] = {}
        if isinstance(glossary, Mapping):
            self.load_glossary(glossary)
        elif glossary is not None:
            self.load_glossary_from_yaml(glossary)

    # ---- glossary ---------------------------------------------------------------------------

    def load_glossary(self, entries: Mapping) -> None:
        """Add or replace glossary entries (term -> reading, or term -> {lang: reading})."""
        for term, reading in entries.items():
            term = str(term)
            if not term:
                raise TextError("glossary: empty term")
            if isinstance(reading, Mapping):
                bad = [k for k, v in reading.items() if not isinstance(v, str | int | float)]
                if bad:
                    raise TextError(f"glossary: term {term!r} has a non-text reading for {bad}")
                self.glossary[term] = {str(k): str(v) for k, v in reading.items()}
            elif isinstance(reading, str | int | float) and not isinstance(reading, bool):
                self.glossary[term] = str(reading)
            else:
                raise TextError(f"glossary: term {term!r} has no usable reading ({reading!r})")

    def load_glossary_from_yaml(self, path: str | os.PathLike) -> None:
        """Replace the glossary with the YAML mapping in ``path`` (as the reference does)."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"glossary file not found: {path}")
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise TextError(f"glossary {path}: expected a mapping of term -> reading")
        self.glossary = {}
        self.load_glossary(data)

    def save_glossary_to_yaml(self, path: str | os.PathLike) -> None:
        import yaml

        with open(path, "w", encoding="utf-8") as fh:
            yaml.safe_dump(self.glossary, fh, allow_unicode=True, default_flow_style=False)

    def apply_glossary(self, text: str, lang: str) -> str:
        """Replace glossary terms by their reading in ``lang`` ("zh" or "en")."""
        for term in sorted(self.glossary, key=len, reverse=True):  # stable: ties keep file order
            reading = self.glossary[term]
            if isinstance(reading, dict):
                reading = reading.get(lang, term)
            text = re.sub(re.escape(term), lambda _m, r=reading: r, text, flags=re.IGNORECASE)
        return text

    # ---- language ---------------------------------------------------------------------------

    @staticmethod
    def is_chinese(text: str) -> bool:
        """True when the text takes the Chinese path (see the module docstring)."""
        if _HAS_IDEOGRAPH.search(text) or not _HAS_ASCII_LETTER.search(text):
            return True
        if _EMAIL.match(text):
            return True
        return PINYIN_TONE.search(text) is not None

    # ---- normalise --------------------------------------------------------------------------

    def load(self) -> TextNormalizer:
        """Load the finite-state normalisers now (otherwise the first ``normalize`` does)."""
        load_backend()
        return self

    def normalize(self, text: str) -> str:
        """The text as the tokenizer should see it (may be empty if nothing speakable is left)."""
        if not isinstance(text, str):
            raise TextError(f"text must be a string, not {type(text).__name__}")
        zh_tn, en_tn = load_backend()
        annotations = _Placeholders("PRONPLACEHOLDER{}PRONPLACEHOLDER")
        text = annotations.hide(_PRON_ANNOTATION, text)
        if self.is_chinese(text):
            result = self._normalize_zh(text, zh_tn)
        else:
            result = self._normalize_en(text, en_tn)
        return annotations.restore(result)

    def _normalize_zh(self, text: str, backend) -> str:
        text = _CONTRACTION.sub(r"\1 is", text)
        if self.enable_glossary:
            text = self.apply_glossary(text, "zh")
        text, has_terms = self._protect_hyphens(text.rstrip())
        pinyin = _Placeholders("<pinyin_{}>")
        text = pinyin.hide(PINYIN_TONE, text)
        names = _Placeholders("<n_{}>")
        text = names.hide(_CHINESE_NAME, text)
        try:
            result = backend.normalize(text)
        except Exception:  # the reference also carries on with nothing for this text
            log.exception("Chinese text normalisation failed for %r", text)
            result = ""
        result = names.restore(result)
        result = pinyin.restore(result, respell_pinyin)
        if has_terms:
            result = _HYPHEN_MARK_SPACED.sub("-", result)
        return _map_chars_zh(result)

    def _normalize_en(self, text: str, backend) -> str:
        text = _CONTRACTION.sub(r"\1 is", text)
        if self.enable_glossary:
            text = self.apply_glossary(text, "en")
        protected, has_terms = self._protect_hyphens(text)
        try:
            result = backend.normalize(protected)
            if has_terms:
                result = _HYPHEN_MARK_SPACED.sub("-", result)
        except Exception:  # the reference falls back to the un-normalised text
            log.exception("English text normalisation failed for %r", protected)
            result = text
        return _map_chars(result)

    @staticmethod
    def _protect_hyphens(text: str) -> tuple[str, bool]:
        found = False

        def mark(m: re.Match[str]) -> str:
            nonlocal found
            found = True
            return m.group(0).replace("-", _HYPHEN_MARK)

        return _TECH_TERM.sub(mark, text), found
