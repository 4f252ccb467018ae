"""`tts demo-checkpoints`: a small random checkpoint set in the official on-disk formats.

For offline runs and tests only. The weights are random, so the audio is noise, never speech.
The set's config.yaml carries ``demo: true``; :class:`tts.pipeline.Engine` reports it and the
workflow shows a DEMO banner on everything made from it. Nothing ever falls back to it silently.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from tts.checkpoints import CheckpointSet, load_config, merge_config
from tts.components import MODULE_COMPONENTS, S2MEL_PARTS

# Shrunk sizes; everything the reference hard-codes (1024-wide semantic features, 80 mels,
# 192-wide style, 1280-wide gpt_layer input) keeps its official value.
_GPT = {
    "model_dim": 64,
    "heads": 4,
    "layers": 2,
    "max_mel_tokens": 1815,
    "max_text_tokens": 600,
    "number_text_tokens": 512,
    "condition_module": {
        "output_size": 32,
        "linear_units": 64,
        "attention_heads": 2,
        "num_blocks": 1,
        "input_layer": "conv2d2",
        "perceiver_mult": 2,
    },
    "emo_condition_module": {
        "output_size": 32,
        "linear_units": 64,
        "attention_heads": 2,
        "num_blocks": 1,
        "input_layer": "conv2d2",
        "perceiver_mult": 0.375,
    },
}
_S2MEL = {
    "DiT": {"hidden_dim": 64, "num_heads": 4, "depth": 4, "content_dim": 64},
    "wavenet": {"hidden_dim": 64, "num_layers": 2},
    "length_regulator": {"channels": 64},
}
_CODEC = {"vocos_dim": 32, "vocos_intermediate_dim": 64, "vocos_num_layers": 2}
_CAMPPLUS = {
    "feat_dim": 80,
    "embedding_size": 192,
    "growth_rate": 8,
    "bn_size": 2,
    "init_channels": 32,
}
_BIGVGAN = {
    "upsample_initial_channel": 64,
    "resblock_kernel_sizes": [3, 7],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
}
_W2V = {
    "hidden_size": 1024,
    "num_hidden_layers": 2,
    "num_attention_heads": 16,
    "intermediate_size": 64,
    "output_hidden_size": 1024,
}
W2V_DEMO_LAYER = 2  # the demo encoder has 2 layers; the official model uses hidden state 17

_CORPUS = """\
The quick brown fox jumps over the lazy dog.
A journey of a thousand miles begins with a single step.
She sells sea shells by the sea shore, and the shells she sells are surely sea shells.
Numbers like one, two, three, forty two and one hundred are read aloud.
How are you today? I am fine, thank you very much!
Please call Stella and ask her to bring these things with her from the store.
今天天气很好，我们一起去公园散步吧。
欢迎大家来体验这个模型。
"""


def demo_config(official: dict) -> dict:
    """The official config with shrunk model sizes and ``demo: true``."""
    cfg = copy.deepcopy(official)
    cfg["gpt"] = merge_config(cfg["gpt"], _GPT)
    cfg["s2mel"] = merge_config(cfg["s2mel"], {**_S2MEL, "gpt_latent_dim": _GPT["model_dim"]})
    cfg["semantic_codec"] = merge_config(cfg["semantic_codec"], _CODEC)
    cfg["campplus"] = dict(_CAMPPLUS)
    cfg["w2v_bert_layer"] = W2V_DEMO_LAYER
    cfg["demo"] = True
    return cfg


def _init_state(
    state: dict[str, torch.Tensor], gen: torch.Generator, keep: tuple[str, ...]
) -> None:
    """Give every learned tensor a sane random value (modules may leave theirs uninitialised).

    Norm scales start near one, biases and Snake log-scales near zero, weights at
    N(0, 1/fan_in); weight-norm magnitudes equal the norm of their direction, so the effective
    weights keep that scale. Deterministic buffers (``keep``) and integer tensors are untouched.
    """
    import fnmatch

    for name, t in state.items():
        if not t.is_floating_point() or any(fnmatch.fnmatchcase(name, p) for p in keep):
            continue
        leaf = name.rsplit(".", 1)[-1]
        noise = torch.randn(t.shape, generator=gen)
        if "running_var" in leaf:
            t.copy_(1.0 + 0.1 * noise.abs())
        elif "running_mean" in leaf or leaf in ("bias", "alpha", "beta") or t.dim() == 0:
            t.copy_(0.02 * noise)
        elif t.dim() == 1 or leaf in ("gamma", "scale"):
            t.copy_(1.0 + 0.02 * noise) if "norm" in name or leaf in (
                "weight",
                "gamma",
            ) else t.copy_(0.02 * noise)
        else:
            fan_in = max(1, t[0].numel())
            t.copy_(noise / fan_in**0.5)
    for name, t in state.items():
        if name.endswith("weight_g"):
            v = state[name[: -len("weight_g")] + "weight_v"]
            t.copy_(v.flatten(1).norm(dim=1).reshape(t.shape))
    if "conv_post.weight_g" in state:  # keep the random vocoder's output mostly inside [-1, 1]
        state["conv_post.weight_g"].mul_(0.001)


def _train_bpe(out: Path, vocab: int) -> None:
    """Train a small SentencePiece BPE model (bos 0, eos 1, unk 2, as the official one)."""
    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text(_CORPUS.upper() * 4, encoding="utf-8")
        spm.SentencePieceTrainer.Train(
            input=str(corpus),
            model_prefix=str(Path(tmp) / "bpe"),
            model_type="bpe",
            vocab_size=vocab,
            character_coverage=1.0,
            bos_id=0,
            eos_id=1,
            unk_id=2,
            pad_id=-1,
            hard_vocab_limit=False,
            minloglevel=2,
        )
        shutil.copy(Path(tmp) / "bpe.model", out)


def write_demo_checkpoints(out: Path, seed: int = 0) -> Path:
    """Write the whole DEMO set to ``out`` (flat layout) and return it."""
    from tts.cli import OFFICIAL_CONFIG

    out.mkdir(parents=True, exist_ok=True)
    official = load_config(OFFICIAL_CONFIG)
    cfg = demo_config(official)
    (out / "bigvgan").mkdir(exist_ok=True)
    bigvgan_cfg = {
        **json.loads(
            resources.files("tts.data").joinpath("bigvgan_v2_22khz_80band_256x.json").read_text()
        ),
        **_BIGVGAN,
    }
    (out / "bigvgan" / "config.json").write_text(json.dumps(bigvgan_cfg, indent=2))
    w2v_dir = out / "w2v-bert-2.0"
    w2v_dir.mkdir(exist_ok=True)
    w2v_cfg = {
        **json.loads(resources.files("tts.data").joinpath("w2v-bert-2.0.config.json").read_text()),
        **_W2V,
    }
    (w2v_dir / "config.json").write_text(json.dumps(w2v_cfg, indent=2))
    (w2v_dir / "preprocessor_config.json").write_text(
        resources.files("tts.data").joinpath("w2v-bert-2.0.preprocessor_config.json").read_text()
    )
    (out / "config.yaml").write_text(
        "# DEMO checkpoint set written by `tts demo-checkpoints`: random weights, NOT a voice model.\n"
        + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True),
        encoding="utf-8",
    )
    cs = CheckpointSet.open(out)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    for name, comp in MODULE_COMPONENTS.items():
        module = comp.build(cs)
        state = {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
        _init_state(state, gen, comp.computed_ok)
        path = cs.flat_path(comp.file_key)
        _save_component(name, path / comp.inner_path if comp.inner_path else path, state)
    torch.save(torch.rand(sum(cfg["emo_num"]), 192, generator=gen) - 0.5, out / "feat1.pt")
    torch.save(
        (torch.rand(sum(cfg["emo_num"]), cfg["gpt"]["model_dim"], generator=gen) - 0.5) * 0.2,
        out / "feat2.pt",
    )
    torch.save(
        {
            "mean": torch.randn(1024, generator=gen) * 0.1,
            "var": torch.rand(1024, generator=gen) + 0.5,
        },
        out / "wav2vec2bert_stats.pt",
    )
    _train_bpe(out / "bpe.model", cfg["gpt"]["number_text_tokens"])
    return out


def _save_component(name: str, path: Path, state: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if name == "gpt":
        torch.save(state, path)
    elif name == "s2mel":
        net = {
            part: {k[len(part) + 1 :]: v for k, v in state.items() if k.startswith(part + ".")}
            for part in S2MEL_PARTS
        }
        torch.save({"net": net}, path)
    elif name == "bigvgan":
        torch.save({"generator": state}, path)
    elif path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
