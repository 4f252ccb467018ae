"""Text front-end: normaliser, tokenizer, segmentation, glossary, errors, silence helper.

Exact reference parity on the fixture sentences is in tests/test_parity.py (-k tokenizer); these
tests pin the behaviours one by one, including inputs the fixtures do not cover.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from tts.text import (
    TextError,
    TextFrontend,
    TextNormalizer,
    TextTokenizer,
    join_with_silence,
    segment_tokens,
    silence_samples,
    spaced_cjk,
    split_segments,
)
from tts.text.normalizer import PINYIN_TONE, respell_pinyin

BPE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "gpt-small" / "bpe.model"
needs_bpe = pytest.mark.skipif(not BPE.is_file(), reason="fixture bpe.model not found")


@pytest.fixture(scope="module")
def norm() -> TextNormalizer:
    return TextNormalizer().load()


@pytest.fixture(scope="module")
def tok(norm) -> TextTokenizer:
    if not BPE.is_file():
        pytest.skip("fixture bpe.model not found")
    return TextTokenizer(BPE, norm)


@pytest.fixture(scope="module")
def frontend(norm) -> TextFrontend:
    if not BPE.is_file():
        pytest.skip("fixture bpe.model not found")
    return TextFrontend(BPE, normalizer=norm)


# ---- normaliser ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # English: money, dates, times, abbreviations, contractions, ellipsis
        (
            "I paid $12.50 on Jan 3rd, 2021.",
            "I paid twelve point five dollars on the third of january , twenty twenty one.",
        ),
        ("Dr. Smith met Mr. Lee at 8:30 AM.", "doctor Smith met Mister Lee at eight thirty AM."),
        ("Where's the station? It's there.", "Where is the station? It is there."),
        ("NASA launched 3 rockets in 2024", "NASA launched three rockets in twenty twenty four"),
        ("Well... maybe", "Well… maybe"),
        # Chinese: numbers, dates, times, units, phone numbers, negative decimals
        ("我昨天买了3本书，花了120块钱。", "我昨天买了三本书,花了一百二十块钱."),
        ("现在是2025年1月11日 20:00。", "现在是二零二五年一月十一日 二十点."),
        ("电话：135-4567-8900", "电话,一三五四五六七八九零零"),
        ("今天的气温是-3.5°C，注意保暖。", "今天的气温是负三点五摄氏度,注意保暖."),
        ("效果666", "效果六百六十六"),
        # tonal pinyin kept (j/q/x + u respelt with v and upper-cased), names, tech terms
        ("“衣裳”不读衣chang2，而是读衣shang5。", "'衣裳'不读衣chang2,而是读衣shang5."),
        ("晕XUAN4是一种GAN3觉", "晕XVAN4是一种GAN3觉"),
        ("克里斯托弗·诺兰执导了《盗梦空间》。", "克里斯托弗-诺兰执导了'盗梦空间'."),
        ("GPT-5-Nano 是一个很小的模型。", "GPT-五-Nano 是一个很小的模型."),
        # mixed text goes the Chinese way; punctuation mapping
        ("今天是个好日子 it's a good day", "今天是个好日子 it is a good day"),
        ("数到3就开始：1、2、3", "数到三就开始,一,二,三"),
        ("这酒...里...有毒...", "这酒…里…有毒…"),
        ("只有,,,才是最好的", "只有…才是最好的"),
    ],
)
def test_normalize(norm, text, expected):
    assert norm.normalize(text) == expected


def test_pronunciation_annotations_survive(norm):
    out = norm.normalize("你好<行|xing2>人，今天3点")
    assert "<行|xing2>" in out
    assert "三点" in out


def test_language_choice():
    assert TextNormalizer.is_chinese("中文 and English")
    assert TextNormalizer.is_chinese("12345")  # no ASCII letter
    assert TextNormalizer.is_chinese("john@example.com")
    assert TextNormalizer.is_chinese("ni3 hao3")  # tonal pinyin
    assert not TextNormalizer.is_chinese("Hello world 2")
    assert not TextNormalizer.is_chinese("beta1 voice2")  # not pinyin


def test_pinyin_pattern_and_respelling():
    found = [m.group(0) for m in PINYIN_TONE.finditer("xuan4 zhong4 er2 ng2 lve4 beta1 babala2")]
    assert found == ["xuan4", "zhong4", "er2", "ng2", "lve4"]
    assert respell_pinyin("ju4") == "JV4"
    assert respell_pinyin("xuan4") == "XVAN4"
    assert respell_pinyin("que4") == "QVE4"
    assert respell_pinyin("xi1") == "XI1"  # j/q/x syllables are upper-cased
    assert respell_pinyin("chang2") == "chang2"  # others untouched


def test_pinyin_inside_longer_syllable_is_not_split(norm):
    # The reference's output here depends on set iteration order; ours keeps each syllable.
    assert norm.normalize("an4 xian4") == "an4 XIAN4"


def test_normalize_rejects_non_text(norm):
    with pytest.raises(TextError, match="string"):
        norm.normalize(None)  # type: ignore[arg-type]


# ---- glossary --------------------------------------------------------------------------------


def test_glossary_from_yaml(tmp_path, norm):
    path = tmp_path / "glossary.yaml"
    path.write_text(
        "M.2:\n  en: M dot two\n  zh: M 二\nC++:\n  en: C plus plus\n  zh: C 加加\nTTS: T T S\n"
        "Inc.:\n  en: Ink\n",
        encoding="utf-8",
    )
    g = TextNormalizer(glossary=path)
    assert g.normalize("An M.2 drive and c++ code") == "An M dot two drive and C plus plus code"
    assert g.normalize("我喜欢C++和TTS") == "我喜欢C 加加和T T S"
    # a term without a reading for the language keeps the glossary's own spelling
    assert g.normalize("中文inc.公司") == "中文Inc.公司"
    # disabled glossary: the normaliser alone
    off = TextNormalizer(enable_glossary=False, glossary=path)
    assert off.normalize("我喜欢TTS") == norm.normalize("我喜欢TTS")


def test_glossary_longest_term_first():
    g = TextNormalizer(glossary={"PCIe": "P-C-I-E", "PCIe 5.0": {"en": "gen five"}})
    assert g.apply_glossary("PCIe 5.0 and pcie", "en") == "gen five and P-C-I-E"
    # terms apply one after the other, so a later term also matches inside earlier readings
    g = TextNormalizer(glossary={"PCIe": "P C I E", "PCIe 5.0": {"en": "PCIE five"}})
    assert g.apply_glossary("PCIe 5.0", "en") == "P C I E five"
    # readings are literal text, not regex templates
    g = TextNormalizer(glossary={"X": r"a\1b"})
    assert g.apply_glossary("x", "en") == r"a\1b"


def test_glossary_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        TextNormalizer(glossary=tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(TextError, match="mapping"):
        TextNormalizer(glossary=bad)
    with pytest.raises(TextError, match="reading"):
        TextNormalizer(glossary={"TTS": None})


# ---- tokenizer -------------------------------------------------------------------------------


def test_spaced_cjk():
    assert spaced_cjk(" 你好世界是 hello world 的中文 ") == "你 好 世 界 是 HELLO WORLD 的 中 文"


def test_tokenize_upper_cases_and_ids_match(tok):
    tokens = tok.tokenize("Hello world!")
    assert tokens == ["▁HE", "LL", "O", "▁WOR", "LD", "!"]
    assert tok.encode("Hello world!") == tok.convert_tokens_to_ids(tokens)
    assert 0 not in tok.encode("Hello world!")  # no BOS/EOS: the GPT adds its own


def test_single_character_and_empty_shortcuts(tok):
    assert tok.tokenize("") == []
    assert tok.tokenize("A") == ["▁A"]
    assert tok.tokenize("a") == ["▁", "a"]  # not upper-cased: unknown, as in the reference
    assert tok.tokenize_with_text("我")[0] == "我"


def test_unknown_tokens_reported(tok, frontend):
    tokens = tok.tokenize("龘龘😀 unknown ©")
    assert tok.unknown_tokens(tokens) == ["龘", "龘", "😀", "©"]
    plan = frontend.process("龘龘😀 unknown ©")
    assert plan.unknown == ["龘", "😀", "©"]
    assert plan.unknown_count == 4
    assert tok.unk_token_id in plan.ids  # kept, not dropped
    assert "龘" in plan.unknown_message()
    assert frontend.process("Hello world!").unknown_message() is None


def test_decode_for_display(tok):
    assert tok.decode(tok.encode("今天天气很好。")) == "今天天气很好."
    assert tok.decode(tok.encode("Hello world!")) == "<sent_0>!"


# ---- segmentation ----------------------------------------------------------------------------


def test_split_at_sentence_marks_and_merge():
    tokens = ["▁A", "▁B", "."] + ["▁C", "▁D", "!"]
    assert split_segments(tokens, max_tokens=4) == [["▁A", "▁B", "."], ["▁C", "▁D", "!"]]
    assert split_segments(tokens, max_tokens=6) == [tokens]  # neighbours merged when they fit


def test_commas_and_hyphens_split_recursively():
    tokens = ["▁A", "▁B", "▁C", ",", "▁D", "▁E", "▁F", "."]
    assert split_segments(tokens, max_tokens=5) == [
        ["▁A", "▁B", "▁C", ","],
        ["▁D", "▁E", "▁F", "."],
    ]
    tokens = ["▁A", "▁B", "▁C", "-", "▁D", "▁E", "▁F", "-", "▁G"]
    assert split_segments(tokens, max_tokens=5) == [
        ["▁A", "▁B", "▁C", "-"],
        ["▁D", "▁E", "▁F", "-", "▁G"],
    ]


def test_apostrophe_after_sentence_mark_is_duplicated():
    # The reference appends the apostrophe to the closing segment and sees it again next.
    tokens = ["▁A", "▁B", ".", "'", "▁C", "▁D", "▁E"]
    assert split_segments(tokens, max_tokens=4) == [["▁A", "▁B", ".", "'"], ["'", "▁C", "▁D", "▁E"]]


def test_long_run_is_chopped_with_warning():
    tokens = [f"▁W{i}" for i in range(25)]
    with pytest.warns(RuntimeWarning, match="cut by length"):
        segments = split_segments(tokens, max_tokens=10)
    # the run is chopped each time it passes max (10 + 1 tokens), then small pieces merge
    assert [len(s) for s in segments] == [10, 1, 10, 4]
    assert [t for s in segments for t in s] == tokens
    assert segment_tokens(tokens, 10).chopped
    assert not segment_tokens(tokens[:10], 10).chopped


def test_quick_streaming_keeps_first_segments_small():
    tokens = ["▁A", "▁B", "."] * 4
    assert len(split_segments(tokens, max_tokens=12)) == 1
    # with quick streaming only the half-max rule merges until enough tokens were seen
    assert split_segments(tokens, max_tokens=12, quick_streaming_tokens=9) == [
        tokens[:6],
        tokens[6:],
    ]


def test_very_long_text_is_segmented(frontend):
    sentence = "The quick brown fox jumps over the lazy dog near the river bank. "
    zh = "春天来了，花园里的花都开了。孩子们在操场上踢足球！"
    text = (sentence + zh) * 30
    plan = frontend.process(text)
    assert len(plan.segments) > 10
    assert all(0 < len(s) <= 120 for s in plan.segments)
    assert [t for s in plan.segments for t in s] == plan.tokens  # nothing lost or repeated
    assert plan.segment_ids == [frontend.tokenizer.convert_tokens_to_ids(s) for s in plan.segments]
    assert not plan.chopped
    # a long run without punctuation is cut by length alone, and says so
    plan = frontend.process("天" * 300)
    assert plan.chopped and all(len(s) <= 120 for s in plan.segments)


# ---- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\n\t", "\u3000"])
def test_empty_text_is_an_error(frontend, text):
    with pytest.raises(TextError, match="empty"):
        frontend.process(text)


@pytest.mark.parametrize("text", ["\u200b\u200b", "\x00\x00"])
def test_text_normalising_to_nothing_is_an_error(frontend, text):
    with pytest.raises(TextError, match="normalises to nothing"):
        frontend.process(text)


def test_too_long_text_is_an_error():
    if not BPE.is_file():
        pytest.skip("fixture bpe.model not found")
    short = TextFrontend(BPE, max_chars=50)
    with pytest.raises(TextError, match="over the maximum of 50"):
        short.process("a" * 51)
    assert issubclass(TextError, ValueError)


def test_non_text_is_an_error(frontend):
    with pytest.raises(TextError):
        frontend.process(42)  # type: ignore[arg-type]


# ---- silence ---------------------------------------------------------------------------------


def test_interval_silence():
    assert silence_samples() == 4410  # 200 ms at 22.05 kHz
    assert silence_samples(0) == 0 and silence_samples(-5) == 0
    assert silence_samples(100, 16000) == 1600
    a, b = torch.ones(1, 5), torch.full((1, 3), 2.0)
    out = join_with_silence([a, b], interval_ms=1, sample_rate=4000)
    assert out.tolist() == [[1.0] * 5 + [0.0] * 4 + [2.0] * 3]
    assert join_with_silence([a], 200).shape == (1, 5)
    assert join_with_silence([a, b], 0).shape == (1, 8)


# ---- import cost -----------------------------------------------------------------------------


def test_import_is_light():
    code = (
        "import sys, tts.text.normalizer, tts.text; "
        "heavy = [m for m in ('pynini', 'tn', 'torch', 'sentencepiece') if m in sys.modules]; "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_backend_shared_and_quiet(norm, capfd):
    capfd.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert TextNormalizer().normalize("第3名") == "第三名"
    assert "WETEXT" not in capfd.readouterr().err
