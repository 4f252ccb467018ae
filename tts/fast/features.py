"""The w2v-bert encoder's forward as CUDA graphs, one per batch size and length bucket.

A new voice prompt's conditioning runs w2v-bert (layers 0-16 of a 1024-wide conformer) on a few
hundred frames. On a GPU that forward is bound by the host issuing its ~900 small kernels, not
by the GPU (docs/benchmarks.md, run CD: the speaker conditioning took two to three times its
kernels' busy time). A CUDA graph replays them with one launch.

A graph is fixed to its input shape, and every prompt has its own length. So the frames are
padded at the end to a multiple of :data:`BUCKET` and masked, and one graph serves every
prompt whose length falls in that bucket. Padding changes nothing a kept frame sees: masked
keys get no attention weight, and the encoder zeroes masked frames before its convolutions,
which are causal (:meth:`tts.models.w2v_bert.SemanticFeatures.batch` pads its shorter rows the
same way). The kept frames' outputs equal the unpadded forward's up to the float rounding of
matrix products of other sizes (tests/test_semantic.py, tests/test_gpu.py).

The graphs of one encoder share one memory pool, and each call copies its inputs into the
graph's, replays and copies the output out before returning, so no graph's live buffers are
needed across another graph's replay. A failed capture falls back to the plain forward for
that shape (recorded in :data:`tts.fast.FALLBACKS`).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from tts.fast.graphs import capture

BUCKET = 64  # frames (20 ms each: 1.28 s of audio) per length bucket
MAX_GRAPHS = 8  # graphs kept per encoder (least recently used dropped first)


def bucketed(frames: int, bucket: int = BUCKET) -> int:
    """``frames`` rounded up to a multiple of ``bucket``."""
    return -(-frames // bucket) * bucket


def pad_frames(
    feats: torch.Tensor, mask: torch.Tensor, frames: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``feats`` [B, T, F] and ``mask`` [B, T] padded at the end to ``frames`` (zeros, masked)."""
    extra = frames - feats.size(1)
    return nn.functional.pad(feats, (0, 0, 0, extra)), nn.functional.pad(mask, (0, extra))


class GraphedEncoder:
    """``model(input_features, attention_mask).last_hidden_state`` for a w2v-bert ``model`` on
    CUDA through one CUDA graph per (batch size, length bucket); see the module notes."""

    def __init__(self, model: nn.Module, bucket: int = BUCKET) -> None:
        self.model = model
        self.bucket = bucket
        self.graphs: OrderedDict[tuple, tuple | None] = OrderedDict()
        self.pool = None
        self.captures = 0  # graphs captured so far (tests count them)

    def _plain(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_features=feats, attention_mask=mask).last_hidden_state

    @torch.no_grad()
    def __call__(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``last_hidden_state`` [B, T, hidden] of ``feats`` [B, T, F] with ``mask`` [B, T]."""
        frames = feats.size(1)
        padded = pad_frames(feats, mask.to(torch.int64), bucketed(frames, self.bucket))
        device = feats.device
        # cuDNN's mode is in the key: a graph keeps the kernels chosen when it was captured.
        key = (
            tuple(padded[0].shape),
            feats.dtype,
            torch.backends.cudnn.benchmark,
            torch.backends.cudnn.deterministic,
        )
        if key in self.graphs and self.graphs[key] is None:  # its capture failed: eager
            return self._plain(*padded)[:, :frames]
        hit = self.graphs.get(key)
        if hit is not None:
            self.graphs.move_to_end(key)
            graph, static_in, static_out = hit
            for dst, src in zip(static_in, padded, strict=True):
                dst.copy_(src)
            graph.replay()
            return static_out[:, :frames].clone()
        return self._capture(key, padded, device)[:, :frames]

    def _capture(self, key: tuple, padded: tuple, device: torch.device) -> torch.Tensor:
        """Run ``padded`` eagerly on a side stream (the warm-up a capture needs, and this
        call's result), then capture the graph for ``key``."""
        static_in = tuple(t.clone() for t in padded)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            result = self._plain(*static_in)
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        captured: list[torch.Tensor] = []
        try:
            record = lambda: captured.append(self._plain(*static_in))  # noqa: E731
            capture(graph, record, stream=stream, pool=self.pool)
        except Exception as exc:  # noqa: BLE001 - this call's result is already computed
            from tts.fast import fallback

            fallback("w2v-bert CUDA graph capture", exc)
            self.graphs[key] = None
            return result
        if self.pool is None:
            self.pool = graph.pool()
        self.captures += 1
        self.graphs[key] = (graph, static_in, captured[0])
        while len(self.graphs) > MAX_GRAPHS:
            self.graphs.popitem(last=False)
        return result
