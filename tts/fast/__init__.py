"""Fast inference paths: the same functions as the plain modules, built for GPU speed.

* :mod:`tts.fast.decode` - GPT decoding on a static, preallocated KV cache; on CUDA every step
  (forward, logits processors, sampling / beam bookkeeping) is one CUDA-graph replay, with no
  host synchronisation except an "all finished?" test every few steps.
* :mod:`tts.fast.s2mel` - the flow-matching decoder with weight norm fused once, no attention
  mask when no row is padded (flash attention), a selectable precision and the whole Euler loop
  (both classifier-free-guidance branches in one batch) captured as one CUDA graph per shape.
* :mod:`tts.fast.bigvgan` - BigVGAN's anti-aliased activation (upsample x2, Snake/SnakeBeta,
  low-pass + downsample x2) fused into one Triton kernel (or one torch.compile region).

Each fast path computes the same function as the reference path and is checked against the
parity fixtures: :func:`patched` swaps them in for the plain entry points, so the unchanged
parity handlers run the fixture cases through them (tests/test_fast.py on CPU, tests/test_gpu.py
on CUDA).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator

# Every time a fast path could not be used and the plain path ran instead (e.g. a CUDA graph
# capture or a Triton compile failed): (where, reason). Tests assert that it stays empty.
FALLBACKS: list[tuple[str, str]] = []


def triton_runs(x) -> bool:
    """Whether the hand-written Triton kernels of tts.fast can run for tensors like ``x``:
    Triton is installed and ``x`` is on CUDA, or Triton's CPU interpreter is on
    (``TRITON_INTERPRET=1``, the CPU tests). Each kernel module exports it as ``available``."""
    import os

    try:
        import triton  # noqa: F401
    except ImportError:  # pragma: no cover - Triton comes with CUDA builds of torch
        return False
    return x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


def pdl_available(device) -> bool:
    """Whether Triton kernels on ``device`` can use programmatic dependent launch (CUDA, compute
    capability 9.0 or newer: the ``griddepcontrol`` instructions)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return False
    index = torch.cuda.current_device() if device.index is None else device.index
    return _cuda_major(index) >= 9


@functools.cache
def _cuda_major(index: int) -> int:
    """Compute capability major of CUDA device ``index``, looked up once: every kernel launch
    of a decode step asks (~170 times per step), and the lookup is host time on the step's
    critical path when the step runs eagerly or is captured (docs/benchmarks.md, run BJ)."""
    import torch

    return torch.cuda.get_device_capability(index)[0]


def fallback(where: str, exc: BaseException) -> None:
    """Record (and warn about) a fast path that fell back to the plain one."""
    reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    FALLBACKS.append((where, reason))
    warnings.warn(
        f"tts.fast: {where} fell back to the plain path ({reason})", RuntimeWarning, stacklevel=3
    )


@contextlib.contextmanager
def patched(
    gpt: bool = True,
    s2mel: bool = True,
    bigvgan: bool = True,
    s2mel_graphs: bool | None = None,
    bigvgan_mode: str = "auto",
    s2mel_compile: bool = False,
    gpt_compile: bool = False,
    gpt_options: dict | None = None,
    campplus: bool = True,
) -> Iterator[None]:
    """Route the plain entry points through the fast paths while the block runs.

    * ``gpt``: :func:`tts.generation.generate` -> :func:`tts.fast.decode.generate`
      (``gpt_compile``: with the per-step decision logic compiled; ``gpt_options``: keyword
      arguments for it, e.g. ``tts.fast.decode.VARIANTS["graphf"]``), the teacher-forced
      passes' layer stack (``UnifiedVoice.run_stack``) through :mod:`tts.fast.latent_pass`,
      and the prompt encoders (``get_conditioning``, ``get_emo_conditioning``) through
      :mod:`tts.fast.conditioning`;
    * ``campplus``: ``CAMPPlus.forward`` through its CUDA graphs
      (:func:`tts.fast.conditioning.campplus_runner`; off CUDA the plain forward);
    * ``s2mel``: :meth:`tts.models.cfm.CFM.solve` -> :func:`tts.fast.s2mel.solve`;
    * ``bigvgan``: :class:`tts.models.bigvgan.Activation1d` forward -> the fused activation.
    """
    import tts.generation
    from tts.fast import bigvgan as fast_bigvgan
    from tts.fast import conditioning, latent_pass
    from tts.fast import decode as fast_decode
    from tts.fast import s2mel as fast_s2mel
    from tts.models import bigvgan as plain_bigvgan
    from tts.models import cfm as plain_cfm
    from tts.models.campplus import CAMPPlus
    from tts.models.gpt import EmotionPath, UnifiedVoice

    saved = (
        tts.generation.generate,
        UnifiedVoice.run_stack,
        UnifiedVoice.get_conditioning,
        EmotionPath.get_emo_conditioning,
        plain_cfm.CFM.solve,
        plain_bigvgan.Activation1d.forward,
        CAMPPlus.forward,
    )
    try:
        if gpt:
            options = dict(gpt_options or {})
            if gpt_compile:
                options["compile_logic"] = True
            tts.generation.generate = (
                functools.partial(fast_decode.generate, **options)
                if options
                else fast_decode.generate
            )
            UnifiedVoice.run_stack = latent_pass.graphed_run_stack
            UnifiedVoice.get_conditioning = conditioning.graphed_get_conditioning
            EmotionPath.get_emo_conditioning = conditioning.graphed_get_emo_conditioning
        if s2mel:
            plain_cfm.CFM.solve = fast_s2mel.patched_solve(
                graphs=s2mel_graphs, compile=s2mel_compile
            )
        if bigvgan:
            plain_bigvgan.Activation1d.forward = fast_bigvgan.patched_forward(bigvgan_mode)
        if campplus:
            CAMPPlus.forward = conditioning.graphed_campplus_forward
        yield
    finally:
        (
            tts.generation.generate,
            UnifiedVoice.run_stack,
            UnifiedVoice.get_conditioning,
            EmotionPath.get_emo_conditioning,
            plain_cfm.CFM.solve,
            plain_bigvgan.Activation1d.forward,
            CAMPPlus.forward,
        ) = saved
