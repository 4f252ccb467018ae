"""w2v-bert-2.0 semantic features: SeamlessM4T filterbanks -> Wav2Vec2Bert layer 17 -> stats norm.

The encoder itself is transformers' ``Wav2Vec2BertModel`` (its state_dict equals the official
``model.safetensors`` key for key). It is built from a ``Wav2Vec2BertConfig`` only - never
``from_pretrained`` - so that it goes through our strict loader like every other component.

:class:`SemanticFeatures` is what IndexTTS2's ``get_emb`` computes: the features of a 16 kHz
waveform are ``(hidden_states[17] - mean) / sqrt(var)`` with the checkpoint's
``wav2vec2bert_stats.pt``. ``hidden_states[k]`` is the output of encoder layer k (index 0 is the
feature projection), so only layers 0..16 matter; the later layers are dropped after loading,
which leaves the result unchanged and skips a third of the work at full size.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import Wav2Vec2BertConfig, Wav2Vec2BertModel

from tts.checkpoints import CheckpointSet

HIDDEN_STATE_INDEX = 17  # IndexTTS2.get_emb uses hidden_states[17]
SAMPLING_RATE = 16000

# Attention kernel for transformers: "sdpa" (default, fast) or "eager" (the reference's
# formulation, kept selectable for debugging numerics).
DEFAULT_ATTENTION = "sdpa"


def hf_config(
    config: dict, attn_implementation: str = DEFAULT_ATTENTION
) -> Wav2Vec2BertConfig:
    """A ``Wav2Vec2BertConfig`` from a config.json dict (bookkeeping keys are ignored)."""
    cfg = Wav2Vec2BertConfig.from_dict(dict(config))
    cfg._attn_implementation = attn_implementation
    return cfg


def build_w2v_bert(config: dict, attn_implementation: str = DEFAULT_ATTENTION) -> Wav2Vec2BertModel:
    """Build an un-loaded ``Wav2Vec2BertModel`` from a config.json dict, in eval mode.

    Meant to run under :func:`tts.loading.params_on_meta`. In transformers 5.17 that is safe:
    ``post_init``'s weight initialisation only writes into the (meta) parameters, and the only
    buffers the model can have (``pe`` / ``inv_freq`` of the "relative" / "rotary" position
    types; none for w2v-bert-2.0's "relative_key") are non-persistent and computed from the
    config alone, so they stay real. We still check that no buffer ended up on meta, because a
    silently-meta buffer would only fail at the first forward.
    """
    model = Wav2Vec2BertModel(hf_config(config, attn_implementation))
    meta_buffers = [n for n, b in model.named_buffers() if b.device.type == "meta"]
    if meta_buffers:
        raise RuntimeError(f"w2v-bert: buffers left on the meta device: {meta_buffers}")
    return model.eval()


def truncate_layers(model: Wav2Vec2BertModel, num_layers: int) -> Wav2Vec2BertModel:
    """Keep only encoder layers ``0 .. num_layers-1`` (in place; after loading, never before).

    The last remaining layer's output is then ``last_hidden_state`` (there is no adapter or
    final norm after the stack in w2v-bert-2.0; both are refused here).
    """
    if model.adapter is not None or model.intermediate_ffn is not None:
        raise ValueError("w2v-bert: truncation needs a model without adapter / intermediate_ffn")
    layers = model.encoder.layers
    if num_layers > len(layers):
        raise ValueError(f"w2v-bert: has {len(layers)} layers, hidden_states[{num_layers}] needed")
    model.encoder.layers = nn.ModuleList(list(layers)[:num_layers])
    model.config.num_hidden_layers = num_layers
    return model


def load_stats(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) from ``wav2vec2bert_stats.pt`` (``{'mean', 'var'}``; std = sqrt(var))."""
    stats = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(stats, dict) or "mean" not in stats or "var" not in stats:
        found = sorted(stats) if isinstance(stats, dict) else type(stats).__name__
        raise ValueError(f"{path}: expected a dict with 'mean' and 'var', found {found}")
    mean = torch.as_tensor(stats["mean"]).float()
    std = torch.sqrt(torch.as_tensor(stats["var"]).float())
    return mean, std


def load_feature_extractor(folder: str | Path):
    """The SeamlessM4T filterbank extractor from the folder's ``preprocessor_config.json``."""
    from transformers import SeamlessM4TFeatureExtractor

    folder = Path(folder)
    if not (folder / "preprocessor_config.json").is_file():
        raise FileNotFoundError(f"{folder / 'preprocessor_config.json'}: missing")
    return SeamlessM4TFeatureExtractor.from_pretrained(str(folder), local_files_only=True)


class SemanticFeatures:
    """16 kHz waveform -> normalised w2v-bert layer-17 features ``[1, T, hidden]``.

    ``model`` must be loaded already; it is truncated to ``layer`` layers here.
    """

    def __init__(
        self,
        model: Wav2Vec2BertModel,
        extractor,
        mean: torch.Tensor,
        std: torch.Tensor,
        layer: int = HIDDEN_STATE_INDEX,
    ):
        self.layer = layer
        self.model = truncate_layers(model, layer).eval()
        self.extractor = extractor
        param = next(self.model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.mean = mean.to(self.device, self.dtype)
        self.std = std.to(self.device, self.dtype)

    @classmethod
    def from_checkpoints(
        cls,
        cs: CheckpointSet,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        layer: int = HIDDEN_STATE_INDEX,
    ) -> SemanticFeatures:
        """Strictly load w2v-bert, its extractor and the stats from a checkpoint set."""
        from tts.components import load_component

        model, _ = load_component("w2v_bert", cs)
        model = model.to(device=device, dtype=dtype)
        extractor = load_feature_extractor(cs.path("w2v_bert"))
        mean, std = load_stats(cs.path("w2v_stats"))
        return cls(model, extractor, mean, std, layer)

    def extract(self, wave_16k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveform ``[1, N]`` or ``[N]`` (16 kHz, [-1, 1]) -> (input_features ``[1, F/2, 160]``
        float32, attention_mask ``[1, F/2]`` int64), both on CPU.

        Same call as the reference (``extractor(wave, sampling_rate=16000,
        return_tensors='pt')``): the first channel is used, odd frame counts are padded.
        """
        wave = wave_16k.detach().to("cpu", torch.float32)
        out = self.extractor(wave, sampling_rate=SAMPLING_RATE, return_tensors="pt")
        return out["input_features"], out["attention_mask"].long()

    def hidden(
        self,
        input_features: torch.Tensor,
        attention_mask: torch.Tensor | None,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """(``hidden_states[layer]`` ``[B, T, hidden]``, all hidden states 0..layer or None)."""
        feats = input_features.to(self.device, self.dtype)
        mask = None if attention_mask is None else attention_mask.to(self.device)
        out = self.model(
            input_features=feats, attention_mask=mask, output_hidden_states=output_hidden_states
        )
        return out.last_hidden_state, (out.hidden_states if output_hidden_states else None)

    def normalize(self, hidden: torch.Tensor) -> torch.Tensor:
        return (hidden - self.mean) / self.std

    @torch.no_grad()
    def __call__(self, wave_16k: torch.Tensor) -> torch.Tensor:
        """Waveform -> ``(hidden_states[17] - mean) / std``, ``[1, T, hidden]``."""
        feats, mask = self.extract(wave_16k)
        hidden, _ = self.hidden(feats, mask)
        return self.normalize(hidden)
