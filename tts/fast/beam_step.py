"""The beam step's bookkeeping as one Triton kernel (issue 8).

After the beam draw (:func:`tts.fast.sampling.beam_candidates`), a decode step of beam
sampling still runs the rules of ``BeamSearchScorer`` (:meth:`tts.generation._BeamState.step`,
in place as ``tts.fast.decode.StaticDecoder._beam_step``): sort the item's ``2 x beams``
candidates, offer the stop candidates among the first ``beams`` as finished hypotheses, keep the
first ``beams`` others, mark items done, and move every per-row buffer (tokens, repetition
history, parent history, the cache's source table) to the rows the new beams come from. Even
compiled that is ~30 small kernels one after the other, ~50 us of a ~0.86 ms step at batch 1
(docs/benchmarks.md, runs AZ-BA: the step fell to 0.81 ms with this kernel). :func:`step`
runs all of it as one kernel, one program per item:

* the candidates are sorted by score, largest first; equal scores keep the draw's order (the
  order the candidates come in). ``torch.sort`` there is not stable, so on exact ties the
  torch path may order them otherwise; no order is more right than another (the reference
  sorts unstably too), and it can only matter on equal float32 scores;
* the hypotheses are offered one by one, by the rules of ``BeamHypotheses.add``, and the
  scores are divided in float64 by the same length-penalty denominators torch computed
  (``denominators``), so every comparison is the torch path's;
* a done item's beams come from row 0, as upstream: every buffer, and the source table's
  whole window, prompt included (the reference moves the whole cache row). Row 0 belongs to
  item 0's program, which may be rewriting it meanwhile, so with several items program 0
  leaves a copy of its row 0 at the end of every step (two copies, alternating with the step's
  parity) and a done item reads the copy of the step before.

Exact: integers and comparisons only, besides the same float64 division (tests/test_fast.py
through Triton's interpreter, against the torch bookkeeping; tests/test_gpu.py on CUDA)."""

from __future__ import annotations

import torch

from tts.fast import triton_runs as available  # noqa: F401 - part of this module's API

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - Triton comes with CUDA builds of torch
    triton = None

# Columns of a row moved at once.
BLOCK = 1024
NUM_WARPS = 4


if triton is not None:

    @triton.jit
    def _copy(src, dst, n, BLOCK: tl.constexpr):
        """``dst[:n] = src[:n]`` (each element loaded and stored by the same thread)."""
        start = 0
        while start < n:  # (the CPU interpreter takes no run-time bounds in range())
            o = start + tl.arange(0, BLOCK)
            tl.store(dst + o, tl.load(src + o, mask=o < n), mask=o < n)
            start += BLOCK

    @triton.jit
    def _move_rows(base, stride, first, rows_from, q_ok, lo, hi, snap, from_snap,
                   BLOCK: tl.constexpr, KP: tl.constexpr):  # fmt: skip
        """Columns ``[lo, hi)`` of rows ``first + q`` take those of rows ``rows_from[q]`` (of
        the same buffer, or of the row-0 copy ``snap`` where ``from_snap``). Each chunk is read
        whole before it is written: a source row may be a destination too."""
        q = tl.arange(0, KP)
        start = lo
        while start < hi:
            o = start + tl.arange(0, BLOCK)
            m = q_ok[:, None] & (o < hi)[None, :]
            if from_snap:
                vals = tl.load(snap + q[:, None] * 0 + o[None, :], mask=m)
            else:
                vals = tl.load(base + rows_from[:, None] * stride + o[None, :], mask=m)
            tl.debug_barrier()
            tl.store(base + (first + q)[:, None] * stride + o[None, :], vals, mask=m)
            tl.debug_barrier()
            start += BLOCK

    @triton.jit
    def _pick(sel, values):
        """The one entry of ``values`` where ``sel``."""
        return tl.sum(tl.where(sel, values, 0), axis=0)

    @triton.jit
    def _beam_step_kernel(
        cand_ptr, cs_ptr, step_ptr, beam_scores, done_ptr, done_at,
        history, tokens, seen, src, chosen,
        h_score, h_valid, h_stamp, h_length, h_blen, h_tokens, h_beams, denoms,
        snap_tokens, snap_history, snap_seen, snap_src, first_ptr,
        vocab, max_new, cap, end, stop, pad,
        K: tl.constexpr, N: tl.constexpr, NP: tl.constexpr, KP: tl.constexpr,
        EARLY: tl.constexpr, SNAPSHOT: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        """Program ``item``: the beam step of one item (see the module docstring)."""
        item = tl.program_id(0)
        j = tl.load(step_ptr)
        row0 = item * K
        # The candidates, sorted by score (largest first; equal scores in the draw's order).
        r = tl.arange(0, NP)
        r_ok = r < N
        cand = tl.load(cand_ptr + item * N + r, mask=r_ok, other=0)
        cs = tl.load(cs_ptr + item * N + r, mask=r_ok, other=float("-inf"))
        ahead = (cs[None, :] > cs[:, None]) | (
            (cs[None, :] == cs[:, None]) & (r[None, :] < r[:, None])
        )
        rank = tl.sum((ahead & r_ok[None, :]).to(tl.int32), axis=1)
        at = (rank[None, :] == r[:, None]) & r_ok[None, :]  # [position, candidate]
        cand = tl.sum(tl.where(at, cand[None, :], 0), axis=1)
        cs = tl.sum(tl.where(at, cs[None, :], 0.0), axis=1)
        tok = cand % vocab
        row = cand // vocab + row0  # the parent's row
        is_stop = r_ok & (tok == stop)
        active = tl.load(done_ptr + item) == 0
        denom = tl.load(denoms + j + 1)

        # Stop candidates among the first K become finished hypotheses, in rank order.
        q = tl.arange(0, KP)
        q_ok = q < K
        hs = tl.load(h_score + row0 + q, mask=q_ok, other=0.0)
        hv = tl.load(h_valid + row0 + q, mask=q_ok, other=0) != 0
        hst = tl.load(h_stamp + row0 + q, mask=q_ok, other=0)
        for rk in tl.static_range(K):
            here = r == rk
            parent = _pick(here, row)
            score = _pick(here, cs).to(tl.float64) / denom
            accept = (_pick(here, is_stop.to(tl.int32)) != 0) & active
            count = tl.sum(hv.to(tl.int32), axis=0)
            worst = tl.min(tl.where(hv, hs, float("inf")), axis=0)
            has_room = count < K
            take = accept & (has_room | (score > worst))
            first_empty = tl.min(tl.where(q_ok & ~hv, q, KP), axis=0)
            ties = hv & (hs == worst)
            oldest = tl.min(tl.where(ties, hst, 9223372036854775807), axis=0)
            oldest_worst = tl.min(tl.where(ties & (hst == oldest), q, KP), axis=0)
            slot = tl.where(has_room, first_empty, oldest_worst)
            hit = (q == slot) & take
            hs = tl.where(hit, score, hs)
            hv = hv | hit
            hst = tl.where(hit, j * K + rk, hst)
            if take:
                at_slot = row0 + slot
                tl.store(h_length + at_slot, j)
                tl.store(h_blen + at_slot, j + 1)
                _copy(tokens + parent * max_new, h_tokens + at_slot * max_new, max_new, BLOCK)
                _copy(history + parent * max_new, h_beams + at_slot * max_new, max_new, BLOCK)
                tl.debug_barrier()
                tl.store(h_beams + at_slot * max_new + j, parent)
        tl.store(h_score + row0 + q, hs, mask=q_ok)
        tl.store(h_valid + row0 + q, hv.to(tl.int8), mask=q_ok)
        tl.store(h_stamp + row0 + q, hst, mask=q_ok)

        # The first K candidates that are not the stop code continue.
        go = r_ok & ~is_stop
        goes = tl.sum(go.to(tl.int32), axis=0)
        order = tl.where(
            go,
            tl.cumsum(go.to(tl.int32), axis=0) - 1,
            goes + tl.cumsum(is_stop.to(tl.int32), axis=0) - 1,
        )
        keep = (order[None, :] == q[:, None]) & r_ok[None, :]  # [beam, position]
        next_score = tl.sum(tl.where(keep, cs[None, :], 0.0), axis=1)
        next_tok = tl.sum(tl.where(keep, tok[None, :], 0), axis=1)
        next_row = tl.sum(tl.where(keep, row[None, :], 0), axis=1)
        full = tl.sum(hv.to(tl.int32), axis=0) >= K
        if EARLY:
            newly_done = full
        else:
            worst = tl.min(tl.where(hv, hs, float("inf")), axis=0)
            best = tl.max(tl.where(r_ok, cs, float("-inf")), axis=0).to(tl.float64) / denom
            newly_done = full & (worst >= best)
        # Items done before this step only carry padding, from row 0 (as upstream).
        next_score = tl.where(active, next_score, 0.0)
        next_tok = tl.where(active, next_tok, pad)
        next_row = tl.where(active, next_row, 0)
        now_done = ~active | newly_done
        tl.store(done_ptr + item, now_done.to(tl.int8))
        when = tl.load(done_at + item)
        tl.store(done_at + item, tl.where(now_done & (when == max_new), j, when))
        tl.store(beam_scores + row0 + q, next_score, mask=q_ok)
        tl.store(chosen + row0 + q, next_tok, mask=q_ok)

        # Every per-row buffer follows its beam; then this step's entries.
        from_snap = SNAPSHOT & ~active & (item > 0)
        parity = j % 2
        tl.debug_barrier()  # the hypotheses read the rows before they move
        _move_rows(tokens, max_new, row0, next_row, q_ok, 0, max_new,
                   snap_tokens + parity * max_new, from_snap, BLOCK, KP)  # fmt: skip
        _move_rows(history, max_new, row0, next_row, q_ok, 0, max_new,
                   snap_history + parity * max_new, from_snap, BLOCK, KP)  # fmt: skip
        _move_rows(seen, vocab, row0, next_row, q_ok, 0, vocab,
                   snap_seen + parity * vocab, from_snap, BLOCK, KP)  # fmt: skip
        _move_rows(src, cap, row0, next_row, q_ok, 0, end,
                   snap_src + parity * cap, from_snap, BLOCK, KP)  # fmt: skip
        rows = row0 + q
        tl.store(tokens + rows * max_new + j, next_tok, mask=q_ok)
        tl.store(history + rows * max_new + j, next_row, mask=q_ok)
        tl.store(seen + rows * vocab + next_tok, tl.full([KP], 1, tl.int8), mask=q_ok)
        tl.store(src + rows * cap + tl.load(first_ptr) + j, rows.to(tl.int32), mask=q_ok)
        if SNAPSHOT:
            if item == 0:  # row 0 as it leaves this step, for the done items of the next one
                tl.debug_barrier()
                nxt = 1 - parity
                _copy(tokens, snap_tokens + nxt * max_new, max_new, BLOCK)
                _copy(history, snap_history + nxt * max_new, max_new, BLOCK)
                _copy(seen, snap_seen + nxt * vocab, vocab, BLOCK)
                _copy(src, snap_src + nxt * cap, cap, BLOCK)


def denominators(max_new: int, length_penalty: float, device) -> torch.Tensor:
    """float64 ``g ** length_penalty`` for g = 0 .. max_new + 1, computed as the torch step
    computes each one (``generated.double().pow(length_penalty)``)."""
    return torch.arange(max_new + 2, device=device).double().pow(length_penalty)


def snapshots(tokens: torch.Tensor, history: torch.Tensor, seen: torch.Tensor, src: torch.Tensor):
    """The two alternating copies of row 0 that done items read (:func:`step`), both holding
    row 0 as it is now."""
    return tuple(t[:1].repeat(2, 1).contiguous() for t in (tokens, history, seen, src))


def step(
    cand: torch.Tensor,
    cand_scores: torch.Tensor,
    step_t: torch.Tensor,
    beam,
    tokens: torch.Tensor,
    seen: torch.Tensor,
    src: torch.Tensor,
    chosen: torch.Tensor,
    denoms: torch.Tensor,
    snaps: tuple[torch.Tensor, ...],
    *,
    stop: int,
    pad: int,
    early_stopping: bool,
    end: int,
    first: torch.Tensor,
) -> None:
    """One beam step of every item, in place: ``cand`` / ``cand_scores`` [items, 2 x beams]
    (flat indices into an item's ``beams x vocab`` scores, in the draw's order, and their
    scores), ``step_t`` the step on the device, ``beam`` the decoder's
    :class:`tts.generation._BeamState` (its scores, done flags, history and hypotheses are
    updated), ``tokens`` / ``seen`` / ``src`` the decoder's per-row buffers (moved to the new
    beams' rows, then given this step's entries), ``chosen`` [rows] int64 the new tokens.
    ``end``: the columns of ``src`` that move (the window: the prompt's entries too, which
    only a done item's rows change); ``first``: a one-element int64 device tensor, the cache
    position of step 0 (prompt + start code: step ``j`` writes position ``first + j``)."""
    items, n = cand.shape
    k = beam.beams
    hyps = beam.hyps
    rows, vocab = seen.shape
    max_new = tokens.size(1)
    buffers = (beam.history, tokens, seen, src, hyps.tokens, hyps.beams)
    if n != 2 * k or rows != items * k or any(not t.is_contiguous() for t in buffers):
        raise ValueError(f"beam step: {items} items of {n} candidates for {rows} rows")
    _beam_step_kernel[(items,)](
        cand, cand_scores, step_t, beam.beam_scores, beam.done.view(torch.int8), beam.done_at,
        beam.history, tokens, seen.view(torch.int8), src, chosen,
        hyps.score, hyps.valid.view(torch.int8), hyps.stamp, hyps.length, hyps.beams_len,
        hyps.tokens, hyps.beams, denoms, *snaps[:2], snaps[2].view(torch.int8), snaps[3], first,
        vocab, max_new, src.size(1), end, stop, pad,
        K=k, N=n, NP=triton.next_power_of_2(n), KP=triton.next_power_of_2(k),
        EARLY=bool(early_stopping), SNAPSHOT=items > 1, BLOCK=BLOCK, num_warps=NUM_WARPS,
    )  # fmt: skip
