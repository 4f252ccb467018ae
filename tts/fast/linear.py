"""Few-row linear layers as Triton kernels, with the GPT layer's small ops fused in (issue 8).

A GPT decode step multiplies a handful of rows (batch x beams) by each weight matrix: the cost
of a projection is reading its weights once, and the LayerNorm, bias, GELU, residual add and
KV-cache write around it are separate small kernels whose launches cost more than their work
(docs/benchmarks.md: ~390 kernels in a 1.8 ms step, the cuBLAS GEMMs at half the weight-read
bandwidth). One kernel here computes

    y = act(LN(x) @ W.T + b) (+ residual)

for ``x`` [rows, in] and ``W`` [out, in] (tts.fast.decode.DecodeWeights' layout, so each
program reads whole contiguous weight rows), with each part optional:

* ``ln``: LayerNorm of ``x`` first (float32 statistics, the result rounded to ``x``'s dtype,
  as :func:`tts.fast.fused._norm`); every program recomputes the statistics of the few rows;
* ``gelu``: GELU (tanh approximation) of the projection;
* ``residual``: ``residual + projection``;
* ``kv``: the output columns are (queries | keys | values) of a qkv projection: keys and
  values go straight into the layer's cache at the step's position (a device tensor), the
  queries into the output.

Rounding follows the compiled pieces it replaces: the projection (float32 accumulation + bias)
is rounded to the output dtype before GELU or the residual add, which then run in float32 and
round once. Products and sums are float32 (CUDA-core multiply-adds, no TF32), so float32
weights give IEEE float32 results.

Each program owns ``BLOCK_N`` output columns (whole contiguous weight rows) for every row
(at most :data:`MAX_ROWS`), and walks the input width in ``BLOCK_K`` steps that are unrolled
(the width is a compile-time constant; a GPT has two), so all of a program's weight loads can be
in flight at once; products are summed per lane and reduced across lanes once. A projection is
a matrix-vector product per row, so this is a GEMV with the few rows sharing each weight load.
On CUDA the block sizes are tuned per shape by ``triton.autotune`` on the first call (which must
not be inside CUDA-graph capture: the decoder's first step of a bucket runs eagerly). Under
Triton's CPU interpreter (``TRITON_INTERPRET=1``, the tests) a fixed small configuration runs.

Measured on an H200 (docs/benchmarks.md, runs E-G): at one row it reads the weights faster than
cuBLAS on two of the four GPT shapes, at 3 rows (batch 1 x 3 beams) slower on all four, so a
decode step with these kernels (225 kernels instead of 393) was not faster than the compiled
pieces with cuBLAS. It is the opt-in ``graphk`` decoder, exact in float32 (tests).

:func:`decode_pre` and :func:`decode_post` are the two halves of a GPT-2 layer around the
attention, with the signatures of :mod:`tts.fast.fused`'s compiled pieces (matmul="triton").
"""

from __future__ import annotations

import functools
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - Triton comes with CUDA builds of torch
    triton = None

# Rows one kernel takes (batch x beams). Every row costs CUDA-core multiply-adds over all the
# weights; beyond a few rows cuBLAS's tensor-core GEMMs win (tts.fast.fused keeps them there).
MAX_ROWS = 8


def available(x: torch.Tensor) -> bool:
    """Whether the kernels can run for tensors like ``x`` (CUDA, or Triton's interpreter)."""
    return triton is not None and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


if triton is not None:

    @triton.jit
    def _row_stats(x_ptr, stride_x, M, K: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_K: tl.constexpr):
        """Mean and variance (biased, float32, two passes) of the ``M`` rows of ``x``."""
        rows = tl.arange(0, BLOCK_M)
        total = tl.zeros([BLOCK_M], dtype=tl.float32)
        for k0 in tl.static_range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            ok = (rows[:, None] < M) & (ks[None, :] < K)
            xv = tl.load(x_ptr + rows[:, None] * stride_x + ks[None, :], mask=ok, other=0.0)
            total += tl.sum(xv.to(tl.float32), axis=1)
        mean = total / K
        total = tl.zeros([BLOCK_M], dtype=tl.float32)
        for k0 in tl.static_range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            ok = (rows[:, None] < M) & (ks[None, :] < K)
            xv = tl.load(x_ptr + rows[:, None] * stride_x + ks[None, :], mask=ok, other=0.0)
            d = tl.where(ok, xv.to(tl.float32) - mean[:, None], 0.0)
            total += tl.sum(d * d, axis=1)
        return mean, total / K

    @triton.jit
    def _gelu_tanh(y):
        """GELU, tanh approximation (tanh(u) = 1 - 2 / (exp(2u) + 1), exact at both ends)."""
        u = 0.7978845608028654 * (y + 0.044715 * y * y * y)
        return 0.5 * y * (2.0 - 2.0 / (tl.exp(2.0 * u) + 1.0))

    @triton.jit
    def _linear_kernel(
        x_ptr, w_ptr, b_ptr, res_ptr, out_ptr, ln_w_ptr, ln_b_ptr, k_ptr, v_ptr, pos_ptr,
        M, N, K: tl.constexpr, eps, stride_x, stride_res, stride_out,
        kv_row, kv_head, kv_pos, width, head_dim,
        LN: tl.constexpr, GELU: tl.constexpr, RES: tl.constexpr, KV: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        """Program n: output columns ``[n * BLOCK_N, (n + 1) * BLOCK_N)`` of every row."""
        rows = tl.arange(0, BLOCK_M)
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < M
        col_ok = cols < N
        if LN:
            mean, var = _row_stats(x_ptr, stride_x, M, K, BLOCK_M, BLOCK_K)
            rstd = 1.0 / tl.sqrt(var + eps)
        # Products summed per lane over the whole width, reduced across lanes once at the end.
        acc = tl.zeros([BLOCK_M, BLOCK_N, BLOCK_K], dtype=tl.float32)
        for k0 in tl.static_range(0, K, BLOCK_K):  # unrolled: every weight load can be in flight
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < K
            wv = tl.load(w_ptr + cols[:, None] * K + ks[None, :],
                         mask=col_ok[:, None] & k_ok[None, :], other=0.0)
            xv = tl.load(x_ptr + rows[:, None] * stride_x + ks[None, :],
                         mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            if LN:
                g = tl.load(ln_w_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
                s = tl.load(ln_b_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
                xn = (xv.to(tl.float32) - mean[:, None]) * rstd[:, None] * g[None, :] + s[None, :]
                xv = xn.to(x_ptr.dtype.element_ty)  # the LayerNorm's output rounding
            acc += xv.to(tl.float32)[:, None, :] * wv.to(tl.float32)[None, :, :]
        bias = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        # The projection's own rounding, then the epilogue in float32.
        y = (tl.sum(acc, axis=2) + bias[None, :]).to(out_ptr.dtype.element_ty).to(tl.float32)
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
            to = rows[:, None] * kv_row + (
                (c // head_dim) * kv_head + pos * kv_pos + c % head_dim)[None, :]
            tl.store(k_ptr + to, y, mask=ok & (part == 1)[None, :])
            tl.store(v_ptr + to, y, mask=ok & (part == 2)[None, :])
            ok = ok & (part == 0)[None, :]
        tl.store(out_ptr + rows[:, None] * stride_out + cols[None, :], y, mask=ok)

    # The configurations autotuning chose at 1, 3 and 8 rows for the GPT's four projections on
    # an H200 (docs/benchmarks.md, run F); fewer configurations = a shorter first run.
    _CONFIGS = [
        triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w)
        for n, k, w in ((2, 256, 2), (4, 256, 4), (4, 512, 4), (8, 256, 4), (4, 1024, 8))
    ]
    # A kernel takes microseconds: short timing runs are plenty (the defaults take 125 ms each).
    _tuned_kernel = triton.autotune(
        configs=_CONFIGS,
        key=["M", "N", "K", "LN", "GELU", "RES", "KV"],
        do_bench=functools.partial(triton.testing.do_bench, warmup=5, rep=20),
    )(_linear_kernel)

INTERPRETER_BLOCKS = {"BLOCK_N": 4, "BLOCK_K": 32}


def linear(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    *,
    ln: tuple[torch.Tensor, torch.Tensor, float] | None = None,
    gelu: bool = False,
    residual: torch.Tensor | None = None,
    kv: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int] | None = None,
) -> torch.Tensor:
    """``act(LN(x) @ w.T + b) (+ residual)`` for ``x`` [rows, in], ``w`` [out, in].

    ``ln``: (weight, bias, eps) of a LayerNorm applied to ``x`` first; ``residual``: [rows, out];
    ``kv``: (keys, values, pos, width) for a qkv projection: ``keys`` / ``values`` are the layer's
    cache ``[rows, heads, capacity, head_dim]`` (same strides), ``pos`` a 1-element int64
    device tensor; then only the queries (the first ``width`` columns) are returned.
    Returns a new tensor in ``x``'s dtype.
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
    ln_w, ln_b, eps = ln if ln is not None else (dummy, dummy, 0.0)
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
    args = (x, w, b, res, out, ln_w, ln_b, kc, vc, pos, rows, n_out, k_in, float(eps),
            x.stride(0), res.stride(0) if residual is not None else 0, out.stride(0),
            *kv_strides, width, head_dim)  # fmt: skip
    flags = {"LN": ln is not None, "GELU": gelu, "RES": residual is not None,
             "KV": kv is not None, "BLOCK_M": triton.next_power_of_2(rows)}  # fmt: skip
    if x.is_cuda:
        _tuned_kernel[lambda meta: (triton.cdiv(n_out, meta["BLOCK_N"]),)](*args, **flags)
    else:
        blocks = INTERPRETER_BLOCKS
        _linear_kernel[(triton.cdiv(n_out, blocks["BLOCK_N"]),)](*args, **flags, **blocks)
    return out


def tuned_configs() -> dict[str, str]:
    """The block sizes autotuning chose so far, per tuning key (for benchmark reports)."""
    if triton is None:
        return {}
    return {str(key): str(cfg) for key, cfg in _tuned_kernel.cache.items()}


def decode_pre(x, ln_w, ln_b, eps: float, w_qkv, b_qkv, kc, vc, pos, heads: int, reduce: bool):
    """:func:`tts.fast.fused._pre` as one kernel: queries ``[rows, heads, 1, head_dim]``; the
    step's key and value written at cache position ``pos`` of ``kc`` / ``vc``."""
    rows, _, dim = x.shape
    q = linear(x.view(rows, dim), w_qkv, b_qkv, ln=(ln_w, ln_b, eps), kv=(kc, vc, pos, dim))
    return q.view(rows, 1, heads, dim // heads).transpose(1, 2)


def decode_post(x, att, w_o, b_o, ln_w, ln_b, eps: float, w_fc, b_fc, w_proj, b_proj, reduce: bool):
    """:func:`tts.fast.fused._post` as three kernels: out projection + residual, ln_2 + fc +
    GELU, proj + residual."""
    rows, _, dim = x.shape
    x = x.reshape(rows, dim)
    att = att.transpose(1, 2).reshape(rows, dim)
    x = linear(att, w_o, b_o, residual=x)
    h = linear(x, w_fc, b_fc, ln=(ln_w, ln_b, eps), gelu=True)
    return linear(h, w_proj, b_proj, residual=x).view(rows, 1, dim)
