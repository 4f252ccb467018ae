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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

MAIN_REPO = "IndexTeam/IndexTTS-2"


class CheckpointError(Exception):
    """A checkpoint file cannot be used. The message names the file and every bad tensor.

    Defined here (torch-free) so that `tts check` can raise it without importing torch;
    :mod:`tts.loading` re-exports it.
    """


class ConfigError(CheckpointError, ValueError):
    """config.yaml (or a model's config.json) cannot be used; the message names the file."""


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
    """Read an official-format ``config.yaml`` (plain YAML; OmegaConf is not needed).

    Raises :class:`ConfigError` (one line, naming the file) for a file that is not text, not
    YAML, or not a mapping (e.g. an HTML error page saved in its place).
    """
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (config.yaml must be YAML)") from None
    except PermissionError:
        raise ConfigError(f"{path}: cannot be read (permission denied)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML ({where}{problem})") from None
    if not isinstance(data, dict):
        shown = repr(data)[:60] if data is not None else "nothing"
        raise ConfigError(
            f"{path}: not a YAML mapping (found {shown}); is it a text file or a download "
            "error page?"
        )
    return data


REQUIRED_SECTIONS = ("gpt", "s2mel", "semantic_codec")


def config_problems(config: Mapping) -> list[str]:
    """What keeps an IndexTTS2 ``config.yaml`` from building the models (empty when fine)."""
    problems = []
    for section in REQUIRED_SECTIONS:
        if section not in config:
            problems.append(f"section '{section}' is missing")
        elif not isinstance(config[section], Mapping):
            problems.append(f"section '{section}' is not a mapping")
    return problems


# Tensors only IndexTTS2's gpt.pth has (emotion conditioning, speed embedding).
V2_ONLY_GPT_PREFIXES = ("emo_conditioning_encoder.", "emovec_layer.", "speed_emb.")


def indextts1_evidence(
    config: Mapping | None = None, gpt_tensors: Mapping[str, object] | None = None
) -> list[str]:
    """Reasons to think a set is IndexTTS 1.0/1.5 rather than IndexTTS2 (empty: no reason).

    IndexTTS 1.x (reference ``indextts/infer.py`` + ``indextts/gpt/model.py``) ships a
    config.yaml with ``version: 1.5`` (1.0 has no ``version``), ``vqvae``/``bigvgan`` sections and
    no ``s2mel``/``semantic_codec``; its gpt.pth has no emotion conditioning
    (``emo_conditioning_encoder.*``, ``emovec_layer.*``) and no ``speed_emb``, and its speaker
    conditioning encoder reads 100-band mels where IndexTTS2's reads 1024-wide w2v-bert features.
    Such a set must be named as what it is, not reported as hundreds of missing tensors.

    ``config`` is the parsed config.yaml; ``gpt_tensors`` maps gpt.pth's tensor names to their
    shapes (a value may be None where only the names are known). Either may be omitted.
    """
    evidence: list[str] = []
    if config is not None:
        version = config.get("version")
        if version is not None:
            try:
                if float(version) < 2:
                    evidence.append(f"config.yaml says version {version}")
            except (TypeError, ValueError):
                pass
        elif "s2mel" not in config and any(
            k in config for k in ("vqvae", "bigvgan", "dvae_checkpoint", "bigvgan_checkpoint")
        ):
            evidence.append(
                "config.yaml has no version and no s2mel section, but 1.x vqvae/bigvgan entries"
            )
    if gpt_tensors is not None:
        names = list(gpt_tensors)
        if any(n.startswith("conditioning_encoder.") for n in names) and not any(
            n.startswith(V2_ONLY_GPT_PREFIXES) for n in names
        ):
            evidence.append(
                "gpt.pth has no emo_conditioning_encoder/emovec_layer/speed_emb tensors"
            )
            shape = gpt_tensors.get("conditioning_encoder.embed.out.0.weight")
            if shape is not None and len(shape) == 2 and shape[0] and shape[1] % shape[0] == 0:
                width = 2 * (shape[1] // shape[0]) + 1  # conv2d2 subsampling: (in - 1) // 2
                if width < 512:
                    evidence.append(
                        f"its speaker conditioning reads ~{width}-wide input (mel bands), not "
                        "1024-wide w2v-bert features"
                    )
    return evidence


def indextts1_message(where: str | Path, evidence: list[str]) -> str:
    """The one-line error for :func:`indextts1_evidence`."""
    return (
        f"{where}: this looks like an IndexTTS 1.x checkpoint ({'; '.join(evidence)}); "
        f"IndexTTS2 needs the files of the Hugging Face repo {MAIN_REPO} (config.yaml "
        "version 2.0, gpt.pth with emotion conditioning, s2mel.pth, feat1.pt, feat2.pt, "
        "wav2vec2bert_stats.pt) plus its auxiliary models; run `tts check DIR` for the list"
    )


def merge_config(base: dict, extra: dict) -> dict:
    """A deep copy of ``base`` with ``extra`` merged in, nested mappings key by key."""
    import copy

    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = value
    return out


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
    except (FileNotFoundError, ConfigError):
        # Without a usable config.yaml every path takes the official default names.
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
