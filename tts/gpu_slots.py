"""GPU slots: pin each GPU job of the workflow to one GPU of its own.

``snakemake --cores N --resources gpu=K`` lets Snakemake run at most K GPU jobs at once (every
GPU rule declares ``resources: gpu=1``). Snakemake does not say *which* GPU a job may use, so
without help all K jobs would open ``cuda:0``. This module makes that choice, and nothing else:
it is not a scheduler, it never decides how many jobs run.

How a job gets its GPU
    The devices a job may choose from (its *pool*) are, in order of precedence:

    * the config's ``gpus``: a count K (the first K devices below) or a list of device ids;
    * the entries of an existing ``CUDA_VISIBLE_DEVICES`` (slot i is its i-th entry; a ``gpus``
      list must then name entries of it);
    * otherwise every GPU of the host, counted without initialising CUDA (the NVIDIA driver's
      ``/proc/driver/nvidia/gpus``, else ``nvidia-smi``), numbered 0..n-1 in PCI bus order.

    Slot i of the pool owns one lock file. The job tries each slot in order with an exclusive,
    non-blocking ``fcntl.flock`` and keeps the first it gets; then it sets
    ``CUDA_VISIBLE_DEVICES`` to that one device, so ``cuda``/``cuda:0`` in the job is its own GPU
    and no other GPU is visible to it. The lock is held for the life of the process: the kernel
    drops a flock when the last descriptor of the open file goes away, so a job that exits,
    crashes or is SIGKILLed never leaks its slot, and there is nothing to clean up (lock files are
    never deleted: deleting one while it is held would let two jobs lock different files of the
    same name).

When every slot is taken
    Within one correctly configured run this does not happen (Snakemake starts at most K GPU
    jobs, K <= the number of GPUs). It happens when ``--resources gpu`` is larger than the pool
    or left out (Snakemake then bounds GPU jobs by cores only), or when two runs share the
    host's GPUs. The job then waits, polling, until a slot frees (the GPUs are busy: waiting is
    the right thing), logging who holds the slots; ``timeout`` (or ``TTS_GPU_WAIT`` seconds in
    the environment) turns the wait into a :class:`NoFreeGpu` error after that long (0: at once).

Where the locks live
    ``$TTS_GPU_LOCK_DIR`` when set, else a private per-user folder (``$XDG_RUNTIME_DIR`` or the
    temporary folder), so every run of the same user on the host shares one set of slots. File
    names carry the host name (a lock folder on a shared file system is safe) and, inside a
    SLURM job, the job id: SLURM already gives each of its jobs its own GPUs (``--gpus``), often
    renumbered from 0 inside the job, so jobs of different SLURM jobs must never contend.

Modes (``TTS_GPU_SLOTS``)
    ``auto`` (default): take a slot when the job's device is CUDA (``cuda``, ``cuda:N``, or
    ``auto`` with a GPU present); ``off``: never (the job uses whatever it is given); ``on``:
    also for ``device: cpu`` - this is how the tests simulate several GPUs on a CPU machine.

Usage: the workflow's GPU scripts call :func:`claim_gpu` first thing; anything else can use the
context manager :func:`gpu_slot`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("tts.gpu_slots")

ENV_LOCK_DIR = "TTS_GPU_LOCK_DIR"
ENV_MODE = "TTS_GPU_SLOTS"
ENV_WAIT = "TTS_GPU_WAIT"
_NVIDIA_PROC = Path("/proc/driver/nvidia/gpus")
_REPORT_EVERY_S = 300.0


class GpuSlotError(RuntimeError):
    """The slot pool cannot be formed (bad ``gpus`` setting, CUDA already initialised, ...)."""


class NoFreeGpu(GpuSlotError):
    """Every slot stayed taken for the whole ``timeout``."""


@dataclass
class GpuSlot:
    """One held slot: position ``index`` of ``pool``, i.e. the device id ``device``.

    The slot is held while ``fd`` (an open, flocked lock file) stays open. :meth:`apply` points
    ``CUDA_VISIBLE_DEVICES`` at the device; :meth:`release` unlocks and undoes :meth:`apply`.
    """

    index: int
    device: str
    pool: tuple[str, ...]
    lock_path: Path
    fd: int | None
    _saved_env: dict[str, str | None] = field(default_factory=dict, repr=False)
    _environ: MutableMapping[str, str] | None = field(default=None, repr=False)

    @property
    def held(self) -> bool:
        return self.fd is not None

    def apply(self, environ: MutableMapping[str, str] | None = None) -> None:
        """Make the slot's device the only one CUDA will see (before CUDA is initialised)."""
        environ = os.environ if environ is None else environ
        if environ is os.environ:
            _refuse_if_cuda_initialised()
        self._environ = environ
        for key in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"):
            self._saved_env.setdefault(key, environ.get(key))
        if "CUDA_VISIBLE_DEVICES" not in environ:
            # Ids we numbered ourselves follow nvidia-smi (PCI bus) order; a user's own list keeps
            # whatever order they meant it in.
            environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        environ["CUDA_VISIBLE_DEVICES"] = self.device

    def release(self) -> None:
        """Give the slot back and restore the environment :meth:`apply` changed."""
        if self._environ is not None:
            for key, value in self._saved_env.items():
                if value is None:
                    self._environ.pop(key, None)
                else:
                    self._environ[key] = value
            self._environ = None
            self._saved_env.clear()
        if self.fd is not None:
            fd, self.fd = self.fd, None
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> GpuSlot:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def describe(self) -> str:
        return (
            f"GPU slot {self.index} of {len(self.pool)}: CUDA_VISIBLE_DEVICES={self.device} "
            f"(lock {self.lock_path})"
        )


# ---------------------------------------------------------------------------------------------
# The pool of devices
# ---------------------------------------------------------------------------------------------


def _split_ids(value: str) -> list[str]:
    """Entries of a ``CUDA_VISIBLE_DEVICES`` value; CUDA stops at the first negative index."""
    out = []
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        if re.fullmatch(r"-\d+", item):
            break
        out.append(item)
    return out


def detect_gpus() -> list[str]:
    """Ids ``0..n-1`` of the host's NVIDIA GPUs, counted without initialising CUDA.

    Uses the driver's ``/proc`` entries, else ``nvidia-smi``; an empty list when neither exists.
    """
    with contextlib.suppress(OSError):
        n = sum(1 for p in _NVIDIA_PROC.iterdir() if p.is_dir())
        if n:
            return [str(i) for i in range(n)]
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=index", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return []
        if out.returncode == 0:
            return [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return []


def _pinned(config: dict) -> int | None:
    """N of ``device: cuda:N``, else None."""
    match = re.fullmatch(r"cuda:(\d+)", str(config.get("device", "cuda")).strip().lower())
    return int(match.group(1)) if match else None


def _wanted(config: dict, environ: MutableMapping[str, str]) -> tuple[bool, int | None]:
    """(does this job take a slot, the pinned pool position of ``cuda:N`` or None)."""
    mode = environ.get(ENV_MODE, "auto").strip().lower() or "auto"
    if mode not in ("auto", "on", "off"):
        raise GpuSlotError(f"{ENV_MODE}={mode!r}: use auto, on or off")
    if mode == "off":
        return False, None
    device = str(config.get("device", "cuda")).strip().lower()
    pinned = _pinned(config)
    if mode == "on":
        return True, pinned
    return device == "auto" or device.startswith("cuda"), pinned


def device_pool(
    config: dict | None = None, environ: MutableMapping[str, str] | None = None
) -> list[str]:
    """The device ids this job may choose from (see the module docstring for the precedence).

    ``config['device'] == 'cuda:N'`` narrows the pool to its N-th device: all jobs then share that
    one GPU, one at a time.
    """
    config = config or {}
    environ = os.environ if environ is None else environ
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    base = _split_ids(visible) if visible is not None else None
    gpus = config.get("gpus")
    if gpus is None:
        pool = base if base is not None else detect_gpus()
    elif isinstance(gpus, bool) or not isinstance(gpus, (int, list, tuple)):
        raise GpuSlotError(f"gpus = {gpus!r}: give a number of GPUs or a list of device ids")
    elif isinstance(gpus, int):
        if gpus < 1:
            raise GpuSlotError(f"gpus = {gpus}: must be at least 1")
        have = base if base is not None else detect_gpus()
        if gpus > len(have):
            where = (
                f"CUDA_VISIBLE_DEVICES={visible}" if base is not None else "detected on this host"
            )
            raise GpuSlotError(f"gpus = {gpus}, but only {len(have)} GPU(s) are {where}")
        pool = have[:gpus]
    else:
        pool = [str(g).strip() for g in gpus]
        if not pool or any(not g for g in pool):
            raise GpuSlotError(f"gpus = {gpus!r}: an empty list or an empty device id")
        if base is not None:
            outside = [g for g in pool if g not in base]
            if outside:
                raise GpuSlotError(
                    f"gpus = {gpus!r} names {', '.join(outside)}, which CUDA_VISIBLE_DEVICES="
                    f"{visible} does not make visible; list entries of CUDA_VISIBLE_DEVICES "
                    "or give a count"
                )
    if len(set(pool)) != len(pool):
        raise GpuSlotError(f"the GPU pool {pool} names a device twice")
    pinned = _pinned(config)
    if pinned is not None:
        if pinned >= len(pool):
            raise GpuSlotError(
                f"device cuda:{pinned} was requested, but only {len(pool)} GPU(s) are available "
                f"to this job ({', '.join(pool) or 'none'})"
            )
        pool = [pool[pinned]]
    return pool


# ---------------------------------------------------------------------------------------------
# Locks
# ---------------------------------------------------------------------------------------------


def lock_dir(environ: MutableMapping[str, str] | None = None) -> Path:
    """``$TTS_GPU_LOCK_DIR``, else a private folder of this user (created on first use)."""
    environ = os.environ if environ is None else environ
    if environ.get(ENV_LOCK_DIR):
        path = Path(environ[ENV_LOCK_DIR]).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path
    runtime = environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime and Path(runtime).is_dir() else Path(tempfile.gettempdir())
    path = base / f"tts-gpu-locks-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    if path.stat().st_uid != os.getuid():
        raise GpuSlotError(
            f"{path} belongs to another user; set {ENV_LOCK_DIR} to a folder of yours"
        )
    return path


def _namespace(environ: MutableMapping[str, str]) -> str:
    """Host name, plus the SLURM job id inside a SLURM job (its GPUs are its own)."""
    name = socket.gethostname().split(".")[0] or "host"
    job = environ.get("SLURM_JOB_ID")
    return f"{name}-slurm{job}" if job else name


def lock_path(folder: Path, namespace: str, device: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{namespace}-{device}")
    return folder / f"gpu-{safe}.lock"


def _open_lock(path: Path) -> tuple[int, bool]:
    """(descriptor, writable). Opens without O_CREAT first: in a shared sticky folder the kernel
    may refuse O_CREAT on another user's existing file, while a plain open (or a read-only one,
    which flock accepts too) still works."""
    flags = os.O_RDWR | os.O_CLOEXEC
    try:
        return os.open(path, flags), True
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):
            return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666), True
        return os.open(path, flags), True
    except PermissionError:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC), False


def _try_lock(path: Path) -> int | None:
    """The descriptor of ``path`` locked exclusively, or None when someone else holds it."""
    fd, writable = _open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    if writable:  # who holds it, for the messages of jobs that find it taken
        note = json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                "job": Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "",
            }
        )
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, (note + "\n").encode(), 0)
    return fd


def _holders(paths: Sequence[Path]) -> str:
    parts = []
    for i, path in enumerate(paths):
        try:
            info = json.loads(path.read_text(encoding="utf-8") or "{}")
            parts.append(
                f"slot {i}: pid {info.get('pid')} {info.get('job', '')} since "
                f"{info.get('since')}".rstrip()
            )
        except (OSError, ValueError):
            parts.append(f"slot {i}: unknown holder")
    return "; ".join(parts)


def _wait_limit(timeout: float | None, environ: MutableMapping[str, str]) -> float | None:
    if timeout is not None:
        return float(timeout)
    value = environ.get(ENV_WAIT, "").strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise GpuSlotError(f"{ENV_WAIT}={value!r} is not a number of seconds") from None


def acquire(
    pool: Sequence[str],
    *,
    folder: str | Path | None = None,
    timeout: float | None = None,
    poll: float = 0.2,
    environ: MutableMapping[str, str] | None = None,
) -> GpuSlot:
    """Lock the first free slot of ``pool`` (waiting while all are taken); the environment is not
    touched (see :meth:`GpuSlot.apply`).

    ``timeout`` seconds (default ``$TTS_GPU_WAIT``, else no limit; 0: do not wait) bound the
    wait, after which :class:`NoFreeGpu` names the holders.
    """
    environ = os.environ if environ is None else environ
    pool = tuple(str(d) for d in pool)
    if not pool:
        raise GpuSlotError("no GPU to choose from (the device pool is empty)")
    folder = Path(folder) if folder is not None else lock_dir(environ)
    folder.mkdir(parents=True, exist_ok=True)
    namespace = _namespace(environ)
    paths = [lock_path(folder, namespace, d) for d in pool]
    limit = _wait_limit(timeout, environ)
    start = time.monotonic()
    reported = None
    while True:
        for i, path in enumerate(paths):
            fd = _try_lock(path)
            if fd is not None:
                if reported is not None:
                    log.info("slot %d freed after %.1f s of waiting", i, time.monotonic() - start)
                return GpuSlot(i, pool[i], pool, path, fd)
        waited = time.monotonic() - start
        if limit is not None and waited >= limit:
            raise NoFreeGpu(
                f"all {len(pool)} GPU slot(s) ({', '.join(pool)}) stayed taken for {waited:.1f} s "
                f"({_holders(paths)}). Run at most that many GPU jobs at once "
                f"(--resources gpu={len(pool)}), or raise {ENV_WAIT}."
            )
        if reported is None or waited - reported >= _REPORT_EVERY_S:
            log.warning(
                "all %d GPU slot(s) are taken (%s); waiting for one to free "
                "(does --resources gpu exceed the number of GPUs?)",
                len(pool),
                _holders(paths),
            )
            reported = waited
        time.sleep(poll if limit is None else max(0.0, min(poll, limit - waited)))


def _refuse_if_cuda_initialised() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise GpuSlotError(
            "CUDA is already initialised in this process, so CUDA_VISIBLE_DEVICES can no longer "
            "change which GPU it uses; take the GPU slot before any CUDA call"
        )


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def gpu_slot(
    config: dict | None = None, *, timeout: float | None = None, folder: str | Path | None = None
) -> Iterator[GpuSlot | None]:
    """Hold one GPU slot (``CUDA_VISIBLE_DEVICES`` set to it) while the block runs.

    Yields None, and changes nothing, when the job needs no slot (``device: cpu``, no GPU on the
    host with ``device: auto``, ``TTS_GPU_SLOTS=off``). The environment is restored on exit.
    """
    config = config or {}
    wanted, _ = _wanted(config, os.environ)
    pool = device_pool(config) if wanted else []
    if not pool:
        yield None
        return
    slot = acquire(pool, folder=folder, timeout=timeout)
    try:
        slot.apply()
        yield slot
    finally:
        slot.release()


_CLAIMED: GpuSlot | None = None


def claim_gpu(
    config: dict, *, timeout: float | None = None, folder: str | Path | None = None
) -> GpuSlot | None:
    """Take a GPU slot for the rest of this process; the workflow's GPU scripts call it first.

    Sets ``CUDA_VISIBLE_DEVICES`` to the slot's device and, when ``config['device']`` is
    ``cuda:N``, rewrites it to ``cuda`` in place (inside the job the pinned GPU is ``cuda:0``).
    The slot is released when the process exits, however it exits. Returns None when the job
    needs no slot (see :func:`gpu_slot`); a second call returns the slot already held.
    """
    global _CLAIMED
    if _CLAIMED is not None and _CLAIMED.held:
        return _CLAIMED
    wanted, pinned = _wanted(config, os.environ)
    if not wanted:
        return None
    pool = device_pool(config)
    if not pool:
        if str(config.get("device", "")).startswith("cuda"):
            log.warning("no GPU found on this host (CUDA_VISIBLE_DEVICES unset, no NVIDIA driver)")
        return None
    _refuse_if_cuda_initialised()
    slot = acquire(pool, folder=folder, timeout=timeout)
    slot.apply()
    if pinned is not None:
        config["device"] = "cuda"
    _CLAIMED = slot
    log.info("%s", slot.describe())
    return slot
