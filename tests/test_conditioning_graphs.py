"""The GPT's prompt encoders through length-bucketed CUDA graphs (tts.fast.conditioning and
tts.fast.padded_graphs): CPU checks.

The graphs need CUDA (tests/test_gpu.py runs the fixture cases through them). Here: the
premise they rest on, on the official goldens (features zero-padded past their end, with
the conformer told their real length, give the unpadded values, also in the padded-batch
cases where masked frames leak through the convolutions as upstream), that the model
methods run the installed runners, the runner's bookkeeping with a stand-in graph, and that
off CUDA the runners are the plain encoders.
"""

from __future__ import annotations

import graph_stand_in
import pytest
import torch
from graph_stand_in import fake_warm_then_capture
from torch import nn

from tts import parity
from tts.fast import conditioning, graphs, padded_graphs, patched
from tts.parity import gpt_cases

CASES = [
    (fs, c)
    for fs, c in parity.all_cases()
    if fs.name == "gpt-small" and parity.case_id(c).startswith(("cond_", "merge_"))
]
pytestmark = pytest.mark.skipif(not CASES, reason="gpt-small fixtures absent")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _id(item):
    return parity.case_id(item[1])


class _PaddingRunner:
    """What a PaddedGraphs runner computes, op by op: the encoder over the features padded
    to the bucket, told their real length."""

    def __init__(self, encode, bucket: int):
        self.encode, self.bucket, self.lengths = encode, bucket, []

    def __call__(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        n = x.size(1)
        length = (n // self.bucket + 1) * self.bucket  # always some padding
        self.lengths.append((n, length))
        frames = torch.full((x.size(0),), n, dtype=torch.int64)
        return self.encode(padded_graphs.padded(x, length), frames, lengths)


@pytest.mark.parametrize("item", CASES, ids=[_id(c) for c in CASES])
def test_padded_encoders_meet_the_goldens(item):
    """Every speaker/emotion conditioning and merge case of the fixtures, with both encoders
    run on features zero-padded by 1 to 16 frames: within the cases' tolerances."""
    fs, case = item
    gpt = gpt_cases._gpt(fs, parity.RunOptions())
    speaker = _PaddingRunner(gpt.encode_speaker, bucket=16)
    emotion = _PaddingRunner(gpt.encode_emotion, bucket=16)
    gpt.speaker_encoder_runner, gpt.emotion_encoder_runner = speaker, emotion
    try:
        comparisons = parity.run_case(fs, case)
    finally:
        gpt.speaker_encoder_runner = gpt.emotion_encoder_runner = None
    failures = [f for c in comparisons if (f := c.failure())]
    assert comparisons and not failures, "\n".join(failures)
    calls = speaker.lengths + emotion.lengths
    assert calls and all(length > n for n, length in calls), calls


@torch.no_grad()
def test_padding_changes_no_kept_frame_where_rows_are_masked():
    """Two rows, the second masked after 13 of its 30 frames (its masked frames reach the
    kept ones through the convolutions, as upstream): padded to 64 frames and told their
    real length, the conformer gives the unpadded conformer's kept frames, and the encoders
    their outputs, within float32 rounding."""
    fs, _ = CASES[0]
    gpt = gpt_cases._gpt(fs, parity.RunOptions())
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 30, 1024, generator=gen)
    lengths = torch.tensor([1024, 13])
    frames = torch.full((2,), 30)
    enc = gpt.conditioning_encoder
    want, want_mask = enc(x, lengths)
    got, got_mask = enc(padded_graphs.padded(x, 64), lengths, frames)
    t = want.size(1)
    assert torch.equal(got_mask[:, :, :t], want_mask) and not got_mask[:, :, t:].any()
    torch.testing.assert_close(got[:, :t], want, rtol=1e-5, atol=1e-5)
    # Without being told the real length, the zeros would change the kept frames.
    unaware, _ = enc(padded_graphs.padded(x, 64), lengths)
    assert (unaware[:, :t] - want).abs().max() > 1e-3
    for encode in (gpt.encode_speaker, gpt.encode_emotion):
        torch.testing.assert_close(
            encode(padded_graphs.padded(x, 64), frames, lengths),
            encode(x, None, lengths),
            rtol=1e-5,
            atol=1e-5,
        )


@torch.no_grad()
def test_model_methods_run_the_installed_runners_and_patched_restores_them(monkeypatch):
    """get_conditioning and get_emo_conditioning (hence merge_emovec and inference_speech)
    go through the installed runners; ``tts.fast.patched`` routes them through the model's
    runners and puts the methods back after; off CUDA a runner is the plain encoder (same
    bits, nothing captured)."""
    from tts.models.gpt import EmotionPath, UnifiedVoice

    fs, _ = CASES[0]
    gpt = gpt_cases._gpt(fs, parity.RunOptions())
    x = torch.randn(1, 1024, 37, generator=torch.Generator().manual_seed(4))
    plain = gpt.get_conditioning(x), gpt.get_emo_conditioning(x)
    before = dict(conditioning.COUNTS)
    calls = []
    real = padded_graphs.PaddedGraphs.__call__
    monkeypatch.setattr(
        padded_graphs.PaddedGraphs, "__call__", lambda s, *a: calls.append(s.name) or real(s, *a)
    )
    methods = UnifiedVoice.get_conditioning, EmotionPath.get_emo_conditioning
    with patched(gpt=True, s2mel=False, bigvgan=False):
        got = gpt.get_conditioning(x), gpt.get_emo_conditioning(x)
    assert (UnifiedVoice.get_conditioning, EmotionPath.get_emo_conditioning) == methods
    assert calls == [
        "GPT speaker conditioning CUDA graph capture",
        "GPT emotion conditioning CUDA graph capture",
    ]
    assert all(torch.equal(a, b) for a, b in zip(got, plain, strict=True))
    try:
        conditioning.install(gpt)
        assert gpt.speaker_encoder_runner is conditioning.speaker_runner(gpt)
        assert gpt.emotion_encoder_runner is conditioning.emotion_runner(gpt)
        again = gpt.get_conditioning(x), gpt.get_emo_conditioning(x)
    finally:
        gpt.speaker_encoder_runner = gpt.emotion_encoder_runner = None
    assert len(calls) == 4
    assert all(torch.equal(a, b) for a, b in zip(again, plain, strict=True))
    assert conditioning.COUNTS == before


class _Weighted(nn.Module):
    """A stand-in encoder: a length-independent summary of the real frames, times a weight,
    plus the extra input."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(2.0))

    def forward(self, x, n, extra):
        keep = torch.arange(x.size(1)).unsqueeze(0) < n.unsqueeze(1)
        return (x * keep.unsqueeze(-1)).sum(1) * self.w + extra


@torch.no_grad()
def test_untrimmed_runner_copies_every_input_into_its_graph(monkeypatch):
    """The runner's bookkeeping, with a stand-in graph, for a length-independent output: the
    real length and the extra inputs are graph inputs too (each replay copies them in, so a
    graph serves every length of its bucket); a key whose capture failed runs eagerly at the
    padded length; new weights drop the graphs; above the position limit the function runs
    unpadded."""
    monkeypatch.setattr(padded_graphs.PaddedGraphs, "_graphable", staticmethod(lambda x: True))
    monkeypatch.setattr(graphs, "warm_then_capture", fake_warm_then_capture)
    module = _Weighted()
    runner = padded_graphs.PaddedGraphs(
        lambda m, *a: m(*a), module, name="t", bucket=8, max_graphs=4, max_positions=40, trim=False
    )
    gen = torch.Generator().manual_seed(5)
    seen = []
    for n in (5, 7, 8, 3, 9):
        x = torch.randn(2, n, 3, generator=gen)
        extra = torch.randn(2, 3, generator=gen)
        want = x.sum(1) * 2.0 + extra
        torch.testing.assert_close(runner(x, extra), want)
        seen.append((runner.captures, runner.replays))
    # 5, 7, 8, 3 -> bucket 8 (eager, capture, replay, replay); 9 -> 16: eager
    assert seen == [(0, 0), (1, 0), (1, 1), (1, 2), (1, 2)]
    x = torch.randn(3, 14, 3, generator=gen)  # 3 x 16 > 40 positions: unpadded
    assert runner(x, torch.zeros(3, 3)).shape == (3, 3) and runner.replays == 2
    monkeypatch.setattr(graph_stand_in, "FAILING", {"t"})
    x = torch.randn(1, 20, 3, generator=gen)  # bucket 24: eager, then a failed capture
    for _ in range(3):
        torch.testing.assert_close(runner(x, torch.zeros(1, 3)), x.sum(1) * 2.0)
    assert [k[0] for k, v in runner.graphs.items() if v is None] == [(1, 24, 3)]
    module.w.data = torch.tensor(3.0)  # new storage: the graphs read the old
    x = torch.randn(2, 6, 3, generator=gen)
    torch.testing.assert_close(runner(x, torch.zeros(2, 3)), x.sum(1) * 3.0)
    assert not runner.graphs and list(runner.eager_calls.values()) == [1]


@torch.no_grad()
def test_a_deep_copy_of_a_model_runs_its_own_modules():
    """``tts bench`` deep-copies the Engine's GPT (runners installed) for each GPT dtype: the
    copy's runners must hold and run the copy's modules, not the original's."""
    import copy

    from tts.fast import latent_pass

    fs, _ = CASES[0]
    gpt = gpt_cases._gpt(fs, parity.RunOptions())
    conditioning.install(gpt)
    latent_pass.install(gpt)
    gpt.stack_runner.graphs["a captured key"] = ("graph", (), None)  # as a capture leaves it
    try:
        twin = copy.deepcopy(gpt)
    finally:
        gpt.speaker_encoder_runner = gpt.emotion_encoder_runner = gpt.stack_runner = None
    # The copy captures its own graphs and adds to the same tallies (tts bench reports them).
    assert not twin.stack_runner.graphs and twin.stack_runner.counts is latent_pass.COUNTS
    for runner in (twin.speaker_encoder_runner, twin.emotion_encoder_runner):
        assert runner.counts is conditioning.COUNTS and not runner.graphs
    assert list(twin.speaker_encoder_runner.module) == [
        twin.conditioning_encoder,
        twin.perceiver_encoder,
    ]
    assert list(twin.emotion_encoder_runner.module) == [
        twin.emo_conditioning_encoder,
        twin.emo_perceiver_encoder,
    ]
    assert twin.stack_runner.module is twin.gpt and twin.stack_runner.stack is twin.gpt
    twin.perceiver_encoder.latents.mul_(2.0)
    twin.emo_perceiver_encoder.latents.mul_(2.0)
    x = torch.randn(1, 1024, 37, generator=torch.Generator().manual_seed(7))
    for method in ("get_conditioning", "get_emo_conditioning"):
        got = getattr(twin, method)(x)
        assert not torch.equal(got, getattr(gpt, method)(x)), method
        twin_plain = copy.deepcopy(twin)
        twin_plain.speaker_encoder_runner = twin_plain.emotion_encoder_runner = None
        assert torch.equal(got, getattr(twin_plain, method)(x)), method


def test_registered_runners_are_one_per_model_and_name_and_let_the_model_go():
    """``padded_graphs.registered``: the same runner for the same model and name while its
    modules stay, a new one once they are replaced, none for another name until made; a
    dropped model leaves the registry (the runner holds its parts, not the model)."""
    import gc
    import weakref

    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))

    def make(modules):
        return padded_graphs.PaddedGraphs(
            lambda m, x, n: x,
            modules,
            name="t",
            bucket=4,
            max_graphs=1,
            max_positions=16,
            trim=False,
        )

    first = padded_graphs.registered(model, "a", [model[0]], make)
    assert padded_graphs.registered(model, "a", [model[0]], make) is first
    assert padded_graphs.registered_if_any(model, "b") is None
    model[0] = nn.Linear(2, 2)
    again = padded_graphs.registered(model, "a", [model[0]], make)
    assert again is not first and padded_graphs.registered_if_any(model, "a") is again
    gone = weakref.ref(model)
    del model, first, again
    gc.collect()
    assert gone() is None
