"""What one dependent phase costs: a grid-wide barrier inside one Triton kernel against a kernel
boundary with programmatic dependent launch (issue 8).

Run from the repository root on a CUDA machine (no checkpoints):

    python3 scripts/device/barrier_bench.py --json "$OUT/barrier_bench.json"

The GPT decode step is 24 layers of ~8 dependent phases (LayerNorm, projections, attention),
each today a kernel launched with PDL (tts.fast.linear, tts.fast.attention). A persistent
kernel would replace each kernel boundary by a barrier across all its programs. Before writing
one, this measures what such a barrier costs, in the form a Triton kernel can have:

* ``barrier``: G programs (all resident at once), ``--phases`` phases. In each phase every
  program writes a stamp into its own slot, arrives on a global counter (an atomic add with
  release semantics after a CTA barrier), waits until all G programs of this phase arrived
  (polling the counter with acquire semantics), then reads the slot of another program and
  counts the stamps that are not this phase's (a barrier that lets a program run ahead would
  show here: the count must be 0);
* ``pdl``: the same work as one kernel per phase (G programs each), launched with PDL, so a
  phase's programs start while the previous phase runs and wait (griddepcontrol.wait) before
  reading; captured in a CUDA graph of ``--phases`` launches;
* ``plain``: the same kernels without PDL.

It prints microseconds per phase (median of 5 timed rounds of ``--repeats`` calls, CUDA
events) for each G of ``--programs`` and each warp count of ``--warps``. G may not exceed the
programs the GPU can hold at once (the barrier would wait forever): the script caps it at
``SMs x --per-sm``.

``--device cpu`` (TRITON_INTERPRET=1) runs the ``pdl`` and ``plain`` forms once (the
interpreter runs programs one after another, so a barrier inside a kernel cannot run there).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tts.fast import pdl_available  # noqa: E402


@triton.jit
def _grid_barrier(counter_ptr, target):
    """Wait until ``target`` arrivals have been counted at ``counter_ptr`` (this program's
    included). The CTA barrier orders every thread's writes before the release. Gives up
    after 2^18 polls: programs that cannot all be resident at once would otherwise wait
    forever (what they computed is then wrong, which the callers' checks report)."""
    tl.debug_barrier()
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
    seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    polls = 0
    while (seen < target) & (polls < 262144):
        seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
        polls += 1
    tl.debug_barrier()


@triton.jit
def _barrier_kernel(slots_ptr, errors_ptr, counter_ptr, phases, G: tl.constexpr):
    """``phases`` phases of: write the stamp, grid barrier, check another program's stamp."""
    pid = tl.program_id(0)
    bad = tl.full([], 0, tl.int32)
    for p in range(phases):
        # Two slot arrays in turn: a program may write its next stamp before another has read
        # this one (it cannot pass the next barrier before that read).
        tl.store(slots_ptr + (p % 2) * G + pid, p + 1)
        _grid_barrier(counter_ptr, (p + 1) * G)
        got = tl.load(slots_ptr + (p % 2) * G + (pid + 1) % G, cache_modifier=".cg")
        bad += tl.where(got == p + 1, 0, 1)
    tl.atomic_add(errors_ptr, bad)


@triton.jit
def _phase_kernel(slots_ptr, errors_ptr, stamp, G: tl.constexpr, PDL: tl.constexpr):
    """One phase as its own kernel: check the previous phase's stamp (slot array ``stamp - 1``
    mod 2), write this one's (the other array)."""
    pid = tl.program_id(0)
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
    got = tl.load(slots_ptr + ((stamp - 1) % 2) * G + (pid + 1) % G)
    tl.atomic_add(errors_ptr, tl.where(got == stamp - 1, 0, 1))
    tl.store(slots_ptr + (stamp % 2) * G + pid, stamp)


def time_us(fn, repeats: int, phases: int) -> float:
    """Microseconds per phase of ``fn()`` (one call = ``phases`` phases): median of 5 rounds of
    ``repeats`` calls between CUDA events, after 3 untimed calls."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    rounds = []
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(repeats):
            fn()
        b.record()
        b.synchronize()
        rounds.append(a.elapsed_time(b) * 1e3 / repeats / phases)
    return statistics.median(rounds)


def measure(programs: int, warps: int, phases: int, repeats: int, device: str) -> dict:
    """The three forms at ``programs`` programs of ``warps`` warps."""
    slots = torch.zeros(2 * programs, dtype=torch.int32, device=device)
    errors = torch.zeros(1, dtype=torch.int32, device=device)
    counter = torch.zeros(1, dtype=torch.int32, device=device)
    row = {"programs": programs, "warps": warps}

    def chain(pdl: bool):
        slots.zero_()
        for p in range(phases):
            _phase_kernel[(programs,)](
                slots, errors, p + 1, G=programs, PDL=pdl, num_warps=warps, launch_pdl=pdl
            )

    if device == "cpu":
        chain(False)
        row["plain_errors"] = int(errors.item())
        print(f"programs {programs:5d} warps {warps}: plain_errors {row['plain_errors']}")
        return row

    def persistent():
        counter.zero_()
        _barrier_kernel[(programs,)](slots, errors, counter, phases, G=programs, num_warps=warps)

    use_pdl = pdl_available(device)
    forms = {"barrier": persistent, "plain": lambda: chain(False)}
    if use_pdl:
        forms["pdl"] = lambda: chain(True)
    for name, fn in forms.items():
        errors.zero_()
        if name == "barrier":
            run = fn
        else:  # the chains as one CUDA graph, as the decoder replays its step
            fn()
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn()
            run = graph.replay
        row[f"{name}_us"] = time_us(run, repeats, phases)
        torch.cuda.synchronize()
        row[f"{name}_errors"] = int(errors.item())
    print(
        f"programs {programs:5d} warps {warps}: "
        + ", ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in row.items()
            if k not in ("programs", "warps")
        )  # fmt: skip
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--programs", default="132,264,528,1056")
    ap.add_argument("--warps", default="1,4,8")
    ap.add_argument("--per-sm", type=int, default=8, help="programs per SM at most")
    ap.add_argument("--phases", type=int, default=192)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--json")
    args = ap.parse_args()
    dev = args.device
    if dev == "cuda":
        props = torch.cuda.get_device_properties(0)
        sms, name = props.multi_processor_count, props.name
    else:
        sms, name = 1, "cpu"
    print(f"{name}: {sms} SMs")
    rows = []
    for warps in (int(w) for w in args.warps.split(",")):
        for programs in (int(g) for g in args.programs.split(",")):
            if programs > sms * args.per_sm or programs * warps > sms * 64:
                print(f"programs {programs} x {warps} warps: more than resident, skipped")
                continue
            rows.append(measure(programs, warps, args.phases, args.repeats, dev))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "sms": sms, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
