"""A stand-in for CUDA graph capture, so the CPU tests can check the bookkeeping of
:class:`tts.fast.graphs.GraphCache` and its users (capture, replays, failures, least recently
used graphs dropped) without a GPU: :func:`fake_warm_then_capture` replaces
:func:`tts.fast.graphs.warm_then_capture` (``monkeypatch.setattr(graphs,
"warm_then_capture", fake_warm_then_capture)``)."""

from __future__ import annotations

# Captures named here (their ``what``) fail; tests monkeypatch it.
FAILING: set[str] = set()


class FakeGraph:
    """A replay recomputes the output buffer from the input buffers, as a real graph does on
    the GPU."""

    def __init__(self, record, static_out):
        self.record, self.static_out = record, static_out

    def replay(self):
        fresh = self.record()
        if isinstance(fresh, tuple):
            for dst, src in zip(self.static_out, fresh, strict=True):
                dst.copy_(src)
        else:
            self.static_out.copy_(fresh)

    def pool(self):
        return ("stand-in pool", id(self))


def fake_warm_then_capture(run, record, *, device, pool=None, what):
    """:func:`tts.fast.graphs.warm_then_capture` on the CPU: ``run()`` is the call's result;
    the "graph" is ``record()``'s output buffer, refilled by each replay. A capture whose
    ``what`` is in :data:`FAILING` fails (returns no graph), as a failed capture does."""
    result = run()
    if what in FAILING:
        return result, None, None
    static_out = record()
    return result, FakeGraph(record, static_out), static_out
