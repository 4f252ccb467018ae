"""The whole workflow on a real IndexTTS-2 checkpoint set (``TTS_CHECKPOINTS``), else skipped.

    TTS_CHECKPOINTS=/models/IndexTTS-2 pytest -m real_checkpoints tests/test_workflow_real.py

Runs the shipped example table (config/texts.tsv) with the shipped config on ``device=auto``
and asserts valid audio, every row ok, and intelligibility (WER/CER from the configured ASR)
within the configured thresholds. ``TTS_WORKFLOW_TIMEOUT`` (seconds, default 3600) bounds it.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS = os.environ.get("TTS_CHECKPOINTS")

pytestmark = [
    pytest.mark.real_checkpoints,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHECKPOINTS or not (Path(CHECKPOINTS) / "config.yaml").is_file(),
        reason="set TTS_CHECKPOINTS to a real IndexTTS-2 checkpoint folder to run this test",
    ),
]


def test_real_checkpoints_end_to_end(tmp_path):
    shutil.copytree(REPO / "config", tmp_path / "config")
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--cores",
        "2",
        "--resources",
        "gpu=1",
        "--config",
        f"checkpoints={CHECKPOINTS}",
        "device=auto",
        "results=results",
    ]
    proc = subprocess.run(
        cmd,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=int(os.environ.get("TTS_WORKFLOW_TIMEOUT", "3600")),
    )
    assert proc.returncode == 0, proc.stdout[-6000:]
    res = tmp_path / "results"
    with open(res / "metrics.tsv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    with open(REPO / "config" / "texts.tsv", encoding="utf-8") as fh:
        ids = [line.split("\t", 1)[0] for line in fh.read().splitlines()[1:] if line.strip()]
    assert [r["id"] for r in rows] == ids
    page = (res / "report.html").read_text(encoding="utf-8")
    assert "demo-banner" not in page
    limits = cfg["scoring"]["thresholds"]
    for row in rows:
        assert row["status"] == "ok", row
        wave, sr = sf.read(res / "audio" / f"{row['id']}.wav", dtype="float32")
        assert sr == 22050 and wave.size > sr * 0.3 and np.isfinite(wave).all()
        assert float(np.abs(wave).max()) > 1e-3, f"{row['id']}: silent output"
        assert row["wer"] != "", f"{row['id']}: no transcript ({row['reasons']})"
        assert float(row["wer"]) <= limits["max_wer"], (row["id"], row["transcript"], row["wer"])
        assert float(row["cer"]) <= limits["max_cer"], (row["id"], row["transcript"], row["cer"])
