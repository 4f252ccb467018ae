"""The IndexTTS2 checkpoint directory: which files exist, where each one is, where users get it.

Two layouts are understood, both resolved from ``config.yaml``:

* flat: the auxiliary models beside config.yaml (``w2v-bert-2.0/``,
  ``semantic_codec/model.safetensors``, ``campplus_cn_common.bin``, ``bigvgan/``), as the
  fixture sets have them;
* the official CLI's ``hf_cache/`` layout (``hf_cache/w2v-bert-2.0/``,
  ``hf_cache/semantic_codec_model.safetensors``, ``hf_cache/campplus_cn_common.bin``,
  ``hf_cache/bigvgan/``), including the older Hugging Face hub cache
  ``hf_cache/models--owner--name/snapshots/<rev>/`` form.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml

MAIN_REPO = "IndexTeam/IndexTTS-2"


@dataclass(frozen=True)
class FileSpec:
    """One file (or folder) of the checkpoint set."""

    key: str
    what: str
    repo: str
    remote: str
    kind: str = "file"  # "file" or "dir"
    optional: bool = False


# key -> spec; the path of each is resolved by CheckpointSet.path().
FILES: dict[str, FileSpec] = {
    spec.key: spec
    for spec in [
        FileSpec("config", "model configuration", MAIN_REPO, "config.yaml"),
        FileSpec("gpt", "GPT (UnifiedVoice) weights", MAIN_REPO, "gpt.pth"),
        FileSpec("s2mel", "s2mel (DiT, length regulator) weights", MAIN_REPO, "s2mel.pth"),
        FileSpec("bpe", "SentencePiece text model", MAIN_REPO, "bpe.model"),
        FileSpec("w2v_stats", "w2v-bert feature statistics", MAIN_REPO, "wav2vec2bert_stats.pt"),
        FileSpec("spk_matrix", "emotion speaker matrix", MAIN_REPO, "feat1.pt"),
        FileSpec("emo_matrix", "emotion matrix", MAIN_REPO, "feat2.pt"),
        FileSpec(
            "qwen_emotion",
            "Qwen emotion-from-text model (only for emotion text)",
            MAIN_REPO,
            "qwen0.6bemo4-merge/",
            kind="dir",
            optional=True,
        ),
        FileSpec(
            "w2v_bert",
            "w2v-bert-2.0 speech encoder",
            "facebook/w2v-bert-2.0",
            "(whole repo)",
            "dir",
        ),
        FileSpec(
            "semantic_codec",
            "MaskGCT semantic codec",
            "amphion/MaskGCT",
            "semantic_codec/model.safetensors",
        ),
        FileSpec(
            "campplus", "CAMPPlus speaker encoder", "funasr/campplus", "campplus_cn_common.bin"
        ),
        FileSpec(
            "bigvgan",
            "BigVGAN vocoder (config.json + bigvgan_generator.pt)",
            "nvidia/bigvgan_v2_22khz_80band_256x",
            "config.json, bigvgan_generator.pt",
            "dir",
        ),
    ]
}

# Where each auxiliary model sits: (flat layout, hf_cache layout), relative to the model dir.
_AUX = {
    "w2v_bert": ("w2v-bert-2.0", "hf_cache/w2v-bert-2.0"),
    "semantic_codec": (
        "semantic_codec/model.safetensors",
        "hf_cache/semantic_codec_model.safetensors",
    ),
    "campplus": ("campplus_cn_common.bin", "hf_cache/campplus_cn_common.bin"),
    "bigvgan": ("bigvgan", "hf_cache/bigvgan"),
}
# Older hub-cache snapshots: key -> (repo id, path inside the snapshot).
_HUB = {
    "w2v_bert": ("facebook/w2v-bert-2.0", ""),
    "semantic_codec": ("amphion/MaskGCT", "semantic_codec/model.safetensors"),
    "campplus": ("funasr/campplus", "campplus_cn_common.bin"),
    "bigvgan": ("nvidia/bigvgan_v2_22khz_80band_256x", ""),
}
# Config keys naming the main files, with the official defaults.
_CONFIG_KEYS = {
    "gpt": (("gpt_checkpoint",), "gpt.pth"),
    "s2mel": (("s2mel_checkpoint",), "s2mel.pth"),
    "bpe": (("dataset", "bpe_model"), "bpe.model"),
    "w2v_stats": (("w2v_stat",), "wav2vec2bert_stats.pt"),
    "spk_matrix": (("spk_matrix",), "feat1.pt"),
    "emo_matrix": (("emo_matrix",), "feat2.pt"),
    "qwen_emotion": (("qwen_emo_path",), "qwen0.6bemo4-merge/"),
}


def load_config(path: str | Path) -> dict:
    """Read an official-format ``config.yaml`` (plain YAML; OmegaConf is not needed)."""
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a YAML mapping")
    return data


def _dig(cfg: dict, keys: tuple[str, ...]) -> object:
    for k in keys:
        if not isinstance(cfg, dict) or k not in cfg:
            return None
        cfg = cfg[k]
    return cfg


@dataclass
class CheckpointSet:
    """A model directory as a user downloaded it (or as ``tts demo-checkpoints`` wrote it)."""

    root: Path
    config: dict

    @classmethod
    def open(cls, root: str | Path) -> CheckpointSet:
        """Open a model directory; its config.yaml must exist (see :func:`missing_files`)."""
        root = Path(root)
        cfg_path = root / "config.yaml"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path}: missing. {describe_source('config')}")
        return cls(root=root, config=load_config(cfg_path))

    @property
    def is_demo(self) -> bool:
        """True for sets made by ``tts demo-checkpoints`` (random weights, labelled DEMO)."""
        return bool(self.config.get("demo", False))

    def path(self, key: str) -> Path:
        """Where file ``key`` of :data:`FILES` is (or would be) in this directory."""
        if key == "config":
            return self.root / "config.yaml"
        if key in _CONFIG_KEYS:
            keys, default = _CONFIG_KEYS[key]
            rel = _dig(self.config, keys) or default
            return self.root / str(rel)
        if key in _AUX:
            flat, cached = (self.root / p for p in _AUX[key])
            for candidate in (flat, cached):
                if candidate.exists():
                    return candidate
            hub = self._hub_snapshot(key)
            return hub if hub is not None else cached
        raise KeyError(f"unknown checkpoint file key {key!r}")

    def flat_path(self, key: str) -> Path:
        """Where an auxiliary model goes in the flat layout (used when writing a set)."""
        return self.root / _AUX[key][0] if key in _AUX else self.path(key)

    def _hub_snapshot(self, key: str) -> Path | None:
        repo, inner = _HUB[key]
        snaps = self.root / "hf_cache" / f"models--{repo.replace('/', '--')}" / "snapshots"
        if not snaps.is_dir():
            return None
        for snap in sorted(snaps.iterdir()):
            target = snap / inner if inner else snap
            if target.exists():
                return target
        return None

    def required_paths(self) -> dict[str, Path]:
        """Every concrete file the set needs: key (or key/filename) -> path."""
        out: dict[str, Path] = {}
        for key, spec in FILES.items():
            p = self.path(key)
            if key == "bigvgan":
                out["bigvgan/config.json"] = p / "config.json"
                out["bigvgan/bigvgan_generator.pt"] = p / "bigvgan_generator.pt"
            elif key == "w2v_bert":
                for name in ("config.json", "preprocessor_config.json", "model.safetensors"):
                    out[f"w2v_bert/{name}"] = p / name
            elif spec.kind == "dir":
                out[key] = p
            else:
                out[key] = p
        return out


def describe_source(key: str) -> str:
    """'where to get it' text for a file key (or key/filename)."""
    spec = FILES[key.split("/")[0]]
    remote = key.split("/", 1)[1] if "/" in key else spec.remote
    return f"{spec.what}: download {remote} from the Hugging Face repo {spec.repo}"


def missing_files(root: str | Path) -> list[tuple[str, Path, str]]:
    """(key, expected path, where to get it) for every required file that is absent."""
    root = Path(root)
    try:
        cs = CheckpointSet.open(root)
    except FileNotFoundError:
        # Without config.yaml every path takes the official default names.
        cs = CheckpointSet(root=root, config={})
    missing = []
    for key, path in cs.required_paths().items():
        spec = FILES[key.split("/")[0]]
        if spec.optional:
            continue
        exists = path.is_dir() if spec.kind == "dir" and "/" not in key else path.is_file()
        if not exists:
            missing.append((key, path, describe_source(key)))
    return missing


def sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
