"""BigVGAN v2 vocoder (nvidia/bigvgan_v2_22khz_80band_256x): mel ``[B, 80, T]`` -> ``[B, 1, 256T]``.

Structure (attribute names equal the checkpoint keys of ``bigvgan_generator.pt``):
``conv_pre`` -> per stage ``ups.i.0`` (transposed conv) and the mean of the stage's AMP blocks
(one per resblock kernel size) -> ``activation_post`` -> ``conv_post`` -> clamp to [-1, 1]
(or tanh when the config asks).

Every conv is weight-normalised and stored as ``weight_g`` / ``weight_v``; the effective weight is
``v * (g / ||v||)`` with the norm over all dims but 0 and no eps, recomputed each forward until
:meth:`BigVGAN.remove_weight_norm` fuses it into a plain ``weight`` for inference.

The activations are anti-aliased: upsample x2 with a Kaiser-windowed sinc, apply Snake/SnakeBeta,
low-pass and downsample x2 with the same kind of filter. The filters are deterministic buffers
computed here (and also stored in the official files).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _norm_except_dim0(v: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(v, dim=tuple(range(1, v.dim())), keepdim=True)


class WNConv(nn.Module):
    """Conv1d / ConvTranspose1d holding weight-norm parameters ``weight_g`` and ``weight_v``.

    For a transposed conv the weight is ``[in, out, k]`` and the norm is taken per *input*
    channel (dim 0), as ``torch.nn.utils.weight_norm`` does by default.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = True,
        transposed: bool = False,
    ) -> None:
        super().__init__()
        self.transposed = transposed
        self.stride, self.padding, self.dilation = stride, padding, dilation
        shape = (
            (in_channels, out_channels, kernel_size)
            if transposed
            else (out_channels, in_channels, kernel_size)
        )
        # Registration order bias, weight_g, weight_v matches the official state_dict order.
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.weight_g = nn.Parameter(torch.empty(shape[0], 1, 1))
        self.weight_v = nn.Parameter(torch.empty(shape))
        self.weight: nn.Parameter | None = None

    def effective_weight(self) -> torch.Tensor:
        if self.weight is not None:
            return self.weight
        return self.weight_v * (self.weight_g / _norm_except_dim0(self.weight_v))

    def fuse(self) -> None:
        """Replace ``weight_g``/``weight_v`` with the plain ``weight`` they describe."""
        if self.weight is not None:
            return
        with torch.no_grad():
            weight = self.effective_weight()  # a new tensor: nothing else holds it
        del self.weight_g
        del self.weight_v
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.effective_weight()
        if self.transposed:
            return F.conv_transpose1d(x, w, self.bias, stride=self.stride, padding=self.padding)
        return F.conv1d(
            x, w, self.bias, stride=self.stride, padding=self.padding, dilation=self.dilation
        )


def kaiser_sinc_filter(cutoff: float, half_width: float, kernel_size: int) -> torch.Tensor:
    """Low-pass FIR ``[1, 1, kernel_size]``: Kaiser-windowed sinc normalised to unit DC gain.

    ``cutoff`` and ``half_width`` are in cycles per sample; the Kaiser beta follows the usual
    attenuation formula for transition width ``4 * half_width``.
    """
    half = kernel_size // 2
    attenuation = 2.285 * (half - 1) * math.pi * (4 * half_width) + 7.95
    if attenuation > 50.0:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21.0:
        beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(kernel_size, periodic=False, beta=beta)
    if kernel_size % 2 == 0:
        t = torch.arange(-half, half) + 0.5
    else:
        t = torch.arange(kernel_size) - half
    taps = 2 * cutoff * window * torch.sinc(2 * cutoff * t)
    taps = taps / taps.sum()
    return taps.view(1, 1, kernel_size)


class UpSample1d(nn.Module):
    """x``ratio`` upsampling: replicate pad, depthwise transposed conv with the sinc, crop."""

    def __init__(self, ratio: int = 2, kernel_size: int = 12) -> None:
        super().__init__()
        self.ratio = ratio
        self.pad = kernel_size // ratio - 1
        self.crop_left = self.pad * ratio + (kernel_size - ratio) // 2
        self.crop_right = self.pad * ratio + (kernel_size - ratio + 1) // 2
        self.register_buffer("filter", kaiser_sinc_filter(0.5 / ratio, 0.6 / ratio, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        x = F.pad(x, (self.pad, self.pad), mode="replicate")
        x = self.ratio * F.conv_transpose1d(
            x, self.filter.expand(c, -1, -1), stride=self.ratio, groups=c
        )
        return x[..., self.crop_left : -self.crop_right]


class LowPassFilter1d(nn.Module):
    """Replicate-padded depthwise FIR low-pass with stride (the downsampler's ``lowpass``)."""

    def __init__(
        self, cutoff: float, half_width: float, stride: int, kernel_size: int = 12
    ) -> None:
        super().__init__()
        even = kernel_size % 2 == 0
        self.pad_left = kernel_size // 2 - int(even)
        self.pad_right = kernel_size // 2
        self.stride = stride
        self.register_buffer("filter", kaiser_sinc_filter(cutoff, half_width, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        x = F.pad(x, (self.pad_left, self.pad_right), mode="replicate")
        return F.conv1d(x, self.filter.expand(c, -1, -1), stride=self.stride, groups=c)


class DownSample1d(nn.Module):
    def __init__(self, ratio: int = 2, kernel_size: int = 12) -> None:
        super().__init__()
        self.lowpass = LowPassFilter1d(0.5 / ratio, 0.6 / ratio, ratio, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lowpass(x)


class SnakeBeta(nn.Module):
    """``x + sin^2(a x) / (b + 1e-9)`` per channel; ``logscale``: parameters hold log a, log b."""

    def __init__(self, channels: int, logscale: bool = True) -> None:
        super().__init__()
        self.logscale = logscale
        self.alpha = nn.Parameter(torch.empty(channels))
        self.beta = nn.Parameter(torch.empty(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha[None, :, None]
        beta = self.beta[None, :, None]
        if self.logscale:
            alpha, beta = torch.exp(alpha), torch.exp(beta)
        return x + (1.0 / (beta + 1e-9)) * torch.sin(x * alpha).pow(2)


class Snake(nn.Module):
    """``x + sin^2(a x) / (a + 1e-9)`` per channel (the "snake" activation option)."""

    def __init__(self, channels: int, logscale: bool = True) -> None:
        super().__init__()
        self.logscale = logscale
        self.alpha = nn.Parameter(torch.empty(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha[None, :, None]
        if self.logscale:
            alpha = torch.exp(alpha)
        return x + (1.0 / (alpha + 1e-9)) * torch.sin(x * alpha).pow(2)


def _snake(kind: str, channels: int, logscale: bool) -> nn.Module:
    if kind == "snakebeta":
        return SnakeBeta(channels, logscale)
    if kind == "snake":
        return Snake(channels, logscale)
    raise ValueError(f"BigVGAN config: activation must be 'snake' or 'snakebeta', got {kind!r}")


class Activation1d(nn.Module):
    """Anti-aliased activation: upsample x2, periodic activation, downsample x2."""

    def __init__(self, act: nn.Module, ratio: int = 2, kernel_size: int = 12) -> None:
        super().__init__()
        self.act = act
        self.upsample = UpSample1d(ratio, kernel_size)
        self.downsample = DownSample1d(ratio, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.act(self.upsample(x)))


def _same_padding(kernel_size: int, dilation: int) -> int:
    return (kernel_size * dilation - dilation) // 2


class AMPBlock1(nn.Module):
    """For each dilation d: ``x += conv2(act(conv1_d(act(x))))`` (two activations per pair)."""

    def __init__(
        self, channels: int, kernel_size: int, dilations: list[int], activation: str, logscale: bool
    ) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            [
                WNConv(
                    channels,
                    channels,
                    kernel_size,
                    dilation=d,
                    padding=_same_padding(kernel_size, d),
                )
                for d in dilations
            ]
        )
        self.convs2 = nn.ModuleList(
            [
                WNConv(channels, channels, kernel_size, padding=_same_padding(kernel_size, 1))
                for _ in dilations
            ]
        )
        self.activations = nn.ModuleList(
            [
                Activation1d(_snake(activation, channels, logscale))
                for _ in range(2 * len(dilations))
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (c1, c2) in enumerate(zip(self.convs1, self.convs2, strict=True)):
            xt = c2(self.activations[2 * i + 1](c1(self.activations[2 * i](x))))
            x = xt + x
        return x


class AMPBlock2(nn.Module):
    """For each dilation d: ``x += conv_d(act(x))`` (the lighter "resblock 2" variant)."""

    def __init__(
        self, channels: int, kernel_size: int, dilations: list[int], activation: str, logscale: bool
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [
                WNConv(
                    channels,
                    channels,
                    kernel_size,
                    dilation=d,
                    padding=_same_padding(kernel_size, d),
                )
                for d in dilations
            ]
        )
        self.activations = nn.ModuleList(
            [Activation1d(_snake(activation, channels, logscale)) for _ in dilations]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, act in zip(self.convs, self.activations, strict=True):
            x = conv(act(x)) + x
        return x


class BigVGAN(nn.Module):
    """The BigVGAN v2 generator built from its ``config.json`` hyper-parameters."""

    def __init__(
        self,
        num_mels: int = 80,
        upsample_rates: list[int] = (4, 4, 2, 2, 2, 2),
        upsample_kernel_sizes: list[int] = (8, 8, 4, 4, 4, 4),
        upsample_initial_channel: int = 1536,
        resblock: str = "1",
        resblock_kernel_sizes: list[int] = (3, 7, 11),
        resblock_dilation_sizes: list[list[int]] = ((1, 3, 5), (1, 3, 5), (1, 3, 5)),
        activation: str = "snakebeta",
        snake_logscale: bool = True,
        use_tanh_at_final: bool = True,
        use_bias_at_final: bool = True,
    ) -> None:
        super().__init__()
        if len(upsample_rates) != len(upsample_kernel_sizes):
            raise ValueError(
                "BigVGAN config: upsample_rates and upsample_kernel_sizes differ in length"
            )
        if len(resblock_kernel_sizes) != len(resblock_dilation_sizes):
            raise ValueError(
                "BigVGAN config: resblock_kernel_sizes and resblock_dilation_sizes differ in length"
            )
        if str(resblock) == "1":
            block_cls = AMPBlock1
        elif str(resblock) == "2":
            block_cls = AMPBlock2
        else:
            raise ValueError(f"BigVGAN config: resblock must be '1' or '2', got {resblock!r}")
        self.num_kernels = len(resblock_kernel_sizes)
        self.num_upsamples = len(upsample_rates)
        self.use_tanh_at_final = bool(use_tanh_at_final)

        self.conv_pre = WNConv(num_mels, upsample_initial_channel, 7, padding=3)
        self.ups = nn.ModuleList()
        for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes, strict=True)):
            c_in = upsample_initial_channel // (2**i)
            up = WNConv(c_in, c_in // 2, k, stride=u, padding=(k - u) // 2, transposed=True)
            self.ups.append(nn.ModuleList([up]))
        self.resblocks = nn.ModuleList()
        ch = upsample_initial_channel
        for i in range(self.num_upsamples):
            ch = upsample_initial_channel // (2 ** (i + 1))
            for k, d in zip(resblock_kernel_sizes, resblock_dilation_sizes, strict=True):
                self.resblocks.append(block_cls(ch, k, list(d), activation, bool(snake_logscale)))
        self.activation_post = Activation1d(_snake(activation, ch, bool(snake_logscale)))
        self.conv_post = WNConv(ch, 1, 7, padding=3, bias=bool(use_bias_at_final))

    CONFIG_KEYS = (
        "num_mels",
        "upsample_rates",
        "upsample_kernel_sizes",
        "upsample_initial_channel",
        "resblock",
        "resblock_kernel_sizes",
        "resblock_dilation_sizes",
        "activation",
        "snake_logscale",
        "use_tanh_at_final",
        "use_bias_at_final",
    )

    @classmethod
    def from_config(cls, cfg: dict) -> BigVGAN:
        """Build from a BigVGAN ``config.json`` dict (training-only keys are ignored).

        Like the reference, ``use_tanh_at_final`` and ``use_bias_at_final`` default to True when
        absent; the architecture keys are required.
        """
        required = [k for k in cls.CONFIG_KEYS[:-2] if k not in cfg]
        if required:
            raise ValueError(f"BigVGAN config: missing key(s) {required}")
        return cls(**{k: cfg[k] for k in cls.CONFIG_KEYS if k in cfg})

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(mel)
        for i in range(self.num_upsamples):
            for up in self.ups[i]:
                x = up(x)
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            xs = blocks[0](x)
            for block in blocks[1:]:
                xs = xs + block(x)
            x = xs / self.num_kernels
        x = self.conv_post(self.activation_post(x))
        return torch.tanh(x) if self.use_tanh_at_final else torch.clamp(x, min=-1.0, max=1.0)

    def remove_weight_norm(self) -> BigVGAN:
        """Fuse each weight-norm conv into a plain ``weight`` (what the reference runs)."""
        for module in self.modules():
            if isinstance(module, WNConv):
                module.fuse()
        return self


def to_weight_norm_form(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return a generator state dict in ``weight_g``/``weight_v`` form.

    The official file holds ``weight_g``/``weight_v``; a file saved after ``remove_weight_norm``
    holds a fused ``X.weight`` instead (every ``*.weight`` of the BigVGAN generator belongs to a
    weight-normalised conv). Such a weight becomes ``g = ||w||`` (over all dims but 0) and
    ``v = w``, which reproduce ``w`` exactly (``g / ||v||`` is exactly 1). A state already in
    g/v form is returned unchanged.
    """
    fused = [
        k
        for k in state
        if k.endswith(".weight") and f"{k}_g" not in state and f"{k}_v" not in state
    ]
    if not fused:
        return state
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in fused:
            out[f"{key}_g"] = _norm_except_dim0(value)
            out[f"{key}_v"] = value
        else:
            out[key] = value
    return out
