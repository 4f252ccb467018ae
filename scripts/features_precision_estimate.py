"""What each ``features_precision`` does to the w2v-bert features, estimated on the CPU.

The GPU test ``test_features_precision_stays_within_its_bound_cuda`` needs a bound for each
precision before a GPU has run it. This builds the encoder as that test does (w2v-bert-2.0's
config, transformers' random initialisation, the 17 layers IndexTTS2 reads), feeds it random
filterbanks, and prints each precision's largest difference and relative L2 against float32:

* ``tf32``: emulated, by truncating the float32 inputs of every matrix product and
  convolution (and, in a second line, of the attention too) to TF32's 10 mantissa bits, float32
  sums; truncation is the larger of the two roundings a TF32 unit may make;
* ``bfloat16`` / ``float16``: the CPU's own autocast.

    .venv/bin/python scripts/features_precision_estimate.py            # full width, ~2 min
    .venv/bin/python scripts/features_precision_estimate.py --frames 100 --json est.json
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tts.models.w2v_bert import HIDDEN_STATE_INDEX, build_w2v_bert, truncate_layers  # noqa: E402

PRODUCTS = (F.linear, torch.matmul, torch.Tensor.matmul, torch.bmm, F.conv1d, torch.einsum)


def to_tf32(x):
    """A float32 tensor with its 13 lowest mantissa bits cleared; anything else as it is."""
    if isinstance(x, torch.Tensor) and x.dtype == torch.float32:
        return (x.view(torch.int32) & ~0x1FFF).view(torch.float32)
    return x


class TruncatedProducts(TorchFunctionMode):
    """Every matrix product's (and with ``attention``, SDPA's q, k, v) inputs through
    :func:`to_tf32`."""

    def __init__(self, attention: bool):
        super().__init__()
        self.attention = attention

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in PRODUCTS:
            args = tuple(to_tf32(a) for a in args)
            kwargs = {k: to_tf32(v) for k, v in kwargs.items()}
        elif func is F.scaled_dot_product_attention and self.attention:
            args = tuple(to_tf32(a) if i < 3 else a for i, a in enumerate(args))
        return func(*args, **kwargs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=500, help="w2v-bert frames (50 a second)")
    ap.add_argument("--layers", type=int, default=HIDDEN_STATE_INDEX)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    cfg = json.loads(resources.files("tts.data").joinpath("w2v-bert-2.0.config.json").read_text())
    torch.manual_seed(args.seed)
    model = truncate_layers(build_w2v_bert(cfg), args.layers).eval()
    feats = torch.randn(1, args.frames, 160)
    mask = torch.ones(1, args.frames, dtype=torch.long)

    def forward() -> torch.Tensor:
        return model(input_features=feats, attention_mask=mask).last_hidden_state.float()

    results = {}
    with torch.no_grad():
        exact = forward()
        runs = {}
        for attention in (False, True):
            with TruncatedProducts(attention):
                runs[f"tf32 (truncated{', attention too' if attention else ''})"] = forward()
        for name, dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
            with torch.autocast("cpu", dtype=dtype, cache_enabled=False):
                runs[name] = forward()
    for name, got in runs.items():
        diff = got - exact
        results[name] = {
            "max_abs_diff": float(diff.abs().max()),
            "rel_l2": float(diff.norm() / exact.norm()),
        }
        print(
            f"{name:34s} largest difference {results[name]['max_abs_diff']:.4g}, "
            f"relative L2 {results[name]['rel_l2']:.4g}"
        )
    print(f"(float32 features: largest magnitude {float(exact.abs().max()):.3g})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
