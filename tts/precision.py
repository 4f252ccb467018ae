"""Precision settings for the parts that may trade float32 exactness for speed.

The reference runs everything but the GPT in float32. On CUDA with the fast paths, three parts
may run otherwise when asked: the s2mel flow-matching solve and BigVGAN (``render_precision``)
and the w2v-bert feature encoder of the prompt conditioning (``features_precision``). Each
takes one of :data:`PRECISIONS`:

* ``float32``: the reference's arithmetic (TF32 stays off, as :func:`tts.pipeline.
  configure_cudnn` leaves it);
* ``tf32``: float32 tensors, with matrix products and convolutions on TF32 tensor cores
  (inputs rounded to 10 mantissa bits, float32 sums);
* ``bfloat16`` / ``float16``: autocast, so matrix products run in half precision.

docs/gpu.md lists the measured bound of each.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS = ("float32", "tf32", "bfloat16", "float16")
HALF = {"bfloat16": torch.bfloat16, "float16": torch.float16}  # the autocast precisions


@contextlib.contextmanager
def precision_context(precision: str, device: torch.device) -> Iterator[None]:
    """Autocast / TF32 settings for the code inside the block, restored afterwards.

    TF32 only exists on CUDA; ``tf32`` on another device changes nothing. The TF32 switches are
    process-wide: they are read when a kernel is launched, so work queued inside the block
    keeps them and work launched after it does not."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    if precision in HALF:
        # No autocast weight cache: a CUDA graph must not keep pointers to cached casts.
        with torch.autocast(device.type, dtype=HALF[precision], cache_enabled=False):
            yield
        return
    if precision == "tf32" and device.type == "cuda":
        saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        return
    yield
