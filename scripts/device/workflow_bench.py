"""The Snakemake workflow itself, timed on the GPU device (issue 8).

`tts bench` times the Engine's stages inside one process. A user runs the workflow: one
Snakemake job per group of speaker prompts, and per batch one emotion, one GPT and one render
job, each a new Python process that loads its models. This script runs that workflow on the device for the
rows of ``config/gpu_bench.tsv`` and reports what each rule's jobs cost.

Two steps, because the device has no text normaliser (~420 MB, too large to travel) and the
workflow's text front-end is a CPU job of its own whose output depends only on the set's
``bpe.model``:

    # here (scripts/device/prepare_workflow.sh calls it): the text stage of every variant
    python scripts/device/workflow_bench.py prepare --out .bench/wf
    # on the device (SECTIONS="set workflow" bash scripts/device/run_gpu.sh): the GPU stages
    python3 scripts/device/workflow_bench.py run --source .bench/wf --checkpoints /tmp/bench_ckpt \
        --json "$OUT/workflow.json"

``run`` copies each variant's results folder, checks that the set's ``bpe.model`` is the one the
text stage used, and runs Snakemake for every batch's render output with the text rule not allowed (its
outputs are inputs there). Scoring needs packages the device lacks and is not run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

CONFIG = "config/gpu_bench.yaml"
# name -> the variant's --config overrides over config/config.yaml + CONFIG.
VARIANTS = {
    "default": [],
    "fast": ["dtype=bfloat16", "render_precision=bfloat16", "batch_size=16"],
}
# Every rule up to render but the text front-end.
GPU_RULES = [
    "check_checkpoints",
    "validate_weights",
    "speaker_conditioning",
    "emotion_conditioning",
    "semantic_tokens",
    "render",
]


def snakemake(configfile: str, config: list[str], extra: list[str], log: Path) -> float:
    """Run the workflow with ``--config`` overrides; its wall-clock seconds (raises on failure)."""
    cmd = [sys.executable, "-m", "snakemake", *extra, "--cores", str(os.cpu_count() or 2)]
    cmd += ["--resources", "gpu=1", "--configfile", configfile, "--config", *config]
    start = time.perf_counter()
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        done = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"snakemake failed (exit {done.returncode}), see {log}")
    return seconds


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare(out: Path, configfile: str, checkpoints: Path | None) -> None:
    """Here: each variant's text stage, on a tiny set with the fixtures' bpe.model (or on
    ``checkpoints``: a CPU dry run of ``run`` needs the same set on both sides)."""
    from tts.bench import write_random_set

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        ck = checkpoints or write_random_set(Path(tmp) / "set", tiny=True, device="cpu")
        (out / "bpe.sha256").write_text(sha256(ck / "bpe.model") + "\n")
        for name, overrides in VARIANTS.items():
            results = out / f"results-{name}"
            shutil.rmtree(results, ignore_errors=True)
            config = [f"checkpoints={ck}", f"results={results}", "device=cpu", *overrides]
            until = ["--until", "text_frontend"]
            seconds = snakemake(configfile, config, until, Path(tmp) / f"{name}.log")
            # The device starts from the planned rows and their text stage alone.
            for folder in ("logs", "benchmarks", "checkpoints"):
                shutil.rmtree(results / folder, ignore_errors=True)
            batches = sorted(p.parent.name for p in results.glob("batches/*/text.json"))
            print(f">> {results}: text stage of {len(batches)} batches in {seconds:.1f} s")


def rule_times(results: Path) -> dict:
    """Per rule: jobs, the seconds of each (Snakemake's benchmark files), the largest RSS."""
    rules: dict[str, dict] = {}
    for tsv in sorted(results.glob("benchmarks/*/*.tsv")):
        header, values = tsv.read_text().splitlines()[:2]
        rec = dict(zip(header.split("\t"), values.split("\t"), strict=False))
        r = rules.setdefault(tsv.parent.name, {"jobs": 0, "seconds": [], "max_rss_mb": 0.0})
        r["jobs"] += 1
        r["seconds"].append(round(float(rec["s"]), 2))
        rss = rec.get("max_rss", "NA")
        if rss not in ("NA", "-", ""):
            r["max_rss_mb"] = max(r["max_rss_mb"], float(rss))
    for r in rules.values():
        r["total_s"] = round(sum(r["seconds"]), 2)
    return rules


def stage_times(results: Path) -> dict:
    """Per GPU stage: model loading (in all and by part: ``loaded``) and the rest of the jobs'
    recorded work (status files)."""
    out: dict[str, dict] = {}
    for stage in ("emotion", "tokens", "render"):
        load = work = 0.0
        parts: dict[str, float] = {}
        for status in results.glob(f"batches/*/{stage}.json"):
            data = json.loads(status.read_text())
            load += float(data.get("load_seconds") or 0.0)
            for part, seconds in (data.get("loaded") or {}).items():
                parts[part] = round(parts.get(part, 0.0) + float(seconds), 3)
            for row in data.get("rows", {}).values():
                work += float((row.get("timings") or {}).get(stage, 0.0))
        out[stage] = {"load_s": round(load, 2), "rows_s": round(work, 2), "loaded": parts}
    return out


def audio(results: Path) -> dict:
    """Rows rendered, their audio seconds, and the rows that failed (with their errors)."""
    import soundfile

    seconds, ok, failed = 0.0, 0, {}
    for status in sorted(results.glob("batches/*/render.json")):
        for rid, row in json.loads(status.read_text())["rows"].items():
            if row.get("ok"):
                ok += 1
                seconds += soundfile.info(str(status.parent / "wav" / row["wav"])).duration
            else:
                failed[rid] = row.get("error")
    return {"rows_ok": ok, "rows_failed": failed, "audio_s": round(seconds, 2)}


def provenance(results: Path) -> dict:
    """The render jobs' device, precision and fast-path record (the first batch's)."""
    for status in sorted(results.glob("batches/*/render.json")):
        return json.loads(status.read_text()).get("provenance", {})
    return {}


# One job of a GPU rule, run again in a fresh process: the call of its workflow script, with the
# inputs of the variant's first batch (and first speaker group) and outputs in a scratch
# folder. {S}: the speaker-group folders, {B}: the batch folder, {O}: the scratch folder.
RERUN = {
    "speakers": "jobs.run_speakers(config, group, '{O}/spk', T)",
    "emotion": "jobs.run_emotion(config, specs, {S}, '{O}/emo.safetensors', '{O}/emo.json', T)",
    "tokens": "jobs.run_tokens(config, specs, {S}, '{B}/emotion.safetensors', "
    "'{B}/emotion.json', '{O}/tok.safetensors', '{O}/tok.json', T, text_status='{B}/text.json')",
    "render": "jobs.run_render(config, specs, {S}, '{B}/tokens.safetensors', '{B}/tokens.json', "
    "'{O}/wav', '{O}/render.json', T)",
}
RUNNER = """
import cProfile, io, json, logging, pstats, sys, time
start = time.perf_counter()
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
import torch
from tts import gpu_slots, jobs
imports = time.perf_counter() - start
config = json.loads(sys.argv[1]); specs = json.loads(sys.argv[2]); group = json.loads(sys.argv[3])
T = int(config.get("threads", 2))
gpu_slots.claim_gpu(config)
prof = cProfile.Profile() if sys.argv[5] == "1" else None
t0 = time.perf_counter()
if prof:
    prof.runctx(sys.argv[4], globals(), locals())
else:
    exec(sys.argv[4])
call = time.perf_counter() - t0
print(json.dumps({"imports_s": round(imports, 2), "call_s": round(call, 2)}))
if prof:
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(45)
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(30)
    # the project's own calls, below the imports that fill the top of the list above
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats("/tts/", 60)
    print(out.getvalue())
"""


def merged_config(configfile: str, config: list[str]) -> dict:
    """config/config.yaml, ``configfile`` over it, then the ``key=value`` overrides."""
    import yaml

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    over = yaml.safe_load((ROOT / configfile).read_text())
    cfg = {**cfg, **over, "sampling": {**cfg["sampling"], **over.get("sampling", {})}}
    for item in config:
        key, value = item.split("=", 1)
        cfg[key] = yaml.safe_load(value)
    return cfg


def rerun(results: Path, cfg: dict, stage: str, log: Path, profile: bool) -> dict:
    """Time one ``stage`` job of the first batch again in a fresh process (warm caches)."""
    batch = sorted(results.glob("batches/*/render.json"))[0].parent
    plan = json.loads((results / "batches" / "plan.json").read_text())["batches"][batch.name]
    specs = [str(results / "specs" / f"{rid}.json") for rid in plan]
    groups = json.loads((results / "speakers" / "plan.json").read_text())["groups"]
    group = next(iter(groups.values()))
    dirs = sorted(str(results / "speakers" / g) for g in groups)
    scratch = Path(tempfile.mkdtemp(prefix=f"rerun-{stage}-"))
    code = RERUN[stage].format(S=repr(dirs), B=batch, O=scratch)
    args = [json.dumps(cfg), json.dumps(specs), json.dumps(group), code, "1" if profile else "0"]
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, *args], cwd=ROOT, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    log.write_text(done.stdout + done.stderr)
    first = next((ln for ln in done.stdout.splitlines() if ln.startswith("{")), "{}")
    out = {"process_s": round(wall, 2), **json.loads(first), "exit": done.returncode}
    status = scratch / {"emotion": "emo.json", "tokens": "tok.json"}.get(stage, "render.json")
    if stage == "speakers":
        status = scratch / "spk" / f"{next(iter(group))}.json"
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(status.read_text())
        out["load_s"] = round(float(data.get("load_seconds") or 0.0), 2)
    print(f">> {stage} again ({log.name}): {out}")
    return out


def run(
    source: Path,
    checkpoints: Path,
    work: Path,
    names: list[str],
    out_json: Path,
    device: str,
    configfile: str,
    profile: bool = False,
    decoders: tuple[str, ...] = (),
) -> int:
    """On the device: each variant's GPU stages through Snakemake, timed."""
    expected = (source / "bpe.sha256").read_text().strip()
    found = sha256(checkpoints / "bpe.model")
    if found != expected:
        print(f"bpe.model of {checkpoints} is not the text stage's ({found} != {expected})")
        return 1
    report: dict = {"checkpoints": str(checkpoints), "variants": {}}
    failed = 0
    for name in names:
        results = work / name
        shutil.rmtree(results, ignore_errors=True)
        shutil.copytree(source / f"results-{name}", results)
        config = [f"checkpoints={checkpoints}", f"results={results}", f"device={device}"]
        config += VARIANTS[name]
        # Targets: each batch's render status (the default target, the report, needs scoring).
        targets = [str(p.parent / "render.json") for p in results.glob("batches/*/text.json")]
        extra = [*targets, "--scheduler", "greedy", "--allowed-rules", *GPU_RULES]
        log = out_json.parent / f"workflow-{name}.log"
        entry: dict = {"overrides": VARIANTS[name]}
        try:
            entry["wall_s"] = round(snakemake(configfile, config, extra, log), 2)
        except SystemExit as exc:
            entry["error"] = str(exc)
            failed += 1
        entry.update(rules=rule_times(results), stages=stage_times(results), **audio(results))
        if entry.get("wall_s") and entry["audio_s"]:
            entry["x_real_time"] = round(entry["audio_s"] / entry["wall_s"], 2)
        entry["provenance"] = provenance(results)
        entry["speaker_jobs"] = [
            {k: json.loads(p.read_text()).get(k) for k in ("load_seconds", "seconds", "loaded")}
            for p in sorted(results.glob("speakers/s*/*.json"))
        ]
        for logs in results.glob("logs/*/*.log"):  # the jobs' own logs travel back too
            dest = out_json.parent / f"wf-{name}" / logs.parent.name / logs.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(logs, dest)
        report["variants"][name] = entry
        out_json.write_text(json.dumps(report, indent=1))  # kept if the re-runs are cut short
        if "error" not in entry:
            cfg = merged_config(configfile, config)
            if profile:
                entry["profile"] = {
                    stage: rerun(
                        results, cfg, stage, out_json.parent / f"profile-{stage}.txt", True
                    )
                    for stage in RERUN
                }
            # A decoder named twice (a cold then a warm compile cache) keeps both runs:
            # graphkk, graphkk#2, ...
            entry["tokens_by_decoder"] = {}
            for i, dec in enumerate(decoders):
                run_name = (
                    dec if dec not in decoders[:i] else f"{dec}#{decoders[:i].count(dec) + 1}"
                )
                entry["tokens_by_decoder"][run_name] = rerun(
                    results,
                    {**cfg, "gpt_decoder": dec},
                    "tokens",
                    out_json.parent / f"tokens-{name}-{run_name.replace('#', '-')}.log",
                    False,
                )
        report["variants"][name] = entry
        print(json.dumps({name: {k: v for k, v in entry.items() if k != "provenance"}}, indent=1))
        out_json.write_text(json.dumps(report, indent=1))
    return 1 if failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="here: the text stage of every variant")
    p.add_argument("--out", type=Path, default=ROOT / ".bench" / "wf")
    p.add_argument("--checkpoints", type=Path, help="a set to use (default: a new tiny one)")
    r = sub.add_parser("run", help="on the device: the GPU stages through Snakemake")
    r.add_argument("--source", type=Path, default=ROOT / ".bench" / "wf")
    r.add_argument("--checkpoints", type=Path, required=True)
    r.add_argument("--work", type=Path, default=Path("/tmp/wf"))
    r.add_argument("--variants", default=",".join(VARIANTS))
    r.add_argument("--json", type=Path, required=True)
    r.add_argument("--device", default="cuda", help="cpu: a dry run of this script")
    r.add_argument("--profile", action="store_true", help="re-run one job per GPU rule, profiled")
    r.add_argument(
        "--decoders",
        default="",
        help="comma-separated gpt_decoder values: re-run the tokens job with each, timed",
    )
    for q in (p, r):
        q.add_argument("--configfile", default=CONFIG, help="merged over config/config.yaml")
    args = ap.parse_args()
    if args.cmd == "prepare":
        prepare(args.out.resolve(), args.configfile, args.checkpoints)
        return 0
    names = [n for n in args.variants.split(",") if n]
    source, out_json = args.source.resolve(), args.json.resolve()
    return run(
        source,
        args.checkpoints,
        args.work,
        names,
        out_json,
        args.device,
        args.configfile,
        args.profile,
        tuple(d for d in args.decoders.split(",") if d),
    )


if __name__ == "__main__":
    sys.exit(main())
