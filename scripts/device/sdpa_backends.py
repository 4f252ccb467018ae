"""The DiT's attention by SDPA backend, at the benchmark's shapes (issue 8; GPU device).

The s2mel DiT (13 layers, 8 heads of 64, no mask when no row is padded) runs 25 Euler steps
with both guidance branches: 325 attention calls of ``[2B, 8, T, 64]`` per solve, T = 1721
frames for a 10 s prompt and 500 codes. This times one call per backend that PyTorch offers
for it (flash, memory-efficient, cuDNN; CUDA events, median of 20 after 3 warm-ups) in bf16,
and its largest difference from float32 math attention on the same inputs:

    python3 scripts/device/sdpa_backends.py --batches 1,16 --json $OUT/sdpa.json

The default choice of ``F.scaled_dot_product_attention`` is timed as ``default``.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tts.bench import median_cuda_ms  # noqa: E402

BACKENDS = {
    "default": None,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}


def attend(q, k, v, backend):
    """SDPA through ``backend`` only (None: PyTorch's own choice)."""
    if backend is None:
        return F.scaled_dot_product_attention(q, k, v)
    with sdpa_kernel([backend]):
        return F.scaled_dot_product_attention(q, k, v)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", default="1,16")
    p.add_argument("--frames", type=int, default=1721)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        q, k, v = (torch.randn(2 * batch, 8, args.frames, 64, device="cuda") for _ in range(3))
        want = F.scaled_dot_product_attention(q, k, v)  # float32 (math or efficient)
        qh, kh, vh = (t.bfloat16() for t in (q, k, v))
        for name, backend in BACKENDS.items():
            call = functools.partial(attend, qh, kh, vh, backend)
            try:
                err = float((call().float() - want).abs().max())
                ms = median_cuda_ms(call)
            except RuntimeError as exc:  # a backend that does not take these inputs
                print(f"B={batch:3d} {name:10s} unavailable: {str(exc).splitlines()[0][:100]}")
                continue
            print(
                f"B={batch:3d} {name:10s} {ms:8.3f} ms per call, x325 per solve "
                f"{ms * 325 / 1e3:6.3f} s, max |diff| vs float32 {err:.2e}",
                flush=True,
            )
            rows.append(
                {
                    "batch": batch,
                    "backend": name,
                    "ms": ms,
                    "solve_s": ms * 325 / 1e3,
                    "max_abs_diff": err,
                }
            )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
