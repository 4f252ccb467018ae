"""Launch settings of the fused BigVGAN activation (tts.fast.bigvgan) at the vocoder's shapes.

For each stage of the official vocoder (channels x length for 860 mel frames: 768 x 3444 ...
24 x 220416) and each (block, warps) setting, one call of ``fused_activation`` on a bf16
``[B, C, T]`` input is timed (CUDA events, median of 20 after 3 warm-ups); every setting's
output must equal the default's bit for bit. Prints each stage's row and the settings with the
smallest sum over the six stages (each stage runs 18 activations, so the sum ranks them).
With ``--other FILE`` (an earlier ``tts/fast/bigvgan.py``), that file's kernel is timed at its
own defaults on the same inputs in the same process, and its output must equal this one's.

    python3 scripts/device/activation_sweep.py --batches 16,1 --json $OUT/activation_sweep.json

CUDA only (docs/benchmarks.md, run Z).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from vocoder_profile import load_other  # noqa: E402  (this script's folder)

from tts.bench import median_cuda_ms  # noqa: E402
from tts.fast.bigvgan import fused_activation  # noqa: E402
from tts.models.bigvgan import Activation1d, SnakeBeta  # noqa: E402

STAGES = [(768, 3444), (384, 13776), (192, 27552), (96, 55104), (48, 110208), (24, 220416)]
SETTINGS = [
    (block, warps)
    for block in (128, 256, 512, 1024)
    for warps in (1, 2, 4, 8)
    if block // (32 * warps) >= 1
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", default="16,1")
    p.add_argument("--other", default=None, help="an earlier tts/fast/bigvgan.py for an A/B")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    other = load_other(args.other) if args.other else None
    torch.manual_seed(0)
    result = {"device": torch.cuda.get_device_name(), "rows": [], "best": {}, "other": []}
    for batch in (int(b) for b in args.batches.split(",")):
        totals: dict[tuple[int, int], float] = {}
        other_total = 0.0
        for channels, length in STAGES:
            act = SnakeBeta(channels)
            with torch.no_grad():
                act.alpha.zero_()
                act.beta.zero_()
            module = Activation1d(act).cuda()
            x = torch.randn(batch, channels, length, device="cuda", dtype=torch.bfloat16)
            want = fused_activation(module, x)
            cells = []
            if other is not None:
                assert torch.equal(other.fused_activation(module, x), want), "other differs"
                ms = median_cuda_ms(functools.partial(other.fused_activation, module, x))
                other_total += ms
                cells.append(f"other:{ms:.3f}")
                result["other"].append(
                    {"batch": batch, "channels": channels, "length": length, "ms": ms}
                )
            for block, warps in SETTINGS:
                assert torch.equal(
                    fused_activation(module, x, block=block, num_warps=warps), want
                ), (block, warps)
                ms = median_cuda_ms(
                    functools.partial(fused_activation, module, x, block=block, num_warps=warps)
                )
                totals[(block, warps)] = totals.get((block, warps), 0.0) + ms
                cells.append(f"{block}/{warps}:{ms:.3f}")
                result["rows"].append(
                    {
                        "batch": batch,
                        "channels": channels,
                        "length": length,
                        "block": block,
                        "warps": warps,
                        "ms": ms,
                    }
                )
            print(batch, channels, length, " ".join(cells), flush=True)
        best = sorted(totals.items(), key=lambda kv: kv[1])[:6]
        print(
            f"B {batch} sum over the 6 stage shapes (ms): "
            f"{[(k, round(v, 3)) for k, v in best]}, default {totals[(256, 4)]:.3f}"
            + (f", other {other_total:.3f}" if other is not None else ""),
            flush=True,
        )
        result["best"][str(batch)] = [{"block": k[0], "warps": k[1], "ms": v} for k, v in best]
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
