"""Few-row linear layers as Triton kernels, with the GPT layer's small ops fused in (issue 8).

A GPT decode step multiplies a handful of rows (batch x beams) by each weight matrix: the cost
of a projection is reading its weights once, and the LayerNorm, bias, GELU, residual add and
KV-cache write around it are separate small kernels whose launches cost more than their work
(docs/benchmarks.md: ~390 kernels in a 1.8 ms step, the cuBLAS GEMMs at half the weight-read
bandwidth). :func:`linear` computes

    y = act(LN(x) @ W.T + b) (+ residual)

for ``x`` [rows, in] and ``W`` [out, in] (tts.fast.decode.DecodeWeights' layout, so each
program reads whole contiguous weight rows), with each part optional:

* ``ln``: LayerNorm of ``x`` first, as its own small kernel (:func:`layer_norm`: one program
  per row, float32 statistics, the result rounded to ``x``'s dtype as
  :func:`tts.fast.fused._norm`). Computing it inside every program of the projection was
  slower (docs/benchmarks.md, run U);
* ``gelu``: GELU (tanh approximation) of the projection;
* ``residual``: ``residual + projection``;
* ``kv``: the output columns are (queries | keys | values) of a qkv projection: keys and
  values go straight into the layer's cache at the step's position (a device tensor), the
  queries into the output.

Rounding follows the compiled pieces it replaces: the projection (float32 accumulation + bias)
is rounded to the output dtype before GELU or the residual add, which then run in float32 and
round once. Products and sums are float32 (CUDA-core multiply-adds, no TF32), so float32
weights give IEEE float32 results.

Each program holds :data:`ROWS_PER_PROGRAM` whole weight rows in registers (the width as
lanes of up to 256 inputs per warp, 1280 = (4 + 1) x 256, see :func:`lanes`), loads every input
row at once in the weights' own layout, and sums each row's products within each thread before
one reduction across the warp. A projection is a matrix-vector product per row, so this is a
GEMV with the few rows sharing each weight load. The lanes replaced two power-of-two tiles
(1024 + 256) reduced separately, with each input row picked out of the row tile by a float sum:
at 3 rows that cost 833 instructions per program after the PDL wait against 688 now (fc,
sm_90 SASS), and the 24-layer stack with attention and PDL took 0.815 / 0.818 ms against 0.795 /
0.799 now; at 1 row it was faster, 0.585 / 0.595 against 0.611 / 0.611 ms (H100, two calls,
docs/benchmarks.md, runs CI-CJ).

On tensor cores (:func:`_mma_kernel`, bf16 and fp16 inputs up to 1280 wide: qkv, out and fc
of the GPT), a program multiplies 16 weight rows by all input rows with ``tl.dot`` (the rows
padded to the MMA shape; float32 accumulation, so each product is exact and only the order of
the sums differs from the CUDA-core kernel). At 3 rows the CUDA-core kernel spends ~690
instructions per warp after its PDL wait, a third of them converting bf16 to float32; the
tensor-core one ~300 per warp for 8 times the weight rows (sm_90 SASS). The 24-layer stack
with attention and PDL: 0.698 against 0.792 ms at 3 rows, 0.588 against 0.613 at 1 (H100,
docs/benchmarks.md, run CW). proj (5120 inputs) and float32 stay on CUDA cores.

``pdl=True`` launches the kernels as programmatic dependent launches (Hopper or newer): a
kernel starts while the one before it in the stream still runs, loads its weights (which do
not depend on that kernel), lets the next kernel start too, and only then waits
(``griddepcontrol.wait``) for the previous kernel's results. The chain of the layer's kernels
(LayerNorm, projections, and :mod:`tts.fast.attention` with ``pdl=True``) thus reads its
weights ahead, which separate launches cannot. What it computes does not change (tests: the
decoder's codes and scores are identical with and without it).

Measured on an H200 (docs/benchmarks.md, run U): the 24 layers' LayerNorms and projections at 3
rows take 0.60 ms with PDL against 0.59 ms for cuBLAS's four GEMMs alone (floor 0.23 ms), and
the decoder ``graphkp`` (these kernels + the Triton attention, all with PDL) replays a step in
1.06 ms against 1.43 ms for ``graphfi``. Runs E-G measured this module's first version (one
program per few columns, autotuned): slower than cuBLAS.

:func:`decode_pre` and :func:`decode_post` are the two halves of a GPT-2 layer around the
attention, with the signatures of :mod:`tts.fast.fused`'s compiled pieces (matmul="triton").
"""

from __future__ import annotations

import functools

import torch

from tts.fast import pdl_available
from tts.fast import triton_runs as available  # noqa: F401 - part of this module's API

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - Triton comes with CUDA builds of torch
    triton = None

# Rows one kernel takes (batch x beams). Every row costs CUDA-core multiply-adds over all the
# weights; beyond a few rows cuBLAS's tensor-core GEMMs win (tts.fast.fused keeps them there).
MAX_ROWS = 8


if triton is not None:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

    @triton.jit
    def _gelu_tanh(y):
        """GELU, tanh approximation (tanh(u) = 1 - 2 / (exp(2u) + 1), exact at both ends)."""
        u = 0.7978845608028654 * (y + 0.044715 * y * y * y)
        return 0.5 * y * (2.0 - 2.0 / (tl.exp(2.0 * u) + 1.0))

    @triton.jit
    def _norm_kernel(
        x_ptr,
        w_ptr,
        b_ptr,
        out_ptr,
        eps,
        stride_x,
        stride_out,
        w2_ptr,
        b2_ptr,
        eps2,
        K: tl.constexpr,
        KA: tl.constexpr,
        KB: tl.constexpr,
        PDL: tl.constexpr,
        SECOND: tl.constexpr,
    ):
        """Program m: LayerNorm of row ``m`` (float32 statistics, two passes), rounded to the
        output dtype. ``SECOND``: a second LayerNorm (``w2``, ``b2``, ``eps2``) of the float32
        result before the rounding (the GPT's ln_f then final_norm)."""
        ka = tl.arange(0, KA)
        kb = KA + tl.arange(0, KB)
        kb_ok = kb < K
        ga = tl.load(w_ptr + ka).to(tl.float32)
        gb = tl.load(w_ptr + kb, mask=kb_ok, other=0.0).to(tl.float32)
        sa = tl.load(b_ptr + ka).to(tl.float32)
        sb = tl.load(b_ptr + kb, mask=kb_ok, other=0.0).to(tl.float32)
        if PDL:
            gdc_launch_dependents()
            gdc_wait()
        row = x_ptr + tl.program_id(0) * stride_x
        xa = tl.load(row + ka).to(tl.float32)
        xb = tl.load(row + kb, mask=kb_ok, other=0.0).to(tl.float32)
        ya, yb = _normalized(xa, xb, kb_ok, ga, gb, sa, sb, eps, K)
        if SECOND:
            ga = tl.load(w2_ptr + ka).to(tl.float32)
            gb = tl.load(w2_ptr + kb, mask=kb_ok, other=0.0).to(tl.float32)
            sa = tl.load(b2_ptr + ka).to(tl.float32)
            sb = tl.load(b2_ptr + kb, mask=kb_ok, other=0.0).to(tl.float32)
            ya, yb = _normalized(ya, yb, kb_ok, ga, gb, sa, sb, eps2, K)
        out = out_ptr + tl.program_id(0) * stride_out
        tl.store(out + ka, ya.to(out_ptr.dtype.element_ty))
        tl.store(out + kb, yb.to(out_ptr.dtype.element_ty), mask=kb_ok)

    @triton.jit
    def _normalized(xa, xb, kb_ok, ga, gb, sa, sb, eps, K: tl.constexpr):
        """The float32 LayerNorm of a row held as two tiles (``xb`` masked by ``kb_ok``)."""
        mean = (tl.sum(xa, axis=0) + tl.sum(xb, axis=0)) / K  # xb is 0 where masked
        da = xa - mean
        db = tl.where(kb_ok, xb - mean, 0.0)
        rstd = 1.0 / tl.sqrt((tl.sum(da * da, axis=0) + tl.sum(db * db, axis=0)) / K + eps)
        return da * rstd * ga + sa, db * rstd * gb + sb

    @triton.jit
    def _pick(x, rows, m: tl.constexpr):
        """Row ``m`` of ``x`` [rows, ...] as float32 [1, ...]. Picked on the bits: where the rows
        are held by each thread, a sum of integer zeros folds away (a float sum would cost an
        add per element: ``x + 0.0`` is not ``x`` for ``x = -0.0``)."""
        if x.dtype.primitive_bitwidth == 16:
            bits = x.to(tl.int16, bitcast=True)
        else:
            bits = x.to(tl.int32, bitcast=True)
        one = tl.sum(tl.where(rows[:, None, None] == m, bits, 0), axis=0, keep_dims=True)
        return one.to(bits.dtype).to(x.dtype, bitcast=True).to(tl.float32)

    @triton.jit
    def _epilogue(
        y, bias, rows, row_ok, cols, col_ok, res_ptr, out_ptr, k_ptr, v_ptr, pos_ptr,
        stride_res, stride_out, kv_row, kv_head, kv_pos, width, head_dim,
        GELU: tl.constexpr, RES: tl.constexpr, KV: tl.constexpr,
    ):  # fmt: skip
        """Both projection kernels' end: ``y`` [rows, cols] (float32 sums) plus the bias,
        rounded to the output dtype as the projection's own result, then GELU and the residual
        add in float32 and one rounding; stored to ``out``, or, for a qkv projection (``KV``),
        its keys and values to the layer's cache at position ``*pos_ptr`` and its queries to
        ``out``."""
        y = (y + bias[None, :]).to(out_ptr.dtype.element_ty).to(tl.float32)
        if GELU:
            y = _gelu_tanh(y)
        ok = row_ok[:, None] & col_ok[None, :]
        if RES:
            r = tl.load(res_ptr + rows[:, None] * stride_res + cols[None, :], mask=ok, other=0.0)
            y = y + r.to(tl.float32)
        y = y.to(out_ptr.dtype.element_ty)
        if KV:
            part = cols // width  # 0: queries, 1: keys, 2: values
            c = cols % width
            pos = tl.load(pos_ptr)
            to = (
                rows[:, None] * kv_row
                + ((c // head_dim) * kv_head + pos * kv_pos + c % head_dim)[None, :]
            )
            tl.store(k_ptr + to, y, mask=ok & (part == 1)[None, :])
            tl.store(v_ptr + to, y, mask=ok & (part == 2)[None, :])
            ok = ok & (part == 0)[None, :]
        tl.store(out_ptr + rows[:, None] * stride_out + cols[None, :], y, mask=ok)

    @triton.jit
    def _linear_kernel(
        x_ptr, w_ptr, b_ptr, res_ptr, out_ptr, k_ptr, v_ptr, pos_ptr,
        N, stride_x, stride_res, stride_out, kv_row, kv_head, kv_pos, width, head_dim,
        M: tl.constexpr, K: tl.constexpr, LANE: tl.constexpr, JA: tl.constexpr,
        JB: tl.constexpr, GELU: tl.constexpr, RES: tl.constexpr, KV: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PDL: tl.constexpr,
    ):  # fmt: skip
        """Program n: output columns ``[n * BLOCK_N, (n + 1) * BLOCK_N)`` of all ``M`` rows.

        A weight row is read as ``JA + JB`` lanes of ``LANE`` inputs (:func:`lanes`;
        1280 = (4 + 1) x 256), so the program's whole weight rows fit two register tiles
        ``[BLOCK_N, JA, LANE]`` and ``[BLOCK_N, JB, LANE]`` without padding 1280 to 2048.
        Each input row is loaded in the weights' own layout, so its products are summed
        first within each thread (over the lanes, both tiles) and then once across the
        threads: one cross-thread reduction per input row and weight row.
        """
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        lane = tl.arange(0, LANE)[None, None, :]
        at_a = tl.arange(0, JA)[None, :, None] * LANE + lane  # [1, JA, LANE]
        at_b = (JA + tl.arange(0, JB))[None, :, None] * LANE + lane  # [1, JB, LANE]
        b_ok = at_b < K
        w_row = w_ptr + cols[:, None, None] * K
        w_ok = col_ok[:, None, None]
        # Everything that does not depend on the previous kernel is loaded first: the weights
        # and the bias. With PDL the kernel is launched while the previous one still runs, and
        # these loads overlap it.
        wa = tl.load(w_row + at_a, mask=w_ok, other=0.0)
        wb = tl.load(w_row + at_b, mask=w_ok & b_ok, other=0.0)
        bias = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        if PDL:
            gdc_launch_dependents()  # the next kernel may start its own weight loads
            gdc_wait()  # the previous kernel's outputs (our input rows) are complete
        # All input rows in one load, so their loads are in flight together (loads of one row
        # at a time were each issued just before that row's products, waiting in turn).
        rows = tl.arange(0, BLOCK_M)
        row_ok = rows < M
        at_x = x_ptr + rows[:, None, None] * stride_x
        xa = tl.load(at_x + at_a, mask=row_ok[:, None, None], other=0.0)
        xb = tl.load(at_x + at_b, mask=row_ok[:, None, None] & b_ok, other=0.0)
        wa = wa.to(tl.float32)
        wb = wb.to(tl.float32)
        y = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for m in tl.static_range(M):
            # The weight rows' dot products with input row m: the products summed within
            # each thread first (lanes of both tiles), then once across threads.
            part = tl.sum(wa * _pick(xa, rows, m), axis=1)
            part += tl.sum(wb * _pick(xb, rows, m), axis=1)  # [BLOCK_N, LANE]
            y = tl.where(rows[:, None] == m, tl.sum(part, axis=1)[None, :], y)
        _epilogue(
            y, bias, rows, row_ok, cols, col_ok, res_ptr, out_ptr, k_ptr, v_ptr, pos_ptr,
            stride_res, stride_out, kv_row, kv_head, kv_pos, width, head_dim, GELU, RES, KV,
        )  # fmt: skip

    @triton.jit
    def _mma_kernel(
        x_ptr, w_ptr, b_ptr, res_ptr, out_ptr, k_ptr, v_ptr, pos_ptr,
        N, stride_x, stride_res, stride_out, kv_row, kv_head, kv_pos, width, head_dim,
        M: tl.constexpr, K: tl.constexpr, KS: tl.constexpr, SA: tl.constexpr,
        SB: tl.constexpr, GELU: tl.constexpr, RES: tl.constexpr, KV: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WIDEN: tl.constexpr, PDL: tl.constexpr,
    ):  # fmt: skip
        """Program n: output columns ``[n * BLOCK_N, (n + 1) * BLOCK_N)`` of all ``M`` rows on
        tensor cores (half-precision inputs, float32 accumulation), with
        :func:`_epilogue` as the CUDA-core kernel.

        The width is cut into ``SA + SB`` slices of ``KS`` inputs (1280 = (8 + 2) x 128), and
        each slice's weights ``[BLOCK_N, KS]`` times the input rows ``[KS, BLOCK_M]`` is one
        batched ``tl.dot``; the slices' partial products are summed last. The batch dimension
        spreads the slices over the warps, so each warp multiplies its own part of the width.
        ``WIDEN``: the operands are widened to float32 first (Triton's CPU interpreter, whose
        bf16 ``tl.dot`` is wrong; the products of two half-precision numbers are exact in
        float32, so it computes what the tensor cores do up to the order of the sums).
        """
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        k = tl.arange(0, KS)
        sa = tl.arange(0, SA)[:, None, None] * KS
        w_at = w_ptr + cols[None, :, None] * K + k[None, None, :]
        # The weights and the bias first: with PDL they load while the previous kernel runs.
        wa = tl.load(w_at + sa, mask=col_ok[None, :, None], other=0.0)  # [SA, BLOCK_N, KS]
        if SB > 0:
            sb = (SA + tl.arange(0, SB))[:, None, None] * KS
            wb = tl.load(w_at + sb, mask=col_ok[None, :, None], other=0.0)  # [SB, BLOCK_N, KS]
        bias = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        if PDL:
            gdc_launch_dependents()
            gdc_wait()
        rows = tl.arange(0, BLOCK_M)
        row_ok = rows < M
        x_at = x_ptr + rows[None, None, :] * stride_x + k[None, :, None]
        xa = tl.load(x_at + sa, mask=row_ok[None, None, :], other=0.0)  # [SA, KS, BLOCK_M]
        if WIDEN:
            wa, xa = wa.to(tl.float32), xa.to(tl.float32)
        part = tl.sum(tl.dot(wa, xa), axis=0)
        if SB > 0:
            xb = tl.load(x_at + sb, mask=row_ok[None, None, :], other=0.0)
            if WIDEN:
                wb, xb = wb.to(tl.float32), xb.to(tl.float32)
            part += tl.sum(tl.dot(wb, xb), axis=0)
        y = tl.trans(part)  # [BLOCK_M, BLOCK_N]
        _epilogue(
            y, bias, rows, row_ok, cols, col_ok, res_ptr, out_ptr, k_ptr, v_ptr, pos_ptr,
            stride_res, stride_out, kv_row, kv_head, kv_pos, width, head_dim, GELU, RES, KV,
        )  # fmt: skip


# Launch settings, from scripts/device/linear_bench.py on an H200 (docs/benchmarks.md, run U):
# each program holds ROWS_PER_PROGRAM whole weight rows in registers, with one warp per 1280
# inputs (~80 weights per thread): one warp keeps every reduction inside the warp.
ROWS_PER_PROGRAM = 2

# The tensor-core kernel (half-precision weights; float32 keeps the CUDA-core one, whose
# float32 products tensor cores would round to TF32): 16 weight rows per program on four warps,
# the width in slices of 128 inputs (scripts/device/linear_bench.py on an H100,
# docs/benchmarks.md, run CW: the 24-layer stack with attention and PDL at 1 / 2 / 3 rows
# 0.588 / 0.647 / 0.698 ms against 0.613 / 0.705 / 0.792 for the CUDA-core kernel, in one
# process; runs CT-CU: 8 rows per program or slices of 256 within a few percent, 2 or 8 warps
# and 4 or 32 rows slower).
# A program keeps its weights in shared memory (16 x 1280 x 2 B = 40 KB): at 5120 inputs
# (proj) that is 160 KB, one program per SM, and that projection measured slower on tensor
# cores (0.80-0.98 ms for the stack), so it stays on the CUDA-core kernel.
MMA_ROWS_PER_PROGRAM = 16
MMA_WARPS = 4
MMA_SLICE = 128
MMA_MAX_WIDTH = 1280


@functools.cache
def split_width(k_in: int) -> tuple[int, int]:
    """The input width as two power-of-two register tiles ``(KA, KB)``: KA the largest power
    of two <= ``k_in``, KB the rest rounded up to a power of two (1280 = 1024 + 256)."""
    ka = 1 << (k_in.bit_length() - 1)
    return ka, triton.next_power_of_2(max(1, k_in - ka))


@functools.cache
def mma_slices(k_in: int) -> tuple[int, int] | None:
    """The input width as ``(SA, SB)`` slices of :data:`MMA_SLICE` inputs for
    :func:`_mma_kernel` (SA a power of two, SB a smaller one or 0: 1280 = (8 + 2) x 128), or
    None where the tensor-core kernel does not take it (not a whole number of slices, a
    remainder that is not a power of two, or wider than :data:`MMA_MAX_WIDTH`)."""
    count, rest = divmod(k_in, MMA_SLICE)
    if rest or not count or k_in > MMA_MAX_WIDTH:
        return None
    sa = 1 << (count.bit_length() - 1)
    sb = count - sa
    if sb and sb & (sb - 1):
        return None
    return sa, sb


def on_tensor_cores(dtype: torch.dtype, k_in: int) -> tuple[int, int] | None:
    """Where :func:`linear` runs ``k_in``-wide inputs of ``dtype`` on tensor cores, their
    :func:`mma_slices`; else None (float32, or a width it does not take: CUDA cores)."""
    return mma_slices(k_in) if dtype in (torch.bfloat16, torch.float16) else None


def mma_block_rows(rows: int) -> int:
    """The input rows of a :func:`_mma_kernel` program, padded: 4 or 8. One row (a ``tl.dot``
    one column wide) gave wrong sums on an H100 (Triton 3.6, docs/benchmarks.md, run CV); the
    tensor cores' narrowest MMA is 8 columns wide, so a narrower tile saves them no work."""
    return max(4, triton.next_power_of_2(rows))


@functools.cache
def lanes(k_in: int, warps: int) -> tuple[int, int, int]:
    """The input width as ``(LANE, JA, JB)`` for :func:`_linear_kernel`: ``LANE`` inputs (the
    largest power of two dividing ``k_in``, at most 8 per thread of the program's warps) side
    by side, ``JA`` (a power of two) lanes of them in the first tile and the rest in ``JB``
    (rounded up to a power of two, at least 1; lanes past ``k_in`` are masked). 1280 inputs on
    one warp: 256 x (4 + 1); 5120 on four: 1024 x (4 + 1)."""
    lane = min(k_in & -k_in, 8 * 32 * warps)
    count = k_in // lane
    ja = 1 << (count.bit_length() - 1)
    return lane, ja, triton.next_power_of_2(max(1, count - ja))


@functools.cache
def warps_for(rows_per_program: int, k_in: int) -> int:
    """Warps per program: a power of two giving each thread at most ~80 weights."""
    warps = 1
    while rows_per_program * k_in > 80 * 32 * warps and warps < 8:
        warps *= 2
    return warps


def layer_norm(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    eps: float,
    *,
    then: tuple[torch.Tensor, torch.Tensor, float] | None = None,
    pdl: bool = False,
) -> torch.Tensor:
    """LayerNorm of the rows of ``x`` [rows, width] (float32 statistics, rounded to ``x``'s
    dtype: :func:`tts.fast.fused._norm`), one program per row. ``then``: (weight, bias, eps)
    of a second LayerNorm of the float32 result, rounded once at the end (the decode step's
    head: :func:`tts.fast.fused._head`). ``pdl`` as in :func:`linear`."""
    rows, k_in = x.shape
    params = [w, b] + ([] if then is None else list(then[:2]))
    if x.stride(1) != 1 or any(p.shape != (k_in,) for p in params):
        raise ValueError(f"layer_norm needs contiguous rows and [{k_in}] parameters")
    w2, b2, eps2 = then if then is not None else (w, b, eps)
    ka, kb = split_width(k_in)
    pdl = pdl and pdl_available(x.device)
    out = torch.empty((rows, k_in), dtype=x.dtype, device=x.device)
    _norm_kernel[(rows,)](
        x,
        w,
        b,
        out,
        float(eps),
        x.stride(0),
        out.stride(0),
        w2,
        b2,
        float(eps2),
        K=k_in,
        KA=ka,
        KB=kb,
        PDL=pdl,
        SECOND=then is not None,
        num_warps=warps_for(1, k_in),
        launch_pdl=pdl,
    )
    return out


def linear(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    *,
    ln: tuple[torch.Tensor, torch.Tensor, float] | None = None,
    gelu: bool = False,
    residual: torch.Tensor | None = None,
    kv: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int] | None = None,
    pdl: bool = False,
    rows_per_program: int | None = None,
    num_warps: int | None = None,
) -> torch.Tensor:
    """``act(LN(x) @ w.T + b) (+ residual)`` for ``x`` [rows, in], ``w`` [out, in].

    ``ln``: (weight, bias, eps) of a LayerNorm applied to ``x`` first; ``residual``: [rows, out];
    ``kv``: (keys, values, pos, width) for a qkv projection: ``keys`` / ``values`` are the layer's
    cache ``[rows, heads, capacity, head_dim]`` (same strides), ``pos`` a 1-element int64
    device tensor; then only the queries (the first ``width`` columns) are returned.
    ``pdl``: launch as a programmatic dependent launch (CUDA, Hopper or newer): the kernel
    starts while the previous kernel of the stream runs, loads its weights, and waits for
    that kernel before reading ``x`` (ignored under the interpreter). Inputs that
    :func:`on_tensor_cores` takes run on tensor cores (:func:`_mma_kernel`), the rest on CUDA
    cores (:func:`_linear_kernel`). ``rows_per_program`` / ``num_warps``: launch settings of
    whichever runs (defaults :data:`MMA_ROWS_PER_PROGRAM` and :data:`MMA_WARPS`, or
    :data:`ROWS_PER_PROGRAM` and :func:`warps_for`). Returns a new tensor in ``x``'s dtype.
    """
    rows, k_in = x.shape
    n_out = w.size(0)
    if rows > MAX_ROWS:
        raise ValueError(f"linear is for at most {MAX_ROWS} rows, got {rows}")
    if w.shape != (n_out, k_in) or not w.is_contiguous() or x.stride(1) != 1:
        raise ValueError(
            f"linear needs w [out, in] contiguous and x rows contiguous: "
            f"x {tuple(x.shape)}, w {tuple(w.shape)}"
        )
    if x.dtype != w.dtype:
        raise TypeError(f"x is {x.dtype} but the weights are {w.dtype}")
    width = n_out if kv is None else kv[3]
    out = torch.empty((rows, width), dtype=x.dtype, device=x.device)
    dummy = b
    res = residual if residual is not None else dummy
    if residual is not None and (residual.shape != (rows, n_out) or residual.stride(1) != 1):
        raise ValueError(f"residual must be [{rows}, {n_out}] with contiguous rows")
    if kv is not None:
        kc, vc, pos, _ = kv
        if kc.stride() != vc.stride() or kc.size(3) * kc.size(1) != width or 3 * width != n_out:
            raise ValueError("kv: keys and values caches of one layout, heads x head_dim = width")
        head_dim = kc.size(3)
        kv_strides = (kc.stride(0), kc.stride(1), kc.stride(2))
    else:
        kc = vc = pos = dummy
        head_dim, kv_strides = 1, (0, 0, 0)
    pdl = pdl and pdl_available(x.device)
    if ln is not None:
        x = layer_norm(x, *ln, pdl=pdl)
    res_stride = res.stride(0) if residual is not None else 0
    slices = on_tensor_cores(x.dtype, k_in)
    if slices is not None:
        per_program = rows_per_program or MMA_ROWS_PER_PROGRAM
        _mma_kernel[(triton.cdiv(n_out, per_program),)](
            x, w, b, res, out, kc, vc, pos, n_out, x.stride(0), res_stride, out.stride(0),
            *kv_strides, width, head_dim,
            M=rows, K=k_in, KS=MMA_SLICE, SA=slices[0], SB=slices[1], GELU=gelu,
            RES=residual is not None, KV=kv is not None, BLOCK_M=mma_block_rows(rows),
            BLOCK_N=per_program, WIDEN=not x.is_cuda, PDL=pdl,
            num_warps=num_warps or MMA_WARPS, launch_pdl=pdl,
        )  # fmt: skip
        return out
    per_program = rows_per_program or ROWS_PER_PROGRAM
    warps = num_warps or warps_for(per_program, k_in)
    lane, ja, jb = lanes(k_in, warps)
    _linear_kernel[(triton.cdiv(n_out, per_program),)](
        x, w, b, res, out, kc, vc, pos, n_out, x.stride(0), res_stride, out.stride(0),
        *kv_strides, width, head_dim,
        M=rows, K=k_in, LANE=lane, JA=ja, JB=jb, GELU=gelu,
        RES=residual is not None, KV=kv is not None, BLOCK_M=triton.next_power_of_2(rows),
        BLOCK_N=per_program, PDL=pdl, num_warps=warps,
        launch_pdl=pdl,
    )  # fmt: skip
    return out


def decode_pre(
    x,
    ln_w,
    ln_b,
    eps: float,
    w_qkv,
    b_qkv,
    kc,
    vc,
    pos,
    heads: int,
    reduce: bool,
    pdl: bool = False,
):
    """:func:`tts.fast.fused._pre` as one kernel: queries ``[rows, heads, 1, head_dim]``; the
    step's key and value written at cache position ``pos`` of ``kc`` / ``vc``."""
    rows, _, dim = x.shape
    q = linear(
        x.view(rows, dim), w_qkv, b_qkv, ln=(ln_w, ln_b, eps), kv=(kc, vc, pos, dim), pdl=pdl
    )
    return q.view(rows, 1, heads, dim // heads).transpose(1, 2)


def decode_post(
    x,
    att,
    w_o,
    b_o,
    ln_w,
    ln_b,
    eps: float,
    w_fc,
    b_fc,
    w_proj,
    b_proj,
    reduce: bool,
    pdl: bool = False,
):
    """:func:`tts.fast.fused._post` as three kernels: out projection + residual, ln_2 + fc +
    GELU, proj + residual."""
    rows, _, dim = x.shape
    x = x.reshape(rows, dim)
    att = att.transpose(1, 2).reshape(rows, dim)
    x = linear(att, w_o, b_o, residual=x, pdl=pdl)
    h = linear(x, w_fc, b_fc, ln=(ln_w, ln_b, eps), gelu=True, pdl=pdl)
    return linear(h, w_proj, b_proj, residual=x, pdl=pdl).view(rows, 1, dim)


def decode_head(
    x,
    f_w,
    f_b,
    f_eps: float,
    n_w,
    n_b,
    n_eps: float,
    w_head,
    b_head,
    out,
    reduce: bool,
    pdl: bool = False,
) -> None:
    """:func:`tts.fast.fused._head` as two kernels and a copy: ln_f and final_norm in one
    :func:`layer_norm` (float32 between them, rounded once), the head projection on tensor
    cores (the weights' dtype, as the compiled head's GEMM rounds it), then the logits into
    ``out`` [rows, vocab] float32. For half-precision weights of a width :func:`linear` takes
    on tensor cores (:func:`on_tensor_cores`); with ``pdl`` the head's 21 MB of weights (at
    full size) load while the last layer's proj runs."""
    h = layer_norm(x[:, -1], f_w, f_b, f_eps, then=(n_w, n_b, n_eps), pdl=pdl)
    out.copy_(linear(h, w_head, b_head, pdl=pdl))
