"""Length regulator of the s2mel model: semantic features at 50 Hz -> DiT conditioning at mel rate.

IndexTTS2 uses the *continuous* mode only: project the 1024-d semantic vectors to ``channels``,
stretch them in time with nearest-neighbour interpolation to the requested number of mel frames,
then refine with a small conv stack. The discrete-token ``embedding`` and the ``mask_token`` are
never used at inference, but the checkpoint carries them, so they exist here for a strict load.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def sequence_mask(lengths: torch.Tensor, max_length: int | None = None) -> torch.Tensor:
    """Boolean ``[B, T]`` mask, True where the time index is below each length."""
    if max_length is None:
        max_length = int(lengths.max())
    steps = torch.arange(max_length, dtype=lengths.dtype, device=lengths.device)
    return steps.unsqueeze(0) < lengths.unsqueeze(1)


class LengthRegulator(nn.Module):
    """Continuous-input interpolating length regulator (``InterpolateRegulator``).

    Layout of ``model`` (a Sequential, indices as in the checkpoint): for every entry of
    ``sampling_ratios`` a triple [Conv1d(k3, pad 1), GroupNorm(groups), Mish], then a final
    Conv1d(k1). With an empty ``sampling_ratios`` there is no interpolation and no conv triple.
    """

    def __init__(
        self,
        channels: int,
        sampling_ratios: Sequence[int],
        in_channels: int,
        codebook_size: int = 1024,
        out_channels: int | None = None,
        groups: int = 1,
    ) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.interpolate = len(sampling_ratios) > 0
        # Unused at inference (discrete-mode mask); registered first to keep the checkpoint order.
        self.mask_token = nn.Parameter(torch.zeros(1, channels))
        layers: list[nn.Module] = []
        for _ in sampling_ratios:
            layers += [
                nn.Conv1d(channels, channels, 3, 1, 1),
                nn.GroupNorm(groups, channels),
                nn.Mish(),
            ]
        layers.append(nn.Conv1d(channels, out_channels, 1, 1))
        self.model = nn.Sequential(*layers)
        self.embedding = nn.Embedding(codebook_size, channels)  # discrete mode only: unused
        self.content_in_proj = nn.Linear(in_channels, channels)

    @classmethod
    def from_config(cls, cfg: dict) -> LengthRegulator:
        """Build from the ``s2mel.length_regulator`` section of config.yaml."""
        if cfg.get("is_discrete", False):
            raise NotImplementedError(
                "length_regulator.is_discrete=true is not supported (IndexTTS2 uses false)"
            )
        if cfg.get("vector_quantize", False):
            raise NotImplementedError("length_regulator.vector_quantize=true is not supported")
        if cfg.get("f0_condition", False):
            raise NotImplementedError("length_regulator.f0_condition=true is not supported")
        if int(cfg.get("n_codebooks", 1)) > 1:
            raise NotImplementedError("length_regulator.n_codebooks > 1 is not supported")
        return cls(
            channels=int(cfg["channels"]),
            sampling_ratios=list(cfg["sampling_ratios"]),
            in_channels=int(cfg["in_channels"]),
            codebook_size=int(cfg.get("content_codebook_size", 1024)),
        )

    def forward(
        self,
        x: torch.Tensor,
        ylens: torch.Tensor,
        taps: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Map ``x [B, T_in, in_channels]`` to ``(out [B, max(ylens), channels], olens)``.

        Frames at or beyond each ``ylens`` are zeroed. ``taps``, if given, receives the
        ``content_in_proj`` output (for parity checks).
        """
        x = self.content_in_proj(x)
        if taps is not None:
            taps["content_in_proj"] = x
        mask = sequence_mask(ylens).unsqueeze(-1)
        x = x.transpose(1, 2).contiguous()
        if self.interpolate:
            # PyTorch "nearest": source index floor(dst * T_in / T_out).
            x = F.interpolate(x, size=int(ylens.max()), mode="nearest")
        else:
            mask = mask[:, : x.size(2), :]
            ylens = ylens.clamp(max=x.size(2)).long()
        out = self.model(x).transpose(1, 2).contiguous()
        return out * mask, ylens
