"""Verification stage (tts.scoring): normalisation, WER/CER, verdicts, bad audio, and the proof on
real speech - English sentences spoken by espeak-ng and flite in several voices and rates,
transcribed by the embedded ASR (pocketsphinx), embedded by the embedded speaker encoder
(resemblyzer's GE2E weights).

The measured figures asserted here are written down in docs/scoring.md. To print them again:
``TTS_SCORING_REPORT=/tmp/scoring.json pytest -q tests/test_scoring.py -k real_speech``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tts.scoring import Scorer, ScoreRequest, read_audio, to_16k
from tts.scoring.metrics import (
    Thresholds,
    audio_problems,
    audio_stats,
    detect_language,
    error_rates,
    normalize_for_scoring,
    verdict,
)

torch.set_num_threads(min(2, torch.get_num_threads()))

# ---------------------------------------------------------------------------------------------
# The real-speech corpus: 24 sentences, each spoken by one of 8 voice settings (3 each).
# ---------------------------------------------------------------------------------------------

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "She sells sea shells by the sea shore every summer morning.",
    "We will meet at the train station at 7 o'clock tomorrow.",
    "The weather today is cold and windy, so wear a warm coat.",
    "How many people came to the party last night?",
    "My brother bought 3 new books about the history of science.",
    "The children played football in the park until it got dark.",
    "Can you tell me the way to the nearest hospital?",
    "The price of the house went up by 20 percent this year.",
    "I would like a cup of coffee with milk and no sugar.",
    "The meeting has been moved to Friday afternoon.",
    "Our teacher asked us to read the first chapter before class.",
    "The company hired 15 new workers in the last month.",
    "It is important to drink enough water during the day.",
    "He opened the window and looked at the garden below.",
    "The plane to London leaves in about two hours.",
    "Turn left at the next corner and walk straight ahead.",
    "Doctors say that regular exercise is good for the heart.",
    "The small boat sailed slowly across the quiet lake.",
    "Where did you put the keys to the car?",
    "There are 12 months in a year and 7 days in a week.",
    "The music was so loud that nobody could hear a word.",
    "Thank you very much for your help with this project.",
]

# (engine, voice, rate): flite's duration_stretch (>1 slower) or espeak-ng's words per minute.
VOICES = [
    ("flite", "slt", 1.0),
    ("flite", "rms", 1.0),
    ("flite", "awb", 1.0),
    ("flite", "kal16", 1.0),
    ("espeak-ng", "en-us+f2", 150),
    ("flite", "slt", 1.25),
    ("flite", "rms", 0.85),
    ("espeak-ng", "en-us+klatt4", 140),
]

# Bounds asserted on the corpus; the measured values are in docs/scoring.md (the bounds leave a
# margin over them for other builds of the synthesisers).
MAX_MEAN_WER_ALL = 0.25
MAX_MEAN_WER_FLITE = 0.15
MAX_MEAN_WER_ESPEAK = 0.70
MIN_MEAN_WER_WRONG_TEXT = 0.85
MIN_SIMILARITY_MARGIN = 0.2  # mean same-voice minus mean different-voice similarity


def _speak(engine: str, voice: str, rate: float, text: str, out: Path) -> None:
    if engine == "flite":
        cmd = [
            "flite",
            "-voice",
            voice,
            "--setf",
            f"duration_stretch={rate}",
            "-t",
            text,
            "-o",
            str(out),
        ]
    else:
        cmd = ["espeak-ng", "-v", voice, "-s", str(int(rate)), "-w", str(out), text]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


def _need_synthesisers() -> None:
    missing = [t for t in ("espeak-ng", "flite") if shutil.which(t) is None]
    if missing:
        msg = f"{missing} not installed (apt-get install -y espeak-ng flite)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[dict]:
    """The 24 spoken sentences as WAV files, with their voice and text."""
    _need_synthesisers()
    root = tmp_path_factory.mktemp("speech")
    rows = []
    for i, text in enumerate(SENTENCES):
        engine, voice, rate = VOICES[i % len(VOICES)]
        path = root / f"{i:02d}.wav"
        _speak(engine, voice, rate, text, path)
        rows.append(
            {
                "id": f"s{i:02d}",
                "audio": path,
                "text": text,
                "engine": engine,
                "voice": voice,
                "rate": rate,
                "speaker_id": f"{engine}:{voice}",
            }
        )
    return rows


def _same_voice_prompt(corpus: list[dict], k: int) -> Path:
    """Another sentence by the same voice as row k (the next one, cyclically)."""
    group = [r for r in corpus if r["speaker_id"] == corpus[k]["speaker_id"]]
    j = group.index(corpus[k])
    return group[(j + 1) % len(group)]["audio"]


@pytest.fixture(scope="module")
def scored(corpus) -> list[dict]:
    """Every corpus row scored by the default Scorer (pocketsphinx + resemblyzer) against
    another sentence of the same voice as speaker prompt."""
    scorer = Scorer({})
    requests = [
        ScoreRequest(r["audio"], r["text"], _same_voice_prompt(corpus, k), id=r["id"])
        for k, r in enumerate(corpus)
    ]
    return scorer.score_rows(requests)


# ---------------------------------------------------------------------------------------------
# Normalisation and error rates
# ---------------------------------------------------------------------------------------------


def test_normalisation_case_punctuation_apostrophes():
    assert normalize_for_scoring("Hello, World!  It’s “fine”.") == normalize_for_scoring(
        "hello world it's fine"
    )
    assert "'" not in normalize_for_scoring("'quoted' words")
    assert normalize_for_scoring("Don't stop.").endswith("stop")


def test_number_read_correctly_is_not_an_error():
    rates = error_rates("There are 12 months in a year.", "there are twelve months in a year", "en")
    assert rates.wer == 0.0 and rates.cer == 0.0, (rates.reference_norm, rates.hypothesis_norm)
    rates = error_rates("We sold 15 cars.", "we sold fifty cars", "en")
    assert rates.wer == pytest.approx(1 / 4)


def test_wer_and_cer_values():
    r = error_rates("the cat sat on the mat", "the cat sat on a mat", "en")
    assert r.wer == pytest.approx(1 / 6)
    assert 0 < r.cer < r.wer
    empty_hyp = error_rates("hello there", "", "en")
    assert empty_hyp.wer == 1.0 and empty_hyp.cer == 1.0
    no_ref = error_rates("...", "anything", "en")
    assert no_ref.wer is None and no_ref.cer is None and no_ref.note


def test_chinese_is_scored_by_characters():
    assert detect_language("今天天气很好。") == "zh" and detect_language("Fine, thanks.") == "en"
    exact = error_rates("今天天气很好。", "今天 天气 很好", "zh")
    assert exact.wer is None and exact.cer == 0.0
    one_wrong = error_rates("今天天气很好", "今天天汽很好", "zh")
    assert one_wrong.cer == pytest.approx(1 / 6)


# ---------------------------------------------------------------------------------------------
# Audio sanity and verdicts
# ---------------------------------------------------------------------------------------------

SR = 16000


def _tone(seconds: float, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_audio_problems_each_kind():
    t = Thresholds()
    assert audio_problems(audio_stats(_tone(1.0), SR), t) == []
    assert "silent" in audio_problems(audio_stats(np.zeros(SR, np.float32), SR), t)[0]
    assert "nearly silent" in audio_problems(audio_stats(_tone(1.0, 1e-3), SR), t)[0]
    assert "too short" in audio_problems(audio_stats(_tone(0.1), SR), t)[0]
    assert "clipped" in audio_problems(audio_stats(np.clip(_tone(1.0, 3.0), -1, 1), SR), t)[0]
    nan = _tone(1.0)
    nan[100] = np.nan
    assert "NaN" in audio_problems(audio_stats(nan, SR), t)[0]
    assert audio_problems(audio_stats(np.zeros(0, np.float32), SR), t) == ["audio has no samples"]
    long = Thresholds(max_duration_s=0.5)
    assert "too long" in audio_problems(audio_stats(_tone(1.0), SR), long)[0]


def test_verdict_rules():
    t = Thresholds(max_wer=0.2, max_cer=None, min_similarity=0.7)
    good = {"wer": 0.1, "cer": 0.05, "similarity": 0.8}
    assert verdict(good, t) == {"verdict": "pass", "reasons": []}
    bad = verdict({"wer": 0.5, "cer": 0.4, "similarity": 0.5}, t)
    assert bad["verdict"] == "fail" and len(bad["reasons"]) == 2
    assert (
        verdict({"wer": None, "cer": None, "errors": ["ASR x does not do 'zh'"]}, t)["verdict"]
        == "unchecked"
    )
    assert (
        verdict({"wer": 0.0, "cer": 0.0, "audio_problems": ["audio is silent"]}, t)["verdict"]
        == "fail"
    )
    # no threshold of its own: the backend default applies
    assert verdict({"wer": 0.0, "similarity": 0.5}, Thresholds(), 0.75)["verdict"] == "fail"
    with pytest.raises(ValueError, match="unknown key"):
        Thresholds.from_config({"max_werr": 0.1})


def test_config_errors_are_raised_early(tmp_path):
    with pytest.raises(ValueError, match="unknown key"):
        Scorer({"asr_backend": "whisper"})
    with pytest.raises(ValueError, match="unknown backend"):
        Scorer({"asr": "kaldi"})
    with pytest.raises(ValueError, match="whisper_dir"):
        Scorer({"asr": "whisper"})
    with pytest.raises(ValueError, match="holds no Whisper model"):
        Scorer({"asr": "whisper", "whisper_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="checkpoints"):
        Scorer({"similarity": "campplus"})
    with pytest.raises(ValueError, match="similarity"):
        Scorer({"similarity": "wavlm"})


def test_bad_audio_rows_never_crash(tmp_path, corpus):
    """Silence, NaN, clipping, too short, non-audio and missing files: one clear row each."""
    files = {
        "silent": (np.zeros(SR, np.float32), "PCM_16"),
        "nan": (np.where(np.arange(SR) == 50, np.nan, _tone(1.0)).astype(np.float32), "FLOAT"),
        "clipped": (np.clip(_tone(1.0, 4.0), -1, 1), "PCM_16"),
        "short": (_tone(0.1), "PCM_16"),
    }
    paths = {}
    for name, (wave, subtype) in files.items():
        paths[name] = tmp_path / f"{name}.wav"
        sf.write(paths[name], wave, SR, subtype=subtype)
    paths["garbage"] = tmp_path / "garbage.wav"
    paths["garbage"].write_bytes(b"this is not a wav file at all" * 10)
    paths["missing"] = tmp_path / "missing.wav"
    speaker = corpus[0]["audio"]
    scorer = Scorer({})
    rows = scorer.score_rows(
        [ScoreRequest(p, "Hello there.", speaker, id=n) for n, p in paths.items()]
    )
    expect = {
        "silent": "silent",
        "nan": "NaN",
        "clipped": "clipped",
        "short": "too short",
        "garbage": "not a readable audio file",
        "missing": "no such file",
    }
    for row in rows:
        assert row["verdict"] == "fail", row
        assert expect[row["id"]] in row["reasons"], row
        json.dumps(row, allow_nan=False)  # every value is plain JSON
    # a bad speaker prompt costs the similarity only
    bad_prompt = scorer.score(corpus[0]["audio"], corpus[0]["text"], paths["silent"])
    assert bad_prompt["similarity"] is None and "speaker prompt is silent" in bad_prompt["reasons"]
    assert bad_prompt["wer"] is not None


def test_undefined_similarity_is_a_clear_row(corpus, monkeypatch):
    scorer = Scorer({"asr": "none"})
    monkeypatch.setattr(scorer.encoder(), "embed", lambda wave: torch.zeros(256))
    row = scorer.score(corpus[0]["audio"], corpus[0]["text"], corpus[1]["audio"])
    assert row["similarity"] is None and row["verdict"] == "unchecked", row
    assert "similarity undefined" in row["reasons"]
    json.dumps(row, allow_nan=False)


def test_asr_and_similarity_switched_off(corpus):
    row = Scorer({"asr": "none", "similarity": "none"}).score(
        corpus[0]["audio"], corpus[0]["text"], corpus[1]["audio"]
    )
    assert row["verdict"] == "pass" and row["asr"] == "none", row
    assert row["wer"] is None and row["similarity"] is None and row["transcript"] is None


def test_pocketsphinx_refuses_chinese_with_a_clear_row(corpus):
    row = Scorer({}).score(corpus[0]["audio"], "今天天气很好。")
    assert row["language"] == "zh" and row["verdict"] == "unchecked"
    assert "does not transcribe 'zh'" in row["reasons"] and row["cer"] is None


# ---------------------------------------------------------------------------------------------
# Real speech: intelligibility and similarity on espeak-ng / flite voices
# ---------------------------------------------------------------------------------------------


def _mean(xs):
    return float(np.mean(xs)) if xs else float("nan")


def test_real_speech_wer_and_similarity(corpus, scored):
    wer = [r["wer"] for r in scored]
    assert all(w is not None for w in wer), scored
    by_engine = {
        e: [r["wer"] for r, c in zip(scored, corpus, strict=True) if c["engine"] == e]
        for e in ("flite", "espeak-ng")
    }
    # wrong text: each transcript scored against the next sentence's text
    wrong = [
        error_rates(SENTENCES[(i + 1) % len(SENTENCES)], r["transcript"], "en").wer
        for i, r in enumerate(scored)
    ]
    same_sim = [r["similarity"] for r in scored]

    # similarity between voices: every pair of corpus rows, different sentences
    from tts.scoring.similarity import ResemblyzerEncoder, cosine_similarity

    enc = ResemblyzerEncoder()
    emb = [enc.embed(to_16k(*read_audio(c["audio"]))) for c in corpus]
    same_pairs, diff_pairs = [], []
    for a in range(len(corpus)):
        for b in range(a + 1, len(corpus)):
            s = cosine_similarity(emb[a], emb[b])
            (
                same_pairs if corpus[a]["speaker_id"] == corpus[b]["speaker_id"] else diff_pairs
            ).append(s)
    per_voice = {}
    for sid in sorted({c["speaker_id"] for c in corpus}):
        idx = [k for k, c in enumerate(corpus) if c["speaker_id"] == sid]
        other = [k for k in range(len(corpus)) if k not in idx]
        per_voice[sid] = {
            "same": _mean([cosine_similarity(emb[a], emb[b]) for a in idx for b in idx if a < b]),
            "max_other_voice": max(
                _mean(
                    [
                        cosine_similarity(emb[a], emb[b])
                        for a in idx
                        for b in other
                        if corpus[b]["speaker_id"] == o
                    ]
                )
                for o in {corpus[b]["speaker_id"] for b in other}
            ),
        }

    figures = {
        "asr": scored[0]["asr"],
        "similarity_backend": scored[0]["similarity_backend"],
        "rows": len(scored),
        "mean_wer_all": _mean(wer),
        "mean_wer_flite": _mean(by_engine["flite"]),
        "mean_wer_espeak": _mean(by_engine["espeak-ng"]),
        "mean_cer_all": _mean([r["cer"] for r in scored]),
        "mean_wer_wrong_text": _mean(wrong),
        "min_wer_wrong_text": float(min(wrong)),
        "mean_similarity_same_voice": _mean(same_pairs),
        "mean_similarity_different_voice": _mean(diff_pairs),
        "max_similarity_different_voice": float(max(diff_pairs)),
        "min_similarity_same_voice_rows": float(min(same_sim)),
        "per_voice": per_voice,
        "rows_detail": [
            {k: r[k] for k in ("id", "wer", "similarity", "transcript", "verdict")}
            | {"voice": f"{c['engine']}:{c['voice']}@{c['rate']}"}
            for r, c in zip(scored, corpus, strict=True)
        ],
    }
    if os.environ.get("TTS_SCORING_REPORT"):
        Path(os.environ["TTS_SCORING_REPORT"]).write_text(json.dumps(figures, indent=1))

    assert figures["asr"].startswith("pocketsphinx") and figures["similarity_backend"].startswith(
        "resemblyzer"
    )
    assert figures["mean_wer_all"] <= MAX_MEAN_WER_ALL, figures
    assert figures["mean_wer_flite"] <= MAX_MEAN_WER_FLITE, figures
    assert figures["mean_wer_espeak"] <= MAX_MEAN_WER_ESPEAK, figures
    # wrong text scores far worse than the right text
    assert figures["mean_wer_wrong_text"] >= MIN_MEAN_WER_WRONG_TEXT, figures
    assert figures["mean_wer_wrong_text"] - figures["mean_wer_all"] >= 0.5, figures
    for right, bad, c in zip(wer, wrong, corpus, strict=True):
        if c["engine"] == "flite":
            assert bad > right + 0.3, (c, right, bad)
    # the same voice is more similar than different voices, for every voice
    assert figures["mean_similarity_same_voice"] - figures["mean_similarity_different_voice"] >= (
        MIN_SIMILARITY_MARGIN
    ), figures
    for sid, v in per_voice.items():
        assert v["same"] > v["max_other_voice"], (sid, v)
    # the default thresholds pass every flite row with the right text and the same voice
    for r, c in zip(scored, corpus, strict=True):
        if c["engine"] == "flite" and r["wer"] <= 0.5:
            assert r["similarity"] >= 0.75, (r, c)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the package's scipy/audioread imports
def test_resemblyzer_reimplementation_matches_the_package(corpus):
    """Our torch GE2E pipeline gives the embedding of resemblyzer's own (librosa) code."""
    pytest.importorskip("librosa")
    from resemblyzer import VoiceEncoder, preprocess_wav

    from tts.scoring.similarity import ResemblyzerEncoder

    path = corpus[1]["audio"]
    ref = VoiceEncoder("cpu", verbose=False).embed_utterance(preprocess_wav(path))
    ours = ResemblyzerEncoder().embed(to_16k(*read_audio(path))).numpy()
    assert np.abs(ours - ref).max() < 1e-4


# ---------------------------------------------------------------------------------------------
# Official / configurable backends, plumbing only (no real weights on this machine)
# ---------------------------------------------------------------------------------------------


def _tiny_whisper(out: Path) -> Path:
    """A random-weight Whisper with a byte-level tokenizer, in the on-disk layout of a real one."""
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + n) for n in range(len(extra))]
    vocab = {ch: i for i, ch in enumerate(chars)}
    specials = [
        "<|endoftext|>",
        "<|startoftranscript|>",
        "<|en|>",
        "<|zh|>",
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nocaptions|>",
        "<|notimestamps|>",
    ]
    for s in specials:
        vocab[s] = len(vocab)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n")
    eot = "<|endoftext|>"
    tok = WhisperTokenizer(
        str(out / "vocab.json"),
        str(out / "merges.txt"),
        unk_token=eot,
        bos_token=eot,
        eos_token=eot,
        pad_token=eot,
    )
    tok.add_special_tokens({"additional_special_tokens": specials[1:]})
    WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tok
    ).save_pretrained(out)
    ids = {s: vocab[s] for s in specials}
    cfg = WhisperConfig(
        vocab_size=len(vocab),
        num_mel_bins=80,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_source_positions=1500,
        max_target_positions=32,
        decoder_start_token_id=ids["<|startoftranscript|>"],
        eos_token_id=ids[eot],
        pad_token_id=ids[eot],
        bos_token_id=ids[eot],
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(cfg)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=cfg.decoder_start_token_id,
        eos_token_id=ids[eot],
        pad_token_id=ids[eot],
        max_length=8,
        is_multilingual=True,
        lang_to_id={"<|en|>": ids["<|en|>"], "<|zh|>": ids["<|zh|>"]},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"],
    )
    model.save_pretrained(out)
    return out


def test_whisper_backend_from_a_local_directory(tmp_path, corpus):
    """Config selects Whisper from a local directory; the report names it (random weights, so
    only the plumbing is checked: batching, long-form, both languages, the ASR name)."""
    model_dir = _tiny_whisper(tmp_path / "whisper-tiny-random")
    scorer = Scorer(
        {
            "asr": {"en": "whisper", "zh": "whisper"},
            "whisper_dir": str(model_dir),
            "similarity": "none",
        }
    )
    rows = scorer.score_rows(
        [
            ScoreRequest(corpus[0]["audio"], corpus[0]["text"]),
            ScoreRequest(corpus[1]["audio"], corpus[1]["text"]),
            ScoreRequest(corpus[2]["audio"], "今天天气很好。"),
        ]
    )
    for row in rows:
        assert row["asr"] == "whisper:whisper-tiny-random", row
        assert isinstance(row["transcript"], str) and row["cer"] is not None, row
        assert row["similarity"] is None and row["similarity_backend"] is None
    assert rows[2]["language"] == "zh" and rows[2]["wer"] is None
    long_wave = np.tile(to_16k(*read_audio(corpus[0]["audio"])), 12)[: 31 * SR]
    assert isinstance(scorer.asr("en").transcribe([long_wave], "en")[0], str)


def test_campplus_backend_from_a_checkpoint_set(tmp_path, corpus):
    """similarity: campplus loads campplus_cn_common.bin of a checkpoint set through the strict
    loader (random weights here: the number proves nothing, the plumbing does)."""
    from tts.models.campplus import CAMPPlus

    (tmp_path / "config.yaml").write_text("demo: true\ncampplus: {}\n")
    torch.manual_seed(0)
    torch.save(CAMPPlus.from_config({}).state_dict(), tmp_path / "campplus_cn_common.bin")
    scorer = Scorer({"similarity": "campplus", "checkpoints": str(tmp_path), "asr": "pocketsphinx"})
    enc = scorer.encoder()
    emb = enc.embed(to_16k(*read_audio(corpus[0]["audio"])))
    assert emb.shape == (192,) and torch.isfinite(emb).all()
    row = scorer.score(corpus[0]["audio"], corpus[0]["text"], corpus[0]["audio"])
    assert row["similarity_backend"] == "campplus-DEMO" and row["similarity"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def test_tts_score_cli_prints_one_json_object(corpus):
    from tts.scoring.cli import add_score_parser, run_score

    parser = argparse.ArgumentParser()
    add_score_parser(parser.add_subparsers(dest="command"))
    row = corpus[0]
    args = parser.parse_args(
        [
            "score",
            "--audio",
            str(row["audio"]),
            "--text",
            row["text"],
            "--speaker",
            str(_same_voice_prompt(corpus, 0)),
            "--asr",
            "pocketsphinx",
        ]
    )
    assert args.func is run_score
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = run_score(args)
    out = json.loads(buf.getvalue())
    assert rc == 0 and out["verdict"] == "pass", out
    assert {"transcript", "wer", "cer", "similarity", "asr", "similarity_backend"} <= set(out)
    assert out["asr"].startswith("pocketsphinx") and out["wer"] <= 0.2
