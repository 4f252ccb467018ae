"""The Snakemake workflow end to end on a DEMO checkpoint set, on the CPU.

One uninterrupted run (module fixture) is opened file by file; copies of its folder prove what
reruns after rows are added, edited and removed; a second run is killed with SIGKILL and
resumed to the same results. Cheaper checks (faults, lint, dry runs, the SLURM profile) only
parse the workflow.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
SPEAKERS = REPO / "config" / "speakers"
VOICES = {  # the table's prompt files (relative to the table's folder) and their sources
    "voices/a.wav": SPEAKERS / "flite_slt_female.wav",
    "voices/b.wav": SPEAKERS / "espeak_en_us_male.wav",
    "voices/c.wav": SPEAKERS / "espeak_en_gb_female.wav",  # used by the row a test adds
}
BATCH_RULES = ("emotion_conditioning", "semantic_tokens", "render", "score")  # GPU jobs
CPU_BATCH_RULES = ("text_frontend",)

ROWS = [
    ("hello", "Hello world.", "voices/a.wav", ""),
    ("second", "This is the second row.", "voices/a.wav", "0.6,0,0,0,0,0,0,0.2"),
    ("third", "The third one.", "voices/b.wav", ""),
    ("broken", "", "voices/a.wav", ""),  # empty text: fails alone
]

# One pytest-xdist group: the module's workflow runs (module-scoped fixtures) are made by one
# worker instead of once in each.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("workflow")]


def _env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def snakemake(
    wd: Path, *args: str, check: bool = True, timeout: int = 900, overrides: dict | None = None
) -> subprocess.CompletedProcess:
    """Run snakemake on the repository's Snakefile in ``wd`` (a folder beside the DEMO set
    ``ckpt/``); stdout+stderr in ``.stdout``."""
    config = {
        "checkpoints": str(wd.parent / "ckpt"),
        "device": "cpu",
        "texts": "tables/rows.tsv",
        "results": "out",
        **(overrides or {}),
    }
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(SNAKEFILE),
        "--directory",
        str(wd),
        "--cores",
        "2",
        *args,
        "--config",
        *[f"{k}={v}" for k, v in config.items()],
    ]
    proc = subprocess.run(
        cmd,
        cwd=wd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-6000:]}")
    return proc


def job_counts(wd: Path, **overrides) -> dict[str, int]:
    """Jobs a dry run would execute, per rule ({} when nothing is to be done)."""
    out = snakemake(wd, "--dry-run", overrides=overrides).stdout
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def write_table(wd: Path, rows) -> None:
    lines = ["id\ttext\tspeaker\temo_vector"] + ["\t".join(r) for r in rows]
    (wd / "tables" / "rows.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_workdir(wd: Path) -> Path:
    """A project folder: config (fast sampling), a table with a relative speaker path."""
    (wd / "config").mkdir(parents=True)
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    cfg.update(threads=1, batch_size=4)
    cfg["sampling"].update(max_mel_tokens=30, diffusion_steps=3, num_beams=1)
    cfg["scoring"]["similarity"] = "none" if _no_resemblyzer() else "resemblyzer"
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    (wd / "tables" / "voices").mkdir(parents=True)
    for name, source in VOICES.items():
        shutil.copy(source, wd / "tables" / name)
    write_table(wd, ROWS)
    return wd


def _no_resemblyzer() -> bool:
    import importlib.util

    return importlib.util.find_spec("resemblyzer") is None


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A folder with the smallest DEMO checkpoint set in ``ckpt/``."""
    from tts.cli import main

    root = tmp_path_factory.mktemp("workflow")
    assert main(["demo-checkpoints", str(root / "ckpt")]) == 0
    return root


@pytest.fixture(scope="module")
def finished(base) -> tuple[Path, str]:
    """One uninterrupted run: (work folder, snakemake output)."""
    wd = make_workdir(base / "run")
    proc = snakemake(wd)
    return wd, proc.stdout


def _metrics(wd: Path) -> dict[str, dict]:
    import csv

    with open(wd / "out" / "metrics.tsv", encoding="utf-8", newline="") as fh:
        return {r["id"]: r for r in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)}


# ---------------------------------------------------------------------------------------------
# The uninterrupted run
# ---------------------------------------------------------------------------------------------


def test_every_output_is_complete(finished):
    wd, out = finished
    res = wd / "out"
    metrics = _metrics(wd)
    assert list(metrics) == [r[0] for r in ROWS]  # one line per row, in table order
    assert metrics["broken"]["status"] == "failed"
    assert metrics["broken"]["error"] == "text is empty"
    for rid in ("hello", "second", "third"):
        row = metrics[rid]
        assert row["status"] == "ok", row
        wav_path = res / "audio" / f"{rid}.wav"
        info = sf.info(wav_path)
        assert (info.samplerate, info.channels, info.subtype) == (22050, 1, "PCM_16")
        wave, _ = sf.read(wav_path, dtype="float32")
        assert wave.size > 0 and np.isfinite(wave).all()
        assert float(row["duration_s"]) == pytest.approx(wave.size / 22050, abs=1e-3)
        for col in ("rtf", "t_speaker_s", "t_emotion_s", "t_tokens_s", "t_render_s", "verdict"):
            assert row[col] != "", (rid, col)
    assert sorted(p.name for p in (res / "audio").glob("*.wav")) == [
        "hello.wav",
        "second.wav",
        "third.wav",
    ]
    page = (res / "report.html").read_text(encoding="utf-8")
    assert "demo-banner" in page and page.count("<audio ") == 3
    for rid, *_ in ROWS:
        assert f"id='row-{rid}'" in page
    assert "text is empty" in page
    # One batch for the three good rows (batch_size 4); one speaker job for both prompt files.
    assert len(list((res / "batches").glob("b*/render.json"))) == 1
    (group,) = [p for p in (res / "speakers").iterdir() if p.is_dir()]
    assert sorted(p.name[:2] for p in group.glob("*.json")) == ["a-", "b-"]
    # Each job loads what its stage runs: the speaker job w2v-bert ("features"), and it stores
    # the files' emotion features, so the emotion job (no emo_audio rows here) loads the GPT's
    # emotion path alone and no w2v-bert; the GPT job the GPT (without its emotion path).
    from tts.pipeline import EMOTION_FEATURES, load_tensors

    for spk in group.glob("*.safetensors"):
        assert EMOTION_FEATURES in load_tensors(spk), spk
    (batch,) = (res / "batches").glob("b*")
    speaker_parts = {p for j in group.glob("*.json") for p in json.loads(j.read_text())["loaded"]}
    assert {"features", "semantic_codec", "campplus", "length_regulator"} <= speaker_parts
    emotion_parts = set(json.loads((batch / "emotion.json").read_text())["loaded"])
    assert "gpt_emotion" in emotion_parts and not emotion_parts & {"features", "gpt"}
    assert set(json.loads((batch / "tokens.json").read_text())["loaded"]) == {"gpt"}
    assert "gpt_emotion" not in json.loads((batch / "render.json").read_text())["loaded"]
    assert len(list((res / "benchmarks" / "speakers").glob("*.tsv"))) == 1
    # Progress per row in the logs, and the closing summary names the failed row.
    logs = "".join(p.read_text() for p in (res / "logs" / "tokens").glob("*.log"))
    assert re.search(r"\[tokens\] row 3/3 third: ok", logs), logs
    assert "Summary: 4 row(s): 3 ok" in out and "FAILED broken: text is empty" in out
    # Every rule has its log and benchmark.
    for rule in (
        "check_checkpoints",
        "validate_weights",
        "speakers",
        "text",
        "emotion",
        "tokens",
        "render",
        "score",
    ):
        assert list((res / "logs" / rule).glob("*.log")), rule
        assert list((res / "benchmarks" / rule).glob("*.tsv")), rule
    assert (res / "logs" / "report.log").is_file() and (res / "benchmarks" / "report.tsv").is_file()


def test_report_in_headless_chromium(finished, tmp_path):
    from test_report import check_page_in_browser, chromium

    if chromium() is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    wd, _ = finished
    check_page_in_browser(wd / "out" / "report.html", tmp_path, [r[0] for r in ROWS], demo=True)


def test_nothing_reruns_after_a_finished_run(finished):
    wd, _ = finished
    assert job_counts(wd) == {}


def test_settings_rerun_only_the_stages_they_affect(finished):
    """A finished run: nothing to do; another render precision: render, score and report only
    (per batch); another GPT dtype: every row stage (dtype is part of each row's spec), not the
    checkpoint checks; another features precision: every row stage but the text front-end."""
    wd, _ = finished
    assert job_counts(wd) == {}
    assert job_counts(wd, render_precision="bfloat16") == {
        "render": 1,
        "score": 1,
        "report": 1,
        "all": 1,
    }
    counts = job_counts(wd, dtype="bfloat16")
    assert "validate_weights" not in counts and "check_checkpoints" not in counts, counts
    assert counts == {
        **dict.fromkeys(BATCH_RULES + CPU_BATCH_RULES, 1),
        "speaker_conditioning": 1,
        "report": 1,
        "all": 1,
    }, counts
    # The w2v-bert features' precision: the prompt conditioning and every GPU stage after it,
    # not the text front-end; its default, written out, changes nothing.
    assert job_counts(wd, features_precision="float32") == {}
    assert job_counts(wd, features_precision="tf32") == {
        **dict.fromkeys(BATCH_RULES, 1),
        "speaker_conditioning": 1,
        "report": 1,
        "all": 1,
    }


def test_only_new_and_edited_rows_rerun(finished):
    src, _ = finished
    wd = src.parent / "incremental"  # beside ckpt/, like the original
    shutil.copytree(src, wd, symlinks=True)
    res = wd / "out"
    wav_times = {p.name: p.stat().st_mtime_ns for p in res.glob("batches/*/wav/*.wav")}
    speaker_times = {p.name: p.stat().st_mtime_ns for p in res.glob("speakers/s*/[!.]*")}
    assert len(speaker_times) == 4  # a.wav and b.wav, conditioned by one job

    # Adding a row (in the middle of the table) with a new speaker prompt synthesises that row
    # only, and conditions the new prompt only (a group of its own).
    rows = ROWS[:2] + [("added", "A new row.", "voices/c.wav", "")] + ROWS[2:]
    write_table(wd, rows)
    counts = job_counts(wd)
    assert counts == {
        **dict.fromkeys(BATCH_RULES + CPU_BATCH_RULES, 1),
        "speaker_conditioning": 1,
        "report": 1,
        "all": 1,
    }, counts
    snakemake(wd)
    assert {
        p.name: p.stat().st_mtime_ns
        for p in res.glob("speakers/s*/[!.]*")
        if not p.name.startswith("c-")
    } == speaker_times
    assert {
        p.name: p.stat().st_mtime_ns
        for p in res.glob("batches/*/wav/*.wav")
        if p.name != "added.wav"
    } == wav_times
    assert (res / "audio" / "added.wav").is_file()
    assert _metrics(wd)["added"]["status"] == "ok"

    # Editing one row reruns its batch only (not the new batch of the added row); removing a
    # row reruns nothing but the report.
    edited = [
        (r[0], "The third one, edited." if r[0] == "third" else r[1], *r[2:])
        for r in rows
        if r[0] != "second"
    ]
    write_table(wd, edited)
    counts = job_counts(wd)
    assert counts == {**dict.fromkeys(BATCH_RULES + CPU_BATCH_RULES, 1), "report": 1, "all": 1}, (
        counts
    )
    out = snakemake(wd, "--dry-run").stdout
    third_batch = json.loads((res / "table.json").read_text())["rows"]
    batch = next(r["batch"] for r in third_batch if r["id"] == "third")
    assert f"batch={batch}" in out
    assert out.count("wildcards: batch=") == len(BATCH_RULES + CPU_BATCH_RULES)


def test_a_row_with_emotion_audio_reads_its_features_from_a_speaker_job(finished):
    """A new row whose emotion audio is no row's speaker: its file joins a speaker job of its
    own, and the new batch's emotion job reads the file's emotion features from it instead of
    loading w2v-bert; nothing else reruns (the emo_audio column, empty for them, leaves the
    other rows as they were), and a second run has nothing to do."""
    src, _ = finished
    wd = src.parent / "emotion_audio"  # beside ckpt/, like the original
    shutil.copytree(src, wd, symlinks=True)
    lines = ["id\ttext\tspeaker\temo_vector\temo_audio"]
    lines += ["\t".join((*row, "")) for row in ROWS]
    lines.append("\t".join(("moody", "How do I sound?", "voices/a.wav", "", "voices/c.wav")))
    (wd / "tables" / "rows.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert job_counts(wd) == {
        **dict.fromkeys(BATCH_RULES + CPU_BATCH_RULES, 1),
        "speaker_conditioning": 1,
        "report": 1,
        "all": 1,
    }
    snakemake(wd)
    assert _metrics(wd)["moody"]["status"] == "ok"
    statuses = [json.loads(p.read_text()) for p in (wd / "out").glob("batches/b*/emotion.json")]
    (status,) = [s for s in statuses if "moody" in s["rows"]]
    assert "gpt_emotion" in status["loaded"] and "features" not in status["loaded"], status
    assert job_counts(wd) == {}


def test_killed_run_resumes_to_the_same_results(base, finished):
    ref, _ = finished
    wd = make_workdir(base / "killed")
    config = {
        "checkpoints": str(base / "ckpt"),
        "device": "cpu",
        "texts": "tables/rows.tsv",
        "results": "out",
    }
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(SNAKEFILE),
        "--directory",
        str(wd),
        "--cores",
        "2",
        "--config",
        *[f"{k}={v}" for k, v in config.items()],
    ]
    log = open(wd / "killed.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        cmd, cwd=wd, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.time() + 600
    try:
        # Kill in the middle: while the GPT job is running.
        while not list((wd / "out" / "logs" / "tokens").glob("*.log")):
            assert proc.poll() is None, (wd / "killed.log").read_text()
            assert time.time() < deadline, "the run made no progress"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
    assert not (wd / "out" / "report.html").exists()
    # Nothing half-written at any output path: every JSON parses, every tensor file loads.
    from tts.pipeline import load_tensors

    for p in (wd / "out").rglob("*.json"):
        json.loads(p.read_text())
    for p in (wd / "out").rglob("*.safetensors"):
        load_tensors(p)
    # The same command resumes (stale locks of the killed run are cleared).
    proc2 = snakemake(wd)
    assert "stale lock" in proc2.stdout
    got, want = _metrics(wd), _metrics(ref)
    assert list(got) == list(want)
    for rid in want:
        for col in ("status", "error", "duration_s", "text", "transcript", "wer", "cer"):
            assert got[rid][col] == want[rid][col], (rid, col)
    for p in (ref / "out" / "audio").glob("*.wav"):
        a, _ = sf.read(p)
        b, _ = sf.read(wd / "out" / "audio" / p.name)
        assert a.shape == b.shape and np.allclose(a, b, atol=2e-4), p.name
    assert job_counts(wd) == {}


# ---------------------------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------------------------


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_has_cuda(), reason="this machine has CUDA")
def test_cuda_without_cuda_says_how_to_use_the_cpu(finished):
    src, _ = finished
    wd = src.parent / "cuda"
    shutil.copytree(src, wd, symlinks=True)
    shutil.copy(REPO / "config" / "speakers" / "espeak_en_us_male.wav", wd / "tables/voices/b.wav")
    write_table(wd, ROWS + [("new_voice", "Another voice.", "voices/b.wav", "")])
    proc = snakemake(wd, check=False, overrides={"device": "cuda"})
    assert proc.returncode != 0
    assert "CUDA is not available" in proc.stdout and "--config device=cpu" in proc.stdout


def test_missing_checkpoints_stop_the_first_rule(base):
    wd = make_workdir(base / "missing")
    empty = base / "empty-ckpt"
    empty.mkdir()
    proc = snakemake(wd, check=False, overrides={"checkpoints": str(empty)})
    assert proc.returncode != 0
    assert "Error in rule check_checkpoints" in proc.stdout
    assert "required file(s) missing" in proc.stdout
    assert "gpt.pth" in proc.stdout and "IndexTeam/IndexTTS-2" in proc.stdout
    assert [p.name for p in (wd / "out" / "speakers").iterdir()] == ["plan.json"]  # no job ran
    assert not list((wd / "out" / "batches").glob("*/*"))


def test_table_fault_stops_before_anything_runs(base):
    wd = make_workdir(base / "table_fault_stops_before_anything_runs")
    bad = REPO / "tests" / "bad_inputs" / "tables" / "table_duplicate_ids.tsv"
    proc = snakemake(wd, "--dry-run", check=False, overrides={"texts": str(bad)})
    assert proc.returncode != 0
    assert "nothing was run" in proc.stdout and "duplicate id 'a'" in proc.stdout
    assert not (wd / "out").exists()


def test_config_outside_the_schema_is_rejected(base):
    wd = make_workdir(base / "config_outside_the_schema_is_rejected")
    proc = snakemake(wd, "--dry-run", check=False, overrides={"batch_size": 0})
    assert proc.returncode != 0 and "batch_size" in proc.stdout
    proc = snakemake(wd, "--dry-run", check=False, overrides={"device": "gpu"})
    assert proc.returncode != 0 and "device" in proc.stdout


# ---------------------------------------------------------------------------------------------
# Lint, dry runs, the SLURM profile
# ---------------------------------------------------------------------------------------------


def test_lint_and_dry_run_are_clean(base):
    wd = make_workdir(base / "lint_and_dry_run_are_clean")
    lint = snakemake(wd, "--lint")
    assert "Congratulations, your workflow is in a good condition!" in lint.stdout
    counts = job_counts(wd)
    assert counts == {
        "check_checkpoints": 1,
        "validate_weights": 1,
        "speaker_conditioning": 1,
        **dict.fromkeys(BATCH_RULES + CPU_BATCH_RULES, 1),
        "report": 1,
        "all": 1,
    }, counts


def test_repository_config_dry_run(base):
    """The shipped config and example table plan cleanly (overriding only the weights)."""
    wd = base / "repository_config"
    shutil.copytree(REPO / "config", wd / "config")
    proc = snakemake(wd, "--dry-run", overrides={"texts": "config/texts.tsv", "results": "results"})
    assert "speaker_conditioning" in proc.stdout


def test_slurm_profile_dry_run_requests_gpus(base):
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.utils import set_gres_string

    wd = make_workdir(base / "slurm")
    proc = snakemake(wd, "--dry-run", "--profile", str(REPO / "profiles" / "slurm"))
    assert "Using profiles" in proc.stdout and "profiles/slurm" in proc.stdout
    gpu_rules = set()
    for rule, body in re.findall(
        r"^(?:local)?rule (\w+):\n((?:    .*\n)+)", proc.stdout, flags=re.M
    ):
        match = re.search(r"^    resources: (.*)$", body, flags=re.M)
        res = dict(re.findall(r"(\w+)=([^,]+)", match.group(1))) if match else {}
        if res.get("gpu") == "1":
            gpu_rules.add(rule)
            job = SimpleNamespace(resources=SimpleNamespace(**res, get=res.get))
            assert set_gres_string(job).strip() == "--gpus=1"
        else:
            assert rule not in ("speaker_conditioning", *BATCH_RULES), rule
    assert {"speaker_conditioning", *BATCH_RULES} <= gpu_rules
