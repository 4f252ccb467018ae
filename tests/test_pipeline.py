"""The Engine end to end on a DEMO checkpoint set, on the CPU.

Random weights make noise, not speech: these tests check the plumbing (every stage runs, shapes,
files, reproducibility, per-row failures), never the sound.
"""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tts import cli
from tts.demo import write_demo_checkpoints
from tts.loading import CheckpointError
from tts.pipeline import (
    DeviceError,
    Engine,
    SynthesisRequest,
    load_tensors,
    resolve_device,
    save_tensors,
)

SPEAKERS = Path(__file__).resolve().parents[1] / "config" / "speakers"
FAST = {"max_mel_tokens": 24, "num_beams": 1, "diffusion_steps": 4}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return write_demo_checkpoints(tmp_path_factory.mktemp("demo"), seed=1)


@pytest.fixture(scope="module")
def engine(demo) -> Engine:
    torch.set_num_threads(2)
    return Engine.open(demo, device="cpu")


@pytest.fixture(scope="module")
def speaker_wav() -> Path:
    wavs = sorted(SPEAKERS.glob("*.wav"))
    assert wavs, f"no example speaker prompts in {SPEAKERS}"
    return wavs[0]


def _request(speaker, **kw) -> SynthesisRequest:
    base = {
        "id": "r1",
        "text": "Hello world.",
        "speaker": speaker,
        "seed": 7,
        "sampling": dict(FAST),
    }
    return SynthesisRequest(**{**base, **kw})


def test_engine_reports_demo_and_provenance(engine):
    assert engine.is_demo
    prov = engine.provenance()
    assert prov["demo_checkpoints"] is True and prov["device"] == "cpu"
    assert prov["gpt_dtype"] == "float32" and "cudnn_enabled" in prov
    assert prov["features_precision"] == prov["render_precision"] == "float32"
    assert {"cudnn_benchmark", "cudnn_deterministic"} <= set(prov)


def test_all_stages_and_reproducibility(engine, speaker_wav):
    req = _request(speaker_wav)
    first = engine.synthesize([req])[0]
    assert first.ok, first.error
    wav = first.value["wav"]
    assert wav.ndim == 1 and wav.numel() > 0 and torch.isfinite(wav).all()
    assert float(wav.abs().max()) <= 1.0
    # codes -> mel frames (x1.72) -> 256 samples per frame, per segment
    assert {"gpt_generate", "gpt_forward", "s2mel", "vocoder"} <= set(first.timings)
    again = engine.synthesize([req])[0]
    assert torch.equal(first.value["wav"], again.value["wav"]), "same seed must give the same audio"
    other = engine.synthesize([_request(speaker_wav, seed=8)])[0]
    assert not torch.equal(first.value["wav"], other.value["wav"])


def test_stage_outputs_roundtrip_through_files(engine, speaker_wav, tmp_path):
    req = _request(speaker_wav)
    spk = engine.speaker_conditioning(speaker_wav)
    save_tensors(tmp_path / "spk.safetensors", spk)
    spk2 = load_tensors(tmp_path / "spk.safetensors")
    assert spk.keys() == spk2.keys() and all(torch.equal(spk[k], spk2[k]) for k in spk)
    emo = engine.emotion_conditioning(req, spk2)
    tok = engine.semantic_tokens([req], [spk2], [emo])[0]
    assert tok.ok, tok.error
    assert tok.value["codes_0"].dtype == torch.int64
    assert tok.value["latent_0"].shape[0] == tok.value["codes_0"].shape[0]
    out = engine.render([req], [spk2], [tok.value])[0]
    direct = engine.synthesize([req])[0]
    assert torch.equal(out.value["wav"], direct.value["wav"]), (
        "file-staged run differs from direct run"
    )


def test_emotion_job_loads_the_gpt_emotion_path_alone(demo, engine, speaker_wav):
    """An engine that only conditions emotion (the workflow's emotion job) loads the GPT's
    emotion path alone and gets the same vectors, in every emotion mode; once the whole GPT is
    loaded, that is used."""
    lean = Engine.open(demo, device="cpu")
    lean.emotion_gpt_alone = True
    spk = engine.speaker_conditioning(speaker_wav)
    other = sorted(SPEAKERS.glob("*.wav"))[-1]
    for kw in (
        {},
        {"emo_vector": [0, 0, 0.6, 0, 0, 0, 0, 0.2]},
        {"emo_audio": other, "emo_alpha": 0.7},
    ):
        want = engine.emotion_conditioning(_request(speaker_wav, **kw), spk)
        got = lean.emotion_conditioning(_request(speaker_wav, **kw), spk)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), kw
    assert "gpt_emotion" in lean.load_seconds and "gpt" not in lean.load_seconds
    full = lean.part("gpt")
    calls = []
    merge = full.merge_emovec
    full.merge_emovec = lambda *a, **k: calls.append(1) or merge(*a, **k)
    lean.emotion_conditioning(_request(speaker_wav, emo_audio=other, emo_alpha=0.3), spk)
    assert calls == [1]


def test_emotion_job_uses_the_speaker_jobs_emotion_features(demo, engine, speaker_wav):
    """Given the speaker file's emotion features in its conditioning (the workflow's speaker
    job stores them), an engine conditions emotion without w2v-bert where the speaker file is
    the emotion prompt (no emotion audio; emotion vector), and given the emotion audio file's
    features where it has its own (the speaker job conditions those files too), with the same
    vectors as one that computes them; without them it computes them."""
    from tts.pipeline import EMOTION_FEATURES

    spk = engine.speaker_conditioning(speaker_wav)
    given = {**spk, EMOTION_FEATURES: engine.emotion_features(speaker_wav).float().cpu()}
    lean = Engine.open(demo, device="cpu")
    lean.emotion_gpt_alone = True
    for kw in ({}, {"emo_vector": [0, 0, 0.6, 0, 0, 0, 0, 0.2]}):
        want = engine.emotion_conditioning(_request(speaker_wav, **kw), spk)
        got = lean.emotion_conditioning(_request(speaker_wav, **kw), given)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), kw
    assert "features" not in lean.load_seconds
    other = sorted(SPEAKERS.glob("*.wav"))[-1]
    assert other != speaker_wav
    req = _request(speaker_wav, emo_audio=other, emo_alpha=0.7)
    want = engine.emotion_conditioning(req, spk)
    prompt = {EMOTION_FEATURES: engine.emotion_features(other).float().cpu()}
    got = lean.emotion_conditioning(req, given, prompt)  # the emotion file's features given
    assert all(torch.equal(got[k], want[k]) for k in want) and "features" not in lean.load_seconds
    got = lean.emotion_conditioning(req, given)
    assert all(torch.equal(got[k], want[k]) for k in want) and "features" in lean.load_seconds


def test_speaker_and_emotion_features_in_one_forward(demo, engine, speaker_wav):
    """``speaker_conditioning(emotion_too=True)`` runs w2v-bert once for the speaker's and
    the same file's emotion features, keeps the latter for ``emotion_features`` (no second
    forward), and both equal what the separate calls compute, within float32 rounding."""
    from tts.pipeline import speaker_is_emotion_prompt

    both = Engine.open(demo, device="cpu")
    features = both.part("features")
    forwards = []
    hidden = features.hidden
    features.hidden = lambda *a, **k: forwards.append(a[0].shape) or hidden(*a, **k)
    spk = both.speaker_conditioning(speaker_wav, emotion_too=True)
    emo = both.emotion_features(speaker_wav)
    assert len(forwards) == 1 and forwards[0][0] == 2  # one forward, two rows
    alone = Engine.open(demo, device="cpu")
    want_spk = alone.speaker_conditioning(speaker_wav)
    torch.testing.assert_close(spk["spk_cond_emb"], want_spk["spk_cond_emb"], atol=5e-5, rtol=1e-5)
    assert torch.equal(spk["style"], want_spk["style"])  # no w2v-bert in these two
    assert torch.equal(spk["ref_mel"], want_spk["ref_mel"])
    torch.testing.assert_close(
        spk["prompt_condition"], want_spk["prompt_condition"], atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(emo, alone.emotion_features(speaker_wav), atol=5e-5, rtol=1e-5)
    # The speaker file is the emotion prompt unless the row has other emotion audio in force.
    other = sorted(SPEAKERS.glob("*.wav"))[-1]
    assert speaker_is_emotion_prompt(_request(speaker_wav))
    assert speaker_is_emotion_prompt(_request(speaker_wav, emo_audio=speaker_wav))
    assert not speaker_is_emotion_prompt(_request(speaker_wav, emo_audio=other))
    assert speaker_is_emotion_prompt(
        _request(speaker_wav, emo_audio=other, emo_vector=[0.5] + [0] * 7)
    )
    assert speaker_is_emotion_prompt(_request(speaker_wav, emo_audio=other, emo_text=""))


def test_features_precision_reaches_every_w2v_bert_forward(demo, engine, speaker_wav):
    """The Engine runs w2v-bert at its ``features_precision`` for the speaker's features, the
    same file's emotion features computed with them, and an emotion prompt's alone; nothing
    else in the conditioning changes. Only CUDA with the fast paths may ask for anything but
    float32, so the CPU's bf16 autocast stands in for it here, set after opening."""
    half = Engine.open(demo, device="cpu")
    half.features_precision = "bfloat16"
    features = half.part("features")
    asked = []
    hidden = features.hidden
    features.hidden = lambda *a, **k: asked.append(k.get("precision")) or hidden(*a, **k)
    spk = half.speaker_conditioning(speaker_wav, emotion_too=True)
    emo = half.emotion_features(speaker_wav)
    other = sorted(SPEAKERS.glob("*.wav"))[-1]
    emo_other = half.emotion_features(other)
    assert asked == ["bfloat16", "bfloat16"]  # the first forward gave the speaker's emotion too
    want = engine.speaker_conditioning(speaker_wav)
    got, exact = spk["spk_cond_emb"], want["spk_cond_emb"]
    assert not torch.equal(got, exact)
    assert float((got - exact).norm() / exact.norm()) < 0.1  # test_semantic.py's bf16 bound
    assert torch.equal(spk["style"], want["style"]) and torch.equal(spk["ref_mel"], want["ref_mel"])
    for got, exact in (
        (emo, engine.emotion_features(speaker_wav)),
        (emo_other, engine.emotion_features(other)),
    ):
        assert not torch.equal(got, exact)
        assert float((got - exact).norm() / exact.norm()) < 0.1
    with pytest.raises(ValueError, match="features_precision bfloat16 needs CUDA"):
        Engine.open(demo, device="cpu", features_precision="bfloat16")
    with pytest.raises(ValueError, match="features_precision 'int8' is not one of"):
        Engine.open(demo, device="cpu", features_precision="int8")


def test_emotion_with_given_features_does_not_import_transformers(
    demo, engine, speaker_wav, tmp_path
):
    """The emotion job's engine, given the speaker job's emotion features, imports neither
    transformers nor TorchDynamo in its process (the w2v-bert features were their only
    reason there)."""
    import subprocess
    import sys

    from tts.pipeline import EMOTION_FEATURES

    spk = engine.speaker_conditioning(speaker_wav)
    spk[EMOTION_FEATURES] = engine.emotion_features(speaker_wav).float().cpu()
    save_tensors(tmp_path / "speaker.safetensors", spk)
    code = f"""
import sys
from tts.pipeline import Engine, SynthesisRequest, load_tensors
spk = load_tensors({str(tmp_path / "speaker.safetensors")!r})
engine = Engine.open({str(demo)!r}, device="cpu")
engine.emotion_gpt_alone = True
req = SynthesisRequest(id="r", text="Hello.", speaker={str(speaker_wav)!r})
out = engine.emotion_conditioning(req, spk)
print(sorted(out), "transformers" in sys.modules, "torch._dynamo" in sys.modules)
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["['emovec']", "False", "False"], out.stdout + out.stderr


def test_tokens_job_loads_the_gpt_without_its_emotion_path(demo, engine, speaker_wav):
    """An engine that generates from emotion vectors computed elsewhere (the workflow's
    tokens job) loads the GPT without its emotion path and gets the same codes and latents;
    emotion conditioning asked of it all the same loads the emotion path alone, with the
    same vectors."""
    from tts.models.gpt import has_emotion_path

    lean = Engine.open(demo, device="cpu")
    lean.gpt_speech_alone = True
    req = _request(speaker_wav)
    spk = engine.speaker_conditioning(speaker_wav)
    emo = engine.emotion_conditioning(req, spk)
    want = engine.semantic_tokens([req], [spk], [emo])[0]
    got = lean.semantic_tokens([req], [spk], [emo])[0]
    assert want.ok and got.ok, (want.error, got.error)
    assert got.value.keys() == want.value.keys()
    assert all(torch.equal(got.value[k], want.value[k]) for k in want.value)
    assert not has_emotion_path(lean.part("gpt")) and "gpt_emotion" not in lean.load_seconds
    again = lean.emotion_conditioning(req, spk)
    assert all(torch.equal(again[k], emo[k]) for k in emo) and "gpt_emotion" in lean.load_seconds


def test_row_failures_do_not_stop_other_rows(engine, speaker_wav, tmp_path):
    good = _request(speaker_wav, id="good")
    empty = _request(speaker_wav, id="empty", text="   ")
    missing = _request(tmp_path / "nope.wav", id="missing")
    results = {r.id: r for r in engine.synthesize([empty, good, missing])}
    assert results["good"].ok
    assert not results["empty"].ok and "empty" in results["empty"].error
    assert not results["missing"].ok and "nope.wav" in results["missing"].error


def test_emotion_vector_and_audio_modes(engine, speaker_wav):
    spk = engine.speaker_conditioning(speaker_wav)
    plain = engine.emotion_conditioning(_request(speaker_wav), spk)["emovec"]
    vec = engine.emotion_conditioning(
        _request(speaker_wav, emo_vector=[0, 0, 0.6, 0, 0, 0, 0, 0.2]), spk
    )
    assert vec["emovec"].shape == plain.shape and not torch.equal(vec["emovec"], plain)
    with pytest.raises(ValueError, match="emo"):
        engine.emotion_conditioning(_request(speaker_wav, emo_vector=[0.5] * 7), spk)
    with pytest.raises(CheckpointError, match="qwen"):
        engine.emotion_conditioning(_request(speaker_wav, emo_text="so happy"), spk)


def test_nan_in_a_stage_fails_the_row_not_the_batch(engine, speaker_wav, monkeypatch):
    vocoder = engine.part("bigvgan")
    real_forward = vocoder.forward

    def poisoned(mel):
        out = real_forward(mel)
        return out * float("nan")

    monkeypatch.setattr(vocoder, "forward", poisoned)
    res = engine.synthesize([_request(speaker_wav)])[0]
    assert not res.ok and "NaN or inf in the vocoder" in res.error


def test_prompt_conditioning_is_computed_once_per_file(demo, speaker_wav, tmp_path, monkeypatch):
    """A batch's rows share their prompt: its speaker conditioning, emotion features and the
    merge of the two are computed once per Engine and file, with the values a fresh Engine
    computes; a file rewritten in place is conditioned again, and a missing one still fails."""
    import shutil

    prompt = tmp_path / "voice.wav"
    shutil.copy(speaker_wav, prompt)
    engine = Engine.open(demo, device="cpu")
    features, gpt = engine.part("features"), engine.part("gpt")
    calls, merges = [], []
    monkeypatch.setattr(features, "extract", lambda w, f=features.extract: calls.append(1) or f(w))
    monkeypatch.setattr(
        gpt, "merge_emovec", lambda *a, f=gpt.merge_emovec, **k: merges.append(1) or f(*a, **k)
    )
    req = _request(prompt)

    spk = engine.speaker_conditioning(prompt)
    emo = engine.emotion_conditioning(req, spk)
    assert len(calls) == 2 and len(merges) == 1  # the speaker chain and the emotion chain
    spk_again = engine.speaker_conditioning(prompt)
    emo_again = engine.emotion_conditioning(_request(prompt, id="r2"), spk_again)
    assert len(calls) == 2 and len(merges) == 1, "the second row recomputed its prompt"
    assert spk_again is not spk and spk_again.keys() == spk.keys()
    assert all(torch.equal(spk[k], spk_again[k]) for k in spk)
    assert torch.equal(emo["emovec"], emo_again["emovec"])
    # Rows own their tensors (the workflow saves a batch's rows in one file).
    assert emo["emovec"].data_ptr() != emo_again["emovec"].data_ptr()
    assert all(spk[k].data_ptr() != spk_again[k].data_ptr() for k in spk)

    fresh = Engine.open(demo, device="cpu")
    spk_fresh = fresh.speaker_conditioning(prompt)
    assert all(torch.equal(spk[k], spk_fresh[k]) for k in spk)
    assert torch.equal(emo["emovec"], fresh.emotion_conditioning(req, spk_fresh)["emovec"])
    # Vector mode reuses the merge and matches a fresh Engine; another alpha merges anew.
    vector = [0, 0, 0.6, 0, 0, 0, 0, 0.2]
    vec = engine.emotion_conditioning(_request(prompt, emo_vector=vector), spk)
    assert len(merges) == 1
    want = fresh.emotion_conditioning(_request(prompt, emo_vector=vector), spk_fresh)
    assert torch.equal(vec["emovec"], want["emovec"])
    half = _request(prompt, emo_audio=speaker_wav, emo_alpha=0.5)
    assert torch.equal(
        engine.emotion_conditioning(half, spk)["emovec"],
        fresh.emotion_conditioning(half, spk_fresh)["emovec"],
    )
    assert len(merges) == 2 and len(calls) == 3  # a new emotion file, a new alpha

    data, sr = sf.read(prompt, dtype="float32")
    sf.write(prompt, data[: len(data) // 2], sr)  # rewritten: other size and time
    spk_new = engine.speaker_conditioning(prompt)
    engine.emotion_conditioning(req, spk_new)
    assert len(calls) == 5 and len(merges) == 3
    assert spk_new["ref_mel"].shape != spk["ref_mel"].shape

    engine.clear_prompt_cache()
    engine.speaker_conditioning(prompt)
    assert len(calls) == 6

    missing = tmp_path / "gone.wav"
    with pytest.raises(Exception, match="gone.wav"):
        engine.speaker_conditioning(missing)


def test_speaker_features_carry_their_identity_instead_of_a_hash(demo, speaker_wav, monkeypatch):
    """The emotion merge and the GPT latent are kept per speaker features' content. The
    features an Engine hands out carry the number of the computation they copy, so the merge
    finds them without hashing them; a copy modified in place, or features from elsewhere
    (a file the workflow saved), are hashed, once per tensor."""
    from tts import pipeline

    hashed = []
    real = pipeline._fingerprint
    monkeypatch.setattr(pipeline, "_fingerprint", lambda t: hashed.append(1) or real(t))
    engine = Engine.open(demo, device="cpu")
    spk = engine.speaker_conditioning(speaker_wav)
    again = engine.speaker_conditioning(speaker_wav)
    key = pipeline._content_key(spk["spk_cond_emb"])
    assert key[0] == "computed" and pipeline._content_key(again["spk_cond_emb"]) == key
    engine.emotion_conditioning(_request(speaker_wav), spk)
    engine.emotion_conditioning(_request(speaker_wav, id="r2"), again)
    assert not hashed
    # Computed anew (the cache cleared): a new identity, so nothing kept is reused for it.
    engine.clear_prompt_cache()
    assert pipeline._content_key(engine.speaker_conditioning(speaker_wav)["spk_cond_emb"]) != key

    loaded = {k: v.clone() for k, v in spk.items()}  # as read back from a file: no identity
    first = pipeline._content_key(loaded["spk_cond_emb"])
    assert first[0] == "bytes" and len(hashed) == 1
    assert pipeline._content_key(loaded["spk_cond_emb"]) == first and len(hashed) == 1
    spk["spk_cond_emb"].mul_(2.0)  # modified in place: its identity no longer holds
    changed = pipeline._content_key(spk["spk_cond_emb"])
    assert changed[0] == "bytes" and changed != first and len(hashed) == 2


def test_conditioning_outputs_are_checked_and_copied_together():
    """The speaker conditioning's outputs come back as float32 CPU tensors after one check of
    all of them; a NaN or inf in any fails with the output's name."""
    from tts import pipeline

    out = {"a": torch.ones(2, 3, dtype=torch.float64), "b": torch.zeros(4)}
    host = pipeline._finite_on_host("stage", out)
    assert list(host) == ["a", "b"] and all(t.dtype == torch.float32 for t in host.values())
    assert torch.equal(host["a"], torch.ones(2, 3))
    for bad in (float("nan"), float("inf")):
        out["b"][2] = bad
        with pytest.raises(FloatingPointError, match=r"NaN or inf in the stage output \(b\)"):
            pipeline._finite_on_host("stage", out)


def test_cuda_requested_without_cuda_is_a_clear_error(demo):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(DeviceError, match="--device cpu"):
        Engine.open(demo, device="cuda")


def test_auto_device_is_cuda_where_there_is_one_else_the_cpu(demo):
    engine = Engine.open(demo, device="auto")
    assert engine.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("value", ["gpu", "cuda:", "cuda:x", "CPU", "cpu ", "mps"])
def test_devices_outside_the_configs_values_are_refused(value, capsys):
    with pytest.raises(DeviceError, match="use cuda, cuda:N, cpu or auto"):
        resolve_device(value)
    rc = cli.main(
        ["synth", "--checkpoints", "c", "--text", "t", "--speaker", "s", "--out", "o",
         "--device", value]
    )  # fmt: skip
    assert rc == 2 and "use cuda, cuda:N, cpu or auto" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["cuda", "cuda:1", "cpu", "auto"])
def test_devices_of_the_config_are_taken(value):
    if value.startswith("cuda") and not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device(value)
    else:
        assert resolve_device(value).type in ("cuda", "cpu")


def test_synth_command_reads_its_text_from_a_file(tmp_path, capsys):
    parser = cli.build_parser()
    given = tmp_path / "chapter.txt"
    given.write_text("Erster Satz.\nZweiter, längerer Satz.\n", encoding="utf-8")
    common = ["synth", "--checkpoints", "c", "--speaker", "s", "--out", "o"]
    args = parser.parse_args([*common, "--text-file", str(given)])
    assert cli.synth_text(args) == "Erster Satz.\nZweiter, längerer Satz.\n"
    assert cli.synth_text(parser.parse_args([*common, "--text", "Hi."])) == "Hi."
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("längerer".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.txt: not UTF-8"):
        cli.synth_text(parser.parse_args([*common, "--text-file", str(latin1)]))
    for both_or_neither in ([*common], [*common, "--text", "a", "--text-file", str(given)]):
        with pytest.raises(SystemExit):
            parser.parse_args(both_or_neither)
    assert "--text-file" in capsys.readouterr().err
    rc = cli.main([*common, "--text-file", str(tmp_path / "missing.txt"), "--device", "cpu"])
    assert rc == 2 and "missing.txt" in capsys.readouterr().err


def test_missing_files_are_listed_with_sources(tmp_path):
    (tmp_path / "config.yaml").write_text("gpt: {model_dim: 8}\n")
    with pytest.raises(CheckpointError, match="Hugging Face repo IndexTeam/IndexTTS-2"):
        Engine.open(tmp_path, device="cpu")


def test_synth_command_writes_a_22050_hz_wav(demo, speaker_wav, tmp_path, capsys):
    out = tmp_path / "o.wav"
    rc = cli.main(
        [
            "synth",
            "--checkpoints",
            str(demo),
            "--text",
            "Hi there.",
            "--speaker",
            str(speaker_wav),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--max-mel-tokens",
            "16",
            "--seed",
            "1",
        ]
    )
    assert rc == 0
    assert "DEMO" in capsys.readouterr().out
    data, sr = sf.read(out, dtype="int16")
    assert sr == 22050 and data.ndim == 1 and data.size > 0
    assert np.abs(data).max() > 0
    assert not list(tmp_path.glob(".*.tmp")), "temporary file left behind"


@pytest.mark.parametrize("setting", ["render_precision", "features_precision"])
def test_synth_command_refuses_half_precisions_on_the_cpu(
    setting, demo, speaker_wav, tmp_path, capsys
):
    out = tmp_path / "o.wav"
    rc = cli.main(
        [
            "synth",
            "--checkpoints",
            str(demo),
            "--text",
            "Hi.",
            "--speaker",
            str(speaker_wav),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--" + setting.replace("_", "-"),
            "bfloat16",
        ]
    )
    assert rc == 2
    assert f"{setting} bfloat16 needs CUDA" in capsys.readouterr().err
    assert not out.exists()


def test_opening_an_engine_does_not_import_torchdynamo(demo):
    """Checking the configured decoder name must not import tts.fast.decode, whose TorchDynamo
    import took ~3 s of every workflow job's start on the GPU machine (docs/benchmarks.md,
    runs AQ-AS). A fresh interpreter, since this one may have imported it already."""
    import subprocess
    import sys

    code = (
        "import sys; from tts.pipeline import Engine; "
        f"Engine.open({str(demo)!r}, device='cpu', gpt_decoder='graphkn'); "
        "print(sorted(m for m in ('torch._dynamo', 'tts.fast.decode') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_row_out_of_gpu_memory_is_tried_again_without_the_kept_decoder(
    engine, speaker_wav, monkeypatch
):
    """synthesize: a stage that runs out of GPU memory is run once more after the kept GPT
    decoder is released, with the same result as a row that fitted; a row that does not fit
    the second time fails alone with an out-of-memory error, and the other rows complete."""
    from tts import pipeline

    want = engine.synthesize([_request(speaker_wav)])[0]
    released = []
    monkeypatch.setattr(pipeline, "free_gpu_memory", lambda: released.append(1))
    render = engine.render
    tight = {"r1": 1, "never": 2}  # OOMs left per row id

    def render_short_of_memory(requests, *rest):
        if tight.get(requests[0].id, 0) > 0:
            tight[requests[0].id] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory (stand-in)")
        return render(requests, *rest)

    monkeypatch.setattr(engine, "render", render_short_of_memory)
    retried = engine.synthesize([_request(speaker_wav)])[0]
    assert retried.ok, retried.error
    assert torch.equal(retried.value["wav"], want.value["wav"])
    assert released == [1]
    results = engine.synthesize(
        [_request(speaker_wav, id="never"), _request(speaker_wav, id="fits")]
    )
    assert not results[0].ok and "out of GPU memory" in results[0].error
    assert results[1].ok and torch.equal(results[1].value["wav"], want.value["wav"])
    assert released == [1, 1, 1]


def test_close_frees_the_engine_which_loads_again_when_used(demo, speaker_wav):
    """close() (and leaving a ``with`` block) drops the loaded components, the prompt cache
    and the process's kept decoder; the Engine still works afterwards, with the same result."""
    from tts.fast import decode

    with Engine.open(demo, device="cpu") as eng:
        first = eng.synthesize([_request(speaker_wav)])[0]
        assert eng._parts and eng._prompt_cache
        eng.fast = True  # the CPU never runs the fast paths; this checks the release's wiring
        decode._KEPT.entry = ("settings", object())
    assert not eng._parts and not eng._prompt_cache
    assert decode._KEPT.entry is None
    eng.fast = False
    again = eng.synthesize([_request(speaker_wav)])[0]
    assert torch.equal(again.value["wav"], first.value["wav"])


def test_the_render_stage_loads_without_importing_torchdynamo(demo):
    """The workflow's render job compiles nothing: building its models on the meta device must
    not import TorchDynamo (PyTorch's normal_ for meta tensors does, 1.1 s of a 3.5 s demo
    render job on a 2-core CPU)."""
    import subprocess
    import sys

    code = (
        "import sys; from tts.pipeline import Engine\n"
        f"e = Engine.open({str(demo)!r}, device='cpu')\n"
        "for name in ('s2mel', 'bigvgan', 'semantic_codec', 'campplus'): e.part(name)\n"
        "print('torch._dynamo' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False", out.stdout + out.stderr


def test_speaker_conditioning_loads_the_length_regulator_alone(demo, engine, speaker_wav):
    """A speaker job needs s2mel's length regulator only: a new Engine loads that part of
    s2mel.pth alone and conditions exactly as an Engine that has the whole s2mel loaded."""
    engine.part("s2mel")
    want = engine.speaker_conditioning(speaker_wav)
    lean = Engine.open(demo, device="cpu")
    got = lean.speaker_conditioning(speaker_wav)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert "length_regulator" in lean.load_seconds and "s2mel" not in lean.load_seconds


def test_the_length_regulator_alone_is_strict(demo, tmp_path):
    """A tensor of the length regulator missing, or an unknown one under it, is an error
    naming it; the rest of s2mel.pth is the whole-s2mel load's (and validate_weights')."""
    import shutil

    from tts.checkpoints import CheckpointSet
    from tts.components import load_length_regulator

    shutil.copytree(demo, tmp_path / "set")
    path = tmp_path / "set" / "s2mel.pth"
    state = torch.load(demo / "s2mel.pth", weights_only=True)
    regulator = state["net"]["length_regulator"]
    name = sorted(regulator)[0]

    def save_and_load(change):
        net = {part: dict(tensors) for part, tensors in state["net"].items()}
        change(net)
        torch.save({**state, "net": net}, path)
        return load_length_regulator(CheckpointSet.open(tmp_path / "set"))

    module, report = save_and_load(lambda net: net["cfm"].popitem())  # not its business: loads
    assert report.loaded == len(regulator)
    with pytest.raises(CheckpointError, match=f"length_regulator.{name}"):
        save_and_load(lambda net: net["length_regulator"].pop(name))
    with pytest.raises(CheckpointError, match="length_regulator.extra"):
        save_and_load(lambda net: net["length_regulator"].update(extra=torch.zeros(2)))
