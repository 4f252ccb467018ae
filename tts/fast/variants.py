"""The named variants of the fast GPT decoder (:func:`tts.fast.decode.generate`).

Kept apart from :mod:`tts.fast.decode` so that opening an Engine, which checks the configured
name, does not import TorchDynamo (``decode`` needs it; importing it took ~3 s of every
workflow job's start on the GPU machine). What compiles still imports it when it runs, and so
do libraries that import it themselves (transformers, for the w2v-bert features).
"""

from __future__ import annotations

# Named decoder variants: the keyword arguments of generate() each one sets (graph = defaults).
VARIANTS: dict[str, dict] = {
    "graph": {},
    "graphc": {"compile_logic": True},
    "graphr": {"reorder": "swap"},
    "graphl": {"fused": True, "compile_logic": True},
    "graphf": {"fused": True, "reorder": "swap", "compile_logic": True, "compile_processors": True},
    "graphfr": {
        "fused": True,
        "matmul": "reduce",
        "reorder": "swap",
        "compile_logic": True,
        "compile_processors": True,
    },
    "graphfa": {
        "fused": True,
        "matmul": "autotune",
        "reorder": "swap",
        "compile_logic": True,
        "compile_processors": True,
    },
    "graphk": {
        "fused": True,
        "matmul": "triton",
        "reorder": "swap",
        "compile_logic": True,
        "compile_processors": True,
    },
    "graphka": {
        "fused": True,
        "matmul": "triton",
        "attention": "triton",
        "reorder": "swap",
        "compile_logic": True,
        "compile_processors": True,
    },
    "graphfi": {
        "fused": True,
        "reorder": "table",
        "attention": "triton",
        "compile_logic": True,
        "compile_processors": True,
    },
    "graphki": {
        "fused": True,
        "matmul": "triton",
        "reorder": "table",
        "attention": "triton",
        "compile_logic": True,
        "compile_processors": True,
    },
    "graphkp": {
        "fused": True,
        "matmul": "triton",
        "reorder": "table",
        "attention": "triton",
        "pdl": True,
        "compile_logic": True,
        "compile_processors": True,
    },
    # graphkp with the token choice and the logits processors op by op (still inside the CUDA
    # graph): a little more GPU time per step, but no compile of them in a new process, where a
    # workflow job makes one GPT call (docs/benchmarks.md, runs AQ-AS).
    "graphkn": {
        "fused": True,
        "matmul": "triton",
        "reorder": "table",
        "attention": "triton",
        "pdl": True,
    },
}
# graphkp with the logits processors and the beam step's draw as one Triton kernel each
# (tts.fast.processors, tts.fast.sampling.beam_candidates) instead of ~35 torch kernels: the
# Engine's default from run AX to run BU of docs/benchmarks.md.
VARIANTS["graphkt"] = {**VARIANTS["graphkp"], "choice": "triton"}
# graphkt with the attention reading its cache window before its PDL wait (tts.fast.attention,
# ``written``); no faster on an H200 (run BU of docs/benchmarks.md).
VARIANTS["graphkr"] = {**VARIANTS["graphkt"], "read_ahead": True}
# graphkt whose decoder (buffers, compiled pieces, captured graphs) is kept for the next call
# of the same shape (tts.fast.decode.generate's ``keep``): the Engine's default since run BU
# (5-11% less GPT time on an H200, runs BU-BV; the kept KV cache stays allocated between calls).
VARIANTS["graphkk"] = {**VARIANTS["graphkt"], "keep": True}
# graphkk with nothing through torch.compile: the fused stack's few pieces that graphkk compiles
# (embedding and head; above 8 rows the layers' projections too) run op by op inside the CUDA
# graphs. No TorchDynamo import and no compile in the process: a GPT job of the workflow makes
# one GPT call in a new process, where graphkk's compiles took seconds (docs/benchmarks.md).
VARIANTS["graphke"] = {
    **VARIANTS["graphkk"],
    "compile_stack": False,
    "compile_logic": False,
    "compile_processors": False,
}
REORDERS = ("copy", "swap", "table")
CHOICES = ("torch", "triton")
