"""CUDA graph capture without the device-wide pause of ``torch.cuda.graph``.

``torch.cuda.graph`` (torch 2.11) starts every capture by synchronising the whole device and
emptying the allocator's caches (device and pinned host). For a capture made once, that is
harmless. The GPT decoder captures a step per cache-window bucket while the GPU still runs
earlier steps, and wants those steps to keep running: a synchronisation there drains the
queue, and the emptied caches make the next allocations go back to ``cudaMalloc``.
:func:`capture` does only what capture needs: a side stream, the graph's memory pool, and the
random generators whose state the graph must advance on each replay, with the capture stream
ordered after the work queued so far and before the work queued next (see :func:`capture`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


def capture(
    graph: torch.cuda.CUDAGraph,
    fn: Callable[[], object],
    *,
    stream: torch.cuda.Stream,
    pool=None,
    generators: Iterable[torch.Generator | None] = (),
) -> None:
    """Record the kernels ``fn()`` launches into ``graph`` on ``stream`` (not the current
    stream: capture must not run on the legacy default stream).

    ``pool``: a memory pool handle shared with earlier graphs (``other.pool()``), or None for a
    new one. ``generators``: the CUDA generators ``fn`` draws from (None and CPU ones are
    skipped, each one is registered once), so every replay draws new numbers. If ``fn`` raises,
    the capture is ended and the error propagates.
    """
    seen: set[int] = set()
    for gen in generators:
        if gen is not None and gen.device.type == "cuda" and id(gen) not in seen:
            seen.add(id(gen))
            graph.register_generator_state(gen)
    # capture_begin really runs one thing: each registered generator's "capture prologue"
    # fills that generator's seed / offset tensors on ``stream``. Every replay of every graph of
    # that generator refills and reads the same tensors on the current stream, so the fill must
    # come after the replays queued so far and before the ones queued next.
    current = torch.cuda.current_stream(stream.device)
    stream.wait_stream(current)
    try:
        with torch.cuda.stream(stream):
            graph.capture_begin(pool=pool)
            try:
                fn()
            except BaseException:
                try:
                    graph.capture_end()
                except Exception:  # noqa: BLE001, S110 - capture is broken anyway; keep fn's error
                    pass
                raise
            graph.capture_end()
    finally:
        current.wait_stream(stream)
