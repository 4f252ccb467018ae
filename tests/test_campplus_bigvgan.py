"""CAMPPlus and BigVGAN: manifests at the official configs, strict loads of the fixture files,
both official BigVGAN checkpoint forms (weight_g/weight_v and fused weight), weight-norm removal."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from tts.checkpoints import CheckpointSet
from tts.components import load_component, manifest_rows
from tts.loading import CheckpointError
from tts.models.bigvgan import BigVGAN, WNConv, kaiser_sinc_filter, to_weight_norm_form
from tts.models.campplus import CAMPPlus

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FIXTURES = SHARED / "fixtures"
MANIFESTS = SHARED / "spec" / "manifests"
SMALL = FIXTURES / "s2mel-small"
needs_small = pytest.mark.skipif(
    not (SMALL / "cases.json").is_file(), reason="s2mel-small fixtures absent"
)


def _manifest(name: str) -> list[tuple[str, str, str]]:
    lines = (MANIFESTS / name).read_text(encoding="utf-8").splitlines()[1:]
    return [tuple(line.split("\t")) for line in lines if line]


def _bare_set(root: Path, config: dict | None = None) -> CheckpointSet:
    return CheckpointSet(root=root, config=config or {})


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.mark.parametrize(
    "component, manifest",
    [("campplus", "campplus_cn_common.bin.tsv"), ("bigvgan", "bigvgan_generator.pt.tsv")],
)
def test_manifest_equality_at_official_config(tmp_path, component, manifest):
    # An empty directory: CAMPPlus takes its official defaults, BigVGAN the packaged config.json.
    rows = manifest_rows(component, _bare_set(tmp_path))
    assert [r[1:] for r in rows] == _manifest(manifest)


def test_campplus_from_config():
    assert CAMPPlus.from_config({}).xvector.dense.linear.weight.shape == (192, 1024, 1)
    small = CAMPPlus.from_config({"growth_rate": 8, "bn_size": 2, "init_channels": 32})
    assert small.xvector.tdnn.linear.weight.shape == (32, 320, 5)
    with pytest.raises(ValueError, match="unknown key"):
        CAMPPlus.from_config({"embed_dim": 192})


def test_bigvgan_config_errors():
    cfg = json.loads(
        (Path(__file__).parents[1] / "tts/data/bigvgan_v2_22khz_80band_256x.json").read_text()
    )
    with pytest.raises(ValueError, match="missing key"):
        BigVGAN.from_config({k: v for k, v in cfg.items() if k != "upsample_rates"})
    with pytest.raises(ValueError, match="activation"):
        BigVGAN.from_config({**cfg, "activation": "relu"})


def test_kaiser_filter_is_normalised_and_symmetric():
    f = kaiser_sinc_filter(0.25, 0.3, 12).flatten()
    assert f.shape == (12,)
    assert torch.allclose(f.sum(), torch.tensor(1.0))
    assert torch.allclose(f, f.flip(0))


@needs_small
@pytest.mark.parametrize("component", ["campplus", "bigvgan"])
def test_strict_load_of_fixture_files(component):
    model, report = load_component(component, CheckpointSet.open(SMALL))
    assert report.loaded > 0
    assert report.computed == []  # the fixture files carry every buffer
    assert all(t.device.type == "cpu" for t in model.state_dict().values())


@needs_small
def test_campplus_missing_tensor_fails(tmp_path):
    state = torch.load(SMALL / "campplus_cn_common.bin", weights_only=True)
    del state["xvector.dense.linear.weight"]
    torch.save(state, tmp_path / "campplus_cn_common.bin")
    cs = CheckpointSet.open(SMALL)
    cs = CheckpointSet(root=tmp_path, config=cs.config)
    with pytest.raises(CheckpointError, match="xvector.dense.linear.weight"):
        load_component("campplus", cs)


def _fused_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a checkpoint saved after remove_weight_norm holds: plain X.weight tensors."""
    out = {}
    for key, value in state.items():
        if key.endswith(".weight_g"):
            continue
        if key.endswith(".weight_v"):
            stem = key[: -len("_v")]
            g = state[stem + "_g"]
            norm = torch.linalg.vector_norm(value, dim=tuple(range(1, value.dim())), keepdim=True)
            out[stem] = value * (g / norm)
        else:
            out[key] = value
    return out


@needs_small
def test_bigvgan_fused_checkpoint_loads_and_matches(tmp_path):
    original = torch.load(SMALL / "bigvgan" / "bigvgan_generator.pt", weights_only=True)[
        "generator"
    ]
    (tmp_path / "bigvgan").mkdir()
    shutil.copy(SMALL / "bigvgan" / "config.json", tmp_path / "bigvgan" / "config.json")
    fused = _fused_state(original)
    assert not any(k.endswith("_g") for k in fused)
    torch.save({"generator": fused}, tmp_path / "bigvgan" / "bigvgan_generator.pt")

    model_wn, _ = load_component("bigvgan", CheckpointSet.open(SMALL))
    model_fused, _ = load_component("bigvgan", _bare_set(tmp_path))
    mel = torch.randn(1, 80, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model_wn(mel)
        got = model_fused(mel)
    assert torch.equal(got, ref)


def test_to_weight_norm_form_identity_and_exact_conversion():
    state = {"conv_pre.weight_g": torch.ones(4, 1, 1), "conv_pre.weight_v": torch.ones(4, 2, 3)}
    assert to_weight_norm_form(state) is state
    w = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(1))
    conv = WNConv(2, 4, 3, bias=False)
    converted = to_weight_norm_form({"conv_pre.weight": w, "conv_pre.alpha": torch.zeros(4)})
    assert set(converted) == {"conv_pre.weight_g", "conv_pre.weight_v", "conv_pre.alpha"}
    assert converted["conv_pre.weight_g"].shape == (4, 1, 1)
    conv.load_state_dict({k.split(".", 1)[1]: v for k, v in converted.items() if "weight" in k})
    assert torch.equal(conv.effective_weight(), w)


@needs_small
def test_bigvgan_remove_weight_norm():
    model, _ = load_component("bigvgan", CheckpointSet.open(SMALL))
    mel = torch.randn(1, 80, 10, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(mel)
        model.remove_weight_norm()
        model.remove_weight_norm()  # idempotent
        after = model(mel)
    keys = model.state_dict().keys()
    assert "conv_pre.weight" in keys and "conv_pre.weight_g" not in keys
    assert not any(k.endswith(("weight_g", "weight_v")) for k in keys)
    assert torch.allclose(after, before, atol=1e-6, rtol=0)
    assert after.shape == (1, 1, 10 * 256)
    assert after.abs().max() <= 1.0
