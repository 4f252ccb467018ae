"""Few-row projections of the GPT decode step: tts.fast.linear kernels against cuBLAS (issue 8).

Run from the repository root on a CUDA machine (no checkpoints):

    python3 scripts/device/linear_bench.py --json "$OUT/linear_bench.json"

(``TRITON_INTERPRET=1 ... --device cpu --tiny`` runs every code path once on the CPU, untimed:
tests/test_bench.py.)

For each projection of a full-size GPT-2 layer (width 1280: qkv 1280->3840 with ln_1 and the KV
write, out 1280->1280 + residual, fc 1280->5120 with ln_2 + GELU, proj 5120->1280 + residual) and
each row count of ``--rows`` (3 = batch 1 x 3 beams; at most 8), it captures one CUDA graph
of the projection over 24 distinct weight matrices (so the 24 do not share the L2 cache, as
in a real step), replays it ``--replays`` times between CUDA events (median of 5 after 3
warm-up replays) and prints microseconds per projection and the weight-read bandwidth it
reached, next to ``F.linear`` alone (cuBLAS, no LayerNorm / GELU / residual / KV write) and
the device-to-device copy bandwidth (tts.bench.copy_bandwidth, as the benchmark's floor).
``--sweep`` times other launch settings too (rows per program x warps).

Then the whole stack of 24 layers as one graph: cuBLAS's four GEMMs per layer alone, and ours
(LayerNorms, projections and their fused ops) with and without the Triton attention over a
600-position window between qkv and the out projection, each with and without programmatic
dependent launch (``pdl``; with ``--sweep`` also with each shape's fastest setting), and
``--other FILE`` (repeatable): the stack of another version of tts/fast/linear.py (e.g. from
``git show REV:tts/fast/linear.py``, or with scripts/device/linear_fold.patch applied) with PDL
and the attention, for an A/B in one process, and ours with variants of the attention
(tts.fast.attention.attend): reading its window before its PDL wait (``written``), 16-position
chunks, all rows in one program (``group``), and every row reading row 0's cache through the
source-row table (``src``, beams on one history), alone and grouped. Last, the registers and spills per thread of
every compiled projection kernel (registers bound how many programs, and so how many weight
rows, can be resident and load their weights ahead).

``--once`` times nothing: per row count it runs the stack (attention, PDL) once to compile it
and once more inside the NVTX range ``measure``, for Nsight Compute to record each kernel's
counters (scripts/device/kernel_counters.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tts.bench import copy_bandwidth  # noqa: E402
from tts.fast import attention, linear  # noqa: E402

DIM, HEADS, LAYERS = 1280, 20, 24
WINDOW = 600  # cache positions the attention of the stack reads
DEVICE = "cuda"


def timed(fn, replays: int) -> float:
    """Milliseconds of one ``fn()`` call captured in a CUDA graph (median of 5); on the CPU
    (``--device cpu``, a dry run through Triton's interpreter) one call and NaN."""
    if DEVICE == "cpu":
        fn()
        return float("nan")
    for _ in range(2):  # compile / autotune outside the capture
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    for _ in range(3):
        graph.replay()
    times = []
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(replays):
            graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / replays)
    return statistics.median(times)


def _label(setting: dict, k_in: int, dtype: torch.dtype) -> str:
    """A launch setting as ``rows x warps`` (``mma`` first where the tensor-core kernel runs),
    with "(default)" for the defaults."""
    mma = linear.on_tensor_cores(dtype, k_in) is not None
    kind = "mma " if mma else ""
    if not setting:
        if mma:
            return f"mma {linear.MMA_ROWS_PER_PROGRAM}x{linear.MMA_WARPS} (default)"
        n = linear.ROWS_PER_PROGRAM
        return f"{n}x{linear.warps_for(n, k_in)} (default)"
    return f"{kind}{setting['rows_per_program']}x{setting['num_warps']}"


def measure(
    rows: int,
    weights: dict,
    biases: dict,
    ln: tuple,
    bw: float,
    replays: int,
    dtype: torch.dtype,
    sweep: bool,
    other: dict | None = None,
) -> dict:
    """The per-projection and whole-stack times at ``rows`` rows (see the module notes)."""
    dev = DEVICE
    state = stack_state(rows, dtype)
    x, kv, pos = state["x"], state["kv"], state["pos"]
    h = torch.randn(rows, 4 * DIM, device=dev).to(dtype)
    kw = {
        "qkv": {"ln": ln, "kv": (kv[0], kv[1], pos, DIM)},
        "out": {"residual": x},
        "fc": {"ln": ln, "gelu": True},
        "proj": {"residual": x},
    }
    inputs = {"qkv": x, "out": x, "fc": x, "proj": h}
    table = {}
    for name, extra in kw.items():
        ws, b, inp = weights[name], biases[name], inputs[name]
        nbytes = ws[0].numel() * ws[0].element_size()
        floor_us = nbytes / bw * 1e6
        t_blas = timed(lambda ws=ws, b=b, i=inp: [F.linear(i, w, b) for w in ws], replays)
        row = {"cublas_us": t_blas * 1e3 / LAYERS, "floor_us": floor_us, "settings": {}}
        settings = [{}]
        if sweep:
            k_in = ws[0].size(1)
            if linear.on_tensor_cores(dtype, k_in) is not None:
                grid = [(n, warps) for n in (4, 8, 16, 32) for warps in (2, 4, 8)]
            else:  # the CUDA-core kernel: ~20-160 weights per thread
                grid = [
                    (n, warps)
                    for n in (1, 2, 4, 8, 16, 32)
                    for warps in (1, 2, 4, 8, 16)
                    if 20 <= n * k_in // (32 * warps) <= 160
                ]
            settings += [{"rows_per_program": n, "num_warps": warps} for n, warps in grid]
        for setting in settings:
            t = timed(
                lambda ws=ws, b=b, i=inp, e=extra, st=setting: [
                    linear.linear(i, w, b, **st, **e) for w in ws
                ],
                replays,
            )
            label = _label(setting, ws[0].size(1), dtype)
            row["settings"][label] = t * 1e3 / LAYERS
            print(
                f"rows {rows:3d} {name:5s} {label:22s} {t * 1e3 / LAYERS:6.2f} us "
                f"({nbytes / (t / LAYERS / 1e3) / 1e12:.2f} TB/s)"
            )
        row["best"] = min(
            settings, key=lambda st: row["settings"][_label(st, ws[0].size(1), dtype)]
        )
        print(
            f"rows {rows:3d} {name:5s} cuBLAS F.linear {row['cublas_us']:6.2f} us "
            f"({nbytes / (t_blas / LAYERS / 1e3) / 1e12:.2f} TB/s)  floor {floor_us:.2f} us"
        )
        table[name] = row

    def stack_ours(
        pdl: bool, attend: bool, best: bool = False, module=linear, ahead=False, **attn_kw
    ):
        st = {name: table[name]["best"] if best else {} for name in kw}
        run_stack(state, weights, biases, ln, pdl, attend, st, module, ahead, **attn_kw)

    def stack_blas():
        for i in range(LAYERS):
            q = F.linear(x, weights["qkv"][i], biases["qkv"])[:, :DIM]
            y = F.linear(q, weights["out"][i], biases["out"])
            f = F.linear(y, weights["fc"][i], biases["fc"])
            F.linear(f, weights["proj"][i], biases["proj"])

    total = sum(w[0].numel() * w[0].element_size() for w in weights.values()) * LAYERS
    stack = {"cublas_ms": timed(stack_blas, replays), "floor_ms": total / bw * 1e3}
    for pdl in (False, True):
        for attend in (False, True):
            key = f"ours{'_attention' if attend else ''}{'_pdl' if pdl else ''}_ms"
            stack[key] = timed(lambda p=pdl, a=attend: stack_ours(p, a), replays)
            if sweep:
                stack[key.replace("ours", "best")] = timed(
                    lambda p=pdl, a=attend: stack_ours(p, a, best=True), replays
                )
    # Attention variants, each in the PDL stack: reading its window before the PDL wait
    # (attention.attend's ``written``), 16-position chunks (fewer registers per program),
    # all rows in one program (``group``), and every row reading row 0's cache through the
    # table (``src``: beams on one history), alone and grouped.
    shared = torch.zeros(rows, WINDOW, dtype=torch.int32, device=dev)
    attention_variants = {
        "read_ahead": {"ahead": True},
        "c16": {"chunk": 16, "block_t": 16},
        "read_ahead_c16": {"ahead": True, "chunk": 16, "block_t": 16},
        "grouped": {"group": rows},
        "shared": {"src": shared},
        "shared_grouped": {"src": shared, "group": rows},
        "shared_grouped_c16": {"src": shared, "group": rows, "chunk": 16, "block_t": 16},
    }
    for name, attn in attention_variants.items():  # (``kw`` is the projections' keywords)
        stack[f"ours_attention_pdl_{name}_ms"] = timed(
            lambda attn=attn: stack_ours(True, True, **attn), replays
        )
    for name, module in (other or {}).items():  # other versions of tts/fast/linear.py
        stack[f"other_{name}_attention_pdl_ms"] = timed(
            lambda m=module: stack_ours(True, True, module=m), replays
        )
        stack[f"other_{name}_attention_pdl_read_ahead_ms"] = timed(
            lambda m=module: stack_ours(True, True, module=m, ahead=True), replays
        )
    table["stack"] = stack
    print(
        f"rows {rows:3d} stack of {LAYERS} layers (ms): "
        + ", ".join(f"{k[:-3]} {v:.3f}" for k, v in stack.items())
    )
    # The chained kernels with PDL compute what they compute without it.
    ref = linear.linear(x, weights["fc"][0], biases["fc"], ln=ln, gelu=True)
    y = linear.linear(x, weights["fc"][0], biases["fc"], ln=ln, gelu=True, pdl=True)
    table["pdl_equal"] = bool(torch.equal(ref, y))
    table["registers"] = registers(linear._linear_kernel, rows)
    table["registers_mma"] = registers(linear._mma_kernel, rows)
    for name, module in (other or {}).items():
        table[f"registers_{name}"] = registers(module._linear_kernel, rows)
        if hasattr(module, "_mma_kernel"):
            table[f"registers_mma_{name}"] = registers(module._mma_kernel, rows)
    return table


def stack_state(rows: int, dtype: torch.dtype) -> dict:
    """The stack's input rows, its KV cache (``[2, rows, heads, 1024, head_dim]``), the step's
    position (the window's last) and the attention's all-zero additive mask."""
    dev = DEVICE
    return {
        "rows": rows,
        "x": torch.randn(rows, DIM, device=dev).to(dtype),
        "kv": torch.zeros(2, rows, HEADS, 1024, DIM // HEADS, device=dev, dtype=dtype),
        "pos": torch.tensor([WINDOW - 1], device=dev),
        "mask": torch.zeros(rows, 1, 1, WINDOW, device=dev, dtype=dtype),
    }


def run_stack(
    state: dict,
    weights: dict,
    biases: dict,
    ln: tuple,
    pdl: bool,
    attend: bool,
    settings: dict | None = None,
    module=linear,
    ahead: bool = False,
    **attn_kw,
) -> None:
    """One pass of the layer stack as the decode step runs it: per layer the LayerNorm and qkv
    (with the KV write), the attention over the window if ``attend``, out (+ residual), the
    LayerNorm and fc (+ GELU), proj (+ residual); ``settings``: launch settings per projection,
    ``module``: the tts/fast/linear.py to run, ``ahead`` and ``attn_kw``: attention variants."""
    rows, x, kv, pos = state["rows"], state["x"], state["kv"], state["pos"]
    st = settings or {}
    for i in range(LAYERS):
        q = module.linear(
            x,
            weights["qkv"][i],
            biases["qkv"],
            ln=ln,
            kv=(kv[0], kv[1], pos, DIM),
            pdl=pdl,
            **st.get("qkv", {}),
        )
        if attend:
            q = attention.attend(
                q.view(rows, 1, HEADS, -1).transpose(1, 2),
                kv[0][:, :, :WINDOW],
                kv[1][:, :, :WINDOW],
                state["mask"],
                pdl=pdl,
                written=pos if ahead else None,
                **attn_kw,
            )
            q = q.transpose(1, 2).reshape(rows, DIM)
        y = module.linear(
            q, weights["out"][i], biases["out"], residual=x, pdl=pdl, **st.get("out", {})
        )
        f = module.linear(
            y, weights["fc"][i], biases["fc"], ln=ln, gelu=True, pdl=pdl, **st.get("fc", {})
        )
        module.linear(
            f, weights["proj"][i], biases["proj"], residual=y, pdl=pdl, **st.get("proj", {})
        )


def once(rows: int, weights: dict, biases: dict, ln: tuple, dtype: torch.dtype) -> None:
    """For a kernel profiler (scripts/device/kernel_counters.py): one pass of the stack with
    the attention and PDL, untimed, to compile every kernel; then one more inside the NVTX
    range ``measure``, the pass a profiler told ``--nvtx-include measure/`` records."""
    state = stack_state(rows, dtype)
    run_stack(state, weights, biases, ln, pdl=True, attend=True)
    if DEVICE == "cuda":
        torch.cuda.synchronize()
        torch.cuda.nvtx.range_push("measure")
    run_stack(state, weights, biases, ln, pdl=True, attend=True)
    if DEVICE == "cuda":
        torch.cuda.synchronize()
        torch.cuda.nvtx.range_pop()
    print(f"rows {rows}: one pass of {LAYERS} layers inside NVTX range 'measure'")


def registers(kernel, rows: int) -> list[dict]:
    """Registers and spills per thread of every specialisation of the Triton ``kernel``
    compiled for ``rows`` rows (what limits how many of its programs are resident), with
    their constants."""
    found = []
    for caches in getattr(kernel, "device_caches", {}).values():  # none in the interpreter
        for compiled in caches[0].values():
            names = list(compiled.src.signature)
            const = {
                names[k[0]] if isinstance(k, tuple) and len(k) == 1 else str(k): v
                for k, v in compiled.src.constants.items()
                if isinstance(v, (int, bool))
            }
            if const.get("M") != rows:
                continue
            found.append(
                {"n_regs": compiled.n_regs, "n_spills": compiled.n_spills, "constants": str(const)}
            )
    for f in found:
        print(f"registers {f['n_regs']:3d} spills {f['n_spills']:3d} {f['constants']}")
    return found


def _module(path: str):
    """The Python file ``path`` imported as a module (another tts/fast/linear.py)."""
    spec = importlib.util.spec_from_file_location(f"linear_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    global DEVICE, DIM, HEADS, LAYERS, WINDOW
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="1,3,8")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--replays", type=int, default=20)
    ap.add_argument("--sweep", action="store_true", help="time other launch settings too")
    ap.add_argument(
        "--other",
        action="append",
        help="another tts/fast/linear.py to time the stack of too (repeatable)",
    )
    ap.add_argument("--json")
    ap.add_argument(
        "--device",
        default="cuda",
        choices=["cuda", "cpu"],
        help="cpu: a dry run of every code path (TRITON_INTERPRET=1, no times)",
    )
    ap.add_argument("--tiny", action="store_true", help="width 64, 1 head, 1 layer, window 64")
    ap.add_argument(
        "--once",
        action="store_true",
        help="no timing: one pass of the stack (attention, PDL) per row count inside the NVTX "
        "range 'measure', for a kernel profiler (scripts/device/kernel_counters.py)",
    )
    ap.add_argument("--layers", type=int, help=f"layers of the stack (default {LAYERS})")
    args = ap.parse_args()
    DEVICE = dev = args.device
    if args.tiny:
        DIM, HEADS, LAYERS, WINDOW = 64, 1, 1, 64
    LAYERS = args.layers or LAYERS
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    bw = copy_bandwidth(torch.device(dev))
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s; {name}")

    def mats(n, k):
        return [(torch.randn(n, k, device=dev) * k**-0.5).to(dtype) for _ in range(LAYERS)]

    shapes = {
        "qkv": (3 * DIM, DIM),
        "out": (DIM, DIM),
        "fc": (4 * DIM, DIM),
        "proj": (DIM, 4 * DIM),
    }
    weights = {name: mats(*nk) for name, nk in shapes.items()}
    biases = {name: torch.randn(nk[0], device=dev).to(dtype) for name, nk in shapes.items()}
    ln = (torch.ones(DIM, device=dev, dtype=dtype), torch.zeros(DIM, device=dev, dtype=dtype), 1e-5)
    results = {
        "device": name,
        "dtype": args.dtype,
        "copy_tb_s": bw / 1e12,
        "rows": {},
    }
    if args.once:
        for rows in (int(r) for r in args.rows.split(",")):
            once(rows, weights, biases, ln, dtype)
        return
    others = {Path(p).stem: _module(p) for p in args.other or ()}
    for rows in (int(r) for r in args.rows.split(",")):
        results["rows"][rows] = measure(
            rows,
            weights,
            biases,
            ln,
            bw,
            args.replays,
            dtype,
            args.sweep,
            others,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
