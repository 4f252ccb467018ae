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

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tts.checkpoints import CheckpointSet
from tts.precision import precision_context

# Packages transformers imports at load time only for code this project never runs: the
# generation utilities' assisted decoding (scikit-learn) and the object-detection losses'
# matching (scipy). Installed all the same, for librosa (scoring).
UNUSED_BY_TRANSFORMERS = ("sklearn", "scipy")


@contextlib.contextmanager
def _unused_packages_hidden() -> Iterator[None]:
    """While transformers loads its model code, the :data:`UNUSED_BY_TRANSFORMERS` packages not
    imported yet look absent (a ``None`` entry in ``sys.modules`` makes
    ``importlib.util.find_spec`` answer None), so transformers skips importing them: 0.6 s
    (scikit-learn) and 0.2 s (scipy) of every job that conditions a prompt, on a 2-core CPU
    (docs/benchmarks.md, "Per-job set-up"). An import of them after this block works as
    usual."""
    hidden = [name for name in UNUSED_BY_TRANSFORMERS if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


with _unused_packages_hidden():
    from transformers import Wav2Vec2BertConfig, Wav2Vec2BertModel
    from transformers.models.wav2vec2_bert import modeling_wav2vec2_bert as _hf_w2v_bert

HIDDEN_STATE_INDEX = 17  # IndexTTS2.get_emb uses hidden_states[17]

# Attention kernel for transformers: "sdpa" (default, fast) or "eager" (the reference's
# formulation, kept selectable for debugging numerics).
DEFAULT_ATTENTION = "sdpa"


def relative_key_bias(module: nn.Module, query: torch.Tensor, key: torch.Tensor):
    """``(query, bias)`` for a "relative_key" self-attention: ``bias[b, h, l, r] = scaling *
    query[b, h, l] . E[clamp(r - l, -left, right) + left]``, transformers' formula, computed
    as one small GEMM against the distance table ``E`` ([left + right + 1, head_size]: 73 x 64
    in w2v-bert-2.0) followed by a gather of its columns.

    transformers gathers an embedding per (l, r) pair first, a ``[T, T, head_size]`` tensor
    (64 MB at T = 500, per layer) that an einsum then reads back; the dot products are the
    same, each of ``head_size`` float32 products (tests/test_semantic.py compares the two)."""
    left = module.left_max_position_embeddings
    right = module.right_max_position_embeddings
    lq, lk = query.shape[2], key.shape[2]
    distance = (
        torch.arange(lk, device=query.device)[None, :]
        - torch.arange(lq, device=query.device)[:, None]
    )
    column = distance.clamp(-left, right) + left
    table = torch.matmul(query, module.distance_embedding.weight.to(query.dtype).t())
    bias = table.gather(3, column.expand(*query.shape[:2], lq, lk))
    return query, bias * module.scaling


# transformers' own version, kept for the comparison in the tests; ours replaces it in its
# module, the one place the attention calls it from (transformers is pinned in pyproject.toml).
transformers_relative_key_bias = _hf_w2v_bert._apply_relative_key_position_encoding
_hf_w2v_bert._apply_relative_key_position_encoding = relative_key_bias


def hf_config(config: dict, attn_implementation: str = DEFAULT_ATTENTION) -> Wav2Vec2BertConfig:
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
    """Keep only encoder layers ``0 .. num_layers-1`` (in place). Before loading, the model
    expects only those layers' tensors (:func:`tts.components.load_w2v_bert` reads only them).

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


# What SeamlessM4TFeatureExtractor._extract_fbank_features passes to transformers' spectrogram().
FRAME_LENGTH, HOP_LENGTH, FFT_LENGTH = 400, 160, 512
PREEMPHASIS = 0.97
MEL_FLOOR = 1.192092955078125e-07
NORM_EPS = 1e-7  # added to the per-bin variance before the square root


def _normalize_bins(bins_by_frames: np.ndarray) -> np.ndarray:
    """``[frames, bins]``: each mel bin of ``bins_by_frames`` (float32, C-contiguous) brought to
    zero mean and unit sample variance over time by the extractor's own numpy expression.

    The reference's float32 sums are reproduced, not just approximated: a bin of nearly
    constant log-energy divides their rounding by a small deviation. That includes the memory
    layout: the reference normalises the transpose of a ``[bins, frames]`` array, so its sums
    run along contiguous memory, which numpy adds pairwise (a C-ordered ``[frames, bins]``
    array would be summed row after row, with other rounding)."""
    x = bins_by_frames.T
    return (x - np.expand_dims(x.mean(0), 0)) / np.sqrt(
        np.expand_dims(x.var(0, ddof=1), 0) + NORM_EPS
    )


@torch.no_grad()
def filterbanks(
    extractor, wave_16k: torch.Tensor, device: str | torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``extractor(wave, sampling_rate=16000, return_tensors='pt')`` returns, computed by
    torch on ``device`` (default: the waveform's) instead of numpy's loop over frames.

    ``extractor`` is the loaded ``SeamlessM4TFeatureExtractor``: its window, mel filters,
    padding value and stride are used as they are. The steps are those of transformers'
    ``spectrogram`` (waveform x 2**15, 25 ms frames every 10 ms, DC offset removed,
    pre-emphasis, window, 512-point power spectrum, mel, floor, log) in float64, with the
    spectrum rounded to complex64 where the reference stores it; then each mel bin normalised
    over time on the CPU by the extractor's numpy expression (:func:`_normalize_bins`), odd
    frame counts padded with ``padding_value``, and pairs of frames stacked. What can differ
    from the reference is the float64 rounding of the FFT and the mel product, before the
    features are rounded to float32 (tests/test_semantic.py measures it).

    ``wave_16k``: ``[N]`` or ``[1, N]``. Returns (``input_features`` [1, F/2, 160] float32,
    ``attention_mask`` [1, F/2] int64) on ``device``.
    """
    if wave_16k.dim() == 2 and wave_16k.size(0) == 1:
        wave_16k = wave_16k[0]
    if wave_16k.dim() != 1:
        raise ValueError(
            f"filterbanks: expected a [N] or [1, N] waveform, got {tuple(wave_16k.shape)}"
        )
    if wave_16k.numel() < FRAME_LENGTH + HOP_LENGTH:
        # One frame has no sample variance: the reference's features would be NaN.
        raise ValueError(
            f"filterbanks: {wave_16k.numel()} samples at 16 kHz; the per-bin normalisation "
            f"needs at least two frames ({FRAME_LENGTH + HOP_LENGTH} samples)"
        )
    dev = torch.device(device) if device is not None else wave_16k.device
    f64 = torch.float64
    # float32 first, as the extractor converts its input, then x 2**15 (exact) in float64.
    wave = wave_16k.detach().to(dev, torch.float32).to(f64) * 32768.0
    frames = wave.unfold(0, FRAME_LENGTH, HOP_LENGTH)  # [F, 400], a view
    frames = frames - frames.mean(dim=1, keepdim=True)
    frames = torch.cat(
        [frames[:, :1] * (1.0 - PREEMPHASIS), frames[:, 1:] - PREEMPHASIS * frames[:, :-1]], dim=1
    )
    window = torch.as_tensor(extractor.window, dtype=f64, device=dev)
    spectrum = torch.fft.rfft(frames * window, n=FFT_LENGTH).to(torch.complex64)
    power = spectrum.to(torch.complex128).abs() ** 2  # [F, 257]
    filters = torch.as_tensor(extractor.mel_filters, dtype=f64, device=dev)  # [257, 80]
    logmel = torch.log(torch.clamp(power @ filters, min=MEL_FLOOR)).to(torch.float32)
    feats = torch.from_numpy(_normalize_bins(logmel.t().contiguous().cpu().numpy()))
    feats = feats.contiguous().to(dev)  # [F, 80]
    n_frames, n_bins = feats.shape
    stride = int(extractor.stride)
    mask = torch.ones(n_frames, dtype=torch.int64, device=dev)
    pad = -n_frames % stride
    if pad:
        fill = feats.new_full((pad, n_bins), float(extractor.padding_value))
        feats = torch.cat([feats, fill])
        mask = torch.cat([mask, mask.new_zeros(pad)])
    stacked = feats.reshape(1, -1, n_bins * stride)
    return stacked, mask[stride - 1 :: stride].unsqueeze(0)


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
        from tts.components import load_w2v_bert

        model, _ = load_w2v_bert(cs, layer)
        model = model.to(device=device, dtype=dtype)
        extractor = load_feature_extractor(cs.path("w2v_bert"))
        mean, std = load_stats(cs.path("w2v_stats"))
        return cls(model, extractor, mean, std, layer)

    def extract(self, wave_16k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveform ``[1, N]`` or ``[N]`` (16 kHz, [-1, 1]) -> (input_features ``[1, F/2, 160]``
        float32, attention_mask ``[1, F/2]`` int64), on the model's device.

        What the reference's ``extractor(wave, sampling_rate=16000, return_tensors='pt')``
        computes, by :func:`filterbanks` (on a GPU, numpy's loop over frames took 30 ms per
        10 s prompt; docs/benchmarks.md, run AG).
        """
        return filterbanks(self.extractor, wave_16k, self.device)

    def hidden(
        self,
        input_features: torch.Tensor,
        attention_mask: torch.Tensor | None,
        output_hidden_states: bool = False,
        precision: str = "float32",
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """(``hidden_states[layer]`` ``[B, T, hidden]``, all hidden states 0..layer or None).

        ``precision`` (:data:`tts.precision.PRECISIONS`): the encoder's arithmetic; float32 is
        the reference's. Under ``bfloat16`` / ``float16`` autocast the states come back in the
        model's dtype all the same."""
        feats = input_features.to(self.device, self.dtype)
        mask = None if attention_mask is None else attention_mask.to(self.device)
        with precision_context(precision, self.device):
            out = self.model(
                input_features=feats,
                attention_mask=mask,
                output_hidden_states=output_hidden_states,
            )
        states = out.hidden_states if output_hidden_states else None
        if states is not None:
            states = tuple(h.to(self.dtype) for h in states)
        return out.last_hidden_state.to(self.dtype), states

    def normalize(self, hidden: torch.Tensor) -> torch.Tensor:
        return (hidden - self.mean) / self.std

    @torch.no_grad()
    def __call__(self, wave_16k: torch.Tensor, precision: str = "float32") -> torch.Tensor:
        """Waveform -> ``(hidden_states[17] - mean) / std``, ``[1, T, hidden]``; the encoder
        at ``precision`` (see :meth:`hidden`)."""
        return self.batch([wave_16k], precision)[0]

    @torch.no_grad()
    def batch(self, waves: list[torch.Tensor], precision: str = "float32") -> list[torch.Tensor]:
        """What :meth:`__call__` gives for each waveform, ``[1, T_i, hidden]``, from one
        forward pass of the encoder over all of them (at ``precision``, see :meth:`hidden`).

        Why: on a GPU one forward of this model at batch 1 is bound by the host issuing its
        ~900 small kernels, not by the GPU (docs/benchmarks.md, run CD), so two waveforms in one
        batch cost about what one does. Each waveform's filterbanks are its own (they are
        normalised over its own frames); shorter inputs are padded at the end and masked.
        Padding changes nothing a kept position sees: masked keys get no attention weight,
        and the encoder zeroes masked positions before its convolutions, which are causal
        (padded on the left). The results equal the calls one by one up to float rounding of
        the batched matrix products (tests/test_semantic.py).
        """
        feats, mask, frames = self.batch_inputs(waves)
        hidden, _ = self.hidden(feats, mask, precision=precision)
        return [self.normalize(hidden[i : i + 1, :n]) for i, n in enumerate(frames)]

    def batch_inputs(
        self, waves: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """The encoder's inputs for :meth:`batch`: each waveform's filterbanks padded at the end
        to the longest (``[B, T, 160]``), the attention mask (``[B, T]``, 0 on the padding) and
        each waveform's own frame count."""
        extracted = [self.extract(w) for w in waves]
        longest = max(f.size(1) for f, _ in extracted)
        feats = torch.cat(
            [nn.functional.pad(f, (0, 0, 0, longest - f.size(1))) for f, _ in extracted]
        )
        mask = torch.cat([nn.functional.pad(m, (0, longest - m.size(1))) for _, m in extracted])
        return feats, mask, [f.size(1) for f, _ in extracted]
