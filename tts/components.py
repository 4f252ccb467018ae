"""The checkpoint components: how each is built, which file feeds it, and how it is validated.

Every model goes through :func:`load_component`: build the module with its parameters on the
meta device (:func:`tts.loading.params_on_meta`), read the file (pickles only with
``weights_only=True``), unwrap the official nesting, then :func:`tts.loading.load_strict`.
The same table drives ``tts validate`` and ``tts manifest``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from tts.checkpoints import CheckpointSet, ConfigError, indextts1_evidence, indextts1_message
from tts.loading import (
    CheckpointError,
    LoadReport,
    flatten_state,
    load_strict,
    params_on_meta,
    read_tensor_file,
    strip_prefix,
)


def _data_json(name: str) -> dict:
    return json.loads(resources.files("tts.data").joinpath(name).read_text(encoding="utf-8"))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def bigvgan_config(cs: CheckpointSet) -> dict:
    """The vocoder's config.json from the set, or the official one shipped with the package."""
    path = cs.path("bigvgan") / "config.json"
    if path.is_file():
        return _read_json(path)
    return _data_json("bigvgan_v2_22khz_80band_256x.json")


def w2v_bert_config(cs: CheckpointSet) -> dict:
    """w2v-bert-2.0's config.json from the set, or the official one shipped with the package."""
    path = cs.path("w2v_bert") / "config.json"
    if path.is_file():
        return _read_json(path)
    return _data_json("w2v-bert-2.0.config.json")


# ---------------------------------------------------------------------------------------------
# Builders (imports are local so that validating one component never imports the others)
# ---------------------------------------------------------------------------------------------


def _build_gpt(cs: CheckpointSet) -> nn.Module:
    from tts.models.gpt import UnifiedVoice

    return UnifiedVoice.from_config(cs.config["gpt"])


def _build_gpt_emotion(cs: CheckpointSet) -> nn.Module:
    from tts.models.gpt import EmotionEncoder

    return EmotionEncoder.from_config(cs.config["gpt"])


def _build_gpt_speech(cs: CheckpointSet) -> nn.Module:
    from tts.models.gpt import without_emotion_path

    return without_emotion_path(_build_gpt(cs))


def _build_s2mel(cs: CheckpointSet) -> nn.Module:
    from tts.models.s2mel import S2Mel

    return S2Mel.from_config(cs.config["s2mel"])


def _build_length_regulator(cs: CheckpointSet) -> nn.Module:
    from tts.models.length_regulator import LengthRegulator

    # Under its s2mel name, so that the state dict's keys (and errors) read as s2mel.pth's.
    regulator = LengthRegulator.from_config(cs.config["s2mel"]["length_regulator"])
    return nn.ModuleDict({"length_regulator": regulator})


def _build_codec(cs: CheckpointSet) -> nn.Module:
    from tts.models.semantic_codec import RepCodec

    return RepCodec.from_config(cs.config["semantic_codec"])


def _build_campplus(cs: CheckpointSet) -> nn.Module:
    from tts.models.campplus import CAMPPlus

    return CAMPPlus.from_config(cs.config.get("campplus") or {})


def _build_bigvgan(cs: CheckpointSet) -> nn.Module:
    from tts.models.bigvgan import BigVGAN

    return BigVGAN.from_config(bigvgan_config(cs))


def _build_w2v_bert(cs: CheckpointSet) -> nn.Module:
    from tts.models.w2v_bert import build_w2v_bert

    return build_w2v_bert(w2v_bert_config(cs))


# ---------------------------------------------------------------------------------------------
# Readers: file -> flat state dict with the module's own key names
# ---------------------------------------------------------------------------------------------


def _read_gpt(path: Path) -> dict[str, torch.Tensor]:
    obj = read_tensor_file(path)
    nesting = (
        ["model"]
        if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict)
        else []
    )
    state = flatten_state(obj, path, nesting)
    evidence = indextts1_evidence(gpt_tensors={k: tuple(v.shape) for k, v in state.items()})
    if evidence:  # name the model generation instead of listing every emotion tensor missing
        raise CheckpointError(indextts1_message(path, evidence))
    return state


S2MEL_PARTS = ("cfm", "length_regulator", "gpt_layer")


def _read_s2mel(path: Path) -> dict[str, torch.Tensor]:
    obj = read_tensor_file(path)
    if not isinstance(obj, dict) or "net" not in obj:
        found = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{path}: expected a top-level key 'net' (s2mel checkpoint); found {found}"
        )
    out: dict[str, torch.Tensor] = {}
    missing_parts = [p for p in S2MEL_PARTS if p not in obj["net"]]
    if missing_parts:
        raise CheckpointError(f"{path}: 'net' lacks the sub-model(s) {missing_parts}")
    for part in S2MEL_PARTS:
        sub = strip_prefix(flatten_state(obj["net"], path, [part]), "module.")
        out.update({f"{part}.{k}": v for k, v in sub.items()})
    return out


def _read_flat(path: Path) -> dict[str, torch.Tensor]:
    return flatten_state(read_tensor_file(path), path)


def _read_bigvgan(path: Path) -> dict[str, torch.Tensor]:
    from tts.models.bigvgan import to_weight_norm_form

    obj = read_tensor_file(path)
    if isinstance(obj, dict) and "generator" not in obj and obj:
        tensors = [k for k, v in obj.items() if isinstance(v, torch.Tensor)]
        if len(tensors) == len(obj):
            raise CheckpointError(
                f"{path}: expected {{'generator': state_dict}} (the official BigVGAN file); "
                f"found a bare state dict of {len(obj)} tensors ({', '.join(sorted(obj)[:3])}, ...)"
            )
    return to_weight_norm_form(flatten_state(obj, path, ["generator"]))


@dataclass(frozen=True)
class Component:
    """A torch-module component of the checkpoint set."""

    name: str
    file_key: str  # key in tts.checkpoints.FILES
    manifest_name: str  # file column of `tts manifest` / name of the spec manifest
    build: Callable[[CheckpointSet], nn.Module]
    read: Callable[[Path], dict[str, torch.Tensor]]
    inner_path: str = ""  # file inside a folder component
    manifest_prefix: Callable[[str], str] = staticmethod(lambda k: k)
    computed_ok: tuple[str, ...] = ()  # deterministic buffers that may be absent from the file

    def file(self, cs: CheckpointSet) -> Path:
        base = cs.path(self.file_key)
        return base / self.inner_path if self.inner_path else base


def _s2mel_manifest_name(key: str) -> str:
    return f"net.{key}"


MODULE_COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in [
        Component(
            "gpt",
            "gpt",
            "gpt.pth",
            _build_gpt,
            _read_gpt,
            computed_ok=(
                "conditioning_encoder.embed.pos_enc.pe",
                "emo_conditioning_encoder.embed.pos_enc.pe",
            ),
        ),
        Component(
            "s2mel",
            "s2mel",
            "s2mel.pth",
            _build_s2mel,
            _read_s2mel,
            manifest_prefix=_s2mel_manifest_name,
            computed_ok=(
                "cfm.estimator.input_pos",
                "cfm.estimator.t_embedder.freqs",
                "cfm.estimator.t_embedder2.freqs",
            ),
        ),
        Component(
            "semantic_codec",
            "semantic_codec",
            "semantic_codec_model.safetensors",
            _build_codec,
            _read_flat,
        ),
        Component(
            "campplus",
            "campplus",
            "campplus_cn_common.bin",
            _build_campplus,
            _read_flat,
            computed_ok=("*.num_batches_tracked",),
        ),
        Component(
            "bigvgan",
            "bigvgan",
            "bigvgan_generator.pt",
            _build_bigvgan,
            _read_bigvgan,
            inner_path="bigvgan_generator.pt",
            computed_ok=("*.upsample.filter", "*.downsample.lowpass.filter"),
        ),
        Component(
            "w2v_bert",
            "w2v_bert",
            "w2v-bert-2.0.model.safetensors",
            _build_w2v_bert,
            _read_flat,
            inner_path="model.safetensors",
        ),
    ]
}


def build_empty(
    name: str, cs: CheckpointSet, build: Callable[[CheckpointSet], nn.Module] | None = None
) -> nn.Module:
    """Build component ``name`` (or, with ``build``, another module from its config section)
    with parameters on meta (nothing initialised), in eval mode.

    A config that cannot describe the module (a missing section or key, a value of the wrong
    type) is a :class:`ConfigError` naming config.yaml, not a ``KeyError`` traceback.
    """
    source = cs.path("config")
    if name in ("bigvgan", "w2v_bert") and (cs.path(name) / "config.json").is_file():
        source = cs.path(name) / "config.json"
    try:
        with params_on_meta():
            module = (build or MODULE_COMPONENTS[name].build)(cs)
    except KeyError as exc:
        raise ConfigError(f"{source}: key {exc} missing (needed to build {name})") from None
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(
            f"{source}: cannot build {name} from it "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    return module.eval()


def load_component(name: str, cs: CheckpointSet) -> tuple[nn.Module, LoadReport]:
    """Build and strictly load one component from the checkpoint set, on CPU in float32."""
    comp = MODULE_COMPONENTS[name]
    path = comp.file(cs)
    module = build_empty(name, cs)
    state = comp.read(path)
    report = load_strict(module, state, str(path), comp.computed_ok)
    after_load = getattr(module, "after_load", None)
    if callable(after_load):
        after_load()
    return module, report


def _load_subset(
    name: str, cs: CheckpointSet, module: nn.Module, keep: Callable[[str], bool]
) -> tuple[nn.Module, LoadReport]:
    """Strictly load ``module``, a part of component ``name``, from the tensors of its file
    whose names ``keep`` accepts: each tensor the part expects must be there with its shape,
    and any other accepted tensor is an error. The rest of the file is not loaded (of a
    safetensors file, not even read; a torch zip file is memory-mapped, so its other tensors
    are not read either); ``validate_weights`` checks the whole file once per set."""
    comp = MODULE_COMPONENTS[name]
    path = comp.file(cs)
    if path.suffix == ".safetensors":
        read = flatten_state(read_tensor_file(path, keep=keep), path)
    else:
        read = comp.read(path)
    state = {k: v for k, v in read.items() if keep(k)}
    return module, load_strict(module, state, str(path), comp.computed_ok)


def load_gpt_emotion(cs: CheckpointSet) -> tuple[nn.Module, LoadReport]:
    """The GPT's emotion path alone (:class:`tts.models.gpt.EmotionEncoder`) from gpt.pth,
    what the workflow's emotion job needs: the tensors under its four module names (19% of
    the file at full size; see :func:`_load_subset`)."""
    module = build_empty("gpt", cs, _build_gpt_emotion)
    prefixes = tuple(f"{child}." for child, _ in module.named_children())
    return _load_subset("gpt", cs, module, lambda k: k.startswith(prefixes))


def load_gpt_speech(cs: CheckpointSet) -> tuple[nn.Module, LoadReport]:
    """The GPT without its emotion path and unused text head
    (:func:`tts.models.gpt.without_emotion_path`) from gpt.pth, what the workflow's tokens job
    runs (its emotion vectors come from the emotion job): 79% of the file at full size (see
    :func:`_load_subset`)."""
    from tts.models.gpt import NOT_FOR_SPEECH

    module = build_empty("gpt", cs, _build_gpt_speech)
    dropped = tuple(f"{name}." for name in NOT_FOR_SPEECH)
    return _load_subset("gpt", cs, module, lambda k: not k.startswith(dropped))


def load_length_regulator(cs: CheckpointSet) -> tuple[nn.Module, LoadReport]:
    """s2mel's length regulator alone (``module["length_regulator"]``) from s2mel.pth, all
    that speaker conditioning needs of the file: 5% of it at full size, without the
    flow-matching decoder (see :func:`_load_subset`)."""
    module = build_empty("s2mel", cs, _build_length_regulator)
    return _load_subset("s2mel", cs, module, lambda k: k.startswith("length_regulator."))


def load_w2v_bert(cs: CheckpointSet, layers: int) -> tuple[nn.Module, LoadReport]:
    """w2v-bert with its first ``layers`` encoder layers only, all that ``hidden_states[layers]``
    needs: 17 of 24 layers read 71% of the file at full size (see :func:`_load_subset`)."""
    from tts.models.w2v_bert import truncate_layers

    module = truncate_layers(build_empty("w2v_bert", cs), layers)
    layer_of = re.compile(r"encoder\.layers\.(\d+)\.")

    def kept(name: str) -> bool:
        match = layer_of.match(name)
        return match is None or int(match.group(1)) < layers

    return _load_subset("w2v_bert", cs, module, kept)


def manifest_rows(name: str, cs: CheckpointSet) -> list[tuple[str, str, str, str]]:
    """(file, tensor, shape, dtype) for every tensor component ``name`` expects."""
    comp = MODULE_COMPONENTS[name]
    module = build_empty(name, cs)
    rows = []
    for key, t in module.state_dict(keep_vars=True).items():
        shape = "[" + ", ".join(str(d) for d in t.shape) + "]"
        rows.append(
            (
                comp.manifest_name,
                comp.manifest_prefix(key),
                shape,
                str(t.dtype).removeprefix("torch."),
            )
        )
    return rows
