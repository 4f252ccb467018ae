"""The GPT's prefill through length-bucketed CUDA graphs (tts.fast.prefill): CPU checks.

The graphs need CUDA (tests/test_gpu.py replays them, and runs the ``gen_`` fixture cases
through the graph decoder, prefill included). Here: the premise they rest on (a prompt
zero-padded after its end gives its own logits at its last real position and its own keys
and values, under causal attention), and that a decoder whose prefill runs through the runner
(with a stand-in capture: eager, capture, replays) generates what tts.generation generates,
call after call, with and without beams.
"""

from __future__ import annotations

import pytest
import torch
from graph_stand_in import fake_warm_then_capture
from test_fast import _assert_same_generation, _gpt_small

from tts.fast import decode, graphs, padded_graphs, prefill
from tts.generation import GenerationConfig
from tts.generation import generate as plain_generate


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@torch.no_grad()
def test_a_padded_prompt_gives_its_own_logits_keys_and_values():
    """Two prompts of 21 positions padded to 32 (zeros, and junk: causal attention hides
    both): step 0's logits and the keys / values of the real positions equal the prompt run
    at its own length within float32 rounding, and equal what ``UnifiedVoice.decode`` gives
    into a cache (the decoder's prefill before)."""
    model = _gpt_small()
    runner = prefill.runner_for(model)
    assert prefill.runner_for(model) is runner  # one per model
    gen = torch.Generator().manual_seed(1)
    emb = torch.randn(2, 21, model.model_dim, generator=gen) * 0.5
    want = prefill._prefill(runner.module, emb)
    cache = model.new_cache(2, 21)
    torch.testing.assert_close(want[0], model.decode(emb, cache), rtol=1e-6, atol=1e-6)
    assert torch.equal(want[1], cache.k) and torch.equal(want[2], cache.v)
    for junk in (0.0, 7.0):
        padded = padded_graphs.padded(emb, 32)
        padded[:, 21:] = junk
        got = prefill._prefill_padded(runner.module, padded, torch.full((2,), 21))
        assert got[1].shape[3] == 32
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
        for g, w in zip(got[1:], want[1:], strict=True):
            torch.testing.assert_close(g[:, :, :, :21], w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("beams, sample", [(1, True), (3, True), (3, False)])
@torch.no_grad()
def test_decoder_with_graphed_prefill_generates_what_plain_generation_does(
    beams, sample, monkeypatch
):
    """A kept-style decoder (one decoder, several calls) whose prefill runs through the
    runner, with a stand-in capture: its first call's prefill is eager, the second captures,
    the third replays with a prompt of another length of the same bucket; every call's codes,
    steps and beam indices equal tts.generation's, its scores to float32 rounding. The
    cache's positions past a prompt's end hold nothing of the padded positions."""
    monkeypatch.setattr(padded_graphs.PaddedGraphs, "_graphable", staticmethod(lambda x: True))
    monkeypatch.setattr(graphs, "warm_then_capture", fake_warm_then_capture)
    model = _gpt_small()
    cfg = GenerationConfig(
        num_beams=beams,
        do_sample=sample,
        max_mel_tokens=10,
        warn_on_limit=False,
        repetition_penalty=2.0,
    )
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randn(2, n, model.model_dim, generator=gen) * 0.5 for n in (40, 45, 38)]
    runner = prefill.runner_for(model)
    runner.clear()
    dec = None
    seen = []
    for i, prefix in enumerate(prompts):
        generator = [torch.Generator().manual_seed(20 + i + j) for j in range(2)]
        if dec is None:
            dec = decode.StaticDecoder(
                model,
                prefix,
                None,
                cfg,
                generator=generator,
                output_scores=True,
                reorder="table",
                capacity=256,
            )
            # What use_graph sets on CUDA (the constructor's own start() ran without it); the
            # start() below is then the runner's first call.
            dec.prefill_graphs = True
        dec.start(prefix, None, generator)
        out = dec.run()
        seen.append((runner.captures, runner.replays))
        want_gen = [torch.Generator().manual_seed(20 + i + j) for j in range(2)]
        plain = plain_generate(model, prefix, None, cfg, generator=want_gen, output_scores=True)
        _assert_same_generation(plain, out, beams)
        # Past the prompt and start code: nothing but what the steps wrote.
        end = prefix.size(1) + 1 + out.steps
        assert not dec.cache.k[:, :, :, end:].any()
    # 41, 46, 39 positions -> bucket 64: eager, capture, replay
    assert seen == [(0, 0), (1, 0), (1, 1)]


@torch.no_grad()
def test_release_drops_a_models_prefill_graphs(monkeypatch):
    """``prefill.release(model)`` (what ``Engine.release_decoder`` calls) empties the model's
    runner; a model without a runner is left alone."""
    monkeypatch.setattr(padded_graphs.PaddedGraphs, "_graphable", staticmethod(lambda x: True))
    monkeypatch.setattr(graphs, "warm_then_capture", fake_warm_then_capture)
    model = _gpt_small()
    runner = prefill.runner_for(model)
    emb = torch.randn(1, 20, model.model_dim, generator=torch.Generator().manual_seed(3))
    for _ in range(2):
        runner(emb)
    assert len(runner.graphs) == 1 and runner.graphs.pool is not None
    prefill.release(model)
    assert not runner.graphs and runner.graphs.pool is None
    prefill.release(torch.nn.Linear(1, 1))  # no runner: nothing happens
