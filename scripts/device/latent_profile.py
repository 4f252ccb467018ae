"""The GPT's teacher-forced latent pass: op by op against CUDA graphs (issue 8; GPU).

Run from the repository root on a CUDA machine (no checkpoints):

    python3 scripts/device/latent_profile.py --json "$OUT/latent_profile.json"

It builds the GPT as ``decode_profile.py`` does (official size, random weights, ``--dtype``
bfloat16 under autocast, as the Engine runs it) and times ``UnifiedVoice.forward`` at the
benchmark's shapes (``--text`` ids, ``--codes`` codes, ``--batches``) the two ways, in one
process and alternating: the plain stack, and :mod:`tts.fast.latent_pass` (its graph captured
by the second of two warm-up calls; ``--bucket``, and no limit on rows x positions unless
``--max-positions``). Each timed call is measured by the host's clock around it (what a pass
pays, host and GPU; the GPU is idle when a call starts) and by CUDA events (the GPU's span).
It prints the medians, and the largest difference of the two outputs against the plain
pass's norm (the graphs run at the bucketed length, so half precision may round differently).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode_profile import DTYPES, build_gpt  # noqa: E402

from tts.fast import latent_pass  # noqa: E402


def inputs(model, batch: int, text: int, codes: int, seed: int) -> tuple:
    """What ``tts bench`` passes to the latent pass, with random latents, ids and codes."""
    dev = model.mel_head.weight.device
    gen = torch.Generator(device=dev).manual_seed(seed)
    d = model.model_dim
    latent = torch.randn(batch, 32, d, device=dev, generator=gen).to(model.mel_head.weight.dtype)
    emovec = torch.randn(batch, d, device=dev, generator=gen).to(latent.dtype)
    ids = torch.randint(2, 1000, (batch, text), device=dev, generator=gen)
    mel = torch.randint(0, 8000, (batch, codes), device=dev, generator=gen)
    return latent, emovec, ids, mel


def one_pass(model, args: tuple) -> tuple[torch.Tensor, float, float]:
    """One latent pass: its output, host-clock ms (to the GPU's end) and CUDA-event ms."""
    latent, emovec, ids, mel = args
    b = ids.size(0)
    dev = ids.device
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    start.record()
    out = model(
        latent,
        ids,
        torch.full((b,), ids.size(1), device=dev),
        mel,
        torch.full((b,), mel.size(1), device=dev),
        None,
        emo_vec=emovec,
        use_speed=torch.zeros(b, dtype=torch.long, device=dev),
    )
    end.record()
    torch.cuda.synchronize()
    return out, (time.perf_counter() - t0) * 1e3, start.elapsed_time(end)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", choices=list(DTYPES), default="bfloat16")
    ap.add_argument("--batches", default="1,2,4,8,16")
    ap.add_argument("--bucket", type=int, default=latent_pass.BUCKET)
    ap.add_argument(
        "--max-positions",
        type=int,
        default=1 << 30,
        help="the graphs' limit (default: none, to time them at every batch; the Engine's is "
        "latent_pass.MAX_POSITIONS)",
    )
    ap.add_argument("--text", type=int, default=60, help="text ids (the benchmark's: ~60)")
    ap.add_argument("--codes", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dtype = DTYPES[args.dtype]
    model = build_gpt(False, torch.device("cuda"), dtype, args.seed)
    half = dtype != torch.float32
    runner = latent_pass.StackGraphs(
        model.gpt, bucket=args.bucket, max_positions=args.max_positions
    )
    results = []
    for batch in (int(b) for b in args.batches.split(",")):
        data = inputs(model, batch, args.text, args.codes, args.seed)
        times: dict[str, list] = {"plain": [], "graphs": []}
        outs = {}
        with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=half):
            for way in ("plain", "graphs", "plain", "graphs"):  # warm-up, capture
                model.stack_runner = runner if way == "graphs" else None
                outs[way] = one_pass(model, data)[0]
            for _ in range(args.repeats):
                for way in ("plain", "graphs"):
                    model.stack_runner = runner if way == "graphs" else None
                    _, host_ms, gpu_ms = one_pass(model, data)
                    times[way].append((host_ms, gpu_ms))
        model.stack_runner = None
        plain, graphs = outs["plain"].float(), outs["graphs"].float()
        rec = {
            "batch": batch,
            "positions": 34 + args.text + 2 + args.codes + 2,
            "rel_diff": float((graphs - plain).norm() / plain.norm()),
            "max_abs_diff": float((graphs - plain).abs().max()),
        }
        for way, pairs in times.items():
            rec[f"{way}_host_ms"] = statistics.median(h for h, _ in pairs)
            rec[f"{way}_gpu_ms"] = statistics.median(g for _, g in pairs)
        results.append(rec)
        print(
            f"batch {batch:2d} ({rec['positions']} positions): plain {rec['plain_host_ms']:.2f} ms "
            f"(GPU span {rec['plain_gpu_ms']:.2f}), graphs {rec['graphs_host_ms']:.2f} ms "
            f"(GPU span {rec['graphs_gpu_ms']:.2f}); output rel. diff {rec['rel_diff']:.2e}, "
            f"max abs {rec['max_abs_diff']:.2e}",
            flush=True,
        )
    summary = {
        "device": torch.cuda.get_device_name(),
        "dtype": args.dtype,
        "bucket": args.bucket,
        "max_positions": args.max_positions,
        "repeats": args.repeats,
        "results": results,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
