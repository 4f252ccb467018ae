"""Per-tensor statistics of loaded weights, and a verdict on tensors that look untrained.

A checkpoint that loaded "successfully" can still hold layers that were never trained (a broken
export, a conversion that wrote fresh modules). This report makes that visible: for each tensor
its mean/std/min/max/NaN count, and flags for the tell-tale signs of an untrained tensor:
all zero, all one, constant, or values that look like PyTorch's default initialisation.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tts.loading import all_finite

# Deterministic buffers and counters are constant by design; never flag them.
_CONSTANT_BY_DESIGN = ("num_batches_tracked", "input_pos", ".freqs", ".filter", "pos_enc.pe")


@dataclass
class TensorStats:
    """Summary statistics of one tensor, plus the reasons it looks untrained (if any)."""

    file: str
    name: str
    shape: list[int]
    dtype: str
    mean: float
    std: float
    min: float
    max: float
    nan: int
    flags: list[str] = field(default_factory=list)


def _default_init_flag(name: str, t: torch.Tensor, std: float, lo: float, hi: float) -> str | None:
    """Name the default initialisation these values look like, if any.

    Checks the two inits that leave recognisable statistics: nn.Linear/Conv's
    kaiming-uniform U(-1/sqrt(fan_in), 1/sqrt(fan_in)) and nn.Embedding's N(0, 1).
    """
    if t.dim() >= 2 and t.numel() >= 256:
        fan_in = t[0].numel()
        bound = 1.0 / math.sqrt(fan_in)
        uniform_std = bound / math.sqrt(3.0)
        inside = lo >= -bound * 1.0001 and hi <= bound * 1.0001
        if inside and abs(std - uniform_std) < 0.03 * uniform_std and hi > 0.95 * bound:
            return f"looks like default uniform init U(+-{bound:.3g})"
        if (
            name.endswith("weight")
            and abs(std - 1.0) < 0.01
            and abs(float(t.float().mean())) < 0.01
        ):
            if t.numel() >= 10_000:
                return "looks like default N(0,1) embedding init"
    return None


def tensor_stats(file: str, name: str, t: torch.Tensor) -> TensorStats:
    """Statistics and flags of one tensor (computed in float64 on CPU)."""
    x = t.detach().to("cpu")
    if all_finite(x):  # integer tensors, and the usual float case: no NaN to count or drop
        nan, finite = 0, x.double().flatten()
    else:
        nan = int(torch.isnan(x).sum())
        finite = x[torch.isfinite(x)].double()
    if finite.numel():
        mean, lo, hi = float(finite.mean()), float(finite.min()), float(finite.max())
        std = float(finite.std()) if finite.numel() > 1 else 0.0
    else:
        mean = std = lo = hi = float("nan")
    flags: list[str] = []
    if nan:
        flags.append(f"{nan} NaN")
    constant_ok = any(k in name for k in _CONSTANT_BY_DESIGN) or not x.is_floating_point()
    if finite.numel() > 1 and not constant_ok:
        if lo == hi == 0.0:
            flags.append("all zero")
        elif lo == hi == 1.0:
            flags.append("all one")
        elif lo == hi:
            flags.append(f"constant {lo:g}")
        else:
            init = _default_init_flag(name, x, std, lo, hi)
            if init:
                flags.append(init)
    return TensorStats(
        file,
        name,
        list(x.shape),
        str(x.dtype).removeprefix("torch."),
        mean,
        std,
        lo,
        hi,
        nan,
        flags,
    )


def state_report(file: str, state: Mapping[str, torch.Tensor]) -> list[TensorStats]:
    """Statistics of every tensor of one loaded component."""
    return [tensor_stats(file, name, t) for name, t in state.items()]


def file_verdict(stats: list[TensorStats]) -> dict:
    """Per-file summary: tensor count, NaN count and the flagged tensors."""
    flagged = [{"name": s.name, "flags": s.flags} for s in stats if s.flags]
    return {
        "tensors": len(stats),
        "nan_tensors": sum(1 for s in stats if s.nan),
        "flagged": flagged,
        "verdict": "ok" if not flagged else f"suspicious: {len(flagged)} tensor(s) look untrained",
    }


def write_report(
    path: str | Path, per_file: dict[str, list[TensorStats]], extra: dict | None = None
) -> None:
    """Write ``<path>`` as JSON (verdicts + stats) and ``<path minus .json>.tsv`` (one row a tensor)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "files": {f: file_verdict(stats) for f, stats in per_file.items()},
        "tensors": [asdict(s) for stats in per_file.values() for s in stats],
        **(extra or {}),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, allow_nan=True), encoding="utf-8")
    tmp.replace(path)
    tsv = path.with_suffix(".tsv")
    tmp = tsv.with_name(f".{tsv.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(
            ["file", "tensor", "shape", "dtype", "mean", "std", "min", "max", "nan", "flags"]
        )
        for stats in per_file.values():
            for s in stats:
                w.writerow(
                    [
                        s.file,
                        s.name,
                        s.shape,
                        s.dtype,
                        f"{s.mean:.6g}",
                        f"{s.std:.6g}",
                        f"{s.min:.6g}",
                        f"{s.max:.6g}",
                        s.nan,
                        "; ".join(s.flags),
                    ]
                )
    tmp.replace(tsv)
