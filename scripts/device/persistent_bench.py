"""A persistent kernel for the GPT decode step's 24-layer projection stack, against the chain of
tts.fast.linear kernels with PDL (issue 8; an experiment, not used by the decoders).

Run from the repository root on a CUDA machine (no checkpoints):

    python3 scripts/device/persistent_bench.py --json "$OUT/persistent_bench.json"

The stack is the one scripts/device/linear_bench.py times as ``ours_pdl``: per layer ln_1 +
qkv, the out projection of the queries + residual, ln_2 + fc + GELU, proj + residual (no
attention, no KV write), on full-size random weights (width 1280, bf16). Here it is one kernel
of G programs (one per SM by default), each of ``warps`` warps with one weight row per warp
per tile. A phase (one projection of one layer) gives each program the tiles ``pid, pid + G,
...``; between phases all programs meet at a grid barrier (scripts/device/barrier_bench.py:
1.19 us at 132 programs against 1.46-2.25 us for a PDL kernel boundary, H100, run CJ). Before
each barrier a program loads its first weight tile of the next phase, as a PDL kernel loads its
weights before its wait; inside a phase the next tile loads while the current one is summed.
Each program computes the LayerNorm statistics of the input rows itself (no LayerNorm
kernels), so a layer is 4 barriers against 6 kernel boundaries in the chain.

The script checks the persistent kernel against the chain first (bf16: within the rounding
two roundings allow, as tests/kernel_reference.py; float32 within 1e-5), then times both as
CUDA graphs (median of 5 rounds of ``--replays`` replays, CUDA events) and prints ms per
stack, with the bandwidth floor (weight bytes / device copy bandwidth).

Measured on an H100 (docs/benchmarks.md, runs CK-CN). The output equals the chain's exactly
(bf16). The first version (runs CK, CM) put the tiles' lanes first, and Triton gave the warps
to the lanes: every lane sum crossed warps through shared memory, and the stack took 3.46 /
6.59 ms at 1 / 3 rows. With the weight rows first (run CN) it takes, ms per stack:

| rows | persistent 264 x 4 warps | 132 x 8 | 132 x 4 | its phases as kernels (264 x 4) | chain, PDL | chain |
|---|---|---|---|---|---|---|
| 1 | 0.581 | 0.609 | 0.681 | 0.668 | **0.511** | 0.670 |
| 3 | 0.794 | 0.902 | 1.014 | 0.863 | **0.632** | 0.766 |

So the barriers save 70-90 us against the same phases launched one by one, about what PDL
saves the chain (160 / 134 us), but the phases' own code is slower than the chain's kernels,
and the persistent stack loses to the chain with PDL by 14-26%.

``--device cpu`` (TRITON_INTERPRET=1) checks each phase launched as its own kernel (the
interpreter runs programs one after another, so the barrier cannot run there), at a tiny width.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scripts.device.barrier_bench import _grid_barrier  # noqa: E402
from scripts.device.linear_bench import timed  # noqa: E402
from tts.bench import copy_bandwidth  # noqa: E402
from tts.fast import linear  # noqa: E402


@triton.jit
def _offsets(JA: tl.constexpr, JB: tl.constexpr, BN: tl.constexpr, LANE: tl.constexpr):
    """Offsets of a row's inputs in the two tiles ``[BN, JA, LANE]`` and ``[BN, JB, LANE]``
    (lane j, position i: j * LANE + i; the same for every weight row n of the tile). The
    weight rows come first so that Triton gives them the warps (one row per warp): with the
    lanes first it put the warps on the lanes, and every lane sum crossed warps."""
    lane = tl.arange(0, LANE)[None, None, :]
    n0 = 0 * tl.arange(0, BN)[:, None, None]
    at_a = n0 + tl.arange(0, JA)[None, :, None] * LANE + lane
    at_b = n0 + (JA + tl.arange(0, JB))[None, :, None] * LANE + lane
    return at_a, at_b


@triton.jit
def _tile(w_ptr, t, n_tiles, K: tl.constexpr, JA: tl.constexpr, JB: tl.constexpr,
          BN: tl.constexpr, LANE: tl.constexpr):  # fmt: skip
    """Weight tile ``t`` (rows ``[t * BN, (t + 1) * BN)`` of ``w`` [N, K]; nothing past the
    last tile), as the two tiles of :func:`_offsets`."""
    at_a, at_b = _offsets(JA, JB, BN, LANE)
    rows = t * BN + tl.arange(0, BN)[:, None, None]
    ok = t < n_tiles
    wa = tl.load(w_ptr + rows * K + at_a, mask=ok, other=0.0)
    wb = tl.load(w_ptr + rows * K + at_b, mask=ok & (at_b < K), other=0.0)
    return wa, wb


@triton.jit
def _input_row(x_ptr, m: tl.constexpr, sx, lnw_ptr, lnb_ptr, eps, K: tl.constexpr,
               JA: tl.constexpr, JB: tl.constexpr, BN: tl.constexpr, LANE: tl.constexpr,
               LN: tl.constexpr):  # fmt: skip
    """Input row ``m`` in the tiles' layout as float32, LayerNorm'd (float32 statistics, the
    result rounded to the input's dtype, as tts.fast.linear.layer_norm) if ``LN``."""
    at_a, at_b = _offsets(JA, JB, BN, LANE)
    b_ok = at_b < K
    xa = tl.load(x_ptr + m * sx + at_a).to(tl.float32)
    xb = tl.load(x_ptr + m * sx + at_b, mask=b_ok, other=0.0).to(tl.float32)
    if LN:
        mean = (tl.sum(tl.sum(xa, axis=2), axis=1) + tl.sum(tl.sum(xb, axis=2), axis=1)) / K
        da = xa - mean[:, None, None]
        db = tl.where(b_ok, xb - mean[:, None, None], 0.0)
        var = tl.sum(tl.sum(da * da, axis=2), axis=1) + tl.sum(tl.sum(db * db, axis=2), axis=1)
        rstd = 1.0 / tl.sqrt(var / K + eps)
        ga = tl.load(lnw_ptr + at_a).to(tl.float32)
        gb = tl.load(lnw_ptr + at_b, mask=b_ok, other=0.0).to(tl.float32)
        sa = tl.load(lnb_ptr + at_a).to(tl.float32)
        sb = tl.load(lnb_ptr + at_b, mask=b_ok, other=0.0).to(tl.float32)
        dt = x_ptr.dtype.element_ty
        xa = (da * rstd[:, None, None] * ga + sa).to(dt).to(tl.float32)
        xb = (db * rstd[:, None, None] * gb + sb).to(dt).to(tl.float32)
    return xa, xb


@triton.jit
def _emit(fa, fb, xa, xb, bias, cols, col_ok, m: tl.constexpr, res_ptr, sres, out_ptr, sout,
          GELU: tl.constexpr, RES: tl.constexpr):  # fmt: skip
    """Output row ``m`` of the tile's columns: the dot products (summed within each thread
    first, then across the warp), rounded as tts.fast.linear.linear, GELU / residual."""
    part = tl.sum(fa * xa, axis=1) + tl.sum(fb * xb, axis=1)  # [BN, LANE]
    y = (tl.sum(part, axis=1) + bias).to(out_ptr.dtype.element_ty).to(tl.float32)
    if GELU:
        y = linear._gelu_tanh(y)
    if RES:
        y += tl.load(res_ptr + m * sres + cols, mask=col_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + m * sout + cols, y.to(out_ptr.dtype.element_ty), mask=col_ok)


@triton.jit
def _phase(x_ptr, sx, lnw_ptr, lnb_ptr, eps, w_ptr, b_ptr, res_ptr, sres, out_ptr, sout,
           wa, wb, pid, G: tl.constexpr, N: tl.constexpr, M: tl.constexpr, K: tl.constexpr, JA: tl.constexpr,
           JB: tl.constexpr, BN: tl.constexpr, LANE: tl.constexpr, LN: tl.constexpr,
           GELU: tl.constexpr, RES: tl.constexpr, HOIST: tl.constexpr):  # fmt: skip
    """One projection of all ``M`` rows: this program's tiles ``pid, pid + G, ...``, the first
    already loaded (``wa``, ``wb``), each next one loaded while the current one is summed.
    ``HOIST``: the input rows (LayerNorm'd if ``LN``) are computed once, before the tiles (at
    most 4 rows; Triton has no lists, so they are spelled out); otherwise each tile loads them
    again (the 5120-wide input of proj would not fit the registers)."""
    n_tiles: tl.constexpr = (N + BN - 1) // BN
    trips: tl.constexpr = (n_tiles + G - 1) // G
    if HOIST:
        x0a, x0b = _input_row(x_ptr, 0, sx, lnw_ptr, lnb_ptr, eps, K, JA, JB, BN, LANE, LN)
        if M > 1:
            x1a, x1b = _input_row(x_ptr, 1, sx, lnw_ptr, lnb_ptr, eps, K, JA, JB, BN, LANE, LN)
        if M > 2:
            x2a, x2b = _input_row(x_ptr, 2, sx, lnw_ptr, lnb_ptr, eps, K, JA, JB, BN, LANE, LN)
        if M > 3:
            x3a, x3b = _input_row(x_ptr, 3, sx, lnw_ptr, lnb_ptr, eps, K, JA, JB, BN, LANE, LN)
    for i in range(0, trips):  # (every program the same count; past the
        t = pid + i * G  # last tile everything is masked)
        if HOIST:  # the next tile loads while this one is summed
            na, nb = _tile(w_ptr, t + G, n_tiles, K, JA, JB, BN, LANE)
        cols = t * BN + tl.arange(0, BN)
        col_ok = (cols < N) & (t < n_tiles)
        bias = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        if HOIST:
            fa = wa.to(tl.float32)
            fb = wb.to(tl.float32)
            _emit(fa, fb, x0a, x0b, bias, cols, col_ok, 0, res_ptr, sres, out_ptr, sout, GELU, RES)
            if M > 1:
                _emit(fa, fb, x1a, x1b, bias, cols, col_ok, 1, res_ptr, sres, out_ptr, sout,
                      GELU, RES)  # fmt: skip
            if M > 2:
                _emit(fa, fb, x2a, x2b, bias, cols, col_ok, 2, res_ptr, sres, out_ptr, sout,
                      GELU, RES)  # fmt: skip
            if M > 3:
                _emit(fa, fb, x3a, x3b, bias, cols, col_ok, 3, res_ptr, sres, out_ptr, sout,
                      GELU, RES)  # fmt: skip
            wa = na
            wb = nb
        else:  # registers for one tile only: converted row by row, the next loaded after
            for m in tl.static_range(M):
                xa, xb = _input_row(x_ptr, m, sx, lnw_ptr, lnb_ptr, eps, K, JA, JB, BN, LANE, LN)
                _emit(wa.to(tl.float32), wb.to(tl.float32), xa, xb, bias, cols, col_ok, m,
                      res_ptr, sres, out_ptr, sout, GELU, RES)  # fmt: skip
            wa, wb = _tile(w_ptr, t + G, n_tiles, K, JA, JB, BN, LANE)


@triton.jit
def _first_tile(KIND: tl.constexpr, lay, pid, w_qkv, w_o, w_fc, w_pr, D: tl.constexpr,
                LANE: tl.constexpr, JA: tl.constexpr, JB: tl.constexpr, LANE4: tl.constexpr,
                JA4: tl.constexpr, JB4: tl.constexpr, BN: tl.constexpr):  # fmt: skip
    """This program's first weight tile of phase ``KIND`` (0 qkv, 1 out, 2 fc, 3 proj) of
    layer ``lay``: loaded before the barrier that opens the phase."""
    if KIND == 0:
        wa, wb = _tile(w_qkv + lay * 3 * D * D, pid, tl.cdiv(3 * D, BN), D, JA, JB, BN, LANE)
    elif KIND == 1:
        wa, wb = _tile(w_o + lay * D * D, pid, tl.cdiv(D, BN), D, JA, JB, BN, LANE)
    elif KIND == 2:
        wa, wb = _tile(w_fc + lay * 4 * D * D, pid, tl.cdiv(4 * D, BN), D, JA, JB, BN, LANE)
    else:
        wa, wb = _tile(w_pr + lay * D * 4 * D, pid, tl.cdiv(D, BN), 4 * D, JA4, JB4, BN, LANE4)
    return wa, wb


@triton.jit
def _layer_phase(KIND: tl.constexpr, lay, wa, wb, pid, xs_ptr, qkv_ptr, ys_ptr, hs_ptr,
                 w_qkv, b_qkv, w_o, b_o, w_fc, b_fc, w_pr, b_pr, ln1_w, ln1_b, ln2_w, ln2_b,
                 eps, G: tl.constexpr, M: tl.constexpr, D: tl.constexpr, LANE: tl.constexpr,
                 JA: tl.constexpr, JB: tl.constexpr, LANE4: tl.constexpr, JA4: tl.constexpr,
                 JB4: tl.constexpr, BN: tl.constexpr):  # fmt: skip
    """Phase ``KIND`` of layer ``lay`` (:func:`_first_tile`'s kinds), its first tile given:
    ln_1 + qkv; the out projection of the queries + residual; ln_2 + fc + GELU; proj +
    residual into the next layer's input."""
    D3: tl.constexpr = 3 * D
    D4: tl.constexpr = 4 * D
    x = xs_ptr + lay * M * D
    y = ys_ptr + lay * M * D
    q = qkv_ptr + lay * M * D3
    h = hs_ptr + lay * M * D4
    if KIND == 0:
        _phase(x, D, ln1_w + lay * D, ln1_b + lay * D, eps, w_qkv + lay * D3 * D,
               b_qkv + lay * D3, x, 0, q, D3, wa, wb, pid, G, D3,
               M, D, JA, JB, BN, LANE, True, False, False, True)  # fmt: skip
    if KIND == 1:
        _phase(q, D3, ln1_w, ln1_b, eps, w_o + lay * D * D, b_o + lay * D, x, D, y, D,
               wa, wb, pid, G, D, M, D, JA, JB, BN, LANE, False, False, True, True)  # fmt: skip
    if KIND == 2:
        _phase(y, D, ln2_w + lay * D, ln2_b + lay * D, eps, w_fc + lay * D4 * D,
               b_fc + lay * D4, y, 0, h, D4, wa, wb, pid, G, D4,
               M, D, JA, JB, BN, LANE, True, True, False, True)  # fmt: skip
    if KIND == 3:
        _phase(h, D4, ln1_w, ln1_b, eps, w_pr + lay * D * D4, b_pr + lay * D, y, D,
               xs_ptr + (lay + 1) * M * D, D, wa, wb, pid, G, D,
               M, D4, JA4, JB4, BN, LANE4, False, False, True, False)  # fmt: skip


@triton.jit
def _stack_kernel(
    xs_ptr, qkv_ptr, ys_ptr, hs_ptr,
    w_qkv, b_qkv, w_o, b_o, w_fc, b_fc, w_pr, b_pr, ln1_w, ln1_b, ln2_w, ln2_b,
    eps, counter_ptr, layer_lo, layer_hi, G: tl.constexpr,
    M: tl.constexpr, D: tl.constexpr, LANE: tl.constexpr, JA: tl.constexpr, JB: tl.constexpr,
    LANE4: tl.constexpr, JA4: tl.constexpr, JB4: tl.constexpr, BN: tl.constexpr,
    ONLY: tl.constexpr,
):  # fmt: skip
    """Layers ``[layer_lo, layer_hi)`` of the stack (module notes). Activations: ``xs``
    [layers + 1, M, D] (layer inputs; xs[layer_lo] given), ``qkv`` [layers, M, 3D], ``ys``
    [layers, M, D], ``hs`` [layers, M, 4D], each written once, so no program reads a value
    cached before it was written. ``ONLY`` >= 0: just phase ``ONLY`` (0 qkv, 1 out, 2 fc, 3 proj)
    of layer ``layer_lo``, no barrier (the CPU interpreter); -1: every phase, with barriers."""
    pid = tl.program_id(0)
    weights = (w_qkv, b_qkv, w_o, b_o, w_fc, b_fc, w_pr, b_pr, ln1_w, ln1_b, ln2_w, ln2_b)
    mats = (w_qkv, w_o, w_fc, w_pr)
    acts = (xs_ptr, qkv_ptr, ys_ptr, hs_ptr)
    if ONLY >= 0:
        wa, wb = _first_tile(ONLY, layer_lo, pid, *mats, D, LANE, JA, JB, LANE4, JA4, JB4, BN)
        _layer_phase(ONLY, layer_lo, wa, wb, pid, *acts, *weights, eps,
                     G, M, D, LANE, JA, JB, LANE4, JA4, JB4, BN)  # fmt: skip
    else:
        arrived = 0
        qa, qb = _first_tile(0, layer_lo, pid, *mats, D, LANE, JA, JB, LANE4, JA4, JB4, BN)
        for lay in range(layer_lo, layer_hi):
            _layer_phase(0, lay, qa, qb, pid, *acts, *weights, eps,
                         G, M, D, LANE, JA, JB, LANE4, JA4, JB4, BN)  # fmt: skip
            for kind in tl.static_range(1, 4):
                # Each next phase's first tile loads before the barrier that opens the phase.
                wa, wb = _first_tile(kind, lay, pid, *mats, D, LANE, JA, JB, LANE4, JA4, JB4, BN)
                arrived += G
                _grid_barrier(counter_ptr, arrived)
                _layer_phase(kind, lay, wa, wb, pid, *acts, *weights, eps,
                             G, M, D, LANE, JA, JB, LANE4, JA4, JB4, BN)  # fmt: skip
            nxt = tl.minimum(lay + 1, layer_hi - 1)  # (the last layer loads a tile it drops)
            qa, qb = _first_tile(0, nxt, pid, *mats, D, LANE, JA, JB, LANE4, JA4, JB4, BN)
            arrived += G
            _grid_barrier(counter_ptr, arrived)


class Stack:
    """Weights and activation buffers of an ``layers``-layer stack of width ``dim``."""

    def __init__(self, layers: int, dim: int, rows: int, dtype, device: str, seed: int = 0):
        if rows > 4:
            raise ValueError("the persistent stack spells out at most 4 rows")
        g = torch.Generator().manual_seed(seed)

        def rand(*shape, scale=1.0):
            return (torch.randn(*shape, generator=g) * scale).to(dtype).to(device)

        self.layers, self.dim, self.rows = layers, dim, rows
        d = dim
        self.w = {
            "qkv": rand(layers, 3 * d, d, scale=d**-0.5),
            "o": rand(layers, d, d, scale=d**-0.5),
            "fc": rand(layers, 4 * d, d, scale=d**-0.5),
            "pr": rand(layers, d, 4 * d, scale=(4 * d) ** -0.5),
        }
        self.b = {k: rand(layers, v.size(1), scale=0.1) for k, v in self.w.items()}
        self.ln = [1 + rand(layers, d, scale=0.1), rand(layers, d, scale=0.1)]
        self.ln += [1 + rand(layers, d, scale=0.1), rand(layers, d, scale=0.1)]
        self.eps = 1e-5
        self.xs = torch.zeros(layers + 1, rows, d, dtype=dtype, device=device)
        self.xs[0] = rand(rows, d)
        self.qkv = torch.zeros(layers, rows, 3 * d, dtype=dtype, device=device)
        self.ys = torch.zeros(layers, rows, d, dtype=dtype, device=device)
        self.hs = torch.zeros(layers, rows, 4 * d, dtype=dtype, device=device)
        self.counter = torch.zeros(1, dtype=torch.int32, device=device)

    def weight_bytes(self) -> int:
        return sum(w.numel() * w.element_size() for w in self.w.values())

    def chain(self, pdl: bool) -> torch.Tensor:
        """The stack through tts.fast.linear (what the decoders run, less the attention)."""
        x = self.xs[0]
        for i in range(self.layers):
            ln1 = (self.ln[0][i], self.ln[1][i], self.eps)
            ln2 = (self.ln[2][i], self.ln[3][i], self.eps)
            q = linear.linear(x, self.w["qkv"][i], self.b["qkv"][i], ln=ln1, pdl=pdl)
            q = q[:, : self.dim]
            y = linear.linear(q, self.w["o"][i], self.b["o"][i], residual=x, pdl=pdl)
            h = linear.linear(y, self.w["fc"][i], self.b["fc"][i], ln=ln2, gelu=True, pdl=pdl)
            x = linear.linear(h, self.w["pr"][i], self.b["pr"][i], residual=y, pdl=pdl)
        return x

    def persistent(self, programs: int, warps: int, only: int = -1, layer: int = 0) -> None:
        """The stack as one kernel of ``programs`` programs (``only`` >= 0: one phase of
        ``layer``); the result is ``self.xs[-1]``."""
        d = self.dim
        lane, ja, jb = linear.lanes(d, 1)
        lane4, ja4, jb4 = linear.lanes(4 * d, 1)
        if only < 0:
            self.counter.zero_()
        lo, hi = (layer, layer + 1) if only >= 0 else (0, self.layers)
        _stack_kernel[(programs,)](
            self.xs, self.qkv, self.ys, self.hs,
            self.w["qkv"], self.b["qkv"], self.w["o"], self.b["o"],
            self.w["fc"], self.b["fc"], self.w["pr"], self.b["pr"], *self.ln,
            self.eps, self.counter, lo, hi, G=programs,
            M=self.rows, D=d, LANE=lane, JA=ja, JB=jb, LANE4=lane4, JA4=ja4, JB4=jb4,
            BN=warps, ONLY=only, num_warps=warps,
        )  # fmt: skip

    def phases(self, programs: int, warps: int) -> None:
        """The persistent kernel's phases launched one by one (``only``), no barriers."""
        for lay in range(self.layers):
            for only in range(4):
                self.persistent(programs, warps, only=only, layer=lay)


def check(stack: Stack, got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest difference of the stack's output from the chain's; raises beyond the bound
    (float32 1e-4 after 2 x layers roundings of sums; half precision: 4 ulps of the largest
    magnitude, the chains' own roundings differing)."""
    diff = float((got.float() - want.float()).abs().max())
    scale = float(want.float().abs().max())
    bound = 1e-4 * max(1.0, scale) if got.dtype == torch.float32 else 4 * 2**-7 * scale
    if not diff <= bound:
        raise AssertionError(f"persistent stack differs from the chain by {diff} (> {bound})")
    return diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="1,3")
    ap.add_argument(
        "--configs",
        default="1x8,1x4,2x4",
        help="programs per SM x warps per program (all must fit the SMs at once)",
    )
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--replays", type=int, default=20)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--json")
    args = ap.parse_args()
    dev, dtype = args.device, getattr(torch, args.dtype)
    cpu = dev == "cpu"
    layers, dim = (2, 48) if cpu else (24, 1280)
    sms = 3 if cpu else torch.cuda.get_device_properties(0).multi_processor_count
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
    bw = None if cpu else copy_bandwidth(torch.device(dev))
    results = {"device": "cpu" if cpu else torch.cuda.get_device_name(), "rows": {}}
    for rows in (int(r) for r in args.rows.split(",")):
        stack = Stack(layers, dim, rows, dtype, dev)
        want = stack.chain(pdl=False).clone()
        out = {"floor_ms": None if cpu else stack.weight_bytes() / bw * 1e3}
        for per_sm, warps in configs:
            g = per_sm * sms
            stack.xs[1:].zero_()
            if cpu:  # phase by phase: the interpreter cannot run a grid barrier
                stack.phases(g, warps)
            else:
                stack.persistent(g, warps)
            key = f"persistent_{g}x{warps}"
            try:
                out[f"{key}_maxdiff"] = check(stack, stack.xs[-1], want)
            except AssertionError as exc:  # reported, and not timed
                print(f"rows {rows} {key}: {exc}")
                out[f"{key}_failed"] = str(exc)
                continue
            if not cpu:
                out[f"{key}_ms"] = timed(lambda s=stack, g=g, w=warps: s.persistent(g, w), 20)
                # The same phases as 4 x layers kernels (no barrier): is it the phases' own
                # code or the barriers that cost?
                out[f"phases_{g}x{warps}_ms"] = timed(
                    lambda s=stack, g=g, w=warps: s.phases(g, w), args.replays
                )
        if not cpu:
            out["chain_pdl_ms"] = timed(lambda s=stack: s.chain(pdl=True), args.replays)
            out["chain_ms"] = timed(lambda s=stack: s.chain(pdl=False), args.replays)
        results["rows"][rows] = out
        print(
            f"rows {rows}: "
            + ", ".join(f"{k} {v:.4g}" for k, v in out.items() if isinstance(v, float))
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
