"""Rows of a batch run through the GPT together, and a row's result does not depend on its batch.

What holds, on the CPU (DEMO weights for the Engine, the gpt-small fixture for the generators):

* every (row, segment) item samples from its own generator (``tts.pipeline.segment_seed``), so
  the random numbers an item draws never depend on the other items of its GPT call;
* a batched call is not bit-identical to the item alone: shorter prompts are left-padded under
  an attention mask, and the batched matrix products / attention sum in a different order, so
  logits and latents differ by float32 rounding (measured: <= ~1.3e-6 absolute; the bound
  asserted is 1e-5, i.e. tens of float32 ulps at the values' magnitude);
* those differences are far too small to change a decision here: the codes (greedy, sampling,
  beam search, beam sampling) and text ids of every row are identical to the row alone, and the
  latents agree within the bound above. (A sampled or arg-max token could in principle flip
  when two candidates differ by less than the rounding; none does in these cases.)
* with one item per call (``gpt_batch_items: 1``: no padding, batch 1) the Engine reproduces
  the plain single-row path (``UnifiedVoice.inference_speech`` + the teacher-forced ``forward``)
  bit for bit. (A row alone still batches its own segments, so its later segments are only
  equal within the bound above.)
* the render stage's fast path (CUDA; run here on the CPU with the same code) solves the
  segments of all rows in padded batches, each row with its own speaker prompt and noise: every
  row's waveform equals the row rendered alone within 1e-5 (measured ~2.6e-7); a NaN row fails
  alone, and a failing batch is redone segment by segment.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tts.demo import write_demo_checkpoints
from tts.generation import GenerationConfig
from tts.pipeline import Engine, SynthesisRequest, _seed, segment_seed

SPEAKERS = Path(__file__).resolve().parents[1] / "config" / "speakers"
# Short segments so that texts split into different numbers of segments.
SAMPLING = {"max_mel_tokens": 16, "max_text_tokens_per_segment": 10, "repetition_penalty": 2.0}
TEXTS = {
    "short": "Hello world.",
    "long": "The quick brown fox jumps over the lazy dog. It was a sunny day and the birds "
    "sang loudly.",
    "mid": "One two three four five six seven. Eight nine ten.",
}
MODES = {
    "greedy": {"do_sample": False, "num_beams": 1},
    "sampling": {"do_sample": True, "num_beams": 1},
    "beam_search": {"do_sample": False, "num_beams": 3},
    "beam_sampling": {"do_sample": True, "num_beams": 3},
}
TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    root = write_demo_checkpoints(tmp_path_factory.mktemp("demo"), seed=1)
    return Engine.open(root, device="cpu")


@pytest.fixture(scope="module")
def rows(engine):
    """Three rows with different speakers, text lengths and segment counts, conditioned."""
    wavs = sorted(SPEAKERS.glob("*.wav"))
    assert len(wavs) >= 3, f"need three example prompts in {SPEAKERS}"
    reqs = [
        SynthesisRequest(id=name, text=text, speaker=wavs[i], seed=11 + i)
        for i, (name, text) in enumerate(TEXTS.items())
    ]
    spks = [engine.speaker_conditioning(r.speaker) for r in reqs]
    emos = [engine.emotion_conditioning(r, s) for r, s in zip(reqs, spks, strict=True)]
    return reqs, spks, emos


def _with(reqs, **sampling):
    return [
        SynthesisRequest(
            id=r.id, text=r.text, speaker=r.speaker, seed=r.seed, sampling={**SAMPLING, **sampling}
        )
        for r in reqs
    ]


def _segments(value: dict) -> int:
    return sum(1 for k in value if k.startswith("codes_"))


def _assert_same_row(alone: dict, batched: dict, where: str) -> None:
    assert alone.keys() == batched.keys(), where
    for key in alone:
        a, b = alone[key], batched[key]
        if key.startswith("latent_"):
            assert a.shape == b.shape, (where, key)
            torch.testing.assert_close(b, a, **TOL, msg=f"{where} {key}")
        else:
            assert torch.equal(a, b), (where, key, a, b)


@pytest.mark.parametrize("mode", list(MODES))
def test_row_in_a_batch_equals_the_row_alone(engine, rows, mode):
    reqs, spks, emos = rows
    reqs = _with(reqs, **MODES[mode])
    batched = engine.semantic_tokens(reqs, spks, emos)
    assert all(r.ok for r in batched), [r.error for r in batched]
    counts = [_segments(r.value) for r in batched]
    assert len(set(counts)) == len(counts), f"rows should differ in segment count: {counts}"
    for i, req in enumerate(reqs):
        alone = engine.semantic_tokens([req], [spks[i]], [emos[i]])[0]
        assert alone.ok, alone.error
        _assert_same_row(alone.value, batched[i].value, f"{mode} row {req.id}")
    # Row order and the per-call cap do not matter either.
    order = [2, 0, 1]
    shuffled = engine.semantic_tokens(
        [reqs[i] for i in order], [spks[i] for i in order], [emos[i] for i in order]
    )
    for j, i in enumerate(order):
        _assert_same_row(batched[i].value, shuffled[j].value, f"{mode} shuffled {reqs[i].id}")


def test_gpt_batch_items_cap_does_not_change_results(engine, rows):
    reqs, spks, emos = rows
    reqs = _with(reqs, **MODES["sampling"])
    full = engine.semantic_tokens(reqs, spks, emos)
    saved = engine.gpt_batch_items
    engine.gpt_batch_items = 2
    try:
        capped = engine.semantic_tokens(reqs, spks, emos)
    finally:
        engine.gpt_batch_items = saved
    for a, b in zip(full, capped, strict=True):
        _assert_same_row(a.value, b.value, f"cap 2 row {a.id}")


def test_rows_sharing_a_speaker_share_its_latent(engine, rows, monkeypatch):
    """The GPT's speaker latent is computed once per speaker (features digest) and Engine, and
    reusing it changes nothing: the rows' codes and latents equal those of an Engine that
    computes it for every row."""
    reqs, spks, emos = rows
    twins = _with(
        [
            reqs[0],
            SynthesisRequest(
                id="twin", text=reqs[2].text, speaker=reqs[0].speaker, seed=reqs[2].seed
            ),
        ],
        **MODES["sampling"],
    )
    twin_spks, twin_emos = [spks[0], dict(spks[0])], [emos[0], emos[0]]
    gpt = engine.part("gpt")
    calls = []
    monkeypatch.setattr(
        gpt, "get_conditioning", lambda *a, f=gpt.get_conditioning: calls.append(1) or f(*a)
    )
    engine.clear_prompt_cache()
    shared = engine.semantic_tokens(twins, twin_spks, twin_emos)
    assert len(calls) == 1, "the second row recomputed its speaker's latent"
    assert engine.semantic_tokens(twins[:1], twin_spks[:1], twin_emos[:1])[0].ok
    assert len(calls) == 1
    uncached = Engine.open(engine.cs.root, device="cpu")
    monkeypatch.setattr(uncached, "_memo", lambda kind, key, compute: compute())
    want = uncached.semantic_tokens(twins, twin_spks, twin_emos)
    assert len(calls) == 1  # (uncached has its own GPT)
    for a, b in zip(want, shared, strict=True):
        assert a.ok and b.ok, (a.error, b.error)
        _assert_same_row(a.value, b.value, f"shared latent row {a.id}")


def test_batch_timings_are_shares(engine, rows):
    reqs, spks, emos = rows
    out = engine.semantic_tokens(_with(reqs, **MODES["greedy"]), spks, emos)
    for r in out:
        assert r.timings["gpt_generate"] > 0 and r.timings["gpt_forward"] > 0


@pytest.mark.parametrize("mode", ["greedy", "beam_sampling"])
def test_one_item_per_call_equals_the_single_row_reference_path(engine, rows, mode):
    """With one item per GPT call, segment i of a row = inference_speech with a generator
    seeded segment_seed(seed, i), then the teacher-forced forward, bit for bit (the Engine's
    path before batching)."""
    from tts.generation import trim_at_stop

    reqs, spks, emos = rows
    req = _with(reqs, **MODES[mode])[2]
    saved = engine.gpt_batch_items
    engine.gpt_batch_items = 1
    try:
        got = engine.semantic_tokens([req], [spks[2]], [emos[2]])[0]
    finally:
        engine.gpt_batch_items = saved
    assert got.ok, got.error
    gpt = engine.part("gpt")
    opts = req.sampling_options()
    cfg = GenerationConfig(
        do_sample=opts["do_sample"],
        top_k=opts["top_k"],
        top_p=opts["top_p"],
        temperature=opts["temperature"],
        repetition_penalty=opts["repetition_penalty"],
        num_beams=opts["num_beams"],
        length_penalty=opts["length_penalty"],
        max_mel_tokens=opts["max_mel_tokens"],
        warn_on_limit=False,
    )
    spk_cond = spks[2]["spk_cond_emb"]
    emovec = emos[2]["emovec"]
    assert _segments(got.value) > 1
    for i in range(_segments(got.value)):
        text = got.value[f"text_ids_{i}"].unsqueeze(0)
        gen = torch.Generator().manual_seed(segment_seed(_seed(req), i))
        with torch.no_grad():
            out, latent = gpt.inference_speech(
                spk_cond, text, emo_vec=emovec, config=cfg, generator=gen
            )
            codes, (n,) = trim_at_stop(out.codes[:1], gpt.stop_mel_token)
            ref = gpt(
                latent,
                text,
                torch.tensor([text.size(1)]),
                codes,
                torch.tensor([n]),
                None,
                emo_vec=emovec,
                use_speed=torch.zeros(1, dtype=torch.long),
            )
        assert torch.equal(got.value[f"codes_{i}"], codes[0]), i
        assert torch.equal(got.value[f"latent_{i}"], ref[0]), i


def test_segment_seed_derivation():
    assert segment_seed(1234, 0) == 1234
    seeds = {segment_seed(1234, i) for i in range(1, 50)}
    assert len(seeds) == 49 and all(0 <= s < 2**63 for s in seeds)
    assert segment_seed(1234, 3) == segment_seed(1234, 3) != segment_seed(1235, 3)


def test_forward_packed_equals_forward_per_item(engine):
    gpt = engine.part("gpt")
    torch.manual_seed(3)
    d = gpt.model_dim
    texts = [torch.randint(2, 200, (n,)) for n in (9, 3, 6)]
    codes = [torch.randint(0, 8192, (n,)) for n in (5, 11, 2)]
    latent = torch.randn(3, 32, d)
    emovec = torch.randn(3, d) * 0.1
    with torch.no_grad():
        packed = gpt.forward_packed(latent, emovec, texts, codes)
        for i in range(3):
            one = gpt(
                latent[i : i + 1],
                texts[i][None],
                torch.tensor([texts[i].numel()]),
                codes[i][None],
                torch.tensor([codes[i].numel()]),
                None,
                emo_vec=emovec[i : i + 1],
                use_speed=torch.zeros(1, dtype=torch.long),
            )[0]
            assert packed[i].shape == one.shape == (codes[i].numel(), d)
            torch.testing.assert_close(packed[i], one, **TOL)


# -- per-item generators in the two decoders ----------------------------------------------------


def _gpt_small():
    from tts import parity
    from tts.checkpoints import CheckpointSet
    from tts.components import load_component

    root = next((fs.root for fs, _ in parity.all_cases() if fs.name == "gpt-small"), None)
    if root is None:
        pytest.skip("gpt-small fixture set not found")
    model, _ = load_component("gpt", CheckpointSet.open(root))
    return model.eval()


def _prefix(model, batch: int):
    torch.manual_seed(0)
    d = model.model_dim
    spk = torch.randn(batch, 40, 1024)
    text = torch.randint(2, 200, (batch, 7))
    with torch.no_grad():
        latent = model.get_conditioning(spk.transpose(1, 2), torch.tensor([1024]))
        conds = model.conditioning_prefix(latent, torch.randn(batch, d) * 0.1, batch)
        return model.prepare_gpt_inputs(conds, text)


@pytest.mark.parametrize("beams", [1, 3])
@pytest.mark.parametrize("decoder", ["plain", "static"])
def test_one_generator_equals_a_list_of_one(beams, decoder):
    from tts.fast.decode import generate as fast_generate
    from tts.generation import generate as plain_generate

    fn = plain_generate if decoder == "plain" else fast_generate
    model = _gpt_small()
    prefix, valid = _prefix(model, 1)
    cfg = GenerationConfig(
        num_beams=beams, max_mel_tokens=24, warn_on_limit=False, repetition_penalty=2.0
    )
    single = fn(
        model, prefix, valid, cfg, generator=torch.Generator().manual_seed(9), output_scores=True
    )
    listed = fn(
        model, prefix, valid, cfg, generator=[torch.Generator().manual_seed(9)], output_scores=True
    )
    assert torch.equal(single.codes, listed.codes) and single.steps == listed.steps
    assert torch.equal(single.scores, listed.scores)
    if beams > 1:
        assert torch.equal(single.beam_indices, listed.beam_indices)
        assert torch.equal(single.sequences_scores, listed.sequences_scores)


@pytest.mark.parametrize("beams", [1, 3])
def test_item_draws_come_from_its_own_generator(beams):
    """Two identical items with equal seeds get equal codes; changing item 1's seed leaves
    item 0 unchanged (plain and static decoders agree)."""
    from tts.fast.decode import generate as fast_generate
    from tts.generation import generate as plain_generate

    model = _gpt_small()
    prefix, valid = _prefix(model, 1)
    prefix, valid = prefix.expand(2, -1, -1).contiguous(), valid.expand(2, -1).contiguous()
    cfg = GenerationConfig(
        num_beams=beams, max_mel_tokens=24, warn_on_limit=False, repetition_penalty=2.0
    )
    for fn in (plain_generate, fast_generate):
        same = fn(
            model,
            prefix,
            valid,
            cfg,
            generator=[torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)],
        )
        assert torch.equal(same.codes[0], same.codes[1])
        other = fn(
            model,
            prefix,
            valid,
            cfg,
            generator=[torch.Generator().manual_seed(4), torch.Generator().manual_seed(5)],
        )
        width = min(same.codes.size(1), other.codes.size(1))
        stop = model.stop_mel_token
        a, b = same.codes[0], other.codes[0]
        assert torch.equal(a[a != stop], b[b != stop]), fn.__module__
        assert not torch.equal(other.codes[0, :width], other.codes[1, :width])


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("decoder", ["plain", "static"])
def test_padded_batch_logits_match_items_alone(mode, decoder):
    """Three items (prompts of 40/55/31 frames, texts of 7/12/4 ids, left-padded under a mask)
    with per-item generators: each item's codes equal the item alone, its logits agree within
    float32 rounding (the masked, batched attention sums in another order)."""
    from tts.fast.decode import generate as fast_generate
    from tts.generation import generate as plain_generate

    fn = plain_generate if decoder == "plain" else fast_generate
    model = _gpt_small()
    torch.manual_seed(0)
    d = model.model_dim
    spks = [torch.randn(1, n, 1024) for n in (40, 55, 31)]
    texts = [torch.randint(2, 200, (n,)) for n in (7, 12, 4)]
    emos = [torch.randn(1, d) * 0.1 for _ in range(3)]
    cfg = GenerationConfig(
        **MODES[mode], max_mel_tokens=30, warn_on_limit=False, repetition_penalty=2.0
    )
    with torch.no_grad():
        lat = [model.get_conditioning(s.transpose(1, 2), torch.tensor([1024])) for s in spks]
        text = torch.full((3, 12), model.stop_text_token)
        for i, t in enumerate(texts):
            text[i, : t.numel()] = t
        prefix, valid = model.prepare_gpt_inputs(
            model.conditioning_prefix(torch.cat(lat), torch.cat(emos), 3), text
        )
        assert not bool(valid.all())
        gens = [torch.Generator().manual_seed(5 + i) for i in range(3)]
        batch = fn(model, prefix, valid, cfg, generator=gens, output_logits=True)
        beams = cfg.num_beams
        for i in range(3):
            p1, v1 = model.prepare_gpt_inputs(
                model.conditioning_prefix(lat[i], emos[i], 1), texts[i][None]
            )
            one = fn(
                model,
                p1,
                v1,
                cfg,
                generator=[torch.Generator().manual_seed(5 + i)],
                output_logits=True,
            )
            codes = batch.codes[i, : one.codes.size(1)]
            assert torch.equal(one.codes[0], codes), (mode, i)
            assert bool((batch.codes[i, one.codes.size(1) :] == model.stop_mel_token).all())
            steps = min(one.logits.size(0), batch.logits.size(0))
            torch.testing.assert_close(
                batch.logits[:steps, i * beams : (i + 1) * beams], one.logits[:steps], **TOL
            )


def test_generator_list_length_must_match_the_batch():
    from tts.fast.decode import generate as fast_generate
    from tts.generation import generate as plain_generate

    model = _gpt_small()
    prefix, valid = _prefix(model, 2)
    cfg = GenerationConfig(num_beams=1, max_mel_tokens=4, warn_on_limit=False)
    for fn in (plain_generate, fast_generate):
        with pytest.raises(ValueError, match="one torch.Generator per item"):
            fn(model, prefix, valid, cfg, generator=[torch.Generator()])


# -- failures stay per row --------------------------------------------------------------------


def test_bad_text_fails_only_its_row(engine, rows):
    reqs, spks, emos = rows
    reqs = _with(reqs, **MODES["sampling"])
    bad = SynthesisRequest(
        id="empty", text="   ", speaker=reqs[0].speaker, seed=1, sampling=dict(SAMPLING)
    )
    out = engine.semantic_tokens(
        [reqs[0], bad, reqs[1]], [spks[0], spks[0], spks[1]], [emos[0], emos[0], emos[1]]
    )
    assert not out[1].ok and "empty" in out[1].error
    alone = engine.semantic_tokens(reqs[:2], spks[:2], emos[:2])
    _assert_same_row(alone[0].value, out[0].value, "row before the bad one")
    _assert_same_row(alone[1].value, out[2].value, "row after the bad one")


def test_a_failing_batched_call_is_retried_item_by_item(engine, rows, monkeypatch, caplog):
    reqs, spks, emos = rows
    reqs = _with(reqs, **MODES["greedy"])
    expected = engine.semantic_tokens(reqs, spks, emos)
    real = Engine._generate_items
    calls = []

    def flaky(self, chunk, conds):
        calls.append(len(chunk))
        if any(it.row == 1 and it.segment == 2 for it in chunk):
            raise RuntimeError("kernel failed for this item")
        return real(self, chunk, conds)

    monkeypatch.setattr(Engine, "_generate_items", flaky)
    with caplog.at_level("WARNING", logger="tts.pipeline"):
        out = engine.semantic_tokens(reqs, spks, emos)
    assert max(calls) > 1 and 1 in calls, calls
    assert "failed (RuntimeError: kernel failed for this item); running them one by one" in (
        caplog.text
    )
    assert [r.ok for r in out] == [True, False, True]
    assert out[1].error == "RuntimeError: segment 2: kernel failed for this item"
    for i in (0, 2):
        _assert_same_row(expected[i].value, out[i].value, f"row {i}")


def test_nan_latent_fails_only_its_row(engine, rows, monkeypatch):
    reqs, spks, emos = rows
    reqs = _with(reqs, **MODES["greedy"])
    gpt = engine.part("gpt")
    real = gpt.forward_packed
    frontend = engine.frontend(SAMPLING["max_text_tokens_per_segment"])
    (short,) = frontend.process(reqs[0].text).segment_ids
    others = [s for r in reqs[1:] for s in frontend.process(r.text).segment_ids]
    assert short not in others
    short = torch.tensor(short)

    def poisoned(latent, emovec, texts, codes):
        out = real(latent, emovec, texts, codes)
        return [
            o * float("nan") if torch.equal(t.cpu(), short) else o
            for o, t in zip(out, texts, strict=True)
        ]

    monkeypatch.setattr(gpt, "forward_packed", poisoned)
    out = engine.semantic_tokens(reqs, spks, emos)
    assert [r.ok for r in out] == [False, True, True]
    assert out[0].error.startswith("FloatingPointError: segment 0: NaN or inf in the GPT latent")


def test_out_of_memory_propagates_for_the_caller_to_split(engine, rows, monkeypatch):
    reqs, spks, emos = rows

    def oom(self, chunk, conds):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(Engine, "_generate_items", oom)
    with pytest.raises(torch.OutOfMemoryError):
        engine.semantic_tokens(_with(reqs, **MODES["greedy"]), spks, emos)


def test_fast_paths_are_off_on_the_cpu(engine):
    assert engine.fast is False
    prov = engine.provenance()
    assert prov["fast"] is False and prov["gpt_batch_items"] == 16


def test_a_precomputed_text_plan_replaces_the_front_end(engine, rows, monkeypatch):
    """Rows planned by the workflow's CPU text stage (a JSON round trip of the plan) give the
    same codes and latents, and the Engine never runs the front-end for them."""
    import json
    from dataclasses import replace

    from tts.text.frontend import TextPlan

    reqs, spks, emos = rows
    reqs = _with(reqs, **MODES["greedy"])
    expected = engine.semantic_tokens(reqs, spks, emos)
    planned = []
    for r in reqs:
        n = int(r.sampling_options()["max_text_tokens_per_segment"])
        plan = json.loads(json.dumps(engine.frontend(n).process(r.text).to_dict()))
        planned.append(replace(r, text_plan=TextPlan.from_dict(plan)))

    def no_front_end(*args, **kwargs):
        raise AssertionError("the Engine ran the text front-end for a planned row")

    monkeypatch.setattr(Engine, "frontend", no_front_end)
    out = engine.semantic_tokens(planned, spks, emos)
    for a, b in zip(expected, out, strict=True):
        assert b.ok, b.error
        _assert_same_row(a.value, b.value, f"planned row {a.id}")


# -- the render stage -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def render_rows(engine, rows):
    """The three rows plus a fourth that shares the first row's speaker (so that segments of
    different rows fall into one solve batch), with their GPT tokens."""
    reqs, spks, emos = rows
    extra = SynthesisRequest(
        id="same_speaker",
        text="Seven six five four. Three two one.",
        speaker=reqs[0].speaker,
        seed=29,
        sampling=SAMPLING,
    )
    reqs = [*_with(reqs), extra]
    spks = [*spks, spks[0]]
    emos = [*emos, engine.emotion_conditioning(extra, spks[0])]
    toks = engine.semantic_tokens(reqs, spks, emos)
    assert all(t.ok for t in toks), [t.error for t in toks]
    return reqs, spks, [t.value for t in toks]


def record_solve_sizes(monkeypatch) -> list[int]:
    """From now on, the number of segments of every s2mel solve of the fast render (a spy on
    tts.fast.s2mel.generate_padded); also used by tests/test_gpu.py."""
    from tts.fast import s2mel as fast_s2mel

    sizes: list[int] = []
    real = fast_s2mel.generate_padded

    def spy(s2mel, mus, *args, **kwargs):
        sizes.append(len(mus))
        return real(s2mel, mus, *args, **kwargs)

    monkeypatch.setattr(fast_s2mel, "generate_padded", spy)
    return sizes


def _batched_render(engine, monkeypatch, reqs, spks, toks, items: int = 16):
    """Engine.render through the fast path's batched solve (on the CPU: the same code as on
    CUDA, without its kernels), recording the size of every solve batch."""
    sizes = record_solve_sizes(monkeypatch)
    monkeypatch.setattr(engine, "fast", True)
    monkeypatch.setattr(engine, "render_batch_items", items)
    return engine.render(reqs, spks, toks), sizes


@pytest.mark.parametrize("items", [16, 2])
def test_batched_render_equals_each_row_alone(engine, render_rows, monkeypatch, items):
    """The fast render solves the segments of all rows together (four rows, three speakers
    whose prompts differ in length), padded; every row's waveform equals the plain path's for
    the row alone (S2Mel.generate per segment: the reference) within float32 rounding."""
    reqs, spks, toks = render_rows
    alone = [engine.render([r], [s], [t])[0] for r, s, t in zip(reqs, spks, toks, strict=True)]
    batched, sizes = _batched_render(engine, monkeypatch, reqs, spks, toks, items)
    total = sum(_segments(t) for t in toks)  # one solver setting: all rows batch together
    assert sizes == [min(items, total - k) for k in range(0, total, items)], sizes
    for a, b in zip(alone, batched, strict=True):
        assert a.ok and b.ok, (a.error, b.error)
        assert a.value["wav"].shape == b.value["wav"].shape, a.id
        torch.testing.assert_close(b.value["wav"], a.value["wav"], rtol=0, atol=1e-5, msg=a.id)
        assert set(b.timings) == {"s2mel", "vocoder"}, b.timings


def test_nan_tokens_fail_only_their_row_in_a_batched_render(engine, render_rows, monkeypatch):
    reqs, spks, toks = render_rows
    bad = {k: v.clone() for k, v in toks[3].items()}
    bad["latent_0"][0, 0] = float("nan")
    alone = engine.render([reqs[0]], [spks[0]], [toks[0]])[0]
    batched, sizes = _batched_render(engine, monkeypatch, reqs, spks, [*toks[:3], bad])
    assert max(sizes) > 1, sizes
    assert [r.ok for r in batched] == [True, True, True, False], [r.error for r in batched]
    assert "NaN or inf in the s2mel" in batched[3].error, batched[3].error
    torch.testing.assert_close(
        batched[0].value["wav"], alone.value["wav"], rtol=0, atol=1e-5, msg="row 0"
    )


def test_a_failing_solve_batch_is_retried_segment_by_segment(
    engine, render_rows, monkeypatch, caplog
):
    """A batched s2mel solve that raises (anything but out-of-memory) is redone one segment
    at a time, so rows whose segments solve alone still succeed."""
    from tts.fast import s2mel as fast_s2mel

    reqs, spks, toks = render_rows
    real = fast_s2mel.generate_padded
    sizes: list[int] = []

    def flaky(s2mel, mus, *args, **kwargs):
        sizes.append(len(mus))
        if len(mus) > 1:
            raise RuntimeError("a batched solve failed")
        return real(s2mel, mus, *args, **kwargs)

    monkeypatch.setattr(fast_s2mel, "generate_padded", flaky)
    monkeypatch.setattr(engine, "fast", True)
    with caplog.at_level("WARNING", logger="tts.pipeline"):
        out = engine.render(reqs, spks, toks)
    assert all(r.ok for r in out), [r.error for r in out]
    assert "(RuntimeError: a batched solve failed); solving them one by one" in caplog.text
    assert sizes[0] > 1 and set(sizes[1:]) == {1}, sizes
    assert len(sizes) == 1 + sum(_segments(t) for t in toks), sizes
