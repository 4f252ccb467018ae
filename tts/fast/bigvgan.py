"""BigVGAN's anti-aliased activation as one fused kernel.

:class:`tts.models.bigvgan.Activation1d` runs, per channel: replicate pad, x2 transposed conv
with a 12-tap Kaiser sinc (times 2), crop, Snake/SnakeBeta, replicate pad, 12-tap low-pass conv
with stride 2 - about ten kernels and four full-size intermediates (two of them at twice the
length), for each of the 109 activations of the vocoder. The fused kernel reads ``x`` once and
writes the output once; everything in between stays on chip:

    out[t] = sum_j fd[j] * snake(u[clamp(2t + j - 5, 0, 2T-1)])
    u[n]   = 2 * sum_{k = n+15 (mod 2)} fu[k] * x[clamp((n + 15 - k) / 2 - 5, 0, T-1)]

(indices for ratio 2 and 12 taps, IndexTTS2's; the kernel takes the tap count and paddings as
constants and needs ratio 2). The clamps are the replicate paddings; the accumulation is in
float32 whatever the input dtype. Each program computes ``snake(u)`` once for a tile of
upsampled positions and gathers the low-pass's 12 taps from that tile (``tl.gather``), so each
activated sample is computed once, not once for each of the 6 outputs that read it (the first
version did). The upsampling runs as two phases (even and odd samples) with scalar taps on
shifted loads of ``x``, and the 12 taps come from one gather; every sum has the same terms in
the same order as in the direct form, so all versions give identical outputs.

Modes: ``triton`` (CUDA, or the Triton interpreter with TRITON_INTERPRET=1), ``compile``
(torch.compile of the plain forward: fuses the elementwise work around the two convolutions),
``eager`` (the plain forward) and ``auto`` (triton on CUDA when Triton imports, else eager).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

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
        x_ptr,
        y_ptr,
        alpha_ptr,
        beta_ptr,
        fu_ptr,
        fd_ptr,
        bias_ptr,
        T,
        C,
        stride_xb,
        stride_xc,
        stride_yb,
        stride_yc,
        R: tl.constexpr,
        K: tl.constexpr,
        PAD_UP: tl.constexpr,
        CROP: tl.constexpr,
        HALO: tl.constexpr,
        OFF: tl.constexpr,
        OUT: tl.constexpr,
        HAS_BETA: tl.constexpr,
        LOGSCALE: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0)
        b = row // C
        c = row % C
        t0 = tl.program_id(1) * OUT
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
        if HAS_BIAS:
            bias = tl.load(bias_ptr + c).to(tl.float32)
        # The tile: input positions p = t0 - HALO + s (s < BLOCK), each with its two upsampled
        # samples 2p (even phase) and 2p + 1 (odd phase). Phase f uses the upsampling filter's
        # taps F_f + 2q on x[p + D_f - q] (q < K // 2), so each shifted x vector is loaded once
        # and the taps are scalars; the sums run in q's order, as the direct form's do.
        p = t0 - HALO + tl.arange(0, BLOCK)
        pc = tl.minimum(tl.maximum(p, 0), T - 1)
        F0: tl.constexpr = CROP % 2
        F1: tl.constexpr = (1 + CROP) % 2
        D0: tl.constexpr = (CROP - F0) // 2 - PAD_UP
        D1: tl.constexpr = (1 + CROP - F1) // 2 - PAD_UP
        TOP: tl.constexpr = D0 if D0 > D1 else D1
        LOW: tl.constexpr = (D0 if D0 < D1 else D1) - (K // 2 - 1)
        ue = tl.zeros([BLOCK], dtype=tl.float32)
        uo = tl.zeros([BLOCK], dtype=tl.float32)
        for step in tl.static_range(TOP - LOW + 1):
            d = TOP - step  # shifts in falling order = taps q in rising order
            xi = tl.load(x_row + tl.minimum(tl.maximum(pc + d, 0), T - 1))
            if HAS_BIAS:  # the convolution's bias add, rounded to its dtype as torch does
                xi = (xi.to(tl.float32) + bias).to(x_ptr.dtype.element_ty)
            xf = xi.to(tl.float32)
            if D0 - d >= 0 and D0 - d < K // 2:
                ue += tl.load(fu_ptr + (F0 + 2 * (D0 - d))) * xf
            if D1 - d >= 0 and D1 - d < K // 2:
                uo += tl.load(fu_ptr + (F1 + 2 * (D1 - d))) * xf
        # The low-pass's replicate padding: before the signal both samples are u[0] (the even
        # one at p = 0), after it both are u[2T - 1] (the odd one at p = T - 1).
        ue, uo = tl.where(p > T - 1, uo, ue), tl.where(p < 0, ue, uo)
        ue = ue * R
        uo = uo * R
        se = tl.sin(ue * alpha)
        so = tl.sin(uo * alpha)
        v = tl.reshape(tl.join(ue + inv_beta * (se * se), uo + inv_beta * (so * so)), [R * BLOCK])
        # Output t0 + o reads the tile at R * o + OFF + j (j < K <= 16): one gather of all 16
        # columns (one pass through shared memory, where 12 gathers made 12), then column j
        # taken apart by the bits of j and summed in j's order.
        o = tl.arange(0, BLOCK)
        j = tl.arange(0, 16)
        at = tl.minimum(R * o[:, None] + (OFF + j[None, :]), R * BLOCK - 1)
        g = tl.reshape(tl.gather(v, tl.reshape(at, [BLOCK * 16]), 0), [BLOCK, 2, 2, 2, 2])
        g0, g1 = tl.split(g)  # j even / odd
        g00, g01 = tl.split(g0)  # j = 0 / 2 (mod 4)
        g10, g11 = tl.split(g1)  # j = 1 / 3 (mod 4)
        c0, c4 = tl.split(g00)
        c2, c6 = tl.split(g01)
        c1, c5 = tl.split(g10)
        c3, c7 = tl.split(g11)
        c0, c8 = tl.split(c0)
        c1, c9 = tl.split(c1)
        c2, c10 = tl.split(c2)
        c3, c11 = tl.split(c3)
        c4, _c12 = tl.split(c4)
        c5, _c13 = tl.split(c5)
        c6, _c14 = tl.split(c6)
        c7, _c15 = tl.split(c7)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        acc += tl.load(fd_ptr + 0) * c0
        acc += tl.load(fd_ptr + 1) * c1
        acc += tl.load(fd_ptr + 2) * c2
        acc += tl.load(fd_ptr + 3) * c3
        acc += tl.load(fd_ptr + 4) * c4
        acc += tl.load(fd_ptr + 5) * c5
        acc += tl.load(fd_ptr + 6) * c6
        acc += tl.load(fd_ptr + 7) * c7
        acc += tl.load(fd_ptr + 8) * c8
        acc += tl.load(fd_ptr + 9) * c9
        acc += tl.load(fd_ptr + 10) * c10
        acc += tl.load(fd_ptr + 11) * c11
        t = t0 + o
        tl.store(
            y_ptr + b * stride_yb + c * stride_yc + t,
            acc.to(y_ptr.dtype.element_ty),
            mask=(o < OUT) & (t < T),
        )


def tile_layout(ratio: int, taps: int, pad_down: int, block: int) -> tuple[int, int, int]:
    """(halo, offset, outputs) of one program's tile of ``block`` input positions.

    The tile starts ``halo`` input positions before the program's first output, so that the
    low-pass's leftmost tap (``pad_down`` upsampled positions back) lies inside it; output
    ``o`` reads tile positions ``ratio * o + offset + j`` for ``j < taps``, and the first
    ``outputs`` outputs have all their taps inside the tile.
    """
    halo = -(-pad_down // ratio)
    offset = ratio * halo - pad_down
    outputs = (ratio * block - taps - offset) // ratio + 1
    if outputs < 1:
        raise ValueError(f"fused activation: block {block} is too small for {taps} taps")
    return halo, offset, outputs


def fused_activation(
    module,
    x: torch.Tensor,
    block: int = 1024,
    num_warps: int = 4,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``module(x)`` for an :class:`Activation1d` through the Triton kernel.

    Each program upsamples and activates a tile of ``block`` input positions once (2 per
    position), then low-passes it into ``block - 6`` outputs (ratio 2, 12 taps): the tiles
    overlap by 6 positions instead of every output recomputing its 12 activated neighbours.
    The default tile (1024 positions, 4 warps) made BigVGAN's forward 10% faster than 256
    positions at batch 16 on an H100; at batch 1 the two differed by less than the forward's
    time moves from run to run (docs/benchmarks.md, runs DU-DV).

    ``bias`` [C]: compute ``module(x + bias[:, None])`` instead, the sum rounded to ``x``'s dtype
    as torch's separate bias add after a convolution rounds it, so that a convolution run
    without its bias and this give the same bits as the convolution with it and ``module``.
    """
    if triton is None:
        raise RuntimeError("the fused BigVGAN activation needs Triton")
    up, down, act = module.upsample, module.downsample.lowpass, module.act
    ratio = up.ratio
    taps = up.filter.numel()
    if down.filter.numel() != taps or down.stride != ratio or taps % ratio:
        raise ValueError("fused activation: up/down filters must share tap count and ratio")
    if ratio != 2 or taps > 16:  # the kernel's two phases and 16-column gather
        raise ValueError(f"fused activation: ratio 2 and at most 16 taps (got {ratio}, {taps})")
    halo, offset, outputs = tile_layout(ratio, taps, down.pad_left, block)
    x = x.contiguous()
    b, c, t = x.shape
    y = torch.empty_like(x)
    fu = up.filter.reshape(-1).to(device=x.device, dtype=torch.float32).contiguous()
    fd = down.filter.reshape(-1).to(device=x.device, dtype=torch.float32).contiguous()
    has_beta = hasattr(act, "beta")
    alpha = act.alpha.detach().contiguous()
    beta = act.beta.detach().contiguous() if has_beta else alpha
    has_bias = bias is not None
    # As autocast casts a convolution's bias: to the dtype of the convolution's output.
    bias = bias.detach().to(x.dtype).contiguous() if has_bias else alpha  # (unread if none)
    grid = (b * c, triton.cdiv(t, outputs))
    _aa_activation_kernel[grid](
        x,
        y,
        alpha,
        beta,
        fu,
        fd,
        bias,
        t,
        c,
        x.stride(0),
        x.stride(1),
        y.stride(0),
        y.stride(1),
        R=ratio,
        K=taps,
        PAD_UP=up.pad,
        CROP=up.crop_left,
        HALO=halo,
        OFF=offset,
        OUT=outputs,
        HAS_BETA=has_beta,
        LOGSCALE=bool(act.logscale),
        HAS_BIAS=has_bias,
        BLOCK=block,
        num_warps=num_warps,
    )
    return y


if triton is not None:

    @triton.jit
    def _residual_kernel(
        y_ptr,
        x_ptr,
        bias_ptr,
        acc_ptr,
        T,
        C,
        scale,
        HAS_BIAS: tl.constexpr,
        HAS_ACC: tl.constexpr,
        HAS_SCALE: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        # In place into y, each sum rounded to the dtype as torch's separate ops round it:
        # y + bias (the convolution's bias add), + x (the residual), + acc (the sum of the
        # stage's AMP blocks), * scale (their mean: torch divides by a scalar as a product
        # with its reciprocal).
        row = tl.program_id(0)
        t = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        keep = t < T
        at = row.to(tl.int64) * T + t
        dtype = y_ptr.dtype.element_ty
        v = tl.load(y_ptr + at, mask=keep)
        if HAS_BIAS:
            v = (v.to(tl.float32) + tl.load(bias_ptr + row % C).to(tl.float32)).to(dtype)
        v = (v.to(tl.float32) + tl.load(x_ptr + at, mask=keep).to(tl.float32)).to(dtype)
        if HAS_ACC:
            v = (tl.load(acc_ptr + at, mask=keep).to(tl.float32) + v.to(tl.float32)).to(dtype)
        if HAS_SCALE:
            v = (v.to(tl.float32) * scale).to(dtype)
        tl.store(y_ptr + at, v, mask=keep)


def bias_residual(
    y: torch.Tensor,
    x: torch.Tensor,
    bias: torch.Tensor | None,
    acc: torch.Tensor | None = None,
    divisor: int | None = None,
    block: int = 1024,
) -> torch.Tensor:
    """``((y + bias) + x + acc) / divisor`` for ``[B, C, T]`` tensors, into ``y`` (returned).

    What the AMP block's last steps compute with separate torch ops (the second convolution's
    bias add, the residual add, the sum of a stage's blocks and their mean), in one pass and
    with the same roundings, so the result has the same bits. ``bias``, ``acc`` and
    ``divisor`` are optional.
    """
    if not (y.is_contiguous() and x.is_contiguous() and x.shape == y.shape):
        raise ValueError("bias_residual: y and x must be contiguous tensors of one shape")
    if acc is not None and not (acc.is_contiguous() and acc.shape == y.shape):
        raise ValueError("bias_residual: acc must be contiguous and shaped like y")
    if x.dtype != y.dtype or (acc is not None and acc.dtype != y.dtype):
        raise ValueError("bias_residual: y, x and acc must share one dtype")
    b, c, t = y.shape
    bias_arg = y if bias is None else bias.detach().to(y.dtype).contiguous()
    grid = (b * c, triton.cdiv(t, block))
    _residual_kernel[grid](
        y,
        x,
        bias_arg,
        y if acc is None else acc,
        t,
        c,
        # torch's reciprocal of a scalar divisor, in float32 (its opmath for these dtypes)
        float(torch.ones((), dtype=torch.float32) / divisor) if divisor else 1.0,
        HAS_BIAS=bias is not None,
        HAS_ACC=acc is not None,
        HAS_SCALE=bool(divisor),
        BLOCK=block,
    )
    return y


def _conv_without_bias(conv, x: torch.Tensor) -> torch.Tensor:
    """A (non-transposed) :class:`WNConv` without its bias add."""
    w = conv.effective_weight()
    return F.conv1d(x, w, None, stride=conv.stride, padding=conv.padding, dilation=conv.dilation)


def fused_amp_block(
    block, x: torch.Tensor, acc: torch.Tensor | None = None, divisor: int | None = None
) -> torch.Tensor:
    """:class:`AMPBlock1`'s forward with the fused kernels, and the stage's block sum.

    Each pair's first convolution runs without its bias, which the next activation adds as it
    reads (:func:`fused_activation`); the second's bias, the residual and, after the last pair,
    ``+ acc`` and ``/ divisor`` are one :func:`bias_residual` pass. Bit for bit what the plain
    forward with fused activations computes, with about half its elementwise passes.
    """
    acts = block.activations
    last = len(block.convs1) - 1
    for i, (c1, c2) in enumerate(zip(block.convs1, block.convs2, strict=True)):
        t = _conv_without_bias(c1, fused_activation(acts[2 * i], x))
        t = _conv_without_bias(c2, fused_activation(acts[2 * i + 1], t, bias=c1.bias))
        end = i == last
        x = bias_residual(t, x, c2.bias, acc if end else None, divisor if end else None)
    return x


def fused_vocoder_forward(vocoder, mel: torch.Tensor) -> torch.Tensor:
    """:meth:`BigVGAN.forward` through :func:`fused_amp_block` (AMP blocks of kind 1)."""
    x = vocoder.conv_pre(mel)
    k = vocoder.num_kernels
    for i in range(vocoder.num_upsamples):
        for up in vocoder.ups[i]:
            x = up(x).contiguous()
        blocks = vocoder.resblocks[i * k : (i + 1) * k]
        xs = None
        for j, block in enumerate(blocks):
            xs = fused_amp_block(block, x, xs, k if j == k - 1 else None)
        x = xs
    x = vocoder.conv_post(vocoder.activation_post(x))
    return torch.tanh(x) if vocoder.use_tanh_at_final else torch.clamp(x, min=-1.0, max=1.0)


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
    """Make every Activation1d of ``vocoder`` use ``mode`` (in place, this instance only).

    Where the mode is ``triton`` and the vocoder's AMP blocks are of kind 1 (IndexTTS2's), its
    forward also runs :func:`fused_vocoder_forward`: the convolutions' bias adds, the residual
    adds and the stages' block means inside the kernels, with the same bits as the plain
    forward with fused activations.
    """
    forward = patched_forward(mode)
    for module in vocoder.modules():
        if isinstance(module, _bigvgan.Activation1d):
            module.forward = forward.__get__(module, _bigvgan.Activation1d)
    if isinstance(vocoder, _bigvgan.BigVGAN) and all(
        isinstance(b, _bigvgan.AMPBlock1) for b in vocoder.resblocks
    ):
        vocoder.forward = _patched_vocoder_forward(mode).__get__(vocoder, _bigvgan.BigVGAN)
    return vocoder


def _patched_vocoder_forward(mode: str):
    """``BigVGAN.forward`` through :func:`fused_vocoder_forward` where ``mode`` resolves to
    ``triton`` for the input (CUDA, or the interpreter), else the plain forward."""
    plain = _bigvgan.BigVGAN.forward

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        runs = resolve_mode(mode, mel.device) == "triton" and not _BROKEN.get("blocks")
        if runs and (mel.device.type == "cuda" or _interpreting()):
            try:
                return fused_vocoder_forward(self, mel)
            except Exception as exc:  # noqa: BLE001 - a kernel that does not build: plain path
                from tts.fast import fallback

                _BROKEN["blocks"] = True
                fallback("BigVGAN fused blocks", exc)
        return plain(self, mel)

    return forward
