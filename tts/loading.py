"""Strict checkpoint reading and loading: the one loader every model goes through.

The failure this module exists to prevent: a port "loads" a checkpoint, a tensor name does not
match, and a layer silently keeps its random initialisation. Here every model is built with its
parameters on the ``meta`` device (no memory, no values), so a parameter the file does not
provide is still ``meta`` after loading and :func:`load_strict` refuses to return it. Before that,
the file's names and shapes are compared with what the module expects and every difference is
reported at once, with the closest expected name for each unexpected one.

Deterministic buffers a module computes itself (sinusoid tables, position indices, resampling
filters) may be absent from a real file; they are kept only if their name matches the component's
declared list, and are reported as computed.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import io
import pickle
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from tts.checkpoints import CheckpointError  # defined there (torch-free), re-exported here

# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


def read_tensor_file(path: str | Path, keep: Callable[[str], bool] | None = None) -> object:
    """Read a ``.safetensors`` file or a torch pickle without ever executing pickled code.

    Torch pickles are opened with ``weights_only=True``: a pickle that would run code is rejected
    before anything runs. Errors are re-raised as :class:`CheckpointError` with a one-line reason.
    ``keep`` (safetensors only; ignored for pickles): read only the tensors whose names it
    accepts, the rest of the file is never read.
    """
    from tts.preflight import check_file

    path = Path(path)
    # Missing, directory, empty, unreadable, text, LFS pointer, truncated, wrong container,
    # a zip that is not a torch checkpoint, a zip pickle importing code: one line, nothing run.
    if check_file(path) == "safetensors":
        return _read_safetensors(path, keep)
    return _read_torch_pickle(path)


def _read_safetensors(
    path: Path, keep: Callable[[str], bool] | None = None
) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        if keep is None:
            return load_file(str(path))
        with safe_open(str(path), "pt") as f:
            return {name: f.get_tensor(name) for name in f.keys() if keep(name)}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable safetensors file ({reason})") from None


def _read_torch_pickle(path: Path) -> object:
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):
        raise CheckpointError(
            f"{path}: not a torch checkpoint (neither a zip archive nor a pickle; "
            "is it a text file or a download error page?)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=head.startswith(b"PK"))
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{path}: refused to unpickle: the file contains code or objects beyond plain "
                f"tensors ({_short(first)}); it was not executed"
            ) from None
        raise CheckpointError(f"{path}: corrupt pickle ({_short(first)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: truncated or corrupt checkpoint ({_short(first)})"
        ) from None


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def flatten_state(
    obj: object, path: Path | str, nesting: Iterable[str] = ()
) -> dict[str, torch.Tensor]:
    """Walk the official nesting (e.g. ``['generator']``) down to a flat name -> tensor dict."""
    for key in nesting:
        if not isinstance(obj, Mapping) or key not in obj:
            found = sorted(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(f"{path}: expected a top-level key {key!r}; found {found}")
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    out: dict[str, torch.Tensor] = {}
    for name, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor"
            )
        out[str(name)] = value
    return out


# --------------------------------------------------------------------------------------------
# Building modules without initialising parameters
# --------------------------------------------------------------------------------------------


class _NoFillsOnMeta(torch.overrides.TorchFunctionMode):
    """Initialising fills of meta tensors (``torch.nn.init``'s functions and the in-place
    fills they call) return them untouched: a meta tensor has no values to fill.

    Why not let them run: PyTorch's ``normal_`` for meta tensors imports TorchDynamo (~0.8-3
    s; an ``nn.Embedding``'s initialisation calls it), which a job that compiles nothing, such
    as the workflow's render job, would otherwise pay."""

    FILLS = frozenset(
        getattr(torch.Tensor, name)
        for name in (
            "normal_",
            "uniform_",
            "zero_",
            "fill_",
            "copy_",
            "exponential_",
            "bernoulli_",
            "random_",
        )
    )

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        fills = func in self.FILLS or getattr(func, "__module__", None) == "torch.nn.init"
        target = args[0] if args else kwargs.get("tensor")  # torch.nn.init passes tensor=
        if fills and isinstance(target, torch.Tensor) and target.is_meta:
            return target
        return func(*args, **kwargs)


@contextlib.contextmanager
def params_on_meta() -> Iterator[None]:
    """Build modules with every *parameter* on the meta device; buffers stay real.

    Parameters have no values until a checkpoint provides them, so a parameter the loader misses
    cannot survive as a plausible-looking random tensor. Buffers are created normally because
    the deterministic ones (sinusoid tables, filters) must hold their computed values; the
    parameters' random initialisation is skipped (:class:`_NoFillsOnMeta`).
    """
    original = nn.Module.register_parameter

    def register_on_meta(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(self, name, param)
        if param is not None and param.device.type != "meta":
            meta = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
            self._parameters[name] = meta

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    try:
        with _NoFillsOnMeta():
            yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def expected_tensors(module: nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of everything the module's ``state_dict`` holds."""
    return {k: (tuple(v.shape), v.dtype) for k, v in module.state_dict(keep_vars=True).items()}


# --------------------------------------------------------------------------------------------
# Strict comparison and loading
# --------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What a strict load found: counts, and the buffers kept at their computed value."""

    source: str
    loaded: int = 0
    computed: list[str] = field(default_factory=list)
    cast: dict[str, str] = field(default_factory=dict)


def _closest(name: str, candidates: Iterable[str]) -> str | None:
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.0)
    return match[0] if match else None


MAX_LISTED = 40  # problems listed one per line; the rest are counted


def _extra_prefix(unexpected: list[str], missing: list[str]) -> str | None:
    """``'module.'`` when every unexpected name is a missing name with that prefix added."""
    if not unexpected or not missing or "." not in unexpected[0]:
        return None
    prefix = unexpected[0].split(".", 1)[0] + "."
    wanted = set(missing)
    if all(n.startswith(prefix) and n[len(prefix) :] in wanted for n in unexpected):
        return prefix
    return None


def compare_state(
    expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
    provided: Mapping[str, torch.Tensor],
    source: str,
    computed_ok: Iterable[str] = (),
) -> list[str]:
    """Return the list of allowed-missing computed buffers, or raise listing every problem.

    ``computed_ok`` holds glob patterns of deterministic buffers that may be absent.
    """
    patterns = list(computed_ok)
    problems: list[str] = []
    computed: list[str] = []
    missing = [k for k in expected if k not in provided]
    unexpected = [k for k in provided if k not in expected]
    for name in missing:
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            computed.append(name)
        else:
            problems.append(f"missing tensor {name} {list(expected[name][0])}")
    hints = []
    prefix = _extra_prefix(unexpected, missing)
    if prefix:
        hints.append(
            f"(every unexpected name is an expected one with the extra prefix {prefix!r}, as "
            "saved from a wrapped model; strip it)"
        )
    for name in unexpected:
        if prefix:
            near = name[len(prefix) :]
        elif len(problems) < MAX_LISTED:  # difflib is quadratic: only for names that are shown
            near = _closest(name, missing or expected)
        else:
            near = None
        hint = f" (closest expected name: {near})" if near else ""
        problems.append(f"unexpected tensor {name} {list(provided[name].shape)}{hint}")
    for name, (shape, dtype) in expected.items():
        if name not in provided:
            continue
        tensor = provided[name]
        if tuple(tensor.shape) != shape:
            problems.append(
                f"shape mismatch for {name}: file has {list(tensor.shape)}, model expects {list(shape)}"
            )
        elif tensor.dtype.is_floating_point != dtype.is_floating_point:
            problems.append(
                f"dtype mismatch for {name}: file has {str(tensor.dtype).removeprefix('torch.')}, "
                f"model expects {str(dtype).removeprefix('torch.')}"
            )
    if problems:
        head = f"{source}: {len(problems)} problem(s) against the expected {len(expected)} tensors:"
        if len(problems) > 1 and all(p.startswith("shape mismatch") for p in problems):
            hints.append("(all are shape mismatches: do config.yaml's sizes belong to this file?)")
        shown = problems[:MAX_LISTED]
        if len(problems) > MAX_LISTED:
            shown.append(f"... and {len(problems) - MAX_LISTED} more")
        raise CheckpointError("\n  ".join([head, *hints, *shown]))
    return computed


def all_finite(t: torch.Tensor) -> bool:
    """True when ``t`` holds no NaN and no +-inf (non-float tensors always do).

    One min/max pass: NaN propagates through both and an infinity is an extreme, so the two
    values decide it. On the CPU this is ~25x faster than ``isfinite(t).all()``, which builds a
    boolean copy of the tensor; checking every weight of the full-size set that way took seconds
    per workflow job.
    """
    if not t.is_floating_point() or t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


def load_strict(
    module: nn.Module,
    provided: Mapping[str, torch.Tensor],
    source: str,
    computed_ok: Iterable[str] = (),
) -> LoadReport:
    """Load ``provided`` into ``module`` (built under :func:`params_on_meta`) or raise.

    Every expected tensor must be provided with the expected shape, except deterministic buffers
    matching ``computed_ok``. Floating tensors are cast to the module's dtype. Afterwards no
    parameter or buffer may remain on the meta device.
    """
    expected = module.state_dict(keep_vars=True)
    spec = {k: (tuple(v.shape), v.dtype) for k, v in expected.items()}
    computed = compare_state(spec, provided, source, computed_ok)
    bad = [k for k in spec if k in provided and not all_finite(provided[k])]
    if bad:
        more = f" and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        raise CheckpointError(
            f"{source}: non-finite values (NaN/inf) in {', '.join(bad[:MAX_LISTED])}{more}"
        )
    report = LoadReport(source=source, computed=computed)
    state: dict[str, torch.Tensor] = {}
    for name, ref in expected.items():
        if name not in provided:
            continue
        tensor = provided[name]
        if tensor.dtype != ref.dtype:
            report.cast[name] = f"{tensor.dtype}->{ref.dtype}"
            tensor = tensor.to(ref.dtype)
        state[name] = tensor
    result = module.load_state_dict(state, strict=False, assign=True)
    leftover = [k for k in result.missing_keys if k not in computed]
    if result.unexpected_keys or leftover:  # cannot happen after compare_state; belt and braces
        raise CheckpointError(f"{source}: load mismatch {leftover + result.unexpected_keys}")
    report.loaded = len(state)
    still_meta = [n for n, t in _all_tensors(module) if t.device.type == "meta"]
    if still_meta:
        raise CheckpointError(
            f"{source}: {len(still_meta)} tensor(s) have no value after loading "
            f"(not in the checkpoint and not computable): {', '.join(still_meta[:20])}"
        )
    return report


def _all_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from module.named_parameters(remove_duplicate=False)
    yield from module.named_buffers(remove_duplicate=False)


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove ``prefix`` from every key that has it (e.g. DDP's ``module.``)."""
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}


def tensor_bytes(state: Mapping[str, torch.Tensor]) -> int:
    """Total payload bytes of a state dict (for reports and bandwidth floors)."""
    return sum(t.numel() * t.element_size() for t in state.values())


def save_torch(obj: object, path: str | Path) -> None:
    """``torch.save`` to a temporary name, then rename: no half-written file at ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    buf = io.BytesIO()
    torch.save(obj, buf)
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
