"""The strict loader on small synthetic modules: every difference is named, nothing stays at init."""

import pickle

import pytest
import torch
from torch import nn

from tts.loading import (
    CheckpointError,
    all_finite,
    compare_state,
    load_strict,
    params_on_meta,
    read_tensor_file,
)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 3)
        self.norm = nn.BatchNorm1d(3)
        self.register_buffer("table", torch.arange(5.0))  # a deterministic, computed buffer


def _state():
    torch.manual_seed(0)
    ref = Tiny()
    ref.norm.running_mean.normal_()
    return {k: v.clone() for k, v in ref.state_dict().items()}


def test_params_on_meta_until_loaded():
    with params_on_meta():
        m = Tiny()
    assert all(p.device.type == "meta" for p in m.parameters())
    assert m.table.device.type == "cpu"  # buffers are real, computed values


def test_params_on_meta_skips_only_the_meta_parameters_initialisation():
    """Inside params_on_meta the parameters' initialising fills are skipped (they have no
    values); fills of real tensors, such as a buffer drawn at construction, still happen."""

    class Drawn(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(5, 3)  # its reset_parameters fills a meta weight
            g = torch.Generator().manual_seed(3)
            self.register_buffer("noise", torch.empty(4).normal_(generator=g))
            self.register_buffer("halves", torch.zeros(2).fill_(0.5))

    with params_on_meta():
        m = Drawn()
    want = torch.empty(4).normal_(generator=torch.Generator().manual_seed(3))
    assert m.emb.weight.is_meta
    assert torch.equal(m.noise, want) and torch.equal(m.halves, torch.full((2,), 0.5))
    outside = nn.Embedding(5, 3)  # and the skipping ends with the context
    assert not outside.weight.is_meta and outside.weight.std() > 0


def test_strict_load_roundtrip():
    state = _state()
    with params_on_meta():
        m = Tiny()
    report = load_strict(m, state, "tiny.pth")
    assert report.loaded == len(state)
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_missing_learned_buffer_is_an_error():
    state = _state()
    del state["norm.running_mean"]
    with params_on_meta():
        m = Tiny()
    with pytest.raises(CheckpointError, match=r"missing tensor norm\.running_mean"):
        load_strict(m, state, "tiny.pth")


def test_missing_computed_buffer_allowed_only_when_declared():
    state = _state()
    del state["table"]
    with params_on_meta():
        m = Tiny()
    with pytest.raises(CheckpointError, match="missing tensor table"):
        load_strict(m, state, "tiny.pth")
    with params_on_meta():
        m = Tiny()
    report = load_strict(m, state, "tiny.pth", computed_ok=("table",))
    assert report.computed == ["table"]
    assert torch.equal(m.table, torch.arange(5.0))


def test_unexpected_names_closest_and_all_problems_listed():
    state = _state()
    state["proj.weigth"] = state.pop("proj.weight")
    state["norm.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointError) as err:
        compare_state({k: (tuple(v.shape), v.dtype) for k, v in _state().items()}, state, "f.pth")
    text = str(err.value)
    assert "missing tensor proj.weight" in text
    assert "unexpected tensor proj.weigth" in text and "closest expected name: proj.weight" in text
    assert "shape mismatch for norm.bias: file has [7], model expects [3]" in text


def test_integer_tensor_for_float_param_is_a_dtype_error():
    state = _state()
    state["proj.bias"] = torch.zeros(3, dtype=torch.int64)
    with params_on_meta():
        m = Tiny()
    with pytest.raises(CheckpointError, match="dtype mismatch for proj.bias"):
        load_strict(m, state, "tiny.pth")


def test_half_precision_file_is_cast_and_reported():
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in _state().items()}
    with params_on_meta():
        m = Tiny()
    report = load_strict(m, state, "tiny.pth")
    assert m.proj.weight.dtype == torch.float32
    assert "proj.weight" in report.cast


def test_nan_in_file_is_an_error():
    state = _state()
    state["proj.weight"][0, 0] = float("nan")
    with params_on_meta():
        m = Tiny()
    with pytest.raises(CheckpointError, match="non-finite values .* in proj.weight"):
        load_strict(m, state, "tiny.pth")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_all_finite_agrees_with_isfinite(dtype):
    """The one-pass check sees a single NaN, +inf or -inf anywhere: at the start, in the middle,
    in the tail a vectorised loop handles apart, in non-contiguous views."""
    gen = torch.Generator().manual_seed(0)
    for n in (1, 7, 8, 31, 64, 1000, 4099, 65_537):
        base = torch.randn(n, generator=gen).to(dtype)
        assert all_finite(base)
        for pos in {0, n // 2, n - 1, max(0, n - 3)}:
            for bad in (float("nan"), float("inf"), float("-inf")):
                t = base.clone()
                t[pos] = bad
                assert not all_finite(t), (n, pos, bad)
                assert bool(torch.isfinite(t).all()) is False
    grid = torch.randn(64, 48, generator=gen).to(dtype)
    grid[5, 41] = float("nan")  # an odd column: outside grid[:, ::2]
    assert all_finite(grid[:, :40]) and all_finite(grid[:, ::2].t())
    assert not all_finite(grid[:, 40:]) and not all_finite(grid.t()[41])
    big = torch.full((3, 5), torch.finfo(dtype).max, dtype=dtype)
    assert all_finite(big) and all_finite(-big)  # the largest finite values are finite


def test_all_finite_edge_cases():
    assert all_finite(torch.empty(0)) and all_finite(torch.tensor(2.0))
    assert not all_finite(torch.tensor(float("nan")))
    assert all_finite(torch.arange(5)) and all_finite(torch.tensor([True, False]))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "evil", "dir"])
def test_unreadable_files_give_one_line_errors(tmp_path, kind):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pth"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("<html>404 not found</html>")
    elif kind == "truncated":
        torch.save(_state(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "evil":
        path.write_bytes(pickle.dumps({"w": _Evil(str(marker))}))
    elif kind == "dir":
        path.mkdir()
    with pytest.raises(CheckpointError) as err:
        read_tensor_file(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert not marker.exists(), "the malicious pickle was executed"


def test_safetensors_truncated(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_file(_state(), str(path))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_tensor_file(path)
