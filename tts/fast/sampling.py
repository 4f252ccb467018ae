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
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tts.generation import multinomial_rows

_INVALID = "probability tensor contains either `inf`, `nan` or element < 0"
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
    torch._assert_async((probs.max() < torch.inf) & (probs.min() >= 0), _INVALID)
    torch._assert_async(~(probs.sum(1) == 0).any(), _ZERO)
    q = torch.empty_like(probs)
    for part, gen in zip(q.view(groups, size, cats), generators, strict=True):
        part.exponential_(1, generator=gen)
    s = torch.div(probs, q, out=q)
    if n == 1:
        return s.argmax(dim=-1, keepdim=True)
    if same_topk_path(size, rows, cats, probs.device):
        return torch.topk(s, n).indices
    return torch.cat([torch.topk(part, n).indices for part in s.split(size)])
