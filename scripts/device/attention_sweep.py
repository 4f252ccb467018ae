"""Launch settings of the decode attention kernel, timed at the GPT's shapes (issue 8; GPU).

Run from the repository root on a CUDA machine (no checkpoints):

    python3 scripts/device/attention_sweep.py --json "$OUT/attention_sweep.json"

The decode step's attention (tts.fast.attention.attend, decoders graphfi / graphki) reads every
row's cache window through the beam table ``src``. This script builds what a step of the
official GPT sees: 24 layers of bf16 caches [rows, 20 heads, capacity, 64] with rows = batch x 3
beams, a prompt of ``--prefix`` positions that the beams of an item share (``src`` names the
item's first row there, as StaticDecoder does) and a generated part whose table follows a
simulated beam ancestry (each step every beam picks a parent among its item's beams, the
first more often). For each batch size, window end and launch setting (``chunk``, ``block_t``,
``num_warps``) it captures the 24 layers' attention calls as one CUDA graph,
replays it and reports the GPU time per step (all 24 layers), median of ``--repeats``
replays, next to ``F.scaled_dot_product_attention`` over contiguous rows without a table (what
the graphf decoder runs). Every setting's output is checked against the default's (each sums
in its own order: within 1e-2 in bf16).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tts.fast import attention  # noqa: E402

LAYERS, HEADS, HEAD_DIM, BEAMS = 24, 20, 64, 3
DEFAULT = {"chunk": attention.CHUNK, "block_t": attention.BLOCK_T, "num_warps": attention.NUM_WARPS}


def log(text: str) -> None:
    print(text, flush=True)


def beam_table(batch: int, prefix: int, end: int, capacity: int, seed: int) -> torch.Tensor:
    """int32 [rows, capacity]: the cache row each row reads at each position (see module)."""
    gen = torch.Generator().manual_seed(seed)
    rows = batch * BEAMS
    first = torch.arange(rows) // BEAMS * BEAMS
    src = torch.zeros(rows, capacity, dtype=torch.int32)
    src[:, :prefix] = first[:, None].to(torch.int32)
    for pos in range(prefix, end):
        src[:, pos] = torch.arange(rows, dtype=torch.int32)  # each row writes its own position
        pick = torch.multinomial(
            torch.tensor([0.6, 0.25, 0.15]), rows, replacement=True, generator=gen
        )
        src[:, : pos + 1] = src[first + pick, : pos + 1]  # the beam step: rows follow parents
    return src


def _sdpa(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def over_layers(attend, q, views, mask, **kw):
    """One decode step's attention: ``attend`` over every layer's cache window."""
    return lambda: [attend(q, k, v, mask, **kw) for k, v in views]


def time_graph(fn, repeats: int) -> float:
    """Median GPU milliseconds of one replay of ``fn`` captured as a CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()  # compile / warm outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def settings(quick: bool) -> list[dict]:
    """The launch settings to time: the default first."""
    out = [dict(DEFAULT)]
    chunks, blocks, warps = (
        ((32,), (32,), (1, 2)) if quick else ((16, 32, 64), (16, 32, 64), (1, 2, 4))
    )
    for chunk, block_t, num_warps in itertools.product(chunks, blocks, warps):
        opts = {"chunk": chunk, "block_t": block_t, "num_warps": num_warps}
        if block_t <= chunk and opts != DEFAULT:
            out.append(opts)
    return out


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--prefix", type=int, default=96, help="prompt positions (bench: ~96)")
    ap.add_argument("--ends", default="160,352,576", help="window ends to time")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--quick", action="store_true", help="the default and 2 warps only")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    ends = [int(e) for e in args.ends.split(",")]
    capacity = max(ends) + 64
    rows_out = []
    t0 = time.perf_counter()
    for batch in (int(b) for b in args.batches.split(",")):
        rows = batch * BEAMS
        gen = torch.Generator(device=dev).manual_seed(batch)
        ks = [
            torch.randn(
                rows, HEADS, capacity, HEAD_DIM, device=dev, generator=gen, dtype=torch.bfloat16
            )
            for _ in range(LAYERS)
        ]
        vs = [torch.randn_like(k) for k in ks]
        q = torch.randn(rows, HEADS, 1, HEAD_DIM, device=dev, dtype=torch.bfloat16)
        for end in ends:
            src = beam_table(batch, args.prefix, end, capacity, seed=end).to(dev)[:, :end]
            mask = torch.zeros(rows, 1, 1, end, device=dev, dtype=torch.bfloat16)
            views = [(k[:, :, :end], v[:, :, :end]) for k, v in zip(ks, vs, strict=True)]
            sdpa_ms = time_graph(over_layers(_sdpa, q, views, mask), args.repeats)
            ref = attention.attend(q, *views[0], mask, src=src)
            for opts in settings(args.quick):
                out = attention.attend(q, *views[0], mask, src=src, **opts)
                err = float((out.float() - ref.float()).abs().max())
                ok = err < 1e-2
                ms = time_graph(
                    over_layers(attention.attend, q, views, mask, src=src, **opts), args.repeats
                )
                row = {
                    "batch": batch,
                    "rows": rows,
                    "end": end,
                    **opts,
                    "us_per_step": 1e3 * ms,
                    "sdpa_us_per_step": 1e3 * sdpa_ms,
                    "max_diff": err,
                    "ok": ok,
                }
                rows_out.append(row)
                log(
                    f"B={batch:<3d} end={end:<4d} chunk={opts['chunk']:<4d} "
                    f"block_t={opts['block_t']:<3d} warps={opts['num_warps']} "
                    f"{1e3 * ms:8.1f} us/step "
                    f"(sdpa no table {1e3 * sdpa_ms:7.1f}) diff {err:.2e}{'' if ok else ' BAD'}"
                )
            if args.json:
                Path(args.json).write_text(json.dumps(rows_out, indent=1))
        del ks, vs
        torch.cuda.empty_cache()
    # per batch: each setting's mean over the window ends, best first
    for batch in sorted({r["batch"] for r in rows_out}):
        mine = [r for r in rows_out if r["batch"] == batch]
        by = {}
        for r in mine:
            key = (r["chunk"], r["block_t"], r["num_warps"])
            by.setdefault(key, []).append(r["us_per_step"])
        sdpa = statistics.mean({r["end"]: r["sdpa_us_per_step"] for r in mine}.values())
        ranked = sorted(by.items(), key=lambda kv: statistics.mean(kv[1]))
        base = statistics.mean(by[tuple(DEFAULT.values())])
        log(f"B={batch}: default {base:.1f} us/step, sdpa without table {sdpa:.1f}; best:")
        for key, us in ranked[:5]:
            log(
                f"   chunk={key[0]} block_t={key[1]} warps={key[2]}: "
                f"{statistics.mean(us):.1f} us/step"
            )
    log(
        f"done in {time.perf_counter() - t0:.0f} s; all outputs ok: "
        f"{all(r['ok'] for r in rows_out)}"
    )
    return 0 if all(r["ok"] for r in rows_out) else 1


if __name__ == "__main__":
    sys.exit(main())
