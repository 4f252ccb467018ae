"""The decode step with the op-by-op stack's projections in another cuBLAS form (issue 8; GPU).

    python3 scripts/device/proj_ab.py --form mm_add -- --variants graphke --batches 16 \
        --dtype float32 --steps 100 --runs 2

runs ``decode_profile.py`` (everything after ``--``) with :func:`tts.fast.fused._proj` replaced
for ``x @ w.T + b`` (its ``reduce=False`` path) by ``--form``:

* ``linear``: ``F.linear(x, w, b)`` (cuBLASLt with the bias as an epilogue; what ``_proj``
  runs in half precision, and ran in float32 before run BZ);
* ``mm_add``: ``torch.matmul(x, w.t()) + b`` (a plain GEMM and a bias kernel; ``_proj``'s
  float32 form since run BZ);
* ``addmm``: ``torch.addmm(b.expand(rows, out), x, w.t())`` (the bias as C, beta = 1).

Only the variants that run the stack op by op (``graphke``) use ``_proj`` at call time; the
compiled ones trace it once. Why: ``scripts/device/gemm_bias.py`` times the three forms alone;
this times them in the step.
"""

from __future__ import annotations

import argparse
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

    fused._proj = proj
    print(f"proj_ab: tts.fast.fused._proj's GEMM as {args.form}", flush=True)
    return decode_profile.main(rest)


if __name__ == "__main__":
    sys.exit(main())
