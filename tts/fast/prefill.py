"""The GPT's prefill through CUDA graphs, one per prompt-length bucket.

Every generation call starts by running its prompt (conditioning latents, text, start code)
through the layer stack once: the keys and values each later step attends to, and step 0's
logits (:meth:`tts.fast.decode.StaticDecoder.start`). Op by op that is ~33 dispatched ops per
layer (74 for the 2-layer fixture GPT, counted with torch's profiler on the CPU), ~800 with
~340 kernel launches for the 24-layer GPT, for about a millisecond of GPU work at batch 1: its
time is the host's, in ``tts bench``'s decoder set-up (11-12 ms on the H100 with the rest of
the set-up, docs/benchmarks.md).

:func:`runner_for` runs it instead through :class:`~tts.fast.padded_graphs.PaddedGraphs`: one
graph per (rows, prompt length rounded up to :data:`BUCKET`, dtype, autocast state). The
prompt is zero-padded after its end; attention is causal, so no real position sees a padded
one; step 0's logits are read at the last real position, whose index is a graph input. The
padded positions' keys and values are computed and not used: the decoder copies the real
positions into its cache. Against the prompt run at its own length the matrix products differ
in their row count, so float rounding may differ (tests/test_gpu.py measures it).

Off CUDA, with autograd on, inside another capture, or above :data:`MAX_POSITIONS` rows x
positions, the prompt runs as it is (what the decoder did before, into a cache of its own).
The decoder uses the runner where it replays CUDA graphs (``use_graph``) and no row of the
prompt is padded.
"""

from __future__ import annotations

import torch
from torch import nn

from tts.fast.padded_graphs import PaddedGraphs, registered, registered_if_any

BUCKET = 32  # positions per length bucket (a prompt is ~34 conditioning positions + its text)
MAX_POSITIONS = 4096  # rows x bucketed positions (batch 16 of a 10 s row's prompt: ~2600)
MAX_GRAPHS = 8  # graphs kept per model, least recently used dropped first
# Captures and replays by every runner (tests check that a prefill really ran from a graph).
COUNTS = {"captures": 0, "replays": 0}


def runner_for(model: nn.Module) -> PaddedGraphs:
    """The prefill runner of ``model`` (a :class:`~tts.models.gpt.UnifiedVoice`), made on
    first use and anew if its stack, final norm or head was replaced. ``runner(emb)`` for the
    prompt ``emb`` [B, n, d] returns (step 0's logits [B, vocab] in float32, keys, values
    [layers, B, heads, L, head_dim] with L >= n, of which positions [0, n) are the prompt's)."""
    return registered(
        model,
        "prefill",
        [model.gpt, model.final_norm, model.mel_head],
        lambda parts: PaddedGraphs(
            _prefill_padded,
            parts,
            name="GPT prefill CUDA graph capture",
            bucket=BUCKET,
            max_graphs=MAX_GRAPHS,
            max_positions=MAX_POSITIONS,
            trim=False,
            counts=COUNTS,
            unpadded=_prefill,
        ),
    )


def release(model: nn.Module) -> None:
    """Drop ``model``'s prefill graphs and their memory (captured again when next needed)."""
    runner = registered_if_any(model, "prefill")
    if runner is not None:
        runner.clear()


def cache_dtype(head: nn.Module, prompt_dtype: torch.dtype) -> torch.dtype:
    """The KV cache's dtype: the weights' where they are half precision (a GPT run under
    autocast gets a float32 prompt, but every key and value is a half-precision product's
    output, which a cache in that dtype holds exactly), else the prompt's."""
    weights = head.weight.dtype
    return weights if weights in (torch.bfloat16, torch.float16) else prompt_dtype


def _prefill(parts: nn.ModuleList, emb: torch.Tensor, last: torch.Tensor | None = None):
    """The stack over ``emb`` [B, L, d] into a new cache; step 0's logits at position ``last``
    [B] of each row (None: the last one)."""
    stack, final_norm, head = parts
    b, length, _ = emb.shape
    cache = stack.new_cache(b, length, emb.device, cache_dtype(head, emb.dtype))
    hidden = stack(emb, cache=cache, start=0)
    at = hidden[:, -1] if last is None else hidden[torch.arange(b, device=emb.device), last]
    return head(final_norm(at)).float(), cache.k, cache.v


def _prefill_padded(parts: nn.ModuleList, emb: torch.Tensor, n: torch.Tensor):
    """:func:`_prefill` of a prompt zero-padded after ``n`` [B] positions."""
    return _prefill(parts, emb, n - 1)
