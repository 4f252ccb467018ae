"""Op-by-op references for the hand-written Triton kernels (tests/test_fast.py on the CPU
through Triton's interpreter, tests/test_gpu.py on CUDA)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_reference(x, w, b, ln=None, gelu=False, residual=None):
    """What :func:`tts.fast.linear.linear` computes, op by op with the same rounding steps, and
    per element the error two roundings of it may differ by in bf16: 2^-7 (two half-ulps) of
    the sum of the magnitudes that were rounded. Returns (result, tolerance)."""
    h = x
    if ln is not None:
        h = F.layer_norm(x.float(), ln[0].shape, ln[0].float(), ln[1].float(), ln[2]).to(x.dtype)
    y = F.linear(h.double(), w.double(), b.double()).to(x.dtype)
    mag = h.double().abs() @ w.double().abs().t() + b.double().abs()
    if gelu:
        y = F.gelu(y.float(), approximate="tanh").to(x.dtype)
        mag = mag * 1.2  # GELU's slope is at most ~1.13
    if residual is not None:
        y = (y.float() + residual.float()).to(x.dtype)
        mag = mag + residual.double().abs()
    return y, 2**-7 * (mag + y.double().abs())


def assert_rounding_close(out: torch.Tensor, want: torch.Tensor, tol: torch.Tensor) -> None:
    """float32: within 1e-5; half precision: within ``tol`` (from :func:`linear_reference`)."""
    if out.dtype == torch.float32:
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    else:
        worst = float(((out.double() - want.double()).abs() - tol).max())
        assert worst <= 0, f"beyond the rounding bound by {worst}"


def assert_qkv_written(q, kv, pos: int, want, tol) -> None:
    """A qkv projection with the KV write: the queries ``q`` [rows, width] and the keys /
    values written at cache position ``pos`` of ``kv`` [2, rows, heads, capacity, head_dim]
    match ``want`` / ``tol`` (:func:`linear_reference` of the whole projection), and nothing
    else of the cache was written (it must have been all zeros). Zeroes position ``pos``."""
    rows, width = q.shape
    for got, part in ((q, 0), (kv[0, :, :, pos], 1), (kv[1, :, :, pos], 2)):
        cols = slice(part * width, (part + 1) * width)
        assert_rounding_close(got.reshape(rows, width), want[:, cols], tol[:, cols])
    kv[:, :, :, pos] = 0
    assert not bool(kv.any())


class CountedLaunches:
    """A Triton kernel that counts its launches: ``kernel[grid](...)`` through it adds one to
    ``counts[name]`` (which kernel a dispatcher chose, e.g. tts.fast.linear's two)."""

    def __init__(self, counts: dict, name: str, kernel) -> None:
        self.counts, self.name, self.kernel = counts, name, kernel

    def __getitem__(self, grid):
        self.counts[self.name] += 1
        return self.kernel[grid]


def folded_norm_decoder_check(
    config: dict, device: str, dtype: torch.dtype, codes: int, beams: tuple = (1, 3)
) -> dict:
    """graphkf against graphkk (tts.fast.variants) on a GPT of tensor-core width built from the
    fixture's ``config`` (its ``gpt`` section; model_dim 256, 4 heads, 4 layers, random
    LayerNorm gains and shifts), 2 items, greedy and / or beam search (``beams``), ``codes``
    codes each.

    Asserts: no fallback; graphkf folded its LayerNorms (no LayerNorm kernel launched from its
    layers, while graphkk launches them); greedy, until the first step where the two choose
    different codes, each step's raw logits agree within relative L2 2e-2 (a few
    half-precision roundings; a wrong fold is off by O(1)), over at least 2 steps. Returns what
    it measured, for the GPU report."""
    from tts import fast
    from tts.bench import randomize_
    from tts.fast import decode, linear
    from tts.generation import GenerationConfig
    from tts.models.gpt import UnifiedVoice

    torch.manual_seed(0)
    model = UnifiedVoice.from_config({**config, "model_dim": 256, "heads": 4, "layers": 4})
    with torch.no_grad():
        randomize_(model, seed=0)
        for block in model.gpt.h:
            for norm in (block.ln_1, block.ln_2):
                norm.weight.normal_(1.0, 0.3)
                norm.bias.normal_(0.0, 0.1)
    model = model.to(device, dtype).eval()
    prefix = (torch.randn(2, 20, 256, device=device) * 0.5).to(dtype)
    norms = {"calls": 0}
    plain_norm = linear.layer_norm

    def counted_norm(*args, **kwargs):
        norms["calls"] += 1
        return plain_norm(*args, **kwargs)

    linear.layer_norm = counted_norm
    before = len(fast.FALLBACKS)
    found: dict = {}
    try:
        for n in beams:
            cfg = GenerationConfig(
                num_beams=n, do_sample=False, max_mel_tokens=codes, warn_on_limit=False
            )
            outs = {}
            for name in ("graphkk", "graphkf"):
                norms["calls"], stats = 0, {}
                outs[name] = decode.generate(
                    model, prefix, None, cfg, output_logits=True, stats=stats,
                    **decode.VARIANTS[name],
                )  # fmt: skip
                assert stats["fused"] and stats["folded_norms"] == (name == "graphkf"), stats
                found[f"{name}_norm_calls_beams{n}"] = norms["calls"]
            decode.release()
            assert found[f"graphkf_norm_calls_beams{n}"] == 0, found
            assert found[f"graphkk_norm_calls_beams{n}"] > 0, found
            a, b = outs["graphkf"], outs["graphkk"]
            same = a.codes.shape == b.codes.shape
            found[f"agreement_beams{n}"] = (
                float((a.codes == b.codes).float().mean()) if same else 0.0
            )
            if n == 1:
                n = min(a.codes.size(1), b.codes.size(1))
                differ = (a.codes[:, :n] != b.codes[:, :n]).any(dim=0).nonzero()
                last = int(differ[0, 0]) if differ.numel() else n - 1
                assert last >= 1, "the decoders parted at the first code"
                la, lb = a.logits[: last + 1].double(), b.logits[: last + 1].double()
                rel = ((la - lb).flatten(1).norm(dim=1) / lb.flatten(1).norm(dim=1)).max()
                found["logits_steps_compared"] = last + 1
                found["logits_rel_l2"] = float(rel)
                assert float(rel) < 2e-2, found
    finally:
        linear.layer_norm = plain_norm
    assert len(fast.FALLBACKS) == before, fast.FALLBACKS[before:]
    return found
