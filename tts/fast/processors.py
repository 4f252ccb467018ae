"""The logits processors of a decode step as Triton kernels (issue 8).

:func:`tts.generation.process_scores` turns a step's logits into the scores the token choice
draws from: log_softmax (beam search), the repetition penalty, then, when sampling, the
temperature, top-k and top-p. On the GPU that is ~15 kernels per step even compiled (a top-k,
top-p's sort, its softmax and cumulative sum, a scatter, and the fused pieces between them),
and a decode step is bound by how many kernels it runs one after the other, not by their work
(docs/benchmarks.md, runs AA-AF). :func:`process` does all of it in two kernels (the split
design, the default) or in one (the one-program design, ``split=False``).

The one-program kernel (``_process_kernel``) gives each row one program:

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

On an H100 it took 42.6 us of a 753 us batch-1 decode step (docs/benchmarks.md, run EA): 3
rows are 3 programs, so 3 of 132 SMs work, each through a long chain of reductions over 16384
lanes. The split design spreads a row over several programs:

* ``_chunk_kernel``, a program per chunk of :data:`CHUNK` scores of each row, writes the
  chunk's record: its max and sum of exp (the row's log-sum-exp is merged from them), and
  its top-k candidates. Those must hold every score of the chunk that top-k could keep,
  before the log-sum-exp ``L`` is known. The processed score of logit ``x`` is
  ``f((x - m) - log z)`` with ``f`` multiplying (negative) or dividing (positive) by the
  penalty where ``x`` was seen, then dividing by the temperature: within a class (seen or
  not) it grows with ``x`` whatever ``L`` is, but a seen and an unseen logit can swap places
  with ``L``. So each class of the chunk keeps its own candidates: the finite logits at least
  the class's k-th largest (one radix select for both classes: 32-bin histograms of 16
  digits x 2 classes). The record also holds, per class, the largest finite logit left out.
  The scores outside the candidates are set to -inf in ``out`` at once; -inf logits are never
  candidates (they stay -inf, kept or not).
* ``_merge_kernel``, a program per row, merges the records into ``L``, processes the
  candidates (at most ``chunks x`` :func:`_slots` of them), finds the k-th largest of them
  by the same radix select, and checks it: for each chunk and class, the largest logit left
  out must score below the threshold. Then every score left out does (the order within a
  class), so the row's k largest are among the candidates and the threshold is exact, ties
  included. The check fails only where rounding ties a score left out with the threshold
  (``(x - m) - log z`` can round different logits to one value) or where a chunk's
  candidates overflow their slots (many ties): that row gets top-k over the whole row,
  chunk by chunk (``_whole_row``). It writes the survivors (in index order: chunk by chunk,
  each chunk's in order), their count and their scores in ``out``, then top-p as above;
  ``split_buffers``' last tensor says which rows were searched whole.
* Without top-k (beam search without sampling), ``_write_kernel``, a program per chunk,
  writes the chunk's processed scores from the merged records.

The split design needs :func:`split_buffers` as scratch (the decoder keeps one set for its
CUDA graphs), takes top-k up to :data:`SPLIT_MAX_K` (else the one-program kernel runs), and
is the default through :data:`SPLIT`, the one switch back to the one-program kernel. On an
H100 it takes 17.9 us against the one-program kernel's 25.2 us at 3 rows, 23.6 against 26.2
at 48 (CUDA-graph replays, scripts/device/choice_bench.py), and the batch-1 decode step 0.717
ms against 0.730 (docs/benchmarks.md, runs EE-EF).

What is computed is the same function, rounded differently: the log_softmax and top-p's
probabilities are the same formulas summed in another order (in the two designs too: their
scores may differ in the last bit), and the divisions are true divisions (PyTorch's CUDA
division by a number multiplies by its reciprocal). So a score may differ from the plain
path's in its last bits (as the compiled processors' do), and a top-p decision can differ
only for a score whose cumulative probability lies that close to ``1 - top_p``
(tests/test_fast.py through Triton's interpreter, tests/test_gpu.py on CUDA). On an H200
the one-program kernel takes 25 us for 3 rows of 8194 (its first version, which searched the
whole row, 44 us; the compiled processors 104 us; docs/benchmarks.md, runs AW and BC);
scripts/device/choice_bench.py times both designs."""

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

# THE SWITCH: process() runs the split kernels (several programs per row) by default; False
# gives back the one-program kernel (process(..., split=False) picks either per call).
SPLIT = True
# The split kernels' chunk of a row (one program each; fewer for shorter rows).
CHUNK = 1024
# The largest top-k (after min_tokens_to_keep) the split kernels take; larger: one program.
SPLIT_MAX_K = 64
# Candidate slots per chunk (None: room for both classes' k and their ties, 3 k in all).
CHUNK_SLOTS: int | None = None
# Warps of a chunk's program and of a row's merging program.
CHUNK_WARPS = 4
MERGE_WARPS = 8


if triton is not None:

    @triton.jit
    def _digit(key, ok, prefix, P: tl.constexpr):
        """Digit ``P`` (4 bits, from the top) of the int32 ``key``s, and which keys are still
        in the search: those where ``ok`` whose higher digits are ``prefix``'s."""
        digit = (key >> (28 - 4 * P)) & 15
        if P == 0:
            digit = digit ^ 8  # the sign digit: negative keys below positive ones
            match = ok
        else:  # (not after a return: the code generator would visit it for P = 0 too)
            match = ok & ((key & -(1 << (32 - 4 * P))) == prefix)
        return digit, match

    @triton.jit
    def _set_digit(prefix, d, P: tl.constexpr):
        """``prefix`` with digit ``P`` set to ``d`` (as :func:`_digit` numbers it)."""
        if P == 0:
            d = d ^ 8
        return prefix | (d << (28 - 4 * P))

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
            digit, match = _digit(key, ok, prefix, p)
            d, remaining = _pick_digit(tl.histogram(digit, 16, mask=match), remaining)
            prefix = _set_digit(prefix, d, p)
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

    # --- The split kernels: several programs per row (see the module docstring) ---

    @triton.jit
    def _processed(x, seen, m, logz, penalty, temperature, LOG_SOFTMAX: tl.constexpr,
                   PENALTY: tl.constexpr, TEMPERATURE: tl.constexpr):  # fmt: skip
        """The processed scores of logits ``x`` (``seen``: in the row's history), by the
        one-program kernel's formulas; ``m``, ``logz``: the row's max and log sum of exp."""
        if LOG_SOFTMAX:
            x = (x - m) - logz
        if PENALTY:
            x = tl.where(seen, tl.where(x < 0, x * penalty, x / penalty), x)
        if TEMPERATURE:
            x = x / temperature
        return x

    @triton.jit
    def _row_shift(stats, row, S, invalid_ptr, SP: tl.constexpr, LOG_SOFTMAX: tl.constexpr):
        """log_softmax's ``(m, log z)`` of the row (its max, and the log of its sum of exp
        relative to it) from its ``S`` chunks' records; ``(0, 0)`` without log_softmax. NaN
        or +inf logits make the sum NaN, which sets ``invalid`` (what torch.multinomial would
        refuse)."""
        m = 0.0
        logz = 0.0
        if LOG_SOFTMAX:
            s = tl.arange(0, SP)
            rec = stats + (row * S + s) * 4
            mc = tl.load(rec, mask=s < S, other=float("-inf"))
            zc = tl.load(rec + 1, mask=s < S, other=0.0)
            m = tl.max(mc, axis=0)
            # a chunk all -inf adds 0; a row all -inf gives NaN (exp(-inf + inf)), as it does
            # in the one-program kernel
            z = tl.sum(zc * tl.exp(mc - m), axis=0)
            tl.store(invalid_ptr, 1, mask=z != z)
            logz = tl.log(z)
        return m, logz

    @triton.jit
    def _of_class(v, j):
        """Entry ``j`` of the 2-vector ``v``."""
        return tl.sum(tl.where(tl.arange(0, 2) == j, v, 0), axis=0)

    @triton.jit
    def _class_kth(key, ok, cls, k):
        """For class 0 and class 1 (``cls`` per key) the ``k``-th largest of the keys where
        ``ok`` (the lowest int32 when the class has fewer): :func:`_kth_key` for both at once,
        one 32-bin histogram (16 digits x 2 classes) per digit."""
        prefix = tl.zeros([2], dtype=tl.int32)
        remaining = tl.zeros([2], dtype=tl.int32) + k
        bins = tl.arange(0, 16)[None, :]
        for p in tl.static_range(8):
            own = tl.where(cls == 1, _of_class(prefix, 1), _of_class(prefix, 0))
            digit, match = _digit(key, ok, own, p)
            counts = tl.reshape(tl.histogram(digit + 16 * cls, 32, mask=match), [2, 16])
            above = tl.sum(counts, axis=1)[:, None] - tl.cumsum(counts, axis=1)
            wanted = remaining[:, None]
            hit = (above < wanted) & (above + counts >= wanted)
            prefix = _set_digit(prefix, tl.sum(tl.where(hit, bins, 0), axis=1), p)
            remaining -= tl.sum(tl.where(hit, above, 0), axis=1)
        return _of_class(prefix, 0), _of_class(prefix, 1)

    @triton.jit
    def _chunk_kernel(
        x_ptr, seen_ptr, out_ptr, stats, cand_v, cand_i, cand_n,
        n, stride_x, stride_seen, stride_out, k, S,
        LOG_SOFTMAX: tl.constexpr, PENALTY: tl.constexpr, TOP_K: tl.constexpr,
        CHUNK: tl.constexpr, SLOTS: tl.constexpr,
    ):  # fmt: skip
        """Program (``row``, ``c``): chunk ``c`` of the row. Its record (max, sum of exp, and
        per class the largest logit that is not a candidate), its candidates (logit, index x 2
        + seen; -1 in the slots left) and their count; -inf into ``out`` elsewhere."""
        row = tl.program_id(0)
        c = tl.program_id(1)
        i = c * CHUNK + tl.arange(0, CHUNK)
        ok = i < n
        neg_inf = float("-inf")
        x = tl.load(x_ptr + row * stride_x + i, mask=ok, other=neg_inf)
        rec = stats + (row * S + c) * 4
        if LOG_SOFTMAX:
            m = tl.max(x, axis=0)
            tl.store(rec, m)
            tl.store(rec + 1, tl.sum(tl.exp(x - tl.where(m == neg_inf, 0.0, m)), axis=0))
        if TOP_K:
            if PENALTY:
                seen = tl.load(seen_ptr + row * stride_seen + i, mask=ok, other=0)
                cls = (seen != 0).to(tl.int32)
            else:
                cls = tl.zeros([CHUNK], dtype=tl.int32)
            key = _keys(x)
            live = ok & (x != neg_inf)  # a -inf logit stays -inf, whatever is kept
            t0, t1 = _class_kth(key, live, cls, k)
            cand = live & (key >= tl.where(cls == 1, t1, t0))
            rest = live & ~cand
            tl.store(rec + 2, tl.max(tl.where(rest & (cls == 0), x, neg_inf), axis=0))
            tl.store(rec + 3, tl.max(tl.where(rest & (cls == 1), x, neg_inf), axis=0))
            count = tl.sum(cand.to(tl.int32), axis=0)
            at = tl.cumsum(cand.to(tl.int32), axis=0) - 1
            slots = (row * S + c) * SLOTS
            room = cand & (at < SLOTS)
            tl.store(cand_v + slots + at, x, mask=room)
            tl.store(cand_i + slots + at, i * 2 + cls, mask=room)
            j = tl.arange(0, SLOTS)
            tl.store(cand_i + slots + j, tl.full([SLOTS], -1, tl.int32), mask=j >= count)
            tl.store(cand_n + row * S + c, count)
            out = out_ptr + row * stride_out
            tl.store(out + i, tl.full([CHUNK], neg_inf, tl.float32), mask=ok & ~cand)

    @triton.jit
    def _row_chunk(x_ptr, seen_ptr, row, start, n, stride_x, stride_seen, m, logz, penalty,
                   temperature, LOG_SOFTMAX: tl.constexpr, PENALTY: tl.constexpr,
                   TEMPERATURE: tl.constexpr, CHUNK: tl.constexpr):  # fmt: skip
        """Indices, mask and processed scores of the row's ``CHUNK`` scores from ``start``."""
        i = start + tl.arange(0, CHUNK)
        ok = i < n
        x = tl.load(x_ptr + row * stride_x + i, mask=ok, other=float("-inf"))
        if PENALTY:
            seen = tl.load(seen_ptr + row * stride_seen + i, mask=ok, other=0) != 0
        else:
            seen = i < 0
        y = _processed(x, seen, m, logz, penalty, temperature, LOG_SOFTMAX, PENALTY, TEMPERATURE)
        return i, ok, y

    @triton.jit
    def _whole_row(x_ptr, seen_ptr, out, surv_v, surv_i, row, n, stride_x, stride_seen, m,
                   logz, penalty, temperature, k, LOG_SOFTMAX: tl.constexpr,
                   PENALTY: tl.constexpr, TEMPERATURE: tl.constexpr,
                   CHUNK: tl.constexpr):  # fmt: skip
        """Top-k over the whole row, ``CHUNK`` scores at a time (the radix select's histograms
        summed over the chunks): ``out``, the survivors; returns their count."""
        prefix = tl.zeros([], dtype=tl.int32)
        remaining = k
        for p in tl.static_range(8):
            counts = tl.zeros([16], dtype=tl.int32)
            start = 0
            while start < n:
                i, ok, y = _row_chunk(x_ptr, seen_ptr, row, start, n, stride_x, stride_seen, m,
                                      logz, penalty, temperature, LOG_SOFTMAX, PENALTY,
                                      TEMPERATURE, CHUNK)  # fmt: skip
                digit, match = _digit(_keys(y), ok, prefix, p)
                counts += tl.histogram(digit, 16, mask=match)
                start += CHUNK
            d, remaining = _pick_digit(counts, remaining)
            prefix = _set_digit(prefix, d, p)
        count = tl.zeros([], dtype=tl.int32)
        start = 0
        while start < n:
            i, ok, y = _row_chunk(x_ptr, seen_ptr, row, start, n, stride_x, stride_seen, m,
                                  logz, penalty, temperature, LOG_SOFTMAX, PENALTY, TEMPERATURE,
                                  CHUNK)  # fmt: skip
            top = _keys(y) >= prefix
            tl.store(out + i, tl.where(top, y, float("-inf")), mask=ok)
            left = ok & top & (y > float("-inf"))
            at = row * n + count + tl.cumsum(left.to(tl.int32), axis=0) - 1
            tl.store(surv_v + at, y, mask=left)
            tl.store(surv_i + at, i, mask=left)
            count += tl.sum(left.to(tl.int32), axis=0)
            start += CHUNK
        return count

    @triton.jit
    def _merge_kernel(
        x_ptr, seen_ptr, out_ptr, surv_v, surv_i, surv_n, invalid_ptr,
        stats, cand_v, cand_i, cand_n, whole_ptr,
        n, stride_x, stride_seen, stride_out, S,
        penalty, temperature, k, cut, keep,
        LOG_SOFTMAX: tl.constexpr, PENALTY: tl.constexpr, TEMPERATURE: tl.constexpr,
        TOP_P: tl.constexpr, CHUNK: tl.constexpr, SLOTS: tl.constexpr, SP: tl.constexpr,
        TILE: tl.constexpr, PAIRS: tl.constexpr,
    ):  # fmt: skip
        """Program ``row``: top-k's threshold among the row's candidates, checked against
        the chunks' records (else top-k over the whole row, and 1 into ``whole_ptr[row]``),
        the survivors and their scores in ``out``, then top-p."""
        row = tl.program_id(0)
        neg_inf = float("-inf")
        m, logz = _row_shift(stats, row, S, invalid_ptr, SP, LOG_SOFTMAX)
        j = tl.arange(0, TILE)
        code = tl.load(cand_i + row * S * SLOTS + j, mask=j < S * SLOTS, other=-1)
        valid = code >= 0
        x = tl.load(cand_v + row * S * SLOTS + j, mask=valid, other=neg_inf)
        y = _processed(x, (code & 1) != 0, m, logz, penalty, temperature, LOG_SOFTMAX, PENALTY,
                       TEMPERATURE)  # fmt: skip
        key = _keys(y)
        kth = _kth_key(key, valid, k)
        # The check: in each chunk and class, the largest logit left out must score below kth
        # (then so do all left out: the scores grow with the logits within a class).
        s = tl.arange(0, SP)
        rec = stats + (row * S + s) * 4
        b0 = tl.load(rec + 2, mask=s < S, other=neg_inf)
        b1 = tl.load(rec + 3, mask=s < S, other=neg_inf)
        y0 = _processed(b0, s < 0, m, logz, penalty, temperature, LOG_SOFTMAX, PENALTY,
                        TEMPERATURE)  # fmt: skip
        y1 = _processed(b1, s >= 0, m, logz, penalty, temperature, LOG_SOFTMAX, PENALTY,
                        TEMPERATURE)  # fmt: skip
        unsafe = ((b0 != neg_inf) & (_keys(y0) >= kth)) | ((b1 != neg_inf) & (_keys(y1) >= kth))
        unsafe |= tl.load(cand_n + row * S + s, mask=s < S, other=0) > SLOTS  # no room
        out = out_ptr + row * stride_out
        whole = tl.max(unsafe.to(tl.int32), axis=0)
        tl.store(whole_ptr + row, whole)
        if whole > 0:
            count = _whole_row(x_ptr, seen_ptr, out, surv_v, surv_i, row, n, stride_x,
                               stride_seen, m, logz, penalty, temperature, k, LOG_SOFTMAX,
                               PENALTY, TEMPERATURE, CHUNK)  # fmt: skip
        else:
            top = valid & (key >= kth)
            left = top & (y > neg_inf)
            count = tl.sum(left.to(tl.int32), axis=0)
            at = row * n + tl.cumsum(left.to(tl.int32), axis=0) - 1
            tl.store(surv_v + at, y, mask=left)
            tl.store(surv_i + at, code >> 1, mask=left)
            tl.store(out + (code >> 1), tl.where(top, y, neg_inf), mask=valid)
        tl.store(surv_n + row, count)
        if TOP_P:
            tl.debug_barrier()  # the survivors and the scores are written
            _top_p(surv_v, surv_i, row * n, count, out, cut, keep, PAIRS)

    @triton.jit
    def _write_kernel(
        x_ptr, seen_ptr, out_ptr, stats, invalid_ptr,
        n, stride_x, stride_seen, stride_out, S, penalty, temperature,
        LOG_SOFTMAX: tl.constexpr, PENALTY: tl.constexpr, TEMPERATURE: tl.constexpr,
        CHUNK: tl.constexpr, SP: tl.constexpr,
    ):  # fmt: skip
        """Program (``row``, ``c``) without top-k: the processed scores of chunk ``c``."""
        row = tl.program_id(0)
        m, logz = _row_shift(stats, row, S, invalid_ptr, SP, LOG_SOFTMAX)
        i, ok, y = _row_chunk(x_ptr, seen_ptr, row, tl.program_id(1) * CHUNK, n, stride_x,
                              stride_seen, m, logz, penalty, temperature, LOG_SOFTMAX, PENALTY,
                              TEMPERATURE, CHUNK)  # fmt: skip
        tl.store(out_ptr + row * stride_out + i, y, mask=ok)


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


def _chunk(n: int) -> int:
    """Scores per chunk of a row of ``n`` (a power of 2)."""
    return min(CHUNK, triton.next_power_of_2(n))


def _slots(k: int) -> int:
    """Candidate slots per chunk for top-k ``k``: both classes' ``k`` with room for ties."""
    return CHUNK_SLOTS or max(16, triton.next_power_of_2(3 * k))


def split_buffers(rows: int, n: int, device) -> tuple[torch.Tensor, ...]:
    """Scratch for the split kernels of :func:`process` at ``rows`` x ``n`` (any top-k they
    take): per chunk its record (float32 x 4), its candidates' logits (float32) and codes
    (int32), and their count (int32); per row whether top-k searched it whole (int32)."""
    chunks = rows * triton.cdiv(n, _chunk(n))
    slots = _slots(SPLIT_MAX_K)
    return (
        torch.empty(chunks * 4, dtype=torch.float32, device=device),
        torch.empty(chunks * slots, dtype=torch.float32, device=device),
        torch.empty(chunks * slots, dtype=torch.int32, device=device),
        torch.empty(chunks, dtype=torch.int32, device=device),
        torch.zeros(rows, dtype=torch.int32, device=device),
    )


def _splits(cfg: GenerationConfig, top_k: bool, k: int, temperature: bool) -> bool:
    """Whether the split kernels take these processors: a top-k of at most
    :data:`SPLIT_MAX_K` (or none), and a penalty and temperature that keep the scores of each
    class (seen or not) in the order of their logits."""
    return (
        (not top_k or k <= SPLIT_MAX_K)
        and cfg.repetition_penalty > 0
        and (not temperature or cfg.temperature > 0)
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
    scratch: tuple[torch.Tensor, ...] | None = None,
    split: bool | None = None,
) -> torch.Tensor:
    """``process_scores(log_softmax(logits) if log_softmax else logits, seen, cfg,
    min_tokens_to_keep)`` for float32 ``logits`` [rows, n] and bool ``seen`` [rows, n], as one
    kernel. ``out`` [rows, n] float32, ``survivors`` (:func:`survivor_buffers`: after top-k,
    the indices of each row's finite scores in index order, and their count; what
    :func:`tts.fast.sampling.beam_candidates` reads) and ``invalid`` (int32 [1], set to 1 when
    a row's log_softmax meets NaN or infinite logits): buffers to reuse (a CUDA graph needs the
    same ones at every replay), as is ``scratch`` (:func:`split_buffers`). ``split``: the
    split kernels (where :func:`_splits` allows) or the one-program kernel; None:
    :data:`SPLIT`."""
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
    k = min(max(cfg.top_k, min_tokens_to_keep), n) if top_k else 1
    penalty = cfg.repetition_penalty != 1.0
    args = (float(cfg.repetition_penalty), float(cfg.temperature or 1.0))
    cut = float(1 - cfg.top_p) if top_p else 0.0
    flags = {"LOG_SOFTMAX": log_softmax, "PENALTY": penalty, "TEMPERATURE": temperature}
    if (SPLIT if split is None else split) and _splits(cfg, top_k, k, temperature):
        scratch = split_buffers(rows, n, device) if scratch is None else scratch
        _launch_split(logits, seen, out, survivors, invalid, scratch, args, k, cut,
                      min_tokens_to_keep, flags, top_k, top_p)  # fmt: skip
        return out
    block = triton.next_power_of_2(n)
    _process_kernel[(rows,)](
        logits, seen.view(torch.uint8), out, *survivors, invalid,
        n, logits.stride(0), seen.stride(0), out.stride(0), *args, k, cut, min_tokens_to_keep,
        **flags, TOP_K=top_k, TOP_P=top_p, BLOCK=block, GROUPS=min(GROUPS, block),
        CAND=CANDIDATES, PAIRS=PAIRS, num_warps=NUM_WARPS,
    )  # fmt: skip
    return out


def _launch_split(logits, seen, out, survivors, invalid, scratch, args, k, cut, keep, flags,
                  top_k, top_p) -> None:  # fmt: skip
    """The split kernels: a program per chunk of each row (its record and candidates), then
    with top-k a program per row that merges them (else a program per chunk that writes the
    chunk's scores)."""
    rows, n = logits.shape
    chunk = _chunk(n)
    chunks = triton.cdiv(n, chunk)
    slots = _slots(k) if top_k else 1
    stats, cand_v, cand_i, cand_n, whole = scratch
    if (
        stats.numel() < rows * chunks * 4
        or cand_i.numel() < rows * chunks * slots
        or whole.numel() < rows
    ):
        raise ValueError(f"process: scratch too small for {rows} x {n} at chunks of {chunk}")
    seen = seen.view(torch.uint8)
    strides = (logits.stride(0), seen.stride(0), out.stride(0))
    sp = triton.next_power_of_2(chunks)
    if flags["LOG_SOFTMAX"] or top_k:
        _chunk_kernel[(rows, chunks)](
            logits, seen, out, stats, cand_v, cand_i, cand_n, n, *strides, k, chunks,
            LOG_SOFTMAX=flags["LOG_SOFTMAX"], PENALTY=flags["PENALTY"], TOP_K=top_k,
            CHUNK=chunk, SLOTS=slots, num_warps=CHUNK_WARPS,
        )  # fmt: skip
    if top_k:
        _merge_kernel[(rows,)](
            logits, seen, out, *survivors, invalid, stats, cand_v, cand_i, cand_n, whole,
            n, *strides, chunks, *args, k, cut, keep, **flags, TOP_P=top_p, CHUNK=chunk,
            SLOTS=slots, SP=sp, TILE=triton.next_power_of_2(chunks * slots), PAIRS=PAIRS,
            num_warps=MERGE_WARPS,
        )  # fmt: skip
    else:
        _write_kernel[(rows, chunks)](
            logits, seen, out, stats, invalid, n, *strides, chunks, *args, **flags,
            CHUNK=chunk, SP=sp, num_warps=CHUNK_WARPS,
        )  # fmt: skip
