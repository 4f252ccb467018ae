"""CAMPPlus (3D-Speaker CAM++) speaker encoder: Kaldi fbank ``[B, T, 80]`` -> style ``[B, 192]``.

IndexTTS2 uses its embedding as the global "style" vector of the DiT and to pick emotion-matrix
rows. Layout (attribute names equal the checkpoint keys of ``campplus_cn_common.bin``):

* ``head``: FCM, a small 2-D ResNet over (frequency, time) that halves the frequency axis three
  times and flattens channels x frequency into ``32 * feat_dim // 8`` channels;
* ``xvector``: TDNN (k5, stride 2), three densely connected CAM blocks (12/24/16 layers) each
  followed by a transit layer that halves the channels, BN-ReLU, mean+std statistics pooling,
  and a 1x1 dense layer with a non-affine BatchNorm.

Every BatchNorm runs on its stored running statistics (the module is used in eval mode).

``forward(x, frames)`` also takes a batch zero-padded past each row's ``frames`` real frames
(what :mod:`tts.fast.conditioning` runs through a CUDA graph per length bucket): every
convolution that mixes frames then sees zeros there, as the reference's own zero padding, and
the means over time (the CAM layers' context, the statistics pooling) count the real frames
only, so the result is the unpadded input's up to float rounding.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# Fixed by the reference architecture (not configurable there either).
FCM_CHANNELS = 32
BLOCK_LAYERS = (12, 24, 16)
BLOCK_KERNELS = (3, 3, 3)
BLOCK_DILATIONS = (1, 2, 2)
CAM_SEGMENT = 100  # frames per segment of the context-aware mask's segment pooling


def _keep(frames: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """``[B, 1, length]``: True at each row's first ``frames`` positions (None: all real)."""
    if frames is None:
        return None
    return (torch.arange(length, device=frames.device) < frames.unsqueeze(1)).unsqueeze(1)


def _zero_padding(x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """``x`` with the padded frames (last axis) set to zero, as a convolution's own padding."""
    return x if keep is None else x.masked_fill(~keep, 0.0)


class RealFrames(NamedTuple):
    """The real frames of a zero-padded batch at the x-vector's time resolution, with the
    counts its means divide by: made once a forward, not in each of its 52 layers."""

    keep: torch.Tensor  # [B, 1, T] bool
    count: torch.Tensor  # [B, 1, 1]: real frames
    per_segment: torch.Tensor  # [B, 1, S]: real frames of each CAM segment, at least 1


def _real_frames(frames: torch.Tensor | None, length: int) -> RealFrames | None:
    """:class:`RealFrames` of rows with ``frames`` [B] real frames out of ``length``."""
    keep = _keep(frames, length)
    if keep is None:
        return None
    tail = -length % CAM_SEGMENT
    per_segment = F.pad(keep, (0, tail)).unflatten(-1, (-1, CAM_SEGMENT)).sum(-1)
    # A segment past a row's end holds no real frame: 1, so its (unused) mean is 0, not NaN.
    return RealFrames(keep, keep.sum(-1, keepdim=True), per_segment.clamp_min(1))


def _time_mean(x: torch.Tensor, real: RealFrames | None) -> torch.Tensor:
    """Mean over the real frames of ``x`` [B, C, T] (padded frames zero), keeping the axis."""
    if real is None:
        return x.mean(-1, keepdim=True)
    return x.sum(-1, keepdim=True) / real.count


class BNReLU(nn.Module):
    """``batchnorm`` then ReLU (the reference's "batchnorm-relu" nonlinearity)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.batchnorm = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.batchnorm(x))


class BNOnly(nn.Module):
    """A BatchNorm without scale/shift (the reference's "batchnorm_" nonlinearity)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.batchnorm = nn.BatchNorm1d(channels, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.batchnorm(x)


class BasicResBlock(nn.Module):
    """2-D residual block; the first block of a stage strides 2 along frequency only."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=(stride, 1), bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """``keep`` [B, 1, 1, T]: the real frames (see the module docstring)."""
        out = _zero_padding(F.relu(self.bn1(self.conv1(x))), keep)
        out = self.bn2(self.conv2(out))
        return _zero_padding(F.relu(out + self.shortcut(x)), keep)


class FCM(nn.Module):
    """Front-end convolution module: ``[B, F, T] -> [B, 32 * (F // 8), T]``."""

    def __init__(
        self, feat_dim: int = 80, channels: int = FCM_CHANNELS, blocks: tuple = (2, 2)
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.layer1 = nn.Sequential(
            *[BasicResBlock(channels, channels, 2 if i == 0 else 1) for i in range(blocks[0])]
        )
        self.layer2 = nn.Sequential(
            *[BasicResBlock(channels, channels, 2 if i == 0 else 1) for i in range(blocks[1])]
        )
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.out_channels = channels * (feat_dim // 8)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` [B, F, T]; ``keep`` [B, 1, T]: the real frames (see the module docstring)."""
        keep = None if keep is None else keep.unsqueeze(1)
        out = _zero_padding(F.relu(self.bn1(self.conv1(x.unsqueeze(1)))), keep)
        for block in (*self.layer1, *self.layer2):
            out = block(out, keep)
        out = _zero_padding(F.relu(self.bn2(self.conv2(out))), keep)
        b, c, f, t = out.shape
        return out.reshape(b, c * f, t)


class TDNNLayer(nn.Module):
    """Conv1d ("same" padding for odd kernels) then BN-ReLU."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1
    ) -> None:
        super().__init__()
        self.linear = nn.Conv1d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=(kernel_size - 1) // 2,
            bias=False,
        )
        self.nonlinear = BNReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x))


class CAMLayer(nn.Module):
    """Context-aware masking: a local conv gated by a sigmoid mask from global + segment context."""

    def __init__(
        self,
        bn_channels: int,
        out_channels: int,
        kernel_size: int,
        dilation: int,
        reduction: int = 2,
    ) -> None:
        super().__init__()
        self.linear_local = nn.Conv1d(
            bn_channels,
            out_channels,
            kernel_size,
            padding=(kernel_size - 1) // 2 * dilation,
            dilation=dilation,
            bias=False,
        )
        self.linear1 = nn.Conv1d(bn_channels, bn_channels // reduction, 1)
        self.linear2 = nn.Conv1d(bn_channels // reduction, out_channels, 1)

    @staticmethod
    def segment_mean(
        x: torch.Tensor, seg_len: int = CAM_SEGMENT, real: RealFrames | None = None
    ) -> torch.Tensor:
        """Mean of each ``seg_len``-frame segment (last one partial), broadcast to its frames;
        with ``real`` (segments of :data:`CAM_SEGMENT` frames), of its real frames (padded
        frames zero)."""
        length = x.shape[-1]
        if real is None:
            seg = F.avg_pool1d(x, kernel_size=seg_len, stride=seg_len, ceil_mode=True)
        elif seg_len != CAM_SEGMENT:
            raise ValueError(f"real frames are counted per {CAM_SEGMENT} frames, not {seg_len}")
        else:
            sums = F.pad(x, (0, -length % seg_len)).unflatten(-1, (-1, seg_len)).sum(-1)
            seg = sums / real.per_segment
        return seg.repeat_interleave(seg_len, dim=-1)[..., :length]

    def forward(self, x: torch.Tensor, real: RealFrames | None = None) -> torch.Tensor:
        """``real``: the real frames (see the module docstring)."""
        x = _zero_padding(x, None if real is None else real.keep)
        local = self.linear_local(x)
        context = _time_mean(x, real) + self.segment_mean(x, real=real)
        mask = torch.sigmoid(self.linear2(F.relu(self.linear1(context))))
        return local * mask


class CAMDenseTDNNLayer(nn.Module):
    """BN-ReLU -> 1x1 bottleneck -> BN-ReLU -> CAM layer producing ``growth`` new channels."""

    def __init__(
        self, in_channels: int, growth: int, bn_channels: int, kernel_size: int, dilation: int
    ) -> None:
        super().__init__()
        self.nonlinear1 = BNReLU(in_channels)
        self.linear1 = nn.Conv1d(in_channels, bn_channels, 1, bias=False)
        self.nonlinear2 = BNReLU(bn_channels)
        self.cam_layer = CAMLayer(bn_channels, growth, kernel_size, dilation)

    def forward(self, x: torch.Tensor, real: RealFrames | None = None) -> torch.Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))), real)


class CAMDenseTDNNBlock(nn.Module):
    """Dense block: each layer's output is concatenated to its input (``tdnnd1`` ... ``tdnndN``)."""

    def __init__(
        self,
        num_layers: int,
        in_channels: int,
        growth: int,
        bn_channels: int,
        kernel_size: int,
        dilation: int,
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        for i in range(num_layers):
            layer = CAMDenseTDNNLayer(
                in_channels + i * growth, growth, bn_channels, kernel_size, dilation
            )
            self.add_module(f"tdnnd{i + 1}", layer)

    def forward(self, x: torch.Tensor, real: RealFrames | None = None) -> torch.Tensor:
        for i in range(self.num_layers):
            x = torch.cat([x, getattr(self, f"tdnnd{i + 1}")(x, real)], dim=1)
        return x


class TransitLayer(nn.Module):
    """BN-ReLU then a bias-free 1x1 conv (halves the channels)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.nonlinear = BNReLU(in_channels)
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))


class DenseLayer(nn.Module):
    """1x1 conv on the pooled vector ``[B, C]``, then a non-affine BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.nonlinear = BNOnly(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x.unsqueeze(-1)).squeeze(-1))


def statistics_pooling(x: torch.Tensor, real: RealFrames | None = None) -> torch.Tensor:
    """``[B, C, T] -> [B, 2C]``: mean and unbiased standard deviation over time (with
    ``real``, over the real frames)."""
    if real is None:
        return torch.cat([x.mean(dim=-1), x.std(dim=-1, unbiased=True)], dim=-1)
    x = _zero_padding(x, real.keep)
    mean = _time_mean(x, real)
    deviation = _zero_padding(x - mean, real.keep)
    var = deviation.square().sum(-1) / (real.count.squeeze(-1) - 1)
    return torch.cat([mean.squeeze(-1), var.sqrt()], dim=-1)


class XVector(nn.Module):
    """Everything after the FCM head, named like the reference's ``xvector`` Sequential."""

    def __init__(
        self,
        in_channels: int,
        embedding_size: int,
        growth_rate: int,
        bn_size: int,
        init_channels: int,
    ) -> None:
        super().__init__()
        self.tdnn = TDNNLayer(in_channels, init_channels, 5, stride=2)
        channels = init_channels
        for i, (layers, kernel, dilation) in enumerate(
            zip(BLOCK_LAYERS, BLOCK_KERNELS, BLOCK_DILATIONS, strict=True)
        ):
            block = CAMDenseTDNNBlock(
                layers, channels, growth_rate, bn_size * growth_rate, kernel, dilation
            )
            self.add_module(f"block{i + 1}", block)
            channels += layers * growth_rate
            self.add_module(f"transit{i + 1}", TransitLayer(channels, channels // 2))
            channels //= 2
        self.out_nonlinear = BNReLU(channels)
        self.dense = DenseLayer(channels * 2, embedding_size)

    def forward(self, x: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` [B, C, T] (the head's output, zero past ``frames`` [B] real frames if given)."""
        x = self.tdnn(x)
        # The TDNN's stride 2 (kernel 5, padding 2) keeps ceil(frames / 2) real frames.
        real = None if frames is None else _real_frames((frames + 1) // 2, x.size(-1))
        for i in range(len(BLOCK_LAYERS)):
            x = getattr(self, f"transit{i + 1}")(getattr(self, f"block{i + 1}")(x, real))
        x = self.out_nonlinear(x)
        return self.dense(statistics_pooling(x, real))


class CAMPPlus(nn.Module):
    """Speaker encoder: ``[B, T, feat_dim]`` mean-normalised fbank -> ``[B, embedding_size]``."""

    # The configuration IndexTTS2 builds (CAMPPlus(feat_dim=80, embedding_size=192), 3D-Speaker
    # defaults for the rest).
    DEFAULTS = {
        "feat_dim": 80,
        "embedding_size": 192,
        "growth_rate": 32,
        "bn_size": 4,
        "init_channels": 128,
    }

    def __init__(
        self,
        feat_dim: int = 80,
        embedding_size: int = 192,
        growth_rate: int = 32,
        bn_size: int = 4,
        init_channels: int = 128,
    ) -> None:
        super().__init__()
        self.head = FCM(feat_dim=feat_dim)
        self.xvector = XVector(
            self.head.out_channels, embedding_size, growth_rate, bn_size, init_channels
        )

    @classmethod
    def from_config(cls, cfg: dict | None) -> CAMPPlus:
        """Build from constructor kwargs (``feat_dim``, ``embedding_size``, ``growth_rate``,
        ``bn_size``, ``init_channels``); missing keys take the official values."""
        cfg = dict(cfg or {})
        unknown = sorted(set(cfg) - set(cls.DEFAULTS))
        if unknown:
            raise ValueError(
                f"CAMPPlus config: unknown key(s) {unknown}; known: {sorted(cls.DEFAULTS)}"
            )
        return cls(**{**cls.DEFAULTS, **{k: int(v) for k, v in cfg.items()}})

    def forward(self, x: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` [B, T, feat_dim] -> [B, embedding_size]. ``frames`` [B] int: each row's real
        frames, the rest of ``x`` being padding (see the module docstring); None: all real."""
        x = x.transpose(1, 2)
        if frames is not None:
            frames = frames.to(x.device)
        keep = _keep(frames, x.size(-1))
        return self.xvector(self.head(_zero_padding(x, keep), keep), frames)


# The forward above, kept before tts.fast.patched() can replace CAMPPlus.forward.
PLAIN_FORWARD = CAMPPlus.forward
