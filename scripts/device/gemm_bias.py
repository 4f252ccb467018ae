"""cuBLAS with the bias in the GEMM (``F.linear``: cuBLASLt's bias epilogue) against the GEMM
plus a bias add, and ``addmm`` with the bias as its C matrix (cuBLAS's GEMM with beta = 1), at
the GPT decode step's projection shapes (issue 8; GPU device, no checkpoints).

    python3 scripts/device/gemm_bias.py [--rows 16,48] [--dtypes float32,bfloat16]

Why: the op-by-op stack of ``graphke`` ran each projection as ``F.linear(x, w, b)`` (cuBLASLt
with a bias epilogue); Inductor can move the bias of ``graphkk``'s compiled stack into the
pointwise kernel after a plain GEMM (not checked). At 48 rows in float32 ``graphke``'s step
took ~3 ms more (docs/benchmarks.md, run BX); run BZ found the epilogue 2x slower there, and
it now runs a GEMM and an add in float32. Each
form is timed as a CUDA graph of 24 calls, one per layer with that layer's own weights
(``choice_bench.graph_ms``, median of 20 replays after warm-up), and the outputs compared.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from choice_bench import graph_ms  # this folder: the CUDA-graph timing of the kernel scripts

LAYERS = 24  # the GPT's, each with its own weights
SHAPES = {"qkv": (1280, 3840), "out": (1280, 1280), "fc": (1280, 5120), "proj": (5120, 1280)}


def _mm_add(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.matmul(x, w.t()) + b


def _addmm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    rows = x.numel() // x.size(-1)
    out = torch.addmm(b.expand(rows, w.size(0)), x.reshape(rows, -1), w.t())
    return out.view(*x.shape[:-1], w.size(0))


# The forms of ``x @ w.T + b`` (``x`` [rows, 1, in], ``w`` [out, in]); proj_ab.py uses them too.
FORMS = {"linear": F.linear, "mm_add": _mm_add, "addmm": _addmm}


def forms(x: torch.Tensor, ws: list, bs: list, res: dict) -> list:
    """One callable per form; each call takes the next layer's weights and keeps its output
    in ``res[form, layer]``."""
    turn = iter(range(10**9))

    def call(name: str):
        def run() -> None:
            i = next(turn) % LAYERS
            res[name, i] = FORMS[name](x, ws[i], bs[i])

        run.__name__ = name
        return run

    return [call(name) for name in FORMS]


def time_shape(rows: int, k_in: int, n_out: int, dtype: torch.dtype, gen) -> tuple[dict, dict]:
    """Microseconds per call of each form, and each form's largest difference from F.linear."""
    x = torch.randn(rows, 1, k_in, device="cuda", generator=gen).to(dtype)
    # One weight per layer, as the stack reads them: one matrix called 24 times would stay
    # in L2 and time a read the step never gets.
    ws = [
        (torch.randn(n_out, k_in, device="cuda", generator=gen) * 0.02).to(dtype)
        for _ in range(LAYERS)
    ]
    bs = [torch.randn(n_out, device="cuda", generator=gen).to(dtype) for _ in ws]
    res: dict = {}
    times = {f.__name__: graph_ms(f, LAYERS, 20) * 1e3 for f in forms(x, ws, bs, res)}
    diffs = {
        k: max(
            (res[k, i].float().reshape(rows, n_out) - res["linear", i].float().reshape(rows, n_out))
            .abs()
            .max()
            .item()
            for i in range(LAYERS)
        )
        for k in FORMS
        if k != "linear"
    }
    return times, diffs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="16,48")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    gen = torch.Generator(device="cuda").manual_seed(0)
    print(f"{torch.cuda.get_device_name()}; us per call (graph of {LAYERS} layers' calls)")
    for dtype in (getattr(torch, d) for d in args.dtypes.split(",")):
        for rows in (int(r) for r in args.rows.split(",")):
            total = dict.fromkeys(FORMS, 0.0)
            for name, (k_in, n_out) in SHAPES.items():
                times, diffs = time_shape(rows, k_in, n_out, dtype, gen)
                for k, t in times.items():
                    total[k] += t
                print(
                    f"{str(dtype).removeprefix('torch.'):9s} rows {rows:3d} {name:5s} "
                    + "  ".join(f"{k} {t:7.2f}" for k, t in times.items())
                    + "  max |diff| vs F.linear: "
                    + ", ".join(f"{k} {d:.3g}" for k, d in diffs.items())
                )
            print(
                f"{str(dtype).removeprefix('torch.'):9s} rows {rows:3d} layer "
                + "  ".join(f"{k} {t:7.2f}" for k, t in total.items())
                + f"  (x{LAYERS} layers = per step, ms: "
                + ", ".join(f"{k} {t * LAYERS / 1e3:.3f}" for k, t in total.items())
                + ")"
            )


if __name__ == "__main__":
    main()
