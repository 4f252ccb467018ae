"""Why ``tts bench``'s decode loop is slower than decode_profile.py's (issue 8; GPU device).

In runs K-M of docs/benchmarks.md the benchmark's batch-1 decode loop took ~0.35 ms per step
more than decode_profile.py's loop of the same decoder. This script measures, in one process,
on the benchmark's own GPT and prompt (the random full-size set of ``--checkpoints``, loaded
as ``tts bench`` loads it; other options are ``tts bench``'s):

1. ``bench``: ``tts bench`` passes (warm-up 1, ``--repeats``), the decode loop per step;
2. ``bucket N``: the same passes with the decoder's cache-window bucket ``N`` (``--buckets``);
3. ``driver``: decode_profile.py's stepping (``one_run``: the steps and checks by hand) on the
   same GPT with the prompt the benchmark's decoder received, under the same autocast;
4. ``trace``: one benchmark pass with its decoder under torch.profiler: kernels per step,
   kernel time per step, and the gaps in the GPU's work (time between consecutive kernels,
   summed, and the gaps longer than 50 us: host stalls such as a capture the GPU waits for).

    python3 scripts/device/loop_trace.py --checkpoints /tmp/bench_ckpt --json "$OUT/trace.json" \\
        --precision bfloat16:bfloat16+compile:bfloat16 --batch 1 --gpt-decoder graphfi
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_profile import one_run, trace_events  # noqa: E402

from tts.bench import Bench, _log, script_args  # noqa: E402
from tts.fast import decode as fast_decode  # noqa: E402

PLAIN_GENERATE = fast_decode.generate


def kernel_summary(prof, steps: int) -> dict:
    """Kernels of a profiled decoder call: count, busy time and gaps, per step."""
    kernels = sorted(
        (float(e["ts"]), float(e.get("dur", 0.0)))
        for e in trace_events(prof)
        if e.get("cat") == "kernel"
    )
    if not kernels:
        return {}
    span = kernels[-1][0] + kernels[-1][1] - kernels[0][0]
    busy = sum(d for _, d in kernels)
    gaps = [b[0] - (a[0] + a[1]) for a, b in zip(kernels[:-1], kernels[1:], strict=True)]
    long = [g for g in gaps if g > 50.0]
    return {
        "kernels_per_step": len(kernels) / steps,
        "busy_us_per_step": busy / steps,
        "span_us_per_step": span / steps,
        "gap_us_per_step": sum(gaps) / steps,
        "long_gaps": len(long),
        "long_gap_us_per_step": sum(long) / steps,
        "longest_gaps_us": sorted(long)[-8:],
    }


def main(argv: list[str]) -> int:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--buckets", default="128,256")
    own.add_argument("--json")
    mine, rest = own.parse_known_args(argv)
    args, variant, decoder, batches = script_args(rest, "bfloat16:bfloat16+compile:bfloat16")
    batch = batches[0]
    bench = Bench(args)
    seen: dict = {}
    mode: dict = {}

    def generate(model, prefix, valid, cfg=None, **kw):
        """The decoder as the benchmark calls it, with this script's overrides."""
        seen.update(model=model, prefix=prefix.detach().clone(), cfg=cfg)
        if "bucket" in mode:
            kw["bucket"] = mode["bucket"]
        if not (mode.get("trace") and prefix.is_cuda):  # the trace needs CUDA
            return PLAIN_GENERATE(model, prefix, valid, cfg, **kw)
        from torch.profiler import ProfilerActivity, profile

        stats = kw["stats"]
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            out = PLAIN_GENERATE(model, prefix, valid, cfg, **kw)
            torch.cuda.synchronize()
        mode["summary"] = kernel_summary(prof, stats["steps"])
        return out

    fast_decode.generate = generate
    try:
        return measure(bench, variant, decoder, batch, args, mine, seen, mode)
    finally:
        fast_decode.generate = PLAIN_GENERATE


def measure(bench, variant, decoder: str, batch: int, args, mine, seen: dict, mode: dict) -> int:
    """The four measurements of the module notes, with ``fast_decode.generate`` wrapped."""
    report: dict = {"decoder": decoder, "batch": batch, "variant": variant.name}

    def loop_ms(res) -> float:
        return res.summary.get("decode_loop_ms_per_step", float("nan"))

    def save() -> None:
        if mine.json:
            Path(mine.json).write_text(json.dumps(report, indent=1, default=str))

    _log(">> bench (default bucket)")
    res = bench.run(variant, batch, decoder, warmup=1)
    report["bench"] = {
        "loop_ms_per_step": loop_ms(res),
        "bucket": fast_decode.DEFAULT_BUCKET,
        "capture_s": [r.get("decode_capture_s") for r in res.runs],
        "total_s": res.summary["total_s"],
    }
    _log(f"   loop {loop_ms(res):.3f} ms/step, bucket {fast_decode.DEFAULT_BUCKET}")
    save()
    for bucket in (int(b) for b in mine.buckets.split(",") if b):
        mode["bucket"] = bucket
        _log(f">> bench, bucket {bucket}")
        res = bench.run(variant, batch, decoder, warmup=1)
        report[f"bucket_{bucket}"] = {
            "loop_ms_per_step": loop_ms(res),
            "capture_s": [r.get("decode_capture_s") for r in res.runs],
            "total_s": res.summary["total_s"],
        }
        _log(f"   loop {loop_ms(res):.3f} ms/step")
        save()
    mode.pop("bucket", None)

    _log(">> decode_profile's driver on the benchmark's GPT and prompt")
    eng = bench.engine_for(variant.gpt)
    runs = []
    with eng._gpt_autocast(), torch.no_grad():
        for i in range(args.repeats + 1):
            runs.append(
                one_run(
                    seen["model"],
                    seen["prefix"],
                    seen["cfg"],
                    fast_decode.VARIANTS[decoder],
                    args.seed + i,
                    profile_kernels=i == 0,
                )
            )
    timed = runs[1:] or runs
    report["driver"] = {
        "ms_per_step": statistics.median(r["ms_per_step"] for r in timed),
        "loop_ms_per_step": statistics.median(r["loop_ms_per_step"] for r in timed),
        "kernels": runs[0]["kernels"],
        "prefix": list(seen["prefix"].shape),
        "capture_s": [r["capture_s"] for r in runs],
    }
    _log(
        f"   replayed step {report['driver']['ms_per_step']:.3f} ms, loop "
        f"{report['driver']['loop_ms_per_step']:.3f} ms/step, prefix "
        f"{tuple(seen['prefix'].shape)}"
    )
    save()

    _log(">> one benchmark pass with its decoder under torch.profiler")
    mode["trace"] = True
    bench.run(variant, batch, decoder, warmup=0, repeats=1)
    report["trace"] = mode.get("summary", {})
    _log(f"   {json.dumps(report['trace'])}")
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
