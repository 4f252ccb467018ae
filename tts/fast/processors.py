"""The logits processors of a decode step as one Triton kernel (issue 8).

:func:`tts.generation.process_scores` turns a step's logits into the scores the token choice
draws from: log_softmax (beam search), the repetition penalty, then, when sampling, the
temperature, top-k and top-p. On the GPU that is ~15 kernels per step even compiled (a top-k,
top-p's sort, its softmax and cumulative sum, a scatter, and the fused pieces between them),
and a decode step is bound by how many kernels it runs one after the other, not by their work
(docs/benchmarks.md, runs AA-AF). :func:`process` does all of it in one kernel, one program
per row:

* top-k keeps the scores at least the row's k-th largest. That threshold is bounded from
  below by the k-th largest of the maxima of 512 groups of the row (found by a radix select
  over the scores' order-preserving integer keys: eight 16-bin histograms, each of the next
  4-bit digit of the keys that match the digits found so far). Usually only ~k scores reach
  that bound: these candidates are written out, and one is kept when fewer than k
  candidates are larger (all larger scores are candidates too). Only values are compared,
  so the kept scores are torch.topk's, ties included. A row with more than 512 candidates
  (many ties at the top) gets the radix select over the whole row;
* the scores top-k leaves (the "survivors") are written, in index order, to a scratch row with
  their count: top-p reads them, and so does the beam draw's kernel
  (:func:`tts.fast.sampling.beam_candidates`);
* top-p keeps what ``torch.sort`` + softmax + cumsum keep: each survivor's cumulative
  probability is the sum of the probabilities of the survivors at or before it in ascending
  order, equal scores ordered by index (the order CUDA's ``torch.sort`` gives them); it is
  dropped when that sum is at most ``1 - top_p``, unless it is among the
  ``min_tokens_to_keep`` largest.

What is computed is the same function, rounded differently: the log_softmax and top-p's
probabilities are the same formulas summed in another order, and the divisions are true
divisions (PyTorch's CUDA division by a number multiplies by its reciprocal). So a score may
differ from the plain path's in its last bits (as the compiled processors' do), and a top-p
decision can differ only for a score whose cumulative probability lies that close to
``1 - top_p`` (tests/test_fast.py through Triton's interpreter, tests/test_gpu.py on CUDA).
On an H200 it takes 25 us for 3 rows of 8194 (its first version, which searched the whole
row, 44 us; the compiled processors 104 us; docs/benchmarks.md, runs AW and BC)."""

from __future__ import annotations

import torch

from tts.fast import triton_runs as available  # noqa: F401 - part of this module's API
from tts.generation import GenerationConfig

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - Triton comes with CUDA builds of torch
    triton = None

# Scores of top-p's scratch row compared at once (a [PAIRS, PAIRS] tile): top-k leaves ~k.
PAIRS = 32
# The largest top-k before a top-p this kernel takes; larger ones (or none) are left to torch.
MAX_TOP_K = 256
# Groups of a row whose maxima bound top-k's threshold from below (fewer for rows under
# GROUPS scores): the k-th largest group maximum is the bound, so well over MAX_TOP_K groups.
GROUPS = 512
# Top-k is decided among at most this many candidates (else over the whole row).
CANDIDATES = 512
# Warps per program (a row of 8194 scores is padded to 16384 lanes: 32 per thread at 16).
NUM_WARPS = 16


if triton is not None:

    @triton.jit
    def _pick_digit(counts, remaining):
        """The digit of the ``remaining``-th largest key, from the 16-bin histogram ``counts``
        of the digits of the keys still in the search; and its rank among the keys of that
        digit. No digit (0, ``remaining`` unchanged) when fewer keys are left."""
        above = tl.sum(counts, axis=0) - tl.cumsum(counts, axis=0)  # keys with larger digits
        hit = (above < remaining) & (above + counts >= remaining)
        d = tl.sum(tl.where(hit, tl.arange(0, 16), 0), axis=0)
        return d, remaining - tl.sum(tl.where(hit, above, 0), axis=0)

    @triton.jit
    def _kth_key(key, ok, k):
        """The ``k``-th largest of the int32 ``key``s where ``ok``, four bits at a time: a
        16-bin histogram of the next digit of the keys that match the digits found so far
        tells which digit the ``k``-th largest has (8 histograms instead of 32 counts)."""
        prefix = tl.zeros([], dtype=tl.int32)
        remaining = k
        for p in tl.static_range(8):
            shift = 28 - 4 * p
            digit = (key >> shift) & 15
            if p == 0:
                digit = digit ^ 8  # the sign digit: negative keys below positive ones
                match = ok
            else:
                match = ok & ((key & -(1 << (shift + 4))) == prefix)
            d, remaining = _pick_digit(tl.histogram(digit, 16, mask=match), remaining)
            if p == 0:
                d = d ^ 8
            prefix = prefix | (d << shift)
        return prefix

    @triton.jit
    def _keys(x):
        """Order-preserving int32 keys of float32 ``x``; both zeros get +0's key, as they
        compare equal."""
        bits = tl.where(x == 0.0, 0.0, x).to(tl.int32, bitcast=True)
        return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)

    @triton.jit
    def _top_p(surv_v, surv_i, base, count, out, cut, keep, PAIRS: tl.constexpr):
        """Top-p over the ``count`` survivors at ``base`` of the scratch rows (written before a
        barrier): -inf into ``out`` (the row's scores) for each survivor whose cumulative
        probability in ascending order (equal scores by index) is at most ``cut``, unless
        fewer than ``keep`` survivors come after it."""
        neg_inf = float("-inf")
        c = tl.arange(0, PAIRS)
        m = tl.full([], neg_inf, tl.float32)
        a = 0
        while a < count:
            m = tl.maximum(
                m,
                tl.max(tl.load(surv_v + base + a + c, mask=a + c < count, other=neg_inf), axis=0),
            )
            a += PAIRS
        z = tl.zeros([], dtype=tl.float32)
        a = 0
        while a < count:
            va = tl.load(surv_v + base + a + c, mask=a + c < count, other=neg_inf)
            z += tl.sum(tl.exp(va - m), axis=0)
            a += PAIRS
        a = 0
        while a < count:  # blocks of PAIRS survivors, each against every block
            a_ok = a + c < count
            va = tl.load(surv_v + base + a + c, mask=a_ok, other=0.0)
            ia = tl.load(surv_i + base + a + c, mask=a_ok, other=0)
            cum = tl.zeros([PAIRS], dtype=tl.float32)
            above = tl.zeros([PAIRS], dtype=tl.int32)
            b = 0
            while b < count:
                b_ok = b + c < count
                vb = tl.load(surv_v + base + b + c, mask=b_ok, other=0.0)
                ib = tl.load(surv_i + base + b + c, mask=b_ok, other=0)
                pb = tl.exp(vb - m) / z
                # b comes at or before a in ascending order (equal scores by index)
                before = (vb[None, :] < va[:, None]) | (
                    (vb[None, :] == va[:, None]) & (ib[None, :] <= ia[:, None])
                )
                cum += tl.sum(tl.where(before & b_ok[None, :], pb[None, :], 0.0), axis=1)
                above += tl.sum((~before & b_ok[None, :]).to(tl.int32), axis=1)
                b += PAIRS
            drop = a_ok & (cum <= cut) & (above >= keep)
            tl.store(out + ia, tl.full([PAIRS], neg_inf, tl.float32), mask=drop)
            a += PAIRS

    @triton.jit
    def _process_kernel(
        x_ptr, seen_ptr, out_ptr, surv_v, surv_i, surv_n, invalid_ptr,
        n, stride_x, stride_seen, stride_out,
        penalty, temperature, k, cut, keep,
        LOG_SOFTMAX: tl.constexpr, PENALTY: tl.constexpr, TEMPERATURE: tl.constexpr,
        TOP_K: tl.constexpr, TOP_P: tl.constexpr, BLOCK: tl.constexpr, GROUPS: tl.constexpr,
        CAND: tl.constexpr, PAIRS: tl.constexpr,
    ):  # fmt: skip
        """Program ``row``: the processed scores of one row (see the module docstring)."""
        row = tl.program_id(0)
        i = tl.arange(0, BLOCK)
        ok = i < n
        neg_inf = float("-inf")
        x = tl.load(x_ptr + row * stride_x + i, mask=ok, other=neg_inf)
        if LOG_SOFTMAX:
            m = tl.max(x, axis=0)
            z = tl.sum(tl.exp(x - m), axis=0)
            x = (x - m) - tl.log(z)
            # NaN or +inf logits make the sum NaN: what torch.multinomial would refuse
            tl.store(invalid_ptr, 1, mask=z != z)
        if PENALTY:
            seen = tl.load(seen_ptr + row * stride_seen + i, mask=ok, other=0) != 0
            x = tl.where(seen, tl.where(x < 0, x * penalty, x / penalty), x)
        if TEMPERATURE:
            x = x / temperature
        out = out_ptr + row * stride_out
        tl.store(out + i, x, mask=ok)
        if TOP_K:
            key = _keys(x)
            # Candidates: split the row into GROUPS groups (score i in group i % GROUPS). The
            # k-th largest group maximum t0 is at most the row's k-th largest score (k groups
            # hold a score at least t0), so every score top-k keeps is at least t0. Usually
            # only ~k scores are: the threshold is searched among those, not in the row.
            lowest = -2147483648
            maxima = tl.max(tl.reshape(tl.where(ok, key, lowest), [BLOCK // GROUPS, GROUPS]), 0)
            t0 = _kth_key(maxima, maxima >= lowest, k)
            base = row * n
            cand = ok & (key >= t0)
            count = tl.sum(cand.to(tl.int32), axis=0)
            at = tl.cumsum(cand.to(tl.int32), axis=0) - 1
            tl.store(surv_v + base + at, x, mask=cand)
            tl.store(surv_i + base + at, i, mask=cand)
            tl.debug_barrier()  # the candidates are written
            if count <= CAND:
                j = tl.arange(0, CAND)
                j_ok = j < count
                cv = tl.load(surv_v + base + j, mask=j_ok, other=neg_inf)
                ci = tl.load(surv_i + base + j, mask=j_ok, other=0)
                ckey = _keys(cv)
                # A score is kept when fewer than k scores are larger (all those are among
                # the candidates too): count them, PAIRS candidates at a time.
                larger = tl.zeros([CAND], dtype=tl.int32)
                c = tl.arange(0, PAIRS)
                b = 0
                while b < count:
                    b_ok = b + c < count
                    bkey = _keys(tl.load(surv_v + base + b + c, mask=b_ok, other=neg_inf))
                    above = (bkey[None, :] > ckey[:, None]) & b_ok[None, :]
                    larger += tl.sum(above.to(tl.int32), axis=1)
                    b += PAIRS
                top = j_ok & (larger < k)
                kth = tl.min(tl.where(top, ckey, 2147483647), axis=0)  # the k-th largest
                # The scores left, in index order: the survivors the draw kernel reads.
                left = top & (cv > neg_inf)
                count = tl.sum(left.to(tl.int32), axis=0)
                c_at = tl.cumsum(left.to(tl.int32), axis=0) - 1
                tl.debug_barrier()  # every candidate is read before the survivors overwrite them
                tl.store(surv_v + base + c_at, cv, mask=left)
                tl.store(surv_i + base + c_at, ci, mask=left)
            else:  # many ties at the top: search the whole row
                kth = _kth_key(key, ok, k)
                kept = ok & (key >= kth) & (x > neg_inf)
                count = tl.sum(kept.to(tl.int32), axis=0)
                r_at = tl.cumsum(kept.to(tl.int32), axis=0) - 1
                tl.store(surv_v + base + r_at, x, mask=kept)
                tl.store(surv_i + base + r_at, i, mask=kept)
            tl.store(surv_n + row, count)
            tl.store(out + i, tl.full([BLOCK], neg_inf, tl.float32), mask=ok & (key < kth))
        if TOP_P:
            tl.debug_barrier()  # the survivors are written
            _top_p(surv_v, surv_i, row * n, count, out, cut, keep, PAIRS)


def supported(logits: torch.Tensor, cfg: GenerationConfig) -> bool:
    """Whether :func:`process` is for ``cfg``'s processors and ``logits``: float32 rows on a
    device the kernels run on, and, when sampling, a top-k of at most :data:`MAX_TOP_K` (top-p
    compares every pair of the scores top-k leaves, and the draw kernel reads them)."""
    return (
        available(logits)
        and logits.dim() == 2
        and logits.dtype == torch.float32
        and logits.stride(1) == 1
        and (not cfg.do_sample or (cfg.top_k is not None and 0 < cfg.top_k <= MAX_TOP_K))
    )


def survivor_buffers(rows: int, n: int, device) -> tuple[torch.Tensor, ...]:
    """Scratch for :func:`process`: the scores top-k leaves per row (values, indices, count)."""
    return (
        torch.empty(rows * n, dtype=torch.float32, device=device),
        torch.empty(rows * n, dtype=torch.int32, device=device),
        torch.empty(rows, dtype=torch.int32, device=device),
    )


def process(
    logits: torch.Tensor,
    seen: torch.Tensor,
    cfg: GenerationConfig,
    min_tokens_to_keep: int,
    *,
    log_softmax: bool,
    out: torch.Tensor | None = None,
    survivors: tuple[torch.Tensor, ...] | None = None,
    invalid: torch.Tensor | None = None,
) -> torch.Tensor:
    """``process_scores(log_softmax(logits) if log_softmax else logits, seen, cfg,
    min_tokens_to_keep)`` for float32 ``logits`` [rows, n] and bool ``seen`` [rows, n], as one
    kernel. ``out`` [rows, n] float32, ``survivors`` (:func:`survivor_buffers`: after top-k,
    the indices of each row's finite scores in index order, and their count; what
    :func:`tts.fast.sampling.beam_candidates` reads) and ``invalid`` (int32 [1], set to 1 when
    a row's log_softmax meets NaN or infinite logits): buffers to reuse (a CUDA graph needs the
    same ones at every replay)."""
    rows, n = logits.shape
    if not supported(logits, cfg) or seen.shape != logits.shape or seen.dtype != torch.bool:
        raise ValueError(f"process needs float32 [rows, n] logits and bool seen: {logits.dtype}")
    device = logits.device
    out = torch.empty_like(logits) if out is None else out
    survivors = survivor_buffers(rows, n, device) if survivors is None else survivors
    invalid = torch.zeros(1, dtype=torch.int32, device=device) if invalid is None else invalid
    sample = cfg.do_sample
    top_k = sample and cfg.top_k is not None and cfg.top_k != 0
    top_p = sample and cfg.top_p is not None and cfg.top_p < 1.0
    temperature = sample and cfg.temperature is not None and cfg.temperature != 1.0
    block = triton.next_power_of_2(n)
    _process_kernel[(rows,)](
        logits, seen.view(torch.uint8), out, *survivors, invalid,
        n, logits.stride(0), seen.stride(0), out.stride(0),
        float(cfg.repetition_penalty), float(cfg.temperature or 1.0),
        min(max(cfg.top_k, min_tokens_to_keep), n) if top_k else 1,
        float(1 - cfg.top_p) if top_p else 0.0, min_tokens_to_keep,
        LOG_SOFTMAX=log_softmax, PENALTY=cfg.repetition_penalty != 1.0,
        TEMPERATURE=temperature, TOP_K=top_k, TOP_P=top_p, BLOCK=block, GROUPS=min(GROUPS, block),
        CAND=CANDIDATES, PAIRS=PAIRS,
        num_warps=NUM_WARPS,
    )  # fmt: skip
    return out
