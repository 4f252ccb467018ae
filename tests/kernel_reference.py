"""Op-by-op references for the hand-written Triton kernels (tests/test_fast.py on the CPU
through Triton's interpreter, tests/test_gpu.py on CUDA)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_reference(x, w, b, ln=None, gelu=False, residual=None):
    """What :func:`tts.fast.linear.linear` computes, op by op with the same rounding steps, and
    per element the error two roundings of it may differ by in bf16: 2^-7 (two half-ulps) of
    the sum of the magnitudes that were rounded. Returns (result, tolerance)."""
    h = x
    if ln is not None:
        h = F.layer_norm(x.float(), ln[0].shape, ln[0].float(), ln[1].float(), ln[2]).to(x.dtype)
    y = F.linear(h.double(), w.double(), b.double()).to(x.dtype)
    mag = h.double().abs() @ w.double().abs().t() + b.double().abs()
    if gelu:
        y = F.gelu(y.float(), approximate="tanh").to(x.dtype)
        mag = mag * 1.2  # GELU's slope is at most ~1.13
    if residual is not None:
        y = (y.float() + residual.float()).to(x.dtype)
        mag = mag + residual.double().abs()
    return y, 2**-7 * (mag + y.double().abs())


def assert_rounding_close(out: torch.Tensor, want: torch.Tensor, tol: torch.Tensor) -> None:
    """float32: within 1e-5; half precision: within ``tol`` (from :func:`linear_reference`)."""
    if out.dtype == torch.float32:
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    else:
        worst = float(((out.double() - want.double()).abs() - tol).max())
        assert worst <= 0, f"beyond the rounding bound by {worst}"


def assert_qkv_written(q, kv, pos: int, want, tol) -> None:
    """A qkv projection with the KV write: the queries ``q`` [rows, width] and the keys /
    values written at cache position ``pos`` of ``kv`` [2, rows, heads, capacity, head_dim]
    match ``want`` / ``tol`` (:func:`linear_reference` of the whole projection), and nothing
    else of the cache was written (it must have been all zeros). Zeroes position ``pos``."""
    rows, width = q.shape
    for got, part in ((q, 0), (kv[0, :, :, pos], 1), (kv[1, :, :, pos], 2)):
        cols = slice(part * width, (part + 1) * width)
        assert_rounding_close(got.reshape(rows, width), want[:, cols], tol[:, cols])
    kv[:, :, :, pos] = 0
    assert not bool(kv.any())


class CountedLaunches:
    """A Triton kernel that counts its launches: ``kernel[grid](...)`` through it adds one to
    ``counts[name]`` (which kernel a dispatcher chose, e.g. tts.fast.linear's two)."""

    def __init__(self, counts: dict, name: str, kernel) -> None:
        self.counts, self.name, self.kernel = counts, name, kernel

    def __getitem__(self, grid):
        self.counts[self.name] += 1
        return self.kernel[grid]
