"""Parity runner core: find fixture sets, dispatch each case to its handler, compare outputs.

A fixture set is a folder with ``cases.json`` and ``golden.safetensors`` made by running the
official implementation. Case ids are case *types*: other sets of the same format (other
configs, other seeds) carry the same ids, so every handler reads shapes, keys and tolerances from
the case itself and never from constants. A case whose id has no handler is a failure.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
import yaml

SHARED_FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"

# Modules that register case handlers (imported on first use).
HANDLER_MODULES = (
    "tts.parity.gpt_cases",
    "tts.parity.emotion_cases",
    "tts.parity.text_cases",
    "tts.parity.s2mel_cases",
    "tts.parity.audio_cases",
    "tts.parity.vocoder_cases",
    "tts.parity.features_cases",
)


@dataclass
class RunOptions:
    """Where and how a case runs: device and float dtype (parity is defined for float32)."""

    device: str = "cpu"
    dtype: torch.dtype = torch.float32


@dataclass
class Comparison:
    """One output checked against its golden value."""

    key: str
    actual: torch.Tensor
    expected: torch.Tensor
    rtol: float = 0.0
    atol: float = 0.0
    exact: bool = False

    def failure(self) -> str | None:
        """None if within tolerance, else a one-line description of the worst element."""
        actual = self.actual.detach().cpu()
        expected = self.expected.detach().cpu()
        if tuple(actual.shape) != tuple(expected.shape):
            return f"{self.key}: shape {list(actual.shape)} != golden {list(expected.shape)}"
        if self.exact or not expected.dtype.is_floating_point:
            if actual.dtype.is_floating_point and not expected.dtype.is_floating_point:
                return f"{self.key}: float output where golden is {expected.dtype}"
            bad = actual.to(expected.dtype) != expected
            if bad.any():
                idx = bad.nonzero()[0].tolist()
                return (
                    f"{self.key}: {int(bad.sum())} of {bad.numel()} values differ (exact); first at "
                    f"{idx}: {actual[tuple(idx)].item()} != {expected[tuple(idx)].item()}"
                )
            return None
        a = actual.double()
        e = expected.double()
        if not torch.isfinite(a).all():
            return f"{self.key}: non-finite values in output"
        err = (a - e).abs()
        allowed = self.atol + self.rtol * e.abs()
        if (err > allowed).any():
            excess = err - allowed
            i = int(excess.argmax())
            return (
                f"{self.key}: {int((err > allowed).sum())} of {err.numel()} values off; max |diff| "
                f"{err.max().item():.3g} (atol {self.atol:g}, rtol {self.rtol:g}); worst at flat "
                f"index {i}: {a.flatten()[i].item():.7g} vs {e.flatten()[i].item():.7g}"
            )
        return None

    def max_abs_diff(self) -> float:
        a, e = self.actual.detach().cpu(), self.expected.detach().cpu()
        if a.shape != e.shape or a.numel() == 0:
            return float("nan")
        return float((a.double() - e.double()).abs().max())


@dataclass
class FixtureSet:
    """One folder of fixtures: its config, checkpoints, golden tensors and cases."""

    root: Path
    meta: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.root.name

    @cached_property
    def cases(self) -> list[dict]:
        return list(self.meta["cases"])

    @cached_property
    def config(self) -> dict:
        with open(self.root / "config.yaml", encoding="utf-8") as fh:
            return yaml.safe_load(fh)

    @cached_property
    def golden(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.root / "golden.safetensors"))

    def tensor(self, key: str) -> torch.Tensor:
        """A golden tensor by key, with a clear error if the set lacks it."""
        try:
            return self.golden[key]
        except KeyError:
            raise KeyError(f"{self.name}: golden.safetensors has no tensor {key!r}") from None

    def path(self, relative: str) -> Path:
        return self.root / relative

    def compare(
        self, case: dict, key: str, actual: torch.Tensor, chain: bool = False
    ) -> Comparison:
        """Build the comparison of ``actual`` with golden ``key`` using the case's tolerance.

        ``chain=True`` uses ``atol_chain`` where the case gives one (end-to-end chains).
        Integer goldens and keys named in the case's ``exact`` list compare exactly.
        """
        expected = self.tensor(key)
        tol = case.get("tolerance", {}).get(key, {})
        exact_names = case.get("exact", [])
        exact = (
            not expected.dtype.is_floating_point
            or bool(tol.get("exact"))
            or any(key.endswith("." + n) or key == n for n in exact_names)
        )
        if exact:
            return Comparison(key, actual, expected, exact=True)
        if not tol:
            raise KeyError(f"{self.name}/{case['id']}: no tolerance given for {key!r}")
        atol = tol.get("atol_chain", tol["atol"]) if chain else tol["atol"]
        return Comparison(key, actual, expected, rtol=float(tol["rtol"]), atol=float(atol))


Handler = Callable[[FixtureSet, dict, RunOptions], list[Comparison]]
_HANDLERS: dict[str, Handler] = {}


def register(*case_ids: str) -> Callable[[Handler], Handler]:
    """Decorator: the function handles the cases with these ids."""

    def wrap(fn: Handler) -> Handler:
        for cid in case_ids:
            if cid in _HANDLERS and _HANDLERS[cid] is not fn:
                raise ValueError(f"two handlers for case {cid!r}")
            _HANDLERS[cid] = fn
        return fn

    return wrap


def handlers() -> dict[str, Handler]:
    """All registered handlers (imports the handler modules once)."""
    for mod in HANDLER_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
    return _HANDLERS


def fixture_roots() -> list[Path]:
    """Every fixture set: the sets under ../shared/fixtures plus TTS_PARITY_FIXTURES entries.

    An entry of TTS_PARITY_FIXTURES may be a set itself (holds cases.json) or a folder of sets.
    """
    candidates: list[Path] = []
    if SHARED_FIXTURES.is_dir():
        candidates += sorted(p for p in SHARED_FIXTURES.iterdir() if p.is_dir())
    for entry in os.environ.get("TTS_PARITY_FIXTURES", "").split(os.pathsep):
        if not entry:
            continue
        p = Path(entry)
        if (p / "cases.json").is_file():
            candidates.append(p)
        elif p.is_dir():
            candidates += sorted(q for q in p.iterdir() if (q / "cases.json").is_file())
        else:
            raise FileNotFoundError(f"TTS_PARITY_FIXTURES entry {entry!r} is not a fixture folder")
    seen: set[Path] = set()
    roots = []
    for p in candidates:
        if (p / "cases.json").is_file() and p.resolve() not in seen:
            seen.add(p.resolve())
            roots.append(p)
    return roots


def load_set(root: Path) -> FixtureSet:
    with open(root / "cases.json", encoding="utf-8") as fh:
        return FixtureSet(root=root, meta=json.load(fh))


def case_id(case: dict) -> str:
    return case.get("id") or case["name"]


def all_cases() -> Iterator[tuple[FixtureSet, dict]]:
    """Every (set, case) pair of every fixture set found."""
    for root in fixture_roots():
        fs = load_set(root)
        for case in fs.cases:
            yield fs, case


def run_case(fs: FixtureSet, case: dict, options: RunOptions | None = None) -> list[Comparison]:
    """Run one case through its handler; unknown case types raise (they are failures)."""
    cid = case_id(case)
    handler = handlers().get(cid)
    if handler is None:
        raise NotImplementedError(f"{fs.name}/{cid}: no handler for this case type")
    with torch.no_grad():
        return handler(fs, case, options or RunOptions())


def check_case(fs: FixtureSet, case: dict, options: RunOptions | None = None) -> list[str]:
    """Run a case and return its failure lines (empty when every output is within tolerance)."""
    comparisons = run_case(fs, case, options)
    if not comparisons:
        return [f"{fs.name}/{case_id(case)}: handler compared nothing"]
    return [f for c in comparisons if (f := c.failure())]
