"""The fast paths (tts.fast) compute the same functions as the plain ones (CPU checks).

* the static-cache decoder, run through the unchanged parity handlers (greedy / beam fixture
  cases), and against tts.generation with the same generator for sampling and beam sampling;
* the fused-weight-norm DiT and the fast CFM solve against the fixture goldens;
* the fused BigVGAN activation (Triton interpreter) against Activation1d.

tests/test_gpu.py repeats the fixture checks on CUDA, where the CUDA graphs are used.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tts import parity
from tts.fast import decode, patched

CASES = list(parity.all_cases())


def _cases(prefixes: tuple[str, ...]):
    return [(fs, c) for fs, c in CASES if parity.case_id(c).startswith(prefixes)]


def _id(item):
    fs, case = item
    return f"{fs.name}/{parity.case_id(case)}"


GEN = _cases(("gen_",))
CFM = _cases(("cfm_inference_cfm4",))
DIT = _cases(("dit_estimator",))


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


# Decoder options for the parity cases: plain, compiled token choice, and the fused variant
# (compiled fused layers, swap reorder, compiled processors and token choice).
DECODER_OPTIONS = {
    "plain": {},
    "compiled_logic": {"compile_logic": True},
    "fused": {**decode.VARIANTS["graphf"]},
}


@pytest.mark.parametrize("variant", list(DECODER_OPTIONS))
@pytest.mark.parametrize("item", GEN, ids=[_id(c) for c in GEN])
def test_generation_cases_through_static_decoder(item, variant, monkeypatch):
    calls = []
    original = decode.generate

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(decode, "generate", counting)
    fs, case = item
    from tts import fast

    before = len(fast.FALLBACKS)
    with patched(gpt=True, s2mel=False, bigvgan=False, gpt_options=DECODER_OPTIONS[variant]):
        failures = parity.check_case(fs, case)
    assert calls, "the parity handler did not go through the fast decoder"
    assert len(fast.FALLBACKS) == before, fast.FALLBACKS[before:]
    assert not failures, "\n".join(failures)


def _gpt_small():
    from tts.checkpoints import CheckpointSet
    from tts.components import load_component

    root = next((fs.root for fs, _ in CASES if fs.name == "gpt-small"), None)
    if root is None:
        pytest.skip("gpt-small fixture set not found")
    model, _ = load_component("gpt", CheckpointSet.open(root))
    return model.eval()


def _assert_same_generation(plain, fast, beams: int) -> None:
    """The fast decoder's output equals tts.generation's: codes, steps, and (beams) beam
    indices exactly; scores to float32 rounding."""
    assert torch.equal(plain.codes, fast.codes)
    assert plain.steps == fast.steps
    torch.testing.assert_close(fast.scores, plain.scores, rtol=1e-5, atol=1e-5)
    if beams > 1:
        assert torch.equal(plain.beam_indices, fast.beam_indices)
        torch.testing.assert_close(fast.sequences_scores, plain.sequences_scores)


def _variant_against_plain(model, beams: int, sample: bool, variant: str | dict, tokens: int = 24):
    """For the decoder tests: ``tokens`` codes of tts.generation and of the fast decoder
    ``variant`` (a name of ``decode.VARIANTS``, or its options) from one padded prompt
    (repetition penalty 2, generators seeded 9), checked equal by
    :func:`_assert_same_generation`. Returns the prompt and the decoder's stats."""
    from tts.fast import decode
    from tts.generation import GenerationConfig
    from tts.generation import generate as plain_generate

    prefix, valid = _padded_prefix(model)
    cfg = GenerationConfig(
        num_beams=beams,
        do_sample=sample,
        max_mel_tokens=tokens,
        warn_on_limit=False,
        repetition_penalty=2.0,
    )
    plain = plain_generate(
        model, prefix, valid, cfg, generator=torch.Generator().manual_seed(9), output_scores=True
    )
    stats = {}
    out = decode.generate(
        model,
        prefix,
        valid,
        cfg,
        output_scores=True,
        stats=stats,
        generator=torch.Generator().manual_seed(9),
        **(decode.VARIANTS[variant] if isinstance(variant, str) else variant),
    )
    _assert_same_generation(plain, out, beams)
    return prefix, stats


@pytest.mark.parametrize("beams", [1, 3])
def test_sampling_matches_plain_generation(beams):
    """Same generator, same draws: identical codes (sampling and beam sampling, B = 2 padded)."""
    from tts.fast.decode import generate as fast_generate
    from tts.generation import GenerationConfig
    from tts.generation import generate as plain_generate

    model = _gpt_small()
    torch.manual_seed(0)
    d = model.model_dim
    spk = torch.randn(2, 40, 1024)
    text = torch.randint(2, 200, (2, 7))
    text[1, :2] = 1  # dropped ids: row 1 is shorter, so it is left-padded
    with torch.no_grad():
        latent = model.get_conditioning(spk.transpose(1, 2), torch.tensor([40, 33]))
        conds = model.conditioning_prefix(latent, torch.randn(2, d) * 0.1, 2)
        prefix, valid = model.prepare_gpt_inputs(conds, text)
    assert not bool(valid.all())
    cfg = GenerationConfig(
        num_beams=beams, max_mel_tokens=24, warn_on_limit=False, repetition_penalty=2.0
    )
    outs = []
    for fn in (plain_generate, fast_generate):
        gen = torch.Generator().manual_seed(123)
        outs.append(fn(model, prefix, valid, cfg, generator=gen, output_scores=True))
    _assert_same_generation(*outs, beams)


class _ReplayEagerly:
    """A stand-in for a captured CUDA graph on the CPU: "replay" runs the step it was captured
    for eagerly, after checking that the decoder is in the state the graph was captured in."""

    def __init__(self, dec, key, end, log, hide_prompt_length: bool = False):
        self.dec, self.key, self.end, self.log = dec, key, end, log
        self.hide = hide_prompt_length  # the step must not read it: s_len is None meanwhile

    def replay(self):
        dec = self.dec
        step = int(dec.step_t)
        assert dec._graph_key(step) == self.key, f"step {step}: wrong graph {self.key}"
        assert dec._window(step) == self.end, f"step {step}: window {self.end}"
        cur, s_len = dec.cur, dec.s_len
        if self.hide:
            dec.s_len = None
        try:
            dec._step(self.end)
        finally:
            dec.s_len = s_len
        dec._use(cur)  # the caller switches caches after a replay, as the device did
        self.log.append(("replay", step))


def _stand_in_graphs(dec, log: list, hide_prompt_length: bool = False) -> None:
    """Make ``dec`` capture :class:`_ReplayEagerly` stand-ins on the CPU (``dec.stream`` stays
    None: the eager step runs on the CPU). Each capture is logged as ``("capture", (window,
    cache), step)`` and may happen once per key."""
    dec.use_graph = True

    def fake_capture(w, end):
        key = (w, dec.cur)
        assert key not in dec.graphs, f"{key} captured twice"
        dec.graphs[key] = _ReplayEagerly(dec, key, end, log, hide_prompt_length)
        log.append(("capture", key, int(dec.step_t)))
        return True

    dec._capture = fake_capture


@pytest.mark.parametrize("bucket,check_every", [(16, 32), (16, 5), (48, 32)])
@pytest.mark.parametrize("beams", [1, 3])
def test_graphs_are_captured_before_their_bucket(beams, bucket, check_every):
    """The capture bookkeeping of the CUDA-graph loop, on the CPU with a stand-in graph: only
    the first step runs eagerly, every later step replays a graph captured for its bucket and
    cache (several buckets between two checks, or several checks in a bucket), each graph is
    captured once, and the codes are tts.generation's."""
    from tts.fast.decode import StaticDecoder
    from tts.generation import GenerationConfig
    from tts.generation import generate as plain_generate

    model = _gpt_small()
    torch.manual_seed(0)
    prefix = torch.randn(2, 11, model.model_dim) * 0.5
    cfg = GenerationConfig(num_beams=beams, do_sample=True, max_mel_tokens=70, warn_on_limit=False)
    for ahead in (True, False):
        dec = StaticDecoder(
            model,
            prefix,
            None,
            cfg,
            output_scores=True,
            bucket=bucket,
            generator=torch.Generator().manual_seed(5),
            reorder="swap",
            ahead=ahead,
        )
        log: list[tuple] = []
        _stand_in_graphs(dec, log)
        with torch.no_grad():
            out = dec.run(check_every=check_every)
        replays = [e[1] for e in log if e[0] == "replay"]
        assert dec.eager_steps == 1 and replays == list(range(1, cfg.max_mel_tokens))
        # Ahead: every capture happens at a check (or right after the first step), never at
        # a window's first step; otherwise at the first step of each window (the steps whose
        # cache position, after the 11 prompt positions and the start code, starts a bucket).
        at = sorted({e[2] for e in log if e[0] == "capture"})
        starts = [s for s in range(1, cfg.max_mel_tokens) if (11 + 1 + s) % bucket == 0]
        assert at == (
            [1] + sorted({s - s % check_every for s in starts if s >= check_every})
            if ahead
            else [1, *starts]
        ), at
        ref = plain_generate(
            model, prefix, None, cfg, output_scores=True, generator=torch.Generator().manual_seed(5)
        )
        _assert_same_generation(ref, out, beams)


def test_static_decoder_stops_like_plain():
    """Rows that finish early: same codes and step count with any check interval."""
    from tts.fast.decode import generate as fast_generate
    from tts.generation import GenerationConfig
    from tts.generation import generate as plain_generate

    model = _gpt_small()
    torch.manual_seed(1)
    prefix = torch.randn(3, 20, model.model_dim) * 0.5
    with torch.no_grad():
        model.mel_head.bias[model.stop_mel_token] += 6.0  # make the stop code likely
        try:
            for beams in (1, 2):
                cfg = GenerationConfig(
                    num_beams=beams, do_sample=False, max_mel_tokens=30, warn_on_limit=False
                )
                plain = plain_generate(model, prefix, None, cfg)
                for every in (1, 4):
                    fast = fast_generate(model, prefix, None, cfg, check_every=every)
                    assert torch.equal(plain.codes, fast.codes), (beams, every)
                    assert plain.steps == fast.steps
        finally:
            model.mel_head.bias[model.stop_mel_token] -= 6.0


def _padded_prefix(model, length: int = 20):
    """A batch of 2 prefixes, the second left-padded by 3 positions."""
    gen = torch.Generator().manual_seed(length)
    prefix = torch.randn(2, length, model.model_dim, generator=gen) * 0.5
    valid = torch.ones(2, length, dtype=torch.bool)
    valid[1, :3] = False
    return prefix, valid


def _items_finishing_apart():
    """The small GPT with its stop code made likely (+2.5 on its bias) and three items (the
    second left-padded by 3) that finish at different steps (4-9 with beam sampling): returns
    (model, prefix, valid, generators), ``generators()`` one new generator per item."""
    model = _gpt_small()
    gen = torch.Generator().manual_seed(3)
    prefix = torch.randn(3, 20, model.model_dim, generator=gen) * 0.5
    valid = torch.ones(3, 20, dtype=torch.bool)
    valid[1, :3] = False
    with torch.no_grad():
        model.mel_head.bias[model.stop_mel_token] += 2.5
    return model, prefix, valid, lambda: [torch.Generator().manual_seed(9 + i) for i in range(3)]


SEARCHES = {
    "greedy": (1, False),
    "sampling": (1, True),
    "beam_search": (3, False),
    "beam_sampling": (3, True),
}


# The fused stack compiled (graphf: swap reorder, compiled processors and token choice) and op
# by op (compile_stack=False with the table reorder, as in graphke), with the reorder each uses.
FUSED_STACKS = {
    "compiled": (decode.VARIANTS["graphf"], "swap"),
    "op_by_op": ({"fused": True, "reorder": "table", "compile_stack": False}, "table"),
}


@pytest.mark.parametrize("stack", list(FUSED_STACKS))
@pytest.mark.parametrize("search", list(SEARCHES))
def test_fused_decoder_matches_plain_generation(search, stack):
    """The fused layer pieces in float32, compiled or op by op, give the codes, steps and beam
    indices of tts.generation, with no fallback; scores agree to float32 rounding (Inductor's
    LayerNorm / GELU and sums round in another order than ATen's)."""
    from tts import fast

    options, reorder = FUSED_STACKS[stack]
    beams, sample = SEARCHES[search]
    before = len(fast.FALLBACKS)
    _, stats = _variant_against_plain(_gpt_small(), beams, sample, options)
    assert len(fast.FALLBACKS) == before, fast.FALLBACKS[before:]
    assert stats["fused"] and stats["reorder"] == (reorder if beams > 1 else "copy")


def test_fused_reduce_matmul_matches_plain_generation():
    """matmul="reduce" (projections as Inductor reductions): same codes in beam search."""
    from tts import fast
    from tts.generation import GenerationConfig
    from tts.generation import generate as plain_generate

    model = _gpt_small()
    prefix, valid = _padded_prefix(model)
    cfg = GenerationConfig(
        num_beams=3, do_sample=False, max_mel_tokens=24, warn_on_limit=False, repetition_penalty=2.0
    )
    before = len(fast.FALLBACKS)
    plain = plain_generate(model, prefix, valid, cfg, output_scores=True)
    stats: dict = {}
    fused = decode.generate(
        model, prefix, valid, cfg, output_scores=True, stats=stats, fused=True, matmul="reduce"
    )
    assert len(fast.FALLBACKS) == before, fast.FALLBACKS[before:]
    assert stats["fused"]
    assert torch.equal(plain.codes, fused.codes)
    torch.testing.assert_close(fused.scores, plain.scores, rtol=1e-5, atol=1e-5)


def test_fused_code_is_shared_across_cache_sizes():
    """Another prompt length (another cache capacity) reuses the compiled layer pieces: the
    capacity is the one dynamic dimension, so Dynamo does not recompile."""
    from tts import fast
    from tts.generation import GenerationConfig

    model = _gpt_small()
    cfg = GenerationConfig(num_beams=3, do_sample=False, max_mel_tokens=6, warn_on_limit=False)
    before = len(fast.FALLBACKS)
    for length in (20, 37):  # capacities 32 and 48 with 16-position buckets
        prefix, valid = _padded_prefix(model, length)
        stats: dict = {}
        with torch._dynamo.config.patch(error_on_recompile=length != 20):
            decode.generate(model, prefix, valid, cfg, fused=True, bucket=16, stats=stats)
        assert stats["fused"], fast.FALLBACKS[before:]
    assert len(fast.FALLBACKS) == before, fast.FALLBACKS[before:]


def _decode_with_reorders(reorders: tuple[str, ...], steps: int) -> list:
    """(decoder, output) per beam-reorder mode: the same padded batch, beam sampling with a
    repetition penalty, plain layers, same seed."""
    from tts.fast.decode import StaticDecoder
    from tts.generation import GenerationConfig

    model = _gpt_small()
    prefix, valid = _padded_prefix(model)
    cfg = GenerationConfig(
        num_beams=3, max_mel_tokens=steps, warn_on_limit=False, repetition_penalty=2.0
    )
    runs = []
    for reorder in reorders:
        with torch.no_grad():
            dec = StaticDecoder(
                model,
                prefix,
                valid,
                cfg,
                output_scores=True,
                reorder=reorder,
                generator=torch.Generator().manual_seed(4),
                bucket=16,
            )
            runs.append((dec, dec.run()))
    return runs


def _assert_same_beams(a, b) -> None:
    """Bit-identical codes, scores and beam indices."""
    assert torch.equal(a.codes, b.codes)
    assert torch.equal(a.scores, b.scores)
    assert torch.equal(a.beam_indices, b.beam_indices)


def test_swap_reorder_is_exact():
    """reorder="swap" (gather into the second cache, swap) leaves bit-identical scores, codes
    and cache contents to the in-place reorder (beam sampling, plain layers)."""
    (copy_dec, copy_out), (swap_dec, swap_out) = _decode_with_reorders(("copy", "swap"), 20)
    assert swap_dec.swap and not copy_dec.swap
    _assert_same_beams(copy_out, swap_out)
    assert torch.equal(copy_dec.cache.k, swap_dec.cache.k)
    assert torch.equal(copy_dec.cache.v, swap_dec.cache.v)


def test_table_reorder_is_exact():
    """reorder="table" (nothing moves; attention reads through the source-row table) gives
    bit-identical codes, scores and beam indices to the in-place reorder, and the cache read
    through the table is the reordered cache (beam sampling, padded batch, plain layers)."""
    from tts.fast.attention import gather_rows

    (copy_dec, copy_out), (table_dec, table_out) = _decode_with_reorders(("copy", "table"), 40)
    assert table_dec.table and not table_dec.swap and table_dec.src is not None
    _assert_same_beams(copy_out, table_out)
    # the beams really parted: some generated positions are read from another row
    own = torch.arange(table_dec.rows).unsqueeze(1)
    first = table_dec.s_len + 1
    assert bool((table_dec.src[:, first : first + 40] != own).any())
    for layer in range(len(copy_dec.model.gpt.h)):
        for copy_buf, table_buf in (
            (copy_dec.cache.k, table_dec.cache.k),
            (copy_dec.cache.v, table_dec.cache.v),
        ):
            assert torch.equal(copy_buf[layer], gather_rows(table_buf[layer], table_dec.src))


def test_table_reorder_gives_done_items_row_0s_prompt():
    """Once an item is done, the reference feeds its rows from row 0, prompt included; with
    reorder="table" so does the fast decoder (its table's prompt entries move too), so even the
    scores recorded for a done item's rows equal tts.generation's. Three padded items finish at
    different steps (the stop code made likely); beam sampling, with and without early
    stopping."""
    from tts.fast.decode import StaticDecoder
    from tts.generation import GenerationConfig
    from tts.generation import generate as plain_generate

    model, prefix, valid, generators = _items_finishing_apart()
    with torch.no_grad():
        for beams, changes in ((3, {}), (2, {"early_stopping": True})):
            cfg = GenerationConfig(
                num_beams=beams,
                max_mel_tokens=12,
                warn_on_limit=False,
                repetition_penalty=2.0,
                **changes,
            )
            plain = plain_generate(model, prefix, valid, cfg, generator=generators(),
                                   output_scores=True)  # fmt: skip
            dec = StaticDecoder(model, prefix, valid, cfg, generator=generators(),
                                output_scores=True, reorder="table")  # fmt: skip
            out = dec.run()
            done_at = dec.beam.done_at.tolist()
            # the rows of the items done before the last really read row 0's prompt
            early = [i for i in range(3) if done_at[i] < max(done_at)]
            prompt = dec.src.view(3, beams, -1)[early, :, : dec.s_len + 1]
            assert set(early) - {0} and bool((prompt == 0).all()), (changes, done_at)
            _assert_same_generation(plain, out, beams=beams)


@pytest.mark.parametrize("beams", [1, 3])
def test_kept_decoder_gives_plain_generations_results(beams):
    """generate(keep=True): calls with prompts of other lengths (padded batches), seeds and
    finishing steps reuse one decoder (the second and later calls report ``kept``; a prompt
    too long for its cache makes a new one), and every call gives tts.generation's codes,
    steps, beam indices and scores; release() drops it."""
    from tts.fast import decode
    from tts.generation import GenerationConfig
    from tts.generation import generate as plain_generate

    model, _, _, _ = _items_finishing_apart()  # items stop at different steps
    cfg = GenerationConfig(
        num_beams=beams, max_mel_tokens=30, warn_on_limit=False, repetition_penalty=2.0
    )
    decode.release()
    kept = []
    # 300 positions: more than the first decoder's 256 (20 + 1 + 30, rounded up)
    for length, seed in ((20, 1), (9, 2), (20, 3), (27, 4), (270, 5), (12, 6)):
        prefix, valid = _padded_prefix(model, length)
        gens = [torch.Generator().manual_seed(seed + i) for i in range(2)]
        plain = plain_generate(model, prefix, valid, cfg, generator=gens, output_scores=True)
        stats = {}
        gens = [torch.Generator().manual_seed(seed + i) for i in range(2)]
        with torch.no_grad():
            out = decode.generate(model, prefix, valid, cfg, generator=gens, output_scores=True,
                                  stats=stats, keep=True, reorder="table")  # fmt: skip
        _assert_same_generation(plain, out, beams)
        # the callers' generators went on as the plain path's did
        assert [g.initial_seed() for g in gens] == [seed, seed + 1]
        kept.append(stats["kept"])
    assert kept == [False, True, True, True, False, True], kept
    assert decode._KEPT.entry is not None
    decode.release()
    assert decode._KEPT.entry is None


def test_kept_decoder_starts_in_a_new_decoders_state():
    """A call whose items finished at different steps leaves every buffer of the decoder
    (caches, table, histories, hypotheses, flags) where it was made, and start() then makes
    each equal to a new decoder's for the next prompt, still in the same memory (so graphs
    captured before read and write it)."""
    from tts.fast.decode import StaticDecoder
    from tts.generation import GenerationConfig

    model, prefix, valid, generators = _items_finishing_apart()
    cfg = GenerationConfig(
        num_beams=3, max_mel_tokens=12, warn_on_limit=False, repetition_penalty=2.0
    )
    options = {"reorder": "table", "output_scores": True, "capacity": 64}
    other = torch.randn(3, 14, model.model_dim, generator=torch.Generator().manual_seed(8)) * 0.5
    other_valid = torch.ones(3, 14, dtype=torch.bool)
    other_valid[2, :5] = False
    with torch.no_grad():
        dec = StaticDecoder(model, prefix, valid, cfg, generator=generators(), **options)
        before = _tensors(dec)
        dec.run()
        assert len(set(dec.beam.done_at.tolist())) > 1  # the items finished apart
        for name, tensor in _tensors(dec).items():  # (the result is assembled on copies)
            assert tensor.data_ptr() == before[name].data_ptr(), f"{name} moved in run()"
        dec.start(other, other_valid, generators())
        fresh = StaticDecoder(model, other, other_valid, cfg, generator=generators(), **options)
    after, want = _tensors(dec), _tensors(fresh)
    assert after.keys() == want.keys() == before.keys()
    for name, tensor in after.items():
        assert tensor.data_ptr() == before[name].data_ptr(), f"{name} moved"
        assert torch.equal(tensor, want[name]), f"{name} differs from a new decoder's"
    assert dec.s_len == fresh.s_len == 14 and int(dec.first_pos) == 15


def test_kept_decoder_generators_and_reuse_limits():
    """What a kept decoder's graphs were captured with must match the next call: the same
    generator given for two items is one generator (not two starting in the same state), a
    decoder of the swap reorder with beams serves one call only, and a prompt too long for
    the cache is refused; a release() while a call has the decoder is not undone."""
    from tts.fast.decode import StaticDecoder, _generator_shape
    from tts.generation import GenerationConfig

    a, b = torch.Generator(), torch.Generator()
    assert _generator_shape(None) is None and _generator_shape(a) == "one"
    assert _generator_shape([a, b, a]) == (0, 1, 0) != _generator_shape([a, b, b])
    model = _gpt_small()
    prefix, valid = _padded_prefix(model, 10)
    cfg = GenerationConfig(num_beams=3, max_mel_tokens=5, warn_on_limit=False)
    with torch.no_grad():
        dec = StaticDecoder(model, prefix, valid, cfg, reorder="swap", generator=a)
        dec.run()
        with pytest.raises(ValueError, match="serves one call"):
            dec.start(prefix, valid, a)
        dec = StaticDecoder(model, prefix, valid, cfg, reorder="table", capacity=32, bucket=16)
        long, long_valid = _padded_prefix(model, 30)
        assert not dec.fits(long) and dec.fits(prefix)
        with pytest.raises(ValueError, match="cannot take"):
            dec.start(long, long_valid)
    # release() while a call has the decoder: the call does not keep it afterwards
    from tts.fast.decode import _Kept

    kept = _Kept()
    assert kept.take(model, (), prefix, None) == (None, 0)
    kept.release()
    kept.give((), dec, 0)
    assert kept.entry is None
    _, lent_at = kept.take(model, (), prefix, None)
    kept.give((), dec, lent_at)
    assert kept.entry == ((), dec)


def _tensors(dec) -> dict:
    """Every tensor a decoder's steps use: its own, its beam state's and hypotheses', its
    caches' and its choice kernels' buffers, by name."""
    found = {}
    for owner, obj in (("", dec), ("beam.", getattr(dec, "beam", None))):
        if obj is None:
            continue
        for name, value in vars(obj).items():
            if isinstance(value, torch.Tensor):
                found[owner + name] = value
    if getattr(dec, "beam", None) is not None:
        for name, value in vars(dec.beam.hyps).items():
            if isinstance(value, torch.Tensor):
                found["hyps." + name] = value
    for i, cache in enumerate(dec.caches):
        found[f"cache{i}.k"], found[f"cache{i}.v"] = cache.k, cache.v
    for name in ("survivors", "snapshots"):
        for i, t in enumerate(getattr(dec, name, ()) or ()):
            found[f"{name}{i}"] = t
    return found


def test_kept_decoder_replays_earlier_graphs_without_the_prompt_length():
    """The graph bookkeeping of a kept decoder, on the CPU with the stand-in graph: a second
    call with a longer prompt runs no eager step, replays the first call's graphs for the
    windows both reach and captures only the windows the first did not reach; its steps
    never read the prompt length on the host (it is None while a graph replays); and both
    calls give tts.generation's codes."""
    from tts.fast.decode import StaticDecoder
    from tts.generation import GenerationConfig
    from tts.generation import generate as plain_generate

    model = _gpt_small()
    cfg = GenerationConfig(num_beams=3, max_mel_tokens=40, warn_on_limit=False)
    log: list[tuple] = []
    first, first_valid = _padded_prefix(model, 11)
    with torch.no_grad():
        dec = StaticDecoder(model, first, first_valid, cfg, bucket=16, reorder="table",
                            generator=torch.Generator().manual_seed(5), capacity=96)  # fmt: skip
        _stand_in_graphs(dec, log, hide_prompt_length=True)
        outs = [dec.run(check_every=8)]
        windows = set(dec.graphs)
        assert dec.eager_steps == 1 and windows == {(w, 0) for w in range(0, 4)}, windows
        second, second_valid = _padded_prefix(model, 30)
        dec.start(second, second_valid, torch.Generator().manual_seed(6))
        log.clear()
        outs.append(dec.run(check_every=8))
    assert dec.eager_steps == 0
    # positions 31 .. 70: windows 1-4, of which only 4 is new
    assert [e[1] for e in log if e[0] == "capture"] == [(4, 0)], log
    assert len([e for e in log if e[0] == "replay"]) == cfg.max_mel_tokens
    for (prefix, valid), seed, out in zip(
        ((first, first_valid), (second, second_valid)), (5, 6), outs, strict=True
    ):
        plain = plain_generate(
            model, prefix, valid, cfg, generator=torch.Generator().manual_seed(seed)
        )
        assert torch.equal(plain.codes, out.codes) and plain.steps == out.steps


def test_kept_decoder_captures_the_window_of_its_eager_first_step():
    """A decoder made to be kept captures the window of its eager first step even when no
    later step of that call is in it (prompt 14: step 0 at position 15 ends window 0), so a
    later call with the same prompt length captures nothing (before the fix, the GPU test of
    kept decoders saw it capture that window: docs/benchmarks.md run BT); a decoder not kept
    leaves that window alone."""
    from tts.fast.decode import StaticDecoder
    from tts.generation import GenerationConfig

    model = _gpt_small()
    cfg = GenerationConfig(num_beams=3, max_mel_tokens=20, warn_on_limit=False)
    prefix, valid = _padded_prefix(model, 14)
    captured = {}
    for capacity in (0, 96):
        log: list[tuple] = []
        with torch.no_grad():
            dec = StaticDecoder(model, prefix, valid, cfg, bucket=16, reorder="table",
                                generator=torch.Generator().manual_seed(5), capacity=capacity)  # fmt: skip
            _stand_in_graphs(dec, log)
            dec.run(check_every=8)
            captured[capacity] = [e[1] for e in log if e[0] == "capture"]
            if capacity:
                log.clear()
                dec.start(prefix, valid, torch.Generator().manual_seed(6))
                dec.run(check_every=8)
                assert dec.eager_steps == 0
                assert [e for e in log if e[0] == "capture"] == [], log
    assert captured[0] == [(1, 0), (2, 0)], captured  # step 0's window 0 ran eagerly only
    assert captured[96] == [(0, 0), (1, 0), (2, 0)], captured


def test_decode_profile_script_runs_on_cpu(tmp_path):
    """scripts/device/decode_profile.py (the GPU measurement) runs: tiny GPT, CPU, two variants
    that compile nothing (the fused ones are checked above)."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "profile.json"
    cmd = [
        sys.executable,
        str(root / "scripts" / "device" / "decode_profile.py"),
        "--tiny",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--steps",
        "6",
        "--runs",
        "1",
        "--batches",
        "1",
        "--variants",
        "graphr,graph",
        "--json",
        str(out),
    ]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=root,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())["results"]
    assert [r["variant"] for r in rows] == ["graph", "graphr"]
    assert rows[1]["swap"] and rows[1]["agreement"] == 1.0
    assert all(r["ms_per_step"] > 0 for r in rows)


def test_decode_profile_critical_path():
    """decode_profile.critical_path charges overlapping kernels only the time by which they
    extend the step, so the charges add up to the span (gaps included)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "device" / "decode_profile.py"
    spec = importlib.util.spec_from_file_location("decode_profile", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kernels = [  # a: 0-10; b overlaps a, ends at 14; c after a gap, 20-25; d inside c
        {"name": "a", "ts": 0.0, "dur": 10.0},
        {"name": "b", "ts": 2.0, "dur": 12.0},
        {"name": "c", "ts": 20.0, "dur": 5.0},
        {"name": "d", "ts": 21.0, "dur": 1.0},
        {"name": "b", "ts": 25.0, "dur": 3.0},
    ]
    out = module.critical_path(list(reversed(kernels)))
    assert out["span_us"] == 28.0
    assert out["critical"] == [
        {"name": "c", "count": 1, "us": 11.0},
        {"name": "a", "count": 1, "us": 10.0},
        {"name": "b", "count": 2, "us": 7.0},
        {"name": "d", "count": 1, "us": 0.0},
    ]
    assert sum(c["us"] for c in out["critical"]) == out["span_us"]


def test_s2mel_profile_script_runs_on_cpu(tmp_path):
    """scripts/device/s2mel_profile.py (the GPU profile of one DiT call) runs: tiny DiT, CPU,
    uncompiled; it counts the call's FLOPs (timings and kernels are CUDA-only)."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "s2mel.json"
    cmd = [
        sys.executable,
        str(root / "scripts" / "device" / "s2mel_profile.py"),
        *("--tiny", "--device", "cpu", "--no-compile", "--frames", "30"),
        *("--batches", "1,2", "--json", str(out)),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "B=1: ran on cpu" in proc.stdout and "B=2: ran on cpu" in proc.stdout, proc.stdout
    assert json.loads(out.read_text())["frames"] == 30


def test_vocoder_profile_script_runs_on_cpu(tmp_path):
    """scripts/device/vocoder_profile.py (the GPU measurement of BigVGAN) runs: tiny vocoder,
    CPU, the plain variants (the fused kernel is CUDA-only there)."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "vocoder.json"
    cmd = [
        sys.executable,
        str(root / "scripts" / "device" / "vocoder_profile.py"),
        "--tiny",
        "--device",
        "cpu",
        "--precision",
        "float32",
        "--frames",
        "12",
        "--batches",
        "1,2",
        "--repeats",
        "1",
        "--json",
        str(out),
    ]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=root,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert [(r["batch"], r["variant"]) for r in result["times"]] == [
        (1, "eager"),
        (1, "convs"),
        (2, "eager"),
        (2, "convs"),
    ]
    assert result["flops_per_row"] > 0 and all(r["seconds"] > 0 for r in result["times"])


@pytest.mark.parametrize("beams", [1, 3])
@pytest.mark.parametrize("sample", [False, True])
def test_processors_equal_process_scores(beams, sample):
    """The decoder's own copy of the logits processors (compilable around an eager cumulative
    sum) computes exactly tts.generation.process_scores."""
    from tts.fast.decode import _processors
    from tts.generation import GenerationConfig, process_scores

    gen = torch.Generator().manual_seed(beams + 2 * sample)
    logits = torch.randn(6, 300, generator=gen) * 3
    seen = torch.rand(6, 300, generator=gen) < 0.1
    for top_p, top_k, temperature in ((0.8, 30, 0.8), (None, None, None), (0.5, 0, 1.0)):
        cfg = GenerationConfig(
            num_beams=beams,
            do_sample=sample,
            top_p=top_p,
            top_k=top_k,
            temperature=temperature,
            repetition_penalty=3.0,
        )
        scores = torch.log_softmax(logits, dim=-1) if beams > 1 else logits
        expected = process_scores(scores, seen, cfg, 2 if beams > 1 else 1)
        assert torch.equal(_processors(logits, seen, cfg, beams > 1), expected)


@pytest.mark.parametrize("item", CFM, ids=[_id(c) for c in CFM])
def test_cfm_cases_through_fast_solve(item):
    fs, case = item
    with patched(gpt=False, s2mel=True, bigvgan=False, s2mel_graphs=False):
        failures = parity.check_case(fs, case)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("item", CFM, ids=[_id(c) for c in CFM])
def test_fast_solve_without_trace(item):
    """The untraced path (the one CUDA graphs capture) gives the golden output."""
    from tts.fast.s2mel import solve
    from tts.parity import s2mel_cases as sc

    fs, case = item
    opts = parity.RunOptions()
    model = sc._model(fs, opts)
    args = case["args"]
    noise = sc._inp(fs, case, "noise_z", opts)
    t_span = torch.linspace(0, 1, int(args["n_timesteps"]) + 1)
    out = solve(
        model.cfm,
        noise,
        sc._inp(fs, case, "x_lens", opts),
        sc._inp(fs, case, "prompt", opts),
        sc._inp(fs, case, "mu", opts),
        sc._inp(fs, case, "style", opts),
        t_span,
        float(args["inference_cfg_rate"]),
        graphs=False,
    )
    comparison = fs.compare(case, case["outputs"]["out"], out)
    assert comparison.failure() is None, comparison.failure()


@pytest.mark.parametrize("item", DIT, ids=[_id(c) for c in DIT])
def test_fused_estimator_matches_golden(item):
    from tts.fast.s2mel import fused
    from tts.parity import s2mel_cases as sc

    fs, case = item
    opts = parity.RunOptions()
    model = sc._model(fs, opts)
    names = ("x", "prompt_x", "x_lens", "t", "style", "cond")
    x, prompt_x, x_lens, t, style, cond = (sc._inp(fs, case, n, opts) for n in names)
    est = fused(model.cfm.estimator).estimator
    est.transformer.drop = bool((x_lens >= x.size(-1)).all())
    with torch.no_grad():
        out = est(x, prompt_x, x_lens, t, style, cond)
    comparison = fs.compare(case, case["outputs"]["out"], out)
    assert comparison.failure() is None, comparison.failure()


@pytest.mark.parametrize("item", DIT[:2], ids=[_id(c) for c in DIT[:2]])
def test_half_precision_estimator_gives_the_autocast_bits(item):
    """The solve's bf16 estimator (its Linear / Conv1d weights and biases stored in bf16)
    gives the same bits as the float32 estimator under the same bf16 autocast, which casts
    those weights in every call; everything else in it stays float32."""
    from tts.fast.s2mel import _FusedConv1d, fused
    from tts.parity import s2mel_cases as sc
    from tts.precision import precision_context

    fs, case = item
    model = sc._model(fs, parity.RunOptions())
    names = ("x", "prompt_x", "x_lens", "t", "style", "cond")
    args = [sc._inp(fs, case, n, parity.RunOptions()) for n in names]
    entry = fused(model.cfm.estimator)
    half = entry.for_precision("bfloat16")
    assert (
        half is entry.for_precision("bfloat16")
        and entry.for_precision("float32") is entry.estimator
    )
    matrix = (torch.nn.Linear, torch.nn.Conv1d, _FusedConv1d)
    for module in half.modules():
        own = list(module.parameters(recurse=False))
        want = torch.bfloat16 if isinstance(module, matrix) else torch.float32
        assert all(p.dtype == want for p in own), type(module).__name__
        if isinstance(module, _FusedConv1d):  # stored once in the layout its 2-d form reads
            assert module.channels_last
            assert module.weight.unsqueeze(2).is_contiguous(memory_format=torch.channels_last)
    drop = bool((args[2] >= args[0].size(-1)).all())
    half.transformer.drop = entry.estimator.transformer.drop = drop
    # On the CPU the convolutions run in their 1-d form, as autocast's: oneDNN picks its
    # algorithm by layout and instruction set, so the channels-last form's bits depend on the
    # CPU (AVX2 machines differ). CUDA, where the solve runs it, checks that form
    # (tests/test_gpu.py, the same test).
    convs = [m for m in half.modules() if isinstance(m, _FusedConv1d)]
    for conv in convs:
        conv.set_channels_last(False)
    try:
        with torch.no_grad(), precision_context("bfloat16", torch.device("cpu")):
            got = half(*args)
            want = entry.estimator(*args)
    finally:
        for conv in convs:
            conv.set_channels_last(True)
    assert got.dtype == want.dtype and torch.equal(got, want)


def test_fused_conv_switches_between_its_1d_and_channels_last_forms():
    """A WaveNet convolution of the solve's copy stores its weight once in the layout of the
    form it runs (channels-last for the 2-d form, so no call copies it; contiguous for the
    1-d one), and both forms compute the same convolution."""
    from tts.fast.s2mel import _FusedConv1d

    gen = torch.Generator().manual_seed(3)
    conv = _FusedConv1d(torch.randn(6, 4, 3, generator=gen), torch.randn(6, generator=gen), 2)
    x = torch.randn(2, 4, 17, generator=gen)
    want = torch.nn.functional.conv1d(x, conv.weight, conv.bias, dilation=2)
    conv.set_channels_last(True)
    assert conv.weight.unsqueeze(2).is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    torch.testing.assert_close(conv(x), want, rtol=1e-6, atol=1e-6)
    conv.set_channels_last(False)
    assert conv.weight.is_contiguous() and not conv.channels_last
    assert torch.equal(conv(x), want)


def test_compiled_estimator_compiles_past_dynamos_default_limit(monkeypatch):
    """Every batch size of a compiled estimator runs compiled, however small Dynamo's global
    recompile limit: past it plain ``torch.compile`` would run the forward eagerly with only a
    warning (run DL), as the control shows. Dynamo's cache and limit are exercised with its
    ``eager`` backend (no Inductor), on the first DiT fixture case."""
    import functools

    from torch._dynamo.utils import counters

    from tts.fast import s2mel as fast_s2mel
    from tts.fast.s2mel import fused
    from tts.parity import s2mel_cases as sc

    fs, case = DIT[0]
    model = sc._model(fs, parity.RunOptions())
    names = ("x", "prompt_x", "x_lens", "t", "style", "cond")
    args = [sc._inp(fs, case, n, parity.RunOptions()) for n in names]
    plain_compile = torch.compile
    monkeypatch.setattr(torch, "compile", functools.partial(plain_compile, backend="eager"))

    def graphs_for_three_batch_sizes(module) -> int:
        torch._dynamo.reset()
        counters.clear()
        # (Dynamo's config is patched through its own context: monkeypatch would delete it.)
        with torch._dynamo.config.patch(recompile_limit=1), torch.no_grad():
            for rows in (1, 2, 3):
                module(*[a[:1].expand(rows, *a.shape[1:]).contiguous() for a in args])
        return counters["stats"]["unique_graphs"]

    entry = fused(model.cfm.estimator)
    entry.estimator.transformer.drop = True
    assert graphs_for_three_batch_sizes(entry.compiled("float32")) == 3
    control = torch.compile(entry.estimator, dynamic=False)
    assert graphs_for_three_batch_sizes(control) == 1
    # Past its own limit a compiled estimator raises (solve() records the fallback).
    monkeypatch.setattr(fast_s2mel, "RECOMPILE_LIMIT", 2)
    with pytest.raises(Exception, match="recompile"):
        graphs_for_three_batch_sizes(fast_s2mel._Compiled(entry.estimator))


def test_solve_falls_back_to_the_plain_estimator_when_compiling_fails(monkeypatch):
    """A compiled estimator that raises (e.g. past its recompile limit) costs the solve
    nothing but speed: the solve returns the uncompiled estimator's result, records the
    fallback (tts.fast.FALLBACKS, with a warning) and does not try compiling again."""
    import tts.fast as fast
    from tts.fast import s2mel as fast_s2mel
    from tts.parity import s2mel_cases as sc

    fs, case = CFM[0]
    model = sc._model(fs, parity.RunOptions())
    names = ("noise_z", "x_lens", "prompt", "mu", "style")
    args = [sc._inp(fs, case, n, parity.RunOptions()) for n in names]
    t_span = torch.linspace(0, 1, int(case["args"]["n_timesteps"]) + 1)
    cfg = float(case["args"]["inference_cfg_rate"])
    want = fast_s2mel.solve(model.cfm, *args, t_span, cfg, graphs=False)
    calls = []

    def failing(self, *a):
        calls.append(1)
        raise RuntimeError("recompile limit reached (simulated)")

    monkeypatch.setattr(fast_s2mel._Compiled, "forward", failing)
    monkeypatch.setattr(fast, "FALLBACKS", [])
    with pytest.warns(RuntimeWarning, match="s2mel estimator torch.compile"):
        got = fast_s2mel.solve(model.cfm, *args, t_span, cfg, graphs=False, compile=True)
    assert torch.equal(got, want)
    assert fast.FALLBACKS == [
        ("s2mel estimator torch.compile", "RuntimeError: recompile limit reached (simulated)")
    ]
    assert fast_s2mel.fused(model.cfm.estimator).compile_failed and calls == [1]
    again = fast_s2mel.solve(model.cfm, *args, t_span, cfg, graphs=False, compile=True)
    assert torch.equal(again, want) and calls == [1]


@torch.no_grad()
def test_solve_graphs_capture_once_per_shape_then_replay(monkeypatch):
    """The CFM solve's graphs (with the stand-in capture, on the CPU): a shape's first call
    captures and returns the eager solve, its later calls replay with their own inputs, and a
    shape whose capture failed runs eagerly without trying again. Every result equals the
    solve without graphs."""
    import graph_stand_in
    from graph_stand_in import fake_warm_then_capture

    from tts.fast import graphs as fast_graphs
    from tts.fast import s2mel as fast_s2mel
    from tts.parity import s2mel_cases as sc

    monkeypatch.setattr(fast_graphs, "warm_then_capture", fake_warm_then_capture)
    fs, case = CFM[0]
    model = sc._model(fs, parity.RunOptions())
    names = ("noise_z", "x_lens", "prompt", "mu", "style")
    z, x_lens, prompt, mu, style = (sc._inp(fs, case, n, parity.RunOptions()) for n in names)
    t_span = torch.linspace(0, 1, int(case["args"]["n_timesteps"]) + 1)
    cfg = float(case["args"]["inference_cfg_rate"])
    cache = fast_s2mel.fused(model.cfm.estimator).graphs
    cache.clear()
    gen = torch.Generator().manual_seed(11)
    for i in range(3):  # capture, then two replays with other noise
        noise = z if i == 0 else torch.randn(z.shape, generator=gen)
        args = (noise, x_lens, prompt, mu, style, t_span, cfg)
        want = fast_s2mel.solve(model.cfm, *args, graphs=False)
        got = fast_s2mel.solve(model.cfm, *args, graphs=True)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        assert len(cache) == 1
    ((graph, static_in, _),) = cache.values()
    assert torch.equal(static_in[0], noise)  # the last replay's noise is in the graph's buffer
    monkeypatch.setattr(graph_stand_in, "FAILING", {"CFM solve CUDA graph capture"})
    z2, mu2 = z[..., :-1], mu[:, :-1]  # one frame shorter: a new shape, whose capture fails
    args = (z2, torch.full_like(x_lens, z2.size(-1)), prompt, mu2, style, t_span, cfg)
    want = fast_s2mel.solve(model.cfm, *args, graphs=False)
    for _ in range(2):
        torch.testing.assert_close(
            fast_s2mel.solve(model.cfm, *args, graphs=True), want, rtol=1e-6, atol=1e-6
        )
    assert len(cache) == 2 and sum(v is None for v in cache.values()) == 1
    cache.clear()


def _counted(calls: dict, name: str, fn):
    """``fn``, counting its calls in ``calls[name]`` (which kernels a decoder really ran)."""

    def wrapper(*args, **kwargs):
        calls[name] += 1
        return fn(*args, **kwargs)

    return wrapper


# Run first in each interpreted process: the interpreter without its repeated patching of
# triton.language (tests/triton_interpreter.py), the same results in ~30% less time.
QUICK_INTERPRETER = "import triton_interpreter\ntriton_interpreter.install()\n"


def _run_interpreted(*codes: str, timeout: int = 300) -> None:
    """Run each of ``codes`` in a fresh Python with Triton's CPU interpreter on (it must be set
    before Triton is imported); each must exit 0 and print "ok" last. Several run at the same
    time: the interpreter keeps one core busy, and the slowest of these tests took minutes
    each on CI's two cores."""
    pytest.importorskip("triton")
    from triton_interpreter import run_all

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": f"{root}:{root / 'tests'}"}
    cmds = [[sys.executable, "-c", QUICK_INTERPRETER + textwrap.dedent(c)] for c in codes]
    for done in run_all(cmds, env, timeout, cwd=root):
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.strip().endswith("ok"), done.stdout + done.stderr


def test_quick_interpreter_patches_the_language_once_per_launch():
    """tests/triton_interpreter.py (installed in every interpreted process): a kernel whose
    helper calls Triton's own helper ``tl.zeros`` (which sees ``triton.language.core``) gives
    the right values, and after a first launch (whose rewrite of the helpers adds to their
    globals) a launch patches the language as often with 16 programs as with 2, where the
    plain interpreter patches it again at every helper call."""
    _run_interpreted(
        """
        import torch
        import triton
        import triton.language as tl
        from triton.runtime import interpreter

        @triton.jit
        def plus_one(x):
            return x + 1 + tl.zeros(x.shape, dtype=x.dtype)

        @triton.jit
        def kernel(x_ptr, y_ptr, BLOCK: tl.constexpr):
            i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            tl.store(y_ptr + i, plus_one(tl.load(x_ptr + i)))

        patches = [0]
        patch_builtin = interpreter._patch_builtin
        def counted(*args):
            patches[0] += 1
            return patch_builtin(*args)
        interpreter._patch_builtin = counted
        counts = []
        for programs in (1, 2, 16):
            x = torch.arange(4 * programs, dtype=torch.float32)
            y = torch.empty_like(x)
            patches[0] = 0
            kernel[(programs,)](x, y, BLOCK=4)
            assert torch.equal(y, x + 1), y
            counts.append(patches[0])
        assert counts[1] == counts[2] > 0, counts
        print("ok")
        """
    )


def test_fused_activation_interpreted():
    """The Triton kernel (run by Triton's CPU interpreter) equals Activation1d."""
    _run_interpreted(
        """
        import torch
        from tts.models.bigvgan import Activation1d, Snake, SnakeBeta
        from tts.fast.bigvgan import fused_activation
        torch.manual_seed(0)
        worst = 0.0
        for cls in (SnakeBeta, Snake):
            for length in (1, 2, 7, 40):
                act = cls(5, logscale=True)
                with torch.no_grad():
                    act.alpha.normal_(0, 0.3)
                    if hasattr(act, "beta"):
                        act.beta.normal_(0, 0.3)
                m = Activation1d(act)
                x = torch.randn(2, 5, length) * 2
                with torch.no_grad():
                    ref = m(x)
                out = fused_activation(m, x, block=16)
                assert out.shape == ref.shape
                worst = max(worst, float((out - ref).abs().max() / ref.abs().max()))
        assert worst < 1e-5, worst
        print("worst", worst)
        print("ok")
        """
    )


def test_vocoder_bias_and_residual_folding_interpreted():
    """The AMP blocks with the convolutions' biases, the residuals and the stages' block means
    inside the kernels (Triton's CPU interpreter) give the plain forward's bits: the activation
    with a bias equals the activation of ``x + bias`` rounded to x's dtype, the residual pass
    equals torch's separate adds, and the whole vocoder equals the plain forward with fused
    activations, for one and four blocks per stage
    (a mean over 3, IndexTTS2's, is checked on CUDA: on the CPU torch divides where on CUDA it
    multiplies by the reciprocal, as the kernel does). Not bf16 here: the interpreter truncates
    float32 to bf16 where GPUs round; tests/test_gpu.py has it. The whole vocoder to float32
    rounding only: see the comment there."""
    _run_interpreted(
        """
        import torch
        from tts.bench import randomize_
        from tts.fast import FALLBACKS
        from tts.fast.bigvgan import bias_residual, fuse_activations, fused_activation
        from tts.models.bigvgan import Activation1d, BigVGAN, SnakeBeta
        torch.manual_seed(0)
        for dtype in (torch.float32, torch.float16):
            act = SnakeBeta(6, logscale=True)
            with torch.no_grad():
                act.alpha.normal_(0, 0.3)
                act.beta.normal_(0, 0.3)
            m = Activation1d(act)
            x = (torch.randn(2, 6, 37) * 2).to(dtype)
            bias = torch.randn(6)
            want = fused_activation(m, (x + bias.to(dtype)[:, None]).to(dtype), block=16)
            got = fused_activation(m, x, block=16, bias=bias)
            assert torch.equal(got, want), dtype
            y, r, acc = (torch.randn(2, 6, 37).to(dtype) for _ in range(3))
            b = bias.to(dtype)[:, None]
            assert torch.equal(bias_residual(y.clone(), r, bias, block=16), (y + b) + r)
            assert torch.equal(bias_residual(y.clone(), r, None, acc, block=16), acc + (y + r))
            got = bias_residual(y.clone(), r, bias, acc, 3, block=16)
            inv = torch.ones((), dtype=torch.float32) / 3
            want = ((acc + ((y + b) + r)).float() * inv).to(dtype)
            assert torch.equal(got, want), dtype
        for kernels in ([3], [3, 5, 7, 9]):
            cfg = dict(
                num_mels=8, upsample_rates=[2, 2], upsample_kernel_sizes=[4, 4],
                upsample_initial_channel=16, resblock="1", resblock_kernel_sizes=kernels,
                resblock_dilation_sizes=[[1, 3]] * len(kernels), activation="snakebeta",
                snake_logscale=True,
            )
            with torch.no_grad():
                voc = randomize_(BigVGAN.from_config(cfg), seed=3).remove_weight_norm().eval()
                for name, p in voc.named_parameters():
                    if name.endswith("bias"):
                        p.normal_(0, 0.5)  # randomize_ zeroes biases: make them count
                mel = torch.randn(2, 8, 11)
                fuse_activations(voc, "triton")
                got = voc(mel)
                want = BigVGAN.forward(voc, mel)  # the class's forward: activations fused only
            assert not FALLBACKS, FALLBACKS
            # oneDNN adds a convolution's bias inside its accumulation on some CPUs (AVX2
            # builds), so moving it into the activation kernel changes float32 rounding there:
            # within 1e-5 here, bit for bit on CUDA (tests/test_gpu.py).
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        print("ok")
        """
    )


def test_triton_window_gather_equals_index_select_interpreted():
    """The beam-reorder copy kernel (Triton's CPU interpreter) moves exactly what
    ``index_select`` moves, for several windows, row orders and dtypes, and nothing else."""
    _run_interpreted(
        """
        import torch
        from tts.fast import gather
        assert gather.available(torch.zeros(1))
        torch.manual_seed(0)
        for dtype in (torch.float32, torch.bfloat16):
            src = torch.randn(2, 2, 6, 3, 40, 8).to(dtype)
            for lo, end in ((0, 40), (7, 19), (12, 13), (39, 40)):
                for rows_from in ([0, 0, 0, 3, 3, 3], [5, 4, 3, 2, 1, 0], [2, 2, 5, 0, 1, 1]):
                    idx = torch.tensor(rows_from)
                    dst = torch.full_like(src, 7.0)
                    gather.BLOCK = 32  # several blocks per run
                    gather.gather_window(src, dst, idx, lo, end)
                    want = torch.full_like(src, 7.0)
                    want[..., lo:end, :] = src[..., lo:end, :].index_select(2, idx)
                    assert torch.equal(dst, want), (dtype, lo, end, rows_from)
        print("ok")
        """
    )


def test_few_row_linear_kernels_interpreted():
    """tts.fast.linear (Triton's CPU interpreter) against the op-by-op computation: LayerNorm,
    GELU, residual and the KV write, 1 to 8 rows
    (more are refused), float32 within 1e-5, bf16 within the error two roundings may make
    (2^-7 of the rounded magnitudes); the LayerNorm kernel alone against F.layer_norm (bf16:
    within one ulp)."""
    _run_interpreted(
        """
        import torch
        from kernel_reference import assert_qkv_written
        from kernel_reference import assert_rounding_close as close
        from kernel_reference import linear_reference as ref
        import torch.nn.functional as F
        from tts.fast import linear, pdl_available
        assert linear.available(torch.zeros(1)) and not pdl_available("cpu")
        torch.manual_seed(0)
        K, N = 48, 80

        for dtype in (torch.float32, torch.bfloat16):
            for rows in (1, 3, 8):
                x = (torch.randn(rows, K) + 0.5).to(dtype)
                w = (torch.randn(N, K) * 0.2).to(dtype)
                b = torch.randn(N).to(dtype)
                ln = (torch.randn(K).to(dtype), torch.randn(K).to(dtype), 1e-5)
                res = torch.randn(rows, N).to(dtype)
                for kw in ({}, {"ln": ln}, {"ln": ln, "gelu": True}, {"residual": res}):
                    close(linear.linear(x, w, b, **kw), *ref(x, w, b, **kw))
                want = F.layer_norm(x.float(), (K,), ln[0].float(), ln[1].float(), 1e-5)
                close(linear.layer_norm(x, *ln), want.to(dtype), 2**-7 * want.abs().double())
            rows, heads, hd = 3, 4, 8
            width = heads * hd
            x = torch.randn(rows, width).to(dtype)
            w = (torch.randn(3 * width, width) * 0.2).to(dtype)
            b = torch.randn(3 * width).to(dtype)
            ln = (torch.randn(width).to(dtype), torch.randn(width).to(dtype), 1e-5)
            kv = torch.zeros(2, rows, heads, 10, hd).to(dtype)
            q = linear.linear(x, w, b, ln=ln, kv=(kv[0], kv[1], torch.tensor([5]), width))
            assert_qkv_written(q, kv, 5, *ref(x, w, b, ln=ln))
        try:
            linear.linear(torch.zeros(9, K), torch.zeros(N, K), torch.zeros(N))
            raise SystemExit("9 rows were accepted")
        except ValueError as exc:
            assert "at most 8 rows" in str(exc)
        print("ok")
        """
    )


def test_tensor_core_linear_kernel_interpreted():
    """tts.fast.linear's tensor-core kernel (Triton's CPU interpreter; bf16 and fp16 at widths it
    takes: 384 = (2 + 1) x 128 and 256 = 2 x 128 slices, 80 outputs, so the last program's
    columns are masked) against the op-by-op computation within the error two roundings may
    make, with each epilogue and the KV write, 1 to 8 rows; the kernel really ran; float32 and
    a width it does not take go to the CUDA-core kernel."""
    _run_interpreted(
        """
        import torch
        from kernel_reference import assert_qkv_written
        from kernel_reference import CountedLaunches
        from kernel_reference import assert_rounding_close as close
        from kernel_reference import linear_reference as ref
        from tts.fast import linear
        torch.manual_seed(1)
        launches = {"mma": 0, "cuda_cores": 0}
        linear._mma_kernel = CountedLaunches(launches, "mma", linear._mma_kernel)
        linear._linear_kernel = CountedLaunches(launches, "cuda_cores", linear._linear_kernel)
        assert linear.mma_slices(384) == (2, 1) and linear.mma_slices(256) == (2, 0)
        assert linear.mma_slices(1280) == (8, 2) and linear.mma_slices(5120) is None
        assert linear.mma_slices(48) is None and linear.mma_slices(896) is None  # 7 = 4 + 3
        assert linear.on_tensor_cores(torch.bfloat16, 1280) == (8, 2)
        assert linear.on_tensor_cores(torch.float32, 1280) is None
        assert [linear.mma_block_rows(r) for r in range(1, 9)] == [4, 4, 4, 4, 8, 8, 8, 8]
        N = 80
        for dtype in (torch.bfloat16, torch.float16):
            for K in (384, 256):
                for rows in (1, 3, 8):
                    x = (torch.randn(rows, K) + 0.5).to(dtype)
                    w = (torch.randn(N, K) * K**-0.5).to(dtype)
                    b = torch.randn(N).to(dtype)
                    ln = (torch.randn(K).to(dtype), torch.randn(K).to(dtype), 1e-5)
                    res = torch.randn(rows, N).to(dtype)
                    for kw in ({}, {"ln": ln, "gelu": True}, {"residual": res}):
                        close(linear.linear(x, w, b, **kw), *ref(x, w, b, **kw))
            rows, heads, hd, width = 3, 4, 96, 384
            x = torch.randn(rows, width).to(dtype)
            w = (torch.randn(3 * width, width) * width**-0.5).to(dtype)
            b = torch.randn(3 * width).to(dtype)
            ln = (torch.randn(width).to(dtype), torch.randn(width).to(dtype), 1e-5)
            kv = torch.zeros(2, rows, heads, 10, hd).to(dtype)
            q = linear.linear(x, w, b, ln=ln, kv=(kv[0], kv[1], torch.tensor([5]), width))
            assert_qkv_written(q, kv, 5, *ref(x, w, b, ln=ln))
        assert launches == {"mma": 2 * (2 * 3 * 3 + 1), "cuda_cores": 0}, launches
        for x in (torch.randn(3, 384), torch.randn(3, 48).bfloat16()):  # float32; 48 wide
            linear.linear(x, torch.randn(N, x.size(1)).to(x.dtype), torch.randn(N).to(x.dtype))
        assert launches["cuda_cores"] == 2, launches
        print("ok")
        """
    )


def test_decode_head_kernels_interpreted():
    """tts.fast.linear.decode_head (Triton's CPU interpreter; bf16 and fp16, a width the
    tensor-core kernel takes, 300 outputs so the last program's columns are masked, 1 to 8
    rows) against tts.fast.fused._head op by op: ln_f then final_norm in float32, rounded
    once, the head in the weights' dtype, logits in float32. Within the error two roundings
    may make; a head that skipped final_norm would not be."""
    _run_interpreted(
        """
        import torch
        from kernel_reference import CountedLaunches
        from kernel_reference import assert_rounding_close as close
        from kernel_reference import linear_reference as ref
        from tts.fast import fused, linear
        torch.manual_seed(2)
        launches = {"mma": 0}
        linear._mma_kernel = CountedLaunches(launches, "mma", linear._mma_kernel)
        K, N = 256, 300
        for dtype in (torch.bfloat16, torch.float16):
            for rows in (1, 3, 8):
                x = (torch.randn(rows, 1, K) * 2 + 0.7).to(dtype)
                f = (torch.randn(K).to(dtype), torch.randn(K).to(dtype), 1e-5)
                n = (torch.randn(K).to(dtype) + 1, torch.randn(K).to(dtype), 1e-6)
                w = (torch.randn(N, K) * K**-0.5).to(dtype)
                b = torch.randn(N).to(dtype)
                out = torch.full((rows, N), float("nan"))
                linear.decode_head(x, *f, *n, w, b, out, False)
                h = fused._norm(fused._norm(x[:, -1].float(), *f), *n).to(dtype)
                want, tol = ref(h, w, b)
                close(out.to(dtype), want, tol)
                assert torch.equal(out.to(dtype).float(), out)  # rounded as the head rounds
                skipped = fused._norm(x[:, -1].float(), *f).to(dtype)
                wrong, _ = ref(skipped, w, b)
                assert float((wrong.double() - want.double()).abs().max()) > 10 * float(tol.max())
        assert launches == {"mma": 6}, launches
        print("ok")
        """
    )


# Codes the interpreted decoder tests generate: 12, not the 24 of the others, as every step's
# cache window is the same 64-position bucket (two attention chunks) either way, and each step
# through the interpreter takes seconds.
INTERPRETED_TOKENS = 12


def test_triton_kernel_decoder_matches_plain_generation_interpreted():
    """The graphka variant (few-row Triton projections and Triton attention, run by Triton's
    CPU interpreter, float32) gives tts.generation's codes, greedy and beam sampling (one
    process each); scores agree to float32 rounding; the kernels really ran (no fallback).
    graphk is graphka with SDPA attention, so this covers its kernels too."""
    code = """
        import torch
        from test_fast import _counted, _gpt_small, _variant_against_plain
        from tts import fast
        from tts.fast import attention, linear
        torch.set_num_threads(1)
        calls = {"linear": 0, "attention": 0}
        linear.linear = _counted(calls, "linear", linear.linear)
        attention.attend = _counted(calls, "attention", attention.attend)
        from test_fast import INTERPRETED_TOKENS as n
        _, stats = _variant_against_plain(_gpt_small(), __BEAMS_SAMPLE__, "graphka", n)
        assert not fast.FALLBACKS, fast.FALLBACKS
        assert stats["fused"] and stats["matmul"] == stats["attention"] == "triton"
        # per layer and fed token (2 layers, n tokens): 4 projections and one attention
        assert calls == {"linear": 2 * 4 * n, "attention": 2 * n}, calls
        print("ok")
        """
    _run_interpreted(
        code.replace("__BEAMS_SAMPLE__", "1, False"),
        code.replace("__BEAMS_SAMPLE__", "3, True"),
        timeout=600,
    )


def test_table_reorder_decoders_match_plain_generation_interpreted():
    """graphfi and graphkr (reorder="table": attention reads through the source-row table, in
    Triton's CPU interpreter; float32; one process each) give tts.generation's codes with beam
    sampling and a padded batch, every attention call got the table (no fallback), and
    graphkr's got the step's position to read ahead around. graphkp and graphki are not run
    again: without PDL (the CPU) they run graphfi's token choice and graphkr's projections
    (graphkr is graphkp with the Triton choice and the read-ahead), and each Triton variant
    takes minutes here."""
    code = """
        import torch
        from test_fast import _gpt_small, _variant_against_plain
        from tts import fast
        from tts.fast import attention
        torch.set_num_threads(1)
        variant = __VARIANT__
        tables, written = [], []
        plain_attend = attention.attend
        def counted(*args, src=None, **kwargs):
            tables.append(src is not None)
            written.append(None if kwargs.get("written") is None else int(kwargs["written"]))
            return plain_attend(*args, src=src, **kwargs)
        attention.attend = counted
        from test_fast import INTERPRETED_TOKENS as n
        prefix, stats = _variant_against_plain(_gpt_small(), 3, True, variant, n)
        assert not fast.FALLBACKS, fast.FALLBACKS
        assert stats["reorder"] == "table" and stats["attention"] == "triton", stats
        # 2 layers x n fed tokens, each with the table
        assert len(tables) == 2 * n and all(tables), tables
        if variant == "graphkr":  # it tells the step's position: prompt + start code + step
            s_len = prefix.size(1)
            assert written == [s_len + 1 + j for j in range(n) for _ in range(2)], written
        else:
            assert written == [None] * (2 * n), written
        print("ok")
        """
    variants = ("graphfi", "graphkr")
    _run_interpreted(*(code.replace("__VARIANT__", repr(v)) for v in variants), timeout=600)


def test_topk_threshold_kernels_interpreted():
    """tts.fast.topk.kth_largest (Triton's CPU interpreter) gives torch.topk's k-th value
    exactly: one chunk and several (128-score chunks), k = 1 to the whole row, many ties, rows
    mostly -inf; k outside 1..n is refused."""
    _run_interpreted(
        """
        import torch
        from tts.fast import topk
        torch.manual_seed(0)
        topk.BLOCK = 128
        for n in (5, 128, 300):
            x = torch.randn(3, n)
            x[1] = (x[1] * 4).round() / 4  # many ties
            x[2, : n - 3] = float("-inf")  # fewer finite scores than k
            for k in sorted({1, 2, 5, min(n, 30), min(n, 128)}):
                got = topk.kth_largest(x, k)
                assert torch.equal(got, torch.topk(x, k).values[..., -1:]), (n, k)
        for k in (0, 6):
            try:
                topk.kth_largest(torch.zeros(2, 5), k)
                raise SystemExit(f"k = {k} was accepted")
            except ValueError as exc:
                assert "outside" in str(exc)
        print("ok")
        """
    )


def _processed_rows(rows: int, vocab: int, device: str, seed: int = 0):
    """Logits of bf16 precision (many ties, as a half GPT gives them) times 3, with 97 zeros of
    both signs tied at the top of row 1 (97: no whole number of them holds exactly a top-p
    share of the tests' settings, whose cumulative probability would be a rounding's toss
    either way) and a row mostly -inf (row 2), and a random history (none among the ties)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    logits = (torch.randn(rows, vocab, device=device, generator=gen) * 3).bfloat16().float()
    logits[1, :97] = 0.0
    logits[1, 48:97] = -0.0
    logits[1, 97:] -= 50
    logits[2, 40:] = float("-inf")
    seen = torch.rand(rows, vocab, device=device, generator=gen) < 0.05
    seen[1, :97] = False
    return logits, seen


# Settings the processors' kernel is checked at: the official ones, and others that keep few,
# many (ties past the draw kernel's tile) or no scores, top-k alone, without sampling, and
# greedy sampling.
PROCESSOR_CONFIGS = (
    ({}, True),
    ({"top_k": 5, "top_p": 0.5, "temperature": 1.3, "repetition_penalty": 2.0}, True),
    ({"top_k": 200, "top_p": 0.95}, True),
    ({"top_k": 3, "top_p": 0.1}, True),
    ({"top_k": 30, "top_p": 1.0}, True),
    ({"do_sample": False}, True),
    ({}, False),
)


def _split_rows(rows: int, vocab: int, device: str, seed: int = 0):
    """Rows for the split processors' kernels (several chunks per row), row ``r`` of kind
    ``r % 6``: 0 bf16-rounded logits; 1 logits in steps of 0.25 (ties at top-k's threshold in
    several chunks); 2 the seen logits the largest (the penalty drops them below the unseen
    ones: a chunk's largest logits are not its largest scores); 3 one logit of 40, 60 in one
    chunk consecutive floats below -2 (log_softmax rounds each 16 of them to one value: ties
    at the threshold where the logits are not) and the rest far below; 4 fewer finite logits
    than top-k; 5 the first half -inf and 97 zeros of both signs tied at the top of the second
    half (more ties than top-k, in several chunks). A random history (none among the ties of
    kinds 3 and 5). Made on the CPU, then moved to ``device``: the same rows everywhere, so
    each row takes the same path everywhere."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, vocab, generator=gen) * 3).bfloat16().float()
    seen = torch.rand(rows, vocab, generator=gen) < 0.05
    for r in range(rows):
        kind = r % 6
        if kind == 1:
            logits[r] = (logits[r] * 4).round() / 4
        elif kind == 2:
            logits[r] += 6 * seen[r]
        elif kind == 3:
            logits[r] -= 40
            logits[r, 20:80] = -2 - torch.arange(60) * 2.0**-22
            logits[r, vocab // 2] = 40.0
            seen[r, 20:80] = False
        elif kind == 4:
            gone = torch.randperm(vocab, generator=gen)[20:]
            logits[r, gone] = float("-inf")
        elif kind == 5:
            half = vocab // 2
            ties = half + torch.randperm(vocab - half, generator=gen)[:97]
            logits[r, :half] = float("-inf")
            logits[r, half:] -= 50
            logits[r, ties] = 0.0
            logits[r, ties[48:]] = -0.0
            seen[r, ties] = False
    return logits.to(device), seen.to(device)


def _split_whole(row: int, k: int, log_softmax: bool) -> bool:
    """Whether the split kernels search row ``row`` of :func:`_split_rows` whole at top-k
    ``k``: kind 3 after log_softmax (a logit left out scores at the threshold) and kind 5 at a
    small top-k (its chunks' ties overflow their slots); the others from their candidates."""
    kind = row % 6
    return (kind == 3 and log_softmax) or (kind == 5 and k < 10)


def _processors_agree(
    rows: int, vocab: int, device: str, split: bool | None = None, make=None, whole=None
) -> None:
    """tts.fast.processors.process against tts.generation.process_scores: the same scores kept
    (exactly the same -inf mask) and the kept ones to float32 rounding, and the survivors of
    top-k (what the beam draw reads): exactly the indices of process_scores' finite scores
    without top-p, in index order, with their count, and their scores. Top-p's sort orders
    equal scores by index, as CUDA's torch.sort does; the CPU's keeps no such order, so on the
    CPU the reference sorts with ``stable=True``. ``split``: process's (None: its default);
    ``make``: the rows (:func:`_processed_rows` when None); ``whole(row, k, log_softmax)``:
    whether the split kernels must search the row whole (checked where they run top-k)."""
    from unittest import mock

    import torch.nn.functional as F

    from tts.fast import processors
    from tts.generation import GenerationConfig, process_scores

    logits, seen = (make or _processed_rows)(rows, vocab, device)
    plain_sort = torch.sort
    stable = mock.patch.object(
        torch, "sort", lambda x, descending=False: plain_sort(x, descending=descending, stable=True)
    )
    for changes, beams in PROCESSOR_CONFIGS:
        cfg = GenerationConfig(**changes)
        keep = 2 if beams else 1
        scores = F.log_softmax(logits, -1) if beams else logits
        with stable if device == "cpu" else contextlib.nullcontext():
            want = process_scores(scores, seen, cfg, keep)
        survivors = processors.survivor_buffers(rows, vocab, device)
        scratch = processors.split_buffers(rows, vocab, device)
        scratch[-1].fill_(-1)
        got = processors.process(
            logits, seen, cfg, keep, log_softmax=beams, survivors=survivors, split=split,
            scratch=scratch,
        )  # fmt: skip
        k = min(max(cfg.top_k, keep), vocab)
        if whole is not None and cfg.do_sample and k <= processors.SPLIT_MAX_K:
            want_whole = [int(whole(r, k, beams)) for r in range(rows)]
            assert scratch[-1].tolist() == want_whole, (changes, beams)
        kept = torch.isfinite(want)
        assert torch.equal(kept, torch.isfinite(got)), (changes, beams)
        # The interpreter's exp and log are numpy's, torch's CPU ones SLEEF's (per instruction
        # set): each rounds within a few ulps, and log_softmax subtracts a log-sum-exp of the
        # scores' size, so on the CPU the bound is 4 ulps of the largest score.
        bound = 1e-6
        if device == "cpu" and kept.any():
            bound = max(bound, 4 * torch.finfo(torch.float32).eps * float(want[kept].abs().max()))
        torch.testing.assert_close(got[kept], want[kept], rtol=1e-6, atol=bound)
        if cfg.do_sample:
            top_k = process_scores(scores, seen, cfg.replace(top_p=1.0), keep)
            values, indices, counts = (s.cpu() for s in survivors)
            for r, row in enumerate(top_k.cpu()):
                left = torch.isfinite(row).nonzero().squeeze(1)
                assert int(counts[r]) == len(left), (changes, beams, r)
                at = slice(r * vocab, r * vocab + len(left))
                assert torch.equal(indices[at].long(), left), (changes, beams, r)
                torch.testing.assert_close(values[at], row[left], rtol=1e-6, atol=bound)


def test_processors_kernel_interpreted():
    """The one-program logits processors' kernel (``split=False``; Triton's CPU interpreter)
    keeps exactly the scores process_scores keeps, at 3 rows of the GPT's 8194 codes and 4 of
    300, with ties (zeros of both signs tied at the threshold, bf16-rounded logits), rows
    mostly -inf, and the settings of PROCESSOR_CONFIGS; the kept scores agree to float32
    rounding, and the survivors of top-k are exactly the right ones. Top-k's threshold is
    searched among few candidates where it can (rows 0 and 1) and in the whole row where it
    cannot (row 2, and every row with the candidates' room cut to 8). Sampling without a
    small top-k is left to torch."""
    _run_interpreted(
        """
        import torch
        from test_fast import _processors_agree
        from tts.fast import processors
        from tts.generation import GenerationConfig
        _processors_agree(3, 8194, "cpu", split=False)
        _processors_agree(4, 300, "cpu", split=False)
        processors.CANDIDATES = 8  # every row through the whole-row search
        _processors_agree(3, 8194, "cpu", split=False)
        x = torch.zeros(2, 50)
        assert processors.supported(x, GenerationConfig())
        assert processors.supported(x, GenerationConfig(do_sample=False, top_k=None))
        for top_k in (None, 0, processors.MAX_TOP_K + 1):
            assert not processors.supported(x, GenerationConfig(top_k=top_k))
        assert not processors.supported(x.double(), GenerationConfig())
        print("ok")
        """,
        timeout=600,
    )


def test_split_processors_kernel_interpreted():
    """The split processors' kernels (the default; Triton's CPU interpreter): the same checks
    as the one-program kernel's, at 1, 3, 6 and 48 rows of 8194 and 300 codes in chunks of
    1024 and 128 (neither a multiple), on the rows of _split_rows too: ties at top-k's
    threshold in several chunks, seen logits the largest under a high penalty, ties that
    log_softmax makes where the logits have none, fewer finite scores than top-k, chunks all
    -inf. Each row is checked to take the path it must (_split_whole): from its candidates, or
    searched whole where a logit left out could be kept or the candidates overflow their
    slots (every row with the slots cut to 2)."""
    common = """
        import torch
        from test_fast import _processed_rows, _processors_agree, _split_rows, _split_whole
        from tts.fast import processors
        always = lambda row, k, log_softmax: True
        """
    _run_interpreted(
        common
        + """
        assert processors.SPLIT  # the split design is the default
        _processors_agree(3, 8194, "cpu")
        _processors_agree(6, 8194, "cpu", make=_split_rows, whole=_split_whole)
        _processors_agree(1, 8194, "cpu", make=_split_rows, whole=_split_whole)
        processors.CHUNK_SLOTS = 2
        _processors_agree(3, 8194, "cpu", whole=always)
        print("ok")
        """,
        common
        + """
        processors.CHUNK = 128
        _processors_agree(4, 300, "cpu")
        _processors_agree(48, 300, "cpu", make=_split_rows, whole=_split_whole)
        _processors_agree(1, 300, "cpu", make=_split_rows, whole=_split_whole)
        processors.CHUNK = 1024  # one chunk of 512
        _processors_agree(6, 300, "cpu", make=_split_rows, whole=_split_whole)
        processors.CHUNK_SLOTS = 2
        _processors_agree(6, 300, "cpu", make=_split_rows, whole=always)
        print("ok")
        """,
        timeout=600,
    )


def _compile_for_hopper(fn, signature: dict, constexprs: dict, num_warps: int) -> None:
    """Compile the Triton kernel ``fn`` for an sm_90 GPU on this machine (Triton's front end,
    its GPU passes and the ptxas it ships): what the CPU interpreter accepts but the GPU
    compiler refuses fails here, before a GPU run."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})


def test_attention_kernel_compiles_for_hopper():
    """The decode attention's first kernel compiles for sm_90 with PDL, with and without
    reading its window ahead of the wait, with and without the source-row table, and with
    three rows per program."""
    from tts.fast import attention

    strides = ("sq_row", "sq_head", "sk_row", "sk_head", "sk_pos", "sv_row", "sv_head")
    strides += ("sv_pos", "sm_row", "ss_row", "splits")
    flags = ("HEAD_DIM", "CHUNK", "BLOCK_T", "NO_SCORE", "HAS_SRC", "READ_AHEAD", "PDL", "GROUP")
    signature = {  # in the kernel's argument order
        **dict.fromkeys(("q_ptr", "k_ptr", "v_ptr", "mask_ptr"), "*bf16"),
        "src_ptr": "*i32",
        "written_ptr": "*i64",
        "work_ptr": "*fp32",
        "heads": "i32",
        "end": "i32",
        "scale": "fp32",
        **dict.fromkeys(strides, "i32"),
        **dict.fromkeys(flags, "constexpr"),
    }
    for ahead, group in ((False, 1), (True, 1), (False, 3)):
        for table in (False, True):
            constexprs = {
                "HEAD_DIM": 64,
                "CHUNK": attention.CHUNK,
                "BLOCK_T": attention.BLOCK_T,
                "NO_SCORE": attention.NO_SCORE,
                "HAS_SRC": table,
                "READ_AHEAD": ahead,
                "PDL": True,
                "GROUP": group,
            }
            _compile_for_hopper(
                attention._partial_kernel, signature, constexprs, attention.NUM_WARPS
            )


def test_linear_lanes_cover_the_width():
    """tts.fast.linear.lanes: the first tile lies inside the width, both tiles cover it, and the
    GPT's widths need no padding (1280 on one warp: 256 x (4 + 1); 5120 on four: 1024 x (4 +
    1))."""
    from tts.fast import linear

    pytest.importorskip("triton")
    assert linear.lanes(1280, 1) == (256, 4, 1)
    assert linear.lanes(5120, 4) == (1024, 4, 1)
    for k_in in (1, 7, 48, 64, 96, 1000, 1280, 3840, 5120):
        for warps in (1, 2, 4, 8):
            lane, ja, jb = linear.lanes(k_in, warps)
            assert lane * ja <= k_in <= lane * (ja + jb), (k_in, warps)
            assert k_in % lane == 0 and lane <= 256 * warps
            assert all(n & (n - 1) == 0 for n in (lane, ja, jb))


def _projection_signature(kernel, dtype: str) -> dict:
    """The Triton signature of a tts.fast.linear projection kernel in its argument order: the
    tensors in ``dtype`` (the cache position int64), the sizes and strides int32, the rest
    constexpr."""
    ints = ("N", "stride_x", "stride_res", "stride_out", "kv_row", "kv_head", "kv_pos")
    ints += ("width", "head_dim")

    def kind(name: str) -> str:
        if name == "pos_ptr":
            return "*i64"
        if name.endswith("_ptr"):
            return f"*{dtype}"
        return "i32" if name in ints else "constexpr"

    return {name: kind(name) for name in kernel.arg_names}


def test_linear_kernel_compiles_for_hopper():
    """The few-row projection kernel compiles for sm_90 with PDL at the GPT's shapes (1280 and
    5120 inputs), 1, 3 and 8 rows, bf16 and float32, with each epilogue."""
    from tts.fast import linear

    for dtype in ("bf16", "fp32"):
        signature = _projection_signature(linear._linear_kernel, dtype)
        for k_in, gelu, res, kv in ((1280, False, False, True), (1280, True, False, False),
                                    (5120, False, True, False)):  # fmt: skip
            warps = linear.warps_for(linear.ROWS_PER_PROGRAM, k_in)
            lane, ja, jb = linear.lanes(k_in, warps)
            for rows in (1, 3, 8):
                constexprs = {
                    "M": rows, "K": k_in, "LANE": lane, "JA": ja, "JB": jb, "GELU": gelu,
                    "RES": res, "KV": kv, "BLOCK_M": 1 << (rows - 1).bit_length(),
                    "BLOCK_N": linear.ROWS_PER_PROGRAM, "PDL": True,
                }  # fmt: skip
                _compile_for_hopper(linear._linear_kernel, signature, constexprs, warps)


def test_tensor_core_linear_kernel_compiles_for_hopper():
    """The tensor-core projection kernel compiles for sm_90 with PDL at the GPT's 1280 inputs
    (8 + 2 slices) and at 256 (no second slice tile), 1, 3 and 8 rows, bf16 and fp16, with
    each epilogue."""
    from tts.fast import linear

    for dtype in ("bf16", "fp16"):
        signature = _projection_signature(linear._mma_kernel, dtype)
        for k_in, gelu, res, kv in ((1280, False, False, True), (1280, True, False, False),
                                    (256, False, True, False)):  # fmt: skip
            sa, sb = linear.mma_slices(k_in)
            for rows in (1, 3, 8):
                constexprs = {
                    "M": rows, "K": k_in, "KS": linear.MMA_SLICE, "SA": sa, "SB": sb,
                    "GELU": gelu, "RES": res, "KV": kv, "BLOCK_M": linear.mma_block_rows(rows),
                    "BLOCK_N": linear.MMA_ROWS_PER_PROGRAM, "WIDEN": False, "PDL": True,
                }  # fmt: skip
                _compile_for_hopper(linear._mma_kernel, signature, constexprs, linear.MMA_WARPS)


def _compile_split_processors_for_hopper() -> None:
    """The split processors' kernels for sm_90 at the decoder's settings (3 beams of 8194
    codes in chunks of 1024, top-k 30: 128 slots per chunk, a tile of 2048 candidates), and
    without sampling (no top-k: the chunk kernel's records, then the write kernel)."""
    from tts.fast import processors

    chunk, sp, slots = processors.CHUNK, 16, 128
    flags = ("LOG_SOFTMAX", "PENALTY", "TEMPERATURE")
    rows = ("x_ptr", "seen_ptr", "out_ptr")
    scratch = {"stats": "*fp32", "cand_v": "*fp32", "cand_i": "*i32", "cand_n": "*i32"}
    sizes = dict.fromkeys(("n", "stride_x", "stride_seen", "stride_out"), "i32")
    pointers = {"x_ptr": "*fp32", "seen_ptr": "*u8", "out_ptr": "*fp32"}
    assert tuple(pointers) == rows
    for top_k in (True, False):
        _compile_for_hopper(
            processors._chunk_kernel,
            {**pointers, **scratch, **sizes, "k": "i32", "S": "i32",
             **dict.fromkeys(("LOG_SOFTMAX", "PENALTY", "TOP_K", "CHUNK", "SLOTS"), "constexpr")},
            {"LOG_SOFTMAX": True, "PENALTY": True, "TOP_K": top_k, "CHUNK": chunk, "SLOTS": slots},
            processors.CHUNK_WARPS,
        )  # fmt: skip
    _compile_for_hopper(
        processors._merge_kernel,
        {**pointers, "surv_v": "*fp32", "surv_i": "*i32", "surv_n": "*i32",
         "invalid_ptr": "*i32", **scratch, "whole_ptr": "*i32", **sizes, "S": "i32",
         "penalty": "fp32", "temperature": "fp32", "k": "i32", "cut": "fp32", "keep": "i32",
         **dict.fromkeys((*flags, "TOP_P", "CHUNK", "SLOTS", "SP", "TILE", "PAIRS"), "constexpr")},
        {**dict.fromkeys(flags, True), "TOP_P": True, "CHUNK": chunk, "SLOTS": slots, "SP": sp,
         "TILE": 2048, "PAIRS": processors.PAIRS},
        processors.MERGE_WARPS,
    )  # fmt: skip
    _compile_for_hopper(
        processors._write_kernel,
        {**pointers, "stats": "*fp32", "invalid_ptr": "*i32", **sizes, "S": "i32",
         "penalty": "fp32", "temperature": "fp32",
         **dict.fromkeys((*flags, "CHUNK", "SP"), "constexpr")},
        {"LOG_SOFTMAX": True, "PENALTY": True, "TEMPERATURE": False, "CHUNK": chunk, "SP": sp},
        processors.CHUNK_WARPS,
    )  # fmt: skip


def test_choice_kernels_compile_for_hopper():
    """The processors' (both designs), the beam draw's and the beam step's kernels compile for
    sm_90 at the decoder's settings (the first version of the first passed the interpreter and
    failed on the GPU)."""
    from tts.fast import beam_step, processors, sampling

    flags = ("LOG_SOFTMAX", "PENALTY", "TEMPERATURE", "TOP_K", "TOP_P")
    _compile_for_hopper(
        processors._process_kernel,
        {
            **dict.fromkeys(("x_ptr", "out_ptr", "surv_v"), "*fp32"),
            "seen_ptr": "*u8",
            **dict.fromkeys(("surv_i", "surv_n", "invalid_ptr"), "*i32"),
            **dict.fromkeys(("n", "stride_x", "stride_seen", "stride_out", "k", "keep"), "i32"),
            **dict.fromkeys(("penalty", "temperature", "cut"), "fp32"),
            **dict.fromkeys((*flags, "BLOCK", "GROUPS", "CAND", "PAIRS"), "constexpr"),
        },
        {
            **dict.fromkeys(flags, True),
            "BLOCK": 16384,
            "GROUPS": processors.GROUPS,
            "CAND": processors.CANDIDATES,
            "PAIRS": processors.PAIRS,
        },
        processors.NUM_WARPS,
    )
    _compile_split_processors_for_hopper()
    _compile_for_hopper(
        sampling._candidates_kernel,
        {
            **dict.fromkeys(("scores_ptr", "beam_ptr", "q_ptr", "cand_scores_ptr"), "*fp32"),
            **dict.fromkeys(("surv_i", "surv_n", "invalid_ptr"), "*i32"),
            "cand_ptr": "*i64",
            "vocab": "i32",
            **dict.fromkeys(("N", "BEAMS", "BEAMS_P", "CHUNK", "FIRST"), "constexpr"),
        },
        {"N": 6, "BEAMS": 3, "BEAMS_P": 4, "CHUNK": sampling.CHUNK, "FIRST": 16},
        sampling.CANDIDATE_WARPS,
    )
    i64 = ("cand_ptr", "step_ptr", "done_at", "history", "tokens", "chosen", "h_stamp")
    i64 += ("h_length", "h_blen", "h_tokens", "h_beams", "snap_tokens", "snap_history")
    i64 += ("first_ptr",)
    scalars = ("vocab", "max_new", "cap", "end", "stop", "pad")
    _compile_for_hopper(
        beam_step._beam_step_kernel,
        {
            **dict.fromkeys(i64, "*i64"),
            **dict.fromkeys(("cs_ptr", "beam_scores"), "*fp32"),
            **dict.fromkeys(("h_score", "denoms"), "*fp64"),
            **dict.fromkeys(("done_ptr", "seen", "h_valid", "snap_seen"), "*i8"),
            **dict.fromkeys(("src", "snap_src"), "*i32"),
            **dict.fromkeys(scalars, "i32"),
            **dict.fromkeys(("K", "N", "NP", "KP", "EARLY", "SNAPSHOT", "BLOCK"), "constexpr"),
        },
        {
            "K": 3,
            "N": 6,
            "NP": 8,
            "KP": 4,
            "EARLY": False,
            "SNAPSHOT": True,
            "BLOCK": beam_step.BLOCK,
        },
        beam_step.NUM_WARPS,
    )


def _candidates_agree(items: int, device: str, zeros: str) -> list[bool]:
    """tts.fast.sampling.beam_candidates (after the processors' kernel) against the beam
    step's torch ops (softmax, multinomial_rows, gather) from generators in the same states,
    3 beams of 8194 codes, twice in a row. The candidates with a positive probability and all
    scores must be identical. ``zeros``: where fewer than 6 are positive (top-k 3 and top-p
    0.1, beams far apart), "lowest" checks that the rest are the lowest-index entries of
    probability 0 in index order; returns, per call, whether they equal torch's too."""

    from tts.fast import processors
    from tts.fast.sampling import beam_candidates
    from tts.generation import GenerationConfig, multinomial_rows

    rows = items * 3
    logits, seen = _processed_rows(rows, 8194, device, seed=items)
    cfg = GenerationConfig() if zeros == "none" else GenerationConfig(top_k=3, top_p=0.1)
    survivors = processors.survivor_buffers(rows, 8194, device)
    invalid = torch.zeros(1, dtype=torch.int32, device=device)
    processed = processors.process(
        logits, seen, cfg, 2, log_softmax=True, survivors=survivors, invalid=invalid
    )
    gen = torch.Generator(device=device).manual_seed(1)
    beam_scores = -torch.rand(rows, device=device, generator=gen) * 5
    if zeros != "none":
        beam_scores.view(items, 3)[:, 1:] = -1e9  # step 0: only the first beam counts
    mine = [torch.Generator(device=device).manual_seed(10 + i) for i in range(items)]
    torchs = [torch.Generator(device=device).manual_seed(10 + i) for i in range(items)]
    total = (processed + beam_scores[:, None]).view(items, 3 * 8194)
    probs = total.softmax(dim=-1)
    same_as_torch = []
    for _ in range(2):
        want = multinomial_rows(probs, 6, torchs)
        got, got_scores = beam_candidates(processed, survivors, beam_scores, 3, 6, mine, invalid)
        assert torch.equal(got_scores, total.gather(1, got))
        positive = probs.gather(1, want) > 0
        assert torch.equal(got[positive], want[positive])
        assert torch.equal(probs.gather(1, got) > 0, positive)
        if zeros == "none":
            assert positive.all() and torch.equal(got, want)
        for row, pos in zip(got.tolist(), positive.tolist(), strict=True):
            rest = [c for c, p in zip(row, pos, strict=True) if not p]
            assert rest == sorted(rest)
        same_as_torch.append(torch.equal(got, want))
    assert int(invalid) == 0
    return same_as_torch


def test_beam_draw_kernel_interpreted():
    """The beam step's draw kernel (Triton's CPU interpreter) draws torch.multinomial's
    candidates with the same generators, with their scores (1 and 4 items); where fewer than
    the 6 drawn have a positive probability, those are identical and the rest are the
    lowest-index zero-probability entries (the CPU's torch.topk orders those ties otherwise).
    NaN logits raise the kernels' invalid flag."""
    _run_interpreted(
        """
        import torch
        from test_fast import _candidates_agree
        from tts.fast import processors
        from tts.fast.sampling import beam_candidates
        from tts.generation import GenerationConfig
        for items in (1, 4):
            _candidates_agree(items, "cpu", "none")
            _candidates_agree(items, "cpu", "lowest")
        logits = torch.randn(3, 100)
        logits[0, 5] = float("nan")
        survivors = processors.survivor_buffers(3, 100, "cpu")
        invalid = torch.zeros(1, dtype=torch.int32)
        out = processors.process(logits, torch.zeros(3, 100, dtype=torch.bool),
                                 GenerationConfig(), 2, log_softmax=True,
                                 survivors=survivors, invalid=invalid)
        assert int(invalid) == 1
        invalid.zero_()
        beam_candidates(torch.full((3, 100), float("-inf")), (None, survivors[1],
                        torch.zeros(3, dtype=torch.int32)), torch.zeros(3), 3, 6, None, invalid)
        assert int(invalid) == 1
        print("ok")
        """,
        timeout=600,
    )


def test_kept_graphkk_decoder_matches_plain_generation_interpreted():
    """graphkk (graphkt kept between calls: Triton projections, attention, processors, draw
    and beam step kernel, in Triton's CPU interpreter; float32): three calls with prompts of
    20, 9 and 27 positions whose items finish at different steps reuse one decoder after the
    first, and each gives tts.generation's codes, steps, beam indices and scores, with the
    beam step kernel run at every step (no fallback)."""
    _run_interpreted(
        """
        import torch
        from test_fast import (_assert_same_generation, _counted, _items_finishing_apart,
                               _padded_prefix)
        from tts import fast
        from tts.fast import beam_step, decode
        from tts.generation import GenerationConfig, generate as plain_generate
        torch.set_num_threads(1)
        calls = {"step": 0}
        beam_step.step = _counted(calls, "step", beam_step.step)
        model, _, _, generators = _items_finishing_apart()
        cfg = GenerationConfig(num_beams=3, max_mel_tokens=12, warn_on_limit=False,
                               repetition_penalty=2.0)
        kept, steps = [], 0
        for length in (20, 9, 27):
            prefix, valid = _padded_prefix(model, length)
            prefix, valid = prefix.repeat(2, 1, 1)[:3], valid.repeat(2, 1)[:3]
            plain = plain_generate(model, prefix, valid, cfg, generator=generators(),
                                   output_scores=True)
            stats = {}
            out = decode.generate(model, prefix, valid, cfg, output_scores=True, stats=stats,
                                  generator=generators(), **decode.VARIANTS["graphkk"])
            assert not fast.FALLBACKS, fast.FALLBACKS
            _assert_same_generation(plain, out, 3)
            kept.append(stats["kept"])
            steps += stats["steps"]
        assert kept == [False, True, True], kept
        assert calls == {"step": steps}, (calls, steps)
        print("ok")
        """,
        timeout=900,
    )


def test_graphke_decoder_compiles_nothing_interpreted():
    """graphke (graphkk with nothing through torch.compile; Triton kernels in Triton's CPU
    interpreter; float32) gives tts.generation's codes, beam indices and scores with beam
    sampling, with no fallback, and the process never imports TorchDynamo: not with the
    Engine's modules, not while decoding (graphkk's compiled pieces import it)."""
    _run_interpreted(
        """
        import sys
        import torch
        import tts.pipeline
        from test_fast import _assert_same_generation, _items_finishing_apart
        from tts import fast
        from tts.fast import decode
        from tts.generation import GenerationConfig, generate as plain_generate
        assert "torch._dynamo" not in sys.modules, "imported with the Engine's modules"
        torch.set_num_threads(1)
        model, prefix, valid, generators = _items_finishing_apart()
        cfg = GenerationConfig(num_beams=3, max_mel_tokens=12, warn_on_limit=False,
                               repetition_penalty=2.0)
        plain = plain_generate(model, prefix, valid, cfg, generator=generators(),
                               output_scores=True)
        stats = {}
        out = decode.generate(model, prefix, valid, cfg, output_scores=True, stats=stats,
                              generator=generators(), **decode.VARIANTS["graphke"])
        assert not fast.FALLBACKS, fast.FALLBACKS
        assert stats["fused"]
        _assert_same_generation(plain, out, 3)
        assert "torch._dynamo" not in sys.modules, "imported while decoding"
        print("ok")
        """,
        timeout=900,
    )


def test_op_by_op_stack_uses_the_one_kernel_norm_in_half_precision_interpreted():
    """The op-by-op fused stack (graphke) where Triton runs (here Triton's CPU interpreter):
    in bf16 its LayerNorms are tts.fast.linear's one-kernel norm, above 8 rows as below, in the
    layers and the head; in float32 torch's (one kernel already). The norm is torch's within
    one bf16 ulp (the layers' bf16 rows, and the head's float32 rows with bf16 parameters
    within float32 rounding), and a 12-row decode step's logits are the step's with torch's
    norms within a few bf16 roundings (relative L2 < 1e-2; a wrong norm is off by O(1))."""
    _run_interpreted(
        """
        import torch
        import torch.nn.functional as F
        from test_fast import _gpt_small
        from tts.fast import fused
        from tts.fast.decode import DecodeWeights

        torch.manual_seed(0)
        models = {dtype: _gpt_small().to(dtype) for dtype in (torch.bfloat16, torch.float32)}
        for model_dtype, want in ((torch.bfloat16, fused._row_norm), (torch.float32, None)):
            model = models[model_dtype]
            stack = fused.FusedStack(model, DecodeWeights(model).layers, 12, "triton",
                                     compile=False)
            assert stack.matmul == "mm"
            for name in ("pre", "post", "head"):
                fn = stack.fns[name]
                norm = getattr(fn, "keywords", {}).get("norm")
                assert norm is want, (model_dtype, name, fn)
        # the norm alone
        dim = model.model_dim
        w, b = torch.randn(dim).bfloat16(), torch.randn(dim).bfloat16()
        x = (torch.randn(12, 1, dim) * 3 + 1).bfloat16()
        got, ref = fused._row_norm(x, w, b, 1e-5), fused._norm(x, w, b, 1e-5)
        assert got.dtype == ref.dtype == torch.bfloat16 and got.shape == ref.shape
        ulp = 2.0 ** -7 * ref.float().abs() + 1e-30
        assert ((got.float() - ref.float()).abs() <= ulp).all()
        h = torch.randn(12, dim) * 3 + 1
        got, ref = fused._row_norm(h, w, b, 1e-5), fused._norm(h, w, b, 1e-5)
        assert got.dtype == torch.float32
        assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5)
        # one decode step of 12 rows, bf16, the Triton norms against torch's
        model = models[torch.bfloat16]
        rows, heads = 12, model.gpt.h[0].attn.heads
        stack = fused.FusedStack(model, DecodeWeights(model).layers, rows, "triton",
                                 compile=False)
        plain = dict(fused._FUNCTIONS)
        tokens = torch.randint(0, model.mel_head.out_features - 2, (rows,))
        j, pos, end = torch.tensor(3), torch.tensor([7]), 8
        mask = torch.zeros(rows, 1, 1, end, dtype=torch.bfloat16)
        logits = []
        for fns in (stack.fns, plain):
            stack.fns = fns
            torch.manual_seed(1)
            caches = [torch.randn(rows, heads, 16, dim // heads).bfloat16()
                      for _ in range(2 * len(model.gpt.h))]
            out = torch.empty(rows, model.mel_head.out_features)
            attend = lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m)
            with torch.no_grad():
                stack.step(tokens, j, pos, mask, end, caches[0::2], caches[1::2], out, attend)
            logits.append(out)
        got, ref = logits
        rel = float((got - ref).norm() / ref.norm())
        assert 0 <= rel < 1e-2, rel
        print("rel", rel)
        print("ok")
        """,
        timeout=600,
    )


def test_tensor_core_head_in_the_triton_stack_interpreted():
    """The Triton stack (matmul="triton") of a GPT whose width the tensor-core kernel takes
    (128 here) runs its head as tts.fast.linear.decode_head in bf16, and keeps the op-by-op
    head in float32 and at widths it does not take (the 32-wide fixture GPT). A bf16 decode
    step's logits equal those of the same stack with the op-by-op head within a few bf16
    roundings (relative L2 < 1e-2; final_norm's parameters in ln_f's place, for one, are off
    by O(1))."""
    _run_interpreted(
        """
        import torch
        import torch.nn.functional as F
        import yaml
        from test_fast import CASES, _gpt_small
        from tts.bench import randomize_
        from tts.fast import fused, linear
        from tts.fast.decode import DecodeWeights
        from tts.models.gpt import UnifiedVoice

        def head_of(model, rows=3):
            stack = fused.FusedStack(model, DecodeWeights(model).layers, rows, "triton",
                                     compile=False)
            return stack, getattr(stack.fns["head"], "func", stack.fns["head"])

        small = _gpt_small().bfloat16()
        assert head_of(small)[1] is not linear.decode_head  # 32 wide: not on tensor cores
        root = next(fs.root for fs, _ in CASES if fs.name == "gpt-small")
        cfg = yaml.safe_load((root / "config.yaml").read_text())["gpt"]
        cfg.update(model_dim=128, heads=2, layers=1, number_mel_codes=300,
                   start_mel_token=298, stop_mel_token=299)
        model = randomize_(UnifiedVoice.from_config(cfg), seed=3).eval()
        with torch.no_grad():  # norms and biases away from randomize_'s 1 and 0
            for norm in (model.gpt.ln_f, model.final_norm):
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.normal_(0, 0.3)
            model.mel_head.bias.normal_(0, 0.3)
        assert head_of(model)[1] is not linear.decode_head  # float32: CUDA cores, op by op
        model = model.bfloat16()
        stack, head = head_of(model)
        assert head is linear.decode_head
        rows, dim, heads = 3, 128, 2
        tokens = torch.randint(0, 298, (rows,))
        j, pos, end = torch.tensor(3), torch.tensor([7]), 8
        mask = torch.zeros(rows, 1, 1, end, dtype=torch.bfloat16)
        attend = lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m)
        logits = []
        for fn in (stack.fns["head"], fused._FUNCTIONS["head"]):
            stack.fns["head"] = fn
            torch.manual_seed(1)
            caches = [torch.randn(rows, heads, 16, dim // heads).bfloat16() for _ in range(2)]
            out = torch.full((rows, 300), float("nan"))
            with torch.no_grad():
                stack.step(tokens, j, pos, mask, end, caches[0::2], caches[1::2], out, attend)
            logits.append(out)
        got, ref = logits
        rel = float((got - ref).norm() / ref.norm())
        print("rel", rel)
        assert 0 <= rel < 1e-2, rel
        print("ok")
        """,
        timeout=600,
    )


def test_op_by_op_projection_skips_the_bias_epilogue_in_float32(monkeypatch):
    """The op-by-op stack's projections (tts.fast.fused, cuBLAS path) in float32 are a GEMM
    plus a bias add, not F.linear: cuBLASLt's bias epilogue picked float32 kernels twice as
    slow at 16-48 rows (docs/benchmarks.md, run BZ). In half precision, and in what
    torch.compile traces (the plain functions), F.linear stays. Both give F.linear's values
    (float32 rounding)."""
    from tts.fast import fused
    from tts.fast.decode import DecodeWeights

    torch.manual_seed(0)
    model = _gpt_small()
    stack = fused.FusedStack(model, DecodeWeights(model).layers, 12, "mm", compile=False)
    for name in ("pre", "post", "head"):
        assert stack.fns[name].keywords["proj"] is fused._gemm_add, name
    x, w, b = torch.randn(6, 1, 32), torch.randn(48, 32), torch.randn(48)
    linear = torch.nn.functional.linear
    ref = linear(x, w, b)
    calls = []

    def counted(*args):
        calls.append(args[1].dtype)
        return linear(*args)

    monkeypatch.setattr(fused.F, "linear", counted)
    got = fused._gemm_add(x, w, b, reduce=False)
    assert calls == [] and got.shape == ref.shape
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5)
    fused._proj(x, w, b, reduce=False)  # the plain function, which torch.compile traces
    assert calls == [torch.float32]
    half = model.to(torch.bfloat16)
    stack = fused.FusedStack(half, DecodeWeights(half).layers, 12, "mm", compile=False)
    for name in ("pre", "post", "head"):
        assert "proj" not in getattr(stack.fns[name], "keywords", {}), name


def test_triton_choice_decoder_matches_plain_generation_interpreted():
    """The decoder with choice="triton" (the logits processors and the beam draw as Triton
    kernels, in Triton's CPU interpreter, around the plain layers; graphkt adds graphkp's
    layers, whose kernels the tests above check; float32) gives tts.generation's codes and
    scores with beam sampling on a padded batch, with sampling and with beam search, and the
    kernels really ran. With
    settings that leave fewer than 6 positive candidates, codes, steps and beam indices are
    still identical (only a beam of score -inf can hold another token, from the ties at
    probability 0). A raised invalid flag fails the next "all finished?" test with
    torch.multinomial's message."""
    _run_interpreted(
        """
        import torch
        from test_fast import _assert_same_generation, _counted, _gpt_small, _padded_prefix
        from tts import fast
        from tts.fast import decode, processors, sampling
        from tts.generation import GenerationConfig, generate as plain_generate
        torch.set_num_threads(1)
        calls = {"process": 0, "draw": 0}
        processors.process = _counted(calls, "process", processors.process)
        sampling.beam_candidates = _counted(calls, "draw", sampling.beam_candidates)
        model = _gpt_small()
        prefix, valid = _padded_prefix(model)
        for beams, changes in ((3, {}), (1, {}), (3, {"do_sample": False}),
                               (3, {"top_k": 3, "top_p": 0.1})):
            cfg = GenerationConfig(num_beams=beams, max_mel_tokens=24, warn_on_limit=False,
                                   repetition_penalty=2.0, **changes)
            plain = plain_generate(model, prefix, valid, cfg,
                                   generator=torch.Generator().manual_seed(9), output_scores=True)
            out = decode.generate(model, prefix, valid, cfg, output_scores=True,
                                  generator=torch.Generator().manual_seed(9), choice="triton")
            assert not fast.FALLBACKS, fast.FALLBACKS
            if "top_k" in changes:
                assert torch.equal(plain.codes, out.codes) and plain.steps == out.steps
                assert torch.equal(plain.beam_indices, out.beam_indices)
            else:
                _assert_same_generation(plain, out, beams)
        # 24 steps per call: the processors in all 4 calls, the draw in the 2 beam-sampling ones
        assert calls == {"process": 4 * 24, "draw": 2 * 24}, calls
        cfg = GenerationConfig(max_mel_tokens=4)
        dec = decode.StaticDecoder(model, prefix, valid, cfg, generator=None, choice="triton")
        assert dec.choice_kernels and not dec._all_finished()
        dec.invalid.fill_(1)
        try:
            dec._all_finished()
            raise SystemExit("a raised flag was not reported")
        except RuntimeError as exc:
            assert "probability tensor contains" in str(exc)
        print("ok")
        """,
        timeout=900,
    )


def _tries_kernel(model, prefix, valid, cfg, name: str) -> bool:
    """Whether a new decoder would try the processors' (``name`` "process") or the beam
    step's kernel."""
    from tts.fast import decode

    dec = decode.StaticDecoder(model, prefix, valid, cfg, choice="triton", reorder="table")
    return dec.choice_kernels if name == "process" else dec.beam_kernel


def test_choice_kernels_that_fail_fall_back_to_the_torch_ops(monkeypatch):
    """A processors' or beam step kernel that fails (outside a graph capture) is recorded in
    tts.fast.FALLBACKS and not tried again; the step goes on with the torch ops and the
    generation equals tts.generation's."""
    from tts import fast
    from tts.fast import beam_step, decode, processors
    from tts.generation import GenerationConfig
    from tts.generation import generate as plain_generate

    def broken(*args, **kwargs):
        raise RuntimeError("kernel failed")

    monkeypatch.setattr(decode, "_FAILED", set())
    monkeypatch.setattr(fast, "FALLBACKS", [])
    monkeypatch.setattr(processors, "supported", lambda logits, cfg: True)
    model = _gpt_small()
    prefix, valid = _padded_prefix(model)
    cfg = GenerationConfig(num_beams=3, max_mel_tokens=6, warn_on_limit=False)
    seeded = lambda: torch.Generator().manual_seed(9)  # noqa: E731
    plain = plain_generate(model, prefix, valid, cfg, generator=seeded())
    failed = []
    for name in ("process", "step"):
        module = processors if name == "process" else beam_step
        with monkeypatch.context() as patch:
            patch.setattr(module, name, broken)
            dec = decode.StaticDecoder(
                model, prefix, valid, cfg, generator=seeded(), choice="triton", reorder="table"
            )
            assert dec.choice_kernels and dec.beam_kernel
            # one kernel at a time (without a GPU or the interpreter the other fails too)
            if name == "process":
                dec.beam_kernel = False
            else:
                dec.choice_kernels = False
            with torch.no_grad():
                out = dec.run()
        assert not (dec.choice_kernels if name == "process" else dec.beam_kernel)
        assert torch.equal(plain.codes, out.codes) and plain.steps == out.steps
        failed += decode._FAILED  # a later decoder in this process does not try it again
        assert not _tries_kernel(model, prefix, valid, cfg, name)
        decode._FAILED.clear()
    assert [what for what, _ in fast.FALLBACKS] == [
        "GPT logits processors Triton kernel",
        "GPT beam step Triton kernel",
    ]
    assert failed == [("processors kernel",), ("beam kernel",)]


def test_beam_step_kernel_matches_torch_bookkeeping_interpreted():
    """The beam step's bookkeeping as one kernel (tts.fast.beam_step, in Triton's CPU
    interpreter; choice="triton" with the table reorder) leaves every buffer the torch ops
    leave, step by step: tokens, repetition history, source table, parent history, beam
    scores, done flags and steps, the hypotheses, and so the next logits. Three padded items
    finish at different steps (the stop code made likely), so done items take row 0's buffers
    while item 0 still runs (the row-0 copies); beam sampling, beam search and early stopping.
    The whole generation equals tts.generation's codes, steps and beam indices, and its
    sequence scores to float32 rounding (the processors' kernel rounds otherwise)."""
    _run_interpreted(
        """
        import torch
        from test_fast import _counted, _items_finishing_apart
        from tts import fast
        from tts.fast import beam_step, decode
        from tts.generation import GenerationConfig, generate as plain_generate
        torch.set_num_threads(1)
        calls = {"step": 0}
        beam_step.step = _counted(calls, "step", beam_step.step)
        model, prefix, valid, generators = _items_finishing_apart()
        for beams, changes in ((3, {}), (3, {"do_sample": False}), (2, {"early_stopping": True})):
            cfg = GenerationConfig(num_beams=beams, max_mel_tokens=12, warn_on_limit=False,
                                   repetition_penalty=2.0, **changes)
            torch_ops, kernel = (
                decode.StaticDecoder(model, prefix, valid, cfg, generator=generators(),
                                     choice="triton", reorder="table")
                for _ in range(2)
            )
            torch_ops.beam_kernel = False
            assert kernel.beam_kernel
            before = calls["step"]
            for step in range(cfg.max_mel_tokens):
                end = kernel._window(step)
                torch_ops._step(end)
                kernel._step(end)
                for d in (torch_ops, kernel):
                    st = d.beam
                    d.state = (d.tokens, d.seen, d.src, d.logits, st.history, st.beam_scores,
                               st.done, st.done_at, *vars(st.hyps).values())
                for a, b in zip(torch_ops.state, kernel.state):
                    if isinstance(a, torch.Tensor):
                        assert torch.equal(a, b), (beams, changes, step)
            assert calls["step"] == before + cfg.max_mel_tokens, calls
            done_at = kernel.beam.done_at.tolist()
            assert not changes and len(set(done_at)) == 3 or changes, done_at
            plain = plain_generate(model, prefix, valid, cfg, generator=generators(),
                                   output_scores=True)
            out = decode.generate(model, prefix, valid, cfg, generator=generators(),
                                  choice="triton", reorder="table", output_scores=True)
            assert not fast.FALLBACKS and calls["step"] > before + cfg.max_mel_tokens
            same = (torch.equal(plain.codes, out.codes), plain.steps == out.steps,
                    torch.equal(plain.beam_indices, out.beam_indices))
            assert all(same), (beams, changes, same)
            torch.testing.assert_close(out.sequences_scores, plain.sequences_scores)
            # done items' rows too: they read row 0's prompt through the table, as upstream
            torch.testing.assert_close(out.scores, plain.scores, rtol=1e-5, atol=1e-5)
        print("ok")
        """,
        timeout=900,
    )


def _draws_agree(device: str, cases, repeats: int = 3) -> None:
    """tts.fast.sampling.multinomial_groups against multinomial_rows (one torch.multinomial per
    group) from generators in the same states: identical indices, call after call (so the
    generators advanced alike). ``cases``: (groups, rows per group, categories, n)."""
    from tts.fast.sampling import multinomial_groups
    from tts.generation import multinomial_rows

    gen = torch.Generator(device=device).manual_seed(0)
    for groups, size, cats, n in cases:
        probs = torch.rand(groups * size, cats, device=device, generator=gen) ** 4
        probs[0, 3:] = 0  # fewer non-zero categories than n: ties at 0 get drawn too
        probs[-1, : cats // 2] = 0
        probs = probs / probs.sum(1, keepdim=True)
        plain = [torch.Generator(device=device).manual_seed(10 + i) for i in range(groups)]
        batched = [torch.Generator(device=device).manual_seed(10 + i) for i in range(groups)]
        for _ in range(repeats):
            want = multinomial_rows(probs, n, plain)
            got = multinomial_groups(probs, n, batched)
            assert torch.equal(got, want), (groups, size, cats, n)


def test_batched_per_item_draws_equal_per_item_multinomial():
    """The fast decoder's per-item draw (one batch for all items, each item's exponential draw
    from its own generator) gives torch.multinomial's indices per item, for one and several
    rows per item, n = 1 and n = 6, rows with fewer non-zero probabilities than n; invalid
    probabilities raise torch.multinomial's errors; one generator is plain torch.multinomial;
    a 1-d input goes through multinomial_rows."""
    from tts.fast.sampling import multinomial_groups
    from tts.generation import multinomial_rows

    _draws_agree("cpu", ((4, 1, 300, 6), (3, 2, 50, 1), (2, 3, 40, 4), (5, 1, 30, 6)))
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    for bad, message in (
        (torch.tensor([[0.5, float("nan")], [0.5, 0.5]]), "nan"),
        (torch.tensor([[0.5, -0.1], [0.5, 0.5]]), "element < 0"),
        (torch.tensor([[0.0, 0.0], [0.5, 0.5]]), "sum of probabilities"),
    ):
        with pytest.raises(RuntimeError, match=message):
            multinomial_groups(bad, 1, gens)
    one = torch.Generator().manual_seed(3)
    probs = torch.rand(2, 20)
    assert torch.equal(
        multinomial_groups(probs, 2, [one]),
        torch.multinomial(probs, 2, generator=torch.Generator().manual_seed(3)),
    )
    flat = torch.rand(40)  # not [rows, categories]: multinomial_rows' own handling, unchanged
    assert torch.equal(
        multinomial_groups(flat, 3, [torch.Generator().manual_seed(i) for i in range(2)]),
        multinomial_rows(flat, 3, [torch.Generator().manual_seed(i) for i in range(2)]),
    )


def test_triton_decode_attention_equals_sdpa_interpreted():
    """tts.fast.attention (Triton's CPU interpreter) against F.scaled_dot_product_attention:
    windows shorter than, equal to and longer than a chunk, strided cache views, masked
    positions at both ends (left padding longer than a chunk), float32 within 1e-6 and bf16
    within one ulp of the output (the float32 result rounded); and with a source-row table
    (``src``: each position read from another cache row) against SDPA over the rows it
    names (attention.gather_rows). Reading the window ahead (``written``) and taking the
    rows together in one program (``group``) give the same output exactly."""
    _run_interpreted(
        """
        import torch
        import torch.nn.functional as F
        from tts.fast import attention
        assert attention.available(torch.zeros(1))
        torch.manual_seed(0)
        for dtype in (torch.float32, torch.bfloat16):
            for rows, heads, hd, cap, end in ((3, 4, 16, 400, 300), (2, 2, 8, 100, 64), (2, 2, 8, 100, 40), (2, 2, 8, 100, 24),
                                              (1, 3, 16, 500, 129), (2, 2, 8, 300, 256)):
                kv = torch.randn(2, rows, heads, cap, hd).to(dtype)
                k, v = kv[0][:, :, :end], kv[1][:, :, :end]
                q = torch.randn(rows, heads, 1, hd).to(dtype)
                keys = torch.ones(rows, end, dtype=torch.bool)
                keys[:, end - 5:] = False
                if rows > 1:
                    keys[1, :min(140, end - 20)] = False
                mask = torch.zeros(rows, end, dtype=dtype).masked_fill_(~keys, float("-inf"))
                mask = mask[:, None, None, :]
                src = torch.randint(0, rows, (rows, cap), dtype=torch.int32)[:, :end]
                for table in (None, src):
                    kt, vt = (k, v) if table is None else (attention.gather_rows(k, table),
                                                           attention.gather_rows(v, table))
                    if table is not None and rows > 1:  # the table really changes the input
                        assert not torch.equal(kt, k)
                    want = F.scaled_dot_product_attention(q.double(), kt.double(), vt.double(),
                                                          attn_mask=mask.double())
                    base = attention.attend(q, k, v, mask, src=table)
                    # other launch settings: another chunk sums in another order, within the
                    # same bounds
                    other = attention.attend(q, k, v, mask, src=table, chunk=128, block_t=32,
                                             num_warps=2)
                    # the window read before the PDL wait (written: the one position read
                    # again after it), inside and outside the window: the same arithmetic
                    for w in (end - 6, 0, end + 3):
                        ahead = attention.attend(q, k, v, mask, src=table,
                                                 written=torch.tensor([w]))
                        assert torch.equal(ahead, base), (rows, end, w)
                    # rows taken together by one program: the same arithmetic
                    grouped = attention.attend(q, k, v, mask, src=table, group=rows)
                    assert torch.equal(grouped, base), (rows, end)
                    for out in (base, other):
                        assert out.shape == q.shape and out.dtype == dtype
                        err = (out.double() - want).abs()
                        if dtype == torch.float32:
                            assert float(err.max()) < 1e-6, float(err.max())
                        else:  # the output's rounding: at most one bf16 ulp (2^-7 relative)
                            assert bool((err <= want.abs() * 2**-7 + 1e-6).all()), \
                                float(err.max())
        try:
            attention.attend(q, k, v, mask, chunk=96, block_t=64)
        except ValueError as exc:
            assert "block_t 64" in str(exc)
        else:
            raise AssertionError("chunk 96 with block_t 64 was accepted")
        for group, written in ((3, None), (2, torch.tensor([3]))):
            try:
                attention.attend(q[:2], k[:2], v[:2], mask[:2], group=group, written=written)
            except ValueError as exc:
                assert f"group {group} must divide" in str(exc)
            else:
                raise AssertionError(f"group {group} was accepted")
        try:
            attention.attend(q, k, v, mask, chunk=64, block_t=32, written=torch.tensor([3]))
        except ValueError as exc:
            assert "written needs chunk == block_t" in str(exc)
        else:
            raise AssertionError("written with two tiles per chunk was accepted")
        print("ok")
        """
    )


def test_triton_variant_keeps_cublas_above_eight_rows(monkeypatch):
    """graphk runs its Triton projections for at most 8 rows (batch x beams): with 9 rows the
    fused stack keeps the compiled pieces (stats say "mm") and gives tts.generation's codes;
    with 6 rows on a CPU without Triton's interpreter it falls back to the plain layers and
    says so (tts.fast.FALLBACKS)."""
    from tts import fast
    from tts.generation import GenerationConfig
    from tts.generation import generate as plain_generate

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = _gpt_small()
    gen = torch.Generator().manual_seed(3)
    prefix = torch.randn(3, 12, model.model_dim, generator=gen) * 0.5
    cfg = GenerationConfig(num_beams=3, do_sample=False, max_mel_tokens=8, warn_on_limit=False)
    before = len(fast.FALLBACKS)
    stats: dict = {}
    out = decode.generate(model, prefix, None, cfg, stats=stats, **decode.VARIANTS["graphk"])
    assert len(fast.FALLBACKS) == before, fast.FALLBACKS[before:]
    assert stats["fused"] and stats["matmul"] == "mm" and stats["attention"] == "sdpa"
    assert torch.equal(out.codes, plain_generate(model, prefix, None, cfg).codes)
    stats = {}
    decode.generate(model, prefix[:2], None, cfg, stats=stats, **decode.VARIANTS["graphk"])
    assert not stats["fused"] and stats["matmul"] is None
    assert any("fused decode layers" in where for where, _ in fast.FALLBACKS[before:])


def test_config_schema_lists_every_decoder_variant():
    """The workflow's `gpt_decoder` choices are exactly tts.fast.decode.VARIANTS."""
    import yaml

    schema = Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml"
    enum = yaml.safe_load(schema.read_text())["properties"]["gpt_decoder"]["enum"]
    assert set(enum) == set(decode.VARIANTS)


def test_reflect_row_ends_equals_each_row_padded_alone():
    """Each row of a padded batch ends with the reflection of its own last frames."""
    from tts.models.dit import reflect_row_ends

    torch.manual_seed(0)
    x = torch.randn(3, 4, 9)
    lengths = torch.tensor([9, 5, 3])
    out = reflect_row_ends(x, lengths, 2)
    assert out.shape == (3, 4, 11)
    for b, n in enumerate(lengths.tolist()):
        alone = torch.nn.functional.pad(x[b : b + 1, :, :n], (0, 2), mode="reflect")
        assert torch.equal(out[b : b + 1, :, : n + 2], alone), b
        assert torch.equal(out[b, :, n + 2 : 9], x[b, :, n + 2 : 9]), b


@pytest.fixture(scope="module")
def demo_s2mel(tmp_path_factory):
    from tts.demo import write_demo_checkpoints
    from tts.pipeline import Engine

    root = write_demo_checkpoints(tmp_path_factory.mktemp("demo_s2mel"), seed=2)
    return Engine.open(root, device="cpu").part("s2mel")


@pytest.mark.parametrize("prompts", ["shared", "different"])
def test_padded_batch_of_segments_equals_each_segment_alone(demo_s2mel, prompts):
    """tts.fast.s2mel.generate_padded (the render stage's batch of unequal segments) gives
    each segment's S2Mel.generate result: padded keys masked, WaveNet reflecting at each
    row's own end, the segment's own noise, and its own prompt (of its own length)."""
    from tts.fast.s2mel import generate_padded

    s2mel = demo_s2mel
    torch.manual_seed(1)
    width = s2mel.gpt_layer[0].in_features
    channels = s2mel.cfm.estimator.cond_projection.in_features
    refs = (11, 11, 11) if prompts == "shared" else (11, 17, 6)
    segments, alone = [], []
    for i, codes in enumerate((7, 13, 4)):
        ref_mel = torch.randn(1, 80, refs[i])
        prompt = torch.randn(1, refs[i], channels)
        semantic = torch.randn(1, codes, 1024)
        latent = torch.randn(1, codes, width)
        style = torch.randn(1, 192)
        mu = s2mel.condition(semantic, latent, prompt)
        noise = torch.randn(1, 80, mu.size(1))
        segments.append((mu, noise, ref_mel, style))
        with torch.no_grad():
            alone.append(
                s2mel.generate(semantic, latent, prompt, ref_mel, style, n_timesteps=4, noise=noise)
            )
        assert alone[i].size(-1) == mu.size(1) - refs[i]
    mels = generate_padded(
        s2mel,
        [m for m, _, _, _ in segments],
        [n for _, n, _, _ in segments],
        [r for _, _, r, _ in segments],
        torch.cat([s for _, _, _, s in segments]),
        n_timesteps=4,
    )
    for i, (got, want) in enumerate(zip(mels, alone, strict=True)):
        assert got.shape == want.shape, i
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"segment {i}")


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("bias", [False, True])
def test_activation_kernel_compiles_for_hopper(dtype, bias):
    """The fused BigVGAN activation compiles for sm_90 at the vocoder's settings (ratio 2, 12
    taps, the default tile), with and without the convolution's bias, in bf16 and float32 (its
    gathers pass the GPU compiler, not only the interpreter), and scripts/activation_sass.py
    counts its SASS: a total that is the sum of the opcodes, with the multiply-adds of the two
    filters among them."""
    pytest.importorskip("triton")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    try:
        import activation_sass
    finally:
        sys.path.pop(0)
    mix = activation_sass.instruction_mix(
        Path(activation_sass.ROOT, "tts", "fast", "bigvgan.py"), dtype, bias, 256, 4
    )
    assert mix["total"] == sum(v for k, v in mix.items() if k != "total") > 0
    assert mix.get("FFMA", 0) >= 24  # 12 upsampling + 12 low-pass taps, at least
