"""Per-item draws without one ``torch.multinomial`` call per item (issue 8).

The Engine gives every generation item its own generator (:func:`tts.pipeline.segment_seed`),
so that what an item draws does not depend on the other items of its batch.
:func:`tts.generation.multinomial_rows` therefore calls ``torch.multinomial`` once per item,
and on CUDA each call is ~20 kernels (input checks, the exponential draw, a division, a
multi-block top-k): 76 us per call for one beam-search item (3 beams x 8194 codes), so ~1.2 ms
of every decode step at 16 items (H200, scripts/device/choice_bench.py, docs/benchmarks.md).

Without replacement, ``torch.multinomial(p, n, generator=g)`` is (PyTorch's
``multinomial_out``): check that ``p`` is finite, non-negative and has a positive sum per row;
``q = empty_like(p).exponential_(1, generator=g)``; ``s = p / q``; the indices of ``s``'s ``n``
largest (``argmax`` for ``n = 1``). :func:`multinomial_groups` does the same for all items at
once: the checks over the whole batch, one exponential draw per item from the item's own
generator (the same call on the same shape, so the same numbers), one division, one top-k.
Per row the top-k is the same computation as the per-item call when both take the same kernel
path (PyTorch picks its multi-block top-k from the number of rows and the row length; where
the batched call would take another path than the per-item calls, each item keeps its own
top-k call), so the drawn indices are identical, ties included (tests/test_fast.py,
tests/test_gpu.py).

:func:`beam_candidates` goes further for the beam step's draw: after the same exponential
draws, the softmax over the item's scores that top-k left, the division by the draws, the top-n
and the gather of the candidates' scores run as one Triton kernel (see its docstring).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tts.fast import triton_runs as available  # noqa: F401 - part of this module's API
from tts.generation import Generators, generator_list, multinomial_rows

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - Triton comes with CUDA builds of torch
    triton = None

INVALID_PROBABILITIES = "probability tensor contains either `inf`, `nan` or element < 0"
_ZERO = "invalid multinomial distribution (sum of probabilities <= 0)"


def _multiblock_topk(num_slices: int, slice_size: int) -> bool:
    """Whether PyTorch's CUDA top-k takes its multi-block path for ``num_slices`` rows of
    ``slice_size`` (``should_use_multiblock`` of ATen's TensorTopK.cu, CUB builds)."""
    return (
        (num_slices <= 20 and slice_size >= 20000)
        or (20 < num_slices <= 40 and slice_size >= 10000)
        or (40 < num_slices <= 80 and slice_size >= 8000)
        or (80 < num_slices < 200 and slice_size >= 5000)
        or (200 <= num_slices < 800 and slice_size >= 3000)
        or (800 <= num_slices <= 4000 and slice_size >= 800)
        or (num_slices > 4000 and slice_size >= 400)
    )


def same_topk_path(size: int, rows: int, cats: int, device: torch.device) -> bool:
    """Whether one top-k over ``rows`` rows runs, row for row, what top-k calls of ``size``
    rows each run (on the CPU every row is its own loop; on CUDA the path depends on the
    number of rows)."""
    if device.type != "cuda":
        return True
    return _multiblock_topk(size, cats) == _multiblock_topk(rows, cats)


def exponential_draws(shape, generators: Sequence, device, dtype=torch.float32) -> torch.Tensor:
    """The exponential draws torch.multinomial makes without replacement, ``shape`` [rows,
    categories] in the probabilities' ``dtype``: the rows split into ``len(generators)`` equal groups, group ``i``
    drawn by ``generators[i]`` in one call, as one torch.multinomial call per group would."""
    q = torch.empty(shape, dtype=dtype, device=device)
    for part, gen in zip(q.view(len(generators), -1, shape[-1]), generators, strict=True):
        part.exponential_(1, generator=gen)
    return q


def multinomial_groups(
    probs: torch.Tensor, n: int, generators: Sequence[torch.Generator]
) -> torch.Tensor:
    """:func:`tts.generation.multinomial_rows` (group ``i`` of the rows drawn by
    ``generators[i]``, without replacement) with the per-group work batched; the same indices.

    ``probs`` [rows, categories] contiguous float, rows a multiple of ``len(generators)``.
    Anything else goes through :func:`~tts.generation.multinomial_rows` unchanged.
    """
    groups = len(generators)
    if (
        groups < 2
        or probs.dim() != 2
        or probs.size(0) % groups
        or not probs.is_contiguous()
        or not probs.is_floating_point()
    ):
        return multinomial_rows(probs, n, list(generators))
    rows, cats = probs.shape
    size = rows // groups
    if not 1 <= n <= cats:
        raise RuntimeError(f"cannot sample n_sample = {n} from {cats} categories")
    # torch.multinomial's checks, for every group at once (device-side asserts on CUDA)
    torch._assert_async((probs.max() < torch.inf) & (probs.min() >= 0), INVALID_PROBABILITIES)
    torch._assert_async(~(probs.sum(1) == 0).any(), _ZERO)
    q = exponential_draws(probs.shape, generators, probs.device, probs.dtype)
    s = torch.div(probs, q, out=q)
    if n == 1:
        return s.argmax(dim=-1, keepdim=True)
    if same_topk_path(size, rows, cats, probs.device):
        return torch.topk(s, n).indices
    return torch.cat([torch.topk(part, n).indices for part in s.split(size)])


if triton is not None:

    @triton.jit
    def _quotients(scores_ptr, beam_ptr, q_ptr, item, beam, code, ok, vocab, m, z,
                   BEAMS: tl.constexpr):  # fmt: skip
        """Scores ``t`` (processed score + beam score), flat indices ``f`` and torch.multinomial's
        quotients ``s = softmax(t) / q`` of the item's entries (``beam``, ``code``) where ``ok``
        (``m``, ``z``: the item's max and sum of ``exp(t - m)``; ``s = -1`` elsewhere)."""
        row = item * BEAMS + beam
        t = tl.load(scores_ptr + row * vocab + code, mask=ok, other=float("-inf"))
        t += tl.load(beam_ptr + row + 0 * code, mask=ok, other=0.0)
        f = beam * vocab + code
        q = tl.load(q_ptr + item * BEAMS * vocab + f, mask=ok, other=1.0)
        return t, f, tl.where(ok, (tl.exp(t - m) / z) / q, -1.0)

    @triton.jit
    def _past_tile(scores_ptr, surv_i, surv_n, beam_ptr, item, vocab, m,
                   BEAMS: tl.constexpr, CHUNK: tl.constexpr, EXP_SUM: tl.constexpr):  # fmt: skip
        """Over the survivors past the kernel's tile (rows with more than ``CHUNK``, from ties
        at top-k's threshold), with their beam scores added: with ``EXP_SUM`` the sum of
        ``exp(t - m)``, else the largest of ``m`` and them."""
        c = tl.arange(0, CHUNK)
        if EXP_SUM:
            acc = tl.zeros([], dtype=tl.float32)
        else:
            acc = m
        for r in tl.static_range(BEAMS):
            row = item * BEAMS + r
            count = tl.load(surv_n + row)
            a = CHUNK
            while a < count:
                more = a + c < count
                code = tl.load(surv_i + row * vocab + a + c, mask=more, other=0)
                t = tl.load(scores_ptr + row * vocab + code, mask=more, other=float("-inf"))
                t += tl.load(beam_ptr + row)
                if EXP_SUM:
                    acc += tl.sum(tl.exp(t - m), axis=0)
                else:
                    acc = tl.maximum(acc, tl.max(t, axis=0))
                a += CHUNK
        return acc

    @triton.jit
    def _best(s, f, after_s, after_f, best_s, best_f, width):
        """Merge the largest quotient of ``s`` that comes after (``after_s``, ``after_f``) in
        the order (quotient descending, index ascending) into (``best_s``, ``best_f``)."""
        s = tl.where((s < after_s) | ((s == after_s) & (f > after_f)), s, -1.0)
        top = tl.max(s)
        at = tl.min(tl.where(s == top, f, width))
        better = (top > best_s) | ((top == best_s) & (at < best_f))
        return tl.where(better, top, best_s), tl.where(better, at, best_f)

    @triton.jit
    def _candidates_kernel(
        scores_ptr, surv_i, surv_n, beam_ptr, q_ptr, cand_ptr, cand_scores_ptr, invalid_ptr,
        vocab, N: tl.constexpr, BEAMS: tl.constexpr, BEAMS_P: tl.constexpr,
        CHUNK: tl.constexpr, FIRST: tl.constexpr,
    ):  # fmt: skip
        """Program ``item``: the item's ``N`` candidates and their scores, as
        :func:`beam_candidates` describes. Only the survivors of top-k can have a non-zero
        probability; the first ``FIRST`` (>= 2 N) entries hold the lowest-index zeros that
        complete the ``N`` when fewer survive."""
        item = tl.program_id(0)
        width = BEAMS * vocab
        neg_inf = float("-inf")
        # The survivors of every beam as a [BEAMS_P, CHUNK] tile; rows with more than CHUNK
        # (ties at top-k's threshold) have the rest read in the loops below.
        beam = tl.arange(0, BEAMS_P)[:, None]
        j = tl.arange(0, CHUNK)[None, :]
        counts = tl.load(surv_n + item * BEAMS + beam, mask=beam < BEAMS, other=0)
        ok = j < counts
        code = tl.load(surv_i + (item * BEAMS + beam) * vocab + j, mask=ok, other=0)
        t = tl.load(scores_ptr + (item * BEAMS + beam) * vocab + code, mask=ok, other=neg_inf)
        t += tl.load(beam_ptr + item * BEAMS + beam, mask=beam < BEAMS, other=0.0)
        m = _past_tile(scores_ptr, surv_i, surv_n, beam_ptr, item, vocab,
                       tl.max(tl.max(t, axis=1), axis=0), BEAMS, CHUNK, False)  # fmt: skip
        z = tl.sum(tl.sum(tl.exp(t - m), axis=1), axis=0)
        z += _past_tile(scores_ptr, surv_i, surv_n, beam_ptr, item, vocab, m, BEAMS, CHUNK, True)
        c = tl.arange(0, CHUNK)
        # torch.multinomial's checks: a NaN, or no positive probability
        tl.store(invalid_ptr, 1, mask=(z != z) | (z == 0))
        t, f, s = _quotients(scores_ptr, beam_ptr, q_ptr, item, beam, code, ok, vocab, m, z, BEAMS)
        first = tl.arange(0, FIRST)
        first_t, first_f, first_s = _quotients(
            scores_ptr, beam_ptr, q_ptr, item, first // vocab, first % vocab, first < width,
            vocab, m, z, BEAMS,
        )  # fmt: skip
        after_s = tl.full([], float("inf"), tl.float32)
        after_f = tl.full([], -1, tl.int32)
        for pick in tl.static_range(N):
            best_s = tl.full([], -1.0, tl.float32)
            best_f = tl.full([], 0, tl.int32) + width
            best_s, best_f = _best(tl.reshape(s, [BEAMS_P * CHUNK]),
                                   tl.reshape(f, [BEAMS_P * CHUNK]),
                                   after_s, after_f, best_s, best_f, width)  # fmt: skip
            best_s, best_f = _best(first_s, first_f, after_s, after_f, best_s, best_f, width)
            for r in tl.static_range(BEAMS):
                count = tl.load(surv_n + item * BEAMS + r)
                a = CHUNK
                while a < count:
                    more = a + c < count
                    code_r = tl.load(surv_i + (item * BEAMS + r) * vocab + a + c, mask=more,
                                     other=0)  # fmt: skip
                    t_r, f_r, s_r = _quotients(scores_ptr, beam_ptr, q_ptr, item, r, code_r, more,
                                             vocab, m, z, BEAMS)  # fmt: skip
                    best_s, best_f = _best(s_r, f_r, after_s, after_f, best_s, best_f, width)
                    a += CHUNK
            tl.store(cand_ptr + item * N + pick, best_f.to(tl.int64))
            row = item * BEAMS + best_f // vocab
            score = tl.load(scores_ptr + row * vocab + best_f % vocab) + tl.load(beam_ptr + row)
            tl.store(cand_scores_ptr + item * N + pick, score)
            after_s, after_f = best_s, best_f


def beam_candidates(
    scores: torch.Tensor,
    survivors: tuple[torch.Tensor, ...],
    beam_scores: torch.Tensor,
    beams: int,
    n: int,
    generator: Generators,
    invalid: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The beam step's draw of ``n`` candidates per item, and their scores.

    ``scores`` [items x beams, codes] float32: the processed scores, with ``survivors`` (the
    indices and counts :func:`tts.fast.processors.process` wrote for them: every score left
    finite by top-k); ``beam_scores`` [items x beams] float32. What it computes, with ``total =
    (scores + beam_scores[:, None]).view(items, beams x codes)``: ``cand =
    multinomial_rows(total.softmax(-1), n, generator)`` and ``total.gather(1, cand)``.

    The exponential draws are torch's, as torch.multinomial makes them
    (:func:`multinomial_groups`); one kernel then computes the softmax over the survivors (the
    other scores are -inf: probability 0), divides by the draws and picks the ``n`` largest
    quotients, largest first, with their scores. The probabilities are the same formula
    summed in another order, so a candidate could change only where two quotients tie within
    that rounding. Equal quotients (zero probabilities, when fewer than ``n`` are positive)
    are taken lowest index first (torch.topk takes others: tests/test_gpu.py reports it; only a
    beam of score -inf can hold another token for it). torch.multinomial's checks
    (a NaN, no positive probability) raise the int32 [1] flag ``invalid`` to 1, which the
    caller reports (the decoder at its next host check, with torch.multinomial's message).
    """
    rows, vocab = scores.shape
    items = rows // beams
    width = beams * vocab
    if (
        scores.dtype != torch.float32
        or not scores.is_contiguous()
        or rows % beams
        or beam_scores.shape != (rows,)
        or not 1 <= n <= width
        or width < 2 * n
    ):
        raise ValueError(
            f"beam_candidates needs contiguous float32 scores [items x {beams}, codes], "
            f"beam scores [{rows}] and 1 <= n <= {width} // 2"
        )
    gens = generator_list(generator)
    if items % len(gens):
        raise ValueError(f"{items} items do not split over {len(gens)} generators")
    q = exponential_draws((items, width), gens, scores.device)
    cand = torch.empty((items, n), dtype=torch.int64, device=scores.device)
    cand_scores = torch.empty((items, n), dtype=torch.float32, device=scores.device)
    _, surv_i, surv_n = survivors
    _candidates_kernel[(items,)](
        scores, surv_i, surv_n, beam_scores, q, cand, cand_scores, invalid, vocab,
        N=n, BEAMS=beams, BEAMS_P=triton.next_power_of_2(beams), CHUNK=CHUNK,
        FIRST=triton.next_power_of_2(2 * n), num_warps=CANDIDATE_WARPS,
    )  # fmt: skip
    return cand, cand_scores


# The draw kernel's tile: survivors per beam read at once (top-k's 30 fit), and its warps.
CHUNK = 64
CANDIDATE_WARPS = 2
