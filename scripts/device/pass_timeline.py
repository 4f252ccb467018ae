"""Where a whole ``tts bench`` pass leaves the GPU idle, and what the host does then (issue 8).

A pass's time is either GPU work or GPU idle time. If the GPU's busy time alone is near the
target's 0.50 s (RTF 0.05 at batch 1), no reordering of the host's work can meet it; if the
idle time is large, the stages where it falls say what to overlap. This script runs the
benchmark's pass (``Bench.run_once``: same checkpoint set, inputs and options as ``tts bench``)
after warm-up passes, then one pass under torch.profiler, and reports:

* the pass's span (first to last stage mark, host clock), the GPU's busy time (the union of
  kernels, copies and memsets) and its idle time;
* the idle time by the stage the host was in when each gap began (the stage marks are
  ``tts.bench.StageClock.mark`` calls, recorded as profiler annotations), and the GPU time by
  the stage that launched it (summed durations: kernels that overlap count twice);
* the longest gaps, each with the host's innermost operator at the gap's start.

    python3 scripts/device/pass_timeline.py --checkpoints /tmp/bench_ckpt --json "$OUT/t.json" \\
        --precision bfloat16:bfloat16+compile:bfloat16 --batch 1 --gpt-decoder graphkk

(or ``SECTIONS=timeline bash scripts/device/run_gpu.sh``). On the CPU there are no GPU events:
the stage spans are still reported (a smoke test, tests/test_bench.py).
"""

from __future__ import annotations

import argparse
import bisect
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_profile import trace_events  # noqa: E402

from tts import bench as tts_bench  # noqa: E402
from tts.bench import Bench, Variant, _log, script_args  # noqa: E402

GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
MARK = "stage_mark:"  # profiler annotation names of the stage marks


def busy_intervals(events: list[dict]) -> list[tuple[float, float]]:
    """The union of the GPU events' [start, end) intervals (microseconds), sorted."""
    spans = sorted(
        (float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0)))
        for e in events
        if e.get("cat") in GPU_CATEGORIES
    )
    merged: list[list[float]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def stage_marks(events: list[dict]) -> list[tuple[float, str]]:
    """(host time, stage name) of each stage mark, sorted; a mark ends the stage it names."""
    return sorted(
        (float(e["ts"]), str(e["name"])[len(MARK) :])
        for e in events
        if str(e.get("name", "")).startswith(MARK) and e.get("ph") == "X"
    )


def idle_gaps(
    busy: list[tuple[float, float]], begin: float, end: float
) -> list[tuple[float, float]]:
    """The [start, end) intervals between ``begin`` and ``end`` that no busy interval covers."""
    gaps, prev = [], begin
    for a, b in busy:
        if a > prev:
            gaps.append((prev, a))
        prev = max(prev, b)
    if end > prev:
        gaps.append((prev, end))
    return gaps


def gpu_ms_by_launch(events: list[dict], stage_at) -> dict[str, float]:
    """GPU milliseconds by the stage that launched them: a GPU event's correlation id names its
    launch call (for a CUDA graph's kernels, the graph launch), whose host time ``stage_at``
    turns into a stage. Summed durations: GPU events that overlap count twice."""
    launched_at = {
        e["args"]["correlation"]: float(e["ts"])
        for e in events
        if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})
    }
    out: dict[str, float] = {}
    for e in events:
        if e.get("cat") in GPU_CATEGORIES:
            launch = launched_at.get(e.get("args", {}).get("correlation"))
            name = "(unknown launch)" if launch is None else stage_at(launch)
            out[name] = out.get(name, 0.0) + float(e.get("dur", 0.0)) / 1e3
    return out


def innermost_op(events: list[dict]):
    """A function of a host time: the name of the shortest host operator running then."""
    ops = [
        (float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0)), str(e.get("name", "?")))
        for e in events
        if e.get("cat") in ("cpu_op", "user_annotation", "python_function")
        and not str(e.get("name", "")).startswith(MARK)
    ]

    def at(t: float) -> str:
        inner = [(b - a, name) for a, b, name in ops if a <= t < b]
        return min(inner)[1][:80] if inner else "(no operator)"

    return at


def idle_report(events: list[dict], min_gap_us: float = 20.0, top: int = 15) -> dict:
    """From the ``begin`` mark (the pass's start) to the last stage mark: the GPU's busy and
    idle time, the host time of each stage, the idle time by the host's stage at each gap's
    start, the GPU time by launching stage (:func:`gpu_ms_by_launch`), and the ``top`` longest
    gaps with the host's innermost operator then. Gaps shorter than ``min_gap_us`` count as
    idle but are not listed."""
    marks = stage_marks(events)
    begins = [t for t, name in marks if name == "begin"]
    marks = [(t, name) for t, name in marks if name != "begin"]
    if len(begins) != 1 or not marks:
        raise ValueError("the trace needs one begin mark and at least one stage mark")
    begin, end = begins[0], marks[-1][0]
    busy = [
        (max(a, begin), min(b, end)) for a, b in busy_intervals(events) if b > begin and a < end
    ]
    gaps = idle_gaps(busy, begin, end)
    ends = [t for t, _ in marks]

    def stage_at(t: float) -> str:
        return marks[min(bisect.bisect_left(ends, t), len(marks) - 1)][1]

    stage_ms, idle_by_stage, prev = {}, {}, begin
    for t, name in marks:
        stage_ms[name] = stage_ms.get(name, 0.0) + (t - prev) / 1e3
        idle_by_stage[name], prev = 0.0, t
    for a, b in gaps:
        idle_by_stage[stage_at(a)] += (b - a) / 1e3
    host_op = innermost_op(events)
    longest = sorted(gaps, key=lambda g: g[0] - g[1])[:top]
    return {
        "span_ms": (end - begin) / 1e3,
        "busy_ms": sum(b - a for a, b in busy) / 1e3,
        "idle_ms": sum(b - a for a, b in gaps) / 1e3,
        "host_stage_ms": stage_ms,
        "idle_ms_by_host_stage": idle_by_stage,
        "gpu_ms_by_launching_stage": {
            **{name: 0.0 for _, name in marks},
            **gpu_ms_by_launch(events, stage_at),
        },
        "longest_gaps": [
            {
                "ms": (b - a) / 1e3,
                "at_ms": (a - begin) / 1e3,
                "stage": stage_at(a),
                "host": host_op(a),
            }
            for a, b in longest
            if b - a >= min_gap_us
        ],
    }


def profiled_pass(bench: Bench, variant: Variant, batch: int, decoder: str) -> list[dict]:
    """One ``Bench.run_once`` under torch.profiler, its stage marks as annotations."""
    from torch.profiler import ProfilerActivity, profile, record_function

    plain_mark = tts_bench.StageClock.mark

    def mark(self, name: str) -> None:
        plain_mark(self, name)
        with record_function(MARK + name):
            pass

    cuda = bench.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    tts_bench.StageClock.mark = mark
    try:
        if cuda:
            torch.cuda.synchronize(bench.device)
        with profile(activities=activities) as prof:
            with record_function(MARK + "begin"):
                pass
            bench.run_once(variant, batch, decoder)
            if cuda:
                torch.cuda.synchronize(bench.device)
    finally:
        tts_bench.StageClock.mark = plain_mark
    return trace_events(prof)


def main(argv: list[str]) -> int:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--json")
    own.add_argument("--passes", type=int, default=2, help="profiled passes (the report: each)")
    mine, rest = own.parse_known_args(argv)
    args, variant, decoder, batches = script_args(rest, "float32")
    batch = batches[0]
    bench = Bench(args)
    _log(f">> warm-up: {variant.name} decoder={decoder} batch={batch}")
    res = bench.run(variant, batch, decoder, warmup=1, repeats=1)
    report: dict = {
        "variant": variant.name,
        "batch": batch,
        "decoder": decoder,
        "unprofiled_total_s": res.summary["total_s"],
        "passes": [],
    }
    for i in range(mine.passes):
        events = [e for e in profiled_pass(bench, variant, batch, decoder) if "ts" in e]
        rec = idle_report(events)
        report["passes"].append(rec)
        _log(
            f"pass {i}: span {rec['span_ms']:.1f} ms, GPU busy {rec['busy_ms']:.1f} ms, idle "
            f"{rec['idle_ms']:.1f} ms; idle by host stage: "
            + ", ".join(f"{k} {v:.1f}" for k, v in rec["idle_ms_by_host_stage"].items())
            + "; GPU time by launching stage: "
            + ", ".join(f"{k} {v:.1f}" for k, v in rec["gpu_ms_by_launching_stage"].items())
            + "; host stages: "
            + ", ".join(f"{k} {v:.1f}" for k, v in rec["host_stage_ms"].items())
        )
        for g in rec["longest_gaps"]:
            _log(f"   gap {g['ms']:.2f} ms at {g['at_ms']:.1f} ms ({g['stage']}): {g['host']}")
    if mine.json:
        Path(mine.json).write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
