"""The GPT's teacher-forced latent pass through CUDA graphs (tts.fast.latent_pass): CPU checks.

The graphs themselves need CUDA (tests/test_gpu.py replays them against the eager stack and
runs the ``fwd_`` fixture cases through them). Here: the premise they rest on (zeros after
the real positions change nothing before them under causal attention), that both
teacher-forced passes run the layer stack through the installed runner, and that off CUDA
the runner is the plain stack.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from graph_stand_in import fake_warm_then_capture

from tts.checkpoints import CheckpointSet
from tts.components import load_component
from tts.fast import graphs, latent_pass, patched
from tts.fast.padded_graphs import padded

SMALL = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "gpt-small"
pytestmark = pytest.mark.skipif(
    not (SMALL / "cases.json").is_file(), reason="gpt-small fixtures absent"
)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def gpt():
    model, _ = load_component("gpt", CheckpointSet.open(SMALL))
    return model.eval()


def _inputs(gpt, batch: int = 2, text: int = 9, codes: int = 23):
    gen = torch.Generator().manual_seed(5)
    d = gpt.model_dim
    return dict(
        latent=torch.randn(batch, 32, d, generator=gen),
        emovec=torch.randn(batch, d, generator=gen),
        text=torch.randint(2, gpt.number_text_tokens, (batch, text), generator=gen),
        codes=torch.randint(0, gpt.stop_mel_token - 1, (batch, codes), generator=gen),
    )


def _forward(gpt, x: dict) -> torch.Tensor:
    b = x["text"].size(0)
    return gpt(
        x["latent"],
        x["text"],
        torch.full((b,), x["text"].size(1)),
        x["codes"],
        torch.full((b,), x["codes"].size(1)),
        None,
        emo_vec=x["emovec"],
        use_speed=torch.zeros(b, dtype=torch.long),
    )


def _packed(gpt, x: dict) -> list[torch.Tensor]:
    texts = [x["text"][0], x["text"][1, :5]]
    codes = [x["codes"][0, :11], x["codes"][1]]
    return gpt.forward_packed(x["latent"], x["emovec"], texts, codes)


class _PaddingRunner:
    """What StackGraphs computes, op by op: the stack at the bucketed length, cut back."""

    def __init__(self, stack, bucket: int):
        self.stack, self.bucket, self.lengths = stack, bucket, []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.size(1)
        length = -(-n // self.bucket) * self.bucket
        self.lengths.append((n, length))
        return self.stack(padded(x, length))[:, :n]


@torch.no_grad()
def test_zeros_after_the_real_positions_change_nothing_before_them(gpt):
    """The premise of the bucketed graphs: the causal stack's states at positions < n are the
    same whether zeros follow or not (float32, up to the products' rounding)."""
    x = torch.randn(2, 37, gpt.model_dim, generator=torch.Generator().manual_seed(1))
    alone = gpt.gpt(x)
    out = gpt.gpt(padded(x, 64))
    assert out.shape == (2, 64, gpt.model_dim)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, :37], alone, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_teacher_forced_passes_run_the_installed_runner(gpt):
    """``forward`` and ``forward_packed`` run the stack through ``stack_runner`` (once per
    pass, at the sequence's length) and, with a runner that pads as the graphs do, give the
    plain pass's latents."""
    x = _inputs(gpt)
    plain, plain_packed = _forward(gpt, x), _packed(gpt, x)
    runner = _PaddingRunner(gpt.gpt, bucket=16)
    gpt.stack_runner = runner
    try:
        got, got_packed = _forward(gpt, x), _packed(gpt, x)
    finally:
        gpt.stack_runner = None
    # forward: 34 conditioning positions + 9 + 2 text + 23 + 2 mel = 70 -> 80
    # forward_packed: the longer item, 34 + (5 + 2) + (23 + 2) = 66 -> 80
    assert runner.lengths == [(70, 80), (66, 80)]
    torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(got_packed, plain_packed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_stack_graphs_off_cuda_run_the_plain_stack(gpt):
    """On the CPU (and with autograd on) the runner is the stack itself: same bits, nothing
    captured."""
    before = dict(latent_pass.COUNTS)
    runner = latent_pass.StackGraphs(gpt.gpt)
    x = torch.randn(1, 21, gpt.model_dim, generator=torch.Generator().manual_seed(2))
    assert torch.equal(runner(x), gpt.gpt(x))
    with torch.enable_grad():
        assert torch.equal(runner(x), gpt.gpt(x))
    assert not runner.graphs and latent_pass.COUNTS == before


@torch.no_grad()
def test_a_key_captures_on_its_second_call_and_replays_after(gpt, monkeypatch):
    """The runner's bookkeeping, with a stand-in for the CUDA graph: a key's first call runs
    eagerly, its second captures, later ones replay (the input copied into the graph's buffer,
    the rest of it zeroed: a shorter sequence after a longer one leaves nothing behind); every
    result is the padded stack's. Above the position limit the stack runs as is; new weights
    drop the graphs and their keys start over."""
    monkeypatch.setattr(latent_pass.StackGraphs, "_graphable", staticmethod(lambda x: True))
    monkeypatch.setattr(graphs, "warm_then_capture", fake_warm_then_capture)
    runner = latent_pass.StackGraphs(gpt.gpt, bucket=16, max_positions=96)
    gen = torch.Generator().manual_seed(4)
    seen = []
    for n in (20, 30, 32, 20, 40, 30, 40, 12):
        x = torch.randn(2, n, gpt.model_dim, generator=gen)
        got = runner(x)
        length = -(-n // 16) * 16
        want = gpt.gpt(padded(x, length))[:, :n]
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        seen.append((runner.captures, runner.replays))
    # 20, 30, 32 -> bucket 32 (eager, capture, replay); 20 replays; 40 -> 48: eager, 30
    # replays, 40 captures; 12 -> 16: eager
    assert seen == [(0, 0), (1, 0), (1, 1), (1, 2), (1, 2), (1, 3), (2, 3), (2, 3)]
    # The bucket-32 graph's input buffer after its last replay (30 positions, after 32 and 20):
    # its tail is zeros, not what the 32-position call left there.
    (static_in,) = [e[1][0] for k, e in runner.graphs.items() if k[0][1] == 32]
    assert static_in[:, 30:].eq(0).all() and static_in[:, :30].ne(0).any()
    x = torch.randn(3, 40, gpt.model_dim, generator=gen)  # 3 x 48 > 96 positions: plain stack
    assert torch.equal(runner(x), gpt.gpt(x)) and (runner.captures, runner.replays) == (2, 3)
    saved = gpt.gpt.h[0].ln_1.weight.data
    gpt.gpt.h[0].ln_1.weight.data = saved.clone()  # new storage: the graphs read the old
    try:
        x = torch.randn(2, 20, gpt.model_dim, generator=gen)
        runner(x)
        assert not runner.graphs and runner.captures == 2  # dropped; the key starts over
        runner(x)
        assert runner.captures == 3
    finally:
        gpt.gpt.h[0].ln_1.weight.data = saved


def test_runner_per_model_and_state_dict_unchanged(gpt):
    """One runner per model (its graphs serve every later pass), a new one once the stack is
    replaced; installing it adds nothing to the state dict (the checkpoint's keys stay)."""
    keys = list(gpt.state_dict())
    try:
        runner = latent_pass.install(gpt)
        assert gpt.stack_runner is runner is latent_pass.runner_for(gpt)
        assert list(gpt.state_dict()) == keys
        saved = gpt.gpt
        gpt.gpt = type(saved)(gpt.model_dim, 1, gpt.heads)
        try:
            other = latent_pass.runner_for(gpt)
            assert other is not runner and other.stack is gpt.gpt
        finally:
            gpt.gpt = saved
    finally:
        gpt.stack_runner = None


@torch.no_grad()
def test_patched_routes_the_stack_through_the_runner_and_restores_it(gpt, monkeypatch):
    """``tts.fast.patched(gpt=True)`` runs ``UnifiedVoice.run_stack`` through the model's
    runner while the block runs, and puts the plain method back after it."""
    from tts.models.gpt import UnifiedVoice

    calls = []
    real = latent_pass.StackGraphs.__call__

    def counted(self, x):
        calls.append(x.shape)
        return real(self, x)

    monkeypatch.setattr(latent_pass.StackGraphs, "__call__", counted)
    plain_method = UnifiedVoice.run_stack
    x = _inputs(gpt)
    plain = _forward(gpt, x)
    with patched(gpt=True, s2mel=False, bigvgan=False):
        got = _forward(gpt, x)
    assert UnifiedVoice.run_stack is plain_method
    assert calls == [torch.Size([2, 70, gpt.model_dim])]
    assert torch.equal(got, plain)  # on the CPU the runner is the plain stack
    _forward(gpt, x)
    assert len(calls) == 1


def test_bucket_and_limit_must_be_positive(gpt):
    for bad in ({"bucket": 0}, {"max_graphs": 0}, {"max_positions": 0}):
        with pytest.raises(ValueError, match="bucket, max_graphs and max_positions"):
            latent_pass.StackGraphs(gpt.gpt, **bad)
