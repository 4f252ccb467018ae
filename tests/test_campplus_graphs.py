"""CAMPPlus on zero-padded filterbanks, and through length-bucketed CUDA graphs
(tts.models.campplus's ``frames``, tts.fast.conditioning.campplus_runner): CPU checks.

The graphs need CUDA (tests/test_gpu.py replays them). Here: the premise they rest on, on the
official goldens (filterbanks padded past their end, with CAMPPlus told their real length,
give the unpadded style vector, in every case that runs CAMPPlus), that the padding must be
told (without ``frames`` the zeros change the result), the runner's bookkeeping with a
stand-in graph, and that off CUDA and under ``tts.fast.patched`` CAMPPlus is the plain module.
"""

from __future__ import annotations

import pytest
import torch
from graph_stand_in import fake_warm_then_capture

from tts import parity
from tts.fast import conditioning, graphs, padded_graphs, patched
from tts.models import campplus as campplus_module
from tts.models.campplus import PLAIN_FORWARD, CAMPPlus
from tts.parity import audio_cases

CASES = [
    (fs, c)
    for fs, c in parity.all_cases()
    if parity.case_id(c) in ("campplus", "campplus_long", "s2mel_chain")
]
pytestmark = pytest.mark.skipif(not CASES, reason="s2mel-small fixtures absent")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _model() -> CAMPPlus:
    fs, _ = CASES[0]
    return audio_cases._campplus(fs.root, "cpu", torch.float32)


def _padded_forward(pad: int, junk: float, calls: list):
    """A CAMPPlus.forward that runs ``x`` padded by ``pad`` frames of ``junk`` (which the
    model must ignore, as zeros), told the real length."""

    def forward(model, x, frames=None):
        assert frames is None  # the cases call the plain forward
        b, n, width = x.shape
        padded = torch.cat((x, torch.full((b, pad, width), junk)), dim=1)
        calls.append((n, n + pad))
        return PLAIN_FORWARD(model, padded, torch.full((b,), n))

    return forward


@pytest.mark.parametrize("pad, junk", [(1, 0.0), (37, 0.0), (64, 3.0)])
@pytest.mark.parametrize("item", CASES, ids=[parity.case_id(c) for _, c in CASES])
def test_padded_campplus_meets_the_goldens(item, pad, junk, monkeypatch):
    """Every fixture case that runs CAMPPlus (alone, on a long input with a partial CAM
    segment, and in the whole s2mel chain), with its filterbanks padded past their end (by
    one frame, to a new CAM segment, with zeros or junk): within the case's tolerances."""
    fs, case = item
    calls: list = []
    monkeypatch.setattr(CAMPPlus, "forward", _padded_forward(pad, junk, calls))
    comparisons = parity.run_case(fs, case)
    failures = [f for c in comparisons if (f := c.failure())]
    assert comparisons and not failures, "\n".join(failures)
    assert calls and all(length > n for n, length in calls), calls


@torch.no_grad()
def test_rows_of_different_lengths_in_one_padded_batch():
    """Two prompts of 150 and 231 frames (odd, so the TDNN's stride keeps a half frame; and
    the shorter one ends inside its second CAM segment) padded into one batch of 256 frames:
    each row's style is its own unpadded one within float32 rounding. Not told their lengths,
    the padding would change the shorter row's style."""
    model = _model()
    gen = torch.Generator().manual_seed(7)
    a, b = torch.randn(1, 150, 80, generator=gen), torch.randn(1, 231, 80, generator=gen)
    batch = torch.zeros(2, 256, 80)
    batch[0, :150], batch[1, :231] = a[0], b[0]
    got = model(batch, torch.tensor([150, 231]))
    want = torch.cat((model(a), model(b)))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    unaware = model(batch[:1])
    assert (unaware - want[:1]).abs().max() > 1e-3


@torch.no_grad()
def test_runner_captures_on_a_keys_second_call_and_replays_any_length_of_its_bucket(
    monkeypatch,
):
    """The runner's bookkeeping (stand-in capture): a bucket's first call runs eagerly, its
    second captures, later ones replay with their own length and filterbanks; every result
    is CAMPPlus run on the input padded to the bucket; longer than the position limit, the
    plain module runs."""
    monkeypatch.setattr(padded_graphs.PaddedGraphs, "_graphable", staticmethod(lambda x: True))
    monkeypatch.setattr(graphs, "warm_then_capture", fake_warm_then_capture)
    model = _model()
    runner = conditioning.campplus_runner(model)
    try:
        assert conditioning.campplus_runner(model) is runner  # one per model
        gen = torch.Generator().manual_seed(8)
        seen = []
        for n in (70, 100, 128, 65, 129):
            x = torch.randn(1, n, 80, generator=gen)
            bucket = -(-n // conditioning.CAMPPLUS_BUCKET) * conditioning.CAMPPLUS_BUCKET
            want = PLAIN_FORWARD(model, padded_graphs.padded(x, bucket), torch.tensor([n]))
            assert torch.equal(runner(x), want), n
            torch.testing.assert_close(runner.unpadded(model, x), model(x))
            seen.append((runner.captures, runner.replays))
        # 70, 100, 128, 65 -> bucket 128 (eager, capture, replay, replay); 129 -> 192: eager
        assert seen == [(0, 0), (1, 0), (1, 1), (1, 2), (1, 2)]
        long = torch.randn(2, 2100, 80, generator=gen)  # 2 x 2112 > 4096 positions: plain
        assert torch.equal(runner(long), model(long)) and runner.replays == 2
    finally:
        del model.graph_runner


@torch.no_grad()
def test_off_cuda_and_under_patched_campplus_is_the_plain_module(monkeypatch):
    """Off CUDA the runner runs the plain forward (same bits, no graph); ``tts.fast.patched``
    routes ``CAMPPlus.forward`` through the model's runner and restores it; installing a
    runner adds nothing to the state dict."""
    model = _model()
    keys = list(model.state_dict())
    x = torch.randn(1, 90, 80, generator=torch.Generator().manual_seed(9))
    plain = model(x)
    names = []
    real = padded_graphs.PaddedGraphs.__call__
    monkeypatch.setattr(
        padded_graphs.PaddedGraphs, "__call__", lambda s, *a: names.append(s.name) or real(s, *a)
    )
    try:
        with patched(gpt=False, s2mel=False, bigvgan=False):
            got = model(x)
        assert CAMPPlus.forward is PLAIN_FORWARD is campplus_module.CAMPPlus.forward
        assert names == ["CAMPPlus CUDA graph capture"] and torch.equal(got, plain)
        assert model.graph_runner.captures == model.graph_runner.replays == 0
        assert list(model.state_dict()) == keys
        with patched(gpt=False, s2mel=False, bigvgan=False, campplus=False):
            model(x)
        assert len(names) == 1
    finally:
        del model.graph_runner
