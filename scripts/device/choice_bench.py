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
  instead (:mod:`tts.fast.processors`, :func:`tts.fast.sampling.beam_candidates` with its
  exponential draws), at W warps per program.

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
                invalid=invalid,
            )  # fmt: skip

        return call

    def candidates(warps: int):
        def call():
            sampling.CANDIDATE_WARPS = warps
            sampling.beam_candidates(out, survivors, beam_scores, BEAMS, 2 * BEAMS, gens, invalid)

        return call

    kernels = {f"process_kernel_w{w}": process(w) for w in (8, 16, 32)}
    process(16)()  # the draw's input
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--inner", type=int, default=10, help="calls per captured graph")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    device = torch.device("cuda")
    results = []
    for batch in (int(b) for b in args.batches.split(",")):
        timed, gens = pieces(batch, device)
        for name, fn in timed.items():
            draws = name.startswith("draw")
            ms = graph_ms(fn, args.inner, args.repeats, gens if draws else ())
            results.append({"batch": batch, "rows": batch * BEAMS, "piece": name, "us": 1e3 * ms})
            print(f"B={batch:<3d} {name:14s} {1e3 * ms:8.1f} us per call", flush=True)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "gpu": torch.cuda.get_device_name(device),
                    "torch": torch.__version__,
                    "args": vars(args),
                    "results": results,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
