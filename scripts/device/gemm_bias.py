"""cuBLAS with the bias in the GEMM (``F.linear``: cuBLASLt's bias epilogue) against the GEMM
plus a bias add, and ``addmm`` with the bias as its C matrix (cuBLAS's GEMM with beta = 1), at
the GPT decode step's projection shapes (issue 8; GPU device, no checkpoints).

    python3 scripts/device/gemm_bias.py [--rows 16,48] [--dtypes float32,bfloat16]

Why: the op-by-op stack of ``graphke`` runs each projection as ``F.linear(x, w, b)`` (cuBLASLt
with a bias epilogue); Inductor can move the bias of ``graphkk``'s compiled stack into the
pointwise kernel after a plain GEMM (not checked). At 48 rows in float32 ``graphke``'s step took ~3 ms more (docs/benchmarks.md, run BX). Each
form is timed as a CUDA graph of 24 calls (one per layer; ``choice_bench.graph_ms``, median of
20 replays after warm-up), and the outputs compared.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from choice_bench import graph_ms  # this folder: the CUDA-graph timing of the kernel scripts

SHAPES = {"qkv": (1280, 3840), "out": (1280, 1280), "fc": (1280, 5120), "proj": (5120, 1280)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="16,48")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    gen = torch.Generator(device="cuda").manual_seed(0)
    print(f"{torch.cuda.get_device_name()}; us per call (graph of 24 calls)")
    for dtype in (getattr(torch, d) for d in args.dtypes.split(",")):
        for rows in (int(r) for r in args.rows.split(",")):
            for name, (k_in, n_out) in SHAPES.items():
                x = torch.randn(rows, 1, k_in, device="cuda", generator=gen).to(dtype)
                w = (torch.randn(n_out, k_in, device="cuda", generator=gen) * 0.02).to(dtype)
                b = torch.randn(n_out, device="cuda", generator=gen).to(dtype)
                res = {}

                def linear(out=res, x=x, w=w, b=b):
                    out["linear"] = F.linear(x, w, b)

                def mm_add(out=res, x=x, w=w, b=b):
                    out["mm_add"] = torch.matmul(x, w.t()) + b

                c = b.expand(rows, n_out)

                def addmm_c(out=res, x=x, w=w, c=c):
                    out["addmm_c"] = torch.addmm(c, x.view(x.size(0), -1), w.t())

                times = {f.__name__: graph_ms(f, 24, 20) for f in (linear, mm_add, addmm_c)}
                ref = res["linear"].float().view(rows, n_out)
                diffs = {
                    k: (res[k].float().view(rows, n_out) - ref).abs().max().item()
                    for k in ("mm_add", "addmm_c")
                }
                print(
                    f"{str(dtype).removeprefix('torch.'):9s} rows {rows:3d} {name:5s} "
                    + "  ".join(f"{k} {t * 1e3:7.2f}" for k, t in times.items())
                    + "  max |diff| vs F.linear: "
                    + ", ".join(f"{k} {d:.3g}" for k, d in diffs.items())
                )


if __name__ == "__main__":
    main()
