"""Perceiver resampler: a fixed set of learned latents cross-attends to a variable-length context.

IndexTTS2 uses it twice: 32 latents of width ``model_dim`` summarise the speaker Conformer
output, one 1024-wide latent summarises the emotion Conformer output. Each of the ``depth``
layers is ``latents += Attn(latents, [latents; context])`` then ``latents += FF(latents)``; the
keys and values include the latents themselves ("cross-attention including queries"). The
feed-forward is a GEGLU with inner width ``int(dim * mult * 2 / 3)`` and the output norm is
``normalize(x) * sqrt(dim) * gamma``.

State-dict names mirror the reference: ``latents``, ``proj_context``, ``layers.{i}.0.to_q`` /
``to_kv`` / ``to_out`` (attention), ``layers.{i}.1.0`` / ``layers.{i}.1.2`` (feed-forward
linears; index 1 is the parameter-free GEGLU), ``norm.gamma``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GEGLU(nn.Module):
    """Split the last dim in (value, gate) halves and return value * GELU(gate) (exact erf)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = x.chunk(2, dim=-1)
        return F.gelu(gate) * value


def feed_forward(dim: int, mult: float) -> nn.Sequential:
    """Linear(dim -> 2*inner) -> GEGLU -> Linear(inner -> dim); inner = int(dim*mult*2/3)."""
    inner = int(dim * mult * 2 / 3)
    return nn.Sequential(nn.Linear(dim, inner * 2), GEGLU(), nn.Linear(inner, dim))


class PerceiverAttention(nn.Module):
    """Multi-head attention of the latents over ``[latents; context]``, no biases."""

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        self.heads = heads
        inner = dim_head * heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(
        self, latents: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """latents [B, N, D], context [B, T, D], mask [B, N+T] (True = attend) or None."""
        kv_input = torch.cat((latents, context), dim=-2)
        q = self.to_q(latents)
        k, v = self.to_kv(kv_input).chunk(2, dim=-1)
        b = latents.size(0)
        q, k, v = (t.view(b, t.size(1), self.heads, -1).transpose(1, 2) for t in (q, k, v))
        attn_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.to_out(out.transpose(1, 2).reshape(b, latents.size(1), -1))


class RMSNorm(nn.Module):
    """L2-normalise the last dim (eps 1e-12), times sqrt(dim), times a learned gain."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) * self.scale * self.gamma


class PerceiverResampler(nn.Module):
    """Context ``[B, T, dim_context]`` (+ key mask) -> ``[B, num_latents, dim]``."""

    def __init__(
        self,
        dim: int,
        depth: int = 2,
        dim_context: int | None = None,
        num_latents: int = 32,
        dim_head: int = 64,
        heads: int = 8,
        ff_mult: float = 4,
    ):
        super().__init__()
        dim_context = dim if dim_context is None else dim_context
        self.latents = nn.Parameter(torch.empty(num_latents, dim))
        self.proj_context = nn.Linear(dim_context, dim) if dim_context != dim else nn.Identity()
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), feed_forward(dim, ff_mult)])
            for _ in range(depth)
        )
        self.norm = RMSNorm(dim)

    def forward(self, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` covers ``[latents; context]`` keys: [B, num_latents + T], True = valid."""
        context = self.proj_context(context)
        latents = self.latents.unsqueeze(0).expand(context.size(0), -1, -1)
        for attn, ff in self.layers:
            latents = attn(latents, context, mask) + latents
            latents = ff(latents) + latents
        return self.norm(latents)
