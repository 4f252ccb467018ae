"""A stand-in for a captured CUDA graph, so the CPU tests can check the bookkeeping of
:class:`tts.fast.padded_graphs.PaddedGraphs` (capture, replays, failures) without a GPU."""

from __future__ import annotations


class FakeGraph:
    """A replay recomputes the output buffer from the input buffers, as a real graph does on
    the GPU."""

    def __init__(self, run, static_in, static_out):
        self.run, self.static_in, self.static_out = run, static_in, static_out

    def replay(self):
        self.static_out.copy_(self.run(*self.static_in))


def fake_capture(self, key, inputs, n):
    """``PaddedGraphs._capture`` with :class:`FakeGraph` (monkeypatch it in); a runner whose
    ``fail`` attribute is true records a failed capture instead."""
    if getattr(self, "fail", False):
        self.graphs[key] = None  # what a failed capture leaves
        return self._cut(self._run(*inputs), n).clone()
    static_in = tuple(t.clone() for t in inputs)
    static_out = self._run(*static_in)
    self.graphs[key] = (FakeGraph(self._run, static_in, static_out), static_in, static_out)
    self.captures += 1
    return self._cut(static_out, n).clone()
