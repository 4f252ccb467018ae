"""Acceptance tests of strict validation on the fixture sets (issue 2).

* every fixture set validates with --only naming the components it holds;
* renaming, dropping or reshaping any single tensor of any checkpoint file makes validation fail
  with a message naming that tensor (every tensor in memory; a sample through the real CLI on
  modified file copies);
* `tts check` on an empty directory lists every missing file with its source.
"""

import fnmatch
import random
import shutil
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES

from tts import cli
from tts.checkpoints import FILES, CheckpointSet, missing_files
from tts.components import MODULE_COMPONENTS, build_empty
from tts.loading import CheckpointError, compare_state, expected_tensors
from tts.validate import COMPONENT_NAMES

SETS = (
    sorted(p for p in FIXTURES.iterdir() if (p / "config.yaml").is_file())
    if FIXTURES.is_dir()
    else []
)


def held_components(root: Path) -> list[str]:
    """The components whose files the set holds."""
    cs = CheckpointSet.open(root)
    held = []
    for name in COMPONENT_NAMES:
        if name in MODULE_COMPONENTS:
            if MODULE_COMPONENTS[name].file(cs).is_file():
                held.append(name)
        elif name == "emotion_matrices":
            if cs.path("spk_matrix").is_file() and cs.path("emo_matrix").is_file():
                held.append(name)
        elif cs.path({"bpe": "bpe", "qwen_emotion": "qwen_emotion"}[name]).exists():
            held.append(name)
    return held


@pytest.mark.parametrize("root", SETS, ids=[p.name for p in SETS])
def test_fixture_set_validates(root, capsys, tmp_path):
    names = held_components(root)
    assert names, f"{root.name} holds no known component"
    report = tmp_path / "weights.json"
    rc = cli.main(["validate", str(root), "--only", ",".join(names), "--report", str(report)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert report.is_file() and report.with_suffix(".tsv").is_file()


def _module_files():
    for root in SETS:
        cs = CheckpointSet.open(root)
        for name, comp in MODULE_COMPONENTS.items():
            if comp.file(cs).is_file():
                yield pytest.param(root, name, id=f"{root.name}/{name}")


@pytest.mark.parametrize("root,name", list(_module_files()))
def test_every_single_tensor_fault_is_named(root, name):
    """Drop, rename and reshape each tensor in turn: the error names exactly that tensor."""
    cs = CheckpointSet.open(root)
    comp = MODULE_COMPONENTS[name]
    spec = expected_tensors(build_empty(name, cs))
    state = comp.read(comp.file(cs))
    compare_state(spec, state, "intact", comp.computed_ok)  # the intact file passes
    for key in state:
        if key not in spec:
            continue
        dropped = {k: v for k, v in state.items() if k != key}
        if not any(fnmatch.fnmatchcase(key, p) for p in comp.computed_ok):
            with pytest.raises(CheckpointError, match=f"missing tensor {key} "):
                compare_state(spec, dropped, "f", comp.computed_ok)
        renamed = dict(dropped)
        renamed[key + "_renamed"] = state[key]
        with pytest.raises(CheckpointError, match=f"unexpected tensor {key}_renamed"):
            compare_state(spec, renamed, "f", comp.computed_ok)
        reshaped = dict(state)
        reshaped[key] = torch.zeros(*state[key].shape, 2, dtype=state[key].dtype)
        with pytest.raises(CheckpointError, match=f"shape mismatch for {key}:"):
            compare_state(spec, reshaped, "f", comp.computed_ok)


def _copy_set(root: Path, dest: Path) -> Path:
    shutil.copytree(root, dest)
    for p in dest.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dest


def _rewrite(path: Path, name: str, mutate) -> None:
    """Apply ``mutate(flat_dict)`` to the file's tensors, keeping the official nesting."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file, save_file

        sd = load_file(str(path))
        mutate(sd)
        save_file(sd, str(path))
        return
    obj = torch.load(path, weights_only=True)
    if name == "s2mel":
        sub = obj["net"]["cfm"]
    elif name == "bigvgan":
        sub = obj["generator"]
    else:
        sub = obj
    mutate(sub)
    torch.save(obj, path)


@pytest.mark.parametrize("op", ["drop", "rename", "reshape"])
@pytest.mark.parametrize("root,name", list(_module_files()))
def test_cli_names_the_damaged_tensor(tmp_path, capsys, root, name, op):
    """Through the real files and the real command: a sample tensor per file and fault."""
    copy = _copy_set(root, tmp_path / root.name)
    cs = CheckpointSet.open(copy)
    comp = MODULE_COMPONENTS[name]
    path = comp.file(cs)
    keys = []
    _rewrite(path, name, lambda sd: keys.extend(sd.keys()))
    prefix = "cfm." if name == "s2mel" else ""  # _rewrite edits the cfm part of s2mel.pth
    learned = [
        k for k in keys if not any(fnmatch.fnmatchcase(prefix + k, p) for p in comp.computed_ok)
    ]
    key = random.Random(f"{root.name}/{name}/{op}").choice(learned)

    def mutate(sd):
        t = sd.pop(key)
        if op == "rename":
            sd[key + "_x"] = t
        elif op == "reshape":
            sd[key] = torch.zeros(*t.shape, 3, dtype=t.dtype)

    _rewrite(path, name, mutate)
    rc = cli.main(["validate", str(copy), "--only", name])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert key in out, out


def test_check_on_empty_directory_lists_every_file_with_source(tmp_path, capsys):
    rc = cli.main(["check", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 1
    missing = missing_files(tmp_path)
    required = [k for k, s in FILES.items() if not s.optional]
    assert {m[0].split("/")[0] for m in missing} == set(required)
    for key, _path, source in missing:
        assert key in out and source in out
        assert "Hugging Face repo" in source
