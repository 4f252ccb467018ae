"""tts.fast.graphs.capture's bookkeeping, on the CPU with stand-ins for torch's CUDA graph,
stream and generators: the capture mode, the generators registered, the streams' order, and
what a failed capture leaves (the real capture is checked on CUDA in tests/test_gpu.py)."""

from __future__ import annotations

import contextlib
import types

import pytest
import torch

from tts.fast import graphs


class _Graph:
    """Records what capture() asks of a torch.cuda.CUDAGraph."""

    made: list[_Graph] = []
    fail_end: list[bool] = []  # popped per graph made: True makes its capture_end raise

    def __init__(self):
        self.registered: list = []
        self.calls: list[tuple] = []
        self.fails = _Graph.fail_end.pop(0) if _Graph.fail_end else False
        _Graph.made.append(self)

    def register_generator_state(self, gen):
        self.registered.append(gen)

    def capture_begin(self, pool=None, capture_error_mode="global"):
        self.calls.append(("begin", pool, capture_error_mode))

    def capture_end(self):
        self.calls.append(("end",))
        if self.fails:
            raise RuntimeError("operation failed due to a previous error during capture")


class _Stream:
    def __init__(self, name: str, log: list):
        self.name, self.log, self.device = name, log, torch.device("cpu")

    def wait_stream(self, other):
        self.log.append((self.name, "waits for", other.name))


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda's graph, streams and stream context replaced by recorders."""
    log: list = []
    current = _Stream("current", log)
    _Graph.made.clear()
    _Graph.fail_end.clear()
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _Graph)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    return types.SimpleNamespace(log=log, side=_Stream("side", log))


def _gen(kind: str = "cuda"):
    return types.SimpleNamespace(device=torch.device(kind))


def test_capture_registers_each_cuda_generator_once_in_thread_local_mode(fake_cuda):
    a, b, cpu = _gen(), _gen(), _gen("cpu")
    graph, ran = _Graph(), []
    graphs.capture(graph, lambda: ran.append(1), stream=fake_cuda.side, pool="P",
                   generators=[a, None, a, cpu, b])  # fmt: skip
    assert graph.registered == [a, b]
    assert graph.calls == [("begin", "P", "thread_local"), ("end",)] and ran == [1]
    # the capture comes after the work queued so far and before the work queued next
    assert fake_cuda.log == [("side", "waits for", "current"), ("current", "waits for", "side")]
    assert len(_Graph.made) == 1  # nothing else was captured


@pytest.mark.parametrize("where", ["fn", "capture_end"])
def test_failed_capture_releases_its_generators_and_raises(fake_cuda, where):
    """A capture that fails in ``fn`` or at its end: the capture is ended, a second capture
    (one that succeeds) with the same generators takes them out of capture mode, and the
    caller gets the first error."""
    a, b = _gen(), _gen()
    graph = _Graph()
    if where == "capture_end":
        graph.fails = True

    def fn():
        if where == "fn":
            raise ValueError("synchronised during capture")

    expected = ValueError if where == "fn" else RuntimeError
    with pytest.raises(expected):
        graphs.capture(graph, fn, stream=fake_cuda.side, generators=[a, b, a])
    assert graph.calls == [("begin", None, "thread_local"), ("end",)]
    assert len(_Graph.made) == 2
    release = _Graph.made[1]
    assert release.registered == [a, b]
    assert release.calls == [("begin", None, "thread_local"), ("end",)]
    assert fake_cuda.log[-1] == ("current", "waits for", "side")


def test_failed_release_warns_and_keeps_the_captures_error(fake_cuda):
    graph = _Graph()
    _Graph.fail_end.append(True)  # the release's capture fails too

    def fn():
        raise ValueError("the first error")

    with pytest.warns(RuntimeWarning, match="could not be taken out of capture mode"):
        with pytest.raises(ValueError, match="the first error"):
            graphs.capture(graph, fn, stream=fake_cuda.side, generators=[_gen()])


def test_graph_cache_keeps_the_newest_graphs_one_pool_and_failures(monkeypatch):
    """GraphCache (with the stand-in capture): each capture returns the eager result and keeps
    (graph, inputs, output) under its key in the first graph's pool; a failed capture is kept
    as a failure; past the limit the least recently *used* entry goes; clear() drops the
    pool too."""
    import graph_stand_in
    from graph_stand_in import fake_warm_then_capture

    monkeypatch.setattr(graphs, "warm_then_capture", fake_warm_then_capture)
    monkeypatch.setattr(graph_stand_in, "FAILING", {"bad"})
    cache = graphs.GraphCache(limit=2)

    def add(key, what="ok"):
        x = torch.full((2,), float(key))
        return cache.capture(key, lambda: x * 2, lambda: x * 3, (x,), device=x.device, what=what)

    assert torch.equal(add(1), torch.full((2,), 2.0))  # the eager run's result
    pool = cache.pool
    assert pool is not None and cache.use(1)[1][0].eq(1).all()
    add(2)
    assert cache.pool == pool  # the first graph's pool serves the later ones
    assert cache.use(1) is not None  # 1 is now the most recently used: 2 goes next
    add(3, what="bad")
    assert list(cache) == [1, 3] and cache.failed(3) and not cache.failed(1)
    assert cache.use(3) is None and cache.use(4) is None and not cache.failed(4)
    graph, (x,), out = cache.use(1)
    x.fill_(5.0)
    graph.replay()
    assert torch.equal(out, torch.full((2,), 15.0))  # a replay reads the input buffers
    cache.clear()
    assert not cache and cache.pool is None
    with pytest.raises(ValueError, match="at least 1"):
        graphs.GraphCache(limit=0)
