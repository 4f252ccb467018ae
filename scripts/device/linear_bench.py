"""Few-row projections of the GPT decode step: tts.fast.linear kernels against cuBLAS (issue 8).

Run from the repository root on a CUDA machine (no checkpoints):

    python3 scripts/device/linear_bench.py --json "$OUT/linear_bench.json"

For each projection of a full-size GPT-2 layer (width 1280: qkv 1280->3840 with ln_1 and the KV
write, out 1280->1280 + residual, fc 1280->5120 with ln_2 + GELU, proj 5120->1280 + residual) and
each row count of ``--rows`` (3 = batch 1 x 3 beams; at most 8), it captures one CUDA graph
of the projection over 24 distinct weight matrices (so the 24 do not share the L2 cache, as
in a real step), replays it ``--replays`` times between CUDA events (median of 5 after 3
warm-up replays) and prints microseconds per projection and the weight-read bandwidth it
reached, next to ``F.linear`` alone (cuBLAS, no LayerNorm / GELU / residual / KV write) and
the device-to-device copy bandwidth (tts.bench.copy_bandwidth, as the benchmark's floor). Also the whole stack of 24 layers (4 projections each)
both ways, and the block sizes autotuning chose.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tts.bench import copy_bandwidth  # noqa: E402
from tts.fast import linear  # noqa: E402

DIM, HEADS, LAYERS = 1280, 20, 24


def timed(fn, replays: int) -> float:
    """Milliseconds of one ``fn()`` call captured in a CUDA graph (median of 5)."""
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


def measure(
    rows: int, weights: dict, biases: dict, ln: tuple, bw: float, replays: int, dtype: torch.dtype
) -> dict:
    """The per-projection and whole-stack times at ``rows`` rows (see the module notes)."""
    dev = "cuda"
    x = torch.randn(rows, DIM, device=dev).to(dtype)
    h = torch.randn(rows, 4 * DIM, device=dev).to(dtype)
    kv = torch.zeros(2, rows, HEADS, 1024, DIM // HEADS, device=dev, dtype=dtype)
    pos = torch.tensor([100], device=dev)
    ours = {
        "qkv": lambda w, b: linear.linear(x, w, b, ln=ln, kv=(kv[0], kv[1], pos, DIM)),
        "out": lambda w, b: linear.linear(x, w, b, residual=x),
        "fc": lambda w, b: linear.linear(x, w, b, ln=ln, gelu=True),
        "proj": lambda w, b: linear.linear(h, w, b, residual=x),
    }
    inputs = {"qkv": x, "out": x, "fc": x, "proj": h}
    table = {}
    for name, fn in ours.items():
        ws, b = weights[name], biases[name]
        nbytes = ws[0].numel() * ws[0].element_size()
        t_ours = timed(lambda fn=fn, ws=ws, b=b: [fn(w, b) for w in ws], replays)
        t_blas = timed(lambda ws=ws, b=b, i=inputs[name]: [F.linear(i, w, b) for w in ws], replays)
        row = {
            "ours_us": t_ours * 1e3 / LAYERS,
            "cublas_us": t_blas * 1e3 / LAYERS,
            "ours_tb_s": nbytes / (t_ours / LAYERS / 1e3) / 1e12,
            "cublas_tb_s": nbytes / (t_blas / LAYERS / 1e3) / 1e12,
            "floor_us": nbytes / bw * 1e6,
        }
        table[name] = row
        print(
            f"rows {rows:3d} {name:5s} ours {row['ours_us']:6.2f} us "
            f"({row['ours_tb_s']:.2f} TB/s)  cuBLAS F.linear {row['cublas_us']:6.2f} us "
            f"({row['cublas_tb_s']:.2f} TB/s)  floor {row['floor_us']:.2f} us"
        )

    def stack_ours():
        for i in range(LAYERS):
            q = linear.linear(
                x, weights["qkv"][i], biases["qkv"], ln=ln, kv=(kv[0], kv[1], pos, DIM)
            )
            y = linear.linear(q, weights["out"][i], biases["out"], residual=x)
            f = linear.linear(y, weights["fc"][i], biases["fc"], ln=ln, gelu=True)
            linear.linear(f, weights["proj"][i], biases["proj"], residual=y)

    def stack_blas():
        for i in range(LAYERS):
            q = F.linear(x, weights["qkv"][i], biases["qkv"])[:, :DIM]
            y = F.linear(q, weights["out"][i], biases["out"])
            f = F.linear(y, weights["fc"][i], biases["fc"])
            F.linear(f, weights["proj"][i], biases["proj"])

    total = sum(w[0].numel() * w[0].element_size() for w in weights.values()) * LAYERS
    t_s, t_b = timed(stack_ours, replays), timed(stack_blas, replays)
    table["stack"] = {"ours_ms": t_s, "cublas_ms": t_b, "floor_ms": total / bw * 1e3}
    print(
        f"rows {rows:3d} stack of {LAYERS} layers: ours {t_s:.3f} ms, cuBLAS F.linear only "
        f"{t_b:.3f} ms, floor {total / bw * 1e3:.3f} ms"
    )
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="1,3,8")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--replays", type=int, default=20)
    ap.add_argument("--json")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    dev = "cuda"
    bw = copy_bandwidth(torch.device(dev))
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s; {torch.cuda.get_device_name()}")

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
        "device": torch.cuda.get_device_name(),
        "dtype": args.dtype,
        "copy_tb_s": bw / 1e12,
        "rows": {},
    }
    for rows in (int(r) for r in args.rows.split(",")):
        results["rows"][rows] = measure(rows, weights, biases, ln, bw, args.replays, dtype)
    results["configs"] = linear.tuned_configs()
    for key, cfg in results["configs"].items():
        print("tuned", key, cfg)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
