"""The token choice's pieces, each timed alone as a CUDA graph replay (issue 8; GPU device).

decode_profile.py's critical path charges the batch-1 decode step's token choice with far more
time than its kernels' own durations (run AA of docs/benchmarks.md: the multinomial draw's
radix-select passes ran 8.7 us of kernels and were charged 473 us), so the profiler's
timeline cannot say what they cost. This times each piece as its own CUDA graph with CUDA
events (median of ``--repeats`` replays of a graph holding ``--inner`` calls, per call), at
the rows of batch 1 and batch 16 with 3 beams and the GPT's 8194 codes:

* ``topk30``: ``torch.topk(scores, 30)`` (what process_scores ran before tts.fast.topk);
* ``kth30``: :func:`tts.fast.topk.kth_largest` (what the fast decoder runs now);
* ``sort``: top-p's ``torch.sort`` of the rows;
* ``softmax``: the beam step's softmax over an item's ``beams x codes`` scores;
* ``multinomial6``: the beam step's draw (``torch.multinomial`` of 6 without replacement);
* ``draw_items`` / ``draw_items_batched`` (batch > 1): the same draw with one generator per
  item, as the Engine draws: one ``torch.multinomial`` per item
  (:func:`tts.generation.multinomial_rows`) against :func:`tts.fast.sampling.multinomial_groups`;
* ``processors``: the fast decoder's compiled logits processors (penalty, temperature, top-k,
  top-p) as a whole;
* ``process_kernel_wW`` / ``draw_kernel_wW``: what the decoder's ``choice="triton"`` runs
  instead (:mod:`tts.fast.processors`' one-program kernel, ``split=False``;
  :func:`tts.fast.sampling.beam_candidates` with its exponential draws), at W warps per
  program;
* ``process_split_cC``: the processors' split kernels (``processors.SPLIT`` makes them the default) in
  chunks of C scores (``process_split``: the module's chunk). Before timing, their outputs
  are compared with the one-program kernel's (the -inf mask, the survivors' indices and
  count: identical; the scores: to float32 rounding, the log-sum-exp being summed in another
  order) and the rows they searched whole are counted; a difference ends the script with 1.
  The last lines put the two designs side by side.

    python3 scripts/device/choice_bench.py --json "$OUT/choice.json"

(or ``SECTIONS=choice bash scripts/device/run_gpu.sh``, which installs the carried wheels first).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tts.bench import median_cuda_ms  # noqa: E402
from tts.fast import decode, sampling, topk  # noqa: E402
from tts.fast import processors as fast_processors  # noqa: E402
from tts.fast.sampling import multinomial_groups  # noqa: E402
from tts.generation import GenerationConfig, multinomial_rows  # noqa: E402

VOCAB = 8194
BEAMS = 3


def graph_ms(fn, inner: int, repeats: int, generators=()) -> float:
    """Milliseconds per call of ``fn`` captured ``inner`` times in one CUDA graph (which
    replays the draws of ``generators`` too)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    for gen in generators:
        graph.register_generator_state(gen)
    with torch.cuda.graph(graph):
        for _ in range(inner):
            fn()
    return median_cuda_ms(graph.replay, repeats=repeats) / inner


def pieces(batch: int, device: torch.device) -> tuple[dict, list]:
    """The timed callables at ``batch`` items (``batch x BEAMS`` rows), and the per-item
    generators they draw from."""
    rows = batch * BEAMS
    gen = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(rows, VOCAB, device=device, generator=gen) * 3
    scores = torch.log_softmax(logits, dim=-1)
    total = scores.view(batch, BEAMS * VOCAB)
    probs = total.softmax(dim=-1)
    seen = torch.zeros(rows, VOCAB, dtype=torch.bool, device=device)
    seen[:, :50] = True
    cfg = GenerationConfig(num_beams=BEAMS)
    key = (rows, VOCAB, True, cfg, device.type)
    processors = decode._compiled_processors(key)
    gens = [torch.Generator(device=device).manual_seed(i) for i in range(batch)]
    per_item = (
        {}
        if batch == 1
        else {
            "draw_items": lambda: multinomial_rows(probs, 2 * BEAMS, gens),
            "draw_items_batched": lambda: multinomial_groups(probs, 2 * BEAMS, gens),
        }
    )
    # The Triton choice (decoder choice="triton"): the processors' kernel, then the draw's
    # kernel on its output, at each launch setting of the sweep.
    out = torch.empty_like(logits)
    survivors = fast_processors.survivor_buffers(rows, VOCAB, device)
    invalid = torch.zeros(1, dtype=torch.int32, device=device)
    beam_scores = torch.zeros(rows, device=device)

    def process(warps: int):
        def call():
            fast_processors.NUM_WARPS = warps
            fast_processors.process(
                logits, seen, cfg, 2, log_softmax=True, out=out, survivors=survivors,
                invalid=invalid, split=False,
            )  # fmt: skip

        return call

    def candidates(warps: int):
        def call():
            sampling.CANDIDATE_WARPS = warps
            sampling.beam_candidates(out, survivors, beam_scores, BEAMS, 2 * BEAMS, gens, invalid)

        return call

    kernels = {f"process_kernel_w{w}": process(w) for w in (8, 16, 32)}
    process(16)()  # the draw's input (and the one-program kernel's output, compared below)
    for chunk in (None, 512, 1024, 2048):
        name = "process_split" if chunk is None else f"process_split_c{chunk}"
        kernels[name] = split_process(logits, seen, cfg, chunk, (out, survivors), name)
    kernels |= {f"draw_kernel_w{w}": candidates(w) for w in (1, 2, 4)}
    return {
        **kernels,
        "topk30": lambda: torch.topk(scores, 30),
        "kth30": lambda: topk.kth_largest(scores, 30),
        "sort": lambda: torch.sort(scores),
        "softmax": lambda: total.softmax(dim=-1),
        # the default generator: a graph registers its state by itself
        "multinomial6": lambda: torch.multinomial(probs, 2 * BEAMS),
        "processors": lambda: processors(logits, seen, cfg, True),
        **per_item,
    }, gens


MISMATCHES: list[str] = []


def split_process(logits, seen, cfg, chunk, want, name: str):
    """The processors' split kernels in chunks of ``chunk`` (None: the module's), as a
    callable with its own buffers; called once and compared with ``want`` (the one-program
    kernel's output and survivors) first."""
    rows, vocab = logits.shape
    device = logits.device
    default = fast_processors.CHUNK
    chunk = chunk or default
    fast_processors.CHUNK = chunk
    scratch = fast_processors.split_buffers(rows, vocab, device)
    fast_processors.CHUNK = default
    out = torch.empty_like(logits)
    survivors = fast_processors.survivor_buffers(rows, vocab, device)
    invalid = torch.zeros(1, dtype=torch.int32, device=device)

    def call():
        fast_processors.CHUNK = chunk
        fast_processors.process(
            logits, seen, cfg, 2, log_softmax=True, out=out, survivors=survivors,
            invalid=invalid, scratch=scratch, split=True,
        )  # fmt: skip
        fast_processors.CHUNK = default

    call()
    whole = int(scratch[-1][:rows].sum())
    same = compare(want, (out, survivors), vocab)
    print(f"rows={rows:<3d} {name:18s} vs one-program: {same}; rows searched whole: {whole}")
    if not same.startswith("identical") and not same.startswith("same"):
        MISMATCHES.append(f"rows={rows} {name}: {same}")
    return call


def compare(want, got, vocab: int) -> str:
    """How the processors' outputs ``got`` (out, survivors) compare with ``want``."""
    (w_out, (w_v, w_i, w_n)), (g_out, (g_v, g_i, g_n)) = want, got
    if not torch.equal(torch.isfinite(w_out), torch.isfinite(g_out)):
        return "MASKS DIFFER"
    if not torch.equal(w_n, g_n):
        return f"COUNTS DIFFER {w_n.tolist()} {g_n.tolist()}"
    first = torch.arange(vocab, device=w_n.device)[None, :] < w_n[:, None]
    rows = w_n.numel()
    w_i, g_i = w_i[: rows * vocab].view(rows, vocab), g_i[: rows * vocab].view(rows, vocab)
    w_v, g_v = w_v[: rows * vocab].view(rows, vocab), g_v[: rows * vocab].view(rows, vocab)
    if not torch.equal(w_i[first], g_i[first]):
        return "SURVIVORS DIFFER"
    kept = torch.isfinite(w_out)
    diff = max(
        (w_out[kept] - g_out[kept]).abs().max().item(), (w_v[first] - g_v[first]).abs().max().item()
    )
    if torch.equal(w_out, g_out) and torch.equal(w_v[first], g_v[first]):
        return "identical (bit for bit)"
    try:
        torch.testing.assert_close(g_out[kept], w_out[kept], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(g_v[first], w_v[first], rtol=1e-6, atol=1e-6)
    except AssertionError:
        return f"SCORES DIFFER (max {diff:.3g})"
    return f"same mask, survivors and counts; scores within {diff:.3g}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--inner", type=int, default=10, help="calls per captured graph")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json")
    ap.add_argument(
        "--only", help="comma-separated name prefixes of the pieces to time (default: all)"
    )
    args = ap.parse_args(argv)
    only = tuple(args.only.split(",")) if args.only else ()
    device = torch.device("cuda")
    results = []
    for batch in (int(b) for b in args.batches.split(",")):
        timed, gens = pieces(batch, device)
        for name, fn in timed.items():
            if only and not name.startswith(only):
                continue
            draws = name.startswith("draw")
            ms = graph_ms(fn, args.inner, args.repeats, gens if draws else ())
            results.append({"batch": batch, "rows": batch * BEAMS, "piece": name, "us": 1e3 * ms})
            print(f"B={batch:<3d} {name:14s} {1e3 * ms:8.1f} us per call", flush=True)
    us = {(r["batch"], r["piece"]): r["us"] for r in results}
    for batch in sorted({r["batch"] for r in results}):
        if (batch, "process_kernel_w16") not in us or (batch, "process_split") not in us:
            continue
        one, split = us[(batch, "process_kernel_w16")], us[(batch, "process_split")]
        print(
            f"B={batch:<3d} rows={batch * BEAMS:<3d} processors: one program per row {one:.1f} us,"
            f" split {split:.1f} us ({one / split:.2f}x)"
        )
    for line in MISMATCHES:
        print("MISMATCH", line)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "gpu": torch.cuda.get_device_name(device),
                    "torch": torch.__version__,
                    "args": vars(args),
                    "results": results,
                    "mismatches": MISMATCHES,
                },
                indent=1,
            )
        )
    return 1 if MISMATCHES else 0


if __name__ == "__main__":
    sys.exit(main())
