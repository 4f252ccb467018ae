"""Top-k's threshold, the k-th largest value of each row, as two small Triton kernels (issue 8).

The top-k warper keeps the scores that are at least the row's k-th largest, which
:func:`tts.generation.process_scores` takes from ``torch.topk(scores, k)``. On the GPU that
is one thread block per row: 45.5 us per decode step at 3 rows x 8194 codes, against 9.3
us for these kernels (H200, scripts/device/choice_bench.py, docs/benchmarks.md run AC). Only
the k-th largest *value* is needed, and it is also the k-th largest of the union of every
chunk's k largest values, so:

1. ``_chunk_kernel``, program (row, chunk): sorts the chunk's :data:`BLOCK` scores (past the
   row's end: -inf) and writes its ``KP`` largest (``KP`` >= k, a power of two);
2. ``_select_kernel``, program row: sorts the chunks' candidates and takes the k-th largest.

Values are compared, never computed, so the result is exactly torch.topk's k-th value, ties
included (tests/test_fast.py through Triton's interpreter, tests/test_gpu.py on CUDA).
"""

from __future__ import annotations

import torch

from tts.fast import triton_runs as available  # noqa: F401 - part of this module's API

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - Triton comes with CUDA builds of torch
    triton = None

BLOCK = 1024  # scores one program of the first kernel sorts


if triton is not None:

    @triton.jit
    def _chunk_kernel(x_ptr, cand_ptr, n, stride_x, chunks, BLOCK: tl.constexpr, KP: tl.constexpr):
        """Program (row, chunk): the chunk's ``KP`` largest values, in descending order."""
        row = tl.program_id(0)
        chunk = tl.program_id(1)
        i = chunk * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * stride_x + i, mask=i < n, other=float("-inf"))
        top = tl.sort(x, descending=True)
        j = tl.arange(0, BLOCK)
        tl.store(cand_ptr + (row * chunks + chunk) * KP + j, top, mask=j < KP)

    @triton.jit
    def _select_kernel(cand_ptr, out_ptr, k, count, CANDIDATES: tl.constexpr):
        """Program row: the ``k``-th largest of the row's ``count`` candidates."""
        row = tl.program_id(0)
        j = tl.arange(0, CANDIDATES)
        c = tl.load(cand_ptr + row * count + j, mask=j < count, other=float("-inf"))
        top = tl.sort(c, descending=True)
        # Picks one element: the other terms are 0, so the sum is that element (-inf included).
        tl.store(out_ptr + row, tl.sum(tl.where(j == k - 1, top, 0.0), axis=0))


def kth_largest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``torch.topk(scores, k).values[..., -1:]`` for float32 ``scores`` [rows, n] with
    contiguous rows and ``1 <= k <= min(n, BLOCK)`` (a chunk keeps at most :data:`BLOCK`
    candidates): [rows, 1]."""
    rows, n = scores.shape
    if scores.dtype != torch.float32 or scores.stride(1) != 1:
        raise ValueError(f"kth_largest needs float32 rows, contiguous: {scores.dtype}")
    if not 1 <= k <= min(n, BLOCK):
        raise ValueError(f"k = {k} outside 1..{min(n, BLOCK)}")
    block = min(BLOCK, triton.next_power_of_2(n))
    chunks = triton.cdiv(n, block)
    kp = triton.next_power_of_2(k)
    cand = torch.empty((rows, chunks, kp), dtype=torch.float32, device=scores.device)
    _chunk_kernel[(rows, chunks)](
        scores, cand, n, scores.stride(0), chunks, BLOCK=block, KP=kp, num_warps=4
    )
    out = torch.empty((rows, 1), dtype=torch.float32, device=scores.device)
    count = chunks * kp
    _select_kernel[(rows,)](
        cand, out, k, count, CANDIDATES=triton.next_power_of_2(count), num_warps=4
    )
    return out
