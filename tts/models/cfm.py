"""Conditional flow matching decoder: Euler ODE solver around the DiT estimator, with CFG.

From noise z at t=0 to a mel at t=1 in ``n_timesteps`` equal Euler steps. The prompt mel is fed
to the estimator as a separate channel group (``prompt_x``) and its frames in the state are held
at zero. With classifier-free guidance the conditional and the unconditional branch (prompt mel,
style and semantic condition all zeroed) run as ONE batch of 2, like the reference, and combine
as ``(1+r)·v_cond - r·v_uncond``.
"""

from __future__ import annotations

import torch
from torch import nn

from tts.models.dit import DiT


class CFM(nn.Module):
    """Holds the estimator under the checkpoint name ``estimator``."""

    def __init__(
        self, estimator: DiT, in_channels: int = 80, zero_prompt_speech_token: bool = False
    ) -> None:
        super().__init__()
        self.estimator = estimator
        self.in_channels = in_channels
        self.zero_prompt_speech_token = zero_prompt_speech_token

    @classmethod
    def from_config(cls, s2mel_cfg: dict) -> CFM:
        """Build from the whole ``s2mel`` config section."""
        if s2mel_cfg.get("dit_type", "DiT") != "DiT":
            raise NotImplementedError(f"unknown s2mel dit_type {s2mel_cfg.get('dit_type')!r}")
        d = s2mel_cfg["DiT"]
        return cls(
            DiT.from_config(s2mel_cfg),
            in_channels=int(d["in_channels"]),
            zero_prompt_speech_token=bool(d.get("zero_prompt_speech_token", False)),
        )

    def solve(
        self,
        z: torch.Tensor,
        x_lens: torch.Tensor,
        prompt: torch.Tensor,
        mu: torch.Tensor,
        style: torch.Tensor,
        t_span: torch.Tensor,
        cfg_rate: float = 0.7,
        trace: dict[str, list[torch.Tensor]] | None = None,
        prompt_lens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Fixed-step Euler solve from noise ``z [B, 80, T]`` (not modified) to the mel.

        Args:
            x_lens: valid frames ``[B]`` or ``[1]``.
            prompt: reference mel ``[B, 80, T_ref]``; its frames are the first ``T_ref``.
            mu: condition ``[B, T, C]`` (prompt condition followed by the generated part).
            style: ``[B, 192]``.
            t_span: ``[n+1]`` times (``linspace(0, 1, n+1)`` at inference).
            cfg_rate: guidance rate r; 0 disables the unconditional branch.
            trace: if given, receives per-step lists ``step_t`` (time fed to the estimator),
                ``step_x`` (state fed, prompt frames zeroed) and ``step_estimator_out`` (raw
                estimator output: batch 2B with CFG).
            prompt_lens: ``[B]`` prompt frames of each row, for a batch of rows with prompts
                of different lengths (``prompt`` padded to the longest); each row is then
                solved as it would be alone. None: every row's prompt has ``T_ref`` frames.

        Returns the final state ``[B, 80, T]``; the prompt frames stay zero.
        """
        x = z.clone()
        b = x.size(0)
        prompt_len = prompt.size(-1)
        prompt_x = torch.zeros_like(x)
        prompt_x[..., :prompt_len] = prompt[..., :prompt_len]
        in_prompt = None
        if prompt_lens is not None:
            if self.zero_prompt_speech_token:
                raise NotImplementedError("per-row prompt lengths with zero_prompt_speech_token")
            frames = torch.arange(x.size(-1), device=x.device)
            in_prompt = (frames[None, :] < prompt_lens.to(x.device)[:, None]).unsqueeze(1)
            prompt_x = prompt_x.masked_fill(~in_prompt, 0)
            x = x.masked_fill(in_prompt, 0)
        else:
            x[..., :prompt_len] = 0
        if self.zero_prompt_speech_token:
            # Reference quirk: this indexes the last (channel) axis of mu, not its frames.
            mu = mu.clone()
            mu[..., :prompt_len] = 0
        if cfg_rate > 0:
            prompt_in = torch.cat([prompt_x, torch.zeros_like(prompt_x)], dim=0)
            style_in = torch.cat([style, torch.zeros_like(style)], dim=0)
            mu_in = torch.cat([mu, torch.zeros_like(mu)], dim=0)
            lens_in = x_lens if x_lens.numel() == 1 else torch.cat([x_lens, x_lens], dim=0)
        t = t_span[0]
        for step in range(1, len(t_span)):
            dt = t_span[step] - t_span[step - 1]
            if trace is not None:
                trace.setdefault("step_t", []).append(t.clone())
                trace.setdefault("step_x", []).append(x.clone())
            if cfg_rate > 0:
                t_in = t.reshape(1).expand(b)
                out = self.estimator(
                    torch.cat([x, x], dim=0),
                    prompt_in,
                    lens_in,
                    torch.cat([t_in, t_in]),
                    style_in,
                    mu_in,
                )
                v_cond, v_uncond = out.chunk(2, dim=0)
                v = (1.0 + cfg_rate) * v_cond - cfg_rate * v_uncond
            else:
                out = self.estimator(x, prompt_x, x_lens, t.reshape(1).expand(b), style, mu)
                v = out
            if trace is not None:
                trace.setdefault("step_estimator_out", []).append(out)
            x = x + dt * v
            t = t + dt
            if in_prompt is None:
                x[:, :, :prompt_len] = 0
            else:
                x = x.masked_fill(in_prompt, 0)
        return x

    def inference(
        self,
        mu: torch.Tensor,
        x_lens: torch.Tensor,
        prompt: torch.Tensor,
        style: torch.Tensor,
        n_timesteps: int = 25,
        temperature: float = 1.0,
        cfg_rate: float = 0.7,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        trace: dict[str, list[torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """Sample a mel ``[B, 80, T]`` for condition ``mu [B, T, C]``.

        The starting noise is ``noise`` when given (already scaled: it is used as-is), else
        ``randn([B, 80, T], generator=generator) * temperature`` (torch's global RNG when
        ``generator`` is None, as in the reference).
        """
        b, T = mu.size(0), mu.size(1)
        if noise is None:
            device = generator.device if generator is not None else mu.device
            noise = torch.randn([b, self.in_channels, T], device=device, generator=generator)
            noise = noise.to(mu.device, mu.dtype) * temperature
        t_span = torch.linspace(0, 1, n_timesteps + 1, device=mu.device)
        return self.solve(noise, x_lens, prompt, mu, style, t_span, cfg_rate, trace)
