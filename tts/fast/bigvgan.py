"""BigVGAN's anti-aliased activation as one fused kernel.

:class:`tts.models.bigvgan.Activation1d` runs, per channel: replicate pad, x2 transposed conv
with a 12-tap Kaiser sinc (times 2), crop, Snake/SnakeBeta, replicate pad, 12-tap low-pass conv
with stride 2 - about ten kernels and four full-size intermediates (two of them at twice the
length), for each of the ~55 activations of the vocoder. The fused kernel reads ``x`` once and
writes the output once; everything in between stays in registers:

    out[t] = sum_j fd[j] * snake(u[clamp(2t + j - 5, 0, 2T-1)])
    u[n]   = 2 * sum_{k = n+15 (mod 2)} fu[k] * x[clamp((n + 15 - k) / 2 - 5, 0, T-1)]

(indices for ratio 2 and 12 taps; the kernel takes the ratio and tap count as constants). The
clamps are the replicate paddings; the accumulation is in float32 whatever the input dtype.

Modes: ``triton`` (CUDA, or the Triton interpreter with TRITON_INTERPRET=1), ``compile``
(torch.compile of the plain forward: fuses the elementwise work around the two convolutions),
``eager`` (the plain forward) and ``auto`` (triton on CUDA when Triton imports, else eager).
"""

from __future__ import annotations

import functools

import torch

from tts.models import bigvgan as _bigvgan

try:  # Triton is optional: without it (or on the CPU) the plain forward runs.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

MODES = ("auto", "triton", "compile", "eager")
_BROKEN: dict[str, bool] = {}  # modes that failed once in this process


if triton is not None:

    @triton.jit
    def _aa_activation_kernel(
        x_ptr, y_ptr, alpha_ptr, beta_ptr, fu_ptr, fd_ptr,
        T, C, stride_xb, stride_xc, stride_yb, stride_yc,
        R: tl.constexpr, K: tl.constexpr, PAD_UP: tl.constexpr, CROP: tl.constexpr,
        PAD_DN: tl.constexpr, HAS_BETA: tl.constexpr, LOGSCALE: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0)
        b = row // C
        c = row % C
        t = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        tmask = t < T
        alpha = tl.load(alpha_ptr + c).to(tl.float32)
        if HAS_BETA:
            beta = tl.load(beta_ptr + c).to(tl.float32)
        else:
            beta = alpha
        if LOGSCALE:
            alpha = tl.exp(alpha)
            beta = tl.exp(beta)
        inv_beta = 1.0 / (beta + 1e-9)
        x_row = x_ptr + b * stride_xb + c * stride_xc
        tu = T * R
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for j in tl.static_range(K):
            n = R * t + (j - PAD_DN)
            n = tl.minimum(tl.maximum(n, 0), tu - 1)
            m = n + CROP
            r = m % R
            u = tl.zeros([BLOCK], dtype=tl.float32)
            for q in tl.static_range(K // R):
                k = r + R * q
                i = (m - k) // R - PAD_UP
                i = tl.minimum(tl.maximum(i, 0), T - 1)
                xv = tl.load(x_row + i, mask=tmask, other=0.0).to(tl.float32)
                u += tl.load(fu_ptr + k) * xv
            u = u * R
            s = tl.sin(u * alpha)
            acc += tl.load(fd_ptr + j) * (u + inv_beta * (s * s))
        tl.store(y_ptr + b * stride_yb + c * stride_yc + t, acc.to(y_ptr.dtype.element_ty),
                 mask=tmask)


def fused_activation(module, x: torch.Tensor, block: int = 256) -> torch.Tensor:
    """``module(x)`` for an :class:`Activation1d` through the Triton kernel."""
    if triton is None:
        raise RuntimeError("the fused BigVGAN activation needs Triton")
    up, down, act = module.upsample, module.downsample.lowpass, module.act
    ratio = up.ratio
    taps = up.filter.numel()
    if down.filter.numel() != taps or down.stride != ratio or taps % ratio:
        raise ValueError("fused activation: up/down filters must share tap count and ratio")
    x = x.contiguous()
    b, c, t = x.shape
    y = torch.empty_like(x)
    fu = up.filter.reshape(-1).to(device=x.device, dtype=torch.float32).contiguous()
    fd = down.filter.reshape(-1).to(device=x.device, dtype=torch.float32).contiguous()
    has_beta = hasattr(act, "beta")
    alpha = act.alpha.detach().contiguous()
    beta = act.beta.detach().contiguous() if has_beta else alpha
    grid = (b * c, triton.cdiv(t, block))
    _aa_activation_kernel[grid](
        x, y, alpha, beta, fu, fd, t, c,
        x.stride(0), x.stride(1), y.stride(0), y.stride(1),
        R=ratio, K=taps, PAD_UP=up.pad, CROP=up.crop_left, PAD_DN=down.pad_left,
        HAS_BETA=has_beta, LOGSCALE=bool(act.logscale), BLOCK=block,
    )
    return y


# The plain forward, kept before tts.fast.patched() can replace it.
_PLAIN = {"forward": _bigvgan.Activation1d.forward}


@functools.lru_cache(maxsize=1)
def _compiled_forward():
    return torch.compile(_PLAIN["forward"], dynamic=True)


def resolve_mode(mode: str, device: torch.device | str) -> str:
    """``auto`` -> ``triton`` on CUDA when Triton is there, else ``eager``."""
    if mode not in MODES:
        raise ValueError(f"bigvgan activation mode {mode!r} is not one of {MODES}")
    if mode != "auto":
        return mode
    return "triton" if torch.device(device).type == "cuda" and triton is not None else "eager"


def patched_forward(mode: str = "auto"):
    """A replacement for ``Activation1d.forward`` using ``mode`` (resolved per input device)."""
    plain = _PLAIN["forward"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chosen = resolve_mode(mode, x.device)
        if _BROKEN.get(chosen):
            chosen = "eager"
        try:
            if chosen == "triton" and (x.device.type == "cuda" or _interpreting()):
                return fused_activation(self, x)
            if chosen == "compile":
                return _compiled_forward()(self, x)
        except Exception as exc:  # noqa: BLE001 - a kernel that does not build: plain path
            from tts.fast import fallback

            _BROKEN[chosen] = True
            fallback(f"BigVGAN activation ({chosen})", exc)
        return plain(self, x)

    return forward


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"


def fuse_activations(vocoder: torch.nn.Module, mode: str = "auto") -> torch.nn.Module:
    """Make every Activation1d of ``vocoder`` use ``mode`` (in place, this instance only)."""
    forward = patched_forward(mode)
    for module in vocoder.modules():
        if isinstance(module, _bigvgan.Activation1d):
            module.forward = forward.__get__(module, _bigvgan.Activation1d)
    return vocoder
