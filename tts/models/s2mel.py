"""The s2mel model (``s2mel.pth``): GPT latent adapter, length regulator and flow-matching decoder.

State dict keys: ``cfm.estimator.*``, ``length_regulator.*``, ``gpt_layer.{0,1,2}.*`` — the
official file's ``net.{cfm,length_regulator,gpt_layer}`` sub-dicts (see tts/components.py).
The whole model always runs in float32 in the reference.
"""

from __future__ import annotations

import torch
from torch import nn

from tts.models.cfm import CFM
from tts.models.length_regulator import LengthRegulator

GPT_LATENT_DIM = 1280  # hard-coded in the reference, independent of cfg.gpt.model_dim
SEMANTIC_DIM = 1024
MEL_FRAMES_PER_CODE = 1.72  # ~86.13 mel frames/s over 50 codes/s


def target_lengths(code_lens: torch.Tensor) -> torch.Tensor:
    """Mel frames for ``code_lens`` codes: ``floor(code_lens * 1.72)`` (float32 product)."""
    return (code_lens * MEL_FRAMES_PER_CODE).long()


class S2Mel(nn.Module):
    """Container of the three sub-models consumed from ``s2mel.pth``."""

    def __init__(
        self, cfm: CFM, length_regulator: LengthRegulator, gpt_latent_dim: int = GPT_LATENT_DIM
    ) -> None:
        super().__init__()
        self.cfm = cfm
        self.length_regulator = length_regulator
        # GPT latent -> semantic space; three Linears with no activation in between.
        self.gpt_layer = nn.Sequential(
            nn.Linear(gpt_latent_dim, 256), nn.Linear(256, 128), nn.Linear(128, SEMANTIC_DIM)
        )

    @classmethod
    def from_config(cls, cfg: dict) -> S2Mel:
        """Build from the ``s2mel`` section of config.yaml (a plain dict)."""
        # ``gpt_latent_dim`` is our extension (the reference hard-codes 1280, the GPT width):
        # a smaller GPT, as in the demo set, needs a matching gpt_layer input.
        return cls(
            CFM.from_config(cfg),
            LengthRegulator.from_config(cfg["length_regulator"]),
            gpt_latent_dim=int(cfg.get("gpt_latent_dim", GPT_LATENT_DIM)),
        )

    def regulate(self, semantic: torch.Tensor, ylens: torch.Tensor) -> torch.Tensor:
        """Length-regulate ``[B, T_codes, 1024]`` to ``[B, max(ylens), C]`` (masked)."""
        return self.length_regulator(semantic, ylens)[0]

    def condition(
        self, semantic: torch.Tensor, gpt_latent: torch.Tensor, prompt_condition: torch.Tensor
    ) -> torch.Tensor:
        """The flow-matching condition ``mu [B, T_ref + T_gen, C]`` of B segments with the same
        number of codes: the prompt's condition, then the length-regulated generated codes
        (``semantic + gpt_layer(gpt_latent)``)."""
        s_infer = semantic + self.gpt_layer(gpt_latent)
        code_lens = torch.full((s_infer.size(0),), s_infer.size(1), device=s_infer.device)
        cond = self.regulate(s_infer, target_lengths(code_lens))
        return torch.cat([prompt_condition, cond], dim=1)

    @torch.no_grad()
    def generate(
        self,
        semantic: torch.Tensor,
        gpt_latent: torch.Tensor,
        prompt_condition: torch.Tensor,
        ref_mel: torch.Tensor,
        style: torch.Tensor,
        n_timesteps: int = 25,
        cfg_rate: float = 0.7,
        temperature: float = 1.0,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One segment's mel ``[1, 80, T_gen]`` (IndexTTS2 infer step "s2mel").

        Args:
            semantic: codebook embedding of the generated codes ``[1, T_codes, 1024]``
                (``vq2emb`` output, time-major).
            gpt_latent: GPT latent of the same codes ``[1, T_codes, 1280]``.
            prompt_condition: length-regulated prompt semantics ``[1, T_ref, C]``.
            ref_mel: prompt mel ``[1, 80, T_ref]``.
            style: CAMPPlus style ``[1, 192]``.
            noise: optional starting noise ``[1, 80, T_ref + T_gen]``.
        """
        cat = self.condition(semantic, gpt_latent, prompt_condition)
        x_lens = torch.tensor([cat.size(1)], device=cat.device)
        mel = self.cfm.inference(
            cat,
            x_lens,
            ref_mel,
            style,
            n_timesteps,
            temperature,
            cfg_rate,
            noise=noise,
            generator=generator,
        )
        return mel[:, :, ref_mel.size(-1) :]
