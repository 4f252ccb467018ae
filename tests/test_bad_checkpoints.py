"""Broken checkpoint sets give a clear error naming the file and tensor, never a traceback,
never executed code, never a silently wrong model (issue 9; cases in tests/bad_checkpoints/).

For every case of ``tests/bad_checkpoints/make_cases.py``: `tts check`, `tts validate`,
``Engine.open`` and the component's load each either fail with the case's message fragments
(one line, or a short listing) or, for the legitimate variants, load the same model.
"""

from __future__ import annotations

import builtins
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES

from tts import cli
from tts.checkpoints import (
    CheckpointError,
    CheckpointSet,
    indextts1_evidence,
)
from tts.components import load_component
from tts.loading import read_tensor_file
from tts.pipeline import Engine

_spec = importlib.util.spec_from_file_location(
    "make_cases", Path(__file__).parent / "bad_checkpoints" / "make_cases.py"
)
make_cases = sys.modules["make_cases"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_cases)

MAX_LINES = 50  # "a short listing": MAX_LISTED problems, a head line, hints


@pytest.fixture(scope="session")
def demo_set(tmp_path_factory) -> Path:
    """One `tts demo-checkpoints` set per session (~15 s); cases link to it, never change it."""
    from tts.demo import write_demo_checkpoints

    torch.set_num_threads(min(2, torch.get_num_threads()))
    return write_demo_checkpoints(tmp_path_factory.mktemp("demo") / "set", seed=0)


@pytest.fixture
def case_root(request, demo_set, tmp_path, monkeypatch):
    """Build the parametrised case in tmp_path; simulate an unreadable file for root."""
    case = request.param
    base = demo_set if case.base == "demo" else FIXTURES / case.base
    root = make_cases.build_case(case, base, tmp_path / "set")
    if case.unreadable and os.geteuid() == 0:  # root reads anything: simulate the refusal
        blocked = str(root / case.unreadable)
        real_open = builtins.open

        def guarded(file, *args, **kwargs):
            if str(file) == blocked:
                raise PermissionError(13, "Permission denied", blocked)
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", guarded)
    yield case, root
    assert not (tmp_path / make_cases.MARKER).exists(), "a checkpoint pickle executed code"


def _assert_message(text: str, case, where: str) -> None:
    assert "Traceback" not in text, f"{where}: traceback\n{text}"
    for fragment in case.message:
        assert fragment in text, f"{where}: {fragment!r} not in\n{text}"


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _run_cli(capsys, *argv: str) -> tuple[int, str]:
    rc = cli.main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def _ids(cases):
    return [c.id for c in cases]


DEMO_CASES = [c for c in make_cases.CASES if c.base == "demo"]
FIXTURE_CASES = [c for c in make_cases.CASES if c.base != "demo"]


@pytest.mark.parametrize("case_root", DEMO_CASES, ids=_ids(DEMO_CASES), indirect=True)
def test_case(case_root, capsys, demo_set):
    case, root = case_root
    only = ["--only", case.component] if case.component else []

    # tts check: cheap checks only
    rc, out = _run_cli(capsys, "check", str(root), "--no-hash")
    if case.stage == "check":
        assert rc == 1, out
        _assert_message(out, case, "tts check")
    else:
        assert rc == 0, out

    # tts validate: strict loads
    rc, out = _run_cli(capsys, "validate", str(root), *only)
    if case.stage == "accept":
        assert rc == 0, out
        if case.note:
            assert case.note in out, out
    else:
        assert rc in (1, 2), out
        _assert_message(out, case, "tts validate")
        assert len(_error_lines(out)) <= MAX_LINES, out

    # Engine.open: fails up front on what the cheap checks find
    if case.stage == "check":
        with pytest.raises((CheckpointError, ValueError)) as err:
            Engine.open(root, device="cpu")
        _assert_message(str(err.value), case, "Engine.open")
        assert len(_error_lines(str(err.value))) <= MAX_LINES, str(err.value)
        return
    engine = Engine.open(root, device="cpu")

    # the component's load through the engine
    if case.stage == "load":
        if case.part is None:
            return
        with pytest.raises((CheckpointError, ValueError)) as err:
            engine.part(case.part)
        _assert_message(str(err.value), case, f"Engine.part({case.part})")
        assert len(_error_lines(str(err.value))) <= MAX_LINES, str(err.value)
    else:
        _verify_same_model(case, root, demo_set)


@pytest.mark.parametrize("case_root", FIXTURE_CASES, ids=_ids(FIXTURE_CASES), indirect=True)
def test_fixture_case(case_root, capsys):
    """Variants of the parity fixture sets (partial sets: validate and load one component)."""
    case, root = case_root
    rc, out = _run_cli(capsys, "validate", str(root), "--only", case.component)
    assert rc == 0, out
    _verify_same_model(case, root, FIXTURES / case.base)


def _verify_same_model(case, root: Path, base_root: Path) -> None:
    """The variant loads to the model the unmodified base set gives (exactly, or as cast)."""
    got, report = load_component(case.component, CheckpointSet.open(root))
    want, _ = load_component(case.component, CheckpointSet.open(base_root))
    got_sd, want_sd = got.state_dict(), want.state_dict()
    assert got_sd.keys() == want_sd.keys()
    for name, w in want_sd.items():
        g = got_sd[name]
        assert g.dtype == w.dtype, name
        if case.verify == "half" and w.is_floating_point():
            w = w.half().to(w.dtype)
        elif case.verify == "bf16" and w.is_floating_point():
            w = w.bfloat16().to(w.dtype)
        if case.verify == "fused" and name.endswith("weight_g"):
            continue  # compared through the effective weight below
        if case.verify == "fused" and name.endswith("weight_v"):
            stem = name[: -len("_v")]
            g, w = _effective(got_sd, stem), _effective(want_sd, stem)
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6, msg=name)
            continue
        assert torch.equal(g, w), name
    if case.verify in ("half", "bf16"):
        assert report.cast, "a cast was not reported"


def _effective(sd: dict, stem: str) -> torch.Tensor:
    g, v = sd[stem + "_g"], sd[stem + "_v"]
    return g * v / v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.dim() - 1)))


# ------------------------------------------------------------------------------------------------
# The IndexTTS 1.x heuristic on its own
# ------------------------------------------------------------------------------------------------


V2_GPT = {
    "conditioning_encoder.embed.out.0.weight": (512, 512 * 511),
    "emo_conditioning_encoder.embed.out.0.weight": (512, 512 * 511),
    "emovec_layer.weight": (1280, 1024),
    "speed_emb.weight": (2, 1280),
    "gpt.h.0.attn.c_attn.weight": (1280, 3840),
}
V1_GPT = {
    "conditioning_encoder.embed.out.0.weight": (512, 512 * 49),
    "perceiver_encoder.latents": (32, 1280),
    "gpt.h.0.attn.c_attn.weight": (1280, 3840),
}


@pytest.mark.parametrize(
    "config,gpt,expected",
    [
        ({"version": 2.0, "s2mel": {}}, V2_GPT, []),
        ({"version": "2.0"}, None, []),
        ({"s2mel": {}, "gpt": {}}, V2_GPT, []),  # a 2.0 config without version: fine
        ({"version": 1.5, "vqvae": {}}, None, ["config.yaml says version 1.5"]),
        ({"gpt": {}, "vqvae": {}, "bigvgan": {}}, None, ["no version and no s2mel section"]),
        (None, V1_GPT, ["no emo_conditioning_encoder", "~99-wide input (mel bands)"]),
        (None, dict.fromkeys(V1_GPT), ["no emo_conditioning_encoder"]),  # names only
        (None, dict.fromkeys(V2_GPT), []),
        (None, {"text_embedding.weight": (1, 1)}, []),  # not a GPT at all: not called 1.x
        ({"version": "two"}, None, []),
    ],
)
def test_indextts1_evidence(config, gpt, expected):
    evidence = indextts1_evidence(config, gpt)
    assert len(evidence) == len(expected), evidence
    for fragment, reason in zip(expected, evidence, strict=True):
        assert fragment in reason


def test_real_permission_denied(tmp_path):
    """With a real chmod (meaningful only when not running as root)."""
    if os.geteuid() == 0:
        pytest.skip("root reads files without read permission; simulated in test_case")
    path = tmp_path / "gpt.pth"
    torch.save({"w": torch.zeros(2)}, path)
    path.chmod(0)
    with pytest.raises(CheckpointError, match="permission denied"):
        read_tensor_file(path)


def test_cli_cases_are_listed(capsys):
    assert make_cases.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(c.id in out for c in make_cases.CASES)


def test_v1_gpt_named_at_load(demo_set, tmp_path):
    """Past the cheap checks (e.g. a legacy pickle), the GPT reader names IndexTTS 1.x too."""
    case = next(c for c in make_cases.CASES if c.id == "indextts-1.x-gpt")
    root = make_cases.build_case(case, demo_set, tmp_path / "set")
    with pytest.raises(CheckpointError) as err:
        load_component("gpt", CheckpointSet.open(root))
    text = str(err.value)
    assert "\n" not in text and "gpt.pth: this looks like an IndexTTS 1.x checkpoint" in text
    assert "~99-wide input (mel bands), not 1024-wide w2v-bert features" in text
