"""tts.gpu_slots: one GPU per job, simulated on the CPU with fake device lists.

The allocator never touches CUDA (it only locks files and sets CUDA_VISIBLE_DEVICES), so K
"GPUs" are K made-up device ids: K processes holding slots at once get K distinct ids, a K+1th
waits (or fails with a timeout), and a SIGKILLed holder's slot is free again at once. A row's
audio must not depend on which slot or which batch ran it: two jobs on two slots, one with the
row alone and one with it in the middle of a batch, write the same bits (with one GPT item per
call, ``gpt_batch_items`` 1, and on CUDA one segment per s2mel solve, ``render_batch_items`` 1:
batched calls agree with the row alone only to float rounding, see tests/test_batching.py and
docs/multi_gpu.md). The last test does the same on one real GPU
(skipped without CUDA).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tts import gpu_slots
from tts.gpu_slots import GpuSlotError, NoFreeGpu, device_pool

REPO = Path(__file__).resolve().parents[1]
SPEAKERS = REPO / "config" / "speakers"

# A stand-in for a workflow job: claim a slot as the GPU scripts do, report what it got, then
# hold the slot until told to go (or killed).
HOLDER = r"""
import json, os, sys, time
from pathlib import Path
from tts import gpu_slots

out, cfg = Path(sys.argv[1]), json.loads(sys.argv[2])
try:
    slot = gpu_slots.claim_gpu(cfg)
except gpu_slots.NoFreeGpu as exc:
    out.write_text(json.dumps({"error": str(exc)}))
    sys.exit(3)
info = {"pid": os.getpid(), "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "index": None if slot is None else slot.index, "device": cfg.get("device"),
        "order": os.environ.get("CUDA_DEVICE_ORDER")}
out.with_suffix(".tmp").write_text(json.dumps(info))
os.replace(out.with_suffix(".tmp"), out)
while not out.with_suffix(".go").exists():
    time.sleep(0.02)
"""


def _env(lock_dir: Path, **extra: str) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "SLURM_JOB_ID")
        and not k.startswith("TTS_GPU_")
    }
    env.update(TTS_GPU_LOCK_DIR=str(lock_dir), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.update(extra)
    return env


class Holder:
    """One holder process; ``result()`` waits for what it claimed."""

    def __init__(self, folder: Path, name: str, env: dict, config: dict | None = None):
        self.out = folder / f"{name}.json"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(self.out), json.dumps(config or {"device": "cuda"})],
            env=env,
            cwd=folder,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def result(self, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while not self.out.exists():
            if self.proc.poll() is not None and not self.out.exists():
                raise AssertionError(
                    f"holder exited {self.proc.returncode}: {self.proc.stdout.read()}"
                )
            assert time.monotonic() < deadline, "holder got no slot in time"
            time.sleep(0.02)
        return json.loads(self.out.read_text())

    def has_result(self) -> bool:
        return self.out.exists()

    def go(self) -> int:
        self.out.with_suffix(".go").touch()
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.kill()


@pytest.fixture
def holders(tmp_path):
    started: list[Holder] = []

    def start(name: str, env: dict, config: dict | None = None) -> Holder:
        h = Holder(tmp_path, name, env, config)
        started.append(h)
        return h

    yield start
    for h in started:
        h.stop()


# ---------------------------------------------------------------------------------------------
# The device pool
# ---------------------------------------------------------------------------------------------


def test_pool_maps_slots_to_cuda_visible_devices_entries():
    env = {"CUDA_VISIBLE_DEVICES": "4,6,7"}
    assert device_pool({}, env) == ["4", "6", "7"]
    assert device_pool({"gpus": 2}, env) == ["4", "6"]
    assert device_pool({"gpus": ["7", 4]}, env) == ["7", "4"]
    assert device_pool({"device": "cuda:1"}, env) == ["6"]  # cuda:N: the N-th visible device
    assert device_pool({"device": "cuda:1", "gpus": ["7", "4"]}, env) == ["4"]
    assert device_pool({}, {"CUDA_VISIBLE_DEVICES": " 2, GPU-1a2b ,"}) == ["2", "GPU-1a2b"]
    assert device_pool({}, {"CUDA_VISIBLE_DEVICES": "2,-1,3"}) == ["2"]  # CUDA stops at -1
    assert device_pool({}, {"CUDA_VISIBLE_DEVICES": ""}) == []  # no GPU visible


@pytest.mark.parametrize(
    "config, message",
    [
        ({"gpus": 4}, "only 3 GPU(s) are CUDA_VISIBLE_DEVICES=4,6,7"),
        ({"gpus": ["1"]}, "names 1, which CUDA_VISIBLE_DEVICES=4,6,7 does not make visible"),
        ({"gpus": 0}, "must be at least 1"),
        ({"gpus": "two"}, "give a number of GPUs or a list"),
        ({"gpus": []}, "an empty list"),
        ({"device": "cuda:3"}, "cuda:3 was requested, but only 3 GPU(s)"),
    ],
)
def test_pool_errors_are_clear(config, message):
    with pytest.raises(GpuSlotError) as err:
        device_pool(config, {"CUDA_VISIBLE_DEVICES": "4,6,7"})
    assert message in str(err.value)


def test_pool_without_cuda_visible_devices_uses_the_host_gpus(monkeypatch, tmp_path):
    fake = tmp_path / "gpus"
    for bus in ("0000:17:00.0", "0000:65:00.0", "0000:ca:00.0"):
        (fake / bus).mkdir(parents=True)
    monkeypatch.setattr(gpu_slots, "_NVIDIA_PROC", fake)
    assert gpu_slots.detect_gpus() == ["0", "1", "2"]
    assert device_pool({}, {}) == ["0", "1", "2"]
    assert device_pool({"gpus": 2}, {}) == ["0", "1"]
    assert device_pool({"gpus": [2, 0]}, {}) == ["2", "0"]
    assert device_pool({"device": "cuda:2"}, {}) == ["2"]
    monkeypatch.setattr(gpu_slots, "_NVIDIA_PROC", tmp_path / "none")
    monkeypatch.setattr(gpu_slots.shutil, "which", lambda name: None)
    assert gpu_slots.detect_gpus() == []
    with pytest.raises(GpuSlotError, match="only 0 GPU"):
        device_pool({"gpus": 1}, {})


def test_cpu_jobs_take_no_slot_unless_simulating(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("TTS_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.delenv("TTS_GPU_SLOTS", raising=False)
    with gpu_slots.gpu_slot({"device": "cpu"}) as slot:
        assert slot is None and os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
    monkeypatch.setenv("TTS_GPU_SLOTS", "off")
    with gpu_slots.gpu_slot({"device": "cuda"}) as slot:
        assert slot is None
    monkeypatch.setenv("TTS_GPU_SLOTS", "on")  # simulation: cpu jobs take slots too
    with gpu_slots.gpu_slot({"device": "cpu"}) as slot:
        assert slot is not None and os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    monkeypatch.setenv("TTS_GPU_SLOTS", "sometimes")
    with pytest.raises(GpuSlotError, match="auto, on or off"), gpu_slots.gpu_slot({}):
        pass


def test_auto_device_without_gpus_takes_no_slot(monkeypatch, tmp_path):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("TTS_GPU_SLOTS", raising=False)
    monkeypatch.setattr(gpu_slots, "detect_gpus", lambda: [])
    monkeypatch.setattr(gpu_slots, "_CLAIMED", None)
    assert gpu_slots.claim_gpu({"device": "auto"}, folder=tmp_path) is None
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


# ---------------------------------------------------------------------------------------------
# In one process
# ---------------------------------------------------------------------------------------------


def test_context_manager_sets_and_restores_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setenv("TTS_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.delenv("TTS_GPU_SLOTS", raising=False)
    with gpu_slots.gpu_slot({"device": "cuda"}) as first:
        assert (first.index, first.device) == (0, "3")
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
        # The lock is per open file, so a second claim in the same process is a second job.
        second = gpu_slots.acquire(["3", "5"], folder=tmp_path, timeout=0)
        assert second.device == "5"
        with pytest.raises(NoFreeGpu, match=r"all 2 GPU slot\(s\) \(3, 5\) stayed taken"):
            gpu_slots.acquire(["3", "5"], folder=tmp_path, timeout=0)
        second.release()
        assert gpu_slots.acquire(["3", "5"], folder=tmp_path, timeout=0).device == "5"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,5"
    assert gpu_slots.acquire(["3", "5"], folder=tmp_path, timeout=0).device == "3"


def test_own_numbering_uses_pci_bus_order(monkeypatch, tmp_path):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    monkeypatch.setattr(gpu_slots, "detect_gpus", lambda: ["0", "1"])
    monkeypatch.setenv("TTS_GPU_LOCK_DIR", str(tmp_path))
    with gpu_slots.gpu_slot({"device": "cuda"}):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
        assert os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"  # ids as nvidia-smi shows them
    assert "CUDA_VISIBLE_DEVICES" not in os.environ and "CUDA_DEVICE_ORDER" not in os.environ


def test_claim_rewrites_cuda_n_and_is_held_once(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    monkeypatch.delenv("TTS_GPU_SLOTS", raising=False)
    monkeypatch.setattr(gpu_slots, "_CLAIMED", None)
    config = {"device": "cuda:1"}
    slot = gpu_slots.claim_gpu(config, folder=tmp_path)
    try:
        assert slot.device == "6" and os.environ["CUDA_VISIBLE_DEVICES"] == "6"
        assert config["device"] == "cuda"  # inside the job, its one GPU is cuda:0
        assert gpu_slots.claim_gpu({"device": "cuda"}, folder=tmp_path) is slot
    finally:
        slot.release()


def test_refuses_once_cuda_is_initialised(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    slot = gpu_slots.acquire(["0", "1"], folder=tmp_path, timeout=0)
    try:
        with pytest.raises(GpuSlotError, match="CUDA is already initialised"):
            slot.apply()
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
    finally:
        slot.release()


def test_timeout_from_the_environment(monkeypatch, tmp_path):
    held = gpu_slots.acquire(["a"], folder=tmp_path, timeout=0)
    monkeypatch.setenv("TTS_GPU_WAIT", "0.3")
    start = time.monotonic()
    with pytest.raises(NoFreeGpu, match=f"pid {os.getpid()}"):
        gpu_slots.acquire(["a"], folder=tmp_path)
    assert 0.25 <= time.monotonic() - start < 5
    monkeypatch.setenv("TTS_GPU_WAIT", "soon")
    with pytest.raises(GpuSlotError, match="not a number"):
        gpu_slots.acquire(["a"], folder=tmp_path)
    held.release()


def test_default_lock_folder_is_private(monkeypatch, tmp_path):
    monkeypatch.delenv("TTS_GPU_LOCK_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    folder = gpu_slots.lock_dir()
    assert folder == tmp_path / f"tts-gpu-locks-{os.getuid()}"
    assert folder.is_dir() and folder.stat().st_mode & 0o777 == 0o700


# ---------------------------------------------------------------------------------------------
# Several processes
# ---------------------------------------------------------------------------------------------


def test_k_jobs_get_k_distinct_gpus_and_the_next_one_waits(holders, tmp_path):
    env = _env(tmp_path / "locks", CUDA_VISIBLE_DEVICES="3,5,7")
    jobs = [holders(f"job{i}", env) for i in range(3)]
    got = [j.result() for j in jobs]
    assert sorted(g["cvd"] for g in got) == ["3", "5", "7"]
    assert sorted(g["index"] for g in got) == [0, 1, 2]
    assert all(g["order"] is None for g in got)  # a user's list keeps the user's device order

    # A 4th job with a time limit of 0 fails at once and names the holders.
    late = holders("late", {**env, "TTS_GPU_WAIT": "0"})
    assert late.proc.wait(timeout=60) == 3
    message = json.loads(late.out.read_text())["error"]
    for g in got:
        assert f"pid {g['pid']}" in message
    assert "--resources gpu=3" in message

    # Without a limit it waits, and gets the slot the first finished job gives back.
    waiting = holders("waiting", env)
    time.sleep(1.0)
    assert not waiting.has_result() and waiting.proc.poll() is None
    freed = next(j for j, g in zip(jobs, got, strict=True) if g["cvd"] == "5")
    assert freed.go() == 0
    assert waiting.result()["cvd"] == "5"


def test_a_killed_job_never_leaks_its_slot(holders, tmp_path):
    env = _env(tmp_path / "locks", CUDA_VISIBLE_DEVICES="0,1")
    a, b = holders("a", env), holders("b", env)
    got = {a.result()["cvd"], b.result()["cvd"]}
    assert got == {"0", "1"}
    lost = b.result()["cvd"]
    b.kill()  # SIGKILL: no cleanup code runs; the kernel drops the flock with the process
    c = holders("c", {**env, "TTS_GPU_WAIT": "10"})
    assert c.result()["cvd"] == lost
    assert a.go() == 0


def test_pinned_device_jobs_take_turns(holders, tmp_path):
    env = _env(tmp_path / "locks", CUDA_VISIBLE_DEVICES="2,3")
    a = holders("a", env, {"device": "cuda:1"})
    assert a.result() == {**a.result(), "cvd": "3", "device": "cuda"}
    b = holders("b", {**env, "TTS_GPU_WAIT": "0"}, {"device": "cuda:1"})
    assert b.proc.wait(timeout=60) == 3  # cuda:1 is one GPU: never two jobs on it


def test_slurm_jobs_never_contend_with_each_other(holders, tmp_path):
    # SLURM renumbers each job's GPUs from 0; two SLURM jobs on one node both see "0".
    base = _env(tmp_path / "locks", CUDA_VISIBLE_DEVICES="0")
    a = holders("a", {**base, "SLURM_JOB_ID": "101"})
    b = holders("b", {**base, "SLURM_JOB_ID": "102", "TTS_GPU_WAIT": "0"})
    assert a.result()["cvd"] == "0" and b.result()["cvd"] == "0"
    c = holders("c", {**base, "SLURM_JOB_ID": "101", "TTS_GPU_WAIT": "0"})
    assert c.proc.wait(timeout=60) == 3  # but jobs of one allocation do share its GPUs


# ---------------------------------------------------------------------------------------------
# The workflow's wiring
# ---------------------------------------------------------------------------------------------


def _gpu_rule_scripts() -> list[Path]:
    scripts = []
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for rule in re.split(r"\nrule ", smk.read_text(encoding="utf-8"))[1:]:
            if re.search(r"resources:\s*\n\s*gpu=", rule):
                scripts.append(
                    REPO
                    / "workflow"
                    / "rules"
                    / re.search(r'script:\s*\n\s*"([^"]+)"', rule).group(1)
                )
    return [p.resolve() for p in scripts]


def test_every_gpu_rule_claims_its_gpu_first():
    scripts = _gpu_rule_scripts()
    assert len(scripts) >= 4, scripts
    for path in scripts:
        body = path.read_text(encoding="utf-8").split("with jobs.job_log(snakemake.log[0]):\n", 1)
        assert len(body) == 2, path
        first = body[1].splitlines()[0].strip()
        assert first.startswith("gpu_slots.claim_gpu(snakemake.config)"), (path, first)


def test_config_schema_accepts_gpus():
    import yaml
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    schema = str(REPO / "workflow" / "schemas" / "config.schema.yaml")
    for ok in (None, 2, ["0", "1"], [0, "GPU-8a1f-22"], ["MIG-4b2c/1/0"]):
        validate({**base, "gpus": ok}, schema)
    for bad in (0, "two", [], ["0", "0"], [-1]):
        with pytest.raises(WorkflowError):
            validate({**base, "gpus": bad}, schema)


# ---------------------------------------------------------------------------------------------
# A row's audio does not depend on its slot or its batch
# ---------------------------------------------------------------------------------------------

# One job: claim a slot, then run the workflow's stages over a batch (speaker conditioning per
# prompt, emotion per row, then the GPT and the renderer over the whole batch) and save each
# row's waveform. Jobs wait for each other after claiming, so they hold different slots.
ROW_JOB = r"""
import json, os, sys, time
from pathlib import Path
from tts import gpu_slots

out = Path(sys.argv[1])
job = json.loads(sys.argv[2])
slot = gpu_slots.claim_gpu({"device": job["device"]})
t_claim = time.time()
(out / f"claimed-{job['name']}").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", ""))
while len(list(out.glob("claimed-*"))) < job["jobs"]:
    time.sleep(0.05)
import torch
torch.set_num_threads(1)
from tts.pipeline import Engine, SynthesisRequest, save_tensors

engine = Engine.open(job["checkpoints"], device=job["device"],
                     gpt_batch_items=job.get("gpt_batch_items", 16),
                     render_batch_items=job.get("render_batch_items", 16))
info = {"cvd": os.environ.get("CUDA_VISIBLE_DEVICES"), "visible": torch.cuda.device_count()}
reqs = [SynthesisRequest(id=r["id"], text=r["text"], speaker=Path(r["speaker"]),
                         seed=r.get("seed"), sampling=job["sampling"]) for r in job["rows"]]
speakers = {}
for r in reqs:
    if r.speaker not in speakers:
        speakers[r.speaker] = engine.speaker_conditioning(r.speaker)
spks = [speakers[r.speaker] for r in reqs]
emos = [engine.emotion_conditioning(r, s) for r, s in zip(reqs, spks)]
toks = engine.semantic_tokens(reqs, spks, emos)
assert all(t.ok for t in toks), [t.error for t in toks]
wavs = engine.render(reqs, spks, [t.value for t in toks])
assert all(w.ok for w in wavs), [w.error for w in wavs]
save_tensors(out / f"{job['name']}.safetensors", {w.id: w.value["wav"] for w in wavs})
info.update(t_claim=t_claim, t_end=time.time())
(out / f"{job['name']}.json").write_text(json.dumps(info))
"""

FAST = {"max_mel_tokens": 20, "num_beams": 1, "diffusion_steps": 3}


def _rows() -> list[dict]:
    a, b = sorted(SPEAKERS.glob("*.wav"))[:2]
    return [
        {"id": "before", "text": "The first row of the batch.", "speaker": str(b)},
        {"id": "x", "text": "Hello world.", "speaker": str(a)},  # per-row seed from id and text
        {"id": "pinned", "text": "A row with its own seed.", "speaker": str(a), "seed": 1234},
    ]


def _run_jobs(
    tmp_path: Path,
    ckpt: Path,
    device: str,
    pool_env: dict,
    batches: dict,
    together: bool = True,
    sampling: dict | None = None,
) -> dict:
    """Start one job per batch at once; {job: (info, {row: wav})}. ``together``: every job
    holds its slot until all have one (so they hold different slots)."""
    from tts.pipeline import load_tensors

    env = _env(tmp_path / "locks", **pool_env)
    procs = {}
    for name, rows in batches.items():
        job = {
            "name": name,
            "jobs": len(batches) if together else 1,
            "device": device,
            "checkpoints": str(ckpt),
            "rows": rows,
            "sampling": sampling or FAST,
            "gpt_batch_items": 1,
            "render_batch_items": 1,
        }  # bit equality needs one GPT item per call and one segment per solve (module doc)
        procs[name] = subprocess.Popen(
            [sys.executable, "-c", ROW_JOB, str(tmp_path), json.dumps(job)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    out = {}
    for name, proc in procs.items():
        text, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, text[-4000:]
        out[name] = (
            json.loads((tmp_path / f"{name}.json").read_text()),
            load_tensors(tmp_path / f"{name}.safetensors"),
        )
    return out


@pytest.fixture(scope="module")
def demo_checkpoints(tmp_path_factory) -> Path:
    from tts.demo import write_demo_checkpoints

    return write_demo_checkpoints(tmp_path_factory.mktemp("demo"), seed=3)


@pytest.mark.slow
def test_row_audio_is_the_same_alone_or_in_a_batch_on_another_slot(demo_checkpoints, tmp_path):
    rows = _rows()
    x = rows[1]
    runs = _run_jobs(
        tmp_path,
        demo_checkpoints,
        "cpu",
        {"TTS_GPU_SLOTS": "on", "CUDA_VISIBLE_DEVICES": "0,1"},
        {"batch": rows, "alone": [x]},
    )
    (batch_info, batch), (alone_info, alone) = runs["batch"], runs["alone"]
    assert {batch_info["cvd"], alone_info["cvd"]} == {"0", "1"}  # two jobs, two slots
    assert set(batch) == {"before", "x", "pinned"} and batch["x"].numel() > 0
    assert torch.equal(batch["x"], alone["x"]), "a row's audio depends on its batch or slot"
    n = min(batch["x"].numel(), batch["before"].numel())
    assert not torch.equal(batch["x"][:n], batch["before"][:n])  # the rows are not all alike


@pytest.mark.gpu
def test_two_jobs_on_one_real_gpu_take_turns_and_agree(demo_checkpoints, tmp_path):
    """Two jobs, one real GPU named by its UUID: one job at a time, each sees only that GPU,
    and a row gives the same bits alone and after another row of its batch."""
    uuid = str(torch.cuda.get_device_properties(0).uuid)
    uuid = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
    rows = _rows()
    runs = _run_jobs(
        tmp_path,
        demo_checkpoints,
        "cuda",
        {"CUDA_VISIBLE_DEVICES": uuid},
        {"batch": rows, "alone": [rows[1]]},
        together=False,
    )
    (i1, w1), (i2, w2) = runs["batch"], runs["alone"]
    for info in (i1, i2):
        assert (info["cvd"], info["visible"]) == (uuid, 1)
    first, second = sorted((i1, i2), key=lambda i: i["t_claim"])
    assert second["t_claim"] >= first["t_end"], "two jobs held the one GPU at once"
    assert torch.equal(w1["x"], w2["x"]), "a row's audio on the GPU depends on its batch"


def test_jobs_on_one_slot_wait_for_each_other(holders, tmp_path):
    env = _env(tmp_path / "locks", CUDA_VISIBLE_DEVICES="GPU-0f0f")
    a = holders("a", env)
    assert a.result()["cvd"] == "GPU-0f0f"
    b = holders("b", env)
    time.sleep(0.8)
    assert not b.has_result()
    assert a.go() == 0
    assert b.result()["cvd"] == "GPU-0f0f"


# ---------------------------------------------------------------------------------------------
# The workflow on two simulated GPUs
# ---------------------------------------------------------------------------------------------

_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_SLOT = re.compile(r"GPU slot (\d+) of (\d+): CUDA_VISIBLE_DEVICES=(\S+)")


def slot_intervals(logs: Path) -> dict[str, list[tuple[float, float, str]]]:
    """device -> [(first, last log time, log file)] of every job that took a GPU slot. The slot
    line is a job's first log line, and a slot is only given back when its job's process has
    ended, so two jobs of one slot must not overlap even by these (inner) bounds."""
    from datetime import datetime

    def seconds(stamp: str) -> float:
        return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()

    out: dict[str, list] = {}
    for path in sorted(logs.glob("*/*.log")):
        lines = path.read_text(encoding="utf-8").splitlines()
        slot = next((m for m in map(_SLOT.search, lines) if m), None)
        if slot is None:
            continue
        stamps = [m.group(1) for m in map(_STAMP.match, lines) if m]
        out.setdefault(slot.group(3), []).append(
            (seconds(stamps[0]), seconds(stamps[-1]), f"{path.parent.name}/{path.name}")
        )
    return {dev: sorted(v) for dev, v in out.items()}


@pytest.mark.slow
def test_workflow_on_two_simulated_gpus(demo_checkpoints, tmp_path):
    """`--resources gpu=2` with two (fake) GPUs: every GPU job holds a slot, both slots work,
    never two jobs on one; a row in the middle of a batch sounds as when synthesised alone."""
    import shutil

    import soundfile as sf
    import yaml

    from tts import jobs
    from tts.pipeline import SAMPLE_RATE

    wd = tmp_path / "run"
    (wd / "config").mkdir(parents=True)
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    # bit equality: one GPT item per call, one segment per s2mel solve
    cfg.update(threads=1, batch_size=2, gpt_batch_items=1, render_batch_items=1)
    cfg["sampling"].update(max_mel_tokens=20, diffusion_steps=3, num_beams=1)
    cfg["scoring"].update(similarity="none")
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    speaker = sorted(SPEAKERS.glob("*.wav"))[0]
    shutil.copy(speaker, wd / "a.wav")
    (wd / "rows.tsv").write_text(
        "id\ttext\tspeaker\na\tThe first row.\ta.wav\n"
        "b\tHello world.\ta.wav\nc\tThe third row.\ta.wav\n"
    )
    env = _env(tmp_path / "locks", TTS_GPU_SLOTS="on")
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(wd),
        "--cores",
        "2",
        "--resources",
        "gpu=2",
        "--config",
        f"checkpoints={demo_checkpoints}",
        "device=cpu",
        "texts=rows.tsv",
        "results=out",
        "gpus=[g0,g1]",
    ]
    proc = subprocess.run(
        cmd,
        cwd=wd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-6000:]

    intervals = slot_intervals(wd / "out" / "logs")
    gpu_jobs = sum(len(v) for v in intervals.values())
    assert gpu_jobs == 1 + 2 * 4, intervals  # one speaker job; 2 batches x 4 stages
    assert set(intervals) == {"g0", "g1"}, intervals  # both GPUs were used
    for dev, spans in intervals.items():
        for before, after in zip(spans, spans[1:], strict=False):
            assert before[1] <= after[0], f"two jobs on {dev} at once: {before} and {after}"

    # Row b ran second in its batch, on whichever slot; alone, on another, it gives the same.
    spec = json.loads((wd / "out" / "specs" / "b.json").read_text())
    row = {
        "id": "b",
        "text": spec["text"],
        "speaker": str(wd / spec["speaker"]),
        "seed": spec["seed"],
    }
    alone = tmp_path / "alone"
    alone.mkdir()
    ((_, wavs),) = _run_jobs(
        alone,
        demo_checkpoints,
        "cpu",
        {"TTS_GPU_SLOTS": "off"},
        {"alone": [row]},
        sampling=spec["sampling"],
    ).values()
    jobs.write_wav(alone / "b.wav", wavs["b"], SAMPLE_RATE)
    want, _ = sf.read(alone / "b.wav", dtype="int16")
    got, _ = sf.read(wd / "out" / "audio" / "b.wav", dtype="int16")
    assert got.shape == want.shape and (got == want).all()
