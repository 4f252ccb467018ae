"""UnifiedVoice v2: the IndexTTS2 text-to-semantic-token GPT.

Layout (attribute names are the checkpoint keys of ``gpt.pth``):

* ``conditioning_encoder`` (Conformer) + ``perceiver_encoder`` (32 latents): speaker prompt
  features ``[B, T, 1024]`` -> ``[B, 32, model_dim]``;
* ``emo_conditioning_encoder`` + ``emo_perceiver_encoder`` (1 latent, width 1024) then
  ``emovec_layer`` and ``emo_layer``: emotion prompt features -> emotion vector ``[B, model_dim]``;
* ``speed_emb`` (2 rows), ``text_embedding``, ``mel_embedding``, learned position tables
  ``text_pos_embedding`` / ``mel_pos_embedding``;
* ``gpt``: a GPT-2 stack (``h.{i}.ln_1 / attn.c_attn / attn.c_proj / ln_2 / mlp.c_fc /
  mlp.c_proj``, ``ln_f``) with HF ``Conv1D`` weights stored ``[in, out]``, no token or position
  tables of its own (inputs are embeddings; the built-in positions are zero);
* ``final_norm`` (a second LayerNorm after ``gpt.ln_f``, kept as in the reference), ``mel_head``
  (8194 classes: 8192 codes, start 8192, stop 8193) and the unused ``text_head``.

The sequence the GPT sees is ``[conds(32 + 2) ; text ; mel]`` where ``conds`` are the speaker
latents plus the emotion vector, then ``speed_emb[1]`` and ``speed_emb[0]``.

Two entry points mirror the reference: :meth:`UnifiedVoice.forward` (teacher-forced second pass,
returns latents) and :meth:`UnifiedVoice.inference_speech` (autoregressive generation through
:mod:`tts.generation`, using the KV cache of :class:`KVCache`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from tts.models.conformer import ConformerEncoder
from tts.models.perceiver import PerceiverResampler

if TYPE_CHECKING:
    from collections.abc import Callable

    from tts.generation import GenerationConfig, GenerationOutput

# Width of the semantic (w2v-bert) features feeding both conformers; hard-coded in the reference.
SEMANTIC_DIM = 1024
# Width and latent count of the emotion perceiver; hard-coded in the reference.
EMO_PERCEIVER_DIM = 1024
SPEAKER_LATENTS = 32


# ---------------------------------------------------------------------------------------------
# KV cache
# ---------------------------------------------------------------------------------------------


class KVCache:
    """Preallocated keys/values for every GPT-2 layer: ``[layers, batch, heads, capacity, d_h]``.

    Positions ``[0, length)`` are filled. The buffers never move or grow, so a later static /
    CUDA-graph decoder can capture steps that write at a device-side position; this eager version
    takes the position as a host int (known without synchronising: it is the step counter).
    Rows are beams or batch items; :meth:`reorder` gathers rows in place (beam search).
    """

    def __init__(
        self,
        layers: int,
        batch: int,
        heads: int,
        capacity: int,
        head_dim: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ):
        shape = (layers, batch, heads, capacity, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    @property
    def batch(self) -> int:
        return self.k.size(1)

    @property
    def capacity(self) -> int:
        return self.k.size(3)

    def write(
        self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``/``v`` [B, H, n, d_h] at ``[start, start+n)``.

        Returns views of the layer's keys/values over ``[0, start+n)``.
        """
        end = start + k.size(2)
        if end > self.capacity:
            raise ValueError(f"KV cache overflow: position {end} > capacity {self.capacity}")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def reorder(self, rows: torch.Tensor) -> None:
        """Row ``i`` becomes old row ``rows[i]`` (filled positions only)."""
        n = self.length
        if self.k.device.type != "cpu":  # the row list on the host would cost a sync per step
            self.k[:, :, :, :n] = self.k[:, :, :, :n].index_select(1, rows)
            self.v[:, :, :, :n] = self.v[:, :, :, :n].index_select(1, rows)
            return
        # On the CPU, index_select over the strided cache view gathers value by value; copying
        # just the rows that change is 3.7-23x faster (beam search keeps ~40% of its rows).
        source = rows.tolist()
        moved = [i for i, s in enumerate(source) if s != i]
        overwritten = {source[i] for i in moved} & set(moved)
        for cache in (self.k, self.v):
            saved = {s: cache[:, s, :, :n].clone() for s in overwritten}
            for i in moved:
                s = source[i]
                cache[:, i, :, :n].copy_(saved[s] if s in saved else cache[:, s, :, :n])

    def fill_repeated(self, other: KVCache, repeats: int) -> None:
        """Copy ``other``'s filled positions, each row repeated ``repeats`` times in a row."""
        n = other.length
        self.k[:, :, :, :n] = other.k[:, :, :, :n].repeat_interleave(repeats, dim=1)
        self.v[:, :, :, :n] = other.v[:, :, :, :n].repeat_interleave(repeats, dim=1)
        self.length = n


# ---------------------------------------------------------------------------------------------
# GPT-2 backbone
# ---------------------------------------------------------------------------------------------


class Conv1D(nn.Module):
    """HF GPT-2's linear layer: ``y = x @ weight + bias`` with ``weight`` stored ``[in, out]``."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.empty(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1] + (self.weight.size(1),)
        return torch.addmm(self.bias, x.reshape(-1, x.size(-1)), self.weight).view(shape)


class GPT2Attention(nn.Module):
    """Causal multi-head self-attention; q, k, v from one fused projection (in that order)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"model_dim {dim} not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = dim // heads
        self.c_attn = Conv1D(dim, 3 * dim)
        self.c_proj = Conv1D(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        cache: KVCache | None,
        layer: int,
        start: int,
    ) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (t.view(b, n, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k, v = cache.write(layer, start, k, v)
        # Without an explicit mask: causal when the queries start at key 0, else (single decode
        # step or a chunk after the prefix) every cached key precedes the queries except within
        # the chunk, which the caller must then mask explicitly.
        is_causal = attn_mask is None and n > 1
        if is_causal and k.size(2) != n:
            raise ValueError("a multi-token chunk after a cached prefix needs an explicit mask")
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        return self.c_proj(out.transpose(1, 2).reshape(b, n, d))


class GPT2MLP(nn.Module):
    """Conv1D -> GELU (tanh approximation, GPT-2's ``gelu_new``) -> Conv1D."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.c_fc = Conv1D(dim, inner)
        self.c_proj = Conv1D(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class GPT2Block(nn.Module):
    """Pre-LN transformer block."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = GPT2Attention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = GPT2MLP(dim, 4 * dim)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        cache: KVCache | None,
        layer: int,
        start: int,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask, cache, layer, start)
        return x + self.mlp(self.ln_2(x))


class GPT2Model(nn.Module):
    """GPT-2 stack over input embeddings (no token/position tables), ending with ``ln_f``."""

    def __init__(self, dim: int, layers: int, heads: int):
        super().__init__()
        self.h = nn.ModuleList(GPT2Block(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim, eps=1e-5)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        """``x`` [B, n, D] at positions ``[start, start+n)``.

        ``attn_mask``: bool ``[B, 1, n, start+n]`` (True = attend) or None for plain causal
        attention. With ``cache`` the new keys/values are stored and attention covers the cached
        prefix too; ``cache.length`` is advanced.
        """
        for i, block in enumerate(self.h):
            x = block(x, attn_mask, cache, i, start)
        if cache is not None:
            cache.length = start + x.size(1)
        return self.ln_f(x)

    def new_cache(
        self, batch: int, capacity: int, device: torch.device | str, dtype: torch.dtype
    ) -> KVCache:
        """An empty KV cache for this stack: ``batch`` rows, ``capacity`` positions."""
        attn = self.h[0].attn
        return KVCache(len(self.h), batch, attn.heads, capacity, attn.head_dim, device, dtype)


class LearnedPositionEmbeddings(nn.Module):
    """A learned position table (``emb.weight``)."""

    def __init__(self, rows: int, dim: int):
        super().__init__()
        self.emb = nn.Embedding(rows, dim)

    def forward(self, length: int) -> torch.Tensor:
        """Rows ``0 .. length-1``: ``[length, D]``."""
        return self.emb.weight[:length]


# ---------------------------------------------------------------------------------------------
# UnifiedVoice
# ---------------------------------------------------------------------------------------------


def _pad_tokens_after(tokens: torch.Tensor, lengths: torch.Tensor, value: int) -> torch.Tensor:
    """Copy of ``tokens`` with every position ``>= lengths[b]`` set to ``value``."""
    positions = torch.arange(tokens.size(1), device=tokens.device)
    beyond = positions.unsqueeze(0) >= lengths.to(tokens.device).view(-1, 1)
    return tokens.masked_fill(beyond, value)


class EmotionPath:
    """The GPT's emotion vector from w2v-bert features (spec 2.3), for any module holding
    ``emo_conditioning_encoder``, ``emo_perceiver_encoder``, ``emovec_layer`` and ``emo_layer``
    (:class:`UnifiedVoice`, or :class:`EmotionEncoder` alone)."""

    # What runs :meth:`encode_emotion` for get_emo_conditioning: None = the method itself;
    # tts.fast.conditioning installs CUDA graphs per length bucket here (not a module: the
    # state dict stays the checkpoint's).
    emotion_encoder_runner: Callable[..., torch.Tensor] | None = None

    def get_emo_conditioning(
        self, speech_conditioning_input: torch.Tensor, cond_mel_lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Emotion perceiver output ``[B, 1024]`` from features laid out ``[B, 1024, T]``."""
        x = speech_conditioning_input.transpose(1, 2)
        lengths = _default_lengths(cond_mel_lengths, x)
        runner = self.emotion_encoder_runner
        if runner is None:
            return self.encode_emotion(x, None, lengths)
        return runner(x, lengths).squeeze(1)  # [B, 1, 1024]: the perceiver's one latent

    def encode_emotion(
        self, x: torch.Tensor, frames: torch.Tensor | None, lengths: torch.Tensor
    ) -> torch.Tensor:
        """The emotion conformer and perceiver over ``x`` [B, T, 1024]: ``[B, 1024]``.
        ``frames``: x's real length where it is zero-padded past it (see
        :meth:`ConformerEncoder.forward`), else None."""
        encoders = (self.emo_conditioning_encoder, self.emo_perceiver_encoder)
        return encode_prompt(encoders, x, frames, lengths).squeeze(1)

    def get_emovec(
        self, emo_speech_conditioning_latent: torch.Tensor, emo_cond_lengths: torch.Tensor | None
    ) -> torch.Tensor:
        """Emotion vector ``[B, model_dim]`` = emo_layer(emovec_layer(emo perceiver)).

        Input features are ``[B, T, 1024]`` (note: not transposed, unlike get_*conditioning).
        """
        emo = self.get_emo_conditioning(
            emo_speech_conditioning_latent.transpose(1, 2), emo_cond_lengths
        )
        return self.emo_layer(self.emovec_layer(emo))

    def merge_emovec(
        self,
        speech_conditioning_latent: torch.Tensor,
        emo_speech_conditioning_latent: torch.Tensor,
        cond_lengths: torch.Tensor | None,
        emo_cond_lengths: torch.Tensor | None,
        alpha: float = 1.0,
    ) -> torch.Tensor:
        """``e(spk) + alpha * (e(emo) - e(spk))`` with e = :meth:`get_emovec` (same encoder).

        Args mirror the reference: speaker features ``[B, T_s, 1024]``, emotion features
        ``[B, T_e, 1024]``, their lengths ``[B]``, and the emotion strength ``alpha``.
        Returns ``[B, model_dim]``.
        """
        emo, spk = emo_speech_conditioning_latent, speech_conditioning_latent
        if emo.shape == spk.shape and (emo_cond_lengths is None) == (cond_lengths is None):
            # The usual case (the speaker file is the emotion prompt: equal lengths): both
            # through the encoder as one batch, each row computed as alone. On a GPU one
            # pass at batch 1 is bound by launching its small kernels, so this halves them.
            lengths = None if cond_lengths is None else torch.cat([emo_cond_lengths, cond_lengths])
            emo_vec, base_vec = self.get_emovec(torch.cat([emo, spk]), lengths).chunk(2)
        else:
            emo_vec = self.get_emovec(emo, emo_cond_lengths)
            base_vec = self.get_emovec(spk, cond_lengths)
        return base_vec + alpha * (emo_vec - base_vec)


def _emo_perceiver(em: dict) -> PerceiverResampler:
    return PerceiverResampler(
        EMO_PERCEIVER_DIM,
        dim_context=em["output_size"],
        ff_mult=em["perceiver_mult"],
        heads=em["attention_heads"],
        num_latents=1,
    )


class UnifiedVoice(EmotionPath, nn.Module):
    """The IndexTTS2 GPT. Build with :meth:`from_config` from the ``gpt`` section of config.yaml."""

    def __init__(
        self,
        layers: int = 24,
        model_dim: int = 1280,
        heads: int = 20,
        max_text_tokens: int = 600,
        max_mel_tokens: int = 1815,
        number_text_tokens: int = 12000,
        number_mel_codes: int = 8194,
        start_text_token: int = 0,
        stop_text_token: int = 1,
        start_mel_token: int = 8192,
        stop_mel_token: int = 8193,
        condition_module: dict | None = None,
        emo_condition_module: dict | None = None,
        max_conditioning_inputs: int = 1,
    ):
        super().__init__()
        cm = condition_module or {}
        em = emo_condition_module or {}
        self.layers = layers
        self.model_dim = model_dim
        self.heads = heads
        self.max_text_tokens = max_text_tokens
        self.max_mel_tokens = max_mel_tokens
        self.number_text_tokens = number_text_tokens
        self.number_mel_codes = number_mel_codes
        self.start_text_token = start_text_token
        self.stop_text_token = stop_text_token
        self.start_mel_token = start_mel_token
        self.stop_mel_token = stop_mel_token
        self.cond_num = SPEAKER_LATENTS

        # Registration order = the checkpoint's key order.
        self.conditioning_encoder = _conformer(cm)
        self.perceiver_encoder = PerceiverResampler(
            model_dim,
            dim_context=cm["output_size"],
            ff_mult=cm["perceiver_mult"],
            heads=cm["attention_heads"],
            num_latents=self.cond_num,
        )
        self.speed_emb = nn.Embedding(2, model_dim)
        self.emo_conditioning_encoder = _conformer(em)
        self.emo_perceiver_encoder = _emo_perceiver(em)
        self.text_embedding = nn.Embedding(number_text_tokens + 1, model_dim)
        self.emo_layer = nn.Linear(model_dim, model_dim)
        self.emovec_layer = nn.Linear(EMO_PERCEIVER_DIM, model_dim)
        self.mel_embedding = nn.Embedding(number_mel_codes, model_dim)
        self.gpt = GPT2Model(model_dim, layers, heads)
        self.mel_pos_embedding = LearnedPositionEmbeddings(
            max_mel_tokens + 2 + max_conditioning_inputs, model_dim
        )
        self.text_pos_embedding = LearnedPositionEmbeddings(max_text_tokens + 2, model_dim)
        self.final_norm = nn.LayerNorm(model_dim)
        self.text_head = nn.Linear(model_dim, number_text_tokens + 1)
        self.mel_head = nn.Linear(model_dim, number_mel_codes)
        # What runs the layer stack in the teacher-forced passes (forward, forward_packed):
        # None = ``self.gpt`` itself; tts.fast.latent_pass installs CUDA graphs here. Not a
        # module, so the state dict stays the checkpoint's.
        self.stack_runner: Callable[[torch.Tensor], torch.Tensor] | None = None
        # Likewise for get_conditioning's encode_speaker (tts.fast.conditioning).
        self.speaker_encoder_runner: Callable[..., torch.Tensor] | None = None

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> UnifiedVoice:
        """Build from the ``gpt`` section of the official config.yaml (a dict)."""
        condition_type = cfg.get("condition_type", "conformer_perceiver")
        if condition_type != "conformer_perceiver":
            raise NotImplementedError(
                f"gpt.condition_type {condition_type!r}: only 'conformer_perceiver' (IndexTTS2) "
                "is implemented"
            )
        if not cfg.get("use_mel_codes_as_input", True):
            raise NotImplementedError("gpt.use_mel_codes_as_input: false is not supported")
        if cfg.get("train_solo_embeddings", False):
            raise NotImplementedError("gpt.train_solo_embeddings: true is not supported")
        return cls(
            layers=int(cfg["layers"]),
            model_dim=int(cfg["model_dim"]),
            heads=int(cfg["heads"]),
            max_text_tokens=int(cfg["max_text_tokens"]),
            max_mel_tokens=int(cfg["max_mel_tokens"]),
            number_text_tokens=int(cfg["number_text_tokens"]),
            number_mel_codes=int(cfg["number_mel_codes"]),
            start_text_token=int(cfg.get("start_text_token", 0)),
            stop_text_token=int(cfg.get("stop_text_token", 1)),
            start_mel_token=int(cfg.get("start_mel_token", 8192)),
            stop_mel_token=int(cfg.get("stop_mel_token", 8193)),
            condition_module=dict(cfg["condition_module"]),
            emo_condition_module=dict(cfg["emo_condition_module"]),
        )

    # -- conditioning ------------------------------------------------------------------------

    def get_conditioning(
        self, speech_conditioning_input: torch.Tensor, cond_mel_lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Speaker latents ``[B, 32, model_dim]`` from features laid out ``[B, 1024, T]``.

        ``cond_mel_lengths`` [B]: valid frames per item (None: all ``T``). Values above ``T``
        mean "no masking" (infer_v2 passes the feature width, 1024, here).
        """
        x = speech_conditioning_input.transpose(1, 2)
        lengths = _default_lengths(cond_mel_lengths, x)
        runner = self.speaker_encoder_runner
        return self.encode_speaker(x, None, lengths) if runner is None else runner(x, lengths)

    def encode_speaker(
        self, x: torch.Tensor, frames: torch.Tensor | None, lengths: torch.Tensor
    ) -> torch.Tensor:
        """The speaker conformer and perceiver over ``x`` [B, T, 1024]: ``[B, 32, d]``.
        ``frames``: x's real length where it is zero-padded past it, else None."""
        return encode_prompt(
            (self.conditioning_encoder, self.perceiver_encoder), x, frames, lengths
        )

    def conditioning_prefix(
        self, speaker_latent: torch.Tensor, emo_vec: torch.Tensor, batch: int
    ) -> torch.Tensor:
        """``[latents + emo_vec ; speed_emb[1] ; speed_emb[0]]`` -> ``[B, 32 + 2, model_dim]``."""
        speed = self.speed_emb.weight
        half = speed[1].expand(batch, 1, -1)
        normal = speed[0].expand(batch, 1, -1)
        return torch.cat((speaker_latent + emo_vec.unsqueeze(1), half, normal), dim=1)

    # -- teacher-forced pass ---------------------------------------------------------------

    def run_stack(self, x: torch.Tensor) -> torch.Tensor:
        """The layer stack (through ``ln_f``) over ``x`` [B, n, d], causal, no cache: by
        :attr:`stack_runner` if one is installed, else ``self.gpt``."""
        runner = self.stack_runner
        return self.gpt(x) if runner is None else runner(x)

    def forward(
        self,
        speech_conditioning_latent: torch.Tensor,
        text_inputs: torch.Tensor,
        text_lengths: torch.Tensor,
        mel_codes: torch.Tensor,
        mel_codes_lengths: torch.Tensor,
        emo_speech_conditioning_latent: torch.Tensor | None,
        cond_mel_lengths: torch.Tensor | None = None,
        emo_cond_mel_lengths: torch.Tensor | None = None,
        emo_vec: torch.Tensor | None = None,
        use_speed: torch.Tensor | None = None,
        do_spk_cond: bool = False,
    ) -> torch.Tensor:
        """Latents ``[B, M, model_dim]`` of the second GPT pass (what s2mel consumes).

        Mirrors the reference exactly: positions past ``text_lengths`` / ``mel_codes_lengths``
        become stop tokens (done on a copy; the reference writes into the caller's tensors),
        text = ``[start, text, stop]``, mel = ``[start, codes, stop]``, one causal pass with
        **no** padding mask (for B > 1 the padding is attended to, as upstream), ``final_norm``,
        and the last two mel positions dropped. Position ``i`` of the result is the state that
        predicts code ``i``.

        ``speech_conditioning_latent`` is the speaker latent ``[B, 32, d]`` unless
        ``do_spk_cond`` (then raw features ``[B, T, 1024]`` encoded with ``cond_mel_lengths``).
        Without ``emo_vec`` the emotion vector comes from ``emo_speech_conditioning_latent``.
        Only the batch size of ``use_speed`` matters (speed rows 1 then 0 are always used).
        """
        if do_spk_cond:
            speech_conditioning_latent = self.get_conditioning(
                speech_conditioning_latent.transpose(1, 2), cond_mel_lengths
            )
        if emo_vec is None:
            emo_vec = self.get_emovec(emo_speech_conditioning_latent, emo_cond_mel_lengths)
        text = _pad_tokens_after(text_inputs.long(), text_lengths, self.stop_text_token)
        text = F.pad(text, (1, 1), value=self.start_text_token)
        text[:, -1] = self.stop_text_token
        mel = _pad_tokens_after(mel_codes.long(), mel_codes_lengths, self.stop_mel_token)
        mel = F.pad(mel, (1, 1), value=self.start_mel_token)
        mel[:, -1] = self.stop_mel_token

        batch = use_speed.size(0) if use_speed is not None else text.size(0)
        conds = self.conditioning_prefix(speech_conditioning_latent, emo_vec, batch)
        text_emb = self.text_embedding(text) + self.text_pos_embedding(text.size(1))
        mel_emb = self.mel_embedding(mel) + self.mel_pos_embedding(mel.size(1))
        hidden = self.run_stack(torch.cat((conds, text_emb, mel_emb), dim=1))
        latent = self.final_norm(hidden[:, -mel.size(1) :])
        return latent[:, :-2]

    def forward_packed(
        self,
        speech_conditioning_latent: torch.Tensor,
        emo_vec: torch.Tensor,
        texts: list[torch.Tensor],
        codes: list[torch.Tensor],
    ) -> list[torch.Tensor]:
        """:meth:`forward` for items of different text and code lengths in one GPT pass.

        ``speech_conditioning_latent`` [B, 32, d] and ``emo_vec`` [B, d] per item, ``texts[i]``
        [L_i] text ids and ``codes[i]`` [n_i] codes (true lengths). Returns ``[n_i, d]`` per item,
        what ``forward`` gives for that item alone (batch 1, lengths ``L_i`` and ``n_i``).

        ``forward`` pads text and codes in place inside the sequence: with B > 1 a shorter text
        gets stop ids between its text and its mel part, which every later position attends to,
        so a batched item would not equal the item alone. Here each item's batch-1 sequence
        ``[conds ; start text stop ; start codes stop]`` starts at position 0 and only the tail
        after it is padded (zeros): under causal attention every real position sees exactly the
        keys of the batch-1 pass. (The stack has no position embedding of its own, so a row's
        position in the batch tensor only matters through causality.)
        """
        b = len(texts)
        if len(codes) != b or speech_conditioning_latent.size(0) != b or emo_vec.size(0) != b:
            raise ValueError("forward_packed: one latent, emotion vector, text and code per item")
        conds = self.conditioning_prefix(speech_conditioning_latent, emo_vec, b)
        device = conds.device
        rows, spans = [], []
        for i in range(b):
            # The ids may be on the host: an asynchronous copy, as a blocking one waits for the
            # GPU's queue to drain.
            text = texts[i].to(device, torch.int64, non_blocking=True).flatten()
            text = F.pad(text, (1, 0), value=self.start_text_token)
            text = F.pad(text, (0, 1), value=self.stop_text_token)
            mel = F.pad(codes[i].long().flatten(), (1, 0), value=self.start_mel_token)
            mel = F.pad(mel, (0, 1), value=self.stop_mel_token)
            text_emb = self.text_embedding(text) + self.text_pos_embedding(text.size(0))
            mel_emb = self.mel_embedding(mel) + self.mel_pos_embedding(mel.size(0))
            rows.append(torch.cat((conds[i], text_emb, mel_emb)))
            start = conds.size(1) + text.size(0)
            spans.append((start, start + mel.size(0) - 2))  # the last two mel positions dropped
        total = max(r.size(0) for r in rows)
        x = torch.stack([F.pad(r, (0, 0, 0, total - r.size(0))) for r in rows])
        hidden = self.run_stack(x)
        return [self.final_norm(hidden[i, lo:hi]) for i, (lo, hi) in enumerate(spans)]

    # -- generation ------------------------------------------------------------------------

    def prepare_gpt_inputs(
        self, conds: torch.Tensor, text_inputs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix embeddings for generation, as the reference's ``prepare_gpt_inputs``.

        Per item: drop every start/stop text id (0/1), frame with ``[start] .. [stop]``, embed
        with text positions from 0, prepend the conditioning rows; shorter items are left-padded
        with zero embeddings. ``conds`` is ``[B or 1, 34, d]``; returns
        ``(prefix [B, 34 + L + 2, d], valid [B, 34 + L + 2] bool)``, ``L = text_inputs.size(1)``.
        """
        b, length = text_inputs.shape
        if conds.size(0) not in (1, b):
            raise ValueError(f"batch size mismatch: conds {conds.size(0)} vs text {b}")
        width, target = length + 2, conds.size(1) + length + 2
        # One host-to-device copy of the layout, not a host sync per row (the per-row filter).
        layout = self._prefix_layout(text_inputs, conds.size(1))
        layout = layout.to(conds.device, non_blocking=True)
        ids, positions, source, valid = layout.split((width, width, target, target), dim=1)
        valid = valid.bool()
        text_emb = self.text_embedding(ids) + self.text_pos_embedding.emb.weight[positions]
        # Each row [cond ; start text stop ; unused] is moved right by its padding.
        rows = torch.cat((conds.expand(b, -1, -1), text_emb), dim=1)
        prefix = rows.gather(1, source.unsqueeze(-1).expand(-1, -1, rows.size(-1)))
        return prefix.masked_fill(~valid.unsqueeze(-1), 0), valid

    def _prefix_layout(self, text_inputs: torch.Tensor, head: int) -> torch.Tensor:
        """The index layout of :meth:`prepare_gpt_inputs`, made on the CPU: ``[B, 2W + 2T]``
        int64 holding, per row, the framed text ids and their positions (left-aligned, width
        ``W = L + 2``; unused slots id and position 0), then for each prefix slot (``T = head +
        W``) the slot of ``[cond ; framed text]`` it takes, then 1 where it is not padding."""
        text = text_inputs.detach().to("cpu", torch.int64)
        b, length = text.shape
        width, target = length + 2, head + length + 2
        ids = torch.zeros(b, width, dtype=torch.int64)
        positions = torch.zeros(b, width, dtype=torch.int64)
        slots = torch.arange(target)
        source = torch.empty(b, target, dtype=torch.int64)
        valid = torch.empty(b, target, dtype=torch.int64)
        special = (text == self.stop_text_token) | (text == self.start_text_token)
        for i in range(b):
            framed = torch.cat(
                (
                    torch.tensor([self.start_text_token]),
                    text[i][~special[i]],
                    torch.tensor([self.stop_text_token]),
                )
            )
            n = framed.numel()
            ids[i, :n] = framed
            positions[i, :n] = torch.arange(n)
            pad = width - n
            source[i] = (slots - pad).clamp(min=0)
            valid[i] = slots >= pad
        return torch.cat((ids, positions, source, valid), dim=1)

    def new_cache(
        self,
        batch: int,
        capacity: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """An empty KV cache for ``batch`` rows and ``capacity`` positions."""
        ref = self.mel_head.weight
        return self.gpt.new_cache(batch, capacity, device or ref.device, dtype or ref.dtype)

    def mel_input_embedding(
        self, tokens: torch.Tensor, position: int | torch.Tensor
    ) -> torch.Tensor:
        """``mel_embedding(tokens) + mel_pos[position]``, one new token per row: ``[B, 1, d]``."""
        emb = self.mel_embedding(tokens) + self.mel_pos_embedding.emb.weight[position]
        return emb.unsqueeze(1)

    def decode(
        self,
        emb: torch.Tensor,
        cache: KVCache,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run ``emb`` [B, n, d] after the cached positions; logits ``[B, vocab]`` of the last one.

        The logits are ``mel_head(final_norm(ln_f(h)))`` in float32 (what the sampler sees).
        """
        hidden = self.gpt(emb, attn_mask=attn_mask, cache=cache, start=cache.length)
        return self.mel_head(self.final_norm(hidden[:, -1])).float()

    def mel_logits_teacher_forced(
        self, prefix: torch.Tensor, valid: torch.Tensor | None, codes: torch.Tensor
    ) -> torch.Tensor:
        """Logits at ``[start, codes...]`` after a generation prefix, recomputed in one pass.

        What the reference's inference model returns for ``input_ids = prefix ones + [start] +
        codes`` without cache: mel positions 0..len(codes) (no generation-time position offset).
        Returns ``[B, len(codes) + 1, vocab]``.
        """
        mel = F.pad(codes.long(), (1, 0), value=self.start_mel_token)
        mel_emb = self.mel_embedding(mel) + self.mel_pos_embedding(mel.size(1))
        emb = torch.cat((prefix, mel_emb), dim=1)
        mask = None
        if valid is not None and not bool(valid.all()):
            mask = prefix_attention_mask(F.pad(valid, (0, mel.size(1)), value=True), emb.size(1))
        hidden = self.gpt(emb, attn_mask=mask)
        return self.mel_head(self.final_norm(hidden[:, prefix.size(1) :]))

    @torch.no_grad()
    def inference_speech(
        self,
        speech_condition: torch.Tensor,
        text_inputs: torch.Tensor,
        *,
        emo_speech_condition: torch.Tensor | None = None,
        cond_lengths: torch.Tensor | None = None,
        emo_cond_lengths: torch.Tensor | None = None,
        emo_vec: torch.Tensor | None = None,
        max_generate_length: int | None = None,
        config: GenerationConfig | None = None,
        generator: torch.Generator | None = None,
        output_scores: bool = False,
        output_logits: bool = False,
        check_every: int | None = None,
        **overrides: Any,
    ) -> tuple[GenerationOutput, torch.Tensor]:
        """Generate semantic codes for ``text_inputs`` in the voice of ``speech_condition``.

        Mirrors the reference's ``inference_speech`` (minus its unused ``langs`` positional):

        * ``speech_condition``: speaker features ``[B, T, 1024]`` (or ``[T, 1024]``);
          ``cond_lengths`` default to ``speech_condition.shape[-1]`` like upstream (i.e. 1024,
          which masks nothing for prompts up to 1024 frames);
        * ``emo_vec`` [B, d]: the emotion vector (e.g. from :meth:`merge_emovec`); if None it is
          computed from ``emo_speech_condition`` (default: the speaker features);
        * ``text_inputs`` [B, L] int ids (0/1 are dropped; B > 1 is left-padded with a mask);
        * generation controls: ``config`` (:class:`tts.generation.GenerationConfig`, official
          defaults) updated with ``overrides`` (``do_sample``, ``top_k``, ``top_p``,
          ``temperature``, ``repetition_penalty``, ``num_beams``, ``length_penalty``,
          ``num_return_sequences``, ``max_mel_tokens``, ...). ``max_generate_length`` caps the
          new tokens; without it the cap is ``config.max_mel_tokens`` when a config or
          override gives one, else the model's ``max_mel_tokens - 1`` (the reference default).

        Returns ``(output, speech_conditioning_latent)``: ``output.codes`` [B*R, n] holds the
        generated codes (a finished sequence ends with the stop token, padding is the stop
        token), plus optional per-step scores/logits and beam bookkeeping; the latent is the
        speaker perceiver output ``[B, 32, d]`` without the emotion vector.
        """
        from tts.generation import GenerationConfig, generate

        if speech_condition.ndim == 2:
            speech_condition = speech_condition.unsqueeze(0)
        if emo_speech_condition is None:
            emo_speech_condition = speech_condition
        device = speech_condition.device
        # Filled on the device: a copy from the host would wait for the GPU's queue to drain.
        if cond_lengths is None:
            cond_lengths = torch.full((1,), speech_condition.shape[-1], device=device)
        if emo_cond_lengths is None:
            emo_cond_lengths = torch.full((1,), emo_speech_condition.shape[-1], device=device)

        speech_latent = self.get_conditioning(speech_condition.transpose(1, 2), cond_lengths)
        if emo_vec is None:
            emo_vec = self.get_emovec(emo_speech_condition, emo_cond_lengths)
        conds = self.conditioning_prefix(speech_latent, emo_vec, text_inputs.size(0))
        prefix, valid = self.prepare_gpt_inputs(conds, text_inputs)

        base = config if config is not None else GenerationConfig()
        if max_generate_length is not None:
            overrides["max_mel_tokens"] = int(max_generate_length)
        elif config is None and "max_mel_tokens" not in overrides:
            overrides["max_mel_tokens"] = self.max_mel_tokens - 1
        cfg = base.replace(**overrides)
        # check_every None: the generator's own default (tts.generation: every step; the
        # graph decoder of tts.fast.decode, which tts.bench swaps in: every 32 steps, so that
        # the host neither waits for the GPU after each step nor captures graphs as it idles).
        every = {} if check_every is None else {"check_every": check_every}
        out = generate(
            self,
            prefix,
            valid,
            cfg,
            generator=generator,
            output_scores=output_scores,
            output_logits=output_logits,
            **every,
        )
        return out, speech_latent


def prefix_attention_mask(valid: torch.Tensor, length: int) -> torch.Tensor:
    """Causal mask ``[B, 1, length, length]`` that also hides invalid (left-pad) keys.

    A padded query row would otherwise see no key at all; it is allowed to see itself so the
    softmax stays finite (its output is never used by valid positions).
    """
    causal = torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()
    mask = causal & valid[:, None, None, :length]
    return mask | torch.eye(length, dtype=torch.bool, device=valid.device)


# UnifiedVoice's emotion path (EmotionPath's modules).
EMOTION_CHILDREN = (
    "emo_conditioning_encoder",
    "emo_perceiver_encoder",
    "emo_layer",
    "emovec_layer",
)
# UnifiedVoice's children that generating speech codes and latents never runs: the emotion
# path (the emotion vector is an input there, from emotion conditioning) and the text head (a
# training loss's). 21% of gpt.pth at full size.
NOT_FOR_SPEECH = (*EMOTION_CHILDREN, "text_head")


def without_emotion_path(model: UnifiedVoice) -> UnifiedVoice:
    """``model`` with its :data:`NOT_FOR_SPEECH` children removed (in place): what a process
    that only generates speech loads. Its emotion methods then fail; see
    :func:`has_emotion_path`."""
    for name in NOT_FOR_SPEECH:
        delattr(model, name)
    return model


def has_emotion_path(model: nn.Module) -> bool:
    """Whether ``model`` can compute emotion vectors (not a :func:`without_emotion_path` GPT)."""
    return all(hasattr(model, name) for name in EMOTION_CHILDREN)


class EmotionEncoder(EmotionPath, nn.Module):
    """The four modules of ``gpt.pth`` that emotion conditioning uses, under the same names.

    163M of the GPT's 871M values at full size: a job that only computes emotion vectors (the
    workflow's emotion stage) loads this instead of the whole GPT. Its results are those of
    :class:`UnifiedVoice` with the same weights (tests/test_gpt.py checks this).
    """

    def __init__(self, model_dim: int, emo_condition_module: dict):
        super().__init__()
        em = emo_condition_module
        self.emo_conditioning_encoder = _conformer(em)
        self.emo_perceiver_encoder = _emo_perceiver(em)
        self.emo_layer = nn.Linear(model_dim, model_dim)
        self.emovec_layer = nn.Linear(EMO_PERCEIVER_DIM, model_dim)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> EmotionEncoder:
        """Build from the ``gpt`` section of config.yaml, as :meth:`UnifiedVoice.from_config`."""
        return cls(int(cfg["model_dim"]), dict(cfg["emo_condition_module"]))


def _conformer(cm: dict) -> ConformerEncoder:
    return ConformerEncoder(
        input_size=SEMANTIC_DIM,
        output_size=int(cm["output_size"]),
        linear_units=int(cm["linear_units"]),
        attention_heads=int(cm["attention_heads"]),
        num_blocks=int(cm["num_blocks"]),
        input_layer=str(cm.get("input_layer", "conv2d2")),
    )


def encode_prompt(
    encoders, x: torch.Tensor, frames: torch.Tensor | None, lengths: torch.Tensor
) -> torch.Tensor:
    """A conformer and the perceiver after it (``encoders``, in that order) over prompt
    features ``x`` [B, T, 1024]: ``[B, num_latents, d]``. The perceiver's keys are its own
    latents, always shown, then the conformer's kept frames. ``frames``: see
    :meth:`ConformerEncoder.forward`. A function of the modules alone (not a model method), so
    that a CUDA graph runner holding the modules follows them when a model is deep-copied."""
    conformer, perceiver = encoders
    enc, mask = conformer(x, lengths, frames)
    keys = F.pad(mask.squeeze(1), (perceiver.latents.size(0), 0), value=True)
    return perceiver(enc, keys)


def _default_lengths(lengths: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    if lengths is None:
        return torch.full((x.size(0),), x.size(1), dtype=torch.int64, device=x.device)
    lengths = lengths.to(device=x.device, dtype=torch.int64).flatten()
    if lengths.numel() == 1 and x.size(0) > 1:
        lengths = lengths.expand(x.size(0))
    return lengths


__all__ = [
    "KVCache",
    "UnifiedVoice",
    "prefix_attention_mask",
]
