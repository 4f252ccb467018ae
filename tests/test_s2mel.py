"""s2mel model: manifest, strict load, CFG batching, seeded sampling."""

from pathlib import Path

import pytest
import torch

from tts import components
from tts.checkpoints import CheckpointSet, load_config
from tts.models.dit import reflect_pad1d

SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec"
SMALL = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "s2mel-small"

needs_small = pytest.mark.skipif(
    not (SMALL / "s2mel.pth").is_file(), reason="s2mel-small fixtures absent"
)


@pytest.fixture(scope="module")
def small_model():
    torch.set_num_threads(1)
    model, report = components.load_component("s2mel", CheckpointSet.open(SMALL))
    return model, report


@pytest.mark.skipif(not (SPEC / "config.official.yaml").is_file(), reason="spec absent")
def test_manifest_matches_official():
    cs = CheckpointSet(root=Path("/nonexistent"), config=load_config(SPEC / "config.official.yaml"))
    rows = components.manifest_rows("s2mel", cs)
    lines = (SPEC / "manifests" / "s2mel.pth.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["name", "shape", "dtype"]
    expected = [tuple(line.split("\t")) for line in lines[1:]]
    assert all(r[0] == "s2mel.pth" for r in rows)
    assert [r[1:] for r in rows] == expected


@needs_small
def test_strict_load_small(small_model):
    model, report = small_model
    assert report.loaded == len(model.state_dict()) - len(report.computed)
    assert all(t.device.type != "meta" for t in model.state_dict().values())
    est = model.cfm.estimator
    assert torch.equal(est.input_pos, torch.arange(16384))
    half = est.t_embedder.freqs.numel()
    assert torch.allclose(
        est.t_embedder.freqs, torch.exp(-torch.arange(half) * (9.210340371976184 / half))
    )


def _toy_inputs(model, T=23, prompt_len=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    est = model.cfm.estimator
    c = est.cond_projection.in_features
    mu = torch.randn(1, T, c, generator=g)
    style = torch.randn(1, 192, generator=g)
    prompt = torch.randn(1, 80, prompt_len, generator=g)
    return mu, style, prompt


@needs_small
def test_cfg_batch_equals_separate_calls(small_model):
    model, _ = small_model
    est = model.cfm.estimator
    mu, style, prompt = _toy_inputs(model)
    T = mu.size(1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 80, T, generator=g)
    prompt_x = torch.zeros_like(x)
    prompt_x[..., : prompt.size(-1)] = prompt
    x_lens = torch.tensor([T])
    t = torch.tensor([0.3])
    with torch.no_grad():
        stacked = est(
            torch.cat([x, x]),
            torch.cat([prompt_x, torch.zeros_like(prompt_x)]),
            x_lens,
            torch.cat([t, t]),
            torch.cat([style, torch.zeros_like(style)]),
            torch.cat([mu, torch.zeros_like(mu)]),
        )
        cond = est(x, prompt_x, x_lens, t, style, mu)
        uncond = est(
            x, torch.zeros_like(prompt_x), x_lens, t, torch.zeros_like(style), torch.zeros_like(mu)
        )
    torch.testing.assert_close(stacked[:1], cond, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stacked[1:], uncond, rtol=1e-5, atol=1e-5)
    # And the solver's CFG combination of one step equals the hand-made one.
    with torch.no_grad():
        trace = {}
        model.cfm.solve(x, x_lens, prompt, mu, style, torch.tensor([0.3, 0.8]), 0.7, trace=trace)
    x0 = trace["step_x"][0]
    assert torch.all(x0[..., : prompt.size(-1)] == 0)
    assert trace["step_estimator_out"][0].shape == stacked.shape


@needs_small
def test_seeded_noise_reproducible(small_model):
    model, _ = small_model
    mu, style, prompt = _toy_inputs(model, T=17, prompt_len=5)
    x_lens = torch.tensor([mu.size(1)])
    kw = dict(n_timesteps=2, cfg_rate=0.7)
    with torch.no_grad():
        a = model.cfm.inference(
            mu, x_lens, prompt, style, generator=torch.Generator().manual_seed(42), **kw
        )
        b = model.cfm.inference(
            mu, x_lens, prompt, style, generator=torch.Generator().manual_seed(42), **kw
        )
        c = model.cfm.inference(
            mu, x_lens, prompt, style, generator=torch.Generator().manual_seed(43), **kw
        )
        z = torch.randn(1, 80, mu.size(1), generator=torch.Generator().manual_seed(42))
        z_copy = z.clone()
        d = model.cfm.inference(mu, x_lens, prompt, style, noise=z, **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(a, d)
    assert torch.equal(z, z_copy), "the injected noise must not be modified"
    assert torch.all(a[..., : prompt.size(-1)] == 0)


def test_reflect_pad_short_input():
    x = torch.arange(1.0, 3.0).view(1, 1, 2)  # shorter than the padding
    y = reflect_pad1d(x, 2, 2)
    # zero appended first: [1, 2, 0] -> reflect -> [0, 2, 1, 2, 0, 2, 1], then the extra cut off
    assert y.tolist() == [[[0.0, 2.0, 1.0, 2.0, 0.0, 2.0]]]
    long = torch.arange(6.0).view(1, 1, 6)
    torch.testing.assert_close(
        reflect_pad1d(long, 2, 2), torch.nn.functional.pad(long, (2, 2), mode="reflect")
    )


@needs_small
def test_generate_matches_chain_golden(small_model):
    """S2Mel.generate from the chain's golden intermediates reproduces the golden mel."""
    from safetensors.torch import load_file

    model, _ = small_model
    g = load_file(str(SMALL / "golden.safetensors"))
    with torch.no_grad():
        mel = model.generate(
            semantic=g["codec.vq2emb.out"].transpose(1, 2),
            gpt_latent=g["gpt_layer.in"],
            prompt_condition=g["lr.prompt.out"],
            ref_mel=g["mel.out"],
            style=g["campplus.style"],
            noise=g["cfm25.noise"],
        )
    torch.testing.assert_close(mel, g["chain.vc_target"], rtol=1e-4, atol=4e-5)
