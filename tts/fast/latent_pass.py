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
one graph serves every sequence of its bucket (:class:`~tts.fast.padded_graphs.PaddedGraphs`:
a key's graph is captured at its second call, so a length met once, a process's one GPT call,
costs no capture; an eager call and a replay give the same bits; against the stack run at the
unpadded length the matrix products differ in their row count, so half precision may round
differently: tests/test_gpu.py measures it).

Off CUDA, with autograd on, while another graph is being captured, or above
:data:`MAX_POSITIONS` rows x positions (where the GPU's work outlasts the launches), the stack
runs as is.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from tts.fast.padded_graphs import PaddedGraphs

BUCKET = 32  # positions per length bucket (the pass is ~600 positions for 10 s of audio)
# Graphs only up to this many rows x bucketed positions. Above it the pass's GPU work outlasts
# the host's launches, and the padding would only add work: at 16 rows of 598 positions the
# H100 took 23.8 ms op by op against 25.7 ms from a graph at 640 (run EH).
MAX_POSITIONS = 4096
MAX_GRAPHS = 8  # graphs kept per stack, least recently used dropped first
# Captures and replays by every runner (tests check that a pass really ran from a graph).
COUNTS = {"captures": 0, "replays": 0}
# Each model's runner (runner_for); weak, so a dropped model takes its graphs with it.
_RUNNERS: weakref.WeakKeyDictionary[nn.Module, StackGraphs] = weakref.WeakKeyDictionary()


class StackGraphs(PaddedGraphs):
    """A callable that runs ``stack(x)`` (a :class:`~tts.models.gpt.GPT2Model`, causal, no
    cache) for ``x`` [B, n, d] through CUDA graphs on CUDA (see the module docstring)."""

    def __init__(
        self,
        stack: nn.Module,
        bucket: int = BUCKET,
        max_graphs: int = MAX_GRAPHS,
        max_positions: int = MAX_POSITIONS,
    ):
        super().__init__(
            _run_stack,
            stack,
            name="GPT latent pass CUDA graph capture",
            bucket=bucket,
            max_graphs=max_graphs,
            max_positions=max_positions,
            trim=True,
            counts=COUNTS,
        )
        self.stack = stack


def _run_stack(stack: nn.Module, x: torch.Tensor, _n: torch.Tensor) -> torch.Tensor:
    """The stack over padded ``x``: causal, so the zeros after position n change nothing
    before it."""
    return stack(x)


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
