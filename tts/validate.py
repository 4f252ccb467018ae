"""`tts validate`: strictly load every component of a checkpoint set without running it.

Module components go through :func:`tts.components.load_component` (strict, every tensor named).
The others are checked by what they are: the emotion matrices by shape against the config, the
SentencePiece model by loading it and comparing its vocabulary with the GPT's text vocabulary,
the Qwen emotion folder by strictly comparing its safetensors with the architecture its
config.json describes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tts.checkpoints import (
    CheckpointSet,
    config_problems,
    describe_source,
    indextts1_evidence,
    indextts1_message,
)
from tts.components import MODULE_COMPONENTS, load_component
from tts.loading import CheckpointError, all_finite, compare_state, read_tensor_file
from tts.weight_report import TensorStats, state_report

COMPONENT_NAMES = (
    "gpt",
    "s2mel",
    "semantic_codec",
    "w2v_bert",
    "campplus",
    "bigvgan",
    "emotion_matrices",
    "bpe",
    "qwen_emotion",
)


@dataclass
class ComponentResult:
    """Outcome of validating one component."""

    name: str
    file: str
    ok: bool
    message: str
    tensors: int = 0
    computed: list[str] = field(default_factory=list)
    stats: list[TensorStats] = field(default_factory=list)


def parse_only(only: str | None) -> list[str]:
    """Component names from a comma-separated ``--only`` value (all of them when None)."""
    if not only:
        return list(COMPONENT_NAMES)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in COMPONENT_NAMES]
    if unknown:
        raise ValueError(
            f"unknown component(s) {unknown}; choose from {', '.join(COMPONENT_NAMES)}"
        )
    return names


def validate_set(
    root: str | Path, names: Iterable[str], with_stats: bool = False
) -> list[ComponentResult]:
    """Validate the named components of the set at ``root``; never raises for a bad file.

    An IndexTTS 1.x set or a config.yaml without the IndexTTS2 sections is reported up front as
    one failed ``set``/``config`` result, instead of one failure per component. A missing or
    unparsable config.yaml raises (FileNotFoundError / ConfigError, one line naming the file).
    """
    cs = CheckpointSet.open(root)
    early = set_problem(cs)
    if early is not None:
        return [early]
    names = list(names)
    results = []
    for name in names:
        if (
            name == "qwen_emotion"
            and not cs.path("qwen_emotion").exists()
            and names != ["qwen_emotion"]
        ):
            results.append(
                ComponentResult(
                    name, "", True, "not present (optional: needed only for emotion from text)"
                )
            )
            continue
        results.append(_validate_one(cs, name, with_stats))
    return results


def set_problem(cs: CheckpointSet) -> ComponentResult | None:
    """A failed ``set`` (IndexTTS 1.x) or ``config`` (sections missing) result, else None.

    The 1.x test (:func:`tts.checkpoints.indextts1_evidence`) uses config.yaml and gpt.pth's
    tensor names, read from its pickle without executing it.
    """
    from tts.preflight import gpt_tensor_names

    from_config = indextts1_evidence(cs.config)
    from_gpt = indextts1_evidence(gpt_tensors=gpt_tensor_names(cs))
    config = str(cs.path("config"))
    if from_config or from_gpt:
        where = cs.root if from_config else cs.path("gpt")
        message = indextts1_message(where, from_config + from_gpt)
        return ComponentResult("set", str(where), False, message)
    problems = config_problems(cs.config)
    if problems:
        return ComponentResult("config", config, False, f"{config}: {'; '.join(problems)}")
    return None


def _validate_one(cs: CheckpointSet, name: str, with_stats: bool) -> ComponentResult:
    try:
        if name in MODULE_COMPONENTS:
            path = MODULE_COMPONENTS[name].file(cs)
            if not path.exists():
                raise CheckpointError(
                    f"{path}: missing. {describe_source(MODULE_COMPONENTS[name].file_key)}"
                )
            if name == "w2v_bert":
                _check_w2v_stats(cs)  # the features' normalisation: fails fast, before the model
            module, report = load_component(name, cs)
            state = module.state_dict()
            stats = state_report(path.name, state) if with_stats else []
            msg = f"{report.loaded} tensors loaded strictly"
            if report.cast:
                stored = {c.split("->")[0].removeprefix("torch.") for c in report.cast.values()}
                msg += f"; {len(report.cast)} tensor(s) stored as {'/'.join(sorted(stored))}"
                msg += ", cast to float32"
            if report.computed:
                msg += f"; {len(report.computed)} deterministic buffer(s) computed: {', '.join(report.computed)}"
            del module
            return ComponentResult(
                name, str(path), True, msg, report.loaded, report.computed, stats
            )
        check = {
            "emotion_matrices": _check_emotion_matrices,
            "bpe": _check_bpe,
            "qwen_emotion": _check_qwen,
        }[name]
        file, msg, stats = check(cs, with_stats)
        return ComponentResult(name, file, True, msg, len(stats), stats=stats)
    except (CheckpointError, ValueError, OSError, KeyError, RuntimeError) as exc:
        text = str(exc) if not isinstance(exc, KeyError) else f"config key missing: {exc}"
        return ComponentResult(name, "", False, text)


def _check_w2v_stats(cs: CheckpointSet) -> None:
    """wav2vec2bert_stats.pt: ``{'mean', 'var'}`` float vectors of the encoder's width, finite,
    ``var`` >= 0 (its square root scales every feature)."""
    from tts.components import w2v_bert_config

    path = cs.path("w2v_stats")
    if not path.exists():
        raise CheckpointError(f"{path}: missing. {describe_source('w2v_stats')}")
    obj = read_tensor_file(path)
    if not isinstance(obj, dict) or not {"mean", "var"} <= set(obj):
        found = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: expected a dict with 'mean' and 'var'; found {found}")
    width = int(w2v_bert_config(cs).get("hidden_size", 1024))
    for key in ("mean", "var"):
        t = obj[key]
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise CheckpointError(f"{path}: {key!r} is not a float tensor")
        if tuple(t.shape) != (width,):
            raise CheckpointError(
                f"{path}: {key!r} has shape {list(t.shape)}, expected [{width}] (w2v-bert width)"
            )
        if not all_finite(t):
            raise CheckpointError(f"{path}: non-finite values (NaN/inf) in {key!r}")
    if (obj["var"] < 0).any():
        raise CheckpointError(f"{path}: 'var' has negative entries")


def _check_emotion_matrices(
    cs: CheckpointSet, with_stats: bool
) -> tuple[str, str, list[TensorStats]]:
    from tts.emotion import EmotionMatrices

    mats = EmotionMatrices.from_config(cs.root, cs.config)
    stats: list[TensorStats] = []
    if with_stats:
        stats += state_report(cs.path("spk_matrix").name, {"spk_matrix": torch.cat(mats.spk)})
        stats += state_report(cs.path("emo_matrix").name, {"emo_matrix": torch.cat(mats.emo)})
    rows = sum(mats.emo_num)
    return (
        str(cs.path("emo_matrix")),
        f"feat1/feat2 match emo_num ({rows} rows) and model_dim",
        stats,
    )


def _check_bpe(cs: CheckpointSet, with_stats: bool) -> tuple[str, str, list[TensorStats]]:
    import sentencepiece as spm

    from tts.preflight import sniff

    path = cs.path("bpe")
    if not path.is_file():
        raise CheckpointError(f"{path}: missing. {describe_source('bpe')}")
    sniff(path)  # empty, text (an error page), Git LFS pointer, unreadable: one clear line
    sp = spm.SentencePieceProcessor()
    try:
        sp.Load(str(path))
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path}: not a SentencePiece model ({str(exc).splitlines()[0]})"
        ) from None
    vocab = sp.GetPieceSize()
    expected = int(cs.config["gpt"]["number_text_tokens"])
    if vocab > expected:
        raise CheckpointError(
            f"{path}: vocabulary of {vocab} pieces exceeds gpt.number_text_tokens {expected}"
        )
    return (
        str(path),
        f"SentencePiece model with {vocab} pieces (text embedding has {expected} rows)",
        [],
    )


def _check_qwen(cs: CheckpointSet, with_stats: bool) -> tuple[str, str, list[TensorStats]]:
    folder = cs.path("qwen_emotion")
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder}: missing (needed only for emotion from text). {describe_source('qwen_emotion')}"
        )
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: missing")
    config = json.loads(cfg_path.read_text(encoding="utf-8"))
    expected = expected_qwen_tensors(config)
    provided: dict[str, torch.Tensor] = {}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder}: no *.safetensors weight files")
    for f in files:
        provided.update(read_tensor_file(f))
    computed = compare_state(expected, provided, str(folder), computed_ok=("lm_head.weight",))
    note = " (lm_head tied to the embedding)" if computed else ""
    stats = state_report(folder.name, provided) if with_stats else []
    return (
        str(folder),
        f"{len(provided)} tensors match the {config.get('model_type')} architecture{note}",
        stats,
    )


def expected_qwen_tensors(config: dict) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Names and shapes of the causal LM that ``config`` (a config.json dict) describes."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
