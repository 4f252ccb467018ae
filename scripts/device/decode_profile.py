"""Speed and kernel count of one GPT decode step, per decoder variant (issue 8; GPU device).

Run from the repository root on a CUDA machine (torch 2.11; nothing else beyond what
``tts bench`` imports, no checkpoints):

    python3 scripts/device/decode_profile.py --json "$OUT/decode_profile.json"

It builds the GPT at the official configuration (tts/data/config.official.yaml: 24 layers,
width 1280, 20 heads) with tts.bench's random initialisation and the stop code disabled, casts
it to ``--dtype`` (bfloat16) and runs, under autocast of that dtype as the Engine does, beam
sampling with the official settings (``--beams`` 3) for ``--prefix`` prompt positions and
``--steps`` codes at each batch size of ``--batches`` (1 and 16), through each variant of
:data:`tts.fast.decode.VARIANTS` (``--variants``). Per variant and batch it prints:

* ``ms/step``: GPU time of a replayed step (CUDA events around each graph replay; the eager
  first step and the captures are left out), mean over a run, median over
  ``--runs`` runs after one warm-up run (which compiles what the variant compiles);
* ``loop``: the whole decode loop per step, as ``StaticDecoder.run`` steps it (the eager
  first step, the captures and the "all finished?" test every 32 steps included);
* ``kernels``: kernel launches in one replayed step (torch.profiler of one replay), with the
  memcpy / memset nodes and the summed kernel time of that step, and that step's span charged
  to kernel names along its critical path (:func:`critical_path`: with programmatic dependent
  launch a kernel's own duration includes its wait for the one before, so the summed kernel
  time says little);
* ``agree``: the fraction of codes equal to the ``graph`` variant's codes from the same seed,
  and the first step where they differ (half precision: differently rounded variants may flip
  a sampled code where a draw falls near a boundary, and then the sequences part);
* ``floor``: weight bytes a step reads / measured device copy bandwidth (tts.bench).

Variants run in the order graph (the reference), graphf, graphfr, graphr, graphl, graphc;
``--budget S`` starts no new one after S seconds, and ``--json`` is rewritten after each, so a
cut run keeps what it measured. On an H100 the defaults should take ~3-4 minutes, most of it
compiling (the fused pieces, the processors and the token choice, once per row count).

``--tiny --device cpu``: a two-layer GPT on the CPU in float32 (eager steps, wall-clock times,
no kernel count; batch 1, 12 steps, 1 run) - the smoke test of tests/test_fast.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tts.fast.decode import DEFAULT_CHECK_EVERY, VARIANTS, StaticDecoder  # noqa: E402
from tts.generation import GenerationConfig  # noqa: E402

TINY = {"layers": 2, "model_dim": 64, "heads": 4}
# The reference first, then the variants by expected interest (a time limit cuts the last).
ORDER = ["graph", "graphf", "graphfr", "graphr", "graphl", "graphc"]
ORDER += [v for v in VARIANTS if v not in ORDER]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
T0 = time.perf_counter()


def log(text: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f} s] {text}", flush=True)


@torch.no_grad()
def build_gpt(tiny: bool, device: torch.device, dtype: torch.dtype, seed: int):
    """The random GPT of ``tts bench`` (official or tiny configuration), stop code disabled."""
    from tts.bench import bench_config, randomize_
    from tts.checkpoints import merge_config
    from tts.models.gpt import UnifiedVoice

    cfg = bench_config(tiny)[0]["gpt"]
    if tiny:
        cfg = merge_config(cfg, TINY)
    with torch.device(device):
        model = UnifiedVoice.from_config(cfg)
    randomize_(model, seed, device)
    model.mel_head.bias[model.stop_mel_token] = -1.0e4
    return model.to(dtype).eval()


def random_prefix(model, batch: int, positions: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """A prompt prefix of ``positions`` random embeddings per item (N(0, 0.25)), in ``dtype``
    on the model's device: what the conditioning and text embeddings give the decoder."""
    device = model.mel_head.weight.device
    gen = torch.Generator(device=device).manual_seed(seed)
    noise = torch.randn(batch, positions, model.model_dim, device=device, generator=gen)
    return (noise * 0.5).to(dtype)


def trace_events(prof) -> list[dict]:
    """The events of a finished torch.profiler run, as its Chrome trace lists them."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path, encoding="utf-8") as fh:
            return json.load(fh).get("traceEvents", [])


def count_kernels(dec: StaticDecoder, step: int) -> dict:
    """Kernels (and memcpy / memset nodes, summed kernel microseconds) of step ``step``,
    replayed under torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        dec._run_step(step)
        torch.cuda.synchronize(dec.device)
    events = trace_events(prof)
    kernels = [e for e in events if e.get("cat") == "kernel"]
    copies = [e for e in events if e.get("cat") in ("gpu_memcpy", "gpu_memset")]
    by_name: dict[str, list[float]] = {}
    for e in kernels:
        entry = by_name.setdefault(str(e.get("name", "?"))[:90], [0, 0.0])
        entry[0] += 1
        entry[1] += float(e.get("dur", 0.0))
    top = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:15]
    ordered = sorted(kernels, key=lambda e: float(e.get("ts", 0.0)))
    return {
        "sequence": [[str(e.get("name", "?"))[:70], float(e.get("dur", 0.0))] for e in ordered],
        "kernels": len(kernels),
        "copies": len(copies),
        "kernel_us": sum(float(e.get("dur", 0.0)) for e in kernels),
        "top": [{"name": k, "count": n, "us": round(us, 1)} for k, (n, us) in top],
        **critical_path(kernels),
    }


def critical_path(kernels: list[dict]) -> dict:
    """Where a step's time goes when kernels overlap (PDL): in start order, each kernel is
    charged the time by which it moved the latest end so far (``max(0, end - latest)``), so the
    charges add up to the step's span. Summed per kernel name, largest first."""
    latest, span_start = None, None
    by_name: dict[str, list[float]] = {}
    for e in sorted(kernels, key=lambda e: float(e.get("ts", 0.0))):
        start = float(e.get("ts", 0.0))
        end = start + float(e.get("dur", 0.0))
        span_start = start if span_start is None else span_start
        charge = end - start if latest is None else max(0.0, end - latest)
        latest = end if latest is None else max(latest, end)
        entry = by_name.setdefault(str(e.get("name", "?"))[:90], [0, 0.0])
        entry[0] += 1
        entry[1] += charge
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1][1])
    return {
        "span_us": 0.0 if latest is None else latest - span_start,
        "critical": [{"name": k, "count": n, "us": round(us, 1)} for k, (n, us) in ranked],
    }


@torch.no_grad()
def one_run(model, prefix, cfg, options: dict, seed: int, profile_kernels: bool) -> dict:
    """One generation of ``cfg.max_mel_tokens`` codes, stepped by hand to time each step."""
    device = prefix.device
    cuda = device.type == "cuda"
    gen = torch.Generator(device=device).manual_seed(seed)
    options = {k: v for k, v in options.items() if k != "keep"}  # generate()'s, not a step's
    dec = StaticDecoder(model, prefix, None, cfg, generator=gen, use_graph=cuda, **options)
    dec.check_every = DEFAULT_CHECK_EVERY  # as dec.run() does
    steps = cfg.max_mel_tokens
    marks: list = []
    kernels = None
    if cuda:
        begin = torch.cuda.Event(enable_timing=True)
        begin.record()
    else:
        begin = time.perf_counter()
    for step in range(steps):
        replay = dec.use_graph and dec._graph_key(step) in dec.graphs
        if cuda and replay and profile_kernels and kernels is None and step >= steps // 2:
            kernels = count_kernels(dec, step)  # a replay, not timed
            continue
        if cuda and replay:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            dec._run_step(step)
            b.record()
            marks.append((a, b))
        elif not cuda and step > 0:  # the CPU runs every step eagerly; step 0 compiles
            start = time.perf_counter()
            dec._run_step(step)
            marks.append(time.perf_counter() - start)
        else:
            dec._run_step(step)
        if step + 1 < steps:  # the loop's check: captures ahead, then the host waits
            dec._checkpoint(step + 1, DEFAULT_CHECK_EVERY)
    if cuda:
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        end.synchronize()
        loop_s = begin.elapsed_time(end) / 1e3
        step_ms = [a.elapsed_time(b) for a, b in marks]
    else:
        loop_s = time.perf_counter() - begin
        step_ms = [1e3 * s for s in marks]
    out = dec._result(steps)
    return {
        "ms_per_step": statistics.mean(step_ms) if step_ms else float("nan"),
        "loop_ms_per_step": 1e3 * loop_s / steps,
        "codes": out.codes.cpu(),
        "kernels": kernels,
        "graphs": len(dec.graphs),
        "eager_steps": dec.eager_steps,
        "capture_s": dec.capture_s,
        "fused": dec.fused is not None,
        "matmul": dec.fused.matmul if dec.fused is not None else None,
        "attention": dec.attend.keywords["kind"],
        "swap": dec.swap,
    }


def agreement(codes: torch.Tensor, ref: torch.Tensor) -> tuple[float, int]:
    """(fraction of equal codes, first step where any row differs)."""
    if codes.shape != ref.shape:
        return 0.0, 0
    diff = (codes != ref).any(dim=0).nonzero()
    return float((codes == ref).float().mean()), int(diff[0, 0]) if diff.numel() else -1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        help="GPT dtype (default bfloat16 on CUDA, float32 on the CPU)",
    )
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="a two-layer GPT; defaults become batch 1, 12 steps, 1 run",
    )
    ap.add_argument("--batches", help="comma-separated batch sizes (default 1,16)")
    ap.add_argument("--beams", type=int, default=3)
    ap.add_argument(
        "--greedy",
        action="store_true",
        help="do_sample=False (no temperature, top-k, top-p or draw): what the token choice's "
        "sampling costs, against the default beam sampling",
    )
    ap.add_argument("--steps", type=int, help="codes per run (default 200)")
    ap.add_argument("--runs", type=int, help="timed runs after one warm-up run (default 3)")
    ap.add_argument("--prefix", type=int, default=100, help="prompt positions (conds + text)")
    ap.add_argument(
        "--variants",
        default=",".join(ORDER),
        help=f"comma-separated names of tts.fast.decode.VARIANTS ({','.join(ORDER)})",
    )
    ap.add_argument(
        "--budget",
        type=float,
        help="seconds: start no new variant after this (what ran is reported)",
    )
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--json", help="write every number here (after each variant)")
    args = ap.parse_args(argv)
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    args.batches = args.batches or ("1" if args.tiny else "1,16")
    args.steps = args.steps or (12 if args.tiny else 200)
    args.runs = args.runs if args.runs is not None else (1 if args.tiny else 3)
    torch.set_num_threads(min(torch.get_num_threads(), 2 if args.device == "cpu" else 8))
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    if "graph" in variants:  # the reference of the agreement column runs first
        variants.remove("graph")
    variants.insert(0, "graph")
    from tts import fast
    from tts.bench import copy_bandwidth, decode_weight_bytes

    model = build_gpt(args.tiny, device, dtype, args.seed)
    cuda = device.type == "cuda"
    floor_ms = 1e3 * decode_weight_bytes(model) / copy_bandwidth(device) if cuda else float("nan")
    env = {
        "torch": torch.__version__,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "dtype": args.dtype,
        "tiny": args.tiny,
        "layers": len(model.gpt.h),
        "width": model.model_dim,
        "floor_ms_per_step": floor_ms,
    }
    log(
        f"GPT {env['layers']} layers x {env['width']} ({args.dtype}) on {env['gpu'] or device}; "
        f"weight-read floor {floor_ms:.3f} ms/step"
    )
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    results = []
    for batch in (int(b) for b in args.batches.split(",") if b):
        prefix = random_prefix(model, batch, args.prefix, dtype, seed=batch)
        cfg = GenerationConfig(
            num_beams=args.beams,
            do_sample=not args.greedy,
            max_mel_tokens=args.steps,
            warn_on_limit=False,
        )
        reference = None
        for name in variants:
            if args.budget is not None and time.perf_counter() - T0 > args.budget:
                log(f"{name} batch {batch}: skipped (past the --budget of {args.budget:g} s)")
                continue
            before = len(fast.FALLBACKS)
            runs = []
            start = time.perf_counter()
            try:
                with autocast:
                    for i in range(args.runs + 1):
                        runs.append(
                            one_run(
                                model,
                                prefix,
                                cfg,
                                VARIANTS[name],
                                args.seed + i,
                                profile_kernels=i == 0,
                            )
                        )
            except torch.OutOfMemoryError as exc:
                log(f"{name} batch {batch}: out of memory ({str(exc).splitlines()[0]})")
                torch.cuda.empty_cache()
                continue
            warm, timed = runs[0], runs[1:] or runs
            codes = timed[0]["codes"]
            if name == "graph":
                reference = codes
            agree, first = (
                agreement(codes, reference) if reference is not None else (float("nan"), -1)
            )
            row = {
                "variant": name,
                "batch": batch,
                "rows": batch * args.beams,
                "ms_per_step": statistics.median(r["ms_per_step"] for r in timed),
                "ms_per_step_runs": [r["ms_per_step"] for r in timed],
                "loop_ms_per_step": statistics.median(r["loop_ms_per_step"] for r in timed),
                "warmup_run_s": time.perf_counter()
                - start
                - sum(r["loop_ms_per_step"] * args.steps / 1e3 for r in timed),
                "kernels": warm["kernels"],
                "graphs": warm["graphs"],
                "fused": warm["fused"],
                "matmul": warm["matmul"],
                "attention": warm["attention"],
                "swap": warm["swap"],
                "agreement": agree,
                "first_difference": first,
                "fallbacks": fast.FALLBACKS[before:],
            }
            results.append(row)
            k = row["kernels"] or {}
            log(
                f"{name:8s} B={batch:<3d} {row['ms_per_step']:7.3f} ms/step (loop "
                f"{row['loop_ms_per_step']:.3f}), kernels {k.get('kernels', '-')} "
                f"(+{k.get('copies', '-')} copies, {k.get('kernel_us', float('nan')) / 1e3:.3f}"
                f" ms kernel time), agree {agree:.3f} (first diff {first}), fused "
                f"{row['fused']}, swap {row['swap']}"
                + (f", FELL BACK: {row['fallbacks']}" if row["fallbacks"] else "")
            )
            if k.get("critical"):
                log(
                    f"  one replayed step: {k['span_us']:.1f} us from the first kernel's start "
                    "to the last one's end, charged per kernel name (critical_path):"
                )
                for c in k["critical"][:30]:
                    log(f"  {c['us']:8.1f} us  x{c['count']:<4d} {c['name']}")
            if args.json:
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(
                    json.dumps({"env": env, "args": vars(args), "results": results}, indent=1)
                )
            del runs, warm, timed
            if cuda:
                torch.cuda.empty_cache()
    print()
    print(
        f"{'variant':8s} {'B':>3s} {'ms/step':>8s} {'loop':>7s} {'kernels':>8s} "
        f"{'kern ms':>8s} {'agree':>6s} {'1st diff':>8s}  (floor {floor_ms:.3f} ms/step)"
    )
    for r in results:
        k = r["kernels"] or {}
        print(
            f"{r['variant']:8s} {r['batch']:3d} {r['ms_per_step']:8.3f} "
            f"{r['loop_ms_per_step']:7.3f} {k.get('kernels', '-')!s:>8s} "
            f"{k.get('kernel_us', float('nan')) / 1e3:8.3f} {r['agreement']:6.3f} "
            f"{r['first_difference']:8d}"
        )
    bad = [r for r in results if r["fallbacks"]]
    return 1 if bad or not results else 0


if __name__ == "__main__":
    sys.exit(main())
