"""Hardware counters of the decode step's layer kernels at several row counts (issue 8).

Run from the repository root on a CUDA machine with Nsight Compute (no checkpoints):

    python3 scripts/device/kernel_counters.py --rows 1,3 --json "$OUT/counters.json"

Why: the 24-layer stack takes ~0.62 ms at 1 row and ~0.79 ms at 3 (batch 1 decodes 3 beams),
although the weights it reads are the same (docs/benchmarks.md, runs BS and CQ). CUDA events
time the kernels but cannot say what they wait on. For each row count this runs
``scripts/device/linear_bench.py --once`` under ``ncu`` (each kernel of one stack pass profiled
on its own, so without the overlap that programmatic dependent launch gives the real step),
labels the kernels by their place in a layer (``ln_1``, ``qkv``, ``attn_partial``,
``attn_combine``, ``out``, ``ln_2``, ``fc``, ``proj``) and prints, per kernel and row count,
the medians over the layers of: duration, DRAM bytes read and throughput, achieved and
theoretical occupancy, registers, instructions executed, and the largest warp-stall reasons
(cycles per issued instruction).

``ncu`` leaves the clocks alone (``--clock-control none``). Its raw CSV for each row count is
kept under ``--raw`` (``counters_rows<R>.csv``).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The kernels of one layer of linear_bench.py's stack with the attention, in launch order.
LAYER = (
    ("ln_1", "_norm_kernel"),
    ("qkv", "_linear_kernel"),
    ("attn_partial", "_partial_kernel"),
    ("attn_combine", "_combine_kernel"),
    ("out", "_linear_kernel"),
    ("ln_2", "_norm_kernel"),
    ("fc", "_linear_kernel"),
    ("proj", "_linear_kernel"),
)
SECTIONS = ("SpeedOfLight", "Occupancy", "LaunchStats", "WarpStateStats")
# Reported per kernel: (key in the output, ncu metric, what it is).
METRICS = (
    ("us", "gpu__time_duration.sum", "duration"),
    ("dram_read_mb", "dram__bytes_read.sum", "DRAM bytes read"),
    ("dram_pct", "dram__throughput.avg.pct_of_peak_sustained_elapsed", "DRAM throughput, %"),
    ("occupancy_pct", "sm__warps_active.avg.pct_of_peak_sustained_active", "achieved occupancy"),
    ("occupancy_max_pct", "sm__maximum_warps_per_active_cycle_pct", "theoretical occupancy"),
    ("registers", "launch__registers_per_thread", "registers per thread"),
    ("grid", "launch__grid_size", "programs"),
    ("instructions", "smsp__inst_executed.sum", "warp instructions executed"),
)
# The WarpStateStats section's cycles per issued instruction spent in each stall reason.
STALL = re.compile(
    r"^smsp__average_warps?_(?:latency_)?issue_stalled_(\w+?)(?:_per_issue_active)?\.ratio$"
)
TIME_UNITS = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "second": 1e6}
BYTE_UNITS = {"byte": 1e-6, "Kbyte": 1e-3, "Mbyte": 1.0, "Gbyte": 1e3}


def ncu_path(given: str | None) -> str:
    """The ``ncu`` to run: ``given``, else the one on PATH, else the newest under /opt/nvidia."""
    found = given or shutil.which("ncu")
    if not found:
        found = next(
            iter(sorted(glob.glob("/opt/nvidia/nsight-compute/*/ncu"), reverse=True)), None
        )
    if not found:
        raise SystemExit("ncu (Nsight Compute) not found: pass --ncu PATH")
    return found


def command(
    ncu: str,
    rows: int,
    layers: int,
    dtype: str,
    log: Path,
    metrics: bool = True,
    nvtx: bool = True,
) -> list[str]:
    """The ncu command line that profiles ``linear_bench.py --once`` at ``rows``: with ``nvtx``
    only the pass inside its NVTX range (else every kernel of the process, the compiling pass
    too); ``SECTIONS``, and with ``metrics`` the metrics of ``METRICS`` named as well."""
    sections = [arg for name in SECTIONS for arg in ("--section", name)]
    named = ["--metrics", ",".join(metric for _, metric, _ in METRICS)] if metrics else []
    only = ["--nvtx", "--nvtx-include", "measure/"] if nvtx else []
    return [
        ncu,
        "--clock-control",
        "none",
        *only,
        *sections,
        *named,
        "--csv",
        "--page",
        "raw",
        "--print-units",
        "base",
        "--log-file",
        str(log),
        sys.executable,
        str(ROOT / "scripts" / "device" / "linear_bench.py"),
        "--once",
        "--rows",
        str(rows),
        "--layers",
        str(layers),
        "--dtype",
        dtype,
    ]


def number(text: str | None) -> float | None:
    """A CSV cell as a float (thousands separators dropped), None where it is not a number."""
    try:
        return float((text or "").replace(",", "").strip())
    except ValueError:
        return None


def read_csv(text: str) -> tuple[list[dict], dict]:
    """ncu's ``--csv --page raw`` output as (one dict per profiled kernel, units per column):
    lines before the header (``"ID",...``; ncu's own messages) are skipped, and the line
    after it, whose ID is empty, holds the units."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('"ID"')), None)
    if start is None:
        raise ValueError('no ncu CSV header (a line starting with "ID") in the output')
    records = list(csv.DictReader(lines[start:]))
    units = next((r for r in records if not (r.get("ID") or "").strip()), {})
    kernels = [r for r in records if (r.get("ID") or "").strip().isdigit()]
    return kernels, units


def short_name(name: str) -> str:
    """A kernel's name without its parameter list."""
    return name.split("(")[0].strip()


def label(kernels: list[dict]) -> tuple[list[str], bool]:
    """A label per kernel: its place in the layer (``LAYER``) when the Triton kernels come in
    exactly that order, layer after layer; else its own name. Kernels of other names (none are
    expected) keep their names. Returns the labels and whether the layer order was found."""
    names = [short_name(k.get("Kernel Name", "")) for k in kernels]
    known = {kernel for _, kernel in LAYER}
    ours = [n for n in names if n in known]
    pattern = [kernel for _, kernel in LAYER]
    ordered = (
        bool(ours)
        and len(ours) % len(LAYER) == 0
        and all(ours[i : i + len(LAYER)] == pattern for i in range(0, len(ours), len(LAYER)))
    )
    if not ordered:
        return names, False
    labels, place = [], 0
    for n in names:
        if n in known:
            labels.append(LAYER[place % len(LAYER)][0])
            place += 1
        else:
            labels.append(n)
    return labels, True


def scaled(key: str, metric: str, value: float, units: dict) -> float:
    """A metric's value in the unit the summary uses (microseconds, megabytes)."""
    unit = (units.get(metric) or "").strip()
    if key == "us":
        return value * TIME_UNITS.get(unit, 1e-3)  # base units: nanoseconds
    if key == "dram_read_mb":
        return value * BYTE_UNITS.get(unit, 1e-6)  # base units: bytes
    return value


def summarize(kernels: list[dict], units: dict) -> dict:
    """Per label, the median over its kernels (the layers) of each metric of ``METRICS`` that
    ncu reported, and the four largest stall reasons (cycles per issued instruction)."""
    labels, ordered = label(kernels)
    groups: dict[str, list[dict]] = {}
    for name, kernel in zip(labels, kernels, strict=True):
        groups.setdefault(name, []).append(kernel)
    out = {"layer_order_found": ordered, "kernels": {}}
    for name, members in groups.items():
        row = {"count": len(members)}
        for key, metric, _ in METRICS:
            values = [number(k.get(metric)) for k in members]
            values = [v for v in values if v is not None]
            if values:
                row[key] = scaled(key, metric, statistics.median(values), units)
        stalls = {}
        for column in members[0]:
            match = STALL.match(column)
            values = [number(k.get(column)) for k in members] if match else []
            values = [v for v in values if v is not None]
            if match and values:
                stalls[match.group(1)] = statistics.median(values)
        top = sorted(stalls.items(), key=lambda kv: -kv[1])[:4]
        row["stalls"] = {reason: round(value, 3) for reason, value in top}
        out["kernels"][name] = row
    return out


def print_table(results: dict) -> None:
    """The summaries side by side: one line per kernel label and row count."""
    order = [name for name, _ in LAYER]
    print(f"{'kernel':13s} {'rows':>4s} " + " ".join(f"{k:>12s}" for k, _, _ in METRICS))
    labels = sorted(
        {name for r in results.values() for name in r["kernels"]},
        key=lambda n: (order.index(n) if n in order else len(order), n),
    )
    for name in labels:
        for rows, summary in results.items():
            row = summary["kernels"].get(name)
            if row is None:
                continue
            cells = " ".join(
                f"{row[k]:12.3f}" if k in row else f"{'-':>12s}" for k, _, _ in METRICS
            )
            stalls = ", ".join(f"{r} {v:.2f}" for r, v in row["stalls"].items())
            print(f"{name:13s} {rows:>4s} {cells}  stalls: {stalls or '-'}")


def profile(
    ncu: str, rows: int, layers: int, dtype: str, log: Path, timeout: int
) -> tuple[list[dict], dict, dict]:
    """Runs ncu at ``rows`` and reads its CSV: (kernels, units, which options the run used).
    A metric this ncu does not know fails the whole run, and a range filter it reads otherwise
    profiles nothing: then it runs again without the named metrics, then without the filter."""
    for metrics, nvtx in ((True, True), (False, True), (False, False)):
        cmd = command(ncu, rows, layers, dtype, log, metrics, nvtx)
        print(">>", " ".join(cmd), flush=True)
        log.unlink(missing_ok=True)
        done = subprocess.run(cmd, timeout=timeout)
        kernels, units = [], {}
        if done.returncode == 0 and log.is_file():
            try:
                kernels, units = read_csv(log.read_text())
            except ValueError as exc:
                print(f">> {exc}", flush=True)
        if kernels:
            return kernels, units, {"metrics_named": metrics, "nvtx_range": nvtx}
        print(f">> ncu exited with {done.returncode}; no kernels read at {rows} rows", flush=True)
    raise SystemExit(f"ncu profiled nothing at {rows} rows (see {log})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="1,3")
    ap.add_argument("--layers", type=int, default=6, help="layers of the profiled stack")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--ncu", help="the ncu executable (default: on PATH or under /opt/nvidia)")
    ap.add_argument("--raw", default="counters", help="folder for ncu's raw CSV per row count")
    ap.add_argument("--timeout", type=int, default=240, help="seconds per ncu run")
    ap.add_argument("--json")
    args = ap.parse_args()
    ncu = ncu_path(args.ncu)
    raw = Path(args.raw)
    raw.mkdir(parents=True, exist_ok=True)
    results = {}
    for rows in args.rows.split(","):
        log = raw / f"counters_rows{rows}.csv"
        kernels, units, used = profile(ncu, int(rows), args.layers, args.dtype, log, args.timeout)
        results[rows] = {**used, **summarize(kernels, units)}
        print(f">> {rows} rows: {len(kernels)} kernels profiled", flush=True)
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps({"layers": args.layers, "rows": results}, indent=1))


if __name__ == "__main__":
    main()
