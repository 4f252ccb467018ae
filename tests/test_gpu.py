"""GPU equals CPU: every parity fixture case on CUDA (skipped without CUDA; see docs/gpu.md).

* float32 on CUDA (TF32 off, cuDNN on): the same cases, the same tolerances as on the CPU;
* bfloat16 / float16 on CUDA, the way the pipeline runs each part in half precision (GPT cast,
  s2mel and BigVGAN under autocast): every float output within a stated relative bound (the
  bounds below were measured on an H100 and are listed per case in docs/gpu.md); parts that
  always run in float32, and generation (whose argmax path diverges), are skipped with why;
* the fast paths (tts.fast: CUDA-graph decoder, graph-captured CFM with fused DiT, Triton
  BigVGAN activation) through the same parity handlers, float32, same tolerances.

``TTS_GPU_REPORT=path.json`` also writes every case's worst error per dtype (for docs/gpu.md).
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from tts import parity

pytestmark = pytest.mark.gpu

CASES = list(parity.all_cases())
REPORT: list[dict] = []

# Half precision is tested the way the pipeline uses it (docs/gpu.md):
# * the GPT runs cast to the dtype (and under autocast): its cases run with the model cast;
# * s2mel's DiT/CFM and BigVGAN run with float32 weights under autocast (``--precision
#   ...:bfloat16:bfloat16`` of `tts bench`): their cases run that way;
# * every other component runs in float32 in every mode: not applicable.
# Worst relative error allowed per float output, ||actual - golden|| / ||golden|| (L2 over the
# tensor): measured on an H100 (per case in docs/gpu.md) and rounded up with a margin.
HALF_CAST = ("cond_", "merge_", "fwd_")
HALF_AUTOCAST = ("dit_", "cfm_", "bigvgan")
HALF_BOUNDS = {
    "cast": {torch.bfloat16: 2e-2, torch.float16: 3e-3},
    "autocast": {torch.bfloat16: 5e-2, torch.float16: 1e-2},
}
HALF_NOT_APPLICABLE = {
    "gen_": "token-by-token argmax/beam choices diverge once two logits swap order",
    "trace_": "sampled codes: not comparable across precisions",
    "s2mel_chain": "the chain includes the prompt front end (fbank, CAMPPlus, codec), which "
    "stays float32; its half-precision parts are the dit/cfm/bigvgan cases",
}
FLOAT32_ONLY = "runs in float32 in every precision mode of the pipeline"


def _id(item):
    fs, case = item
    return f"{fs.name}/{parity.case_id(case)}"


@pytest.fixture(autouse=True)
def _exact_cuda():
    """TF32 off (PyTorch enables it for cuDNN convolutions by default), cuDNN on."""
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.enabled,
    )
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.enabled = True
    yield
    (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.enabled,
    ) = saved


def _record(item, dtype, comparisons, error=None, label=None):
    fs, case = item
    rows = []
    for c in comparisons:
        a, e = c.actual.detach().float().cpu(), c.expected.detach().float().cpu()
        same = tuple(a.shape) == tuple(e.shape)
        rel = float((a - e).norm() / e.norm().clamp_min(1e-30)) if same and e.numel() else None
        rows.append(
            {
                "key": c.key,
                "exact": c.exact,
                "shape_ok": same,
                "rel_l2": rel,
                "max_abs": c.max_abs_diff() if same else None,
                "within_tolerance": c.failure() is None,
            }
        )
    REPORT.append(
        {
            "case": _id(item),
            "dtype": label or str(dtype).removeprefix("torch."),
            "error": error,
            "outputs": rows,
        }
    )
    _write_report()


def _write_report() -> None:
    path = os.environ.get("TTS_GPU_REPORT")
    if path:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(REPORT, fh, indent=1)


def _run(item, dtype, label=None):
    fs, case = item
    try:
        comparisons = parity.run_case(fs, case, parity.RunOptions(device="cuda", dtype=dtype))
    except Exception as exc:
        _record(item, dtype, [], f"{type(exc).__name__}: {exc}", label)
        raise
    _record(item, dtype, comparisons, label=label)
    return comparisons


def _skip_if_env(exc: Exception) -> None:
    """A case whose handler needs a package this machine lacks is skipped, not failed."""
    if isinstance(exc, ModuleNotFoundError):
        pytest.skip(f"missing package on this machine: {exc.name}")


# The fast paths first (they matter most and take longest to set up).
FAST = [
    (fs, c)
    for fs, c in CASES
    if parity.case_id(c).startswith(
        ("gen_", "fwd_", "cond_", "merge_", "cfm_", "s2mel_chain", "bigvgan", "campplus")
    )
]


@pytest.mark.parametrize("compiled", [False, True], ids=["plain", "compiled"])
@pytest.mark.parametrize("item", FAST, ids=[_id(c) for c in FAST])
def test_fast_paths_cuda(item, compiled, monkeypatch):
    from tts import fast
    from tts.fast import conditioning, latent_pass, padded_graphs, patched

    # Each fwd_, cond_ and merge_ case through a graph.
    monkeypatch.setattr(padded_graphs, "CAPTURE_ON_CALL", 1)
    fs, case = item
    before = len(fast.FALLBACKS)
    used = sum(latent_pass.COUNTS.values())
    encoded = sum(conditioning.COUNTS.values())
    with patched(
        gpt=True,
        s2mel=True,
        bigvgan=True,
        s2mel_graphs=True,
        bigvgan_mode="triton",
        gpt_compile=compiled,
        s2mel_compile=compiled,
    ):
        comparisons = parity.run_case(fs, case, parity.RunOptions(device="cuda"))
    _record(item, "fast-float32" + ("-compiled" if compiled else ""), comparisons)
    failures = [f for c in comparisons if (f := c.failure())]
    assert comparisons and not failures, "\n".join(failures)
    assert len(fast.FALLBACKS) == before, f"fast path fell back: {fast.FALLBACKS[before:]}"
    # The latent pass, the prompt encoders and CAMPPlus ran from a graph (captured now or by an
    # earlier case).
    if parity.case_id(case).startswith("fwd_"):
        assert sum(latent_pass.COUNTS.values()) > used
    if parity.case_id(case).startswith(("cond_", "merge_", "gen_", "campplus", "s2mel_chain")):
        assert sum(conditioning.COUNTS.values()) > encoded


CFM = [(fs, c) for fs, c in CASES if parity.case_id(c).startswith("cfm_inference")]


@pytest.mark.parametrize("item", CFM, ids=[_id(c) for c in CFM])
def test_cfm_graph_replay_cuda(item):
    """The graph-captured Euler loop (no trace): first call (capture) and replay both match."""
    from tts.fast.s2mel import solve
    from tts.parity import s2mel_cases as sc

    fs, case = item
    opts = parity.RunOptions(device="cuda")
    model = sc._model(fs, opts)
    args = case["args"]
    inputs = [sc._inp(fs, case, n, opts) for n in ("noise_z", "x_lens", "prompt", "mu", "style")]
    t_span = torch.linspace(0, 1, int(args["n_timesteps"]) + 1, device="cuda")
    from tts import fast

    before = len(fast.FALLBACKS)
    for _ in range(3):
        out = solve(
            model.cfm,
            inputs[0],
            inputs[1],
            inputs[2],
            inputs[3],
            inputs[4],
            t_span,
            float(args["inference_cfg_rate"]),
            graphs=True,
        )
        comparison = fs.compare(case, case["outputs"]["out"], out)
        assert comparison.failure() is None, comparison.failure()
    assert len(fast.FALLBACKS) == before, f"fast path fell back: {fast.FALLBACKS[before:]}"


def _gpt_small_cuda(dtype: torch.dtype = torch.float32):
    """The gpt-small fixture GPT on CUDA in ``dtype`` (eval), or skip without the fixtures."""
    from tts.checkpoints import CheckpointSet
    from tts.components import load_component

    root = next((fs.root for fs, _ in CASES if fs.name == "gpt-small"), None)
    if root is None:
        pytest.skip("gpt-small fixture set not found")
    return load_component("gpt", CheckpointSet.open(root))[0].cuda().to(dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_latent_pass_graphs_replay_the_padded_stack_cuda(dtype):
    """The latent pass's graphs (tts.fast.latent_pass), the way the Engine runs the GPT (cast,
    under autocast in half precision): a key's eager first call, its capturing second call
    and its replays give the same bits as the stack run eagerly at the bucketed length, for
    every length of the bucket; a new bucket captures a graph of its own; replaced weights
    drop the graphs. Against the stack at the unpadded length: float32 within 1e-5, bf16
    within the GPT's cast bound."""
    from tts.fast import latent_pass, padded_graphs

    gpt = _gpt_small_cuda(dtype)
    runner = latent_pass.StackGraphs(gpt.gpt, bucket=64)
    gen = torch.Generator(device="cuda").manual_seed(3)
    half = dtype != torch.float32
    counts = []
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=half):
        for n in (37, 50, 64, 37, 70, 50, 70):
            x = torch.randn(2, n, gpt.model_dim, device="cuda", generator=gen).to(dtype)
            got = runner(x)
            padded = gpt.gpt(padded_graphs.padded(x, -(-n // 64) * 64))[:, :n]
            assert got.shape == (2, n, gpt.model_dim) and torch.isfinite(got).all()
            assert torch.equal(got, padded), n
            alone = gpt.gpt(x)
            rel = float((got.float() - alone.float()).norm() / alone.float().norm())
            assert rel <= (HALF_BOUNDS["cast"][dtype] if half else 1e-5), (n, rel)
            counts.append((runner.captures, runner.replays))
        # bucket 64: eager, capture, replay, replay; 128: eager; 64: replay; 128: capture
        assert counts == [(0, 0), (1, 0), (1, 1), (1, 2), (1, 2), (1, 3), (2, 3)]
        for p in gpt.gpt.parameters():  # new storage for every weight: the graphs must go
            p.data = p.data.clone()
        x = torch.randn(2, 50, gpt.model_dim, device="cuda", generator=gen).to(dtype)
        for captures in (2, 3):  # the key starts over: eager, then a new capture
            assert torch.equal(runner(x), gpt.gpt(padded_graphs.padded(x, 64))[:, :50])
            assert runner.captures == captures
        x = torch.randn(40, 100, gpt.model_dim, device="cuda", generator=gen).to(dtype)
        assert torch.equal(runner(x), gpt.gpt(x))  # 40 x 128 positions: above the limit, eager
        assert runner.captures == 3 and runner.replays == 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_conditioning_graphs_replay_the_padded_encoders_cuda(dtype):
    """The prompt encoders' graphs (tts.fast.conditioning), as the Engine runs the GPT: for
    each encoder, a key's eager first call, its capturing second call and its replays give
    the same bits as the encoder run eagerly on the features padded to the bucket, for every
    length of the bucket (the real length is a graph input) and for the merge's two rows;
    against the unpadded encoder: float32 within 1e-5, bf16 within the GPT's cast bound."""
    from tts.fast import conditioning, padded_graphs

    gpt = _gpt_small_cuda(dtype)
    gen = torch.Generator(device="cuda").manual_seed(6)
    half = dtype != torch.float32
    runners = {
        "speaker": conditioning.speaker_runner(gpt),
        "emotion": conditioning.emotion_runner(gpt),
    }
    worst = {}
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=half):
        for name, runner in runners.items():

            def encode(x, frames, lengths, runner=runner):
                return runner.fn(runner.module, x, frames, lengths)

            counts = []
            for rows, n in ((1, 40), (1, 45), (1, 64), (1, 35), (2, 50), (2, 50), (2, 61)):
                x = torch.randn(rows, n, 1024, device="cuda", generator=gen).to(dtype)
                lengths = torch.full((rows,), 1024, device="cuda")  # what infer_v2 passes
                got = runner(x, lengths)
                frames = torch.full((rows,), n, device="cuda")
                want = encode(padded_graphs.padded(x, 64), frames, lengths)
                assert torch.equal(got, want), (name, rows, n)
                alone = encode(x, None, lengths).float()
                rel = float((got.float() - alone).norm() / alone.norm())
                assert rel <= (HALF_BOUNDS["cast"][dtype] if half else 1e-5), (name, n, rel)
                worst[name] = max(worst.get(name, 0.0), rel)
                counts.append((runner.captures, runner.replays))
            # 1 x 64: eager, capture, replay, replay; 2 x 64: eager, capture, replay
            assert counts == [(0, 0), (1, 0), (1, 1), (1, 2), (1, 2), (2, 2), (2, 3)], name
    REPORT.append({"case": f"conditioning_graphs_{dtype}", "worst_rel_vs_unpadded": worst})
    _write_report()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_prefill_graphs_replay_the_padded_prompt_cuda(dtype):
    """The GPT prefill's graphs (tts.fast.prefill), as the decoder runs them (the GPT cast,
    under autocast in half precision): a bucket's eager first call, its capturing second call
    and its replays give the same bits as the prefill run eagerly on the prompt padded to the
    bucket, for every length of the bucket; against the prompt at its own length, step 0's
    logits and the real positions' keys within 1e-5 (float32) or the GPT's cast bound (bf16,
    relative)."""
    from tts.fast import padded_graphs, prefill

    gpt = _gpt_small_cuda(dtype)
    runner = prefill.runner_for(gpt)
    runner.clear()
    gen = torch.Generator(device="cuda").manual_seed(12)
    half = dtype != torch.float32
    bound = HALF_BOUNDS["cast"][dtype] if half else 1e-5
    counts, worst = [], 0.0
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=half):
        for rows, n in ((1, 40), (1, 45), (1, 64), (1, 33), (2, 50), (1, 70)):
            emb = torch.randn(rows, n, gpt.model_dim, device="cuda", generator=gen) * 0.5
            got = runner(emb)
            length = -(-n // prefill.BUCKET) * prefill.BUCKET
            frames = torch.full((rows,), n, device="cuda")
            want = prefill._prefill_padded(runner.module, padded_graphs.padded(emb, length), frames)
            assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True)), (rows, n)
            alone = prefill._prefill(runner.module, emb)
            for g, a in ((got[0], alone[0]), (got[1][:, :, :, :n], alone[1])):
                rel = float((g.float() - a.float()).norm() / a.float().norm())
                assert rel <= bound, (rows, n, rel)
                worst = max(worst, rel)
            counts.append((runner.captures, runner.replays))
    # 1 x 64: eager, capture, replay, replay; 2 x 64: eager; 1 x 96: eager
    assert counts == [(0, 0), (1, 0), (1, 1), (1, 2), (1, 2), (1, 2)]
    REPORT.append({"case": f"prefill_graphs_{dtype}", "worst_rel_vs_unpadded": worst})
    _write_report()


def test_campplus_graphs_replay_the_padded_model_cuda():
    """CAMPPlus's graphs (tts.fast.conditioning.campplus_runner), as the Engine runs it
    (float32): a bucket's eager first call, its capturing second call and its replays give
    the same bits as CAMPPlus run eagerly on the filterbanks padded to the bucket, for every
    length of the bucket; against the unpadded model within 1e-5 (relative); nothing waits
    for the host meanwhile (CUDA's sync debug mode raises on a synchronisation)."""
    from tts.fast import conditioning, padded_graphs
    from tts.models.campplus import PLAIN_FORWARD
    from tts.parity import audio_cases

    root = next((fs.root for fs, _ in CASES if fs.name == "s2mel-small"), None)
    if root is None:
        pytest.skip("s2mel-small fixture set not found")
    # A model of its own (not the cached one other tests ran), so that the counts start at zero.
    model = audio_cases._campplus.__wrapped__(root, "cuda", torch.float32)
    runner = conditioning.campplus_runner(model)
    bucket = conditioning.CAMPPLUS_BUCKET
    gen = torch.Generator(device="cuda").manual_seed(10)
    counts, worst = [], 0.0
    with torch.no_grad():
        inputs = [
            torch.randn(1, n, 80, device="cuda", generator=gen) for n in (300, 301, 384, 263, 390)
        ]
        got = []
        torch.cuda.set_sync_debug_mode("error")
        try:
            for x in inputs:
                got.append(runner(x))
                counts.append((runner.captures, runner.replays))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        for x, out in zip(inputs, got, strict=True):
            n = x.size(1)
            frames = torch.tensor([n], device="cuda")
            want = PLAIN_FORWARD(model, padded_graphs.padded(x, -(-n // bucket) * bucket), frames)
            assert torch.equal(out, want), n
            alone = model(x)
            rel = float((out - alone).norm() / alone.norm())
            assert rel <= 1e-5, (n, rel)
            worst = max(worst, rel)
    # bucket 384: eager, capture, replay, replay; 512: eager
    assert counts == [(0, 0), (1, 0), (1, 1), (1, 2), (1, 2)]
    REPORT.append({"case": "campplus_graphs_float32", "worst_rel_vs_unpadded": worst})
    _write_report()


def test_batched_conditioning_equals_one_by_one_cuda():
    """float32 on CUDA, as tests/test_semantic.py and tests/test_gpt.py on the CPU: w2v-bert
    features of three waveforms of different lengths in one forward
    (``SemanticFeatures.batch``) equal each computed alone, and ``merge_emovec`` of two
    same-shape inputs (one encoder pass of both) equals the two passes, up to float rounding."""
    from safetensors.torch import load_file

    from tts.checkpoints import CheckpointSet
    from tts.models.w2v_bert import SemanticFeatures

    root = next((fs.root for fs, _ in CASES if fs.name == "s2mel-small"), None)
    if root is None:
        pytest.skip("s2mel-small fixture set not found")
    golden = load_file(str(root / "golden.safetensors"))
    sem = SemanticFeatures.from_checkpoints(CheckpointSet.open(root), device="cuda")
    odd, even = golden["resample.wave_16k"], golden["w2v.even.wave_16k"]
    waves = [even, odd, odd[..., : odd.shape[-1] * 2 // 3]]
    for wave, got in zip(waves, sem.batch(waves), strict=True):
        alone = sem(wave)
        assert got.shape == alone.shape
        torch.testing.assert_close(got, alone, atol=5e-5, rtol=1e-5)

    gpt = _gpt_small_cuda()
    gpt_golden = load_file(
        str(next(fs.root for fs, _ in CASES if fs.name == "gpt-small") / "golden.safetensors")
    )
    feat, lens = gpt_golden["b2.emo_feat"].cuda(), gpt_golden["b2.emo_lens"].cuda()
    with torch.no_grad():
        got = gpt.merge_emovec(feat, feat.flip(0), lens, lens.flip(0), alpha=0.4)
        base, emo = gpt.get_emovec(feat, lens), gpt.get_emovec(feat.flip(0), lens.flip(0))
    torch.testing.assert_close(got, base + 0.4 * (emo - base), atol=1e-6, rtol=1e-5)


def test_graph_decoder_matches_eager_cuda():
    """Sampling through CUDA graphs vs the plain loop, same seed: same codes (beams 1 and 3)."""
    from tts.fast.decode import generate as fast_generate
    from tts.generation import GenerationConfig
    from tts.generation import generate as plain_generate

    model = _gpt_small_cuda()
    torch.manual_seed(0)
    prefix = torch.randn(2, 30, model.model_dim, device="cuda") * 0.5
    for beams in (1, 3):
        cfg = GenerationConfig(num_beams=beams, max_mel_tokens=300, warn_on_limit=False)
        outs = []
        for fn in (plain_generate, fast_generate):
            gen = torch.Generator(device="cuda").manual_seed(7)
            outs.append(fn(model, prefix, None, cfg, generator=gen))
        agree = (
            float((outs[0].codes == outs[1].codes).float().mean())
            if (outs[0].codes.shape == outs[1].codes.shape)
            else 0.0
        )
        REPORT.append({"case": f"graph_vs_eager_sampling_beams{beams}", "agreement": agree})
        _write_report()
        assert outs[0].codes.shape == outs[1].codes.shape
        assert agree == 1.0, f"beams {beams}: only {agree:.3f} of the sampled codes agree"


def test_graph_decoder_draws_from_the_callers_generators_cuda():
    """The graph decoders draw from generators of their own, given the caller's state and
    giving it back: per-item generators, one of them given twice ([a, a, b]), sampling and
    beam sampling through the graph decoder (its "all finished?" test after every step, so
    that it runs no step past the end): the codes of the plain loop with the same generators,
    and the callers' generators then draw what the plain loop's draw."""
    from tts.fast.decode import generate as fast_generate
    from tts.generation import GenerationConfig
    from tts.generation import generate as plain_generate

    model = _gpt_small_cuda()
    torch.manual_seed(0)
    prefix = torch.randn(3, 30, model.model_dim, device="cuda") * 0.5
    for beams in (1, 3):
        cfg = GenerationConfig(num_beams=beams, max_mel_tokens=120, warn_on_limit=False)
        outs, after = [], []
        for fast in (False, True):
            a, b = (torch.Generator(device="cuda").manual_seed(s) for s in (7, 8))
            gens = [a, a, b]
            if fast:
                outs.append(fast_generate(model, prefix, None, cfg, generator=gens,
                                          check_every=1))  # fmt: skip
            else:
                outs.append(plain_generate(model, prefix, None, cfg, generator=gens))
            after.append([torch.rand(3, device="cuda", generator=g) for g in (a, b)])
        assert torch.equal(outs[0].codes, outs[1].codes), f"beams {beams}"
        for x, y in zip(*after, strict=True):
            assert torch.equal(x, y), f"beams {beams}: the callers' generators went elsewhere"
        REPORT.append({"case": f"callers_generators_beams{beams}", "identical": True})
        _write_report()


def test_failed_capture_leaves_the_generators_as_they_were_cuda():
    """A capture that fails (a host synchronisation inside it) raises, and the generator it
    drew from and the default CUDA generator then draw eagerly what they would have drawn
    without it (torch leaves both in capture mode after a failed capture_end; their next
    eager draw raised)."""
    from tts.fast.graphs import capture

    gen, twin = (torch.Generator(device="cuda").manual_seed(3) for _ in range(2))
    default_state = torch.cuda.get_rng_state()

    def fn():
        torch.rand(4, device="cuda", generator=gen)
        torch.cuda.synchronize()  # not allowed while capturing

    with pytest.raises(RuntimeError):
        capture(torch.cuda.CUDAGraph(), fn, stream=torch.cuda.Stream(), generators=[gen])
    assert torch.equal(torch.rand(4, device="cuda", generator=gen),
                       torch.rand(4, device="cuda", generator=twin))  # fmt: skip
    after = torch.rand(4, device="cuda")
    torch.cuda.set_rng_state(default_state)
    assert torch.equal(after, torch.rand(4, device="cuda"))


def test_decoder_goes_on_eagerly_after_a_failed_capture_cuda(monkeypatch):
    """The decode step's second capture fails: the decoder records the fallback, runs the rest
    eagerly from its own generators, and gives the plain loop's codes, with the callers'
    generators left where the plain loop's are."""
    from tts import fast
    from tts.fast import graphs
    from tts.fast.decode import generate as fast_generate
    from tts.generation import GenerationConfig
    from tts.generation import generate as plain_generate

    real, made = graphs.capture, []

    def failing_second(graph, fn, **kwargs):
        made.append(graph)
        if len(made) != 2:
            return real(graph, fn, **kwargs)

        def fn_and_sync():
            fn()
            torch.cuda.synchronize()  # not allowed while capturing

        return real(graph, fn_and_sync, **kwargs)

    model = _gpt_small_cuda()
    torch.manual_seed(0)
    prefix = torch.randn(3, 30, model.model_dim, device="cuda") * 0.5
    cfg = GenerationConfig(num_beams=3, max_mel_tokens=120, warn_on_limit=False)
    outs, after = [], []
    before = len(fast.FALLBACKS)
    for fast_path in (False, True):
        gens = [torch.Generator(device="cuda").manual_seed(s) for s in (7, 8, 9)]
        if fast_path:
            monkeypatch.setattr(graphs, "capture", failing_second)
            with pytest.warns(RuntimeWarning, match="capture"):
                outs.append(fast_generate(model, prefix, None, cfg, generator=gens,
                                          check_every=1, bucket=16))  # fmt: skip
        else:
            outs.append(plain_generate(model, prefix, None, cfg, generator=gens))
        after.append([torch.rand(3, device="cuda", generator=g) for g in gens])
    assert len(made) >= 2, "the decoder captured fewer than two graphs"
    assert [w for w, _ in fast.FALLBACKS[before:]] == ["GPT decode step CUDA graph capture"]
    assert torch.equal(outs[0].codes, outs[1].codes)
    for x, y in zip(*after, strict=True):
        assert torch.equal(x, y), "the callers' generators went elsewhere"
    torch.rand(3, device="cuda")  # the default generator draws too
    REPORT.append({"case": "decoder_after_failed_capture", "identical": True})
    _write_report()


def test_capture_while_another_thread_synchronises_cuda():
    """Captures in thread-local mode: another thread's copies to the host and synchronisations
    of its own stream meanwhile fail none of them (in global mode each fails a capture:
    scripts/device/capture_threads.py, run BU), and each replay computes what it captured.
    A device-wide synchronisation fails a capture in either mode, so the thread makes none."""
    import threading

    from tts.fast.graphs import capture

    stop, errors = threading.Event(), []

    def busy():
        try:
            x = torch.randn(256, 256, device="cuda")
            while not stop.is_set():
                float((x @ x)[0, 0])  # a kernel, an allocation, a copy to the host, a wait
                torch.cuda.current_stream().synchronize()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    worker = threading.Thread(target=busy)
    worker.start()
    try:
        stream, x = torch.cuda.Stream(), torch.randn(64, 64, device="cuda")
        for i in range(50):
            graph, out = torch.cuda.CUDAGraph(), []
            capture(graph, lambda out=out, i=i: out.append(x * i + 1), stream=stream)
            graph.replay()
            assert torch.equal(out[0], x * i + 1), f"capture {i}"
    finally:
        stop.set()
        worker.join()
    assert not errors, errors


@pytest.mark.parametrize("bucket", [16, 48])
@pytest.mark.parametrize("variant", ["graph", "graphf", "graphfi"])
def test_graphs_captured_ahead_replay_the_eager_steps_cuda(variant, bucket):
    """Graphs captured ahead (at the "all finished?" test, while queued steps run), or at a
    bucket's first step, replay exactly what the same decoder computes eagerly: identical codes
    and scores in bfloat16 (same kernels, same draws), beam sampling and sampling, with several
    buckets between two tests (16) or several tests in a bucket (48). Only the first step runs
    outside a graph."""
    from tts import fast
    from tts.fast.decode import VARIANTS
    from tts.fast.decode import generate as fast_generate
    from tts.generation import GenerationConfig

    dtype = torch.bfloat16
    model = _gpt_small_cuda(dtype)
    torch.manual_seed(0)
    prefix = (torch.randn(2, 30, model.model_dim, device="cuda") * 0.5).to(dtype)
    before = len(fast.FALLBACKS)
    for beams in (1, 3):
        cfg = GenerationConfig(
            num_beams=beams, do_sample=True, max_mel_tokens=150, warn_on_limit=False
        )
        outs, stats = [], []
        for kwargs in ({"use_graph": False}, {"ahead": True}, {"ahead": False}):
            stats.append({})
            gen = torch.Generator(device="cuda").manual_seed(11)
            with torch.autocast("cuda", dtype=dtype):
                outs.append(
                    fast_generate(
                        model,
                        prefix,
                        None,
                        cfg,
                        generator=gen,
                        output_scores=True,
                        bucket=bucket,
                        stats=stats[-1],
                        **VARIANTS[variant],
                        **kwargs,
                    )
                )
        assert len(fast.FALLBACKS) == before, f"fell back: {fast.FALLBACKS[before:]}"
        assert [s["eager_steps"] for s in stats] == [stats[0]["steps"], 1, 1]
        for out in outs[1:]:
            assert torch.equal(outs[0].codes, out.codes), f"beams {beams}"
            assert torch.equal(outs[0].scores, out.scores), f"beams {beams}"
        REPORT.append(
            {
                "case": f"captured_ahead_{variant}_bucket{bucket}_beams{beams}",
                "steps": stats[1]["steps"],
                "graphs": stats[1]["graphs"],
                "identical": True,
            }
        )
        _write_report()


# The decoder variants of tts.fast.decode.VARIANTS beyond graph / graphc (swap reorder, fused
# compiled layers, Inductor-reduction projections, the few-row Triton kernels), through CUDA
# graphs.
NEW_VARIANTS = (
    "graphr",
    "graphf",
    "graphfr",
    "graphk",
    "graphka",
    "graphfi",
    "graphki",
    "graphkp",
    "graphkn",
    "graphkt",
    "graphkr",
    "graphkk",
    "graphke",
)
GEN = [(fs, c) for fs, c in CASES if parity.case_id(c).startswith("gen_")]


@pytest.mark.parametrize("variant", NEW_VARIANTS)
@pytest.mark.parametrize("item", GEN, ids=[_id(c) for c in GEN])
def test_decoder_variant_cases_cuda(item, variant):
    """The greedy / beam parity fixtures through each decoder variant (float32, TF32 off)."""
    from tts import fast
    from tts.fast import patched
    from tts.fast.decode import VARIANTS

    fs, case = item
    before = len(fast.FALLBACKS)
    with patched(gpt=True, s2mel=False, bigvgan=False, gpt_options=VARIANTS[variant]):
        comparisons = parity.run_case(fs, case, parity.RunOptions(device="cuda"))
    _record(item, f"fast-float32-{variant}", comparisons)
    failures = [f for c in comparisons if (f := c.failure())]
    assert comparisons and not failures, "\n".join(failures)
    assert len(fast.FALLBACKS) == before, f"fast path fell back: {fast.FALLBACKS[before:]}"


def _first_difference(a: torch.Tensor, b: torch.Tensor) -> int:
    """The first step where two code matrices differ (their common length if none)."""
    n = min(a.size(1), b.size(1))
    diff = (a[:, :n] != b[:, :n]).any(dim=0).nonzero()
    return int(diff[0, 0]) if diff.numel() else n


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("variant", NEW_VARIANTS)
def test_decoder_variant_matches_graph_cuda(variant, dtype):
    """Each variant against the graph decoder, same seed, 160 codes in 32-position buckets
    (graphs for 5 buckets, and both cache parities with the swap reorder), beams 1 and 3,
    sampling and greedy / beam search. graphr moves the same values as graph: identical codes
    and scores. The fused variants round differently (Inductor's float32 LayerNorm / GELU /
    sums; in bf16 no autocast casts): in float32 the first two steps' scores (the second is
    the fused stack's first) must agree to 1e-4 and greedy / beam-search codes must be equal (a
    sampled code may flip where a draw falls within rounding of a boundary: reported); in bf16
    the agreement is only reported. The fused stack must really run (no fallback)."""
    from tts import fast
    from tts.fast.decode import VARIANTS
    from tts.fast.decode import generate as fast_generate
    from tts.generation import GenerationConfig

    model = _gpt_small_cuda(dtype)
    torch.manual_seed(0)
    prefix = (torch.randn(2, 30, model.model_dim, device="cuda") * 0.5).to(dtype)
    options = VARIANTS[variant]
    autocast = torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32)
    before = len(fast.FALLBACKS)
    for beams in (1, 3):
        for sample in (False, True):
            cfg = GenerationConfig(
                num_beams=beams, do_sample=sample, max_mel_tokens=160, warn_on_limit=False
            )
            outs, stats = [], {}
            for kwargs in ({}, {**options, "stats": stats}):
                gen = torch.Generator(device="cuda").manual_seed(7)
                with autocast:
                    outs.append(
                        fast_generate(
                            model,
                            prefix,
                            None,
                            cfg,
                            generator=gen,
                            output_scores=True,
                            bucket=32,
                            **kwargs,
                        )
                    )
            ref, out = outs
            assert len(fast.FALLBACKS) == before, f"fell back: {fast.FALLBACKS[before:]}"
            assert stats["fused"] == bool(options.get("fused"))
            same = ref.codes.shape == out.codes.shape
            agree = float((ref.codes == out.codes).float().mean()) if same else 0.0
            first = _first_difference(ref.codes, out.codes)
            REPORT.append(
                {
                    "case": f"{variant}_vs_graph_{str(dtype)[6:]}_beams{beams}_"
                    f"{'sample' if sample else 'greedy'}",
                    "agreement": agree,
                    "first_difference": first,
                }
            )
            _write_report()
            if variant == "graphr":
                assert same and torch.equal(ref.codes, out.codes)
                assert torch.equal(ref.scores, out.scores)
            elif dtype == torch.float32:
                assert first >= 2, f"{variant} beams {beams}: codes differ at step {first}"
                torch.testing.assert_close(out.scores[:2], ref.scores[:2], rtol=1e-4, atol=1e-4)
                if not sample:
                    assert same and agree == 1.0, f"{variant} beams {beams}: {agree:.3f}"


@pytest.mark.parametrize("item", CASES, ids=[_id(c) for c in CASES])
def test_case_cuda_float32(item):
    try:
        comparisons = _run(item, torch.float32)
    except Exception as exc:
        _skip_if_env(exc)
        raise
    failures = [f for c in comparisons if (f := c.failure())]
    assert comparisons and not failures, "\n".join(failures)


def _half_mode(case_id: str) -> tuple[str | None, str | None]:
    """(mode, None) for a case tested in half precision, else (None, reason)."""
    for prefix, reason in HALF_NOT_APPLICABLE.items():
        if case_id.startswith(prefix):
            return None, reason
    if case_id.startswith(HALF_CAST):
        return "cast", None
    if case_id.startswith(HALF_AUTOCAST):
        return "autocast", None
    return None, FLOAT32_ONLY


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("item", CASES, ids=[_id(c) for c in CASES])
def test_case_cuda_half(item, dtype):
    mode, reason = _half_mode(parity.case_id(item[1]))
    if mode is None:
        pytest.skip(f"not applicable in half precision: {reason}")
    try:
        if mode == "cast":
            comparisons = _run(item, dtype, label=f"{dtype}-cast")
        else:
            with torch.autocast("cuda", dtype=dtype, cache_enabled=False):
                comparisons = _run(item, torch.float32, label=f"{dtype}-autocast")
    except Exception as exc:
        _skip_if_env(exc)
        raise
    bound = HALF_BOUNDS[mode][dtype]
    bad = []
    for c in comparisons:
        a, e = c.actual.detach().float().cpu(), c.expected.detach().float().cpu()
        if c.exact or not c.expected.dtype.is_floating_point:
            continue  # integer outputs (code ids, lengths) are reported, not bounded
        if tuple(a.shape) != tuple(e.shape):
            bad.append(f"{c.key}: shape {list(a.shape)} != {list(e.shape)}")
            continue
        if not torch.isfinite(a).all():
            bad.append(f"{c.key}: non-finite values")
            continue
        rel = float((a - e).norm() / e.norm().clamp_min(1e-30))
        if rel > bound:
            bad.append(f"{c.key}: relative L2 error {rel:.3g} > {bound:g}")
    assert not bad, "\n".join(bad)


# -- the Engine as the workflow runs it: batched rows, fast paths vs the plain paths ----------


@pytest.fixture(scope="module")
def demo_engines(tmp_path_factory):
    """The DEMO set opened twice on CUDA in float32: fast paths (default decoder) and plain."""
    from tts.demo import write_demo_checkpoints
    from tts.pipeline import Engine

    root = write_demo_checkpoints(tmp_path_factory.mktemp("demo_gpu"), seed=3)
    return (
        Engine.open(root, device="cuda", fast=True),
        Engine.open(root, device="cuda", fast=False),
    )


def _planned_rows(engine):
    """Three rows with different speakers, text lengths and segment counts. Their text plans
    are built from token ids directly (the GPU machine has no text normaliser; the workflow's
    CPU text stage makes these plans there)."""
    from pathlib import Path

    from tts.pipeline import SynthesisRequest
    from tts.text.frontend import TextPlan

    vocab = engine.part("gpt").text_embedding.num_embeddings - 2
    speakers = sorted((Path(__file__).resolve().parents[1] / "config" / "speakers").glob("*.wav"))
    segments = [[[5, 9, 11, 40, 7]], [[12, 3, 3, 8, 60, 2, 17]], [[30, 31, 32], [33, 34, 35, 36]]]
    reqs = []
    for i, segs in enumerate(segments):
        segs = [[t % vocab for t in s] for s in segs]
        ids = [t for s in segs for t in s]
        plan = TextPlan(
            text=f"row {i}",
            normalized=f"row {i}",
            tokens=[str(t) for t in ids],
            ids=ids,
            segments=[[str(t) for t in s] for s in segs],
            segment_ids=segs,
        )
        reqs.append(
            SynthesisRequest(
                id=f"r{i}",
                text=f"row {i}",
                speaker=speakers[i % len(speakers)],
                seed=7 + i,
                sampling={
                    "max_mel_tokens": 40,
                    "diffusion_steps": 4,
                    "num_beams": 3,
                    "do_sample": True,
                },
                text_plan=plan,
            )
        )
    return reqs


@pytest.mark.parametrize("decoder", ["graphkk", "graphke"])
@pytest.mark.parametrize("items", [16, 2])
def test_engine_fast_batched_rows_equal_the_plain_path_cuda(
    demo_engines, items, decoder, monkeypatch
):
    """float32: the batched GPT stage through the Engine's default fast decoder (graphkk) and
    the workflow's (graphke) gives the plain path's codes and (within float32 rounding)
    latents, and the fast render the same waveform. ``items`` per GPT call: 16 = the four
    segments in one call (12 rows with the beams, above the Triton projections' 8: the fused
    pieces run, compiled or op by op); 2 = calls of 6 rows (Triton)."""
    fast, plain = demo_engines
    assert fast.fast and not plain.fast
    monkeypatch.setattr(fast, "gpt_decoder", decoder)
    fast.gpt_batch_items = plain.gpt_batch_items = items
    from tts.fast import decode

    ran = []  # what each fast generation call's projections ran on
    real = decode.generate

    def spy(*args, **kwargs):
        stats = kwargs.setdefault("stats", {})
        out = real(*args, **kwargs)
        ran.append(stats.get("matmul"))
        return out

    monkeypatch.setattr(decode, "generate", spy)
    reqs = _planned_rows(fast)
    spks = [fast.speaker_conditioning(r.speaker) for r in reqs]
    emos = [fast.emotion_conditioning(r, s) for r, s in zip(reqs, spks, strict=True)]
    tok_fast = fast.semantic_tokens(reqs, spks, emos)
    tok_plain = plain.semantic_tokens(reqs, spks, emos)
    if fast.gpt_decoder in ("graphkp", "graphkt", "graphkk", "graphke"):
        assert ran == (["mm"] if items == 16 else ["triton", "triton"]), ran
    worst = {"latent": 0.0, "wav": 0.0}
    for a, b in zip(tok_fast, tok_plain, strict=True):
        assert a.ok and b.ok, (a.error, b.error)
        assert a.value.keys() == b.value.keys()
        for key in a.value:
            if key.startswith("latent_"):
                torch.testing.assert_close(a.value[key], b.value[key], rtol=1e-4, atol=1e-4)
                worst["latent"] = max(
                    worst["latent"], float((a.value[key] - b.value[key]).abs().max())
                )
            else:
                assert torch.equal(a.value[key], b.value[key]), (a.id, key)
    wav_fast = fast.render(reqs, spks, [t.value for t in tok_plain])
    wav_plain = plain.render(reqs, spks, [t.value for t in tok_plain])
    for a, b in zip(wav_fast, wav_plain, strict=True):
        assert a.ok and b.ok, (a.error, b.error)
        assert a.value["wav"].shape == b.value["wav"].shape
        torch.testing.assert_close(a.value["wav"], b.value["wav"], rtol=1e-3, atol=1e-3)
        worst["wav"] = max(worst["wav"], float((a.value["wav"] - b.value["wav"]).abs().max()))
    REPORT.append(
        {
            "case": f"engine_fast_batched_vs_plain_float32_items{items}_{decoder}",
            "worst_abs": worst,
            "decoder": fast.gpt_decoder,
            "matmul": ran,
        }
    )
    _write_report()


def test_graphke_process_never_imports_dynamo_cuda():
    """graphke, the workflow's decoder, in a new process on CUDA: 2 items x 3 beams (the
    Triton projections) and 16 x 3 (the fused pieces op by op), each with CUDA graphs captured
    and replayed over two cache windows, nothing falling back, and TorchDynamo never
    imported (graphkk's compiled pieces import it)."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = """
        import sys
        import torch
        from test_gpu import _gpt_small_cuda
        from tts import fast
        from tts.fast import decode
        from tts.generation import GenerationConfig
        model = _gpt_small_cuda()
        cfg = GenerationConfig(num_beams=3, max_mel_tokens=100, warn_on_limit=False)
        for items in (2, 16):
            prefix = torch.randn(items, 30, model.model_dim, device="cuda") * 0.5
            stats = {}
            out = decode.generate(model, prefix, None, cfg, stats=stats,
                                  **decode.VARIANTS["graphke"])
            torch.cuda.synchronize()
            assert stats["fused"] and stats["captured"] >= 2, stats
            assert out.codes.shape[0] == items, out.codes.shape
            print(items, stats["matmul"], stats["captured"])
        assert not fast.FALLBACKS, fast.FALLBACKS
        assert "torch._dynamo" not in sys.modules
        print("ok")
    """
    env = {**os.environ, "PYTHONPATH": f"{root}:{root / 'tests'}"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("ok"), proc.stdout
    REPORT.append({"case": "graphke_process_without_dynamo", "runs": proc.stdout.split("\n")[:2]})
    _write_report()


def test_batched_render_equals_each_segment_alone_cuda(demo_engines, monkeypatch):
    """float32 on CUDA: the fast render's padded solve batches (render_batch_items 16; a
    fourth row shares the first row's speaker, so segments of different rows batch together)
    give each row the waveform of its segments solved one by one (render_batch_items 1), within
    the CPU test's bound."""
    from dataclasses import replace

    from test_batching import record_solve_sizes

    fast, plain = demo_engines
    reqs = _planned_rows(fast)
    reqs.append(replace(reqs[2], id="r3", speaker=reqs[0].speaker, seed=21))
    spks = [fast.speaker_conditioning(r.speaker) for r in reqs]
    emos = [fast.emotion_conditioning(r, s) for r, s in zip(reqs, spks, strict=True)]
    toks = [t.value for t in plain.semantic_tokens(reqs, spks, emos)]
    sizes = record_solve_sizes(monkeypatch)
    monkeypatch.setattr(fast, "render_batch_items", 1)
    alone = fast.render(reqs, spks, toks)
    assert set(sizes) == {1}, sizes
    sizes.clear()
    monkeypatch.setattr(fast, "render_batch_items", 16)
    batched = fast.render(reqs, spks, toks)
    assert max(sizes) > 1, sizes
    worst = 0.0
    for a, b in zip(alone, batched, strict=True):
        assert a.ok and b.ok, (a.error, b.error)
        assert a.value["wav"].shape == b.value["wav"].shape, a.id
        worst = max(worst, float((a.value["wav"] - b.value["wav"]).abs().max()))
        torch.testing.assert_close(b.value["wav"], a.value["wav"], rtol=0, atol=1e-5, msg=a.id)
    REPORT.append({"case": "render_batched_vs_alone_float32", "worst_abs": worst, "sizes": sizes})
    _write_report()


def test_speaker_conditioning_queues_campplus_while_w2v_bert_runs_cuda(demo_engines, monkeypatch):
    """Between w2v-bert's forward and the length regulator (the semantic codec, the prompt's
    mel and CAMPPlus) a speaker conditioning makes no host-device synchronisation: nothing
    there holds the host until w2v-bert's kernels have run (CUDA's sync debug mode raises on
    one), so CAMPPlus's small kernels are queued meanwhile. The result is that of a
    conditioning without the mode (the reordering changes no value)."""
    from pathlib import Path

    fast, _ = demo_engines
    speaker = sorted((Path(__file__).resolve().parents[1] / "config" / "speakers").glob("*.wav"))[0]
    fast.clear_prompt_cache()
    want = fast.speaker_conditioning(speaker, emotion_too=True)
    features = fast.part("features")
    regulator = fast.part("s2mel").length_regulator
    batch, regulate = features.batch, regulator.forward
    entered = []

    def batch_then_strict(waves, *args):
        out = batch(waves, *args)
        torch.cuda.set_sync_debug_mode("error")
        entered.append("features")
        return out

    def lenient_regulate(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("default")
        entered.append("regulator")
        return regulate(*args, **kwargs)

    monkeypatch.setattr(features, "batch", batch_then_strict)
    monkeypatch.setattr(regulator, "forward", lenient_regulate)
    fast.clear_prompt_cache()
    try:
        got = fast.speaker_conditioning(speaker, emotion_too=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert entered == ["features", "regulator"], entered
    for name, value in want.items():
        assert torch.equal(got[name], value), name


# Relative L2 allowed between the w2v-bert features at each precision and float32's, at full
# width (1024 wide, 17 layers, HF's random initialisation, 500 frames). Estimated before any
# GPU ran them (2026-12-08, scripts/features_precision_estimate.py on the CPU): TF32 emulated
# by truncating every matrix product's inputs to 10 mantissa bits 0.0050-0.0054, CPU autocast
# fp16 0.0040 and bf16 0.032; each bound is about twice its estimate.
FEATURES_BOUNDS = {"tf32": 0.01, "float16": 0.01, "bfloat16": 0.06}


def test_features_precision_stays_within_its_bound_cuda():
    """The w2v-bert encoder at full width under each ``features_precision``: the features
    differ from float32's (the precision took effect) by at most its bound, come back float32,
    and leave TF32 off afterwards (tts.pipeline.configure_cudnn's setting for the rest)."""
    from importlib import resources

    from tts.models.w2v_bert import SemanticFeatures, build_w2v_bert

    cfg = json.loads(resources.files("tts.data").joinpath("w2v-bert-2.0.config.json").read_text())
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = build_w2v_bert(cfg)
    hidden_size = int(cfg["hidden_size"])
    ones = torch.ones(hidden_size, device="cuda")
    sem = SemanticFeatures(model, None, ones * 0, ones)
    feats = torch.randn(2, 500, 160, device="cuda")
    mask = torch.ones(2, 500, dtype=torch.long, device="cuda")
    mask[1, 380:] = 0  # a shorter second row, as a speaker and an emotion prompt batched
    with torch.no_grad():
        exact, _ = sem.hidden(feats, mask)
        for precision, bound in FEATURES_BOUNDS.items():
            got, _ = sem.hidden(feats, mask, precision=precision)
            assert got.dtype == torch.float32 and torch.isfinite(got).all()
            assert not torch.backends.cuda.matmul.allow_tf32
            assert not torch.backends.cudnn.allow_tf32
            for row, frames in ((0, 500), (1, 380)):
                want, have = exact[row, :frames], got[row, :frames]
                rel = float((have - want).norm() / want.norm())
                worst = float((have - want).abs().max())
                REPORT.append(
                    {
                        "case": f"features_{precision}_row{row}",
                        "rel_l2": rel,
                        "max_abs": worst,
                        "bound": bound,
                    }
                )
                _write_report()
                assert 0 < rel <= bound, (precision, row, rel)


def test_engine_features_precision_cuda(demo_engines):
    """An Engine opened with ``features_precision: tf32`` conditions a speaker with TF32
    features (not float32's bits; within the TF32 bound) and the rest of the conditioning
    from them, and leaves TF32 off for every later stage."""
    from pathlib import Path

    from tts.pipeline import Engine

    fast, _ = demo_engines
    speaker = sorted((Path(__file__).resolve().parents[1] / "config" / "speakers").glob("*.wav"))[0]
    tf32 = Engine.open(fast.cs.root, device="cuda", features_precision="tf32")
    assert tf32.provenance()["features_precision"] == "tf32"
    fast.clear_prompt_cache()
    want = fast.speaker_conditioning(speaker, emotion_too=True)
    got = tf32.speaker_conditioning(speaker, emotion_too=True)
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    a, b = got["spk_cond_emb"], want["spk_cond_emb"]
    rel = float((a - b).norm() / b.norm())
    REPORT.append({"case": "engine_features_tf32", "rel_l2": rel})
    _write_report()
    assert 0 < rel <= FEATURES_BOUNDS["tf32"]
    assert torch.equal(got["style"], want["style"]) and torch.equal(got["ref_mel"], want["ref_mel"])


def test_filterbanks_equal_the_transformers_extractor_cuda(tmp_path):
    """The w2v-bert input filterbanks on CUDA (cuFFT in float64, the statistics by numpy on
    the CPU) against the transformers extractor on the CPU: the CPU test's waves and bound."""
    from test_semantic import _extractor, _waves

    from tts.models.w2v_bert import filterbanks

    ext = _extractor(tmp_path)
    worst = 0.0
    for name, wave in _waves().items():
        ref = ext(
            wave.unsqueeze(0) if wave.dim() == 1 else wave, sampling_rate=16000, return_tensors="pt"
        )
        feats, mask = filterbanks(ext, wave, "cuda")
        assert feats.device.type == "cuda" and mask.device.type == "cuda", name
        assert torch.equal(mask.cpu(), ref["attention_mask"].long()), name
        worst = max(worst, float((feats.cpu() - ref["input_features"]).abs().max()))
        torch.testing.assert_close(feats.cpu(), ref["input_features"], atol=2e-5, rtol=0, msg=name)
    REPORT.append({"case": "w2vbert_filterbanks_cuda_vs_extractor", "worst_abs": worst})
    _write_report()


def test_triton_window_gather_equals_index_select_cuda():
    """The beam-reorder copy kernel on CUDA, full-size layout (24 layers, 20 heads, 64 dims)."""
    from tts.fast import gather

    if not gather.available(torch.zeros(1, device="cuda")):
        pytest.skip("Triton is not available")
    torch.manual_seed(0)
    src = torch.randn(24, 2, 9, 20, 300, 64, device="cuda", dtype=torch.bfloat16)
    idx = torch.tensor([2, 2, 0, 5, 4, 4, 8, 6, 6], device="cuda")
    for lo, end in ((0, 300), (117, 245), (200, 201)):
        dst = torch.zeros_like(src)
        gather.gather_window(src, dst, idx, lo, end)
        want = torch.zeros_like(src)
        want[..., lo:end, :] = src[..., lo:end, :].index_select(2, idx)
        assert torch.equal(dst, want), (lo, end)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_activation_at_vocoder_shapes_cuda(dtype):
    """The fused anti-aliased activation (one tile of activated samples per program, taps
    gathered from it) equals Activation1d at the vocoder's shapes: the first and last stages'
    channels and lengths, lengths that end inside a tile, both Snake kinds. float32: within
    1e-5 of the plain forward; bf16 input: the float32 result of that input rounded once."""
    from tts.fast.bigvgan import fused_activation
    from tts.models.bigvgan import Activation1d, Snake, SnakeBeta

    torch.manual_seed(0)
    for cls, channels, length in (
        (SnakeBeta, 768, 3444),
        (SnakeBeta, 24, 220419),
        (Snake, 48, 251),
        (SnakeBeta, 3, 1),
    ):
        act = cls(channels, logscale=True)
        with torch.no_grad():
            act.alpha.normal_(0, 0.3)
            if hasattr(act, "beta"):
                act.beta.normal_(0, 0.3)
        module = Activation1d(act).cuda()
        x = (torch.randn(2, channels, length, device="cuda") * 2).to(dtype)
        with torch.no_grad():
            want = module(x.float())
            got = fused_activation(module, x)
        assert got.dtype == dtype and got.shape == want.shape
        err = (got.float() - want).abs()
        if dtype == torch.float32:
            assert float(err.max()) <= 1e-5 * float(want.abs().max()), (channels, length)
        else:  # one rounding to bf16 (half an ulp: at most 2^-8 relative) on float32 sums
            bound = want.abs() * 2.0**-8 + 1e-5 * float(want.abs().max())
            assert bool((err <= bound).all()), (channels, length, float(err.max()))


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "float16"])
def test_vocoder_bias_and_residual_folding_cuda(precision):
    """The official-size vocoder with the convolutions' biases, the residuals and the stages'
    block means inside the kernels (:func:`fused_vocoder_forward`) gives the same bits as the
    plain forward with fused activations, in float32 and under bf16 / fp16 autocast (random
    weights and biases; 3 blocks per stage, so the mean's reciprocal is exercised)."""
    import json
    from importlib import resources

    from tts.bench import randomize_
    from tts.fast import FALLBACKS
    from tts.fast.bigvgan import fuse_activations
    from tts.models.bigvgan import BigVGAN
    from tts.precision import precision_context

    cfg = json.loads(
        resources.files("tts.data").joinpath("bigvgan_v2_22khz_80band_256x.json").read_text()
    )
    with torch.no_grad():
        torch.manual_seed(0)
        voc = randomize_(BigVGAN.from_config(cfg), seed=5).remove_weight_norm()
        for name, param in voc.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.1)  # randomize_ zeroes biases: make them count
        voc = voc.cuda().eval()
        fuse_activations(voc, "triton")
        mel = torch.randn(2, 80, 173, device="cuda")
        before = len(FALLBACKS)
        with precision_context(precision, torch.device("cuda")):
            got = voc(mel)
            want = BigVGAN.forward(voc, mel)  # the class's forward: activations fused only
    assert len(FALLBACKS) == before, FALLBACKS[before:]
    assert got.shape == (2, 1, 173 * 256)
    assert torch.equal(got, want), float((got.float() - want.float()).abs().max())


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_half_precision_estimator_gives_the_autocast_bits_cuda(precision):
    """At the official DiT size on CUDA, the solve's half-precision estimator (Linear / Conv1d
    weights stored in half) gives the same bits as the float32 estimator under the same
    autocast, both guidance branches of two rows at once, when its WaveNet convolutions run
    as 1-d ones; as the solve runs them (2-d, channels-last: other cuDNN kernels, other
    rounding) it is within the half-precision bound of the DiT's parity cases of the float32
    estimator without autocast, as the plain autocast is."""
    from tts.bench import bench_config, randomize_
    from tts.fast.s2mel import _FusedConv1d, fused
    from tts.models.s2mel import S2Mel
    from tts.precision import precision_context

    cfg, _, _ = bench_config(False)
    with torch.no_grad():
        s2mel = randomize_(S2Mel.from_config(cfg["s2mel"]), seed=7).cuda().eval()
    entry = fused(s2mel.cfm.estimator)
    half = entry.for_precision(precision)
    convs = [m for m in half.modules() if isinstance(m, _FusedConv1d)]
    assert convs and all(m.channels_last for m in convs)
    assert all(
        m.weight.unsqueeze(2).is_contiguous(memory_format=torch.channels_last) for m in convs
    )
    width = s2mel.cfm.estimator.cond_projection.in_features
    gen = torch.Generator().manual_seed(0)
    rows, frames = 4, 301
    args = [
        torch.randn(rows, 80, frames, generator=gen).cuda(),
        torch.randn(rows, 80, frames, generator=gen).cuda(),
        torch.full((rows,), frames, device="cuda"),
        torch.rand(rows, generator=gen).cuda(),
        torch.randn(rows, 192, generator=gen).cuda(),
        torch.randn(rows, frames, width, generator=gen).cuda(),
    ]
    half.transformer.drop = entry.estimator.transformer.drop = True
    with torch.no_grad():
        exact = entry.estimator(*args)
        with precision_context(precision, torch.device("cuda")):
            want = entry.estimator(*args)
            got = half(*args)
            for m in convs:
                m.set_channels_last(False)
            try:
                got_1d = half(*args)
            finally:
                for m in convs:
                    m.set_channels_last(True)
    assert torch.equal(got_1d, want), float((got_1d.float() - want.float()).abs().max())
    bound = HALF_BOUNDS["autocast"][torch.bfloat16 if precision == "bfloat16" else torch.float16]
    for name, out in (("channels-last", got), ("autocast", want)):
        rel = float((out.float() - exact).norm() / exact.norm())
        print(f"{precision} {name}: relative L2 error {rel:.3g} against float32")
        assert rel <= bound, (name, rel, bound)


def test_half_gpt_under_autocast_keeps_a_half_cache_and_the_fused_path_cuda():
    """How the Engine runs a bf16 GPT: weights cast, autocast on, a float32 prefix (autocast's
    LayerNorms return float32). The static cache is then in the weights' dtype (every key and
    value is a bf16 product, so nothing is rounded): the plain graph step gives the eager
    generation's codes, and the fused variant runs without falling back."""
    import copy

    from tts import fast
    from tts.checkpoints import CheckpointSet
    from tts.components import load_component
    from tts.fast import decode
    from tts.generation import GenerationConfig
    from tts.generation import generate as plain_generate

    root = next((fs.root for fs, _ in CASES if fs.name == "gpt-small"), None)
    if root is None:
        pytest.skip("gpt-small fixture set not found")
    model, _ = load_component("gpt", CheckpointSet.open(root))
    model = copy.deepcopy(model.eval()).to("cuda", torch.bfloat16)
    gen = torch.Generator().manual_seed(20)
    prefix = (torch.randn(2, 20, model.model_dim, generator=gen) * 0.5).cuda()
    valid = torch.ones(2, 20, dtype=torch.bool, device="cuda")
    valid[1, :3] = False
    cfg = GenerationConfig(
        num_beams=3, do_sample=False, max_mel_tokens=40, warn_on_limit=False, repetition_penalty=2.0
    )
    before = len(fast.FALLBACKS)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        # The keys / values autocast produces are bf16 values: a float32 cache holds nothing
        # a bf16 cache cannot (checked on the prefill, which writes every prompt position).
        wide = model.new_cache(2, 20, device="cuda", dtype=torch.float32)
        model.decode(prefix, wide, None)
        assert torch.equal(wide.k, wide.k.to(torch.bfloat16).float())
        assert torch.equal(wide.v, wide.v.to(torch.bfloat16).float())
        dec = decode.StaticDecoder(model, prefix, valid, cfg, reorder="swap", use_graph=True)
        assert dec.cache.k.dtype == torch.bfloat16
        graph = dec.run(check_every=8)
        stats: dict = {}
        fused = decode.generate(model, prefix, valid, cfg, stats=stats, **decode.VARIANTS["graphf"])
        table_stats: dict = {}
        table = decode.generate(
            model, prefix, valid, cfg, stats=table_stats, **decode.VARIANTS["graphfi"]
        )
        plain = plain_generate(model, prefix, valid, cfg)
    assert stats["fused"] and len(fast.FALLBACKS) == before, fast.FALLBACKS[before:]
    assert table_stats["fused"] and table_stats["reorder"] == "table"

    def agree(a, b):
        return float((a == b).float().mean()) if a.shape == b.shape else None

    REPORT.append(
        {
            "case": "bf16_autocast_codes_agreement",
            "graph_vs_plain": agree(graph.codes, plain.codes),
            "graphf_vs_plain": agree(fused.codes, plain.codes),
            "graphfi_vs_plain": agree(table.codes, plain.codes),
        }
    )
    _write_report()


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"]
)
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8])
def test_few_row_linear_kernels_cuda(rows, dtype, monkeypatch):
    """tts.fast.linear at the full GPT width on CUDA against the op-by-op computation (float32
    reference of the same rounding steps): float32 within 1e-5, bf16 / fp16 within the error
    two roundings may make (2^-7 of the rounded magnitudes); the KV write lands at the step's
    position only. In bf16 / fp16 the 1280-wide projections (qkv, out, fc) ran on the
    tensor-core kernel and proj (5120) on the CUDA-core one; in float32 all on CUDA cores."""
    from kernel_reference import CountedLaunches, assert_qkv_written
    from kernel_reference import assert_rounding_close as close
    from kernel_reference import linear_reference as ref

    from tts import fast
    from tts.fast import linear

    launches = {"mma": 0, "cuda_cores": 0}
    for attr, name in (("_mma_kernel", "mma"), ("_linear_kernel", "cuda_cores")):
        monkeypatch.setattr(linear, attr, CountedLaunches(launches, name, getattr(linear, attr)))
    torch.manual_seed(3)
    dim, heads = 1280, 20

    x = (torch.randn(rows, dim, device="cuda") + 0.3).to(dtype)
    h = torch.randn(rows, 4 * dim, device="cuda").to(dtype)
    ln = (
        torch.randn(dim, device="cuda").to(dtype),
        torch.randn(dim, device="cuda").to(dtype),
        1e-5,
    )
    for n, k, kwargs in (
        (3 * dim, dim, {"ln": ln}),
        (dim, dim, {"residual": x}),
        (4 * dim, dim, {"ln": ln, "gelu": True}),
        (dim, 4 * dim, {"residual": x}),
    ):
        w = (torch.randn(n, k, device="cuda") * k**-0.5).to(dtype)
        b = torch.randn(n, device="cuda").to(dtype)
        inp = h if k == 4 * dim else x
        close(linear.linear(inp, w, b, **kwargs), *ref(inp, w, b, **kwargs))
        if fast.pdl_available("cuda"):  # a programmatic dependent launch computes the same
            assert torch.equal(
                linear.linear(inp, w, b, pdl=True, **kwargs), linear.linear(inp, w, b, **kwargs)
            )
    w = (torch.randn(3 * dim, dim, device="cuda") * dim**-0.5).to(dtype)
    b = torch.randn(3 * dim, device="cuda").to(dtype)
    kv = torch.zeros(2, rows, heads, 40, dim // heads, device="cuda", dtype=dtype)
    pos = torch.tensor([17], device="cuda")
    q = linear.linear(x, w, b, ln=ln, kv=(kv[0], kv[1], pos, dim))
    assert_qkv_written(q, kv, 17, *ref(x, w, b, ln=ln))
    per = 3 if fast.pdl_available("cuda") else 1  # with PDL each projection runs twice more
    if dtype == torch.float32:
        assert launches == {"mma": 0, "cuda_cores": 4 * per + 1}, launches
    else:
        assert launches == {"mma": 3 * per + 1, "cuda_cores": per}, launches


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("rows", [1, 3, 8])
def test_decode_head_kernels_cuda(rows, dtype):
    """tts.fast.linear.decode_head at the GPT's full size on CUDA (1280 -> 8194): within the
    error two roundings may make of tts.fast.fused._head op by op (ln_f and final_norm in
    float32, the head in the weights' dtype), and the same bits with PDL as without."""
    from kernel_reference import assert_rounding_close as close
    from kernel_reference import linear_reference as ref

    from tts import fast
    from tts.fast import fused, linear

    torch.manual_seed(4)
    dim, vocab = 1280, 8194
    x = (torch.randn(rows, 1, dim, device="cuda") * 3 + 0.4).to(dtype)
    f = (torch.randn(dim, device="cuda").to(dtype), torch.randn(dim, device="cuda").to(dtype), 1e-5)
    n = (torch.rand(dim, device="cuda").to(dtype), torch.randn(dim, device="cuda").to(dtype), 1e-5)
    w = (torch.randn(vocab, dim, device="cuda") * dim**-0.5).to(dtype)
    b = torch.randn(vocab, device="cuda").to(dtype)
    out = torch.empty(rows, vocab, device="cuda")
    linear.decode_head(x, *f, *n, w, b, out, False)
    h = fused._norm(fused._norm(x[:, -1].float(), *f), *n).to(dtype)
    close(out.to(dtype), *ref(h, w, b))
    if fast.pdl_available("cuda"):
        again = torch.empty_like(out)
        linear.decode_head(x, *f, *n, w, b, again, False, pdl=True)
        assert torch.equal(again, out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("rows,end", [(3, 200), (3, 1000), (48, 700)])
def test_triton_decode_attention_equals_sdpa_cuda(rows, end, dtype):
    """tts.fast.attention on CUDA against SDPA in float64 at the GPT's head shape (20 x 64),
    over a strided window of a larger cache with left padding and unwritten positions masked,
    directly and through a random source-row table (against SDPA over the rows it names):
    float32 within 1e-5, bf16 within one ulp of the output; reading the window before the PDL
    wait (``written``), with and without PDL, gives the same output exactly."""
    from tts.fast import attention

    torch.manual_seed(5)
    heads, hd = 20, 64
    kv = torch.randn(2, rows, heads, end + 100, hd, device="cuda").to(dtype)
    k, v = kv[0][:, :, :end], kv[1][:, :, :end]
    q = torch.randn(rows, heads, 1, hd, device="cuda").to(dtype)
    keys = torch.ones(rows, end, dtype=torch.bool, device="cuda")
    keys[:, end - 7 :] = False
    keys[1, :150] = False
    mask = torch.zeros(rows, end, dtype=dtype, device="cuda").masked_fill_(~keys, float("-inf"))
    mask = mask[:, None, None, :]
    src = torch.randint(0, rows, (rows, end + 100), dtype=torch.int32, device="cuda")[:, :end]
    written = torch.tensor([end - 9], device="cuda")
    for table in (None, src):  # and through a source-row table (reorder="table")
        out = attention.attend(q, k, v, mask, src=table)
        for pdl in (False, True):  # the window read before the PDL wait: the same output
            ahead = attention.attend(q, k, v, mask, src=table, pdl=pdl, written=written)
            assert torch.equal(ahead, out), (table is None, pdl)
        kt, vt = (
            (k, v)
            if table is None
            else (attention.gather_rows(k, table), attention.gather_rows(v, table))
        )
        want = torch.nn.functional.scaled_dot_product_attention(
            q.double(), kt.double(), vt.double(), attn_mask=mask.double()
        )
        err = (out.double() - want).abs()
        if dtype == torch.float32:
            assert float(err.max()) < 1e-5
        else:
            assert bool((err <= want.abs() * 2**-7 + 1e-6).all()), float(err.max())


def _identical_pair(dtype, first: dict, second: dict):
    """Generate with the small GPT through two decoder option sets from the same seed, through
    CUDA graphs (beam sampling, then beam search; 160 codes in 32-position buckets, a batch of
    2), assert that their codes and scores are identical and that no fast path fell back, and
    yield ``(sample, stats)`` per mode (the decoders' stats, in the order given)."""
    from tts import fast
    from tts.fast.decode import generate as fast_generate
    from tts.generation import GenerationConfig

    model = _gpt_small_cuda(dtype)
    torch.manual_seed(0)
    prefix = (torch.randn(2, 30, model.model_dim, device="cuda") * 0.5).to(dtype)
    before = len(fast.FALLBACKS)
    for sample in (True, False):
        cfg = GenerationConfig(
            num_beams=3, do_sample=sample, max_mel_tokens=160, warn_on_limit=False
        )
        outs, stats = [], []
        for options in (first, second):
            stats.append({})
            gen = torch.Generator(device="cuda").manual_seed(13)
            with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                outs.append(
                    fast_generate(
                        model,
                        prefix,
                        None,
                        cfg,
                        generator=gen,
                        output_scores=True,
                        bucket=32,
                        stats=stats[-1],
                        **options,
                    )
                )
        assert len(fast.FALLBACKS) == before, f"fell back: {fast.FALLBACKS[before:]}"
        assert torch.equal(outs[0].codes, outs[1].codes), f"sample={sample}"
        assert torch.equal(outs[0].scores, outs[1].scores), f"sample={sample}"
        yield sample, stats


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_pdl_launch_equals_plain_launch_cuda(dtype):
    """graphkp (the Triton projections and attention as programmatic dependent launches: each
    kernel starts early, loads its weights and waits for the one before it) against graphki
    (the same kernels launched one after the other), through CUDA graphs: a kernel that read
    its input before the previous kernel finished would change the codes or scores; they must
    be identical (beam sampling and beam search, 160 codes, a batch of 2). Skipped below
    compute capability 9.0, where there is no PDL."""
    from tts import fast
    from tts.fast.decode import VARIANTS

    if not fast.pdl_available("cuda"):
        pytest.skip("programmatic dependent launch needs compute capability 9.0")
    assert VARIANTS["graphkp"] == {**VARIANTS["graphki"], "pdl": True}
    for sample, _ in _identical_pair(dtype, VARIANTS["graphki"], VARIANTS["graphkp"]):
        REPORT.append(
            {
                "case": f"pdl_vs_plain_{str(dtype)[6:]}_{'sample' if sample else 'beam'}",
                "identical": True,
            }
        )
        _write_report()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_kept_decoder_equals_new_decoders_cuda(dtype):
    """graphkk (graphkt kept between calls: its graphs replay later calls) against graphkt
    (a new decoder per call), through CUDA graphs, four calls with prompts of 30, 50, 30 and
    12 positions (the stop code made likely, so items finish apart), each item with its own
    generator, beam sampling then beam search: identical
    codes and scores; the callers' generators continue identically (the kept decoder draws
    from its own and gives the state back); the later calls reuse the decoder without an
    eager step, and a prompt length seen before captures nothing."""
    from tts import fast
    from tts.fast import decode
    from tts.generation import GenerationConfig

    model = _gpt_small_cuda(dtype)
    with torch.no_grad():  # items finish (at different steps): hypotheses are written
        model.mel_head.bias[model.stop_mel_token] += 2.5
    decode.release()
    before = len(fast.FALLBACKS)
    for sample in (True, False):
        cfg = GenerationConfig(num_beams=3, do_sample=sample, max_mel_tokens=100,
                               warn_on_limit=False)  # fmt: skip
        for call, length in enumerate((30, 50, 30, 12)):
            torch.manual_seed(length)
            prefix = (torch.randn(2, length, model.model_dim, device="cuda") * 0.5).to(dtype)
            outs, stats, draws = [], [], []
            for name in ("graphkt", "graphkk"):
                gens = [torch.Generator(device="cuda").manual_seed(13 + i) for i in range(2)]
                stats.append({})
                with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                    outs.append(
                        decode.generate(
                            model,
                            prefix,
                            None,
                            cfg,
                            generator=gens,
                            bucket=32,
                            output_scores=True,
                            stats=stats[-1],
                            **decode.VARIANTS[name],
                        )  # fmt: skip
                    )
                draws.append(torch.stack([torch.rand(4, device="cuda", generator=g) for g in gens]))
            assert torch.equal(outs[0].codes, outs[1].codes), (sample, length)
            assert torch.equal(outs[0].scores, outs[1].scores), (sample, length)
            assert torch.equal(draws[0], draws[1]), "the callers' generators went elsewhere"
            kept = stats[1]
            assert kept["kept"] == (call > 0), kept  # a new setting (beam search): new decoder
            if call > 0:
                assert kept["eager_steps"] == 0, kept
            if call == 2:
                assert kept["captured"] == 0, kept
            REPORT.append(
                {
                    "case": f"kept_vs_new_{str(dtype)[6:]}_{'sample' if sample else 'beam'}"
                    f"_{length}",
                    "identical": True,
                    "kept": kept["kept"],
                    "captured": kept["captured"],
                }
            )
            _write_report()
    assert len(fast.FALLBACKS) == before, f"fell back: {fast.FALLBACKS[before:]}"
    decode.release()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_attention_read_ahead_equals_plain_launch_cuda(dtype):
    """graphkr (graphkt whose attention loads the cache window before its PDL wait and reloads
    the step's own position after it) against graphkt without PDL, through CUDA graphs: a
    position read before its writer finished would change the codes or scores; they must be
    identical (beam sampling and beam search, 160 codes, a batch of 2). Skipped below compute
    capability 9.0, where there is no PDL."""
    from tts import fast
    from tts.fast.decode import VARIANTS

    if not fast.pdl_available("cuda"):
        pytest.skip("programmatic dependent launch needs compute capability 9.0")
    plain = {**VARIANTS["graphkt"], "pdl": False}
    assert VARIANTS["graphkr"] == {**VARIANTS["graphkt"], "read_ahead": True}
    for sample, _ in _identical_pair(dtype, plain, VARIANTS["graphkr"]):
        REPORT.append(
            {
                "case": f"read_ahead_vs_plain_{str(dtype)[6:]}_{'sample' if sample else 'beam'}",
                "identical": True,
            }
        )
        _write_report()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("variant,swap_twin", [("graphfi", "graphf"), ("graphki", "graphka")])
def test_table_reorder_equals_swap_reorder_cuda(variant, swap_twin, dtype):
    """reorder="table" (nothing moves, attention reads through the source-row table) against the
    same decoder with reorder="swap" (the cache window gathered every step), both with the
    Triton attention, through CUDA graphs: the same values are read by the same kernels, so
    codes and scores are identical, in bf16 too (beam sampling, beam search, 160 codes in
    32-position buckets, a batch of 2)."""
    from tts.fast.decode import VARIANTS

    twin = {**VARIANTS[variant], "reorder": "swap"}
    assert twin == {**VARIANTS[swap_twin], "attention": "triton"}
    for sample, stats in _identical_pair(dtype, twin, VARIANTS[variant]):
        assert [s["reorder"] for s in stats] == ["swap", "table"]
        assert all(s["attention"] == "triton" and s["eager_steps"] == 1 for s in stats), stats
        REPORT.append(
            {
                "case": f"table_vs_swap_{variant}_{str(dtype)[6:]}_"
                f"{'sample' if sample else 'beam'}",
                "steps": stats[1]["steps"],
                "identical": True,
            }
        )
        _write_report()


@pytest.mark.parametrize("rows", [3, 48])
def test_topk_threshold_equals_torch_topk_cuda(rows):
    """tts.fast.topk.kth_largest on CUDA at the GPT's vocabulary (8194) gives torch.topk's k-th
    value exactly, for log-probabilities of bf16 logits (many ties), k = 1, 30 and 1024, and
    rows mostly -inf."""
    from tts.fast import topk

    torch.manual_seed(2)
    logits = torch.randn(rows, 8194, device="cuda").to(torch.bfloat16).float() * 3
    scores = torch.log_softmax(logits, dim=-1)
    scores[1, :8000] = float("-inf")
    for k in (1, 30, 1024):
        assert torch.equal(topk.kth_largest(scores, k), torch.topk(scores, k).values[:, -1:]), k


def test_batched_per_item_draws_equal_per_item_multinomial_cuda():
    """On CUDA, the per-item draws in one batch (tts.fast.sampling) give the indices of one
    torch.multinomial per item: beam search's shapes (16 and 48 items of 3 x 8194
    probabilities, 6 drawn), sampling's (n = 1), a row count where the batched top-k would
    take another kernel path than the per-item calls (50 items of 8194: each item keeps its
    own top-k), and rows with fewer non-zero probabilities than draws (ties at 0)."""
    from test_fast import _draws_agree

    from tts.fast.sampling import same_topk_path

    assert same_topk_path(1, 16, 3 * 8194, torch.device("cuda"))
    assert not same_topk_path(1, 50, 8194, torch.device("cuda"))
    _draws_agree(
        "cuda",
        (
            (16, 1, 3 * 8194, 6),
            (48, 1, 3 * 8194, 6),
            (16, 3, 8194, 1),
            (50, 1, 8194, 6),
            (4, 2, 8194, 2),
        ),
    )


@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize("rows", [3, 48])
def test_processors_kernel_equals_process_scores_cuda(rows, split):
    """tts.fast.processors on CUDA keeps exactly the scores process_scores keeps (CUDA's
    torch.sort, which orders equal scores by index), at 3 and 48 rows of 8194: bf16-rounded
    logits (ties), zeros of both signs tied at the top, rows mostly -inf, the settings of
    test_fast.PROCESSOR_CONFIGS; the kept scores agree to float32 rounding and the survivors
    of top-k are exactly the right ones. ``split``: the split kernels (True), also on
    test_fast._split_rows, each row on its path; or the one-program kernel (False)."""
    from test_fast import _processors_agree, _split_rows, _split_whole

    _processors_agree(rows, 8194, "cuda", split=split)
    if split:
        _processors_agree(rows, 8194, "cuda", split=True, make=_split_rows, whole=_split_whole)


@pytest.mark.parametrize("items", [1, 16])
def test_beam_draw_kernel_equals_multinomial_cuda(items):
    """tts.fast.sampling.beam_candidates on CUDA draws torch.multinomial's candidates (the
    beam step's 6 of 3 x 8194, one generator per item, twice) with their scores. With fewer
    than 6 positive probabilities those are identical and the rest are the lowest-index
    entries of probability 0; whether torch.multinomial's are the same is reported."""
    from test_fast import _candidates_agree

    _candidates_agree(items, "cuda", "none")
    same = _candidates_agree(items, "cuda", "lowest")
    REPORT.append({"case": f"beam_draw_zero_ties_items{items}", "same_as_torch": same})
    _write_report()
