"""Does the compiled DiT give the same bits twice? (issue 8; the question run DL left open).

Run DL found that a second ``torch.compile`` of the same half-precision DiT, in the same
process, gave other bits at batch 16 than the first (max 4.7e-2). Runs DM-DN
(docs/benchmarks.md) found the same difference between two calls of one compiled module, also
in Inductor's ``deterministic`` mode (which skips its timing-based choice between reduction
configurations), and none in the uncompiled DiT. This script tells the cases apart, for the DiT
at the benchmark's shapes (``tts.bench.randomize_`` weights, one estimator call on ``[2B, 80,
frames]``):

* the first compiled instance called ``--calls`` times (run to run), each call also against
  the uncompiled module (is a call's rounding the eager one?);
* a second instance, made from another import of ``tts/fast/s2mel.py`` (instance to instance);
* one process per ``--modes`` entry, each with its own Inductor cache, the first instance's
  outputs compared between the processes of a mode (process to process); mode 1 compiles in
  Inductor's deterministic mode;
* ``--backend`` (Dynamo's ``eager`` / ``aot_eager`` instead of Inductor) and ``--sdpa`` (one
  attention backend), to tell which part of the compiled call changes its rounding;
* ``--locate`` (uncompiled): the first submodule whose output changes between calls;
* the call's time replayed from a CUDA graph, to price the deterministic mode.

    python3 scripts/device/compile_repro.py --modes 0,0,1,1 --json "$OUT/repro.json"

(or ``SECTIONS=repro bash scripts/device/run_gpu.sh``). CPU smoke test: ``--device cpu --tiny
--no-compile`` (tests/test_bench.py).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from s2mel_profile import dit_arguments, inputs, load_other, replay_ms  # noqa: E402

from tts.bench import bench_config, randomize_  # noqa: E402
from tts.fast import s2mel as fast_s2mel  # noqa: E402
from tts.models.s2mel import S2Mel  # noqa: E402
from tts.pipeline import configure_cudnn  # noqa: E402
from tts.precision import precision_context  # noqa: E402


def difference(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Whether two outputs are bit-identical, and their largest absolute difference."""
    return {
        "identical": bool(torch.equal(a, b)),
        "max_abs": float((a.float() - b.float()).abs().max()),
    }


def compare(dirs: list[str]) -> dict:
    """The saved outputs of the runs in ``dirs``, each against the first run's, by batch."""
    first = Path(dirs[0])
    result: dict = {}
    for path in sorted(first.glob("b*.pt")):
        ref = torch.load(path, weights_only=True)
        for other in dirs[1:]:
            out = torch.load(Path(other) / path.name, weights_only=True)
            result[f"{path.stem} {first.name} vs {Path(other).name}"] = difference(ref, out)
    return result


def sdpa_backends(name: str):
    """A context allowing only the named attention backend of
    ``F.scaled_dot_product_attention`` ("default": PyTorch's own choice)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if name == "default":
        return contextlib.nullcontext()
    return sdpa_kernel([getattr(SDPBackend, name.upper())])


def fingerprint(t: torch.Tensor) -> tuple[int, int]:
    """Two integer checksums of a tensor's bits (any one changed element changes them, barring
    a coincidence): the sum of its raw words, and their sum weighted by position."""
    words = t.detach().contiguous().view(-1)
    words = words.view(
        {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    )
    words = words.to(torch.int64)
    weights = torch.arange(words.numel(), device=words.device) % 65521 + 1
    return int(words.sum()), int((words * weights).sum())


def locate(module: torch.nn.Module, call, calls: int) -> dict | None:
    """Where the uncompiled ``module``'s calls first stop repeating the first call: every
    submodule's inputs and output fingerprinted through forward hooks, over ``calls`` calls.
    Returns the first submodule (in the order their forwards finish) whose output differs in
    the first call that differs, with whether its inputs were the same; None if all repeat."""
    records: list[tuple[str, list, tuple | None]] = []

    def hook(name):
        def record(_mod, inputs, output):
            ins = [fingerprint(x) for x in inputs if isinstance(x, torch.Tensor)]
            out = fingerprint(output) if isinstance(output, torch.Tensor) else None
            records.append((name, ins, out))

        return record

    handles = [m.register_forward_hook(hook(n or "<top>")) for n, m in module.named_modules()]
    try:
        runs = []
        for _ in range(calls):
            records.clear()
            call()
            runs.append(list(records))
    finally:
        for h in handles:
            h.remove()
    for k, run in enumerate(runs[1:], start=1):
        for (name, ins0, out0), (_, ins, out) in zip(runs[0], run, strict=True):
            if out != out0:
                kind = type(module.get_submodule("" if name == "<top>" else name)).__name__
                return {"call": k, "module": name, "type": kind, "inputs_same": ins == ins0}
    return None


def estimators(s2mel: S2Mel, precision: str, compiled: bool) -> tuple:
    """Two independent inference copies of the DiT under ``precision``: this package's, and one
    from a second import of ``tts/fast/s2mel.py`` (its own cache of fused copies, so its own
    ``torch.compile``); then the first one uncompiled."""
    other_module = load_other(fast_s2mel.__file__, "s2mel_second")
    pair, plain = [], []
    for module in (fast_s2mel, other_module):
        entry = module.fused(s2mel.cfm.estimator)
        est = entry.for_precision(precision)
        est.transformer.drop = True  # no padded row: no key mask, as in the solve
        plain.append(est)
        pair.append(entry.compiled(precision) if compiled else est)
    return (*pair, plain[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    dit_arguments(p, batches="16,1")
    p.add_argument("--backend", default="inductor", choices=["inductor", "aot_eager", "eager"])
    p.add_argument(
        "--sdpa",
        default="default",
        choices=["default", "flash_attention", "efficient_attention", "cudnn_attention", "math"],
    )
    p.add_argument("--calls", type=int, default=3, help="calls of the first instance compared")
    p.add_argument(
        "--locate", action="store_true", help="uncompiled: the first submodule that differs"
    )
    p.add_argument(
        "--modes",
        default="0,0,1,1",
        help="one process per entry, each with its own Inductor cache: 1 = deterministic mode",
    )
    p.add_argument("--work", default="/tmp/compile_repro", help="the processes' outputs, caches")
    p.add_argument("--child", choices=["0", "1"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--save", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    result = run(args) if args.child is not None else processes(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def processes(args: argparse.Namespace) -> dict:
    """One child process per ``--modes`` entry, then each mode's runs compared to its first."""
    work = Path(args.work)
    own = ["--device", args.device, "--frames", str(args.frames), "--batches", args.batches]
    own += ["--precision", args.precision, "--repeats", str(args.repeats)]
    own += ["--calls", str(args.calls), "--backend", args.backend, "--sdpa", args.sdpa]
    own += ["--tiny"] * args.tiny + ["--no-compile"] * args.no_compile + ["--locate"] * args.locate
    runs: dict[str, list[Path]] = {"0": [], "1": []}
    result: dict = {"runs": {}, "compared": {}}
    for i, mode in enumerate(args.modes.split(",")):
        out = work / f"run{i}_det{mode}"
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(work / f"inductor{i}")}
        cmd = [sys.executable, __file__, *own, "--child", mode, "--save", str(out)]
        cmd += ["--json", str(work / f"run{i}.json")]
        subprocess.run(cmd, env=env, check=True)
        result["runs"][out.name] = json.loads((work / f"run{i}.json").read_text())
        runs[mode].append(out)
    for dirs in runs.values():
        if len(dirs) > 1:
            result["compared"].update(compare([str(d) for d in dirs]))
    if runs["0"] and runs["1"]:  # how far the deterministic mode's bits are from the default's
        result["compared"].update(compare([str(runs["0"][0]), str(runs["1"][0])]))
    for name, diff in result["compared"].items():
        print(f"{name}: identical {diff['identical']}, max |diff| {diff['max_abs']:.3e}")
    return result


def run(args: argparse.Namespace) -> dict:
    """Both instances on each batch size's inputs; see the module docstring."""
    device = torch.device(args.device)
    configure_cudnn()  # as the Engine runs: cuDNN's deterministic kernels, TF32 off
    deterministic = args.child == "1"
    torch._inductor.config.deterministic = deterministic
    cfg, _, _ = bench_config(args.tiny)
    with torch.no_grad():
        s2mel = randomize_(S2Mel.from_config(cfg["s2mel"]), seed=7).to(device).eval()
    if args.backend != "inductor":  # Dynamo alone, or with AOTAutograd: is Inductor the cause?
        torch.compile = functools.partial(torch.compile, backend=args.backend)
    first, second, plain = estimators(s2mel, args.precision, not args.no_compile)
    result: dict = {"deterministic": deterministic, "precision": args.precision}
    result.update(backend=args.backend, sdpa=args.sdpa)
    save = Path(args.save) if args.save else None
    if save:
        save.mkdir(parents=True, exist_ok=True)
    for batch in (int(b) for b in args.batches.split(",")):
        # Inputs seeded by the batch size alone, so separate runs feed the same numbers.
        gen = torch.Generator().manual_seed(batch)
        args_in = inputs(s2mel.cfm.estimator, 2 * batch, args.frames, device, gen)

        def call(m, a=args_in):
            with torch.no_grad(), precision_context(args.precision, device):
                with sdpa_backends(args.sdpa):
                    return m(*a).clone()

        if args.locate:
            result[f"b{batch}_first_difference"] = locate(first, lambda: call(first), args.calls)
        outs = [call(first) for _ in range(args.calls)]
        out1 = outs[0]
        row = {
            "run_to_run": difference(out1, outs[1]),
            "instance_to_instance": difference(out1, call(second)),
            # which calls of the first instance repeat its first call's bits, and its second's
            "calls_equal_first": [torch.equal(out1, o) for o in outs],
            "calls_equal_second": [torch.equal(outs[1], o) for o in outs],
            # is one of the compiled calls the uncompiled module's bits (its first: run eagerly?)
            "calls_equal_uncompiled": [torch.equal(call(plain), o) for o in outs],
        }
        if device.type == "cuda":
            row["replayed_ms"] = replay_ms(lambda: call(first), args.repeats)
        if save:
            torch.save(out1.cpu(), save / f"b{batch}.pt")
        result[f"b{batch}"] = row
        print(
            f"B={batch:3d} deterministic={deterministic}: run to run "
            f"{row['run_to_run']}, instance to instance {row['instance_to_instance']}"
            + (f", {row['replayed_ms']:.3f} ms replayed" if "replayed_ms" in row else "")
            + f"; calls equal to the first {row['calls_equal_first']}, to the second "
            f"{row['calls_equal_second']}, to the uncompiled module {row['calls_equal_uncompiled']}"
        )
        if args.locate:
            print(f"B={batch:3d} first difference: {result[f'b{batch}_first_difference']}")
    return result


if __name__ == "__main__":
    raise SystemExit(main())
