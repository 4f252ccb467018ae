"""``tts score``: intelligibility and speaker similarity of one WAV file, as one JSON object.

The lead's tts/cli.py calls :func:`add_score_parser` on its sub-parsers; the parser's ``func``
is :func:`run_score`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys


def _load_config(path: str | None) -> dict:
    """The ``scoring`` section of a YAML config (or the whole file when it has no such key)."""
    if not path:
        return {}
    import yaml

    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping")
    section = data.get("scoring", data)
    return dict(section or {})


def add_score_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``tts score`` on the ``tts`` sub-parsers."""
    s = subparsers.add_parser(
        "score",
        help="WER/CER and speaker similarity of one generated WAV (prints one JSON object)",
        description=(
            "Transcribe AUDIO, compare with TEXT after the TTS front-end's normalisation (WER/CER), "
            "compare the voice with the speaker prompt (cosine similarity of speaker embeddings), "
            "check the audio, and print one JSON object with the verdict."
        ),
    )
    s.add_argument("--audio", required=True, help="generated speech (WAV/FLAC/OGG)")
    s.add_argument("--text", required=True, help="the text the audio should say")
    s.add_argument("--speaker", help="speaker prompt audio (enables similarity)")
    s.add_argument(
        "--asr", choices=["pocketsphinx", "whisper", "none"], help="ASR backend (overrides config)"
    )
    s.add_argument("--whisper-dir", help="local Whisper model directory (for --asr whisper)")
    s.add_argument(
        "--similarity", choices=["resemblyzer", "campplus", "none"], help="similarity backend"
    )
    s.add_argument("--checkpoints", help="checkpoint set for --similarity campplus")
    s.add_argument("--language", choices=["auto", "en", "zh"], help="text language (default auto)")
    s.add_argument("--config", help="YAML file; its 'scoring' section (or the whole file) is used")
    s.add_argument("--device", help="cpu or cuda")
    s.set_defaults(func=run_score)
    return s


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def run_score(args: argparse.Namespace) -> int:
    """Score one file and print the row as JSON. Exit 0 pass, 1 fail/unchecked, 2 bad config."""
    import torch

    from tts.scoring import Scorer

    torch.set_num_threads(min(2, torch.get_num_threads()))
    cfg = _load_config(args.config)
    for key, value in (
        ("asr", args.asr),
        ("whisper_dir", args.whisper_dir),
        ("similarity", args.similarity),
        ("checkpoints", args.checkpoints),
        ("language", args.language),
        ("device", args.device),
    ):
        if value is not None:
            cfg[key] = value
    try:
        scorer = Scorer(cfg)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    row = scorer.score(args.audio, args.text, args.speaker)
    print(json.dumps({k: _json_safe(v) for k, v in row.items()}, ensure_ascii=False))
    return 0 if row["verdict"] == "pass" else 1
