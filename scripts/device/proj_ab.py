"""The decode step with the op-by-op stack's projections in another cuBLAS form (issue 8; GPU).

    python3 scripts/device/proj_ab.py --form mm_add -- --variants graphke --batches 16 \
        --dtype float32 --steps 100 --runs 2

runs ``decode_profile.py`` (everything after ``--``) with the op-by-op stack's projection
(``proj=`` of :mod:`tts.fast.fused`'s functions, its ``reduce=False`` path) as ``--form``:

* ``linear``: ``F.linear(x, w, b)`` (cuBLASLt with the bias as an epilogue; what the stack
  runs in half precision, and ran in float32 before run BZ);
* ``mm_add``: ``torch.matmul(x, w.t()) + b`` (a plain GEMM and a bias kernel; the stack's
  op-by-op float32 form, ``_gemm_add``, since run BZ);
* ``addmm``: ``torch.addmm(b.expand(rows, out), x, w.t())`` (the bias as C, beta = 1).

For the variants that run the stack op by op (``graphke``) only: the compiled ones trace
their own functions. Why: ``scripts/device/gemm_bias.py`` times the three forms alone;
this times them in the step.
"""

from __future__ import annotations

import argparse
import functools
import sys

from gemm_bias import FORMS  # this folder


def main() -> int:
    argv = sys.argv[1:]
    rest = argv[argv.index("--") + 1 :] if "--" in argv else []
    ours = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--form", choices=sorted(FORMS), default="linear")
    args = ap.parse_args(ours)
    import decode_profile  # this folder

    from tts.fast import fused

    landed, form = fused._proj, FORMS[args.form]

    def proj(x, w, b, reduce):
        return landed(x, w, b, reduce) if reduce else form(x, w, b)

    # The op-by-op stack takes its projection as an argument (``proj=``; ``_gemm_add`` in
    # float32): give every function this one.
    fused._gemm_add = proj
    for name in ("pre", "post", "head"):
        fused._FUNCTIONS[name] = functools.partial(fused._FUNCTIONS[name], proj=proj)
    print(f"proj_ab: tts.fast.fused._proj's GEMM as {args.form}", flush=True)
    return decode_profile.main(rest)


if __name__ == "__main__":
    sys.exit(main())
