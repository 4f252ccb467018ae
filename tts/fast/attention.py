"""Attention of one decode step over the KV cache as two Triton kernels (split-K flash decoding).

A decode step has one query per (row, head) and a cache window of hundreds of keys. One
program per (row, head) would leave most of the GPU idle while each reads its whole window,
so the window is cut into chunks of :data:`CHUNK` positions:

1. ``_partial_kernel``, program (row x head, chunk): scores of the query against the chunk's
   keys (float32, scaled by ``head_dim ** -0.5``, plus the additive mask), and the chunk's
   softmax pieces: its maximum ``m``, the sum ``l`` of ``exp(score - m)`` and the
   ``exp(score - m)``-weighted sum of its values, into a float32 workspace;
2. ``_combine_kernel``, program (row x head): rescales the chunks to their common maximum and
   divides, which is the softmax-weighted sum of all values (in the query's dtype).

It computes what ``F.scaled_dot_product_attention(q, k, v, attn_mask=mask)`` computes for a
single query (masked keys get weight 0; a chunk with every key masked contributes nothing),
with float32 scores, probabilities and sums throughout (flash kernels round the probabilities
to the inputs' dtype before multiplying the values; this does not). Checked against SDPA
through Triton's CPU interpreter (tests/test_fast.py) and on CUDA (tests/test_gpu.py).

With ``src`` (beam search without moving the cache, decoder ``reorder="table"``), row ``r``'s
key and value at position ``t`` are read from cache row ``src[r, t]``: the beams that share a
history point at the rows that wrote it instead of each holding a copy. A cache position is
written once (by the row that fed it) and never changed, so this reads exactly the values a
reordered cache would hold.

All loop bounds are compile-time constants (the chunk size, and the next power of two of the
number of chunks for the combine), so Triton's interpreter runs the kernels too.
"""

from __future__ import annotations

import torch

from tts.fast import pdl_available
from tts.fast import triton_runs as available  # noqa: F401 - part of this module's API

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - Triton comes with CUDA builds of torch
    triton = None

# Launch settings, from scripts/device/attention_sweep.py on an H200 (docs/benchmarks.md, runs
# P-R): short chunks loaded at once by one warp per program (many small programs in flight)
# beat 64-256 positions with 2-8 warps, at 3 rows and at 48.
CHUNK = 32  # cache positions per program of the first kernel
BLOCK_T = 32  # positions loaded at once
NUM_WARPS = 1
NO_SCORE = -1.0e30  # the running maximum before any key (finite: exp(NO_SCORE - m) is 0, no NaN)


if triton is not None:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

    @triton.jit
    def _window_rows(src_ptr, row, ss_row, t, inside, HAS_SRC: tl.constexpr):
        """The cache row that holds each position ``t`` of ``row``'s history."""
        if HAS_SRC:
            return tl.load(src_ptr + row * ss_row + t, mask=inside, other=0).to(tl.int64)
        return tl.full(t.shape, 0, dtype=tl.int64) + row

    @triton.jit
    def _window_tile(ptr, kv_row, head, t, d, s_row, s_head, s_pos, ok):
        """Keys (or values) ``[positions, head_dim]`` of one head at positions ``t``."""
        return tl.load(
            ptr + kv_row[:, None] * s_row + head * s_head + t[:, None] * s_pos + d[None, :],
            mask=ok[:, None],
            other=0.0,
        )

    @triton.jit
    def _partial_kernel(
        q_ptr, k_ptr, v_ptr, mask_ptr, src_ptr, written_ptr, work_ptr,
        heads, end, scale,
        sq_row, sq_head, sk_row, sk_head, sk_pos, sv_row, sv_head, sv_pos, sm_row, ss_row,
        splits,
        HEAD_DIM: tl.constexpr, CHUNK: tl.constexpr, BLOCK_T: tl.constexpr,
        NO_SCORE: tl.constexpr, HAS_SRC: tl.constexpr, READ_AHEAD: tl.constexpr,
        PDL: tl.constexpr, GROUP: tl.constexpr,
    ):  # fmt: skip
        """Program (group of ``GROUP`` rows x head, chunk): each row's (m, l, weighted value
        sum) of the chunk, one row after the other.

        ``READ_AHEAD`` (``CHUNK == BLOCK_T``, ``GROUP == 1``): the chunk's keys (and table
        entries) are read before the PDL wait; after it the values, and the program whose
        chunk holds position ``*written_ptr`` (the one the kernel just before wrote) reads its
        key tile again (see :func:`attend`). Replacing the tile whole keeps one copy of it
        live: values read ahead too, or a masked reload merged into the tiles, took 255
        registers and spilled (ptxas for sm_90a).
        """
        gh = tl.program_id(0)
        chunk = tl.program_id(1)
        row = (gh // heads) * GROUP
        head = gh % heads
        d = tl.arange(0, HEAD_DIM)
        if READ_AHEAD:
            t = chunk * CHUNK + tl.arange(0, BLOCK_T)
            inside = t < end
            kv_row = _window_rows(src_ptr, row, ss_row, t, inside, HAS_SRC)
            k = _window_tile(k_ptr, kv_row, head, t, d, sk_row, sk_head, sk_pos, inside)
            v = k  # (the values are read after the wait: both tiles ahead spill registers)
        else:  # read by each row after the wait (these are never used)
            kv_row = tl.zeros([BLOCK_T], dtype=tl.int64)
            k = tl.zeros([BLOCK_T, HEAD_DIM], dtype=k_ptr.dtype.element_ty)
            v = tl.zeros([BLOCK_T, HEAD_DIM], dtype=v_ptr.dtype.element_ty)
        if PDL:  # launched early (see attend): let the next kernel start, wait for the last
            gdc_launch_dependents()
            gdc_wait()
        for _ in tl.static_range(GROUP):
            _row_partial(
                q_ptr, k_ptr, v_ptr, mask_ptr, src_ptr, written_ptr, work_ptr, k, v, kv_row,
                row, head, chunk, heads, end, scale,
                sq_row, sq_head, sk_row, sk_head, sk_pos, sv_row, sv_head, sv_pos, sm_row, ss_row,
                splits, HEAD_DIM, CHUNK, BLOCK_T, NO_SCORE, HAS_SRC, READ_AHEAD,
            )  # fmt: skip
            row += 1

    @triton.jit
    def _row_partial(
        q_ptr, k_ptr, v_ptr, mask_ptr, src_ptr, written_ptr, work_ptr, k, v, kv_row,
        row, head, chunk, heads, end, scale,
        sq_row, sq_head, sk_row, sk_head, sk_pos, sv_row, sv_head, sv_pos, sm_row, ss_row,
        splits,
        HEAD_DIM: tl.constexpr, CHUNK: tl.constexpr, BLOCK_T: tl.constexpr,
        NO_SCORE: tl.constexpr, HAS_SRC: tl.constexpr, READ_AHEAD: tl.constexpr,
    ):  # fmt: skip
        """One row's piece of :func:`_partial_kernel` (``k``, ``v``, ``kv_row``: the tiles
        read ahead, with ``READ_AHEAD``)."""
        d = tl.arange(0, HEAD_DIM)
        q = tl.load(q_ptr + row * sq_row + head * sq_head + d).to(tl.float32) * scale
        m = tl.full([1], NO_SCORE, dtype=tl.float32)
        l_sum = tl.zeros([1], dtype=tl.float32)
        acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
        for i in tl.static_range(0, CHUNK, BLOCK_T):
            t = chunk * CHUNK + i + tl.arange(0, BLOCK_T)
            inside = t < end
            if READ_AHEAD:  # the chunk holding the position written since: read again
                written = tl.load(written_ptr)
                if (written >= chunk * CHUNK) & (written < chunk * CHUNK + BLOCK_T):
                    k = _window_tile(k_ptr, kv_row, head, t, d, sk_row, sk_head, sk_pos, inside)
            else:
                kv_row = _window_rows(src_ptr, row, ss_row, t, inside, HAS_SRC)
                k = _window_tile(k_ptr, kv_row, head, t, d, sk_row, sk_head, sk_pos, inside)
            s = tl.sum(k.to(tl.float32) * q[None, :], axis=1)
            s += tl.load(mask_ptr + row * sm_row + t, mask=inside, other=0.0).to(tl.float32)
            s = tl.where(inside, s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, axis=0))
            p = tl.exp(s - m_new)  # masked keys: exp(-inf) = 0
            alpha = tl.exp(m - m_new)
            v = _window_tile(v_ptr, kv_row, head, t, d, sv_row, sv_head, sv_pos, inside)
            acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
            l_sum = l_sum * alpha + tl.sum(p, axis=0)
            m = m_new
        base = work_ptr + ((row * heads + head) * splits + chunk) * (HEAD_DIM + 2)
        tl.store(base + tl.arange(0, 1), m)
        tl.store(base + 1 + tl.arange(0, 1), l_sum)
        tl.store(base + 2 + d, acc)

    @triton.jit
    def _combine_kernel(
        work_ptr, out_ptr, heads, splits, so_row, so_head,
        HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr, PDL: tl.constexpr,
    ):  # fmt: skip
        """Program (row x head): the chunks' pieces rescaled to one maximum and normalised."""
        if PDL:
            gdc_launch_dependents()
            gdc_wait()
        rh = tl.program_id(0)
        row = rh // heads
        head = rh % heads
        c = tl.arange(0, SPLITS)
        used = c < splits
        d = tl.arange(0, HEAD_DIM)
        base = work_ptr + (rh * splits + c) * (HEAD_DIM + 2)
        m = tl.load(base, mask=used, other=float("-inf"))
        l_sum = tl.load(base + 1, mask=used, other=0.0)
        acc = tl.load(base[:, None] + 2 + d[None, :], mask=used[:, None], other=0.0)
        w = tl.exp(m - tl.max(m, axis=0))
        out = tl.sum(acc * w[:, None], axis=0) / tl.sum(l_sum * w, axis=0)
        tl.store(out_ptr + row * so_row + head * so_head + d, out.to(out_ptr.dtype.element_ty))


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    src: torch.Tensor | None = None,
    *,
    chunk: int = CHUNK,
    block_t: int = BLOCK_T,
    num_warps: int = NUM_WARPS,
    pdl: bool = False,
    written: torch.Tensor | None = None,
    group: int = 1,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask=mask)`` for one query per row.

    ``q`` [rows, heads, 1, head_dim]; ``k`` / ``v`` [rows, heads, end, head_dim] (cache window
    views: any strides with a contiguous last dimension); ``mask`` additive, broadcastable as
    [rows, 1, 1, end] with a contiguous last dimension. ``src`` (optional) [rows, end] integer
    with a contiguous last dimension: row ``r`` attends to ``k[src[r, t], :, t]`` (and the
    same of ``v``) at position ``t`` (:func:`gather_rows` computes that view). Returns
    [rows, heads, 1, head_dim] in ``q``'s dtype (a view of a [rows, heads * head_dim] tensor).

    Launch settings (scripts/device/attention_sweep.py times them; each one sums in its own
    order, so the last bits may differ between them): ``chunk`` positions per program,
    loaded ``block_t`` at a time (``chunk`` a multiple of ``block_t``, both powers of two), and
    ``num_warps`` per program. ``pdl``: launch both kernels as programmatic dependent launches
    (CUDA, Hopper or newer; ignored elsewhere): each starts while the kernel before it runs
    and waits for it before reading anything, so the kernels after them (e.g. the projections
    of :mod:`tts.fast.linear`) can start loading their weights early.

    ``written`` (optional, with ``chunk == block_t``): a 1-element int64 device tensor, the one
    window position that the kernel launched just before may still be writing (a decode step's
    own key and value, from the qkv projection's KV write). The first kernel then reads the
    window's keys and ``src`` entries before its PDL wait; after it, the values, and the key
    tile holding that position again. This is safe only for what was written before the last kernel
    launched without PDL (earlier decode steps: a kernel that starts early can run while
    several PDL kernels before it still run). The query, the mask and ``written`` itself are
    read after the wait. Decoder variant ``graphkr`` passes it (docs/benchmarks.md: why, runs
    BQ-BS; on an H200 no faster than without it, run BU).

    ``group``: rows per program of the first kernel (dividing ``rows``; 1 with ``written``),
    taken one after the other with the same arithmetic, so the output is the same to the
    bit. Beams that read the same cache rows (``src``) then load them in one program, and
    there are ``group`` times fewer programs. Not measured on a GPU yet
    (scripts/device/linear_bench.py times it).
    """
    if block_t & (block_t - 1) or chunk % block_t:
        raise ValueError(f"block_t {block_t} must be a power of two dividing chunk {chunk}")
    rows, heads, one, head_dim = q.shape
    end = k.size(2)
    if one != 1 or k.shape != (rows, heads, end, head_dim) or v.shape != k.shape:
        raise ValueError(f"one query per row needed: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if q.stride(3) != 1 or k.stride(3) != 1 or v.stride(3) != 1 or mask.stride(-1) != 1:
        raise ValueError("attend needs contiguous last dimensions")
    if mask.size(-1) != end or mask.numel() != rows * end:
        raise ValueError(f"mask {tuple(mask.shape)} is not one row of {end} per query row")
    if src is not None and (
        src.shape != (rows, end)
        or src.stride(1) != 1
        or src.dtype not in (torch.int32, torch.int64)
    ):
        raise ValueError(
            f"src {tuple(src.shape)} {src.dtype}: need [{rows}, {end}] integers "
            "with a contiguous last dimension"
        )
    if written is not None and (chunk != block_t or written.numel() != 1):
        raise ValueError(f"written needs chunk == block_t (got {chunk}, {block_t}) and 1 element")
    if group < 1 or rows % group or (group > 1 and written is not None):
        raise ValueError(f"group {group} must divide the {rows} rows (and be 1 with written)")
    pdl = pdl and pdl_available(q.device)
    splits = triton.cdiv(end, chunk)
    work = torch.empty((rows * heads, splits, head_dim + 2), dtype=torch.float32, device=q.device)
    out = torch.empty((rows, 1, heads, head_dim), dtype=q.dtype, device=q.device)
    _partial_kernel[(rows // group * heads, splits)](
        q, k, v, mask, q if src is None else src, q if written is None else written, work,
        heads, end, head_dim**-0.5,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), mask.stride(0),
        0 if src is None else src.stride(0), splits,
        HEAD_DIM=head_dim, CHUNK=chunk, BLOCK_T=block_t, NO_SCORE=NO_SCORE,
        HAS_SRC=src is not None, READ_AHEAD=written is not None, PDL=pdl, GROUP=group,
        num_warps=num_warps, launch_pdl=pdl,
    )  # fmt: skip
    _combine_kernel[(rows * heads,)](
        work, out, heads, splits, out.stride(0), out.stride(2),
        HEAD_DIM=head_dim, SPLITS=triton.next_power_of_2(splits), PDL=pdl, launch_pdl=pdl,
    )  # fmt: skip
    return out.transpose(1, 2)


def gather_rows(x: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """``x`` [rows, heads, end, head_dim] read through ``src`` [rows, end]: element
    ``[r, h, t]`` is ``x[src[r, t], h, t]`` (what :func:`attend` reads with ``src``; a copy)."""
    rows, heads, end, head_dim = x.shape
    index = src.long()[:, None, :, None].expand(rows, heads, end, head_dim)
    return x.gather(0, index)
