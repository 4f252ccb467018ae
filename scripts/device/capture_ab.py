"""The GPT decode loop of two versions of tts/fast/decode.py, side by side (issue 8; GPU device).

How the decoder captures its CUDA graphs changes the loop's time, not a replayed step's. This
script times whole ``generate`` calls of an earlier version of the module (``--old``, a copy of
the file, e.g. ``git show 32ce661:tts/fast/decode.py > .bench/decode_old.py``) against the
current one, in one process, on the random full-size GPT of scripts/device/decode_profile.py:

    python3 scripts/device/capture_ab.py --old .bench/decode_old.py --json "$OUT/ab.json"

Per decoder variant and batch size, after one warm-up call of each version, ``--runs`` calls of
each alternate (old, new, old, new, ...), every call with the same seed. Printed per version:
the median of ``loop`` (the decode loop after the prefill, ms per step, from the decoder's own
stats) and of ``call`` (the whole ``generate`` call: buffers, prefill, loop, result; CUDA
events), the eager steps and graphs of the last call, and whether the codes equal the other
version's, with the fraction that agrees and the first step where they differ (-1: none;
decode_profile.agreement; with beams, where the returned hypotheses
differ, not where the computation parted). They need not be equal: in half precision at full
size an eagerly launched step and a replayed one round differently (docs/benchmarks.md, run J),
and the two versions run different steps eagerly. ``--buckets 64,256`` adds
rows "new-b64", "new-b256": the current version with that cache-window bucket (the default is
tts.fast.decode.DEFAULT_BUCKET), its codes compared with "new"'s; ``--eager`` a row
"new-eager": the current version without graphs (every step launched op by op). ``--greedy``:
beam search without sampling (default: the official beam sampling), which separates a
difference in the draws from one in the arithmetic.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_profile import agreement, build_gpt, log, random_prefix  # noqa: E402

from tts.fast import decode as new_decode  # noqa: E402
from tts.generation import GenerationConfig  # noqa: E402


def load_old(path: str):
    """The module at ``path`` (a copy of tts/fast/decode.py from another commit)."""
    spec = importlib.util.spec_from_file_location("tts.fast._decode_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def timed_call(module, model, prefix, cfg, options: dict, seed: int) -> dict:
    """One ``module.generate`` call: loop ms/step (its stats), whole-call ms, codes."""
    gen = torch.Generator(device=prefix.device).manual_seed(seed)
    stats: dict = {}
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    out = module.generate(model, prefix, None, cfg, generator=gen, stats=stats, **options)
    end.record()
    end.synchronize()
    return {
        "loop_ms_per_step": 1e3 * stats["loop_s"] / stats["steps"],
        "call_ms": begin.elapsed_time(end),
        "steps": stats["steps"],
        "graphs": stats.get("graphs"),
        "eager_steps": stats.get("eager_steps"),
        "codes": out.codes.cpu(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old", required=True, help="a copy of tts/fast/decode.py to compare")
    ap.add_argument("--variants", default="graphf,graphk")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--beams", type=int, default=3)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--prefix", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--buckets", default="", help="extra buckets for the current version")
    ap.add_argument("--eager", action="store_true", help="add the current version, no graphs")
    ap.add_argument("--greedy", action="store_true", help="beam search without sampling")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    device = torch.device("cuda")
    old_decode = load_old(args.old)
    model = build_gpt(False, device, torch.bfloat16, args.seed)
    cfg = GenerationConfig(
        num_beams=args.beams,
        max_mel_tokens=args.steps,
        warn_on_limit=False,
        do_sample=not args.greedy,
    )
    versions = {"old": old_decode, "new": new_decode}
    results = []
    for batch in (int(b) for b in args.batches.split(",") if b):
        prefix = random_prefix(model, batch, args.prefix, torch.bfloat16, seed=batch)
        for variant in args.variants.split(","):
            options = new_decode.VARIANTS[variant]
            calls = {name: (module, options) for name, module in versions.items()}
            for b in (int(b) for b in args.buckets.split(",") if b):
                calls[f"new-b{b}"] = (new_decode, {**options, "bucket": b})
            if args.eager:
                calls["new-eager"] = (new_decode, {**options, "use_graph": False})
            runs: dict[str, list[dict]] = {name: [] for name in calls}
            with torch.autocast("cuda", dtype=torch.bfloat16):
                for module, opts in calls.values():  # warm-up: compiles, autotunes
                    timed_call(module, model, prefix, cfg, opts, args.seed)
                for _ in range(args.runs):
                    for name, (module, opts) in calls.items():
                        runs[name].append(timed_call(module, model, prefix, cfg, opts, args.seed))
            for name, rs in runs.items():
                other = runs["new" if name == "old" else "old"] if name in versions else runs["new"]
                same = torch.equal(rs[-1]["codes"], other[-1]["codes"])
                agree, first = agreement(rs[-1]["codes"], other[-1]["codes"])
                row = {
                    "variant": variant,
                    "batch": batch,
                    "version": name,
                    "loop_ms_per_step": statistics.median(r["loop_ms_per_step"] for r in rs),
                    "loop_runs": [round(r["loop_ms_per_step"], 4) for r in rs],
                    "call_ms": statistics.median(r["call_ms"] for r in rs),
                    "steps": rs[-1]["steps"],
                    "graphs": rs[-1]["graphs"],
                    "eager_steps": rs[-1]["eager_steps"],
                    "codes_equal": same,
                    "agreement": agree,
                    "first_difference": first,
                    "do_sample": not args.greedy,
                }
                results.append(row)
                log(
                    f"{variant:8s} B={batch:<3d} {name}: loop {row['loop_ms_per_step']:.3f} "
                    f"ms/step {row['loop_runs']}, call {row['call_ms']:.1f} ms, graphs "
                    f"{row['graphs']}, eager steps {row['eager_steps']}, codes equal {same} (agreement "
                    f"{agree:.3f}, first difference at step {first})"
                )
            if args.json:
                Path(args.json).write_text(
                    json.dumps(
                        {
                            "args": vars(args),
                            "gpu": torch.cuda.get_device_name(device),
                            "torch": torch.__version__,
                            "results": results,
                        },
                        indent=1,
                    )
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
