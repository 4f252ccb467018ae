"""The GPT's teacher-forced latent pass through CUDA graphs.

After generation the GPT runs once more over ``[conditioning; text; codes]`` to give s2mel
its latents (:meth:`UnifiedVoice.forward`, :meth:`UnifiedVoice.forward_packed`). Run op by op
that pass is ~290 kernel launches from Python for a few ms of GPU work at batch 1, so its
time is the host's: 8.6 to 26 ms of ``tts bench``'s stage on the H100 machines of
docs/benchmarks.md (runs DR, EG); 7.3 ms op by op against 3.6 ms from a graph in
scripts/device/latent_profile.py (run EH).

:class:`StackGraphs` runs the 24-layer stack instead as one CUDA graph per (rows, length,
dtype, autocast) key. The length is the sequence's rounded up to :data:`BUCKET` positions,
zeros after the real ones: attention is causal, so no real position sees a padded one, and
one graph serves every sequence of its bucket. A key's first call runs eagerly at the padded
length; its second does too (its result, and the graph's warm-up) and captures the graph;
later calls copy their input into the graph's buffer and replay it. So a length met once (a
process's one GPT call) costs no capture. All run the same kernels on the same shapes, so an
eager call and a replay give the same bits; against the stack run at the
unpadded length the matrix products differ in their row count, so half precision may round
differently (tests/test_gpu.py measures it).

Off CUDA, with autograd on, while another graph is being captured, or above
:data:`MAX_POSITIONS` rows x positions (where the GPU's work outlasts the launches), the stack
runs as is.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict

import torch
from torch import nn

from tts.fast.graphs import capture

BUCKET = 32  # positions per length bucket (the pass is ~600 positions for 10 s of audio)
# Graphs only up to this many rows x bucketed positions. Above it the pass's GPU work outlasts
# the host's launches, and the padding would only add work: at 16 rows of 598 positions the
# H100 took 23.8 ms op by op against 25.7 ms from a graph at 640 (run EH).
MAX_POSITIONS = 4096
MAX_GRAPHS = 8  # graphs kept per stack, least recently used dropped first
# The call of a key that captures its graph (1: its first; see the module docstring). Read at
# each call, so tests can set it.
CAPTURE_ON_CALL = 2
# Captures and replays by every runner (tests check that a pass really ran from a graph).
COUNTS = {"captures": 0, "replays": 0}
# Each model's runner (runner_for); weak, so a dropped model takes its graphs with it.
_RUNNERS: weakref.WeakKeyDictionary[nn.Module, StackGraphs] = weakref.WeakKeyDictionary()


class StackGraphs:
    """A callable that runs ``stack(x)`` (a :class:`~tts.models.gpt.GPT2Model`, causal, no
    cache) for ``x`` [B, n, d] through CUDA graphs on CUDA (see the module docstring)."""

    def __init__(
        self,
        stack: nn.Module,
        bucket: int = BUCKET,
        max_graphs: int = MAX_GRAPHS,
        max_positions: int = MAX_POSITIONS,
    ):
        if min(bucket, max_graphs, max_positions) < 1:
            raise ValueError(
                "bucket, max_graphs and max_positions must be >= 1, got "
                f"{bucket}, {max_graphs}, {max_positions}"
            )
        self.stack = stack
        self.bucket = int(bucket)
        self.max_graphs = int(max_graphs)
        self.max_positions = int(max_positions)
        # key -> (graph, input buffer, output buffer), or None where a capture failed
        self.graphs: OrderedDict[tuple, tuple | None] = OrderedDict()
        self.eager_calls: dict[tuple, int] = {}  # keys without a graph yet: calls so far
        self.pool = None  # one memory pool for all of them: they never run at the same time
        self.weights = _weights(stack)
        self.captures = 0  # graphs captured
        self.replays = 0  # calls served by a replay

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self._graphable(x):
            return self.stack(x)
        weights = _weights(self.stack)
        if weights != self.weights:  # weights moved or replaced: the graphs read the old ones
            self.clear()
            self.weights = weights
        b, n, d = x.shape
        length = -(-n // self.bucket) * self.bucket
        if b * length > self.max_positions:
            return self.stack(x)
        key = (b, length, d, x.dtype, x.device, _autocast_state(x.device))
        if key in self.graphs:
            self.graphs.move_to_end(key)
            hit = self.graphs[key]
            if hit is None:  # its capture failed: eager at the padded length
                return self.stack(_padded(x, length))[:, :n]
            graph, static_in, static_out = hit
            static_in[:, :n].copy_(x)
            static_in[:, n:].zero_()
            graph.replay()
            self.replays += 1
            COUNTS["replays"] += 1
            return static_out[:, :n].clone()
        calls = self.eager_calls.get(key, 0) + 1
        if calls < CAPTURE_ON_CALL:
            if len(self.eager_calls) >= 64:  # many one-off lengths: forget them
                self.eager_calls.clear()
            self.eager_calls[key] = calls
            return self.stack(_padded(x, length))[:, :n]
        self.eager_calls.pop(key, None)
        return self._capture(key, x, length)

    @staticmethod
    def _graphable(x: torch.Tensor) -> bool:
        """On CUDA, without autograd, and not inside another graph's capture."""
        return (
            x.device.type == "cuda"
            and not torch.is_grad_enabled()
            and not torch.cuda.is_current_stream_capturing()
        )

    def _capture(self, key: tuple, x: torch.Tensor, length: int) -> torch.Tensor:
        """Run ``x`` eagerly at the padded length on a side stream (this call's result and the
        graph's warm-up), then capture the graph there."""
        n = x.size(1)
        static_in = _padded(x, length)
        device = x.device
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            result = self.stack(static_in)[:, :n].clone()
        torch.cuda.current_stream(device).wait_stream(stream)
        result.record_stream(torch.cuda.current_stream(device))
        graph = torch.cuda.CUDAGraph()
        captured: list[torch.Tensor] = []
        enabled, dtype = key[-1]

        def record() -> None:
            # Autocast's cache of cast weights must not outlive the capture (torch's rule for
            # graphs): every replay casts anew, inside the graph.
            with torch.autocast(device.type, dtype=dtype, enabled=enabled, cache_enabled=False):
                captured.append(self.stack(static_in))

        try:
            capture(graph, record, stream=stream, pool=self.pool)
        except Exception as exc:  # noqa: BLE001 - this call's result is already computed
            from tts.fast import fallback

            fallback("GPT latent pass CUDA graph capture", exc)
            self.graphs[key] = None
            return result
        if self.pool is None:
            self.pool = graph.pool()
        self.graphs[key] = (graph, static_in, captured[0])
        self.captures += 1
        COUNTS["captures"] += 1
        while len(self.graphs) > self.max_graphs:
            self.graphs.popitem(last=False)
        return result

    def clear(self) -> None:
        """Drop every graph and its buffers (keys start again from their first call)."""
        self.graphs.clear()
        self.eager_calls.clear()
        self.pool = None


def runner_for(model: nn.Module) -> StackGraphs:
    """The :class:`StackGraphs` of ``model`` (a :class:`~tts.models.gpt.UnifiedVoice`): one
    per model, made on first use (and anew if its stack was replaced), so its graphs serve
    every later pass of that model."""
    runner = _RUNNERS.get(model)
    if runner is None or runner.stack is not model.gpt:
        runner = _RUNNERS[model] = StackGraphs(model.gpt)
    return runner


def install(model: nn.Module) -> StackGraphs:
    """Make ``model``'s teacher-forced passes run its layer stack through its
    :func:`runner_for` (what the Engine does on CUDA); returns the runner."""
    model.stack_runner = runner_for(model)
    return model.stack_runner


def graphed_run_stack(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A replacement for ``UnifiedVoice.run_stack`` (:func:`tts.fast.patched`)."""
    return runner_for(model)(x)


def _padded(x: torch.Tensor, length: int) -> torch.Tensor:
    """``x`` [B, n, d] as a new [B, length, d] tensor, zeros after position n."""
    out = x.new_zeros(x.size(0), length, x.size(2))
    out[:, : x.size(1)].copy_(x)
    return out


def _autocast_state(device: torch.device) -> tuple[bool, torch.dtype]:
    """Whether autocast is on for ``device``'s type, and its dtype: part of a graph's key, as
    the kernels captured depend on it."""
    kind = device.type
    return torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)


def _weights(stack: nn.Module) -> tuple:
    """Where each weight lives: a graph reads its weights by address (so new values written in
    place are seen, weights moved or replaced are not)."""
    return tuple(p.data_ptr() for p in stack.parameters())
