"""Where one DiT call of the s2mel solve spends its GPU time, at the benchmark's shapes (issue 8).

Builds the s2mel DiT at the official configuration with ``tts.bench.randomize_`` weights, takes
its fused inference copy (``tts.fast.s2mel.fused``) and, for each batch size B, times one
estimator call on ``[2B, 80, frames]`` (both guidance branches, as the solve runs it; CUDA
events, median of ``--repeats`` after warm-up) through ``torch.compile`` under ``--precision``
(bfloat16 autocast by default, as ``tts bench``). Then it lists the kernels of one such call
(torch.profiler), grouped by name, with their share of the call: what the 25 calls of a solve
are made of. The FLOPs of the call (``torch.utils.flop_counter``) give the rate reached.

    python3 scripts/device/s2mel_profile.py --batches 1,16 --json "$OUT/s2mel.json"

(or ``SECTIONS=s2mel bash scripts/device/run_gpu.sh``). CPU smoke test: ``--device cpu
--tiny --no-compile`` (tests/test_fast.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tts.bench import bench_config, kernel_rows, median_cuda_ms, randomize_  # noqa: E402
from tts.fast.s2mel import fused  # noqa: E402
from tts.models.s2mel import S2Mel  # noqa: E402
from tts.pipeline import configure_cudnn  # noqa: E402
from tts.precision import precision_context  # noqa: E402


def inputs(dit, rows: int, frames: int, device: torch.device, gen: torch.Generator) -> tuple:
    """The estimator's arguments for ``rows`` rows (x, prompt_x, x_lens, t, style, cond)."""
    width = dit.cond_projection.in_features

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device)

    return (
        rand(rows, 80, frames),
        rand(rows, 80, frames),
        torch.full((rows,), frames, device=device),
        torch.rand(rows, generator=gen).to(device),
        rand(rows, 192),
        rand(rows, frames, width),
    )


def load_other(path: str, name: str = "s2mel_other"):
    """The module of another ``tts/fast/s2mel.py`` (its own cache of fused estimators)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # TorchDynamo imports the module of what it traces
    spec.loader.exec_module(module)
    return module


def replay_ms(fn, repeats: int) -> float:
    """Median milliseconds of ``fn()`` captured once in a CUDA graph and replayed (as the solve
    runs its steps: the GPU's time without the host's launches)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return median_cuda_ms(graph.replay, repeats=repeats, warmup=2)


def kernel_table(fn, top: int) -> tuple[list[dict], float]:
    """Kernels of one ``fn()``, grouped by name (count, total us), and their summed time."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = kernel_rows(prof, width=100)
    return rows[:top], sum(r["us"] for r in rows)


def dit_arguments(p: argparse.ArgumentParser, batches: str) -> None:
    """The options of a DiT call at the benchmark's shapes (this script and compile_repro.py):
    device, size, frames, batch sizes (default ``batches``), precision, compile, repeats."""
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--frames", type=int, default=1721, help="prompt 861 + generated 860 frames")
    p.add_argument("--batches", default=batches, help="rows B (the call runs 2B: both branches)")
    p.add_argument("--precision", default="bfloat16", choices=["float32", "tf32", "bfloat16"])
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--repeats", type=int, default=10)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    dit_arguments(p, batches="1,16")
    p.add_argument("--top", type=int, default=16)
    p.add_argument(
        "--other",
        action="append",
        default=[],
        help="another tts/fast/s2mel.py (repeatable): its solve estimator as an A/B",
    )
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    configure_cudnn()  # as the Engine runs: cuDNN's deterministic kernels, TF32 off
    cfg, _, _ = bench_config(args.tiny)
    with torch.no_grad():
        s2mel = randomize_(S2Mel.from_config(cfg["s2mel"]), seed=7).to(device).eval()
    entry = fused(s2mel.cfm.estimator)
    # What the solve runs under --precision (in half precision: the matrix layers' weights
    # already in that dtype), and, as an A/B, the float32 estimator under the same autocast
    # (the solve before 2026-12-06, which cast those weights in every call).
    variants = {"solve": entry.for_precision(args.precision)}
    if variants["solve"] is not entry.estimator:
        variants["float32-weights"] = entry.estimator
    for module in variants.values():
        module.transformer.drop = True  # no padded row: no key mask, as in the solve
    if not args.no_compile:
        variants = {
            "solve": entry.compiled(args.precision),
            **({"float32-weights": entry.compiled("float32")} if len(variants) > 1 else {}),
        }
    for i, path in enumerate(args.other):
        other = load_other(path, f"s2mel_other{i}").fused(s2mel.cfm.estimator)
        module = other.for_precision(args.precision)
        module.transformer.drop = True
        name = "other" if len(args.other) == 1 else f"other{i}"
        variants[name] = module if args.no_compile else other.compiled(args.precision)
    gen = torch.Generator().manual_seed(0)
    result = {"frames": args.frames, "precision": args.precision, "batches": []}
    for batch in (int(b) for b in args.batches.split(",")):
        args_in = inputs(s2mel.cfm.estimator, 2 * batch, args.frames, device, gen)
        from torch.utils.flop_counter import FlopCounterMode

        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            entry.estimator(*args_in)
        flops = counter.get_total_flops()

        if device.type != "cuda":
            for module in variants.values():
                with torch.no_grad(), precision_context(args.precision, device):
                    module(*args_in)
            print(f"B={batch}: ran on {device} ({flops / 1e9:.1f} GFLOP per call)")
            continue
        entry_out: dict = {"batch": batch, "flops": flops, "variants": {}}
        outputs = {}
        for name, module in variants.items():

            def call(m=module, a=args_in):
                with torch.no_grad(), precision_context(args.precision, device):
                    return m(*a)

            ms = median_cuda_ms(call, repeats=args.repeats, warmup=3)
            outputs[name] = call()
            graph_ms = replay_ms(call, args.repeats)
            rate = flops / (graph_ms / 1e3) / 1e12
            print(
                f"B={batch:3d} {name}: one estimator call {ms:.3f} ms launched, {graph_ms:.3f} ms "
                f"replayed from a CUDA graph ({flops / 1e9:.1f} GFLOP, {rate:.0f} TFLOP/s); "
                f"x 25 steps = {25 * graph_ms:.1f} ms per solve"
            )
            entry_out["variants"][name] = {"launched_ms": ms, "replayed_ms": graph_ms}
            if name != "solve":
                continue
            table, busy_us = kernel_table(call, args.top)
            print(f"  kernels busy {busy_us / 1e3:.3f} ms per call:")
            for row in table:
                print(
                    f"  {row['us'] / 1e3:8.3f} ms {100 * row['us'] / busy_us:5.1f}%"
                    f"  {row['count']:4d}  {row['kernel']}"
                )
            entry_out.update(busy_ms=busy_us / 1e3, kernels=table)
        for name, out in outputs.items():
            if name != "solve":
                diff = float((out.float() - outputs["solve"].float()).abs().max())
                same = torch.equal(out, outputs["solve"])
                print(f"B={batch:3d} solve vs {name}: identical {same}, max |diff| {diff:.3e}")
                entry_out[f"identical_{name}"] = same
        result["batches"].append(entry_out)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
