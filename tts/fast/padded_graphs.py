"""A function of a variable-length sequence through CUDA graphs, one per length bucket.

Some passes are a few ms of GPU work issued as hundreds of small kernels, so at batch 1 their
time is the host's: the GPT's teacher-forced latent pass (:mod:`tts.fast.latent_pass`), the
conformer and perceiver that turn a prompt's features into the GPT's speaker latent and
emotion vector (:mod:`tts.fast.conditioning`). A CUDA graph replays such a pass in one launch,
but only for the shapes it was captured with. :class:`PaddedGraphs` makes one graph serve many
lengths: the sequence ``x`` [B, n, ...] is padded with zeros to ``n`` rounded up to
``bucket`` positions, and the function must give the unpadded result from the padded input
(causal attention does; the conditioning encoders are told the real length). Graphs are
kept per (rows, bucketed length, the extra inputs' shapes and dtypes, dtype, device,
autocast state).

A key's first call runs eagerly at the padded length; its :data:`CAPTURE_ON_CALL`-th call
runs eagerly too (its result, and the graph's warm-up) and captures the graph; later calls
copy their inputs into the graph's buffers and replay it. So a length met once (a process
that runs the pass once) costs no capture. Eager calls and replays run the same kernels on
the same shapes, so they give the same bits; against the function run at the unpadded length
the matrix products differ in their row count, so float rounding may differ (tests/test_gpu.py
measures it).

Off CUDA, with autograd on, while another graph is being captured, or above ``max_positions``
rows x positions (where the GPU's work outlasts the launches), the function runs unpadded.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable

import torch
from torch import nn

from tts.fast.graphs import GraphCache

# The call of a key that captures its graph (1: its first). Read at each call, so tests can
# set it.
CAPTURE_ON_CALL = 2
ONE_OFF_KEYS = 64  # keys remembered before their capture; beyond, the list starts anew


class PaddedGraphs:
    """``fn(x, *extras)`` for ``x`` [B, n, ...] through a CUDA graph per length bucket (see the
    module docstring).

    ``fn(module, padded, n, *extras)`` gets ``module`` (whose weights it reads), ``x`` padded
    to the bucket, the real length ``n`` as a [B] int64 tensor on ``x``'s device (a graph
    input, so one graph serves every ``n`` of its bucket) and the ``extras`` (tensors copied
    into the graph's buffers on each replay). It must return one tensor, shaped [B, padded
    length, ...] with ``trim`` (cut back to ``n`` positions here), or without ``trim`` a
    tensor or a tuple of tensors the caller reads knowing the padding. ``fn`` should hold no
    module itself: a deep copy of the runner (made with a model's) then runs the copied
    module. A graph reads the weights by address: moved or
    replaced weights drop the graphs.
    ``name`` is what :func:`tts.fast.fallback` records if a capture fails; ``counts`` a dict
    whose ``captures`` and ``replays`` grow with this runner's (tests check that a pass ran
    from a graph). ``unpadded(module, x, *extras)``, if given, is what runs ``x`` as it is
    (off CUDA, above ``max_positions``) instead of ``fn`` with the real length: e.g. the
    plain module, whose bits a masked form on an unpadded input need not repeat.
    """

    def __init__(
        self,
        fn: Callable[..., torch.Tensor],
        module: nn.Module,
        *,
        name: str,
        bucket: int,
        max_graphs: int,
        max_positions: int,
        trim: bool,
        counts: dict[str, int] | None = None,
        unpadded: Callable[..., torch.Tensor] | None = None,
    ):
        if min(bucket, max_graphs, max_positions) < 1:
            raise ValueError(
                "bucket, max_graphs and max_positions must be >= 1, got "
                f"{bucket}, {max_graphs}, {max_positions}"
            )
        self.fn, self.module, self.name, self.trim = fn, module, name, trim
        self.unpadded = unpadded
        self.bucket = int(bucket)
        self.max_graphs = int(max_graphs)
        self.max_positions = int(max_positions)
        # key -> (graph, (padded x, n, *extras) buffers, output buffer), or None: failed
        self.graphs = GraphCache(self.max_graphs)
        self.eager_calls: dict[tuple, int] = {}  # keys without a graph yet: calls so far
        self.weights = _weights(module)
        self.counts = counts if counts is not None else {"captures": 0, "replays": 0}
        self.captures = 0  # graphs captured
        self.replays = 0  # calls served by a replay

    def __deepcopy__(self, memo: dict) -> PaddedGraphs:
        """A runner of the copied module(s) (``tts bench`` deep-copies the Engine's GPT with its
        runners) with no graphs yet, as the captured ones read the original's weights and
        buffers, and adding to the same ``counts`` (a module's tally of every runner)."""
        twin = type(self).__new__(type(self))
        memo[id(self)] = twin
        fresh = {
            "counts": self.counts,
            "graphs": GraphCache(self.max_graphs),
            "eager_calls": {},
            "captures": 0,
            "replays": 0,
        }
        for name, value in vars(self).items():
            setattr(twin, name, fresh[name] if name in fresh else copy.deepcopy(value, memo))
        twin.weights = _weights(twin.module)
        return twin

    def __call__(self, x: torch.Tensor, *extras: torch.Tensor) -> torch.Tensor:
        b, n = x.shape[:2]
        length = -(-n // self.bucket) * self.bucket
        if not self._graphable(x) or b * length > self.max_positions:
            return self._eager(x, n, extras)
        weights = _weights(self.module)
        if weights != self.weights:  # weights moved or replaced: the graphs read the old ones
            self.clear()
            self.weights = weights
        key = (
            tuple(x.shape[:1]) + (length,) + tuple(x.shape[2:]),
            tuple((tuple(e.shape), e.dtype) for e in extras),
            x.dtype,
            x.device,
            _autocast_state(x.device),
        )
        hit = self.graphs.use(key)
        if hit is not None:
            graph, (static_x, static_n, *static_extras), static_out = hit
            static_x[:, :n].copy_(x)
            static_x[:, n:].zero_()  # what a longer input left there
            static_n.fill_(n)
            for dst, src in zip(static_extras, extras, strict=True):
                dst.copy_(src)
            graph.replay()
            self.replays += 1
            self.counts["replays"] = self.counts.get("replays", 0) + 1
            return _cloned(self._cut(static_out, n))
        inputs = (padded(x, length), _lengths(b, n, x.device), *extras)
        if self.graphs.failed(key):  # eager at the padded length
            return self._cut(self._run(*inputs), n)
        calls = self.eager_calls.get(key, 0) + 1
        if calls < CAPTURE_ON_CALL:
            if len(self.eager_calls) >= ONE_OFF_KEYS:  # many one-off lengths: forget them
                self.eager_calls.clear()
            self.eager_calls[key] = calls
            return self._cut(self._run(*inputs), n)
        self.eager_calls.pop(key, None)
        return self._capture(key, inputs, n)

    def _run(self, *inputs: torch.Tensor) -> torch.Tensor:
        """``fn`` on ``inputs`` (padded input, real length, extras), eagerly."""
        return self.fn(self.module, *inputs)

    def _eager(self, x: torch.Tensor, n: int, extras: tuple) -> torch.Tensor:
        """``x`` as it is, without a graph: ``unpadded`` if given, else ``fn`` with the real
        length."""
        if self.unpadded is not None:
            return self.unpadded(self.module, x, *extras)
        return self._run(x, _lengths(x.size(0), n, x.device), *extras)

    def _cut(self, out: torch.Tensor, n: int) -> torch.Tensor:
        return out[:, :n] if self.trim else out

    @staticmethod
    def _graphable(x: torch.Tensor) -> bool:
        """On CUDA, without autograd, and not inside another graph's capture."""
        return (
            x.device.type == "cuda"
            and not torch.is_grad_enabled()
            and not torch.cuda.is_current_stream_capturing()
        )

    def _capture(self, key: tuple, inputs: tuple, n: int) -> torch.Tensor:
        """This call's result, computed eagerly from the graph's input buffers on a side
        stream, then the graph captured there (:func:`warm_then_capture`)."""
        static_in = tuple(t.clone() for t in inputs)
        enabled, dtype = key[-1]

        def run() -> torch.Tensor:
            return _cloned(self._cut(self._run(*static_in), n))

        def record() -> torch.Tensor:
            # Autocast's cache of cast weights must not outlive the capture (torch's rule for
            # graphs): every replay casts anew, inside the graph.
            device_type = static_in[0].device.type
            with torch.autocast(device_type, dtype=dtype, enabled=enabled, cache_enabled=False):
                return self._run(*static_in)

        result = self.graphs.capture(
            key, run, record, static_in, device=static_in[0].device, what=self.name
        )
        if not self.graphs.failed(key):
            self.captures += 1
            self.counts["captures"] = self.counts.get("captures", 0) + 1
        return result

    def clear(self) -> None:
        """Drop every graph and its buffers (keys start again from their first call)."""
        self.graphs.clear()
        self.eager_calls.clear()


# Each model's runners by name (registered()); weak, so a dropped model takes its graphs with it.
_REGISTERED: weakref.WeakKeyDictionary[nn.Module, dict[str, PaddedGraphs]] = (
    weakref.WeakKeyDictionary()
)


def registered(
    model: nn.Module,
    name: str,
    modules: list[nn.Module],
    make: Callable[[nn.ModuleList], PaddedGraphs],
) -> PaddedGraphs:
    """``model``'s runner ``name`` over ``modules`` (parts of ``model``), made by
    ``make(nn.ModuleList(modules))`` on first use, so its graphs serve every later call, and
    anew where those modules were replaced. The runner holds the modules, not the model: the
    registry's key stays weak (and the model's state dict is as it is)."""
    runners = _REGISTERED.setdefault(model, {})
    runner = runners.get(name)
    if runner is None or list(runner.module) != list(modules):
        runner = runners[name] = make(nn.ModuleList(modules))
    return runner


def registered_if_any(model: nn.Module, name: str) -> PaddedGraphs | None:
    """``model``'s runner ``name`` if one was made (:func:`registered`), else None."""
    return _REGISTERED.get(model, {}).get(name)


def _cloned(out: torch.Tensor | tuple[torch.Tensor, ...]):
    """A copy of ``out`` (a tensor or a tuple of them): the graph's buffers are overwritten by
    its next replay."""
    return tuple(t.clone() for t in out) if isinstance(out, tuple) else out.clone()


def padded(x: torch.Tensor, length: int) -> torch.Tensor:
    """``x`` [B, n, ...] as a new [B, length, ...] tensor, zeros after position n."""
    out = x.new_zeros((x.size(0), length, *x.shape[2:]))
    out[:, : x.size(1)].copy_(x)
    return out


def _lengths(b: int, n: int, device: torch.device) -> torch.Tensor:
    """The real length ``n`` for each of ``b`` rows, [b] int64 on ``device``."""
    return torch.full((b,), n, dtype=torch.int64, device=device)


def _autocast_state(device: torch.device) -> tuple[bool, torch.dtype]:
    """Whether autocast is on for ``device``'s type, and its dtype: part of a graph's key, as
    the kernels captured depend on it."""
    kind = device.type
    return torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)


def _weights(module: nn.Module) -> tuple:
    """Where each weight lives: a graph reads its weights by address (so new values written in
    place are seen, weights moved or replaced are not)."""
    return tuple(p.data_ptr() for p in module.parameters())
