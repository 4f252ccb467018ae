"""DiT velocity estimator of the s2mel flow-matching decoder (IndexTTS2 / Seed-VC style).

Input per frame: noisy mel (80) ‖ prompt mel (80) ‖ projected semantic condition ‖ speaker style
(192), merged to ``hidden_dim`` and run through a gpt-fast style transformer whose norms are
modulated by the timestep embedding (``W(t)·RMSNorm(x) + B(t)``), with U-ViT skips between the
first and second half of the layers. A long skip re-injects the noisy mel, then a WaveNet head
conditioned on a second timestep embedding and a DiT-style final layer produce the velocity
``[B, 80, T]``.

Names of every parameter mirror the official ``s2mel.pth`` keys under ``cfm.estimator.`` so the
state dict loads with no renaming. Weight norm is held as plain ``weight_g``/``weight_v``
parameters and fused on the fly (the reference never removes it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tts.models.length_regulator import sequence_mask

ROPE_TABLE_LEN = 16384  # hard-coded block size of the reference (positions available to RoPE)
ROPE_BASE = 10000
TIMESTEP_FREQ_DIM = 256


# ---------------------------------------------------------------------------------------------
# Weight-normed layers (old torch weight_norm layout: bias, weight_g, weight_v)
# ---------------------------------------------------------------------------------------------


def fuse_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Effective weight ``g * v / ||v||``, the norm over every dim but 0, without eps."""
    norm = torch.linalg.vector_norm(v, dim=tuple(range(1, v.dim())), keepdim=True)
    return v * (g / norm)


class WNLinear(nn.Module):
    """Linear layer with weight norm: ``weight_g [out, 1]``, ``weight_v [out, in]``."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.empty(out_features))
        self.weight_g = nn.Parameter(torch.empty(out_features, 1))
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, fuse_weight_norm(self.weight_g, self.weight_v), self.bias)


class WNConv1d(nn.Module):
    """Unpadded Conv1d with weight norm: ``weight_g [out, 1, 1]``, ``weight_v [out, in, k]``."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1
    ) -> None:
        super().__init__()
        self.dilation = dilation
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.weight_g = nn.Parameter(torch.empty(out_channels, 1, 1))
        self.weight_v = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size))

    @property
    def kernel_size(self) -> int:
        return self.weight_v.shape[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = fuse_weight_norm(self.weight_g, self.weight_v)
        return F.conv1d(x, w, self.bias, dilation=self.dilation)


class NormConv1d(nn.Module):
    """Holder level that exists only because the checkpoint nests ``conv.conv``."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1
    ) -> None:
        super().__init__()
        self.conv = WNConv1d(in_channels, out_channels, kernel_size, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def reflect_pad1d(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Reflect padding that also works when the signal is not longer than the padding.

    Too-short inputs first get zeros appended on the right (then cut off again after padding),
    as the reference's wrapper does.
    """
    if left == 0 and right == 0:
        return x
    length = x.shape[-1]
    max_pad = max(left, right)
    extra = 0
    if length <= max_pad:
        extra = max_pad - length + 1
        x = F.pad(x, (0, extra))
    padded = F.pad(x, (left, right), mode="reflect")
    return padded[..., : padded.shape[-1] - extra]


class SConv1d(nn.Module):
    """Stride-1 weight-normed Conv1d padding itself with **reflect** padding ("same" length).

    Quirk of the reference: WaveNet passes a zero-padding amount to this wrapper, which swallows
    it and pads by reflection instead (left gets the larger half for even totals).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1
    ) -> None:
        super().__init__()
        self.conv = NormConv1d(in_channels, out_channels, kernel_size, dilation)
        total = (kernel_size - 1) * dilation
        self.pad_right = total // 2
        self.pad_left = total - self.pad_right

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, C, T]``. ``lengths [B]``: row ``b`` is valid in ``[0, lengths[b])`` and
        padded after; each row then ends with the reflection of its own last frames, so its
        valid outputs are those of the row alone (used by batches of unequal segments)."""
        if lengths is None or self.pad_right == 0:
            return self.conv(reflect_pad1d(x, self.pad_left, self.pad_right))
        return self.conv(
            reflect_pad1d(reflect_row_ends(x, lengths, self.pad_right), self.pad_left, 0)
        )


def reflect_row_ends(x: torch.Tensor, lengths: torch.Tensor, right: int) -> torch.Tensor:
    """``x [B, C, T]`` -> ``[B, C, T + right]``: position ``lengths[b] + j`` (``j < right``) of
    row ``b`` holds frame ``lengths[b] - 2 - j`` (reflect padding at the row's own end); every
    other position keeps ``x`` (zeros past ``T``). Rows must be longer than ``right``."""
    b, c, t = x.shape
    x = F.pad(x, (0, right))
    pos = torch.arange(t + right, device=x.device).view(1, -1)
    lens = lengths.to(x.device).view(-1, 1)
    off = pos - lens
    src = torch.where((off >= 0) & (off < right), lens - 2 - off, pos)
    return x.gather(2, src.unsqueeze(1).expand(b, c, -1))


class WaveNet(nn.Module):
    """Non-causal gated WaveNet (VITS ``WN``) with a global conditioning input ``g``."""

    def __init__(
        self,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        gin_channels: int,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"wavenet kernel_size must be odd, got {kernel_size}")
        self.hidden_channels = hidden_channels
        self.n_layers = n_layers
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        if gin_channels:
            self.cond_layer = SConv1d(gin_channels, 2 * hidden_channels * n_layers, 1)
        else:
            self.cond_layer = None
        for i in range(n_layers):
            self.in_layers.append(
                SConv1d(
                    hidden_channels, 2 * hidden_channels, kernel_size, dilation=dilation_rate**i
                )
            )
            res_skip = 2 * hidden_channels if i < n_layers - 1 else hidden_channels
            self.res_skip_layers.append(SConv1d(hidden_channels, res_skip, 1))

    def forward(
        self,
        x: torch.Tensor,
        x_mask: torch.Tensor,
        g: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x [B, H, T]``, ``x_mask`` broadcastable to it, ``g [B, gin, 1]`` -> ``[B, H, T]``.
        ``lengths [B]``: the valid frames of padded rows (see :meth:`SConv1d.forward`)."""
        h = self.hidden_channels
        output = torch.zeros_like(x)
        if g is not None and self.cond_layer is not None:
            g = self.cond_layer(g)
        for i in range(self.n_layers):
            x_in = self.in_layers[i](x, lengths)
            if g is not None:
                g_l = g[:, i * 2 * h : (i + 1) * 2 * h, :]
            else:
                g_l = torch.zeros_like(x_in)
            a = x_in + g_l
            t_part, s_part = torch.split(a, h, dim=1)
            acts = torch.tanh(t_part) * torch.sigmoid(s_part)
            res_skip = self.res_skip_layers[i](acts)
            if i < self.n_layers - 1:
                x = (x + res_skip[:, :h, :]) * x_mask
                output = output + res_skip[:, h:, :]
            else:
                output = output + res_skip
        return output * x_mask


# ---------------------------------------------------------------------------------------------
# Embedders and the final layer
# ---------------------------------------------------------------------------------------------


class TimestepEmbedder(nn.Module):
    """Sinusoid of ``1000·t`` (**cos first, then sin**) -> Linear -> SiLU -> Linear."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = TIMESTEP_FREQ_DIM) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )
        self.frequency_embedding_size = frequency_embedding_size
        self.scale = 1000
        half = frequency_embedding_size // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(0, half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs)

    def timestep_embedding(self, t: torch.Tensor) -> torch.Tensor:
        args = self.scale * t[:, None].float() * self.freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.frequency_embedding_size % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """``t [N]`` -> ``[N, hidden]``."""
        return self.mlp(self.timestep_embedding(t))


class FinalLayer(nn.Module):
    """Non-affine LayerNorm (eps 1e-6), ``x·(1+scale)+shift`` from SiLU(c), WN Linear."""

    def __init__(self, hidden_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = WNLinear(hidden_size, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        x = self.norm_final(x) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
        return self.linear(x)


# ---------------------------------------------------------------------------------------------
# gpt-fast style transformer with adaptive RMSNorm
# ---------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 and cast back, then scaled by its learned weight."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + self.eps)
        return out.type_as(x) * self.weight


class AdaptiveLayerNorm(nn.Module):
    """``W(c)·RMSNorm(x) + B(c)`` with ``(W, B) = split(project_layer(c))`` (no ``1+``)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.dim = dim
        self.project_layer = nn.Linear(dim, 2 * dim)
        self.norm = RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        if c is None:
            return self.norm(x)
        weight, bias = torch.split(self.project_layer(c), self.dim, dim=-1)
        return weight * self.norm(x) + bias


def rope_table(length: int, head_dim: int, base: float = ROPE_BASE) -> torch.Tensor:
    """``[length, head_dim/2, 2]`` float32 table of (cos, sin) for interleaved-pair RoPE."""
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    angles = torch.outer(torch.arange(length), inv)
    rot = torch.polar(torch.ones_like(angles), angles)
    return torch.stack([rot.real, rot.imag], dim=-1)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (0,1), (2,3), ... of each head of ``x [B, T, H, D]`` in float32."""
    xp = x.float().reshape(*x.shape[:-1], -1, 2)
    rot = table.view(1, xp.size(1), 1, xp.size(3), 2)
    out = torch.stack(
        [
            xp[..., 0] * rot[..., 0] - xp[..., 1] * rot[..., 1],
            xp[..., 1] * rot[..., 0] + xp[..., 0] * rot[..., 1],
        ],
        -1,
    )
    return out.flatten(3).type_as(x)


class Attention(nn.Module):
    """Bias-free fused-QKV self-attention with RoPE and a boolean key mask (non-causal)."""

    def __init__(self, dim: int, n_head: int, head_dim: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.head_dim = head_dim
        self.wqkv = nn.Linear(dim, 3 * n_head * head_dim, bias=False)
        self.wo = nn.Linear(n_head * head_dim, dim, bias=False)

    def forward(
        self, x: torch.Tensor, rope: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        b, t, _ = x.shape
        size = self.n_head * self.head_dim
        q, k, v = self.wqkv(x).split([size, size, size], dim=-1)
        q = apply_rope(q.view(b, t, self.n_head, self.head_dim), rope)
        k = apply_rope(k.view(b, t, self.n_head, self.head_dim), rope)
        v = v.view(b, t, self.n_head, self.head_dim)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0)
        return self.wo(y.transpose(1, 2).contiguous().view(b, t, size))


class FeedForward(nn.Module):
    """SwiGLU: ``w2(SiLU(w1 x) · w3 x)``, no biases."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """Pre-norm block; ``skip_in_linear`` merges a U-ViT skip when one arrives."""

    def __init__(
        self, dim: int, n_head: int, head_dim: int, ffn_hidden: int, eps: float, uvit: bool
    ) -> None:
        super().__init__()
        self.attention = Attention(dim, n_head, head_dim)
        self.feed_forward = FeedForward(dim, ffn_hidden)
        self.ffn_norm = AdaptiveLayerNorm(dim, eps)
        self.attention_norm = AdaptiveLayerNorm(dim, eps)
        self.skip_in_linear = nn.Linear(2 * dim, dim) if uvit else None

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        rope: torch.Tensor,
        mask: torch.Tensor | None,
        skip: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.skip_in_linear is not None and skip is not None:
            x = self.skip_in_linear(torch.cat([x, skip], dim=-1))
        h = x + self.attention(self.attention_norm(x, c), rope, mask)
        return h + self.feed_forward(self.ffn_norm(h, c))


def _round_up(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - n % k


class Transformer(nn.Module):
    """Stack of blocks + final adaptive norm; U-ViT: layers ``< n//2`` push, ``> n//2`` pop."""

    def __init__(
        self, dim: int, n_layer: int, n_head: int, head_dim: int, uvit: bool, eps: float = 1e-5
    ) -> None:
        super().__init__()
        ffn_hidden = _round_up(int(2 * (4 * dim) / 3), 256)
        self.layers = nn.ModuleList(
            TransformerBlock(dim, n_head, head_dim, ffn_hidden, eps, uvit) for _ in range(n_layer)
        )
        self.norm = AdaptiveLayerNorm(dim, eps)
        self.uvit = uvit
        self.emit_skip = {i for i in range(n_layer) if uvit and i < n_layer // 2}
        self.receive_skip = {i for i in range(n_layer) if uvit and i > n_layer // 2}
        # Not a buffer: stays float32 on CPU whatever the module dtype; copied per device on use.
        self._rope_cpu = rope_table(ROPE_TABLE_LEN, head_dim)
        self._rope_dev: torch.Tensor | None = None

    def rope(self, length: int, device: torch.device) -> torch.Tensor:
        if length > ROPE_TABLE_LEN:
            raise ValueError(
                f"sequence of {length} frames exceeds the RoPE table ({ROPE_TABLE_LEN})"
            )
        table = self._rope_dev
        if table is None or table.device != device:
            table = self._rope_dev = self._rope_cpu.to(device)
        return table[:length]

    def forward(self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``x [B, T, D]``, ``c [B, 1, D]`` (time embedding), ``mask`` bool ``[B|1, 1, T, T]``."""
        rope = self.rope(x.size(1), x.device)
        skips: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            skip = skips.pop() if i in self.receive_skip else None
            x = layer(x, c, rope, mask, skip)
            if i in self.emit_skip:
                skips.append(x)
        return self.norm(x, c)


# ---------------------------------------------------------------------------------------------
# DiT
# ---------------------------------------------------------------------------------------------


class DiT(nn.Module):
    """The CFM velocity estimator (``cfm.estimator``).

    Unused-but-present parameters (checkpoint completeness): ``x_embedder``, ``cond_embedder``,
    ``content_mask_embedder``; ``input_pos`` is the constant ``arange(16384)`` buffer.
    """

    def __init__(
        self,
        hidden_dim: int,
        num_heads: int,
        depth: int,
        in_channels: int = 80,
        content_dim: int = 512,
        content_codebook_size: int = 1024,
        style_dim: int = 192,
        style_condition: bool = True,
        uvit_skip_connection: bool = True,
        long_skip_connection: bool = True,
        final_layer_type: str = "wavenet",
        wavenet_hidden: int = 512,
        wavenet_layers: int = 8,
        wavenet_kernel: int = 5,
        wavenet_dilation: int = 1,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.style_condition = style_condition
        self.long_skip_connection = long_skip_connection
        self.final_layer_type = final_layer_type
        self.transformer = Transformer(
            hidden_dim, depth, num_heads, hidden_dim // num_heads, uvit_skip_connection
        )
        self.x_embedder = WNLinear(in_channels, hidden_dim)
        self.cond_embedder = nn.Embedding(content_codebook_size, hidden_dim)
        self.cond_projection = nn.Linear(content_dim, hidden_dim)
        self.t_embedder = TimestepEmbedder(hidden_dim)
        self.register_buffer("input_pos", torch.arange(ROPE_TABLE_LEN))
        if final_layer_type == "wavenet":
            if wavenet_hidden != hidden_dim:
                raise ValueError(
                    "wavenet.hidden_dim must equal DiT.hidden_dim (the final layer uses t1)"
                )
            self.t_embedder2 = TimestepEmbedder(wavenet_hidden)
            self.conv1 = nn.Linear(hidden_dim, wavenet_hidden)
            self.conv2 = nn.Conv1d(wavenet_hidden, in_channels, 1)
            self.wavenet = WaveNet(
                wavenet_hidden, wavenet_kernel, wavenet_dilation, wavenet_layers, wavenet_hidden
            )
            self.final_layer = FinalLayer(wavenet_hidden, wavenet_hidden)
            self.res_projection = nn.Linear(hidden_dim, wavenet_hidden)
        elif final_layer_type == "mlp":
            self.final_mlp = nn.Sequential(
                nn.Linear(hidden_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, in_channels)
            )
        else:
            raise ValueError(f"unknown DiT.final_layer_type {final_layer_type!r}")
        self.content_mask_embedder = nn.Embedding(1, hidden_dim)
        self.skip_linear = nn.Linear(hidden_dim + in_channels, hidden_dim)
        merge_in = hidden_dim + 2 * in_channels + (style_dim if style_condition else 0)
        self.cond_x_merge_linear = nn.Linear(merge_in, hidden_dim)

    @classmethod
    def from_config(cls, s2mel_cfg: dict) -> DiT:
        """Build from the ``s2mel`` config section (``DiT``, ``wavenet``, ``style_encoder``)."""
        d = s2mel_cfg["DiT"]
        w = s2mel_cfg.get("wavenet", {})
        for flag in ("time_as_token", "style_as_token", "is_causal"):
            if d.get(flag, False):
                raise NotImplementedError(
                    f"DiT.{flag}=true is not supported (IndexTTS2 uses false)"
                )
        if d.get("f0_condition", False):
            raise NotImplementedError("DiT.f0_condition=true is not supported")
        if w.get("style_condition", d.get("style_condition", True)) != d.get(
            "style_condition", True
        ):
            raise ValueError("DiT.style_condition and wavenet.style_condition must agree")
        return cls(
            hidden_dim=int(d["hidden_dim"]),
            num_heads=int(d["num_heads"]),
            depth=int(d["depth"]),
            in_channels=int(d["in_channels"]),
            content_dim=int(d["content_dim"]),
            content_codebook_size=int(d["content_codebook_size"]),
            style_dim=int(s2mel_cfg["style_encoder"]["dim"]),
            style_condition=bool(d.get("style_condition", True)),
            uvit_skip_connection=bool(d.get("uvit_skip_connection", False)),
            long_skip_connection=bool(d.get("long_skip_connection", False)),
            final_layer_type=str(d.get("final_layer_type", "wavenet")),
            wavenet_hidden=int(w.get("hidden_dim", d["hidden_dim"])),
            wavenet_layers=int(w.get("num_layers", 8)),
            wavenet_kernel=int(w.get("kernel_size", 5)),
            wavenet_dilation=int(w.get("dilation_rate", 1)),
        )

    def forward(
        self,
        x: torch.Tensor,
        prompt_x: torch.Tensor,
        x_lens: torch.Tensor,
        t: torch.Tensor,
        style: torch.Tensor,
        cond: torch.Tensor,
        taps: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Velocity ``[B, 80, T]``.

        Args:
            x: noisy mel ``[B, 80, T]``.
            prompt_x: prompt mel in the prompt frames, zeros elsewhere ``[B, 80, T]``.
            x_lens: valid frames ``[B]`` or ``[1]`` (broadcast over the batch).
            t: flow time ``[B]`` (or ``[1]``, broadcast).
            style: speaker style ``[B, 192]``.
            cond: length-regulated semantic condition ``[B, T, content_dim]``.
            taps: if given, filled with internal outputs (``t_embedder``, ``cond_x_merge_linear``,
                ``transformer``, ``skip_linear``, ``wavenet``, ``final_layer``, ``conv2``).
        """
        _, _, T = x.shape
        t1 = self.t_embedder(t)
        cond = self.cond_projection(cond)
        x = x.transpose(1, 2)
        prompt_x = prompt_x.transpose(1, 2)
        parts = [x, prompt_x, cond]
        if self.style_condition:
            parts.append(style[:, None, :].repeat(1, T, 1))
        x_in = self.cond_x_merge_linear(torch.cat(parts, dim=-1))

        x_mask = sequence_mask(x_lens, T).to(x.device).unsqueeze(1)  # [B, 1, T]
        attn_mask = x_mask[:, None, :].expand(-1, -1, T, -1)  # [B, 1, T, T]: key padding
        x_res = self.transformer(x_in, t1.unsqueeze(1), attn_mask)
        if taps is not None:
            taps.update(t_embedder=t1, cond_x_merge_linear=x_in, transformer=x_res)
        if self.long_skip_connection:
            x_res = self.skip_linear(torch.cat([x_res, x], dim=-1))
            if taps is not None:
                taps["skip_linear"] = x_res
        if self.final_layer_type != "wavenet":
            return self.final_mlp(x_res).transpose(1, 2)
        h = self.conv1(x_res).transpose(1, 2)
        t2 = self.t_embedder2(t)
        # Rows of unequal length (a padded batch): each row's convolutions reflect at its own
        # end, as the row alone would. Not for one row, nor when the fast path knows that no
        # row is padded (its mask switch, tts.fast.s2mel).
        padded = x_lens.numel() > 1 and not getattr(self.transformer, "drop", False)
        wn = self.wavenet(h, x_mask, g=t2.unsqueeze(2), lengths=x_lens if padded else None)
        h = wn.transpose(1, 2) + self.res_projection(x_res)
        h = self.final_layer(h, t1)
        out = self.conv2(h.transpose(1, 2))
        if taps is not None:
            taps.update(wavenet=wn, final_layer=h, conv2=out)
        return out
