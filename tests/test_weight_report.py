"""tts.weight_report: per-tensor statistics and the flags for tensors that look untrained."""

import math

import pytest
import torch

from tts.weight_report import file_verdict, state_report, tensor_stats


def _reference(values: list[float]) -> tuple[float, float, float, float]:
    """mean, sample std, min, max of ``values`` in plain Python floats."""
    mean = math.fsum(values) / len(values)
    var = math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var), min(values), max(values)


def test_statistics_of_a_finite_tensor_are_its_float64_statistics():
    t = torch.randn(64, 48, generator=torch.Generator().manual_seed(0))
    s = tensor_stats("f", "layer.weight", t)
    mean, std, lo, hi = _reference(t.double().flatten().tolist())
    assert s.nan == 0 and s.shape == [64, 48] and s.dtype == "float32"
    assert s.mean == pytest.approx(mean, abs=1e-12)
    assert s.std == pytest.approx(std, rel=1e-12)
    assert (s.min, s.max) == (lo, hi)
    assert s.flags == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_nan_and_inf_are_counted_and_left_out_of_the_statistics(dtype):
    t = torch.randn(200, generator=torch.Generator().manual_seed(1)).to(dtype)
    t[3], t[7], t[9], t[11] = float("nan"), float("inf"), float("-inf"), float("nan")
    s = tensor_stats("f", "w", t)
    finite = [v for i, v in enumerate(t.double().tolist()) if i not in (3, 7, 9, 11)]
    mean, std, lo, hi = _reference(finite)
    assert s.nan == 2 and s.flags[0] == "2 NaN"
    assert s.mean == pytest.approx(mean, abs=1e-12)
    assert s.std == pytest.approx(std, rel=1e-12)
    assert (s.min, s.max) == (lo, hi)


def test_untrained_looking_tensors_are_flagged_and_buffers_by_design_are_not():
    fan_in = 64
    bound = 1.0 / math.sqrt(fan_in)
    uniform = (torch.rand(128, fan_in, generator=torch.Generator().manual_seed(2)) * 2 - 1) * bound
    state = {
        "a.weight": torch.zeros(16, 16),
        "b.weight": torch.ones(16, 16),
        "c.bias": torch.full((16,), 0.5),
        "d.weight": uniform,
        "e.num_batches_tracked": torch.tensor(0),
        "f.input_pos": torch.zeros(32),
        "g.weight": torch.randn(32, 32, generator=torch.Generator().manual_seed(3)) * 0.02,
    }
    flags = {s.name: s.flags for s in state_report("f", state)}
    assert flags["a.weight"] == ["all zero"]
    assert flags["b.weight"] == ["all one"]
    assert flags["c.bias"] == ["constant 0.5"]
    assert flags["d.weight"][0].startswith("looks like default uniform init")
    assert flags["e.num_batches_tracked"] == [] and flags["f.input_pos"] == []
    assert flags["g.weight"] == []
    verdict = file_verdict(state_report("f", state))
    assert verdict["tensors"] == 7 and verdict["nan_tensors"] == 0
    assert verdict["verdict"] == "suspicious: 4 tensor(s) look untrained"


def test_an_all_nan_tensor_has_nan_statistics():
    s = tensor_stats("f", "w", torch.full((4,), float("nan")))
    assert s.nan == 4 and math.isnan(s.mean) and math.isnan(s.min)
    assert file_verdict([s])["nan_tensors"] == 1
