"""Time the NaN/inf check of every loaded tensor: ``isfinite(t).all()`` against ``all_finite``.

Every workflow job checks each tensor it loads (tts.loading.load_strict), and the weight
validation does again. Run on a full-size random set (docs/benchmarks.md, "The workflow on
the GPU"):

    .venv/bin/python -c "from pathlib import Path; from tts.bench import write_random_set; \
        write_random_set(Path('/tmp/full_ck'), device='cpu')"
    .venv/bin/python scripts/bench_finite_check.py /tmp/full_ck --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from tts.checkpoints import CheckpointSet
from tts.components import MODULE_COMPONENTS
from tts.loading import all_finite
from tts.validate import validate_set

CHECKS = {
    "isfinite().all()": lambda t: bool(torch.isfinite(t).all()),
    "all_finite": all_finite,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", type=Path)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cs = CheckpointSet.open(args.checkpoints)
    totals = dict.fromkeys(CHECKS, 0.0)
    for name, comp in MODULE_COMPONENTS.items():
        tensors = [t for t in comp.read(comp.file(cs)).values() if t.is_floating_point()]
        line = (
            f"{name:15s} {len(tensors):4d} tensors {sum(t.numel() for t in tensors) / 1e6:7.1f} M"
        )
        for label, check in CHECKS.items():
            runs = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                ok = all([check(t) for t in tensors])
                runs.append(time.perf_counter() - start)
            if not ok:
                raise SystemExit(f"{name}: non-finite values, not a benchmark set")
            totals[label] += statistics.median(runs)
            line += f"  {label} {statistics.median(runs):.3f} s"
        print(line)
    print("all components:", "  ".join(f"{k} {v:.2f} s" for k, v in totals.items()))
    for stats in (False, True):
        start = time.perf_counter()
        results = validate_set(args.checkpoints, list(MODULE_COMPONENTS), with_stats=stats)
        ok = all(r.ok for r in results)
        print(f"validate_set(with_stats={stats}): {time.perf_counter() - start:.1f} s, ok={ok}")


if __name__ == "__main__":
    main()
