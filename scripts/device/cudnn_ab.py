"""cuDNN's deterministic heuristics against its benchmark mode, per stage (issue 8; GPU device).

The Engine runs cuDNN with ``benchmark=False, deterministic=True`` unless ``cudnn_benchmark``
is set (tts.pipeline.configure_cudnn). This script measures what that choice costs, stage by
stage, in one process: it loads the random full-size set of ``tts bench`` (``--checkpoints``,
e.g. the one run_gpu.sh's ``set`` section writes) once, then alternates the two modes
(deterministic, benchmark, deterministic, benchmark, ...; ``--rounds`` of each), each round a
``tts bench`` measurement (warm-up 1, ``--repeats`` timed passes, stage medians) at every batch
size of ``--batch``. The s2mel solve's CUDA graphs are keyed by the mode, so each mode replays
the kernels chosen under it. Per mode and batch it prints the median over rounds of each
stage and of the total, and writes them to ``--json``:

    python3 scripts/device/cudnn_ab.py --checkpoints /tmp/bench_ckpt --json "$OUT/cudnn.json" \\
        --precision bfloat16:bfloat16+compile:bfloat16 --batch 1,16 --gpt-decoder graphfi

Any other ``tts bench`` option passes through (``--tokens``, ``--beams``, ...).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tts.bench import STAGES, Bench, _log, script_args  # noqa: E402
from tts.pipeline import configure_cudnn  # noqa: E402

MODES = {"deterministic": False, "benchmark": True}


def main(argv: list[str]) -> int:
    own = argparse.ArgumentParser(add_help=False)  # this script's options; the rest: tts bench's
    own.add_argument("--rounds", type=int, default=2)
    own.add_argument("--json")
    mine, rest = own.parse_known_args(argv)
    rounds, out = mine.rounds, mine.json
    args, variant, decoder, batches = script_args(rest, "bfloat16:bfloat16+compile:bfloat16")
    bench = Bench(args)
    samples: dict[tuple[str, int], list[dict]] = {}
    for r in range(rounds):
        for mode, on in MODES.items():
            configure_cudnn(on)
            for b in batches:
                _log(f">> round {r}, cuDNN {mode}, batch {b}")
                res = bench.run(variant, b, decoder, warmup=1)
                stages = dict(res.summary["stages_median_s"], total=res.summary["total_s"])
                samples.setdefault((mode, b), []).append(stages)
    configure_cudnn(False)
    table = {}
    print(
        f"\ncuDNN mode A/B ({variant.name}, decoder {decoder}, {args.tokens} codes, median of "
        f"{rounds} rounds of {args.repeats} passes); seconds"
    )
    names = [s for s in STAGES if s != "post"] + ["total"]
    print("| mode | B | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for (mode, b), runs in samples.items():
        med = {k: statistics.median(run[k] for run in runs) for k in names}
        table[f"{mode}@{b}"] = med
        print(f"| {mode} | {b} | " + " | ".join(f"{med[k]:.3f}" for k in names) + " |")
    if out:
        cuda = bench.device.type == "cuda"
        Path(out).write_text(
            json.dumps(
                {
                    "variant": variant.name,
                    "decoder": decoder,
                    "tokens": args.tokens,
                    "rounds": rounds,
                    "device": torch.cuda.get_device_name(bench.device) if cuda else "cpu",
                    "medians_s": table,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
