"""Conformer conditioning encoder of the IndexTTS2 GPT (speaker and emotion prompts).

A WeNet-style Conformer as the reference configures it: ``conv2d2`` subsampling (one stride-2
3x3 convolution over the (time, feature) plane), relative-position self-attention with learned
per-head biases ``pos_bias_u``/``pos_bias_v`` and a ``linear_pos`` projection of the sinusoid
table, pre-norm blocks (attention, convolution module, feed-forward, then a block-final
LayerNorm) and a closing ``after_norm``.

Two quirks of the reference are kept on purpose:

* the position term is **not** relative-shifted: the score of query ``i`` and key ``j`` uses
  the sinusoid row ``j`` (the shift helper exists upstream but is never called);
* the sinusoid table ``embed.pos_enc.pe`` is a persistent buffer, so the checkpoint's stored
  table (which may differ from the formula) is what the model uses.

Attribute names mirror the checkpoint keys (``embed.conv.0``, ``embed.out.0``,
``encoders.{i}.self_attn.linear_q`` ...).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def non_pad_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B, max_len] bool, True where the frame index is below the sequence's length.

    Lengths larger than ``max_len`` simply mean "all valid" (the reference's inference path
    passes the feature dimension, 1024, as every length).
    """
    positions = torch.arange(max_len, device=lengths.device, dtype=torch.int64)
    return positions.unsqueeze(0) < lengths.to(torch.int64).unsqueeze(1)


def sinusoid_table(max_len: int, dim: int) -> torch.Tensor:
    """[1, max_len, dim] table: sin on even channels, cos on odd ones, base 10000.

    Computed with the same dtypes and operation order as the reference (int64 positions times
    a float32 frequency row), so a checkpoint lacking the buffer gets bit-identical values.
    """
    table = torch.zeros(max_len, dim)
    position = torch.arange(0, max_len).unsqueeze(1)
    freqs = torch.exp(torch.arange(0, dim, 2) * -(math.log(10000.0) / dim))
    table[:, 0::2] = torch.sin(position * freqs)
    table[:, 1::2] = torch.cos(position * freqs)
    return table.unsqueeze(0)


class RelPositionalEncoding(nn.Module):
    """Scales the input by sqrt(d) and hands out the first T rows of the sinusoid table."""

    def __init__(self, dim: int, max_len: int = 5000):
        super().__init__()
        self.xscale = math.sqrt(dim)
        self.max_len = max_len
        self.register_buffer("pe", sinusoid_table(max_len, dim), persistent=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        length = x.size(1)
        if length >= self.max_len:
            raise ValueError(
                f"conformer input of {length} frames exceeds the table ({self.max_len})"
            )
        return x * self.xscale, self.pe[:, :length].to(x.dtype)


class Conv2dSubsampling2(nn.Module):
    """Halve the frame rate: Conv2d(1->d, k3, s2) + ReLU, flatten (channel-major), Linear.

    ``[B, T, F] -> [B, (T-1)//2, d]``; the mask keeps the input mask at frames 2, 4, 6, ...
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, out_dim, 3, 2), nn.ReLU())
        self.out = nn.Sequential(nn.Linear(out_dim * ((in_dim - 1) // 2), out_dim))
        self.pos_enc = RelPositionalEncoding(out_dim)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.conv(x.unsqueeze(1))  # [B, C, T', F']
        b, c, t, f = x.shape
        x = self.out(x.transpose(1, 2).reshape(b, t, c * f))
        x, pos_emb = self.pos_enc(x)
        return x, pos_emb, mask[:, :, 2::2]


class RelPositionMultiHeadedAttention(nn.Module):
    """Self-attention with Transformer-XL style position biases, without the relative shift.

    scores = ((q + u) k^T + (q + v) p^T) / sqrt(d_k), with p = linear_pos(pos_emb) indexed by key
    position; padded keys get -inf before the softmax and zero probability after it.
    """

    def __init__(self, heads: int, dim: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} not divisible by {heads} heads")
        self.d_k = dim // heads
        self.h = heads
        # Own parameters first: this is also their order in the checkpoint's state dict.
        self.pos_bias_u = nn.Parameter(torch.empty(heads, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.empty(heads, self.d_k))
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.linear_pos = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        """x [B, T, D]; mask [B, 1, T] (True = valid key); pos_emb [1, T, D]."""
        b, t, _ = x.shape
        q = self.linear_q(x).view(b, t, self.h, self.d_k)
        k = self.linear_k(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        v = self.linear_v(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        p = self.linear_pos(pos_emb).view(pos_emb.size(0), -1, self.h, self.d_k).transpose(1, 2)
        q_u = (q + self.pos_bias_u).transpose(1, 2)
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        scores = (q_u @ k.transpose(-2, -1) + q_v @ p.transpose(-2, -1)) / math.sqrt(self.d_k)
        pad = ~mask.unsqueeze(1)  # [B, 1, 1, T]
        attn = scores.masked_fill(pad, float("-inf")).softmax(dim=-1).masked_fill(pad, 0.0)
        out = (attn @ v).transpose(1, 2).reshape(b, t, self.h * self.d_k)
        return self.linear_out(out)


class PositionwiseFeedForward(nn.Module):
    """Linear -> SiLU -> Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_1(x)))


class ConvolutionModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv, LayerNorm over channels, SiLU, pointwise conv.

    Padded frames are zeroed before the first convolution and after the last one.
    """

    def __init__(self, channels: int, kernel_size: int = 15):
        super().__init__()
        if (kernel_size - 1) % 2:
            raise ValueError("the conformer convolution kernel must be odd")
        self.pointwise_conv1 = nn.Conv1d(channels, 2 * channels, 1)
        self.depthwise_conv = nn.Conv1d(
            channels, channels, kernel_size, padding=(kernel_size - 1) // 2, groups=channels
        )
        self.norm = nn.LayerNorm(channels)
        self.pointwise_conv2 = nn.Conv1d(channels, channels, 1)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, present: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x [B, T, C]; mask [B, 1, T] (True = valid frame); ``present`` [B, 1, T] or None:
        False at frames past the input's real end (see :meth:`ConformerEncoder.forward`)."""
        x = x.transpose(1, 2).masked_fill(~mask, 0.0)
        x = F.glu(self.pointwise_conv1(x), dim=1)
        if present is not None:  # what the depthwise convolution's zero padding would read
            x = x.masked_fill(~present, 0.0)
        x = self.depthwise_conv(x)
        x = F.silu(self.norm(x.transpose(1, 2))).transpose(1, 2)
        x = self.pointwise_conv2(x).masked_fill(~mask, 0.0)
        return x.transpose(1, 2)


class ConformerEncoderLayer(nn.Module):
    """Pre-norm block: x += MHA(LN x); x += Conv(LN x); x += FFN(LN x); x = LN_final(x)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, kernel_size: int = 15):
        super().__init__()
        self.self_attn = RelPositionMultiHeadedAttention(heads, dim)
        self.feed_forward = PositionwiseFeedForward(dim, ffn_dim)
        self.conv_module = ConvolutionModule(dim, kernel_size)
        self.norm_ff = nn.LayerNorm(dim, eps=1e-5)
        self.norm_mha = nn.LayerNorm(dim, eps=1e-5)
        self.norm_conv = nn.LayerNorm(dim, eps=1e-5)
        self.norm_final = nn.LayerNorm(dim, eps=1e-5)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        pos_emb: torch.Tensor,
        present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.norm_mha(x), mask, pos_emb)
        x = x + self.conv_module(self.norm_conv(x), mask, present)
        x = x + self.feed_forward(self.norm_ff(x))
        return self.norm_final(x)


class ConformerEncoder(nn.Module):
    """Semantic features ``[B, T, in_dim]`` + lengths -> ``([B, T', dim], mask [B, 1, T'])``."""

    def __init__(
        self,
        input_size: int,
        output_size: int = 256,
        attention_heads: int = 4,
        linear_units: int = 2048,
        num_blocks: int = 6,
        input_layer: str = "conv2d2",
        cnn_module_kernel: int = 15,
    ):
        super().__init__()
        if input_layer != "conv2d2":
            raise NotImplementedError(
                f"conformer input_layer {input_layer!r}: only 'conv2d2' (the IndexTTS2 one) "
                "is implemented"
            )
        self.embed = Conv2dSubsampling2(input_size, output_size)
        self.after_norm = nn.LayerNorm(output_size, eps=1e-5)
        self.encoders = nn.ModuleList(
            ConformerEncoderLayer(output_size, attention_heads, linear_units, cnn_module_kernel)
            for _ in range(num_blocks)
        )

    def forward(
        self, xs: torch.Tensor, lengths: torch.Tensor, frames: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``lengths`` [B]: the frames each row shows (the reference's mask; masked frames
        still reach their neighbours through the convolution module, as upstream).
        ``frames`` [B] or None: where ``xs`` is zero-padded past its real end (to reuse a
        CUDA graph, :mod:`tts.fast.conditioning`), its real length. Frames past it then act
        as absent: hidden from attention and read as the convolutions' zero padding, so
        the kept frames get the values of the unpadded input (up to float rounding)."""
        lengths = lengths.to(xs.device)
        if frames is not None:
            lengths = torch.minimum(lengths, frames)
        mask = non_pad_mask(lengths, xs.size(1)).unsqueeze(1)  # [B, 1, T]
        x, pos_emb, mask = self.embed(xs, mask)
        present = None
        if frames is not None:  # subsampled as the mask is
            present = non_pad_mask(frames, xs.size(1)).unsqueeze(1)[:, :, 2::2]
        for layer in self.encoders:
            x = layer(x, mask, pos_emb, present)
        return self.after_norm(x), mask
