"""Batch jobs for the Snakemake workflow: per-row specs, batches and stages.

The workflow (``Snakefile``) stays thin; everything it decides or runs lives here and in
:mod:`tts.table` (the texts table, read and validated row by row):

* :func:`prepare` is the workflow's parse-time step: it writes one spec file per row (the row's
  normalised settings as JSON) *only when its content changed*, so untouched rows keep their
  modification time and Snakemake leaves their outputs alone; it assigns rows to batches
  (:func:`plan_batches`) so that finished batches are never re-formed; and it fingerprints the
  checkpoint set by file hashes (cached by size and mtime).
* ``run_*`` are the stage jobs the rule scripts call. Each opens the engine once per job and
  processes its batch; a failing row gets a status with its error, never an exception.

Every file written here goes to a temporary name first and is renamed into place, so a killed
run never leaves a half-written file at an output path.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tts.table import Table, file_key, parse_sampling_value, read_table, request_from_spec

log = logging.getLogger("tts.jobs")


class StageError(RuntimeError):
    """A whole stage job cannot run (missing checkpoints, broken weights, no CUDA)."""


# ---------------------------------------------------------------------------------------------
# Files: atomic writes, write-if-changed
# ---------------------------------------------------------------------------------------------


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` under a temporary name in the same folder, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def dumps(obj: object) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False, allow_nan=True) + "\n"


def write_json(path: str | Path, obj: object) -> None:
    atomic_write_text(path, dumps(obj))


def write_if_changed(path: str | Path, obj: object) -> bool:
    """Write JSON only when the content differs, so an unchanged file keeps its mtime."""
    path = Path(path)
    text = dumps(obj)
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write_text(path, text)
    return True


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------


def batch_name(ids: Iterable[str], prefix: str = "b") -> str:
    """A deterministic batch name from its members, so re-planning the same rows agrees."""
    return prefix + hashlib.sha1("\n".join(ids).encode()).hexdigest()[:12]


def plan_batches(
    ids: list[str],
    previous: dict[str, list[str]],
    sealed: Callable[[str], bool],
    batch_size: int,
    prefix: str = "b",
) -> dict[str, list[str]]:
    """Assign rows to batches without ever re-forming a batch that has started.

    ``previous`` is the last plan; a batch for which ``sealed(name)`` is true (its first stage
    has output) keeps exactly its members, even rows that were since removed or edited, so its
    inputs and outputs stay the same and Snakemake does not rerun it. Every other row of
    ``ids`` (new rows, rows of batches that never started) is chunked in table order into
    batches of ``batch_size``. Adding rows therefore only ever creates new batches, and editing
    a row reruns at most the batch it is in. Speaker prompt files are grouped the same way
    (``prefix`` "s").
    """
    batch_size = max(1, int(batch_size))
    plan = {name: list(members) for name, members in previous.items() if sealed(name)}
    done = {rid for members in plan.values() for rid in members}
    pending = [rid for rid in ids if rid not in done]
    for start in range(0, len(pending), batch_size):
        chunk = pending[start : start + batch_size]
        plan[batch_name(chunk, prefix)] = chunk
    return plan


# ---------------------------------------------------------------------------------------------
# Checkpoint fingerprint (file hashes, cached by size and mtime)
# ---------------------------------------------------------------------------------------------


def _checkpoint_files(root: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """(key -> existing file, key -> 'where to get it' for missing files) of a set."""
    from tts.checkpoints import FILES, CheckpointSet, missing_files

    try:
        cs = CheckpointSet.open(root)
    except (FileNotFoundError, ValueError, OSError):
        cs = CheckpointSet(root=root, config={})
    except Exception:  # noqa: BLE001 - a broken config.yaml is reported by the validate rule
        cs = CheckpointSet(root=root, config={})
    missing = {key: f"{path} ({where})" for key, path, where in missing_files(root)}
    files: dict[str, Path] = {}
    for key, path in cs.required_paths().items():
        if key in missing:
            continue
        if path.is_dir():
            spec = FILES[key.split("/")[0]]
            if spec.optional or spec.kind == "dir":
                for f in sorted(p for p in path.rglob("*") if p.is_file()):
                    files[f"{key}/{f.relative_to(path)}"] = f
        elif path.is_file():
            files[key] = path
    return files, missing


def checkpoint_fingerprint(root: str | Path, cache_path: str | Path | None = None) -> dict:
    """SHA-256 of every file of the set and one short hash of them all.

    Hashes are cached in ``cache_path`` keyed by (path, size, mtime), so only new or changed
    files are read again. Missing files are recorded (the check rule reports them).
    """
    from tts.checkpoints import sha256

    root = Path(root)
    cache: dict = {}
    if cache_path is not None:
        with contextlib.suppress(OSError, ValueError):
            cache = read_json(cache_path)
    files, missing = _checkpoint_files(root)
    out: dict[str, dict] = {}
    new_cache: dict = {}
    for key, path in sorted(files.items()):
        st = path.stat()
        ck = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        digest = cache.get(ck) or sha256(path)
        new_cache[ck] = digest
        out[key] = {"path": str(path), "size": st.st_size, "sha256": digest}
    for key, where in sorted(missing.items()):
        out[key] = {"missing": where}
    summary = json.dumps({k: v.get("sha256", "missing") for k, v in out.items()}, sort_keys=True)
    if cache_path is not None and new_cache != cache:
        write_json(cache_path, new_cache)
    return {
        "root": str(root),
        "files": out,
        "missing": sorted(missing),
        "hash": hashlib.sha256(summary.encode()).hexdigest()[:16],
    }


# ---------------------------------------------------------------------------------------------
# Parse-time preparation (called by the Snakefile)
# ---------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What the Snakefile needs to declare its jobs."""

    results: str
    table: Table
    batches: dict[str, list[str]]
    specs: dict[str, dict]  # every batch member (current rows and retained removed rows)
    fingerprint: dict
    batch_of: dict[str, str] = field(default_factory=dict)
    # speaker group -> {speaker key: prompt file} (plan_speaker_groups)
    speaker_groups: dict[str, dict[str, str]] = field(default_factory=dict)
    # batches whose emotion audio files are conditioned by the speaker jobs too (planned since
    # 2026-12-05; batches sealed before keep the inputs they ran with)
    emotion_prompt_batches: set[str] = field(default_factory=set)

    @property
    def set_hash(self) -> str:
        return self.fingerprint["hash"]

    def spec_path(self, rid: str) -> str:
        return f"{self.results}/specs/{rid}.json"

    def batch_specs(self, batch: str) -> list[str]:
        return [self.spec_path(r) for r in self.batches[batch]]

    def group_audio(self, group: str) -> list[str]:
        """The group's prompt files that exist (a removed row's file may have been deleted:
        its speaker then fails alone, see :func:`run_speakers`)."""
        return [p for p in self.speaker_groups[group].values() if Path(p).is_file()]

    def _group_dirs(self, keys: set[str]) -> list[str]:
        """The folders of the speaker groups holding any of the prompt ``keys``."""
        groups = {g for g, members in self.speaker_groups.items() if keys & members.keys()}
        return [speaker_group_dir(self.results, g) for g in sorted(groups)]

    def batch_speaker_dirs(self, batch: str) -> list[str]:
        """The speaker-group folders holding the conditioning of a batch's speakers."""
        return self._group_dirs(
            {self.specs[r].get("speaker_key") for r in self.batches[batch]} - {None}
        )

    def batch_emotion_prompt_dirs(self, batch: str) -> list[str]:
        """The speaker-group folders holding the emotion features of a batch's emotion audio
        files (the emotion job reads them instead of running w2v-bert); none for a batch
        planned before they were."""
        if batch not in self.emotion_prompt_batches:
            return []
        return self._group_dirs(
            set(_emotion_audio_keys(self.specs[r] for r in self.batches[batch]))
        )

    def batch_emo_audio(self, batch: str) -> list[str]:
        paths = {
            self.specs[r].get("emo_audio")
            for r in self.batches[batch]
            if not self.specs[r].get("error")
        }
        return sorted(p for p in paths if p and Path(p).is_file())

    def needed_batches(self) -> list[str]:
        """Batches holding at least one current, valid row."""
        return sorted({self.batch_of[r.id] for r in self.table.rows if r.id in self.batch_of})


def _sealed(results: str, batch: str) -> bool:
    return Path(results, "batches", batch, "emotion.json").exists()


def _emotion_audio_keys(specs: Iterable[dict]) -> dict[str, str]:
    """{prompt key: file} of the emotion audio files of the valid rows among ``specs``."""
    return {
        file_key(spec["emo_audio"]): spec["emo_audio"]
        for spec in specs
        if not spec.get("error") and spec.get("emo_audio")
    }


def speaker_group_dir(results: str | Path, group: str) -> str:
    """The folder of a speaker group's outputs: ``<key>.safetensors`` and ``<key>.json``."""
    return f"{results}/speakers/{group}"


def plan_speaker_groups(
    results: str, speakers: dict[str, str], batch_size: int
) -> dict[str, dict[str, str]]:
    """Group the speaker prompt files (key -> path) into jobs of up to ``batch_size`` files.

    Every GPU job pays for starting Python, PyTorch and the models (~20 s on an H200, more than
    conditioning a prompt takes), so one job conditions a group of prompts. A group whose
    folder exists keeps its members (as a started batch does), even a speaker no row uses any
    more: adding speakers forms new groups only, and an edited prompt file reruns its group.
    """
    plan_path = Path(results, "speakers", "plan.json")
    previous: dict[str, dict[str, str]] = {}
    with contextlib.suppress(OSError, ValueError, KeyError, AttributeError):
        previous = {g: dict(m) for g, m in read_json(plan_path)["groups"].items()}
    paths = {k: p for members in previous.values() for k, p in members.items()} | speakers
    keys = plan_batches(
        list(speakers),
        {g: list(m) for g, m in previous.items()},
        lambda g: Path(speaker_group_dir(results, g)).is_dir(),
        batch_size,
        prefix="s",
    )
    groups = {g: {k: paths[k] for k in members} for g, members in keys.items()}
    write_if_changed(plan_path, {"groups": groups})
    return groups


def prepare(config: dict) -> Plan:
    """Parse-time work: read the table, write changed specs, plan batches, fingerprint weights.

    Raises :class:`tts.table.TableError` for table-wide faults (nothing runs then).
    """
    results = results_dir(config)
    sampling = {k: parse_sampling_value(k, v) for k, v in config.get("sampling", {}).items()}
    table = read_table(config["texts"], sampling, config.get("limits"), config.get("seed"))
    dtype = config.get("dtype", "float32")
    specs: dict[str, dict] = {}
    for row in table.rows:
        spec = dict(row.spec, dtype=dtype, error=row.error)
        if row.ok:
            spec["speaker_key"] = file_key(spec["speaker"])
        specs[row.id] = spec
        write_if_changed(f"{results}/specs/{row.id}.json", spec)
    plan_path = Path(results, "batches", "plan.json")
    previous_plan: dict = {}
    with contextlib.suppress(OSError, ValueError):
        previous_plan = read_json(plan_path)
    previous: dict[str, list[str]] = previous_plan.get("batches", {})
    previous_emotion = set(previous_plan.get("emotion_prompt_batches", []))
    good = [r.id for r in table.rows if r.ok]
    sealed = {b for b in previous if _sealed(results, b)}
    batches = plan_batches(good, previous, sealed.__contains__, int(config.get("batch_size", 16)))
    # A batch planned now (not sealed) has its emotion audio conditioned by the speaker jobs; a
    # sealed one keeps what it was planned with, so its inputs do not change.
    emotion_batches = {b for b in batches if b not in sealed or b in previous_emotion}
    write_if_changed(
        plan_path, {"batches": batches, "emotion_prompt_batches": sorted(emotion_batches)}
    )
    batch_of = {rid: name for name, members in batches.items() for rid in members}
    for rid in batch_of:  # members of sealed batches that left the table keep their old spec
        if rid not in specs:
            try:
                specs[rid] = read_json(f"{results}/specs/{rid}.json")
            except (OSError, ValueError):  # its spec was deleted too: record why it is skipped
                specs[rid] = {"id": rid, "error": "row removed from the table"}
                write_if_changed(f"{results}/specs/{rid}.json", specs[rid])
    speakers = {
        specs[rid]["speaker_key"]: specs[rid]["speaker"]
        for members in batches.values()
        for rid in members
        if specs[rid].get("speaker_key")
    }
    for batch in sorted(emotion_batches):
        for key, path in _emotion_audio_keys(specs[r] for r in batches[batch]).items():
            speakers.setdefault(key, path)
    groups = plan_speaker_groups(results, speakers, int(config.get("batch_size", 16)))
    write_if_changed(
        f"{results}/table.json",
        {
            "texts": str(table.path),
            "rows": [
                {"id": r.id, "line": r.line, "batch": batch_of.get(r.id), "error": r.error}
                for r in table.rows
            ],
        },
    )
    # The prompt conditioning and every stage after it depend on these. A setting at its
    # default is left out, so that results made before it existed stay current.
    settings = {"dtype": dtype}
    features_precision = str(config.get("features_precision", "float32"))
    if features_precision != "float32":
        settings["features_precision"] = features_precision
    write_if_changed(f"{results}/settings.json", settings)
    # Only the render stage (and what follows it) depends on its precision.
    write_if_changed(
        f"{results}/render_settings.json",
        {"render_precision": str(config.get("render_precision", "float32"))},
    )
    write_if_changed(f"{results}/scoring.json", config.get("scoring", {}))
    fingerprint = checkpoint_fingerprint(
        config["checkpoints"], Path(results, "checkpoints", "hash-cache.json")
    )
    return Plan(results, table, batches, specs, fingerprint, batch_of, groups, emotion_batches)


# ---------------------------------------------------------------------------------------------
# Resuming after a killed run
# ---------------------------------------------------------------------------------------------

RUN_RECORD = "tts-run.json"


def _start_time(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (guards against PID reuse), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return "?"
        return "?"


def record_run(state_dir: str | Path = ".snakemake") -> None:
    """Called when a real run starts (onstart): remember which process holds the locks."""
    import socket

    pid = os.getpid()
    write_json(
        Path(state_dir, RUN_RECORD),
        {"pid": pid, "host": socket.gethostname(), "start": _start_time(pid)},
    )


def forget_run(state_dir: str | Path = ".snakemake") -> None:
    """Called when a run ends (onsuccess/onerror)."""
    with contextlib.suppress(OSError):
        Path(state_dir, RUN_RECORD).unlink()


def clear_stale_locks(state_dir: str | Path = ".snakemake") -> bool:
    """Remove Snakemake's locks when the run that took them was killed on this machine.

    A run killed with SIGKILL (or by a power cut) cannot release its locks, and Snakemake would
    refuse to start until ``snakemake --unlock``. The run records its process in
    ``.snakemake/tts-run.json`` when it starts; if that process no longer exists on this host,
    its locks are stale and are removed so the next run simply resumes. Locks of a live run, or
    of a run on another host, are never touched.
    """
    import socket

    state_dir = Path(state_dir)
    record_path = state_dir / RUN_RECORD
    try:
        record = read_json(record_path)
    except (OSError, ValueError):
        return False
    if record.get("host") != socket.gethostname():
        return False
    start = _start_time(int(record.get("pid", -1)))
    if start is not None and (start == "?" or start == record.get("start")):
        return False  # that run is still going
    locks = list((state_dir / "locks").glob("*.lock"))
    for lock in locks:
        with contextlib.suppress(OSError):
            lock.unlink()
    with contextlib.suppress(OSError):
        record_path.unlink()
    if locks:
        print(
            f"Removed {len(locks)} stale lock(s) of a killed run (process {record.get('pid')} "
            "is gone); resuming.",
            file=sys.stderr,
        )
    return bool(locks)


# ---------------------------------------------------------------------------------------------
# Stage jobs
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def job_log(path: str | Path | None) -> Iterator[logging.Logger]:
    """Send logging, stdout and stderr of a job to its log file (and keep tracebacks there)."""
    if path is None:
        yield log
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8", buffering=1) as fh:
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        old = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = fh
        try:
            yield log
        except BaseException as exc:
            if not isinstance(exc, StageError):
                traceback.print_exc(file=fh)
            log.error("%s", exc)
            raise
        finally:
            sys.stdout, sys.stderr = old
            root.removeHandler(handler)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, int(threads)))


def use_compile_cache(config: dict) -> dict[str, str]:
    """Point PyTorch's compiled-kernel caches at ``config["compile_cache"]``: Inductor's
    (``<folder>/inductor``) and Triton's (``<folder>/triton``), as absolute paths.

    Why: a new process that compiles (the GPT job's first decode step) takes seconds with warm
    caches and four times as long with empty ones, and PyTorch keeps them under /tmp, per
    machine. A variable already set in the environment wins; null leaves PyTorch's default.
    Both libraries read the variables when they first use a cache, so this must run before
    anything compiles. Returns the variables it set."""
    folder = config.get("compile_cache")
    if not folder:
        return {}
    root = Path(folder).expanduser().resolve()
    wanted = {"TORCHINDUCTOR_CACHE_DIR": root / "inductor", "TRITON_CACHE_DIR": root / "triton"}
    chosen = {k: str(v) for k, v in wanted.items() if k not in os.environ}
    os.environ.update(chosen)
    return chosen


def open_engine(config: dict):
    """Open the engine (after :func:`use_compile_cache`); a missing device or checkpoint
    becomes a :class:`StageError`."""
    from tts.loading import CheckpointError
    from tts.pipeline import ONE_CALL_DECODER, DeviceError, Engine

    use_compile_cache(config)
    try:
        start = time.perf_counter()
        engine = Engine.open(
            Path(config["checkpoints"]),
            device=str(config.get("device", "cuda")),  # cuda, cuda:N, cpu or auto
            dtype=str(config.get("dtype", "float32")),
            fast=bool(config.get("fast", True)),
            gpt_batch_items=int(config.get("gpt_batch_items", 16)),
            render_batch_items=int(config.get("render_batch_items", 16)),
            gpt_decoder=str(config.get("gpt_decoder", ONE_CALL_DECODER)),
            render_precision=str(config.get("render_precision", "float32")),
            features_precision=str(config.get("features_precision", "float32")),
            cudnn_benchmark=bool(config.get("cudnn_benchmark", False)),
        )
        log.info(
            "engine opened in %.2f s (device %s, demo=%s, fast paths %s)",
            time.perf_counter() - start,
            engine.device,
            engine.is_demo,
            "on" if engine.fast else "off",
        )
        return engine
    except (DeviceError, CheckpointError, ValueError) as exc:
        raise StageError(str(exc)) from None


def run_check(config: dict, out: str | Path) -> None:
    """First rule: every checkpoint file present, else stop with the list and sources."""
    from tts.checkpoints import missing_files

    root = Path(config["checkpoints"])
    missing = missing_files(root)
    if missing:
        lines = "\n".join(
            f"  - {key}: {path}\n      get it: {where}" for key, path, where in missing
        )
        raise StageError(
            f"checkpoint set {root}: {len(missing)} required file(s) missing:\n{lines}\n"
            "Download them (IndexTeam/IndexTTS-2 on Hugging Face, see docs/workflow.md), or run "
            "`tts demo-checkpoints DIR` for a small random DEMO set, and pass "
            "--config checkpoints=DIR."
        )
    cache = Path(out).parent.parent / "hash-cache.json"
    write_json(out, checkpoint_fingerprint(root, cache))


def run_validate(config: dict, out: str | Path) -> None:
    """Strictly load every component once per checkpoint set; stop on any broken file."""
    from tts.checkpoints import CheckpointSet
    from tts.validate import COMPONENT_NAMES, validate_set
    from tts.weight_report import file_verdict

    root = Path(config["checkpoints"])
    names = [
        n
        for n in COMPONENT_NAMES
        if n != "qwen_emotion" or CheckpointSet.open(root).path("qwen_emotion").is_dir()
    ]
    start = time.perf_counter()
    results = validate_set(root, names, with_stats=True)
    comps = []
    for r in results:
        log.info("%s %s: %s", "ok  " if r.ok else "FAIL", r.name, r.message)
        verdict = file_verdict(r.stats) if r.ok and r.stats else {}
        comps.append(
            {
                "name": r.name,
                "file": r.file,
                "ok": r.ok,
                "message": r.message,
                "tensors": r.tensors,
                "computed": r.computed,
                "verdict": verdict.get("verdict", "ok" if r.ok else "failed"),
                "flagged": verdict.get("flagged", [])[:20],
            }
        )
    bad = [c for c in comps if not c["ok"]]
    if bad:
        raise StageError(
            "weight validation failed:\n"
            + "\n".join(f"  - {c['name']}: {c['message']}" for c in bad)
        )
    write_json(
        out,
        {
            "components": comps,
            "seconds": time.perf_counter() - start,
            "demo": CheckpointSet.open(root).is_demo,
        },
    )


def _loaded(engine) -> float:
    """Seconds the engine has spent loading models so far (it loads lazily, on first use)."""
    return float(sum(getattr(engine, "load_seconds", {}).values()))


def _parts_loaded(engine) -> dict[str, float]:
    """The parts the engine loaded (``Engine.part`` names) and the seconds each took: what a
    job's status records, so that a job that loads more than its stage needs shows."""
    return {name: round(s, 3) for name, s in getattr(engine, "load_seconds", {}).items()}


def _save(path: str | Path, tensors: dict) -> None:
    from tts.pipeline import save_tensors

    save_tensors(path, tensors)


def _load(path: str | Path) -> dict:
    from tts.pipeline import load_tensors

    return load_tensors(path)


def _prefixed(rid: str, tensors: dict) -> dict:
    return {f"{rid}/{k}": v for k, v in tensors.items()}


def _unprefixed(rid: str, tensors: dict) -> dict:
    p = f"{rid}/"
    return {k[len(p) :]: v for k, v in tensors.items() if k.startswith(p)}


def run_speakers(config: dict, speakers: dict[str, str], out_dir: str, threads: int = 1) -> None:
    """Speaker conditioning for a group of prompt files (key -> path), in one process.

    Writes ``<key>.safetensors`` and ``<key>.json`` per speaker into ``out_dir``; the tensors
    include the file's emotion features (``Engine.emotion_features``), which the emotion job
    uses where the file is a row's emotion prompt too. A bad file
    fails its own speaker (and so its rows) only. The folder is filled under a temporary name
    and renamed into place, so a killed job never leaves a partial group behind.
    """
    from tts.audio import AudioError
    from tts.pipeline import EMOTION_FEATURES

    _set_threads(threads)
    out = Path(out_dir)
    for stale in out.parent.glob(f".{out.name}.*.tmp"):  # left by a killed job
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.mkdir(parents=True)
    engine = open_engine(config)
    for i, (key, audio) in enumerate(speakers.items(), start=1):
        start, load0 = time.perf_counter(), _loaded(engine)
        status: dict = {"audio": audio, "ok": True, "error": None}
        try:
            # The file is also an emotion prompt (of its rows without emotion audio, or a
            # row's emotion audio): their emotion job then needs no w2v-bert of its own, and
            # both features come from one w2v-bert forward.
            tensors = engine.speaker_conditioning(Path(audio), emotion_too=True)
            tensors[EMOTION_FEATURES] = engine.emotion_features(Path(audio)).float().cpu()
        except (AudioError, ValueError, FloatingPointError, OSError) as exc:
            tensors = {}
            status.update(ok=False, error=f"speaker {audio}: {_first_line(exc)}")
        status["load_seconds"] = _loaded(engine) - load0
        status["seconds"] = time.perf_counter() - start - status["load_seconds"]
        status["loaded"] = _parts_loaded(engine)  # so far in this job
        _progress(
            "speakers", i, len(speakers), key, status["ok"], status["seconds"], status["error"]
        )
        _save(tmp / f"{key}.safetensors", tensors)
        write_json(tmp / f"{key}.json", status)
    shutil.rmtree(out, ignore_errors=True)  # an empty folder made for the job, if any
    os.replace(tmp, out)


def _batch_inputs(spec_paths: Iterable[str], speaker_dirs: Iterable[str]):
    """(specs, speaker loader) for a batch job: ``speaker(key)`` -> (tensors, None) or
    (None, why it failed), looked up in the batch's speaker-group folders."""
    specs = [read_json(p) for p in spec_paths]
    dirs = [Path(d) for d in speaker_dirs]

    def speaker(key: str) -> tuple[dict | None, str | None]:
        found = [d for d in dirs if (d / f"{key}.json").is_file()]
        if not found:
            return None, f"speaker conditioning of {key} not found in {[str(d) for d in dirs]}"
        status = read_json(found[0] / f"{key}.json")
        if not status.get("ok"):
            return None, status.get("error") or "speaker conditioning failed"
        return _load(found[0] / f"{key}.safetensors"), None

    return specs, speaker


def _progress(
    stage: str, i: int, n: int, rid: str, ok: bool, seconds: float, error: str | None
) -> None:
    state = "ok" if ok else f"FAILED: {error}"
    log.info("[%s] row %d/%d %s: %s (%.2f s)", stage, i, n, rid, state, seconds)


def run_emotion(
    config: dict,
    spec_paths: list[str],
    speaker_dirs: list[str],
    out_tensors: str,
    out_status: str,
    threads: int = 1,
) -> None:
    """Emotion conditioning for every row of a batch.

    ``speaker_dirs``: the speaker-group folders of the batch's speakers and of its emotion
    audio files (whose emotion features, where a speaker job computed them, spare this job
    w2v-bert)."""
    _set_threads(threads)
    specs, speaker = _batch_inputs(spec_paths, speaker_dirs)
    engine = open_engine(config)
    engine.emotion_gpt_alone = True  # this job needs the GPT's emotion path only
    tensors: dict = {}
    rows: dict = {}
    speakers: dict[str, tuple] = {}
    load_total = 0.0
    for i, spec in enumerate(specs, start=1):
        rid = spec["id"]
        start, load0 = time.perf_counter(), _loaded(engine)
        error = spec.get("error")
        if not error:
            key = spec["speaker_key"]
            if key not in speakers:
                speakers[key] = speaker(key)
            spk, error = speakers[key]
        if not error:
            try:
                request = request_from_spec(spec)
                emotion_prompt = None
                if spec.get("emo_audio"):
                    emotion_prompt, _ = speaker(file_key(spec["emo_audio"]))  # None: not there
                value = engine.emotion_conditioning(request, spk, emotion_prompt)
                tensors.update(_prefixed(rid, value))
            except Exception as exc:  # noqa: BLE001 - a row's failure must not stop the batch
                error = f"emotion: {_first_line(exc)}"
        loading = _loaded(engine) - load0
        seconds = time.perf_counter() - start - loading
        rows[rid] = {"ok": error is None, "error": error, "timings": {"emotion": seconds}}
        load_total += loading
        _progress("emotion", i, len(specs), rid, error is None, seconds, error)
    _save(out_tensors, tensors)
    write_json(
        out_status, {"rows": rows, "load_seconds": load_total, "loaded": _parts_loaded(engine)}
    )


def _stage_rows(status_path: str) -> dict:
    return read_json(status_path)["rows"]


def run_text(config: dict, spec_paths: list[str], out_status: str, threads: int = 1) -> None:
    """The text front-end (normalise, tokenize, segment) for every row of a batch, on the CPU.

    A job of its own so that GPU jobs never run the normaliser: no GPU time is spent on it (the
    Chinese grammar takes 20-35 s to compile on a new machine) and GPU machines need no
    normaliser installed. A row whose text the front-end rejects fails here, with the reason;
    the other rows go on. The result per row is the :class:`tts.text.frontend.TextPlan`.
    """
    from tts.checkpoints import CheckpointSet
    from tts.text.frontend import TextFrontend

    _set_threads(threads)
    specs = [read_json(p) for p in spec_paths]
    cs = CheckpointSet.open(Path(config["checkpoints"]))
    frontends: dict[int, TextFrontend] = {}
    rows: dict = {}
    for i, spec in enumerate(specs, start=1):
        rid, start = spec["id"], time.perf_counter()
        error, plan = spec.get("error"), None
        if not error:
            try:
                opts = request_from_spec(spec).sampling_options()
                n = int(opts["max_text_tokens_per_segment"])
                if n not in frontends:
                    frontends[n] = TextFrontend.for_checkpoints(cs, n)
                plan = frontends[n].process(spec["text"]).to_dict()
            except Exception as exc:  # noqa: BLE001 - a row's failure must not stop the batch
                error = f"text: {_first_line(exc)}"
        seconds = time.perf_counter() - start
        rows[rid] = {
            "ok": error is None,
            "error": error,
            "plan": plan,
            "timings": {"text": seconds},
        }
        _progress("text", i, len(specs), rid, error is None, seconds, error)
    write_json(out_status, {"rows": rows})


def run_tokens(
    config: dict,
    spec_paths: list[str],
    speaker_dirs: list[str],
    emotion_tensors: str,
    emotion_status: str,
    out_tensors: str,
    out_status: str,
    threads: int = 1,
    text_status: str | None = None,
) -> None:
    """GPT semantic tokens for the rows of a batch that are still ok, in one engine call.

    ``text_status``: the batch's text stage output (:func:`run_text`); without it the engine
    runs the text front-end itself."""
    from tts.text.frontend import TextPlan

    _set_threads(threads)
    specs, speaker = _batch_inputs(spec_paths, speaker_dirs)
    previous = _stage_rows(emotion_status)
    texts = _stage_rows(text_status) if text_status else {}
    emo_all = _load(emotion_tensors)
    engine = open_engine(config)
    engine.gpt_speech_alone = True  # the emotion vectors come from the emotion job
    rows = {s["id"]: dict(previous[s["id"]]) for s in specs}
    for rid, text in texts.items():
        row = rows.get(rid)
        if row is None:
            continue
        row["timings"] = {**row["timings"], **text["timings"]}
        if row["ok"] and not text["ok"]:
            row.update(ok=False, error=text["error"])
    todo = [s for s in specs if rows[s["id"]]["ok"]]
    tensors: dict = {}
    if todo:
        reqs = [request_from_spec(s) for s in todo]
        for req in reqs:
            if req.id in texts:
                req.text_plan = TextPlan.from_dict(texts[req.id]["plan"])
        spks = [speaker(s["speaker_key"])[0] for s in todo]
        emos = [_unprefixed(s["id"], emo_all) for s in todo]
        start, load0 = time.perf_counter(), _loaded(engine)
        results_ = _engine_call(engine.semantic_tokens, reqs, spks, emos)
        loading = _loaded(engine) - load0
        wall = time.perf_counter() - start - loading
        for i, (s, res) in enumerate(zip(todo, results_, strict=True), start=1):
            row = rows[s["id"]]
            row["timings"] = {
                **row["timings"],
                **{f"tokens.{k}": v for k, v in res.timings.items()},
                "tokens": wall / len(todo),
            }
            if res.ok:
                tensors.update(_prefixed(s["id"], res.value))
            else:
                row.update(ok=False, error=f"semantic tokens: {res.error}")
            _progress("tokens", i, len(todo), s["id"], res.ok, wall / len(todo), res.error)
    _save(out_tensors, tensors)
    write_json(
        out_status,
        {"rows": rows, "load_seconds": _loaded(engine), "loaded": _parts_loaded(engine)},
    )


def _engine_call(fn, requests, *lists):
    """Call a batched engine stage. Out of GPU memory: retry in halves, down to single rows (a
    row that still does not fit fails alone). Any other exception fails the rows of that call,
    never the job."""
    import torch

    from tts.pipeline import RowResult, free_gpu_memory

    try:
        out = fn(requests, *lists)
        if len(out) != len(requests):
            raise RuntimeError(f"engine returned {len(out)} results for {len(requests)} rows")
        return out
    except torch.OutOfMemoryError:
        free_gpu_memory()
        if len(requests) == 1:
            log.error("row %s: out of GPU memory even alone", requests[0].id)
            return [
                RowResult(
                    requests[0].id,
                    error="out of GPU memory (even as a batch of one; "
                    "try a shorter text, a lower max_mel_tokens or dtype float16)",
                )
            ]
        half = len(requests) // 2
        log.warning("out of GPU memory with %d rows; retrying in halves", len(requests))
        return _engine_call(fn, requests[:half], *[x[:half] for x in lists]) + _engine_call(
            fn, requests[half:], *[x[half:] for x in lists]
        )
    except Exception as exc:  # noqa: BLE001
        log.error("batch call failed: %s", traceback.format_exc())
        return [RowResult(r.id, error=_first_line(exc)) for r in requests]


def run_render(
    config: dict,
    spec_paths: list[str],
    speaker_dirs: list[str],
    tokens_tensors: str,
    tokens_status: str,
    out_dir: str,
    out_status: str,
    threads: int = 1,
) -> None:
    """DiT + vocoder for the rows of a batch; one WAV per ok row, written atomically."""
    import torch

    from tts.pipeline import SAMPLE_RATE

    _set_threads(threads)
    specs, speaker = _batch_inputs(spec_paths, speaker_dirs)
    rows = {
        s["id"]: dict(r)
        for s, r in zip(specs, (_stage_rows(tokens_status)[s["id"]] for s in specs), strict=True)
    }
    tok_all = _load(tokens_tensors)
    engine = open_engine(config)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    todo = [s for s in specs if rows[s["id"]]["ok"]]
    if todo:
        reqs = [request_from_spec(s) for s in todo]
        spks = [speaker(s["speaker_key"])[0] for s in todo]
        toks = [_unprefixed(s["id"], tok_all) for s in todo]
        start, load0 = time.perf_counter(), _loaded(engine)
        results_ = _engine_call(engine.render, reqs, spks, toks)
        loading = _loaded(engine) - load0
        wall = time.perf_counter() - start - loading
        for i, (s, res) in enumerate(zip(todo, results_, strict=True), start=1):
            row = rows[s["id"]]
            row["timings"] = {
                **row["timings"],
                **{f"render.{k}": v for k, v in res.timings.items()},
                "render": wall / len(todo),
            }
            error = res.error
            if res.ok:
                wav = res.value["wav"].detach().float().reshape(-1).cpu()
                if wav.numel() == 0:
                    error = "empty waveform"
                elif not bool(torch.isfinite(wav).all()):
                    error = "NaN or inf in the waveform"
                else:
                    name = f"{s['id']}.wav"
                    write_wav(Path(out_dir) / name, wav, SAMPLE_RATE)
                    row.update(
                        wav=name, duration=wav.numel() / SAMPLE_RATE, sample_rate=SAMPLE_RATE
                    )
            if error:
                row.update(ok=False, error=f"render: {error}")
            _progress("render", i, len(todo), s["id"], error is None, wall / len(todo), error)
    write_json(
        out_status,
        {
            "rows": rows,
            "demo": engine.is_demo,
            "load_seconds": _loaded(engine),
            "loaded": _parts_loaded(engine),
            "provenance": _safe_provenance(engine),
        },
    )


def _safe_provenance(engine) -> dict:
    try:
        return engine.provenance()
    except Exception as exc:  # noqa: BLE001 - provenance must never fail a render
        return {"error": _first_line(exc)}


def write_wav(path: Path, wav, sample_rate: int) -> None:
    """Write a float waveform in [-1, 1] as 16-bit PCM WAV, atomically (tts.audio)."""
    from tts.audio import write_wav as _write_wav

    _write_wav(path, wav, sample_rate)


def scoring_config(config: dict) -> dict:
    """The ``scoring`` section for :class:`tts.scoring.Scorer`, with the run's checkpoints and
    device filled in (the campplus similarity backend uses them)."""
    cfg = dict(config.get("scoring") or {})
    cfg.setdefault("checkpoints", str(config["checkpoints"]))
    device = str(config.get("device", "cpu"))
    if device == "auto" or device.startswith("cuda"):
        import torch

        device = device if device != "auto" and torch.cuda.is_available() else "cpu"
    cfg.setdefault("device", device)
    return cfg


def run_score(
    config: dict,
    spec_paths: list[str],
    render_status: str,
    wav_dir: str,
    out_status: str,
    threads: int = 1,
) -> None:
    """Intelligibility (ASR WER/CER) and speaker similarity for the ok rows of a batch."""
    from tts.scoring import Scorer, ScoreRequest

    _set_threads(threads)
    specs = [read_json(p) for p in spec_paths]
    rows = _stage_rows(render_status)
    todo = [s for s in specs if rows[s["id"]]["ok"]]
    out: dict = {}
    if todo:
        try:
            scorer = Scorer(scoring_config(config))
        except ValueError as exc:
            raise StageError(f"scoring configuration: {exc}") from None
        start = time.perf_counter()
        requests = [
            ScoreRequest(
                audio=Path(wav_dir) / rows[s["id"]]["wav"],
                text=s["text"],
                speaker=s["speaker"],
                id=s["id"],
            )
            for s in todo
        ]
        try:
            scored = scorer.score_rows(requests)
        except Exception as exc:  # noqa: BLE001 - scoring never fails the rows' audio
            log.error("scoring failed: %s", traceback.format_exc())
            scored = [
                {"verdict": "unchecked", "reasons": f"scoring failed: {_first_line(exc)}"}
                for _ in todo
            ]
        each = (time.perf_counter() - start) / len(todo)
        for i, (s, res) in enumerate(zip(todo, scored, strict=True), start=1):
            out[s["id"]] = {**res, "score_seconds": each}
            _progress("score", i, len(todo), s["id"], True, each, None)
            log.info(
                "[score] %s: verdict %s %s", s["id"], res.get("verdict"), res.get("reasons") or ""
            )
    write_json(out_status, {"rows": out})


def results_dir(config: dict) -> str:
    """The results folder named by the config (``results``), without a trailing slash."""
    return str(config.get("results", "results")).rstrip("/") or "results"


def print_summary(metrics: str | Path, failed_run: bool = False, out=None) -> None:
    """The run's closing summary: counts, and every failed row with its error."""
    out = out or sys.stderr
    if failed_run:
        print(
            "\nThe run stopped with an error (see the messages and log files above); "
            "rerun the same command to resume.",
            file=out,
        )
        return
    import pandas as pd

    try:
        table = pd.read_csv(
            metrics, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE
        )
    except (OSError, ValueError):
        return
    ok = table[table["status"] == "ok"]
    failed = table[table["status"] != "ok"]
    passed = (ok["verdict"] == "pass").sum() if "verdict" in ok else 0
    lines = [
        f"\nSummary: {len(table)} row(s): {len(ok)} ok ({passed} pass the thresholds), "
        f"{len(failed)} failed. Report: {Path(metrics).parent / 'report.html'}"
    ]
    for _, row in failed.iterrows():
        lines.append(f"  FAILED {row['id']}: {row['error']}")
    print("\n".join(lines), file=out)
