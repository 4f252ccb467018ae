"""Semantic side: MaskGCT codec and w2v-bert-2.0 (structure, strict loading, truncation, batching)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from tts.checkpoints import CheckpointSet
from tts.components import MODULE_COMPONENTS, load_component, manifest_rows
from tts.loading import CheckpointError
from tts.parity import SHARED_FIXTURES

SPEC = SHARED_FIXTURES.parent / "spec"
SMALL = SHARED_FIXTURES / "s2mel-small"

needs_spec = pytest.mark.skipif(not (SPEC / "manifests").is_dir(), reason="no spec manifests")
needs_small = pytest.mark.skipif(not (SMALL / "cases.json").is_file(), reason="no s2mel-small set")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _manifest(name: str) -> list[tuple[str, str, str]]:
    lines = (SPEC / "manifests" / name).read_text(encoding="utf-8").splitlines()
    return [tuple(line.split("\t")) for line in lines[1:] if line.strip()]


def _official_set(tmp_path: Path) -> CheckpointSet:
    """A set with the official config and no files: w2v-bert falls back to the packaged config."""
    config = yaml.safe_load((SPEC / "config.official.yaml").read_text(encoding="utf-8"))
    return CheckpointSet(root=tmp_path, config=config)


def _small_set() -> CheckpointSet:
    return CheckpointSet.open(SMALL)


@needs_spec
@pytest.mark.parametrize(
    "component, manifest",
    [
        ("semantic_codec", "semantic_codec_model.safetensors.tsv"),
        ("w2v_bert", "w2v-bert-2.0.model.safetensors.tsv"),
    ],
)
def test_manifest_equality_official(tmp_path, component, manifest):
    rows = [
        (key, shape, dtype)
        for _, key, shape, dtype in manifest_rows(component, _official_set(tmp_path))
    ]
    assert rows == _manifest(manifest)  # names, shapes, dtypes and order


@needs_small
@pytest.mark.parametrize("component", ["semantic_codec", "w2v_bert"])
def test_strict_load_small(component):
    cs = _small_set()
    model, report = load_component(component, cs)
    file_keys = load_file(str(MODULE_COMPONENTS[component].file(cs)))
    assert report.loaded == len(file_keys) == len(model.state_dict())
    assert not report.computed
    assert all(t.device.type == "cpu" for t in model.state_dict().values())
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, file_keys[key]), key


def _small_w2v_copy(tmp_path: Path, edit) -> CheckpointSet:
    shutil.copytree(SMALL / "w2v-bert-2.0", tmp_path / "w2v-bert-2.0")
    path = tmp_path / "w2v-bert-2.0" / "model.safetensors"
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))
    return CheckpointSet(root=tmp_path, config=_small_set().config)


NAME = "encoder.layers.3.self_attn.linear_k.weight"


@needs_small
def test_w2v_missing_tensor_named(tmp_path):
    cs = _small_w2v_copy(tmp_path, lambda s: s.pop(NAME))
    with pytest.raises(CheckpointError, match=rf"missing tensor {NAME.replace('.', '[.]')}"):
        load_component("w2v_bert", cs)


@needs_small
def test_w2v_renamed_tensor_named(tmp_path):
    renamed = NAME.replace("linear_k", "linear_key")
    cs = _small_w2v_copy(tmp_path, lambda s: s.__setitem__(renamed, s.pop(NAME)))
    with pytest.raises(CheckpointError) as err:
        load_component("w2v_bert", cs)
    msg = str(err.value)
    assert f"missing tensor {NAME}" in msg
    assert f"unexpected tensor {renamed}" in msg and f"closest expected name: {NAME}" in msg


@needs_small
def test_w2v_bert_loaded_to_its_layer_reads_only_those_layers(tmp_path):
    """load_w2v_bert (what a conditioning job loads): the first 17 layers, equal to the whole
    model's; it is strict for what it holds, and never reads the dropped layers, so a tensor
    missing there fails only the whole-file load (validate_weights)."""
    from tts.components import load_w2v_bert
    from tts.models.w2v_bert import HIDDEN_STATE_INDEX as LAYERS

    full, _ = load_component("w2v_bert", _small_set())
    lean, report = load_w2v_bert(_small_set(), LAYERS)
    assert len(full.encoder.layers) > LAYERS == len(lean.encoder.layers)
    assert report.loaded == len(lean.state_dict())
    whole = full.state_dict()
    for key, tensor in lean.state_dict().items():
        assert torch.equal(tensor, whole[key]), key

    dropped = f"encoder.layers.{LAYERS}.self_attn.linear_k.weight"
    cs = _small_w2v_copy(tmp_path / "a", lambda s: s.pop(dropped))
    assert len(load_w2v_bert(cs, LAYERS)[0].encoder.layers) == LAYERS
    with pytest.raises(CheckpointError, match="missing tensor " + dropped.replace(".", "[.]")):
        load_component("w2v_bert", cs)
    cs = _small_w2v_copy(tmp_path / "b", lambda s: s.pop(NAME))  # layer 3: kept
    with pytest.raises(CheckpointError, match="missing tensor " + NAME.replace(".", "[.]")):
        load_w2v_bert(cs, LAYERS)
    cs = _small_w2v_copy(tmp_path / "c", lambda s: s.__setitem__("encoder.extra", s[NAME].clone()))
    with pytest.raises(CheckpointError, match="unexpected tensor encoder[.]extra"):
        load_w2v_bert(cs, LAYERS)


@needs_small
def test_truncated_layers_equal_full_hidden17():
    from tts.models.w2v_bert import (
        HIDDEN_STATE_INDEX,
        SemanticFeatures,
        load_feature_extractor,
        load_stats,
    )

    cs = _small_set()
    golden = load_file(str(SMALL / "golden.safetensors"))
    full, _ = load_component("w2v_bert", cs)
    n_full = len(full.encoder.layers)
    assert n_full > HIDDEN_STATE_INDEX  # otherwise the test proves nothing
    mean, std = load_stats(cs.path("w2v_stats"))
    sem = SemanticFeatures(
        load_component("w2v_bert", cs)[0], load_feature_extractor(cs.path("w2v_bert")), mean, std
    )
    assert len(sem.model.encoder.layers) == HIDDEN_STATE_INDEX
    for prefix in ("w2v.", "w2v.even."):
        feats, mask = golden[prefix + "input_features"], golden[prefix + "attention_mask"]
        with torch.no_grad():
            ref = full(input_features=feats, attention_mask=mask, output_hidden_states=True)
            last, hs = sem.hidden(feats, mask, output_hidden_states=True)
        assert len(ref.hidden_states) == n_full + 1
        assert torch.equal(last, ref.hidden_states[HIDDEN_STATE_INDEX])
        assert len(hs) == HIDDEN_STATE_INDEX + 1
        for a, b in zip(hs, ref.hidden_states[: HIDDEN_STATE_INDEX + 1], strict=True):
            assert torch.equal(a, b)


@needs_small
def test_semantic_features_from_waveform():
    from tts.models.w2v_bert import SemanticFeatures

    golden = load_file(str(SMALL / "golden.safetensors"))
    sem = SemanticFeatures.from_checkpoints(_small_set())
    for wave, feat in (
        ("resample.wave_16k", "w2v.feat_normalized"),
        ("w2v.even.wave_16k", "w2v.even.feat_normalized"),
    ):
        out = sem(golden[wave])
        assert out.shape == golden[feat].shape
        torch.testing.assert_close(out, golden[feat], atol=2e-4, rtol=1e-4)


@needs_small
def test_batched_features_equal_each_waveform_alone():
    """Waveforms of three lengths in one w2v-bert forward (``SemanticFeatures.batch``): each
    result has its own length and equals the waveform's features computed alone, up to the
    float32 rounding of batched matrix products, and the goldens as closely as the plain call.
    One waveform has an odd frame count, so its own mask already ends in a masked frame; the
    others are padded and masked to the longest."""
    from tts.models.w2v_bert import SemanticFeatures

    golden = load_file(str(SMALL / "golden.safetensors"))
    sem = SemanticFeatures.from_checkpoints(_small_set())
    odd, even = golden["resample.wave_16k"], golden["w2v.even.wave_16k"]
    assert int(golden["w2v.attention_mask"][0, -1]) == 0  # the odd case's own masked frame
    short = odd[..., : odd.shape[-1] * 2 // 3]
    waves = [even, odd, short]
    batched = sem.batch(waves)
    for wave, got in zip(waves, batched, strict=True):
        alone = sem(wave)
        assert got.shape == alone.shape
        torch.testing.assert_close(got, alone, atol=5e-5, rtol=1e-5)
    for got, feat in (
        (batched[1], "w2v.feat_normalized"),
        (batched[0], "w2v.even.feat_normalized"),
    ):
        torch.testing.assert_close(got, golden[feat], atol=2e-4, rtol=1e-4)


@needs_small
def test_codec_batching():
    codec, _ = load_component("semantic_codec", _small_set())
    golden = load_file(str(SMALL / "golden.safetensors"))
    x = golden["codec.quantize.features"]
    x2 = torch.cat([x, x.flip(1)])
    with torch.no_grad():
        codes, quantized = codec.quantize(x2)
        assert codes.shape == x2.shape[:2] and codes.dtype == torch.int64
        for b in range(2):
            c1, q1 = codec.quantize(x2[b : b + 1])
            assert torch.equal(codes[b : b + 1], c1)
            torch.testing.assert_close(quantized[b : b + 1], q1, atol=1e-6, rtol=0)
        # vq2emb: the B=1 reference call is unchanged, and B>1 is now the batch it looks like.
        vq = golden["codec.vq2emb.codes"]  # [1, 1, T]
        one = codec.quantizer.vq2emb(vq)
        assert one.shape == (1, codec.hidden_size, vq.shape[-1])
        two = codec.quantizer.vq2emb(torch.cat([vq, vq.flip(-1)]))  # [2, 1, T]
        assert torch.equal(two[:1], one)
        assert torch.equal(two[1:], codec.quantizer.vq2emb(vq.flip(-1)))
        # RepCodec.vq2emb: codes [B, T] -> [B, T, hidden], the layout quantize() returns.
        assert torch.equal(
            codec.vq2emb(codes), codec.quantizer.vq2emb(codes.unsqueeze(1)).transpose(1, 2)
        )
        torch.testing.assert_close(codec.vq2emb(codes), quantized, atol=1e-6, rtol=0)


# -- the w2v-bert input filterbanks, by torch instead of the extractor's numpy loop ---------------


def _extractor(tmp_path: Path):
    from tts.data import __file__ as data_init
    from tts.models.w2v_bert import load_feature_extractor

    src = Path(data_init).with_name("w2v-bert-2.0.preprocessor_config.json")
    shutil.copy(src, tmp_path / "preprocessor_config.json")
    return load_feature_extractor(tmp_path)


def _waves() -> dict[str, torch.Tensor]:
    """Odd and even frame counts, two frames only, a silent gap, clipping, a 10 s tone."""
    from tts.bench import prompt_wave

    g = torch.Generator().manual_seed(0)
    waves = {
        f"noise{n}": torch.randn(1, n, generator=g) * 0.1
        for n in (560, 16000, 16161, 48000, 160000)
    }
    gap = torch.randn(1, 32000, generator=g) * 0.3
    gap[:, 8000:20000] = 0.0
    waves["gap"] = gap
    waves["clipped"] = torch.randn(1, 16000, generator=g).clamp(-1.0, 1.0)
    waves["tone"] = torch.from_numpy(prompt_wave(10.0, 0, 16000)[0]).unsqueeze(0)
    waves["flat"] = torch.randn(16001, generator=g) * 0.05  # [N], not [1, N]
    return waves


def test_filterbanks_equal_the_transformers_extractor(tmp_path):
    """filterbanks() against the SeamlessM4TFeatureExtractor call it replaces: the same shapes,
    attention mask and padding rows, and the same features. Measured bitwise equal on every
    wave here; the bound leaves room for a last-bit difference of another CPU's FFT kernels
    (one float32 ulp of a log-energy, divided by a bin's deviation), ten times below the
    parity fixture's 2e-4. A normalisation summed in another order than numpy's misses it:
    it gave 6.7e-5, and float64 statistics 1.0e-5."""
    from tts.models.w2v_bert import filterbanks

    ext = _extractor(tmp_path)
    for name, wave in _waves().items():
        ref = ext(
            wave.unsqueeze(0) if wave.dim() == 1 else wave, sampling_rate=16000, return_tensors="pt"
        )
        feats, mask = filterbanks(ext, wave)
        want = ref["input_features"]
        assert feats.dtype == torch.float32 and mask.dtype == torch.int64, name
        assert feats.shape == want.shape, name
        assert torch.equal(mask, ref["attention_mask"].long()), name
        torch.testing.assert_close(feats, want, atol=2e-5, rtol=0, msg=name)
        if mask[0, -1] == 0:  # odd frame count: the padded half-row is padding_value exactly
            assert torch.equal(feats[0, -1, 80:], want[0, -1, 80:]), name
            assert bool((feats[0, -1, 80:] == float(ext.padding_value)).all()), name


def test_filterbanks_refuse_what_the_extractor_cannot_normalise(tmp_path):
    from tts.models.w2v_bert import filterbanks

    ext = _extractor(tmp_path)
    with pytest.raises(ValueError, match="at least two frames"):
        filterbanks(ext, torch.zeros(1, 559))
    with pytest.raises(ValueError, match=r"\[N\] or \[1, N\]"):
        filterbanks(ext, torch.zeros(2, 16000))


def test_w2v_bert_module_loads_transformers_without_scikit_learn_or_scipy():
    """Importing the w2v-bert module (every prompt-conditioning job does) does not import
    scikit-learn (transformers' generation utilities) or scipy (its object-detection losses),
    and both import normally afterwards (scoring's librosa needs them)."""
    import subprocess
    import sys

    code = (
        "import sys; import tts.models.w2v_bert\n"
        "print('sklearn' in sys.modules, 'scipy' in sys.modules)\n"
        "import sklearn.metrics; print(sklearn.metrics.roc_curve.__name__)\n"
        "import scipy.optimize; print(scipy.optimize.linear_sum_assignment.__name__)"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "False", "roc_curve", "linear_sum_assignment"], (
        out.stdout + out.stderr
    )


@pytest.mark.parametrize("frames", [5, 100])
def test_relative_key_bias_equals_transformers(frames):
    """The attention's relative-key bias through one GEMM against the distance table and a
    gather (:func:`tts.models.w2v_bert.relative_key_bias`) equals transformers' own (an
    embedding per position pair, then an einsum) to float32 rounding, with distances clamped on
    both sides at 100 frames (w2v-bert-2.0's window is 64 back, 8 ahead), and it is what
    transformers' attention calls once tts.models.w2v_bert is imported: a whole encoder layer
    gives what it gives with transformers' version put back."""
    from unittest import mock

    from transformers.models.wav2vec2_bert import modeling_wav2vec2_bert as hf

    from tts.models import w2v_bert

    assert hf._apply_relative_key_position_encoding is w2v_bert.relative_key_bias
    cfg = w2v_bert.hf_config(
        {
            "hidden_size": 128,
            "num_attention_heads": 2,
            "intermediate_size": 256,
            "position_embeddings_type": "relative_key",
            "left_max_position_embeddings": 64,
            "right_max_position_embeddings": 8,
        }
    )
    torch.manual_seed(0)
    layer = hf.Wav2Vec2BertEncoderLayer(cfg).eval()
    attention = layer.self_attn
    q = torch.randn(2, 2, frames, 64)
    _, want = w2v_bert.transformers_relative_key_bias(attention, q, q)
    _, got = w2v_bert.relative_key_bias(attention, q, q)
    assert got.shape == want.shape == (2, 2, frames, frames)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    # a wrong clamp (the window one position narrower) would not pass
    attention.right_max_position_embeddings -= 1
    _, narrow = w2v_bert.relative_key_bias(attention, q, q)
    attention.right_max_position_embeddings += 1
    if frames > 8:
        assert not torch.allclose(narrow, want)
    x = torch.randn(1, frames, 128)
    with torch.no_grad():
        ours = layer(x)[0]
        with mock.patch.object(
            hf, "_apply_relative_key_position_encoding", w2v_bert.transformers_relative_key_bias
        ):
            theirs = layer(x)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@needs_small
def test_features_precision_runs_the_encoder_at_that_precision():
    """``SemanticFeatures.batch(waves, precision)``: under bf16 / fp16 autocast (the CPU has
    autocast too) the encoder's matrix products run in half precision, the features still come
    back float32, differ from float32's and stay within the measured bound of each; float32
    gives the plain call's bits, and tf32 does too on the CPU, which has no TF32 units. Batched
    and alone, each waveform's features are within the bound.

    Measured on the fixture's small encoder (64 wide, 17 layers; 2-core AMD EPYC): relative L2
    0.040-0.073 in bf16 and 0.0053-0.0069 in fp16 (the GPU's at full width: tests/test_gpu.py).
    """
    from tts.models.w2v_bert import SemanticFeatures

    golden = load_file(str(SMALL / "golden.safetensors"))
    sem = SemanticFeatures.from_checkpoints(_small_set())
    waves = [golden["resample.wave_16k"], golden["w2v.even.wave_16k"]]
    exact = sem.batch(waves)
    for got, want in zip(sem.batch(waves, "float32"), exact, strict=True):
        assert torch.equal(got, want)
    for got, want in zip(sem.batch(waves, "tf32"), exact, strict=True):
        assert torch.equal(got, want)
    for precision, bound in (("bfloat16", 0.1), ("float16", 0.01)):
        alone = [sem(wave, precision) for wave in waves]
        for got, want in zip([*sem.batch(waves, precision), *alone], exact + exact, strict=True):
            assert got.dtype == torch.float32 and got.shape == want.shape
            rel = float((got - want).norm() / want.norm())
            assert 0 < rel <= bound, (precision, rel)
    with pytest.raises(ValueError, match="int8"):
        sem(waves[0], "int8")
