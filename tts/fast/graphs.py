"""CUDA graph capture without the device-wide pause of ``torch.cuda.graph``.

``torch.cuda.graph`` (torch 2.11) starts every capture by synchronising the whole device and
emptying the allocator's caches (device and pinned host). For a capture made once, that is
harmless. The GPT decoder captures a step per cache-window bucket while the GPU still runs
earlier steps, and wants those steps to keep running: a synchronisation there drains the
queue, and the emptied caches make the next allocations go back to ``cudaMalloc``.
:func:`capture` does only what capture needs: a side stream, the graph's memory pool, and the
random generators whose state the graph must advance on each replay, with the capture stream
ordered after the work queued so far and before the work queued next (see :func:`capture`).

Two more things it does that ``torch.cuda.graph`` does not:

* it captures in CUDA's *thread-local* mode: only this thread's unsafe calls (a host
  synchronisation, a ``cudaMalloc``) fail the capture, so another thread of the process
  copying to the host or waiting for its own stream meanwhile does not (the default, global
  mode fails on any thread's). A device-wide synchronisation (``torch.cuda.synchronize()``)
  by any thread still fails it, in either mode (scripts/device/capture_threads.py measures
  this); the decoder then goes on eagerly;
* when a capture fails, it takes the generators out of capture mode. torch's
  ``capture_begin`` puts every registered generator, and always the default CUDA generator,
  into capture mode; a failed ``capture_end`` stops before taking them out, and each one's
  next eager draw then raises "Offset increment outside graph capture encountered
  unexpectedly". A small capture that succeeds takes them out, and changes nothing of their
  state (:func:`_release_generators`), so the caller can go on eagerly.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable

import torch

# CUDA's stream capture mode for every capture here (see the module docstring).
CAPTURE_MODE = "thread_local"


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
    skipped, each one is registered once), so every replay draws new numbers. If the capture
    fails, it is ended, the generators are taken out of capture mode (and keep the state
    they had before) and the error propagates.
    """
    registered = _cuda_generators(generators)
    for gen in registered:
        graph.register_generator_state(gen)
    # capture_begin really runs one thing: each registered generator's "capture prologue"
    # fills that generator's seed / offset tensors on ``stream``. Every replay of every graph of
    # that generator refills and reads the same tensors on the current stream, so the fill must
    # come after the replays queued so far and before the ones queued next.
    current = torch.cuda.current_stream(stream.device)
    stream.wait_stream(current)
    try:
        with torch.cuda.stream(stream):
            _record(graph, fn, pool)
    except BaseException:
        _release_generators(stream, registered)
        raise
    finally:
        current.wait_stream(stream)


def _cuda_generators(generators: Iterable[torch.Generator | None]) -> list[torch.Generator]:
    """The CUDA generators among ``generators``, each once."""
    seen: dict[int, torch.Generator] = {}
    for gen in generators:
        if gen is not None and gen.device.type == "cuda":
            seen.setdefault(id(gen), gen)
    return list(seen.values())


def _record(graph: torch.cuda.CUDAGraph, fn: Callable[[], object], pool) -> None:
    """capture_begin, ``fn()``, capture_end on the current stream; if ``fn`` raises, the
    capture is still ended (its own error, the capture being broken anyway, is dropped)."""
    graph.capture_begin(pool=pool, capture_error_mode=CAPTURE_MODE)
    try:
        fn()
    except BaseException:
        with contextlib.suppress(Exception):
            graph.capture_end()
        raise
    graph.capture_end()


def _release_generators(stream: torch.cuda.Stream, generators: list[torch.Generator]) -> None:
    """Take ``generators`` and the default CUDA generator out of the capture mode a failed
    capture left them in, by a capture of one small kernel that succeeds (then dropped).
    A capture's prologue and epilogue only set a generator's graph-side tensors and flag:
    its seed and offset, what eager draws use, stay as they were."""
    graph = torch.cuda.CUDAGraph()
    for gen in generators:
        graph.register_generator_state(gen)
    try:
        with torch.cuda.stream(stream):
            _record(graph, lambda: torch.zeros(1, device=stream.device), None)
    except Exception as exc:  # noqa: BLE001 - the caller's error is the one to raise
        warnings.warn(
            "tts.fast: after a failed CUDA graph capture, its random generators could not be "
            f"taken out of capture mode ({type(exc).__name__}: {exc}); their next draw outside "
            "a graph will fail",
            RuntimeWarning,
            stacklevel=3,
        )


def warm_then_capture(
    run: Callable[[], torch.Tensor],
    record: Callable[[], torch.Tensor],
    *,
    device: torch.device,
    pool=None,
    what: str,
) -> tuple[torch.Tensor, torch.cuda.CUDAGraph | None, torch.Tensor | None]:
    """Run ``run()`` eagerly on a side stream, then capture ``record()`` on that stream.

    ``run()``'s result (a tensor or a tuple of tensors) is the calling call's own (so a call
    that captures still returns a result computed eagerly), and its run is the warm-up a
    capture needs (lazy initialisations, cuBLAS workspaces) on the stream that captures.
    ``record()`` should compute what ``run()`` does from the graph's static input buffers;
    its result is the graph's output buffer(s). Returns ``(result, graph, output buffer)``;
    where the capture fails, ``(result, None, None)``, after :func:`tts.fast.fallback`
    recorded it as ``what``.
    """
    current = torch.cuda.current_stream(device)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(current)
    with torch.cuda.stream(stream):
        result = run()
    current.wait_stream(stream)
    # Made on the side stream, read on this one: the allocator must not hand its memory to
    # the side stream's next allocation before this stream is done with it.
    for t in result if isinstance(result, tuple) else (result,):
        t.record_stream(current)
    graph = torch.cuda.CUDAGraph()
    captured: list[torch.Tensor] = []
    try:
        capture(graph, lambda: captured.append(record()), stream=stream, pool=pool)
    except Exception as exc:  # noqa: BLE001 - the result is computed; replays just won't come
        from tts.fast import fallback

        fallback(what, exc)
        return result, None, None
    return result, graph, captured[0]


class GraphCache(OrderedDict):
    """Captured graphs by key: ``key -> (graph, static inputs, static output)``, or ``None``
    where the key's capture failed (its calls then run eagerly, without trying again).

    At most ``limit`` entries, the least recently used dropped first; every graph shares one
    memory pool (``pool``), as their replays never overlap. What :class:`PaddedGraphs
    <tts.fast.padded_graphs.PaddedGraphs>` and the CFM solve (:mod:`tts.fast.s2mel`) keep.
    """

    def __init__(self, limit: int = 8):
        super().__init__()
        if limit < 1:
            raise ValueError(f"a graph cache holds at least 1 graph, got limit={limit}")
        self.limit = int(limit)
        self.pool = None

    def failed(self, key) -> bool:
        """Whether ``key``'s capture was tried and failed."""
        return key in self and self[key] is None

    def use(self, key) -> tuple | None:
        """``key``'s entry, marked as the most recently used; None if there is none (or its
        capture failed)."""
        entry = self.get(key)
        if key in self:
            self.move_to_end(key)
        return entry

    def capture(
        self,
        key,
        run: Callable[[], torch.Tensor],
        record: Callable[[], torch.Tensor],
        static_in: tuple[torch.Tensor, ...],
        *,
        device: torch.device,
        what: str,
    ) -> torch.Tensor:
        """:func:`warm_then_capture` ``run`` / ``record`` (which read ``static_in``) into this
        cache's pool and keep the graph under ``key`` (or the failure); returns ``run()``'s
        result."""
        result, graph, static_out = warm_then_capture(
            run, record, device=device, pool=self.pool, what=what
        )
        if graph is None:
            self[key] = None
        else:
            if self.pool is None:
                self.pool = graph.pool()
            self[key] = (graph, static_in, static_out)
        while len(self) > self.limit:
            self.popitem(last=False)
        return result

    def clear(self) -> None:
        """Drop every graph, their buffers and the pool."""
        super().clear()
        self.pool = None
