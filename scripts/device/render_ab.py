"""The render stage as a workflow batch job runs it: segments solved one by one against padded
solve batches (``render_batch_items``; issue 8, GPU device).

Opens the benchmark's checkpoint set, conditions one 10 s prompt, and makes ``--rows`` rows of
one segment each with code counts spread over ``--codes`` (random codes and GPT latents: the
render stage only reads those, so no GPT run is needed). For every ``--precision`` it times
:meth:`Engine.render` of all rows with ``render_batch_items`` 1 (every segment alone, the
render before batching) and with each of ``--items`` (wall clock, CUDA-synchronised, after
``--warmup`` passes, medians of ``--repeats``), and reports the largest difference between
the waveforms of the batched and one-by-one renders.

    python3 scripts/device/render_ab.py --checkpoints /tmp/bench_ckpt --json "$OUT/render.json"

(or ``SECTIONS=render bash scripts/device/run_gpu.sh``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tts.audio import SPEAKER_SAMPLE_RATE, write_wav  # noqa: E402
from tts.bench import prompt_wave  # noqa: E402
from tts.pipeline import Engine, SynthesisRequest  # noqa: E402


def rows(eng: Engine, count: int, low: int, high: int, seed: int) -> list[dict]:
    """``count`` one-segment token sets, code counts evenly spread over [low, high]."""
    gen = torch.Generator().manual_seed(seed)
    width = eng.part("s2mel").gpt_layer[0].in_features  # the GPT latent's width
    codebook = min(
        m.num_embeddings
        for m in eng.part("semantic_codec").modules()
        if isinstance(m, torch.nn.Embedding)
    )
    out = []
    for i in range(count):
        n = low + (high - low) * i // max(1, count - 1)
        out.append(
            {
                "codes_0": torch.randint(0, codebook, (n,), generator=gen),
                "latent_0": torch.randn(n, width, generator=gen),
            }
        )
    return out


def difference(a: list, b: list) -> dict:
    """Largest absolute and relative L2 difference between two renders' waveforms."""
    wa = torch.cat([r.value["wav"] for r in a])
    wb = torch.cat([r.value["wav"] for r in b])
    return {
        "max_abs": float((wa - wb).abs().max()),
        "rel_l2": float((wa - wb).norm() / wb.norm().clamp_min(1e-12)),
    }


def timed(fn, warmup: int, repeats: int) -> tuple[float, list[float], object]:
    for _ in range(warmup):
        fn()
    times, out = [], None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, out


def measure(args, precision: str, prompt: Path, low: int, high: int, waves: dict) -> dict:
    """One precision: the one-by-one render against each ``--items`` batch size (each
    render's results kept in ``waves`` under ``(precision, items)``)."""
    eng = Engine.open(args.checkpoints, device=args.device, render_precision=precision)
    spk = eng.speaker_conditioning(prompt)
    toks = rows(eng, args.rows, low, high, 1234)
    reqs = [
        SynthesisRequest(id=f"r{i}", text="(codes)", speaker=prompt, seed=100 + i)
        for i in range(args.rows)
    ]
    spks = [spk] * args.rows
    audio_s = sum(t["codes_0"].numel() * 1.72 * 256 / 22050 for t in toks)

    def render(items: int):
        eng.render_batch_items = items
        out = eng.render(reqs, spks, toks)
        bad = [r.error for r in out if not r.ok]
        if bad:
            raise RuntimeError(f"render failed: {bad[:3]}")
        return out

    med1, times1, alone = timed(lambda: render(1), args.warmup, args.repeats)
    waves[(precision, 1)] = alone
    print(
        f"{precision}: {args.rows} rows, one segment per solve: {med1:.3f} s "
        f"({med1 / args.rows * 1e3:.1f} ms per row; {audio_s / med1:.1f}x real time)"
    )
    run = {"precision": precision, "audio_s": audio_s, "alone_s": med1, "alone_runs": times1}
    for items in (int(x) for x in args.items.split(",")):
        med, times, batched = timed(lambda i=items: render(i), args.warmup, args.repeats)
        waves[(precision, items)] = batched
        diff = difference(batched, alone)
        print(
            f"{precision}: render_batch_items {items}: {med:.3f} s "
            f"({med / args.rows * 1e3:.1f} ms per row; {audio_s / med:.1f}x real time; "
            f"{med1 / med:.2f}x faster); waveforms against one by one: largest difference "
            f"{diff['max_abs']:.3g}, relative L2 {diff['rel_l2']:.3g}"
        )
        run[f"items{items}"] = {"s": med, "runs": times, "speedup": med1 / med, **diff}
    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoints", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--codes", default="250,500", help="fewest,most codes per row")
    ap.add_argument("--precision", default="bfloat16,float32", help="render precisions")
    ap.add_argument("--items", default="16", help="render_batch_items values against 1")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    low, high = (int(x) for x in args.codes.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="render-ab-"))
    wave, _ = prompt_wave(10.0, 1234)
    prompt = tmp / "prompt.wav"
    write_wav(prompt, torch.from_numpy(wave), SPEAKER_SAMPLE_RATE)
    result: dict = {"rows": args.rows, "codes": [low, high], "runs": []}
    waves: dict = {}
    for precision in args.precision.split(","):
        result["runs"].append(measure(args, precision, prompt, low, high, waves))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    # Each render against the float32 one-by-one render (the reference computation): how far
    # a precision moves the waveform, next to how far batching moves it.
    if ("float32", 1) in waves:
        result["against_float32_alone"] = {}
        for (precision, items), got in waves.items():
            diff = difference(got, waves[("float32", 1)])
            result["against_float32_alone"][f"{precision} items {items}"] = diff
            print(
                f"{precision}, render_batch_items {items}, against float32 one by one: largest "
                f"difference {diff['max_abs']:.3g}, relative L2 {diff['rel_l2']:.3g}"
            )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
