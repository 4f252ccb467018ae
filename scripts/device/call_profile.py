"""Where one GPT generate call's host time goes, besides its replayed steps (issue 8; GPU).

Run from the repository root on a CUDA machine (no checkpoints):

    python3 scripts/device/call_profile.py --json "$OUT/call_profile.json"

It builds the GPT as ``decode_profile.py`` does (official size, random weights, stop code
disabled, ``--dtype`` bfloat16 under autocast), makes a prefix of ``--prefix`` positions
(the benchmark's is ~95) and runs ``tts.fast.decode.generate`` with the decoder ``--variant``
(graphkt) for ``--steps`` codes (500) at ``--batch`` items, beam sampling with the official
settings and one generator per item, as the Engine does. After ``--warmup`` calls it times
``--calls`` calls (CUDA events around each, and the decoder's own stats: set-up, step 0,
captures, loop, and the garbage collector's host time, by ``gc.callbacks``) under each
setting of ``--gc`` in turn (the default collector, then ``gc.freeze()``), then runs one more
call under cProfile and prints the functions with the
most host time of their own and in all (``--top``). So the host work a call does outside
its replayed steps can be read off by function.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_profile import DTYPES, build_gpt, random_prefix  # noqa: E402

from tts.fast import decode  # noqa: E402
from tts.generation import GenerationConfig  # noqa: E402


class GcClock:
    """Host time spent in Python's garbage collector, by generation (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self._start = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds[info["generation"]] += time.perf_counter() - self._start
            self.count[info["generation"]] += 1


def one_call(model, prefix, cfg, variant: str, seed: int) -> dict:
    """One generate call; its GPU time (CUDA events), the decoder's stats and the garbage
    collector's host time during it."""
    batch = prefix.size(0)
    gens = [torch.Generator(device=prefix.device).manual_seed(seed + i) for i in range(batch)]
    stats: dict = {}
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    clock = GcClock()
    gc.callbacks.append(clock)
    try:
        a.record()
        decode.generate(
            model, prefix, None, cfg, generator=gens, stats=stats, **decode.VARIANTS[variant]
        )
        b.record()
        b.synchronize()
    finally:
        gc.callbacks.remove(clock)
    keys = ("setup_s", "first_step_s", "capture_s", "loop_s")
    return {
        "call_s": a.elapsed_time(b) / 1e3,
        **{k: stats.get(k) for k in keys},
        "gc_s": sum(clock.seconds),
        "gc2_s": clock.seconds[2],
        "gc_runs": clock.count,
    }


def table(profile: cProfile.Profile, key: str, top: int) -> str:
    """The ``top`` rows of a cProfile report sorted by ``key``."""
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats(key).print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    ap.add_argument("--variant", default="graphkt")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--beams", type=int, default=3)
    ap.add_argument("--prefix", type=int, default=95)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument(
        "--gc",
        default="default,freeze",
        help="comma-separated garbage-collector settings to time in turn: default, freeze "
        "(gc.freeze() after the warm-up: what exists then is never scanned again), off",
    )
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    device = torch.device("cuda")
    dtype = DTYPES[args.dtype]
    model = build_gpt(False, device, dtype, args.seed)
    prefix = random_prefix(model, args.batch, args.prefix, dtype, seed=args.seed)
    cfg = GenerationConfig(num_beams=args.beams, max_mel_tokens=args.steps, warn_on_limit=False)
    autocast = torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32)
    by_gc = {}
    with autocast:
        for i in range(args.warmup):
            one_call(model, prefix, cfg, args.variant, args.seed + i)
        for setting in args.gc.split(","):
            if setting == "freeze":
                gc.freeze()
            elif setting == "off":
                gc.disable()
            calls = [
                one_call(model, prefix, cfg, args.variant, args.seed + i) for i in range(args.calls)
            ]
            median = {k: statistics.median(c[k] for c in calls) for k in calls[0] if k != "gc_runs"}
            by_gc[setting] = {"calls": calls, "median": median}
            print(
                f"gc {setting}: {args.variant} batch {args.batch}, {args.steps} steps, medians "
                f"of {args.calls} calls: "
                + ", ".join(f"{k[:-2]} {v * 1e3:.1f} ms" for k, v in median.items())
                + f"; collections by generation {[c['gc_runs'] for c in calls]}"
            )
        gc.enable()
        gc.unfreeze()
        profile = cProfile.Profile()
        profile.enable()
        profiled = one_call(model, prefix, cfg, args.variant, args.seed)
        profile.disable()
    print(f"the profiled call: {profiled['call_s'] * 1e3:.1f} ms (cProfile slows the host)")
    own, cumulative = table(profile, "tottime", args.top), table(profile, "cumulative", args.top)
    print(own)
    print(cumulative)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "args": vars(args),
                    "gpu": torch.cuda.get_device_name(device),
                    "torch": torch.__version__,
                    "by_gc": by_gc,
                    "profiled_call": profiled,
                    "by_own_time": own,
                    "by_cumulative_time": cumulative,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
