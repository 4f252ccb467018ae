"""The workflow's report: ``report.html`` (self-contained, opens offline), ``metrics.tsv`` and
``audio/`` with one WAV per successful row of the texts table.

:func:`collect` gathers one flat record per table row from the workflow's stage files;
:func:`write_metrics` and :func:`render_html` turn records into the two outputs, so both can be
tested with fabricated records. Plots and mel-spectrogram images are drawn with matplotlib and
embedded as base64 PNG; audio players link to ``audio/<id>.wav`` next to the page.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from tts.jobs import atomic_write_text, read_json

# metrics.tsv columns, in order (one line per table row).
METRIC_COLUMNS = [
    "id",
    "status",
    "error",
    "verdict",
    "reasons",
    "text",
    "transcript",
    "wer",
    "cer",
    "similarity",
    "similarity_backend",
    "asr",
    "language",
    "duration_s",
    "rtf",
    "t_speaker_s",
    "t_text_s",
    "t_emotion_s",
    "t_tokens_s",
    "t_render_s",
    "t_score_s",
    "rms_dbfs",
    "clip_fraction",
    "batch",
    "audio",
    "seed",
    "speaker",
]
STAGES = ("speaker", "text", "emotion", "tokens", "render", "score")


def _maybe(path: Path) -> dict | None:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def collect(
    results: str | Path,
    check_path: str | Path | None = None,
    validation_path: str | Path | None = None,
) -> tuple[list[dict], dict]:
    """One record per table row (in table order) and the run context (validation, provenance).

    ``check_path`` / ``validation_path`` are the checkpoint set's fingerprint and weight
    validation files of this run.
    """
    results = Path(results)
    table = read_json(results / "table.json")
    stage_cache: dict[Path, dict | None] = {}

    def stage(batch: str, name: str) -> dict:
        p = results / "batches" / batch / f"{name}.json"
        if p not in stage_cache:
            stage_cache[p] = _maybe(p)
        return (stage_cache[p] or {}).get("rows", {})

    speaker_counts: dict[str, int] = {}
    groups = (_maybe(results / "speakers" / "plan.json") or {}).get("groups", {})
    group_of = {key: g for g, members in groups.items() for key in members}

    speaker_cache: dict[str, dict] = {}

    def speaker_status(key: str | None) -> dict:
        """The speaker job's record of one prompt file ({} if there is none), read once."""
        if key not in group_of:
            return {}
        if key not in speaker_cache:
            path = results / "speakers" / group_of[key] / f"{key}.json"
            speaker_cache[key] = _maybe(path) or {}
        return speaker_cache[key]

    specs = {}
    for entry in table["rows"]:
        spec = _maybe(results / "specs" / f"{entry['id']}.json") or {}
        specs[entry["id"]] = spec
        if spec.get("speaker_key") and not entry.get("error"):
            speaker_counts[spec["speaker_key"]] = speaker_counts.get(spec["speaker_key"], 0) + 1

    records = []
    provenance: dict = {}
    demo = False
    for entry in table["rows"]:
        rid, batch = entry["id"], entry.get("batch")
        spec = specs[rid]
        rec: dict = {c: None for c in METRIC_COLUMNS}
        rec.update(
            id=rid,
            text=spec.get("text", ""),
            batch=batch,
            seed=spec.get("seed"),
            speaker=spec.get("speaker"),
            line=entry.get("line"),
        )
        error = entry.get("error") or spec.get("error")
        timings: dict = {}
        if not error and batch:
            render_rows = stage(batch, "render")
            for name in ("emotion", "tokens"):  # read once, for the model-loading total
                stage(batch, name)
            row = render_rows.get(rid)
            if row is None:
                error = "no result (the render stage has not produced this row)"
            else:
                timings = row.get("timings", {})
                error = row.get("error") if not row.get("ok") else None
                if row.get("ok"):
                    rec["duration_s"] = row.get("duration")
                    rec["audio"] = f"audio/{rid}.wav"
                    rec["_wav"] = str(results / "batches" / batch / "wav" / row["wav"])
            render_doc = stage_cache.get(results / "batches" / batch / "render.json") or {}
            if render_doc.get("provenance") and not provenance:
                provenance = render_doc["provenance"]
            demo = demo or bool(render_doc.get("demo"))
            score = stage(batch, "score").get(rid, {})
            for key in (
                "transcript",
                "wer",
                "cer",
                "similarity",
                "similarity_backend",
                "asr",
                "language",
                "verdict",
                "reasons",
                "rms_dbfs",
                "clip_fraction",
            ):
                rec[key] = score.get(key)
            rec["t_score_s"] = score.get("score_seconds")
        elif not error:
            error = "row was not assigned to a batch"
        key = spec.get("speaker_key")
        spk = speaker_status(key)
        if spk.get("seconds") is not None:
            # A speaker prompt is conditioned once; each of its rows carries an equal share.
            rec["t_speaker_s"] = spk["seconds"] / max(1, speaker_counts.get(key, 1))
        rec["t_text_s"] = timings.get("text")
        rec["t_emotion_s"] = timings.get("emotion")
        rec["t_tokens_s"] = timings.get("tokens")
        rec["t_render_s"] = timings.get("render")
        synth = [
            rec[k]
            for k in ("t_text_s", "t_emotion_s", "t_tokens_s", "t_render_s")
            if rec[k] is not None
        ]
        if rec["duration_s"] and synth:
            rec["rtf"] = sum(synth) / rec["duration_s"]
        rec["status"] = "failed" if error else "ok"
        rec["error"] = error or ""
        if error:
            rec["verdict"] = "fail"
            rec["reasons"] = rec["reasons"] or "synthesis failed"
        rec["timings_detail"] = timings
        records.append(rec)

    check = _maybe(Path(check_path)) if check_path else None
    validation = _maybe(Path(validation_path)) if validation_path else None
    demo = demo or bool(validation and validation.get("demo"))
    loading = sum(float(doc.get("load_seconds") or 0.0) for doc in stage_cache.values() if doc)
    for key in speaker_counts:
        loading += float(speaker_status(key).get("load_seconds") or 0.0)
    context = {
        "load_seconds": loading,
        "texts": table.get("texts"),
        "validation": validation,
        "check": check,
        "provenance": provenance,
        "demo": demo,
    }
    return records, context


def _fmt(value, digits: int = 3) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}f}"
    return str(value)


def _tsv_cell(value) -> str:
    text = _fmt(value, 4) if isinstance(value, float) else ("" if value is None else str(value))
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def write_metrics(records: list[dict], path: str | Path) -> None:
    """``metrics.tsv``: one line per table row, ``status`` and ``error`` beside the metrics."""
    lines = ["\t".join(METRIC_COLUMNS)]
    for rec in records:
        lines.append("\t".join(_tsv_cell(rec.get(c)) for c in METRIC_COLUMNS))
    atomic_write_text(path, "\n".join(lines) + "\n")


def link_audio(records: list[dict], audio_dir: str | Path) -> None:
    """Put every ok row's WAV into ``audio_dir`` (hard link when possible, else a copy)."""
    audio_dir = Path(audio_dir)
    audio_dir.mkdir(parents=True, exist_ok=True)
    for rec in records:
        src = rec.get("_wav")
        if not src:
            continue
        dst = audio_dir / f"{rec['id']}.wav"
        tmp = audio_dir / f".{rec['id']}.wav.{os.getpid()}.tmp"
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def mel_image(wav_path: str | Path) -> str:
    """Base64 PNG of the log-mel spectrogram (80 bands, 22.05 kHz framing) of a WAV file."""
    import numpy as np
    import soundfile as sf
    import torch
    import torchaudio

    wave, sr = sf.read(str(wav_path), dtype="float32", always_2d=True)
    x = torch.from_numpy(np.ascontiguousarray(wave.mean(axis=1)))
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=sr, n_fft=1024, hop_length=256, n_mels=80, f_max=sr / 2
    )(x)
    logmel = torch.log10(mel.clamp_min(1e-5)).numpy()
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 1.5))
    ax.imshow(
        logmel, origin="lower", aspect="auto", cmap="magma", extent=(0, x.numel() / sr, 0, 80)
    )
    ax.set_xlabel("s", fontsize=7)
    ax.set_ylabel("mel", fontsize=7)
    ax.tick_params(labelsize=6)
    return _png(fig)


def summary_plots(records: list[dict]) -> str:
    """Base64 PNG of four panels: WER, speaker similarity, real-time factor, duration."""
    plt = _pyplot()
    ok = [r for r in records if r["status"] == "ok"]
    ids = [r["id"] for r in ok]
    fig, axes = plt.subplots(2, 2, figsize=(9, 5.5))
    panels = [
        (axes[0][0], "wer", "word error rate"),
        (axes[0][1], "similarity", "speaker similarity"),
        (axes[1][0], "rtf", "real-time factor (synthesis s / audio s)"),
        (axes[1][1], "duration_s", "duration (s)"),
    ]
    for ax, key, title in panels:
        values = [r[key] if isinstance(r.get(key), int | float) else float("nan") for r in ok]
        colors = ["#2a7" if r.get("verdict") == "pass" else "#c44" for r in ok]
        ax.bar(range(len(values)), values, color=colors)
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(len(ids)))
        ax.set_xticklabels(ids, rotation=60, ha="right", fontsize=6)
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return _png(fig)


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{margin-bottom:.2em} table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.25em .5em;vertical-align:top;font-size:.9em}
th{background:#f2f2f2;text-align:left}
.pass{color:#186a3b;font-weight:bold} .fail{color:#a93226;font-weight:bold}
.unchecked{color:#9a7d0a;font-weight:bold}
.demo{background:#fdebd0;border:3px solid #d35400;padding:.8em;font-size:1.2em;font-weight:bold}
.err{color:#a93226} .small{font-size:.8em;color:#555} img.mel{width:360px}
pre{background:#f7f7f7;padding:.6em;overflow:auto;font-size:.8em}
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _code_version() -> str:
    import tts

    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--tags"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        described = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        described = ""
    return f"tts {tts.__version__}" + (f" (git {described})" if described else "")


def render_html(records: list[dict], context: dict, config: dict, mel_images: bool = True) -> str:
    """The whole report page as one self-contained HTML string."""
    ok = [r for r in records if r["status"] == "ok"]
    failed = [r for r in records if r["status"] != "ok"]
    passed = [r for r in ok if r.get("verdict") == "pass"]
    total_audio = sum(r["duration_s"] or 0.0 for r in ok)
    total_synth = sum(
        sum(r.get(f"t_{s}_s") or 0.0 for s in ("text", "emotion", "tokens", "render")) for r in ok
    )

    def mean(key: str) -> str:
        vals = [
            r[key] for r in ok if isinstance(r.get(key), int | float) and not math.isnan(r[key])
        ]
        return _fmt(sum(vals) / len(vals)) if vals else ""

    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>IndexTTS2 batch report</title>",
        f"<style>{_CSS}</style></head><body>",
    ]
    if context.get("demo"):
        parts.append(
            "<div class='demo' id='demo-banner'>DEMO checkpoints: random weights, not a "
            "voice model. The audio is noise and every intelligibility score fails; this "
            "run only shows that the workflow works.</div>"
        )
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts.append(
        f"<h1>IndexTTS2 batch report</h1><p class='small'>{_e(now)} &middot; table "
        f"{_e(context.get('texts'))}</p>"
    )
    parts.append("<h2>Summary</h2><table id='summary'>")
    for label, value in [
        ("rows", len(records)),
        ("ok (audio written)", len(ok)),
        ("failed", len(failed)),
        ("pass all thresholds", len(passed)),
        ("mean WER", mean("wer")),
        ("mean CER", mean("cer")),
        ("mean speaker similarity", mean("similarity")),
        ("total audio", f"{total_audio:.2f} s"),
        ("synthesis time", f"{total_synth:.2f} s"),
        ("overall real-time factor", _fmt(total_synth / total_audio) if total_audio else ""),
        (
            "model loading (once per job, not in the times above)",
            f"{context.get('load_seconds') or 0.0:.2f} s",
        ),
    ]:
        parts.append(f"<tr><th>{_e(label)}</th><td>{_e(value)}</td></tr>")
    parts.append("</table>")
    if failed:
        parts.append("<h3>Failed rows</h3><ul id='failed'>")
        parts += [
            f"<li><b>{_e(r['id'])}</b>: <span class='err'>{_e(r['error'])}</span></li>"
            for r in failed
        ]
        parts.append("</ul>")
    if ok:
        parts.append(
            f"<h2>Plots</h2><img id='plots' alt='summary plots' "
            f"src='data:image/png;base64,{summary_plots(records)}'>"
        )
    parts.append(_rows_table(records, mel_images))
    parts.append(_validation_section(context.get("validation")))
    parts.append(_provenance_section(context, config))
    parts.append("</body></html>")
    return "\n".join(parts)


def _rows_table(records: list[dict], mel_images: bool) -> str:
    head = (
        "<h2>Rows</h2><table id='rows'><tr><th>id</th><th>verdict</th><th>audio</th>"
        "<th>text / transcript</th><th>WER</th><th>CER</th><th>speaker sim.</th>"
        "<th>duration</th><th>time per stage (s)</th><th>RTF</th><th>mel spectrogram</th></tr>"
    )
    out = [head]
    for r in records:
        verdict = r.get("verdict") or ("fail" if r["status"] != "ok" else "unchecked")
        cls = verdict if verdict in ("pass", "fail", "unchecked") else ""
        if r["status"] == "ok" and r.get("audio"):
            audio = f"<audio controls preload='none' src='{_e(r['audio'])}'></audio>"
        else:
            audio = f"<span class='err'>failed: {_e(r['error'])}</span>"
        times = "<br>".join(
            f"{s}: {_fmt(r.get(f't_{s}_s'), 2)}" for s in STAGES if r.get(f"t_{s}_s") is not None
        )
        mel = ""
        if mel_images and r.get("_wav"):
            try:
                mel = f"<img class='mel' alt='mel {_e(r['id'])}' src='data:image/png;base64,{mel_image(r['_wav'])}'>"
            except Exception as exc:  # noqa: BLE001 - a bad image must not lose the report
                mel = f"<span class='err'>no image: {_e(exc)}</span>"
        reasons = f"<div class='small'>{_e(r.get('reasons'))}</div>" if r.get("reasons") else ""
        transcript = r.get("transcript")
        out.append(
            f"<tr class='row' id='row-{_e(r['id'])}'><td>{_e(r['id'])}</td>"
            f"<td class='{cls}'>{_e(verdict)}{reasons}</td><td>{audio}</td>"
            f"<td>{_e(r['text'])}<div class='small'>ASR: {_e(transcript if transcript is not None else '-')}</div></td>"
            f"<td>{_fmt(r.get('wer'))}</td><td>{_fmt(r.get('cer'))}</td>"
            f"<td>{_fmt(r.get('similarity'))}</td><td>{_fmt(r.get('duration_s'), 2)}</td>"
            f"<td class='small'>{times}</td><td>{_fmt(r.get('rtf'), 2)}</td><td>{mel}</td></tr>"
        )
    out.append("</table>")
    return "\n".join(out)


def _validation_section(validation: dict | None) -> str:
    if not validation:
        return "<h2>Weight validation</h2><p id='validation'>not available</p>"
    out = [
        "<h2>Weight validation</h2><table id='validation'><tr><th>component</th><th>status</th>"
        "<th>tensors</th><th>verdict</th><th>details</th></tr>"
    ]
    for c in validation.get("components", []):
        status = (
            "<span class='pass'>ok</span>" if c.get("ok") else "<span class='fail'>FAILED</span>"
        )
        out.append(
            f"<tr><td>{_e(c.get('name'))}</td><td>{status}</td><td>{_e(c.get('tensors'))}</td>"
            f"<td>{_e(c.get('verdict'))}</td><td class='small'>{_e(c.get('message'))}</td></tr>"
        )
    out.append("</table>")
    return "\n".join(out)


def _provenance_section(context: dict, config: dict) -> str:
    prov = dict(context.get("provenance") or {})
    check = context.get("check") or {}
    rows = [
        ("code version", _code_version()),
        ("checkpoint set", check.get("root") or prov.get("checkpoints")),
        ("checkpoint fingerprint", check.get("hash")),
        ("demo checkpoints", "yes" if context.get("demo") else "no"),
        ("device", prov.get("device") or config.get("device")),
        ("device name", prov.get("device_name")),
        (
            "dtype (GPT / rest)",
            f"{prov.get('gpt_dtype') or config.get('dtype')} / "
            f"{prov.get('other_dtype', 'float32')}",
        ),
        (
            "cuDNN",
            f"enabled={prov.get('cudnn_enabled')} version={prov.get('cudnn_version')} "
            f"benchmark={prov.get('cudnn_benchmark')}",
        ),
        ("torch / CUDA", f"{prov.get('torch')} / {prov.get('cuda')}"),
    ]
    out = ["<h2>Provenance</h2><table id='provenance'>"]
    out += [f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows]
    out.append("</table><h3>Checkpoint file hashes (SHA-256)</h3><table id='hashes'>")
    for key, info in sorted((check.get("files") or {}).items()):
        out.append(
            f"<tr><td>{_e(key)}</td><td class='small'>{_e(info.get('sha256', 'missing'))}"
            f"</td><td class='small'>{_e(info.get('size'))}</td></tr>"
        )
    out.append("</table><h3>Configuration</h3>")
    out.append(
        f"<pre id='config'>{_e(json.dumps(config, indent=1, sort_keys=True, default=str))}</pre>"
    )
    if prov:
        out.append(
            f"<h3>Engine</h3><pre>{_e(json.dumps(prov, indent=1, sort_keys=True, default=str))}</pre>"
        )
    return "\n".join(out)


def build(
    results: str | Path,
    config: dict,
    html: str | Path,
    metrics: str | Path,
    audio_dir: str | Path,
    check: str | Path | None = None,
    validation: str | Path | None = None,
) -> list[dict]:
    """Write metrics.tsv, audio/ and report.html for the current table; return the records."""
    import logging

    log = logging.getLogger("tts.report")
    records, context = collect(results, check, validation)
    link_audio(records, audio_dir)
    write_metrics(records, metrics)
    mel = bool((config.get("report") or {}).get("mel_images", True))
    atomic_write_text(html, render_html(records, context, config, mel_images=mel))
    for rec in records:
        log.info(
            "%s: %s%s",
            rec["id"],
            rec["status"],
            f" ({rec['error']})" if rec["error"] else f" verdict {rec.get('verdict')}",
        )
    return records
