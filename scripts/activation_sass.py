"""The sm_90 instruction mix of the fused BigVGAN activation kernel, compiled on this machine.

Compiles ``_aa_activation_kernel`` of ``tts/fast/bigvgan.py`` (or of ``--file``, e.g. an earlier
version from ``git show REV:tts/fast/bigvgan.py``) for a Hopper GPU with Triton's own compiler
and ptxas, disassembles it with the ``nvdisasm`` Triton ships, and prints the number of SASS
instructions by opcode. No GPU needed: a way to compare kernel versions before a device call
(docs/benchmarks.md, "A BigVGAN activation kernel that waits for a GPU"). Settings as the
vocoder runs it: ratio 2, 12 taps, SnakeBeta with log-scale parameters.

    python scripts/activation_sass.py --file .bench/bigvgan_old.py --dtype bf16 --bias
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPCODE = re.compile(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)")


def load(path: Path):
    """The module of a ``tts/fast/bigvgan.py`` file."""
    spec = importlib.util.spec_from_file_location("bigvgan_sass", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def instruction_mix(path: Path, dtype: str, bias: bool, block: int, warps: int) -> dict:
    """{opcode: count} of the kernel's SASS, and the total under ``"total"``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module = load(path)
    fn = module._aa_activation_kernel
    halo, offset, outputs = module.tile_layout(2, 12, 5, block)
    pointer = f"*{dtype}"
    signature = {
        **dict.fromkeys(("x_ptr", "y_ptr", "bias_ptr"), pointer),
        **dict.fromkeys(("alpha_ptr", "beta_ptr", "fu_ptr", "fd_ptr"), "*fp32"),
        **dict.fromkeys(("T", "C", "stride_xb", "stride_xc", "stride_yb", "stride_yc"), "i32"),
    }
    constants = {
        "R": 2,
        "K": 12,
        "PAD_UP": 5,
        "CROP": 15,
        "HALO": halo,
        "OFF": offset,
        "OUT": outputs,
        "HAS_BETA": True,
        "LOGSCALE": True,
        "HAS_BIAS": bias,
        "BLOCK": block,
    }
    signature.update(dict.fromkeys(constants, "constexpr"))
    source = ASTSource(
        fn=fn,
        signature=signature,
        constexprs={(fn.arg_names.index(k),): v for k, v in constants.items()},
    )
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
    nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        text = subprocess.run(
            [str(nvdisasm), "-c", f.name], capture_output=True, text=True, check=True
        ).stdout
    counts = collections.Counter(
        m.group(1) for line in text.splitlines() if (m := OPCODE.match(line))
    )
    return {"total": sum(counts.values()), **dict(counts.most_common())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--file", type=Path, default=ROOT / "tts" / "fast" / "bigvgan.py")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--bias", action="store_true", help="the convolution's bias folded in")
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--warps", type=int, default=4)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    mix = instruction_mix(args.file, args.dtype, args.bias, args.block, args.warps)
    print(f"{args.file}: {mix['total']} instructions")
    print(" ".join(f"{k} {v}" for k, v in mix.items() if k != "total"))
    if args.json:
        Path(args.json).write_text(json.dumps(mix, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
