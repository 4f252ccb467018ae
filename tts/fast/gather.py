"""Beam reordering of a KV cache window as one bandwidth-bound Triton copy.

The decoder's cache is one tensor ``[layers, 2, rows, heads, capacity, head_dim]`` (keys and
values together, :func:`tts.fast.decode._joint_cache`). After each beam step, every row's
generated window ``[lo, end)`` must come from its parent row: for each (layer, k/v, row, head)
that window is one contiguous run of ``(end - lo) * head_dim`` elements, so the reorder is a
list of contiguous copies whose source row is looked up on the device.

``torch.index_select`` along the row dimension of the strided window view runs its small-index
kernel, which moved only ~0.2 TB/s on an H200 (scripts/device/decode_profile.py: 257 us of a
1.8 ms beam-3 step at batch 1, 1.46 ms of a 4.0 ms step at batch 16). The kernel here gives each
program one block of one run, so loads and stores are contiguous and vectorised.

It computes exactly what ``index_select`` does (values are copied, not computed), which the
tests check through Triton's CPU interpreter (tests/test_fast.py) and on CUDA
(tests/test_gpu.py).
"""

from __future__ import annotations

import torch

from tts.fast import triton_runs as available  # noqa: F401 - part of this module's API

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - Triton comes with CUDA builds of torch
    triton = None

BLOCK = 2048  # elements per program (4 KiB in bfloat16)

if triton is not None:

    @triton.jit
    def _gather_window_kernel(
        src,
        dst,
        rows_from,
        n_rows,
        heads,
        run,
        start,
        stride_lk,
        stride_row,
        stride_head,
        BLOCK: tl.constexpr,
    ):
        """Program (i, j): block j of the run of (layer-k/v, row, head) number i."""
        i = tl.program_id(0).to(tl.int64)
        j = tl.program_id(1).to(tl.int64)
        head = i % heads
        row = (i // heads) % n_rows
        lk = i // (heads * n_rows)
        parent = tl.load(rows_from + row).to(tl.int64)
        offs = j * BLOCK + tl.arange(0, BLOCK)
        inside = offs < run
        base = lk * stride_lk + head * stride_head + start
        values = tl.load(src + base + parent * stride_row + offs, mask=inside)
        tl.store(dst + base + row * stride_row + offs, values, mask=inside)


def gather_window(
    src: torch.Tensor, dst: torch.Tensor, rows_from: torch.Tensor, lo: int, end: int
) -> None:
    """``dst[:, :, r, :, lo:end] = src[:, :, rows_from[r], :, lo:end]`` for every row ``r``.

    ``src`` and ``dst``: distinct contiguous caches ``[layers, 2, rows, heads, capacity,
    head_dim]`` of one shape and dtype; ``rows_from``: int64 ``[rows]`` on the same device.
    """
    if src.shape != dst.shape or src.dtype != dst.dtype:
        raise ValueError(
            f"caches differ: {tuple(src.shape)} {src.dtype} vs {tuple(dst.shape)} {dst.dtype}"
        )
    if not (src.is_contiguous() and dst.is_contiguous()):
        raise ValueError("gather_window needs contiguous caches")
    if src.data_ptr() == dst.data_ptr():
        raise ValueError("gather_window cannot reorder a cache in place")
    layers, two, rows, heads, _, head_dim = src.shape
    run = (end - lo) * head_dim
    if run <= 0:
        return
    stride_lk = src.stride(1)  # (layer, k/v) pairs are consecutive: stride(0) == 2 * stride(1)
    grid = (layers * two * rows * heads, triton.cdiv(run, BLOCK))
    _gather_window_kernel[grid](
        src,
        dst,
        rows_from,
        rows,
        heads,
        run,
        lo * head_dim,
        stride_lk,
        src.stride(2),
        src.stride(3),
        BLOCK=BLOCK,
    )
