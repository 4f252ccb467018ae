"""Where BigVGAN's time goes on the GPU, at the benchmark's shapes (issue 8).

Builds the vocoder at the official configuration (tts/data/bigvgan_v2_22khz_80band_256x.json)
with ``tts.bench.randomize_`` weights, fuses its weight norm (as the Engine does) and times one
forward of ``[B, 80, frames]`` mels (CUDA events, median of ``--repeats`` after two warm-ups) in
these variants:

* ``blocks``: what the Engine and ``tts bench`` run: the anti-aliased activations through
  ``tts.fast.bigvgan`` and the AMP blocks with the convolutions' biases, the residuals and
  the stages' block means inside its kernels (``fused_vocoder_forward``), under
  ``--precision`` (bfloat16 autocast by default, as the benchmark); its output is compared
  with ``fused``'s (it should be the same bits);
* ``fused``: the activations through ``tts.fast.bigvgan`` only (the Engine before 2026-12-06);
* ``other``: the same with the kernel of ``--other FILE`` (an earlier ``tts/fast/bigvgan.py``,
  e.g. ``git show REV:tts/fast/bigvgan.py > .bench/bigvgan_v1.py``): an A/B in one process;
  every output is compared with ``fused``'s;
* ``other-blocks``: ``blocks`` through that file's ``fused_vocoder_forward`` (when it has one),
  compared with ``blocks``: the A/B of the forward the Engine runs;
* ``eager``: the plain activations (``Activation1d.forward``);
* ``convs``: every activation replaced by the identity: the convolutions' share;
* ``fused+cudnn``: ``fused`` with cuDNN's benchmark mode;
* ``convs-nlc``: ``convs`` with every convolution run as a 2-d one on channels-last tensors
  (the mel converted once, the layout kept through the network): whether cuDNN's convolutions
  are faster in that layout (the fused activation reads channels-first rows, hence identity).

It also counts the forward's FLOPs (``tts.bench.vocoder_flops``, on the meta device) to print
the rate reached, and lists the kernels of one ``fused`` forward at the largest batch
(torch.profiler), grouped by name.

    python3 scripts/device/vocoder_profile.py --batches 1,16 --other .bench/bigvgan_v1.py \\
        --json $OUT/vocoder.json

CPU smoke test: ``--device cpu --tiny`` (plain variants only, no timings worth reading;
tests/test_fast.py).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import statistics
import sys
from importlib import resources
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tts.bench import (  # noqa: E402
    TINY_BIGVGAN,
    kernel_rows,
    median_cuda_ms,
    randomize_,
    vocoder_flops,
)
from tts.fast import bigvgan as fast_bigvgan  # noqa: E402
from tts.models.bigvgan import Activation1d, BigVGAN, WNConv  # noqa: E402
from tts.precision import precision_context  # noqa: E402


def config(tiny: bool) -> dict:
    """The vocoder's config.json (official, or shrunk as ``tts bench --tiny``)."""
    cfg = json.loads(
        resources.files("tts.data").joinpath("bigvgan_v2_22khz_80band_256x.json").read_text()
    )
    return {**cfg, **TINY_BIGVGAN} if tiny else cfg


def build(cfg: dict, device: torch.device) -> BigVGAN:
    """The vocoder of ``cfg``, random weights, weight norm fused."""
    with torch.no_grad():
        model = randomize_(BigVGAN.from_config(cfg), seed=1234)
    return model.remove_weight_norm().to(device).eval()


def patch_forward(model: BigVGAN, kind: type, how) -> None:
    """Point the forward of every ``kind`` module of ``model`` at ``how(module, x)`` (this
    instance only; None: back to the class's own forward)."""
    for module in model.modules():
        if isinstance(module, kind):
            if how is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = functools.partial(how, module)


def conv_channels_last(m: WNConv, x: torch.Tensor) -> torch.Tensor:
    """A (fused weight-norm) convolution run as a 2-d one in the channels-last layout."""
    import torch.nn.functional as F

    x4 = x.unsqueeze(2)
    if not x4.is_contiguous(memory_format=torch.channels_last):
        x4 = x4.contiguous(memory_format=torch.channels_last)
    w = m.weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)
    if m.transposed:
        y = F.conv_transpose2d(x4, w, m.bias, stride=(1, m.stride), padding=(0, m.padding))
    else:
        y = F.conv2d(x4, w, m.bias, padding=(0, m.padding), dilation=(1, m.dilation))
    return y.squeeze(2)


def load_other(path: str):
    spec = importlib.util.spec_from_file_location("bigvgan_other", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_forward(model, mel, precision: str, repeats: int) -> float:
    """Median seconds of one forward after two warm-ups (CUDA events; wall clock on the CPU)."""
    import time

    with torch.no_grad(), precision_context(precision, mel.device):
        if mel.device.type == "cuda":
            return median_cuda_ms(lambda: model(mel), repeats=repeats, warmup=2) / 1e3
        times = []
        for i in range(2 + repeats):
            t0 = time.perf_counter()
            model(mel)
            if i >= 2:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def kernel_table(model, mel, precision: str, top: int = 14) -> list[dict]:
    """Kernels of one forward, grouped by name: count and total microseconds."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), precision_context(precision, mel.device):
        model(mel)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(mel)
            torch.cuda.synchronize()
    return kernel_rows(prof)[:top]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--frames", type=int, default=860, help="mel frames (500 codes x 1.72)")
    p.add_argument("--batches", default="1,16")
    p.add_argument(
        "--precision", default="bfloat16", choices=["float32", "tf32", "bfloat16", "float16"]
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--other", default=None, help="an earlier tts/fast/bigvgan.py for an A/B")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cfg = config(args.tiny)
    model = build(cfg, device)
    batches = [int(b) for b in args.batches.split(",")]
    flops = vocoder_flops(cfg, args.frames)
    print(f"BigVGAN forward: {flops / 1e12:.3f} TFLOP per row of {args.frames} frames")

    fused = fast_bigvgan.fused_activation
    variants = {"eager": None, "convs": lambda m, x: x}
    if device.type == "cuda":  # the Triton kernels: CUDA only here
        variants = {
            "blocks": fused,
            "fused": fused,
            **variants,
            "convs-nlc": variants["convs"],
            "fused+cudnn": fused,
        }
        if args.other:
            other = load_other(args.other)
            variants["other"] = other.fused_activation
            if hasattr(other, "fused_vocoder_forward"):
                variants["other-blocks"] = other.fused_activation
    result = {
        "frames": args.frames,
        "precision": args.precision,
        "flops_per_row": flops,
        "other": args.other,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "times": [],
        "checks": {},
    }
    gen = torch.Generator(device="cpu").manual_seed(0)
    for batch in batches:
        mel = torch.randn(batch, 80, args.frames, generator=gen).to(device)
        outputs = {}
        for name, how in variants.items():
            patch_forward(model, Activation1d, how)
            patch_forward(model, WNConv, conv_channels_last if name == "convs-nlc" else None)
            if name == "blocks":
                model.forward = functools.partial(fast_bigvgan.fused_vocoder_forward, model)
            elif name == "other-blocks":
                model.forward = functools.partial(other.fused_vocoder_forward, model)
            else:
                model.__dict__.pop("forward", None)
            saved = torch.backends.cudnn.benchmark
            torch.backends.cudnn.benchmark = name.endswith("+cudnn")
            try:
                seconds = time_forward(model, mel, args.precision, args.repeats)
                if name in ("blocks", "fused", "other", "other-blocks"):
                    with torch.no_grad(), precision_context(args.precision, device):
                        outputs[name] = model(mel).float()
            finally:
                torch.backends.cudnn.benchmark = saved
            rate = batch * flops / seconds / 1e12
            print(f"B={batch:3d} {name:12s} {seconds * 1e3:9.2f} ms  {rate:7.1f} TFLOP/s")
            result["times"].append(
                {"batch": batch, "variant": name, "seconds": seconds, "tflops": rate}
            )
        pairs = [("fused", "blocks"), ("fused", "other"), ("blocks", "other-blocks")]
        for ref, name in pairs:
            if name in outputs:
                diff = float((outputs[ref] - outputs[name]).abs().max())
                print(f"B={batch:3d} {ref} vs {name}: max |diff| {diff:.3e}")
                result["checks"][f"{ref}_vs_{name}_B{batch}"] = diff
    if device.type == "cuda":
        patch_forward(model, Activation1d, fused)
        patch_forward(model, WNConv, None)
        mel = torch.randn(max(batches), 80, args.frames, generator=gen).to(device)
        for name in ("fused", "blocks"):
            if name == "blocks":
                model.forward = functools.partial(fast_bigvgan.fused_vocoder_forward, model)
            else:
                model.__dict__.pop("forward", None)
            table = kernel_table(model, mel, args.precision)
            result["kernels" if name == "fused" else "kernels_blocks"] = table
            print(f"kernels of one {name} forward, B={max(batches)}:")
            for row in table:
                print(f"  {row['us'] / 1e3:9.2f} ms  {row['count']:5d}  {row['kernel']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
