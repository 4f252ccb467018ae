"""Broken checkpoint sets, each with the error users must see (tests/test_bad_checkpoints.py).

Every case starts from a good set (a `tts demo-checkpoints` set, or one of the parity fixture
sets under /work/shared/fixtures), breaks one thing the way users plausibly break it, and names
the message fragments `tts check`, `tts validate`, ``Engine.open`` and the component load must
show. Binary files are written at test time, never committed. To look at the cases by hand:

    python tests/bad_checkpoints/make_cases.py OUT [--demo DIR] [--only ID,ID]   # writes OUT/<id>/
    python tests/bad_checkpoints/make_cases.py --list                            # id, stage, text

``stage`` says where a case is caught:

* ``check``: by the cheap checks (`tts check`, ``Engine.open``) and therefore also by
  `tts validate`; ``Engine.open`` refuses the set.
* ``load``: the files look fine from outside; `tts validate` and the component's strict load
  refuse it (`tts check` and ``Engine.open`` pass).
* ``accept``: a legitimate variant that must load to the same model (``verify`` says how).
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO.parent / "shared" / "fixtures"
MARKER = "EXECUTED"  # a pickle that runs code would create this file next to the set


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def link_set(base: Path, dest: Path, copy: bool = False) -> Path:
    """``dest`` mirrors ``base`` with symlinks (or copies); break files with :func:`own` first."""
    for src in sorted(base.rglob("*")):
        target = dest / src.relative_to(base)
        if src.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            if copy:
                shutil.copy2(src, target)
            else:
                target.symlink_to(src.resolve())
    return dest


def own(path: Path) -> Path:
    """Replace a symlink by a private copy so that changing it leaves the base set intact."""
    if path.is_symlink():
        src = path.resolve()
        path.unlink()
        if src.is_dir():
            shutil.copytree(src, path)
        else:
            shutil.copy2(src, path)
    return path


def remove(path: Path) -> Path:
    """Delete a file, symlink or folder of the set; return its path."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    return path


def load_pt(path: Path) -> object:
    return torch.load(path, map_location="cpu", weights_only=True)


def save_pt(obj: object, path: Path) -> None:
    remove(path)
    torch.save(obj, path)


def edit_config(root: Path, edit: Callable[[dict], None]) -> None:
    path = own(root / "config.yaml")
    cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    edit(cfg)
    remove(path)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")


def write_bytes(path: Path, data: bytes) -> None:
    remove(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def truncate(path: Path, keep: float | int) -> None:
    data = own(path).read_bytes()
    n = keep if isinstance(keep, int) else int(len(data) * keep)
    write_bytes(path, data[:n])


class RunsCode:
    """Pickles to a call that creates the marker file: loading it must never run it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# The IndexTTS 1.x gpt.pth layout (reference indextts/gpt/model.py): no emotion conditioning,
# no speed embedding, and a conditioning encoder on 100-band mels (conv2d2 subsampling: the
# embed.out projection reads output_size * (100 - 1) // 2 features).
V1_DROP = ("emo_conditioning_encoder.", "emo_perceiver_encoder.", "emo_layer.", "emovec_layer.")


def v1_gpt_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {k: v for k, v in state.items() if not k.startswith(V1_DROP) and k != "speed_emb.weight"}
    w = out["conditioning_encoder.embed.out.0.weight"]
    out["conditioning_encoder.embed.out.0.weight"] = torch.randn(w.shape[0], w.shape[0] * 49)
    return out


def v1_config(v2: dict, version: float | None) -> dict:
    """An IndexTTS 1.x config.yaml: gpt without emotion, vqvae + bigvgan, no s2mel/codec."""
    gpt = {k: v for k, v in v2["gpt"].items() if k != "emo_condition_module"}
    cfg = {
        "dataset": v2["dataset"],
        "gpt": gpt,
        "vqvae": {"channels": 100, "num_tokens": 8192, "hidden_dim": 512, "codebook_dim": 512},
        "bigvgan": {"upsample_rates": [4, 4, 4, 4, 2, 2], "gpt_dim": gpt["model_dim"]},
        "dvae_checkpoint": "dvae.pth",
        "gpt_checkpoint": "gpt.pth",
        "bigvgan_checkpoint": "bigvgan_generator.pth",
    }
    if version is not None:
        cfg["version"] = version
    return cfg


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One broken (or legitimately unusual) set and what every surface must say about it."""

    id: str
    what: str
    build: Callable[[Path], None]  # breaks the linked set at the given root in place
    stage: str  # "check", "load" or "accept" (see the module docstring)
    message: tuple[str, ...] = ()  # fragments every failing surface's text must contain
    component: str | None = None  # validate --only / Engine.part; None: the whole set
    base: str = "demo"  # "demo" or a fixture set name
    note: str | None = None  # accept: a fragment `tts validate` must print
    verify: str | None = None  # accept: "equal" | "half" | "bf16" | "fused"
    unreadable: str | None = None  # path (relative) made unreadable; simulated for root
    engine_part: str | None = "="  # load: the Engine part that must refuse ("=": component)

    @property
    def part(self) -> str | None:
        return self.component if self.engine_part == "=" else self.engine_part


def _gpt(root: Path) -> Path:
    return root / "gpt.pth"


def _s2mel_parts(root: Path) -> dict:
    return load_pt(root / "s2mel.pth")["net"]


def _mutate_gpt(root: Path, fn: Callable[[dict], object]) -> None:
    sd = load_pt(_gpt(root))
    save_pt(fn(sd) or sd, _gpt(root))


def _build_truncated_zip(root: Path) -> None:
    truncate(_gpt(root), 0.6)


def _build_truncated_st(root: Path) -> None:
    truncate(root / "semantic_codec" / "model.safetensors", 0.7)


def _build_truncated_st_header(root: Path) -> None:
    truncate(root / "semantic_codec" / "model.safetensors", 40)


def _build_html(root: Path) -> None:
    write_bytes(
        _gpt(root),
        b"<!DOCTYPE html>\n<html><head><title>Hugging Face - 401</title></head>\n"
        b"<body>Access to this model is restricted. Please log in.</body></html>\n",
    )


def _build_lfs(root: Path) -> None:
    write_bytes(
        root / "campplus_cn_common.bin",
        b"version https://git-lfs.github.com/spec/v1\n"
        b"oid sha256:0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9\n"
        b"size 28036335\n",
    )


def _build_dir(root: Path) -> None:
    remove(_gpt(root))
    (_gpt(root) / "data").mkdir(parents=True)


def _build_unreadable(root: Path) -> None:
    own(root / "s2mel.pth").chmod(0)


def _build_code_zip(root: Path) -> None:
    save_pt({"weights": RunsCode(root.parent / MARKER)}, _gpt(root))


def _build_code_legacy(root: Path) -> None:
    write_bytes(_gpt(root), pickle.dumps({"w": RunsCode(root.parent / MARKER)}, protocol=2))


def _build_zip_not_torch(root: Path) -> None:
    remove(_gpt(root))
    with zipfile.ZipFile(_gpt(root), "w") as zf:
        zf.writestr("README.txt", "IndexTTS2 weights, see gpt/")
        zf.writestr("gpt/weights.npy", b"\x93NUMPY" + bytes(64))


def _build_st_as_bin(root: Path) -> None:
    path = root / "campplus_cn_common.bin"
    sd = load_pt(path)
    remove(path)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))


def _build_torch_as_st(root: Path) -> None:
    path = root / "semantic_codec" / "model.safetensors"
    sd = load_file(str(path))
    remove(path)
    torch.save(sd, path)


def _build_json_html(root: Path) -> None:
    write_bytes(root / "bigvgan" / "config.json", b"<html><body>502 Bad Gateway</body></html>\n")


def _build_s2mel_no_net(root: Path) -> None:
    save_pt(dict(_s2mel_parts(root)), root / "s2mel.pth")


def _drop_s2mel_part(part: str) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        net = _s2mel_parts(root)
        del net[part]
        save_pt({"net": net}, root / "s2mel.pth")

    return build


def _build_bigvgan_flat(root: Path) -> None:
    path = root / "bigvgan" / "bigvgan_generator.pt"
    save_pt(load_pt(path)["generator"], path)


def _build_gpt_wrapped(root: Path) -> None:
    _mutate_gpt(root, lambda sd: {"model": sd, "epoch": 7, "step": 120000})


def _build_gpt_module_prefix(root: Path) -> None:
    _mutate_gpt(root, lambda sd: {f"module.{k}": v for k, v in sd.items()})


def _build_s2mel_prefix(root: Path) -> None:
    net = {
        part: {f"module.{k}": v for k, v in sub.items()} for part, sub in _s2mel_parts(root).items()
    }
    save_pt({"net": net}, root / "s2mel.pth")


def _build_s2mel_training(root: Path) -> None:
    net = _s2mel_parts(root)
    net["style_encoder"] = {"proj.weight": torch.zeros(4, 4)}
    save_pt(
        {"net": net, "optimizer": {"lr": 1e-4, "betas": (0.9, 0.98)}, "epoch": 12, "iters": 9000},
        root / "s2mel.pth",
    )


def _build_bigvgan_fused(root: Path) -> None:
    path = root / "bigvgan" / "bigvgan_generator.pt"
    sd = load_pt(path)["generator"]
    fused = {}
    for k, v in sd.items():
        if k.endswith(".weight_v"):
            continue
        if k.endswith(".weight_g"):
            base = k[: -len("_g")]
            w = sd[base + "_v"]
            norm = w.flatten(1).norm(dim=1).reshape(-1, *([1] * (w.dim() - 1)))
            fused[base] = v * w / norm
        else:
            fused[k] = v
    save_pt({"generator": fused}, path)


def _build_v1_set(version: float | None) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        v2 = yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8"))
        gpt = v1_gpt_state(load_pt(_gpt(root)))
        for p in sorted(root.iterdir()):
            if p.name != "bpe.model":
                remove(p)
        (root / "config.yaml").write_text(yaml.safe_dump(v1_config(v2, version)), "utf-8")
        torch.save(gpt, _gpt(root))
        torch.save(
            {"generator": {"conv_pre.weight": torch.zeros(8, 100, 7)}},
            root / "bigvgan_generator.pth",
        )
        torch.save({"codebook.weight": torch.zeros(16, 8)}, root / "dvae.pth")

    return build


def _build_v1_gpt(root: Path) -> None:
    _mutate_gpt(root, v1_gpt_state)


def _build_int(root: Path) -> None:
    def edit(sd):
        sd["final_norm.weight"] = torch.ones_like(sd["final_norm.weight"], dtype=torch.int64)

    _mutate_gpt(root, edit)


def _build_half(root: Path) -> None:
    _mutate_gpt(
        root, lambda sd: {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    )


def _build_bf16(root: Path) -> None:
    net = {
        part: {k: v.bfloat16() if v.is_floating_point() else v for k, v in sub.items()}
        for part, sub in _s2mel_parts(root).items()
    }
    save_pt({"net": net}, root / "s2mel.pth")


def _build_nan(root: Path) -> None:
    def edit(sd):
        sd["mel_head.weight"][3, 5] = float("nan")
        sd["text_embedding.weight"][0, 0] = float("inf")

    _mutate_gpt(root, edit)


def _build_nan_st(root: Path) -> None:
    path = root / "semantic_codec" / "model.safetensors"
    sd = load_file(str(path))
    sd["encoder.1.weight"][0, 0] = float("nan")
    remove(path)
    save_file(sd, str(path))


def _build_stats_nan(root: Path) -> None:
    path = root / "wav2vec2bert_stats.pt"
    stats = load_pt(path)
    stats["var"][7] = float("nan")
    save_pt(stats, path)


def _build_no_config(root: Path) -> None:
    remove(root / "config.yaml")


def _build_config_bad_yaml(root: Path) -> None:
    write_bytes(root / "config.yaml", b"gpt:\n  model_dim: [64, 32\n  layers: 2\n")


def _build_config_html(root: Path) -> None:
    write_bytes(root / "config.yaml", b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n")


def _drop_section(section: str) -> Callable[[Path], None]:
    def build(root: Path) -> None:
        edit_config(root, lambda cfg: cfg.pop(section))

    return build


def _build_config_vocab(root: Path) -> None:
    edit_config(root, lambda cfg: cfg["gpt"].update(number_text_tokens=600))


def _build_config_dim(root: Path) -> None:
    edit_config(root, lambda cfg: cfg["gpt"].update(model_dim=96))


def _build_config_key(root: Path) -> None:
    edit_config(root, lambda cfg: cfg["gpt"].pop("model_dim"))


CASES: list[Case] = [
    # -- files that are not (whole) checkpoints ---------------------------------------------
    Case(
        "truncated-zip",
        "gpt.pth (torch zip) cut to 60%: an interrupted download",
        _build_truncated_zip,
        "check",
        ("gpt.pth", "truncated or corrupt zip archive"),
        "gpt",
    ),
    Case(
        "truncated-safetensors",
        "the semantic codec's safetensors cut to 70%",
        _build_truncated_st,
        "check",
        ("model.safetensors", "not a readable safetensors file: truncated"),
        "semantic_codec",
    ),
    Case(
        "truncated-safetensors-header",
        "a safetensors file cut inside its header",
        _build_truncated_st_header,
        "check",
        ("model.safetensors", "its header alone needs"),
        "semantic_codec",
    ),
    Case(
        "empty-file",
        "s2mel.pth of 0 bytes",
        lambda r: write_bytes(r / "s2mel.pth", b""),
        "check",
        ("s2mel.pth", "file is empty (0 bytes)"),
        "s2mel",
    ),
    Case(
        "html-file",
        "gpt.pth is an HTML error page (a failed download)",
        _build_html,
        "check",
        ("gpt.pth", "is a text file, not a checkpoint", "<!DOCTYPE html>"),
        "gpt",
    ),
    Case(
        "git-lfs-pointer",
        "campplus_cn_common.bin is a Git LFS pointer (cloned without LFS)",
        _build_lfs,
        "check",
        ("campplus_cn_common.bin", "Git LFS pointer", "git lfs pull"),
        "campplus",
    ),
    Case(
        "directory",
        "a directory named gpt.pth",
        _build_dir,
        "check",
        ("gpt.pth", "is a directory, expected a checkpoint file"),
        "gpt",
    ),
    Case(
        "unreadable",
        "s2mel.pth without read permission",
        _build_unreadable,
        "check",
        ("s2mel.pth", "cannot be read (permission denied)"),
        "s2mel",
        unreadable="s2mel.pth",
    ),
    Case(
        "pickle-runs-code-zip",
        "gpt.pth (torch zip) whose pickle would call os.system",
        _build_code_zip,
        "check",
        ("gpt.pth", "system", "nothing was executed"),
        "gpt",
    ),
    Case(
        "pickle-runs-code-legacy",
        "gpt.pth as a plain pickle that would call os.system",
        _build_code_legacy,
        "check",
        ("gpt.pth", "system", "nothing was executed"),
        "gpt",
    ),
    Case(
        "zip-not-torch",
        "gpt.pth is a valid zip archive without a torch checkpoint in it",
        _build_zip_not_torch,
        "check",
        ("gpt.pth", "a zip archive, but not a torch checkpoint", "README.txt"),
        "gpt",
    ),
    Case(
        "safetensors-named-bin",
        "campplus_cn_common.bin holds safetensors, not a torch file",
        _build_st_as_bin,
        "check",
        ("campplus_cn_common.bin", "is a safetensors file, but .bin must be a torch checkpoint"),
        "campplus",
    ),
    Case(
        "torch-named-safetensors",
        "semantic_codec/model.safetensors holds a torch zip",
        _build_torch_as_st,
        "check",
        ("model.safetensors", "a zip archive (torch checkpoint?), but a .safetensors file"),
        "semantic_codec",
    ),
    Case(
        "config-json-html",
        "bigvgan/config.json is an HTML error page",
        _build_json_html,
        "check",
        ("config.json", "not valid JSON"),
        "bigvgan",
    ),
    Case(
        "bpe-html",
        "bpe.model is an HTML error page",
        lambda root: write_bytes(root / "bpe.model", b"<html><body>Not Found</body></html>\n"),
        "check",
        ("bpe.model", "is a text file"),
        "bpe",
    ),
    Case(
        "w2v-stats-truncated",
        "wav2vec2bert_stats.pt cut in half",
        lambda root: truncate(root / "wav2vec2bert_stats.pt", 0.5),
        "check",
        ("wav2vec2bert_stats.pt", "truncated or corrupt zip archive"),
        "w2v_bert",
    ),
    Case(
        "w2v-stats-nan",
        "NaN in wav2vec2bert_stats.pt's var (the Engine's finiteness check catches it at run "
        "time: speaker conditioning output)",
        _build_stats_nan,
        "load",
        ("wav2vec2bert_stats.pt", "non-finite values (NaN/inf) in 'var'"),
        "w2v_bert",
        engine_part=None,
    ),
    # -- nesting ------------------------------------------------------------------------------
    Case(
        "s2mel-without-net",
        "s2mel.pth holds cfm/length_regulator/gpt_layer at the top",
        _build_s2mel_no_net,
        "load",
        ("s2mel.pth", "expected a top-level key 'net'", "cfm"),
        "s2mel",
    ),
    *[
        Case(
            f"s2mel-without-{part}",
            f"s2mel.pth's 'net' lacks {part}",
            _drop_s2mel_part(part),
            "load",
            ("s2mel.pth", f"'net' lacks the sub-model(s) ['{part}']"),
            "s2mel",
        )
        for part in ("cfm", "length_regulator", "gpt_layer")
    ],
    Case(
        "bigvgan-without-generator",
        "bigvgan_generator.pt is a bare state dict",
        _build_bigvgan_flat,
        "load",
        ("bigvgan_generator.pt", "expected {'generator': state_dict}", "bare state dict"),
        "bigvgan",
    ),
    Case(
        "gpt-module-prefix",
        "every gpt.pth name carries 'module.' (the reference does not strip it for the GPT)",
        _build_gpt_module_prefix,
        "load",
        ("gpt.pth", "extra prefix 'module.'", "missing tensor"),
        "gpt",
    ),
    Case(
        "gpt-wrapped-in-model",
        "gpt.pth as {'model': state, 'epoch', 'step'}",
        _build_gpt_wrapped,
        "accept",
        component="gpt",
        verify="equal",
    ),
    Case(
        "gpt-wrapped-in-model-fixture",
        "gpt-small's gpt.pth wrapped in {'model': ...}",
        _build_gpt_wrapped,
        "accept",
        component="gpt",
        verify="equal",
        base="gpt-small",
    ),
    Case(
        "s2mel-module-prefix",
        "s2mel sub-model keys with DDP's 'module.' prefix",
        _build_s2mel_prefix,
        "accept",
        component="s2mel",
        verify="equal",
    ),
    Case(
        "s2mel-module-prefix-fixture",
        "s2mel-small's keys with 'module.'",
        _build_s2mel_prefix,
        "accept",
        component="s2mel",
        verify="equal",
        base="s2mel-small",
    ),
    Case(
        "s2mel-training-checkpoint",
        "s2mel.pth with optimizer/epoch/iters and an extra sub-model in 'net'",
        _build_s2mel_training,
        "accept",
        component="s2mel",
        verify="equal",
    ),
    Case(
        "bigvgan-fused",
        "bigvgan_generator.pt after remove_weight_norm (fused weights)",
        _build_bigvgan_fused,
        "accept",
        component="bigvgan",
        verify="fused",
    ),
    Case(
        "bigvgan-fused-fixture",
        "s2mel-small's vocoder with fused weights",
        _build_bigvgan_fused,
        "accept",
        component="bigvgan",
        verify="fused",
        base="s2mel-small",
    ),
    # -- model generation ---------------------------------------------------------------------
    Case(
        "indextts-1.5-set",
        "an IndexTTS 1.5 folder (config version 1.5, v1 gpt.pth, bigvgan_generator.pth, dvae.pth)",
        _build_v1_set(1.5),
        "check",
        (
            "this looks like an IndexTTS 1.x checkpoint",
            "config.yaml says version 1.5",
            "no emo_conditioning_encoder/emovec_layer/speed_emb",
            "IndexTTS2 needs",
        ),
    ),
    Case(
        "indextts-1.0-set",
        "an IndexTTS 1.0 folder (no version in config.yaml)",
        _build_v1_set(None),
        "check",
        (
            "this looks like an IndexTTS 1.x checkpoint",
            "no version and no s2mel section",
            "IndexTTS2 needs",
        ),
    ),
    Case(
        "indextts-1.x-gpt",
        "an IndexTTS2 set whose gpt.pth comes from IndexTTS 1.x",
        _build_v1_gpt,
        "check",
        (
            "gpt.pth: this looks like an IndexTTS 1.x checkpoint",
            "no emo_conditioning_encoder/emovec_layer/speed_emb",
        ),
        "gpt",
    ),
    # -- dtypes and values ----------------------------------------------------------------------
    Case(
        "integer-tensor",
        "final_norm.weight stored as int64",
        _build_int,
        "load",
        ("gpt.pth", "dtype mismatch for final_norm.weight: file has int64, model expects float32"),
        "gpt",
    ),
    Case(
        "float16-file",
        "gpt.pth saved in float16",
        _build_half,
        "accept",
        component="gpt",
        note="stored as float16, cast to float32",
        verify="half",
    ),
    Case(
        "bfloat16-file",
        "s2mel.pth saved in bfloat16",
        _build_bf16,
        "accept",
        component="s2mel",
        note="stored as bfloat16, cast to float32",
        verify="bf16",
    ),
    Case(
        "nan-inf",
        "NaN in mel_head.weight and inf in text_embedding.weight",
        _build_nan,
        "load",
        ("gpt.pth", "non-finite values (NaN/inf)", "text_embedding.weight", "mel_head.weight"),
        "gpt",
    ),
    Case(
        "nan-safetensors",
        "NaN in the semantic codec's encoder.1.weight",
        _build_nan_st,
        "load",
        ("model.safetensors", "non-finite values", "encoder.1.weight"),
        "semantic_codec",
    ),
    # -- config.yaml ----------------------------------------------------------------------------
    Case("config-missing", "no config.yaml", _build_no_config, "check", ("config.yaml", "missing")),
    Case(
        "config-unreadable",
        "config.yaml without read permission",
        lambda root: own(root / "config.yaml").chmod(0),
        "check",
        ("config.yaml", "cannot be read (permission denied)"),
        unreadable="config.yaml",
    ),
    Case(
        "config-not-yaml",
        "config.yaml with a YAML syntax error",
        _build_config_bad_yaml,
        "check",
        ("config.yaml", "not valid YAML (line"),
    ),
    Case(
        "config-html",
        "config.yaml is an HTML error page",
        _build_config_html,
        "check",
        ("config.yaml", "not a YAML mapping", "<!DOCTYPE html>"),
    ),
    *[
        Case(
            f"config-without-{s}",
            f"config.yaml without its {s} section",
            _drop_section(s),
            "check",
            ("config.yaml", f"section '{s}' is missing"),
        )
        for s in ("gpt", "s2mel", "semantic_codec")
    ],
    Case(
        "config-vocab-mismatch",
        "config.yaml number_text_tokens 600, files made with 512",
        _build_config_vocab,
        "load",
        (
            "gpt.pth",
            "shape mismatch for text_embedding.weight: file has [513, 64], model expects [601, 64]",
        ),
        "gpt",
    ),
    Case(
        "config-width-mismatch",
        "config.yaml gpt.model_dim 96, files made with 64",
        _build_config_dim,
        "load",
        (
            "gpt.pth",
            "shape mismatch for",
            "file has [64], model expects [96]",
            "do config.yaml's sizes belong to this file",
            "more",
        ),
        "gpt",
    ),
    Case(
        "config-missing-key",
        "config.yaml's gpt section without model_dim",
        _build_config_key,
        "load",
        ("config.yaml", "key 'model_dim' missing"),
        "gpt",
    ),
]


def build_case(case: Case, base: Path, dest: Path, copy: bool = False) -> Path:
    """Write ``case`` into ``dest`` (created) from the good set ``base``; return ``dest``."""
    link_set(base, dest, copy=copy)
    case.build(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", help="write every case to OUT/<id>/ (real copies)")
    p.add_argument("--demo", help="an existing `tts demo-checkpoints` set (default: write one)")
    p.add_argument("--only", help="comma-separated case ids")
    p.add_argument("--list", action="store_true", help="print id, stage and expected text")
    args = p.parse_args(argv)
    cases = [c for c in CASES if not args.only or c.id in args.only.split(",")]
    if args.list or not args.out:
        for c in cases:
            expected = " | ".join(c.message) or (c.note or "loads, same model")
            print(f"{c.id:30s} {c.stage:7s} {c.what}\n{'':38s}-> {expected}")
        return 0
    out = Path(args.out)
    demo = Path(args.demo) if args.demo else out / "_demo"
    if not args.demo:
        from tts.demo import write_demo_checkpoints

        write_demo_checkpoints(demo, seed=0)
    for c in cases:
        base = demo if c.base == "demo" else FIXTURES / c.base
        build_case(c, base, out / c.id, copy=True)
        print(f"{out / c.id}: {c.what}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
