"""tts.report on fabricated stage files: metrics.tsv, audio/, and report.html in a real browser."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tts import report

SR = 22050


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def fake_results(root: Path, demo: bool = True) -> Path:
    """A results folder as the workflow leaves it: 3 ok rows, 1 failed in synthesis, 1 bad row."""
    res = root / "results"
    rows = [
        ("ok1", "Hello <b>world</b> & friends."),
        ("ok2", "Second row."),
        ("ok3", "Third row."),
        ("gpu_fail", "Fails in render."),
        ("bad", ""),
    ]
    table = {"texts": "config/texts.tsv", "rows": []}
    render_rows, score_rows = {}, {}
    for i, (rid, text) in enumerate(rows):
        error = "text is empty" if rid == "bad" else None
        table["rows"].append(
            {"id": rid, "line": i + 2, "batch": None if error else "b000000000001", "error": error}
        )
        _write(
            res / "specs" / f"{rid}.json",
            {
                "id": rid,
                "text": text,
                "speaker": "spk.wav",
                "speaker_key": None if error else "spk-1",
                "seed": None,
                "error": error,
            },
        )
        if error:
            continue
        timings = {"emotion": 0.1, "tokens": 0.5, "render": 0.7}
        if rid == "gpu_fail":
            render_rows[rid] = {
                "ok": False,
                "error": "render: FloatingPointError: NaN in mel",
                "timings": timings,
            }
            continue
        t = np.arange(int(SR * (1.0 + i * 0.25))) / SR
        wav = (0.3 * np.sin(2 * np.pi * 200 * (i + 1) * t)).astype(np.float32)
        wav_dir = res / "batches" / "b000000000001" / "wav"
        wav_dir.mkdir(parents=True, exist_ok=True)
        sf.write(wav_dir / f"{rid}.wav", wav, SR, subtype="PCM_16")
        render_rows[rid] = {
            "ok": True,
            "error": None,
            "timings": timings,
            "wav": f"{rid}.wav",
            "duration": len(wav) / SR,
            "sample_rate": SR,
        }
        score_rows[rid] = {
            "transcript": text.lower(),
            "wer": 0.1 * i,
            "cer": 0.05 * i,
            "similarity": 0.9 - 0.1 * i,
            "similarity_backend": "resemblyzer",
            "asr": "pocketsphinx",
            "language": "en",
            "verdict": "pass" if i < 2 else "fail",
            "reasons": "" if i < 2 else "WER 0.200 > 0.1",
            "score_seconds": 0.2,
        }
    _write(res / "table.json", table)
    _write(
        res / "batches/b000000000001/render.json",
        {
            "rows": render_rows,
            "demo": demo,
            "provenance": {
                "device": "cpu",
                "gpt_dtype": "float32",
                "cudnn_enabled": True,
                "cudnn_version": None,
                "torch": "2.11.0",
            },
        },
    )
    _write(res / "batches/b000000000001/score.json", {"rows": score_rows})
    _write(res / "speakers/plan.json", {"groups": {"s000000000001": {"spk-1": "/voices/a.wav"}}})
    _write(res / "speakers/s000000000001/spk-1.json", {"ok": True, "seconds": 0.9})
    _write(
        res / "checkpoints/abc/check.json",
        {"root": "/models/x", "hash": "abc", "files": {"gpt": {"sha256": "f" * 64, "size": 9}}},
    )
    _write(
        res / "checkpoints/abc/validation.json",
        {
            "demo": demo,
            "components": [
                {
                    "name": "gpt",
                    "ok": True,
                    "tensors": 153,
                    "verdict": "ok",
                    "message": "153 tensors loaded",
                }
            ],
        },
    )
    return res


def _build(res: Path, **config) -> list[dict]:
    cfg = {"device": "cpu", "dtype": "float32", "report": {"mel_images": True}, **config}
    return report.build(
        res,
        cfg,
        res / "report.html",
        res / "metrics.tsv",
        res / "audio",
        res / "checkpoints/abc/check.json",
        res / "checkpoints/abc/validation.json",
    )


def test_metrics_and_audio(tmp_path):
    res = fake_results(tmp_path)
    _build(res)
    with open(res / "metrics.tsv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert [r["id"] for r in rows] == ["ok1", "ok2", "ok3", "gpu_fail", "bad"]
    assert list(rows[0]) == report.METRIC_COLUMNS
    by = {r["id"]: r for r in rows}
    assert by["bad"]["status"] == "failed" and by["bad"]["error"] == "text is empty"
    assert by["gpu_fail"]["status"] == "failed" and "NaN in mel" in by["gpu_fail"]["error"]
    assert by["ok2"]["status"] == "ok" and float(by["ok2"]["wer"]) == pytest.approx(0.1)
    assert float(by["ok1"]["rtf"]) == pytest.approx(1.3 / 1.0, rel=1e-3)
    assert float(by["ok1"]["t_speaker_s"]) == pytest.approx(0.9 / 4)  # shared by 4 rows
    assert sorted(p.name for p in (res / "audio").iterdir()) == ["ok1.wav", "ok2.wav", "ok3.wav"]
    assert sf.info(res / "audio/ok1.wav").samplerate == SR


def test_html_is_self_contained_and_complete(tmp_path):
    res = fake_results(tmp_path)
    _build(res)
    page = (res / "report.html").read_text(encoding="utf-8")
    assert "id='demo-banner'" in page
    assert page.count("<audio ") == 3
    assert "Hello &lt;b&gt;world&lt;/b&gt; &amp; friends." in page  # user text is escaped
    assert page.count("data:image/png;base64,") == 4  # summary plots + 3 mel images
    assert "WER 0.200 &gt; 0.1" in page and "NaN in mel" in page
    for section in ("summary", "rows", "validation", "provenance", "hashes", "config"):
        assert f"id='{section}'" in page
    # Nothing is fetched from elsewhere: only relative audio links and inline images.
    assert not re.search(r"(src|href)=['\"](https?:|//)", page)


def test_no_demo_banner_for_real_checkpoints(tmp_path):
    res = fake_results(tmp_path, demo=False)
    _build(res, report={"mel_images": False})
    page = (res / "report.html").read_text(encoding="utf-8")
    assert "demo-banner" not in page
    assert page.count("data:image/png;base64,") == 1


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def open_in_browser(page: Path, tmp: Path) -> tuple[str, Path]:
    """Load ``page`` in headless Chromium; return (DOM after scripts ran, screenshot path)."""
    shot = tmp / "report.png"
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp / 'chromium-profile'}",
        "--window-size=1400,2000",
        "--hide-scrollbars",
    ]
    subprocess.run(
        cmd + [f"--screenshot={shot}", page.resolve().as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
    )
    dom = subprocess.run(
        cmd + ["--dump-dom", page.resolve().as_uri()],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return dom, shot


def check_page_in_browser(page: Path, tmp: Path, ids: list[str], demo: bool) -> None:
    """The browser parsed the whole page: every row, every section, images decoded."""
    dom, shot = open_in_browser(page, tmp)
    assert dom.rstrip().endswith("</html>")
    for rid in ids:
        assert f'id="row-{rid}"' in dom, rid
    for section in ("summary", "rows", "validation", "provenance"):
        assert f'id="{section}"' in dom
    assert ('id="demo-banner"' in dom) == demo
    assert shot.is_file() and shot.stat().st_size > 10_000
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size[0] >= 1000
        colors = im.convert("RGB").resize((64, 64)).getcolors(64 * 64)
    assert colors is None or len(colors) > 8  # not a blank page


@pytest.mark.skipif(
    chromium() is None, reason="chromium is not installed (apt-get install -y chromium)"
)
def test_report_opens_in_headless_chromium(tmp_path):
    res = fake_results(tmp_path)
    _build(res)
    check_page_in_browser(
        res / "report.html", tmp_path, ["ok1", "ok2", "ok3", "gpu_fail", "bad"], demo=True
    )
