"""MaskGCT semantic codec (RepCodec): w2v-bert features -> discrete semantic codes and back.

IndexTTS2 uses it in two places:

* the speaker prompt: ``quantize(features)`` turns normalised w2v-bert layer-17 features
  ``[B, T, hidden]`` into codes ``[B, T]`` and their continuous re-embedding ``[B, T, hidden]``
  (the latter, ``S_ref``, feeds the length regulator);
* the generated codes: ``quantizer.vq2emb(codes.unsqueeze(1))`` maps GPT codes back to
  ``[B, hidden, T]`` embeddings.

Structure (attribute names are the checkpoint keys): ``encoder`` = [VocosBackbone, Linear],
``decoder`` = the same shapes (never run at inference, present because the checkpoint holds it
and the load is strict), ``quantizer.quantizers.0`` = a factorised VQ: weight-normed 1x1 conv
``hidden -> codebook_dim``, cosine nearest-neighbour lookup in ``codebook``, weight-normed 1x1
conv back to ``hidden``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv1d_gemm(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """``conv(x)`` (stride 1, no groups) as one im2col matrix product.

    Used for the wide input conv (hidden x 7 taps = 7168-term sums): oneDNN's CPU convolution
    accumulates those with ~8x the float32 error of a GEMM (measured 1.9e-5 vs 2.2e-6 on the
    fixture), which would eat most of the parity tolerance downstream. Same speed on CPU.
    """
    (k,), (pad,) = conv.kernel_size, conv.padding
    cols = F.pad(x, (pad, pad)).unfold(2, k, 1)  # [B, C, T, k]
    cols = cols.transpose(2, 3).reshape(x.shape[0], -1, cols.shape[2])  # [B, C*k, T]
    out = conv.weight.reshape(conv.weight.shape[0], -1) @ cols
    return out if conv.bias is None else out + conv.bias[:, None]


class ConvNeXtBlock(nn.Module):
    """1-D ConvNeXt block: depthwise conv k7 -> LayerNorm -> MLP (GELU) -> layer scale -> residual."""

    def __init__(self, dim: int, intermediate_dim: int):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.pwconv2 = nn.Linear(intermediate_dim, dim)
        self.gamma = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C, T]
        h = self.dwconv(x).transpose(1, 2)
        h = self.pwconv2(F.gelu(self.pwconv1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


class VocosBackbone(nn.Module):
    """Conv embed k7 -> LayerNorm -> ConvNeXt blocks -> LayerNorm. ``[B, C_in, T] -> [B, T, dim]``."""

    def __init__(self, input_channels: int, dim: int, intermediate_dim: int, num_layers: int):
        super().__init__()
        self.embed = nn.Conv1d(input_channels, dim, kernel_size=7, padding=3)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.convnext = nn.ModuleList(
            [ConvNeXtBlock(dim, intermediate_dim) for _ in range(num_layers)]
        )
        self.final_layer_norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(conv1d_gemm(x, self.embed).transpose(1, 2)).transpose(1, 2)
        for block in self.convnext:
            x = block(x)
        return self.final_layer_norm(x.transpose(1, 2))


class WNConv1d(nn.Module):
    """Weight-normed 1x1-style Conv1d held as plain ``weight_g`` / ``weight_v`` parameters.

    Effective weight = ``g * v / ||v||`` with the norm over every dim except 0 (no eps), exactly
    the legacy ``torch.nn.utils.weight_norm`` formula, recomputed every call.
    Parameter registration order (bias, weight_g, weight_v) follows the checkpoint's key order.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1):
        super().__init__()
        self.padding = (kernel_size - 1) // 2
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.weight_g = nn.Parameter(torch.empty(out_channels, 1, 1))
        self.weight_v = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size))

    def weight(self) -> torch.Tensor:
        v = self.weight_v
        return self.weight_g * v / v.norm(dim=(1, 2), keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.weight(), self.bias, padding=self.padding)


class FactorizedVQ(nn.Module):
    """Low-dimensional VQ with cosine code search; returns the *raw* codebook row, projected up."""

    def __init__(self, input_dim: int, codebook_size: int, codebook_dim: int):
        super().__init__()
        if input_dim == codebook_dim:
            # The reference swaps in identities here; no shipped config does this.
            raise ValueError("semantic codec: hidden_size == codebook_dim is not supported")
        self.in_project = WNConv1d(input_dim, codebook_dim)
        self.out_project = WNConv1d(codebook_dim, input_dim)
        self.codebook = nn.Embedding(codebook_size, codebook_dim)

    def nearest(self, z_e: torch.Tensor) -> torch.Tensor:
        """Codebook index per frame: ``[B, D, T] -> [B, T]`` (int64).

        Both sides are L2-normalised, and the squared-distance formula of the reference is kept
        (``|e|^2 - 2 e.c + |c|^2``, first index on ties): it differs from a bare argmax of the dot
        product only by rounding, but near-ties must resolve the same way.
        """
        b = z_e.shape[0]
        enc = F.normalize(z_e.transpose(1, 2).reshape(-1, z_e.shape[1]))
        book = F.normalize(self.codebook.weight)
        dist = enc.pow(2).sum(1, keepdim=True) - 2 * enc @ book.t() + book.pow(2).sum(1)[None]
        return (-dist).max(1)[1].view(b, -1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``z [B, hidden, T]`` -> (quantized ``[B, hidden, T]``, codes ``[B, T]``, z_e ``[B, D, T]``)."""
        z_e = self.in_project(z)
        codes = self.nearest(z_e)
        return self.vq2emb(codes), codes, z_e

    def vq2emb(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, T]`` -> ``[B, hidden, T]`` (codebook rows through ``out_project``)."""
        return self.out_project(self.codebook(codes).transpose(1, 2))


class ResidualVQ(nn.Module):
    """Stack of factorised VQs applied to successive residuals (IndexTTS2: exactly one)."""

    def __init__(self, input_dim: int, num_quantizers: int, codebook_size: int, codebook_dim: int):
        super().__init__()
        self.num_quantizers = num_quantizers
        self.quantizers = nn.ModuleList(
            [FactorizedVQ(input_dim, codebook_size, codebook_dim) for _ in range(num_quantizers)]
        )

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``z [B, hidden, T]`` -> (sum of quantized ``[B, hidden, T]``, codes ``[N, B, T]``,
        z_e of each quantizer ``[N, B, D, T]``)."""
        out = torch.zeros_like(z)
        residual = z
        codes, z_es = [], []
        for quantizer in self.quantizers:
            z_q, idx, z_e = quantizer(residual)
            out = out + z_q
            residual = residual - z_q
            codes.append(idx)
            z_es.append(z_e)
        return out, torch.stack(codes), torch.stack(z_es)

    def vq2emb(self, vq: torch.Tensor, n_quantizers: int | None = None) -> torch.Tensor:
        """Codes ``[N, B, T]`` (quantizer first) -> summed embeddings ``[B, hidden, T]``.

        The reference indexes ``vq[i]`` for quantizer ``i`` and IndexTTS2 passes
        ``codes.unsqueeze(1)`` (``[B, 1, T]``), which is only right for B=1. We keep that
        signature (identical results for the ``[1, 1, T]`` input); for one quantizer, a
        ``[B, 1, T]`` input with B>1 is read as the batch it obviously is instead of silently
        using the first row only.
        """
        n = self.num_quantizers if n_quantizers is None else min(n_quantizers, self.num_quantizers)
        if vq.dim() == 2:
            vq = vq.unsqueeze(0)
        if n == 1 and vq.shape[0] > 1 and vq.shape[1] == 1:
            vq = vq.transpose(0, 1)
        out = self.quantizers[0].vq2emb(vq[0])
        for i in range(1, n):
            out = out + self.quantizers[i].vq2emb(vq[i])
        return out


class RepCodec(nn.Module):
    """The MaskGCT semantic codec at inference (no downsampling: ``downsample_scale`` is 1)."""

    def __init__(
        self,
        codebook_size: int = 8192,
        hidden_size: int = 1024,
        codebook_dim: int = 8,
        vocos_dim: int = 384,
        vocos_intermediate_dim: int = 2048,
        vocos_num_layers: int = 12,
        num_quantizers: int = 1,
    ):
        super().__init__()
        self.hidden_size = hidden_size
        self.encoder = nn.Sequential(
            VocosBackbone(hidden_size, vocos_dim, vocos_intermediate_dim, vocos_num_layers),
            nn.Linear(vocos_dim, hidden_size),
        )
        self.decoder = nn.Sequential(
            VocosBackbone(hidden_size, vocos_dim, vocos_intermediate_dim, vocos_num_layers),
            nn.Linear(vocos_dim, hidden_size),
        )
        self.quantizer = ResidualVQ(hidden_size, num_quantizers, codebook_size, codebook_dim)

    @classmethod
    def from_config(cls, cfg: dict) -> RepCodec:
        """Build from the ``semantic_codec`` section of config.yaml (official key names)."""
        cfg = dict(cfg or {})
        scale = cfg.get("downsample_scale", 1)
        if scale is not None and scale > 1:
            raise ValueError("semantic codec: downsample_scale > 1 is not supported")
        names = (
            "codebook_size",
            "hidden_size",
            "codebook_dim",
            "vocos_dim",
            "vocos_intermediate_dim",
            "vocos_num_layers",
            "num_quantizers",
        )
        return cls(**{k: int(cfg[k]) for k in names if k in cfg})

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """Features ``[B, T, hidden]`` -> quantizer input ``[B, hidden, T]``."""
        return self.encoder(features.transpose(1, 2)).transpose(1, 2)

    def quantize_detailed(
        self, features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes ``[B, T]``, quantized ``[B, T, hidden]``, encoder_out ``[B, hidden, T]``,
        z_e of the first quantizer ``[B, codebook_dim, T]``)."""
        enc = self.encode(features)
        quantized, codes, z_es = self.quantizer(enc)
        return codes[0], quantized.transpose(1, 2), enc, z_es[0]

    def quantize(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``[B, T, hidden]`` -> (codes ``[B, T]`` int64, quantized ``[B, T, hidden]``).

        With one quantizer (IndexTTS2) codes are ``[B, T]`` for every B; the reference returns
        ``[N, B, T]`` only when N > 1, and so does this.
        """
        enc = self.encode(features)
        quantized, codes, _ = self.quantizer(enc)
        if codes.shape[0] == 1:
            codes = codes[0]
        return codes, quantized.transpose(1, 2)

    def vq2emb(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, T]`` -> embeddings ``[B, T, hidden]`` (the generated-codes path, batched)."""
        return self.quantizer.vq2emb(codes.unsqueeze(0)).transpose(1, 2)
