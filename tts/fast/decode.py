"""GPT decoding on a static KV cache, one CUDA graph per step (same results as tts.generation).

:func:`generate` takes the arguments of :func:`tts.generation.generate` and returns the same
:class:`~tts.generation.GenerationOutput`. What differs is how a step runs:

* every tensor a step touches is preallocated once (KV cache with room for every position,
  token / history / hypothesis buffers, the step counter itself lives on the device), and a
  step updates them in place, so the step is a fixed sequence of kernels;
* the new token's key/value is written at a device-side position and attention runs over a
  fixed window of the cache with a mask (positions not yet written are hidden), so no shape
  depends on the step;
* on CUDA that fixed sequence is captured as a CUDA graph and replayed, which removes the
  per-kernel launch cost (a full-size bf16 beam-3 step is ~800 small kernels: 20 ms/step
  eagerly, 3.4 ms/step replayed on an H100). The cache window grows in buckets of ``bucket``
  positions, one graph per bucket of the step's cache position, so attention and beam
  reordering only touch the part of the cache in use. Only the very first step runs eagerly
  (it compiles and warms up what the step uses); a later bucket's graph is captured at the
  "all finished?" test before it (``ahead``), while the GPU still runs the queued steps,
  through :func:`tts.fast.graphs.capture` (no device-wide synchronisation);
* the prompt length lives on the device too (the cache position of step 0, ``first_pos``),
  so with ``generate(keep=True)`` one decoder serves call after call of the same batch size
  and settings: :meth:`StaticDecoder.start` runs the new prompt's prefill and sets every
  buffer in place to a new decoder's state, and the steps replay the graphs captured by
  earlier calls (a call captures only the windows no earlier call reached). The random
  generators the graphs draw from are the decoder's own, given the caller's state before
  the loop and giving it back after;
* beam reordering moves only the generated part of the cache (the prompt part is the same for
  every beam of an item). The one case where that differs from moving whole rows: once an
  item is done, the reference feeds its rows from row 0, prompt included. With
  ``reorder="table"`` the table's prompt entries move too (a few integers per row), so a done
  item's rows read row 0's prompt as there; with ``"copy"`` and ``"swap"`` they keep their own,
  and the ``scores`` / ``logits`` recorded for those rows (which nothing reads) differ from
  tts.generation's. Codes, beam indices and sequence scores never depend on them.

The host synchronises only to test "is every row finished?" every ``check_every`` steps and to
assemble the result. On the CPU (or with ``use_graph=False``) the same step runs eagerly; with the
same generator it draws the same random numbers in the same order as tts.generation, so both give
identical codes (tests/test_fast.py), and on CUDA the greedy / beam parity fixtures are checked
through it (tests/test_gpu.py).

Variants (keyword arguments of :func:`generate`, all off by default; :data:`VARIANTS` names the
combinations that ``tts bench --gpt-decoder`` and scripts/device/decode_profile.py measure):

* ``compile_logic``: the token choice and its bookkeeping through torch.compile;
* ``compile_processors``: the logits processors through torch.compile too (top-p's cumulative
  sum stays eager: Inductor 2.11 fails to generate that scan on CUDA);
* ``fused``: the layer stack as compiled pieces shared by all layers (:mod:`tts.fast.fused`),
  run in the weights' dtype without autocast; ``matmul="reduce"`` makes its projections
  Inductor reductions instead of cuBLAS GEMMs;
* ``reorder="swap"``: beam reordering gathers the generated window into a second cache and the
  two caches swap roles every step (one graph per bucket and parity; on CUDA the gather is the
  contiguous-run Triton copy of :mod:`tts.fast.gather`) instead of gathering into
  a temporary and copying it back: one kernel and half the memory traffic, for twice the cache
  memory. Exact (the same values move);
* ``reorder="table"``: nothing in the cache moves. A small table ``src`` [rows, capacity] names,
  for each row and position, the cache row that wrote that position (a position is written
  once, by the row that fed it, and never changed); beam reordering gathers the rows of that
  table (4 bytes per position instead of ``2 x layers x width`` values), and attention reads
  each position's key and value from the row the table names (:mod:`tts.fast.attention` with
  ``src``; other attention kinds gather the rows first, :func:`tts.fast.attention.gather_rows`).
  Exact (the same values are read); one cache, one graph per bucket;
* ``pdl`` (with ``matmul="triton"`` and ``attention="triton"``): the layers' Triton kernels are
  programmatic dependent launches, each loading its weights while the kernel before it runs
  (:mod:`tts.fast.linear`). The same values are computed (tests/test_gpu.py: identical codes
  and scores); variant ``graphkp``;
* ``choice="triton"``: the logits processors as one kernel per row (:mod:`tts.fast.processors`)
  and, with beam sampling, the draw of the candidates as one kernel per item after torch's
  exponential draws (:func:`tts.fast.sampling.beam_candidates`), instead of ~35 torch kernels;
  the same function rounded differently (those modules' notes); the kernels' validity flag is
  read with the "all finished?" test. With beams and ``reorder="table"``, the beam step's
  bookkeeping after the draw (hypotheses, done flags, the moves of every per-row buffer and
  of the source table) is one kernel too (:mod:`tts.fast.beam_step`; exact). Variant
  ``graphkt``; ``graphkk``, the Engine's default, is ``graphkt`` kept between calls;
* ``read_ahead`` (with ``attention="triton"``): the attention loads its window's keys before
  its PDL wait, and after it the values and the key the step itself wrote
  (:func:`tts.fast.attention.attend`'s ``written``). The same values are read; variant
  ``graphkr``, no faster on an H200 (docs/benchmarks.md, run BU);
* ``compile_stack=False`` (with ``fused``): the fused stack's pieces run op by op instead of
  through torch.compile (the same functions; inside the CUDA graphs all the same). With
  ``compile_logic`` and ``compile_processors`` off too, nothing compiles and TorchDynamo is
  never imported: variant ``graphke`` (``graphkk`` without torch.compile), the workflow's
  choice, whose jobs each make one GPT call in a new process.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import threading
import time
import weakref

import torch
import torch.nn.functional as F

from tts.fast import beam_step, prefill, processors
from tts.fast.sampling import INVALID_PROBABILITIES
from tts.fast.variants import CHOICES, REORDERS, VARIANTS  # noqa: F401 - VARIANTS: re-exported
from tts.generation import (
    FAKE_PROMPT_ID,
    GenerationConfig,
    GenerationOutput,
    Generators,
    _BeamState,
    check_generators,
    cumulative_probs,
    expand_rows,
    generator_list,
    multinomial_rows,
    process_scores,
)
from tts.models.gpt import prefix_attention_mask

DEFAULT_BUCKET = int(os.environ.get("TTS_DECODE_BUCKET", "64"))
DEFAULT_CHECK_EVERY = 32
# Attention of a decode step: "sdpa" (F.scaled_dot_product_attention), "math" (two batched
# products and a softmax) or "triton" (tts.fast.attention); the default of generate().
ATTENTION = os.environ.get("TTS_DECODE_ATTN", "sdpa")
ATTENTIONS = ("sdpa", "math", "triton")


def _draw(probs: torch.Tensor, n: int, generator: Generators) -> torch.Tensor:
    """``torch.multinomial`` without replacement, kept out of torch.compile (its generator
    would otherwise be guarded on, and every call brings a new one). ``generator``: one
    Generator, or one per batch item (tts.generation.multinomial_rows; several are drawn in
    one batch by tts.fast.sampling, with the same result)."""
    if isinstance(generator, (list, tuple)) and len(generator) > 1:
        from tts.fast.sampling import multinomial_groups

        return multinomial_groups(probs, n, generator)
    return multinomial_rows(probs, n, generator)


def _candidates(
    processed: torch.Tensor,
    survivors: tuple[torch.Tensor, ...] | None,
    beam_scores: torch.Tensor,
    beams: int,
    n: int,
    generator: Generators,
    invalid: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The beam step's ``n`` drawn candidates per item and their scores: one Triton kernel
    (:func:`tts.fast.sampling.beam_candidates`) where the processors' kernel wrote
    ``survivors`` (and the draw kernel did not fail before), else the softmax, :func:`_draw`
    and a gather."""
    if survivors is not None and ("draw kernel",) not in _FAILED:
        from tts.fast.sampling import beam_candidates

        try:
            return beam_candidates(processed, survivors, beam_scores, beams, n, generator, invalid)
        except Exception as exc:  # noqa: BLE001 - keep decoding with the torch ops
            if _capturing(processed.device):
                raise
            from tts.fast import fallback

            fallback("GPT beam draw Triton kernel", exc)
            _FAILED.add(("draw kernel",))
    total = (processed + beam_scores.unsqueeze(1)).view(-1, beams * processed.size(1))
    cand = _draw(total.softmax(dim=-1), n, generator)
    return cand, total.gather(1, cand)


def _select(dec: StaticDecoder, processed: torch.Tensor, drawn=None):
    return dec._select(processed, drawn)


_COMPILED: dict[str, object] = {}
# What the compiled token choice and processors call but TorchDynamo must not trace (generator
# arguments, user kernels, a scan Inductor fails on). They are wrapped in
# torch.compiler.disable when something first compiles, not at import: that wrapper imports
# TorchDynamo, which a decoder that compiles nothing (compile_stack=False) never needs.
_EAGER_ONLY = ("_draw", "_candidates", "_cumulative", "_kth_largest")


@functools.cache
def _keep_eager_only_out_of_compile() -> None:
    """Wrap the :data:`_EAGER_ONLY` functions in ``torch.compiler.disable`` (once)."""
    namespace = globals()
    for name in _EAGER_ONLY:
        namespace[name] = torch.compiler.disable(namespace[name])


def _compiled_select():
    """``torch.compile`` of the token choice and its bookkeeping (sampling, beam hypotheses:
    ~150 small kernels that Inductor fuses into a few). The logits processors stay outside
    (Inductor 2.11 fails to generate the top-p cumulative sum on CUDA). Shared by every
    decoder: guards are on shapes and settings, so a new call with the same shapes reuses it."""
    fn = _COMPILED.get("select")
    if fn is None:
        _keep_eager_only_out_of_compile()
        fn = _COMPILED["select"] = torch.compile(_select, dynamic=False)
    return fn


def _cumulative(sorted_scores: torch.Tensor) -> torch.Tensor:
    """Top-p's cumulative probabilities, eager (Inductor 2.11 fails on this scan on CUDA)."""
    return cumulative_probs(sorted_scores)


def _kth_largest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k's threshold through the two Triton kernels of :mod:`tts.fast.topk` on CUDA (the
    same values as ``torch.topk``, without its one-block-per-row kernel), else torch.topk;
    eager (a user kernel inside the compiled processors). Not in Triton's CPU interpreter,
    where its sorts take seconds per step: tests/test_fast.py checks the kernels alone."""
    from tts.fast import topk

    if (
        ("topk",) not in _FAILED
        and scores.is_cuda
        and topk.available(scores)
        and k <= topk.BLOCK
        and scores.dtype == torch.float32
        and scores.is_contiguous()
    ):
        try:
            return topk.kth_largest(scores, k)
        except Exception as exc:  # noqa: BLE001 - keep decoding with torch.topk
            if _capturing(scores.device):
                raise
            from tts.fast import fallback

            fallback("top-k threshold Triton kernels", exc)
            _FAILED.add(("topk",))
    return torch.topk(scores, k).values[..., -1:]


def _processors(
    logits: torch.Tensor, seen: torch.Tensor, cfg: GenerationConfig, beams: bool
) -> torch.Tensor:
    """:func:`tts.generation.process_scores` (after log_softmax with beams) with the top-p
    scan kept eager, so that torch.compile fuses everything around it, and top-k's threshold
    from :func:`_kth_largest` (tests/test_fast.py checks it against process_scores)."""
    scores = F.log_softmax(logits, dim=-1) if beams else logits
    return process_scores(
        scores, seen, cfg, 2 if beams else 1, cumulative=_cumulative, kth_largest=_kth_largest
    )


def _compiled_processors(key: tuple):
    """``torch.compile`` of :func:`_processors`, one per (rows, vocab, settings)."""
    from tts.fast.fused import _own_code

    fn = _COMPILED.get(("processors", key))
    if fn is None:
        _keep_eager_only_out_of_compile()
        fn = _COMPILED[("processors", key)] = torch.compile(_own_code(_processors), dynamic=False)
    return fn


# Fast pieces whose compile or first run failed, tried no more in this process: ("select",),
# ("processors", key), ("fused", key), ("gather",).
_FAILED: set[tuple] = set()


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    kind: str = "sdpa",
    src: torch.Tensor | None = None,
    pdl: bool = False,
    written: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of the step's queries over a cache window (additive ``mask``); ``src``: the
    cache row of each (row, position) (reorder="table"); ``pdl``: the Triton kernels'
    programmatic dependent launch; ``written``: the step's own cache position, for the Triton
    kernel's read-ahead (``read_ahead`` of :func:`generate`; the other kinds ignore it)."""
    from tts.fast import attention

    if kind == "triton":
        return attention.attend(q, k, v, mask, src=src, pdl=pdl, written=written)
    if src is not None:
        k, v = attention.gather_rows(k, src), attention.gather_rows(v, src)
    if kind == "math":  # one query: two small batched products and a softmax
        scores = torch.matmul(q, k.transpose(-1, -2)) * q.size(-1) ** -0.5
        probs = torch.softmax((scores + mask).float(), dim=-1).to(q.dtype)
        return torch.matmul(probs, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _generator_shape(generator: Generators):
    """What graphs captured with ``generator`` draw from: None, one generator, or for a list,
    which entries are the same generator (the index of each one's first entry)."""
    if generator is None:
        return None
    if not isinstance(generator, (list, tuple)):
        return "one"
    first: dict[int, int] = {}
    return tuple(first.setdefault(id(g), i) for i, g in enumerate(generator))


def _distinct(own: list, given: list) -> list[tuple]:
    """The (own, caller's) generator pairs, each caller's generator once."""
    pairs = {id(theirs): (mine, theirs) for mine, theirs in zip(own, given, strict=True)}
    return list(pairs.values())


def _copy_state(fresh, kept) -> None:
    """Give ``kept`` the values of ``fresh`` (objects of one class): tensors copied in place,
    so that graphs captured with ``kept``'s keep reading the right memory; numbers assigned."""
    for name, value in vars(fresh).items():
        if isinstance(value, torch.Tensor):
            getattr(kept, name).copy_(value)
        elif isinstance(value, (int, float, bool)):
            setattr(kept, name, value)


def _joint_cache(model, rows: int, capacity: int, device, dtype):
    """A KVCache whose keys and values are the halves of one tensor
    ``[layers, 2, rows, heads, capacity, head_dim]`` (so one gather moves both); returns
    (cache, tensor)."""
    cache = model.new_cache(rows, 0, device=device, dtype=dtype)
    layers, _, heads, _, head_dim = cache.k.shape
    kv = torch.zeros((layers, 2, rows, heads, capacity, head_dim), device=device, dtype=dtype)
    cache.k, cache.v = kv[:, 0], kv[:, 1]
    return cache, kv


class DecodeWeights:
    """The GPT-2 matrices in ``[out, in]`` layout for ``F.linear``, made once per model.

    HF's Conv1D stores ``[in, out]`` for ``addmm(b, x, W)``. A decode step multiplies only a
    few rows (batch x beams), and this layout was expected to take cuBLAS's matrix-vector
    path; on the H100 it did not matter: both layouts run at about half the weight-read
    bandwidth (docs/benchmarks.md, run 1 vs run 3 and the profile). It is kept because the
    recorded numbers use it; it costs one extra copy of the stack's weights.
    """

    def __init__(self, model) -> None:
        self.versions = _versions(model.gpt)
        self.layers = []
        with torch.no_grad():
            for block in model.gpt.h:
                self.layers.append(
                    tuple(
                        t.detach().t().contiguous() if t.dim() == 2 else t.detach()
                        for t in (
                            block.attn.c_attn.weight,
                            block.attn.c_attn.bias,
                            block.attn.c_proj.weight,
                            block.attn.c_proj.bias,
                            block.mlp.c_fc.weight,
                            block.mlp.c_fc.bias,
                            block.mlp.c_proj.weight,
                            block.mlp.c_proj.bias,
                        )
                    )
                )


_WEIGHTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _versions(module) -> tuple:
    return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in module.parameters())


def decode_weights(model) -> DecodeWeights:
    """The cached :class:`DecodeWeights` of ``model`` (remade if its weights changed)."""
    entry = _WEIGHTS.get(model)
    if entry is None or entry.versions != _versions(model.gpt):
        entry = _WEIGHTS[model] = DecodeWeights(model)
    return entry


@torch.no_grad()
def generate(
    model,
    prefix: torch.Tensor,
    valid: torch.Tensor | None,
    cfg: GenerationConfig | None = None,
    *,
    generator: Generators = None,
    output_scores: bool = False,
    output_logits: bool = False,
    check_every: int | None = None,
    use_graph: bool | None = None,
    bucket: int = DEFAULT_BUCKET,
    stats: dict | None = None,
    keep: bool = False,
    **options,
) -> GenerationOutput:
    """Drop-in for :func:`tts.generation.generate` (same arguments, same output).

    ``use_graph`` (default: on CUDA) replays one CUDA graph per step; ``check_every`` (default
    32 with graphs, else 1) is the number of steps between "all finished?" host checks (more
    steps only run past the end, they never change the result). ``stats``, if given, receives
    ``loop_s`` (time of the decode loop after the prefill), ``steps``, ``kept`` (whether an
    earlier call's decoder was reused), ``captured`` (graphs captured in this call), and the
    host seconds of the set-up (``setup_s``), of step 0 (``first_step_s``: its eager run,
    which compiles, and the captures it makes) and of all captures (``capture_s``).

    ``keep``: keep the decoder (its buffers, compiled pieces and captured graphs) for the next
    call with the same model, settings and batch size whose prompt fits its cache; that call
    then runs its prefill and replays the graphs, with no eager step and no capture unless
    its steps reach a window not captured before. One decoder is kept per process, the last
    one; it holds its KV cache between calls (:func:`release` frees it). Only with
    ``reorder="table"`` or without beams (the other reorders move the cache from a host-side
    prompt length); otherwise ignored.

    ``options``: the speed variants, keyword arguments of :class:`StaticDecoder`
    (``VARIANTS[name]`` gives the named combinations; each falls back to the plain path,
    recorded in ``tts.fast.FALLBACKS``, if it cannot be used): ``compile_logic`` runs the
    per-step decision logic through torch.compile; ``compile_processors`` compiles the logits
    processors; ``fused`` runs the layer stack as compiled fused pieces in the weights' dtype
    (``matmul``: "mm" = cuBLAS GEMMs, "reduce" = Inductor reductions, "autotune", "triton" =
    :mod:`tts.fast.linear`); ``reorder``: "copy" (gather the beams' cache window into a
    temporary and copy it back), "swap" (gather into a second cache and swap the two) or
    "table" (move nothing: attention reads through a table of source rows); ``attention``
    (default :data:`ATTENTION`): "sdpa", "math" or "triton" (the split-K kernels of
    :mod:`tts.fast.attention`, where Triton runs); ``ahead``: capture a window's graphs at the
    "all finished?" test before it, while the GPU still runs queued steps (False: at the
    window's first step, as the GPU waits); ``pdl``: launch the Triton projections
    (``matmul="triton"``) and attention as programmatic dependent launches, so each loads its
    weights while the kernel before it still runs (CUDA on Hopper or newer; elsewhere
    ignored); ``choice``: "torch" (the logits processors and the beam step's draw as torch
    ops) or "triton" (each as one kernel: :mod:`tts.fast.processors`,
    :func:`tts.fast.sampling.beam_candidates`, with the table reorder
    :mod:`tts.fast.beam_step`; where Triton runs); ``read_ahead`` (with
    ``attention="triton"``): the attention reads the window's keys before its PDL wait, and
    the step's own one again after it (``written`` of :func:`tts.fast.attention.attend`);
    ``compile_stack`` (default True): the fused pieces through torch.compile (False: op by op).
    """
    from tts.fast.fused import MATMULS

    unknown = set(options) - set(_OPTIONS)
    if unknown:
        raise TypeError(f"unknown decoder options {sorted(unknown)}; known: {list(_OPTIONS)}")
    settings = {**_OPTIONS, **options}
    if settings["reorder"] not in REORDERS:
        raise ValueError(f"reorder {settings['reorder']!r} is not one of {REORDERS}")
    if settings["choice"] not in CHOICES:
        raise ValueError(f"choice {settings['choice']!r} is not one of {CHOICES}")
    if settings["matmul"] not in MATMULS:
        raise ValueError(f"matmul {settings['matmul']!r} is not one of {MATMULS}")
    cfg = cfg or GenerationConfig()
    cfg.validate()
    check_generators(generator, prefix.size(0))
    if use_graph is None:
        use_graph = prefix.device.type == "cuda"
    if check_every is None:
        check_every = DEFAULT_CHECK_EVERY if use_graph else 1
    keep = keep and (settings["reorder"] == "table" or cfg.num_beams == 1)
    key = (cfg, output_scores, output_logits, use_graph, bucket, tuple(sorted(settings.items())))
    started = time.perf_counter()
    dec, lent_at = _KEPT.take(model, key, prefix, generator) if keep else (None, 0)
    kept = dec is not None
    if kept:
        dec.start(prefix, valid, generator)
    else:
        # A kept decoder gets room for somewhat longer prompts than this one.
        room = prefix.size(1) + 1 + cfg.max_mel_tokens
        dec = StaticDecoder(
            model,
            prefix,
            valid,
            cfg,
            generator=generator,
            output_scores=output_scores,
            output_logits=output_logits,
            use_graph=use_graph,
            bucket=bucket,
            capacity=-(-room // KEEP_ROOM) * KEEP_ROOM if keep else 0,
            **options,
        )
    if stats is not None:
        stats["setup_s"] = time.perf_counter() - started  # host time: buffers, prefill launch
        stats["kept"] = kept
    try:
        out = dec.run(check_every=max(1, int(check_every)), stats=stats)
    except BaseException:
        keep = False  # a decoder whose call failed is not reused
        raise
    finally:
        if keep and dec.use_graph == use_graph:  # not after a capture failed: it runs eagerly
            _KEPT.give(key, dec, lent_at)
    return out


# StaticDecoder's speed options and their defaults (generate's **options).
_OPTIONS = {
    "compile_logic": False,
    "compile_processors": False,
    "fused": False,
    "matmul": "mm",
    "reorder": "copy",
    "attention": None,
    "ahead": True,
    "pdl": False,
    "choice": "torch",
    "read_ahead": False,
    "compile_stack": True,
}
# A kept decoder's cache capacity is a multiple of this many positions (prompt + codes).
KEEP_ROOM = 256


class _Kept:
    """generate(keep=True)'s decoder: the last kept call's settings and decoder (one in the
    process, which bounds the memory it holds), lent to one call at a time (another
    thread's call meanwhile makes its own)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entry: tuple | None = None  # (settings key, decoder)
        self.releases = 0  # release() calls so far

    def take(self, model, key: tuple, prefix: torch.Tensor, generator: Generators):
        """(the kept decoder if it was made for ``model`` with ``key`` and takes ``prefix``,
        else None; the release count, for :meth:`give`). Either way nothing stays kept: a
        decoder that does not fit is dropped, freeing its memory before a new one is made."""
        with self.lock:
            entry, self.entry = self.entry, None
            lent_at = self.releases
        if entry is None:
            return None, lent_at
        kept_key, dec = entry
        if (
            dec.model is model
            and kept_key == key
            and dec.weights is decode_weights(model)
            and dec.fits(prefix, generator)
        ):
            return dec, lent_at
        return None, lent_at

    def give(self, key: tuple, dec: StaticDecoder, lent_at: int) -> None:
        """Keep ``dec`` for the next call (replacing what another thread kept meanwhile),
        unless :meth:`release` was called since :meth:`take`."""
        with self.lock:
            if self.releases == lent_at:
                self.entry = (key, dec)

    def release(self) -> None:
        with self.lock:
            self.entry = None
            self.releases += 1


_KEPT = _Kept()


def release() -> None:
    """Drop the decoder kept by ``generate(keep=True)``, with its KV cache and graphs (a
    call using it meanwhile does not keep it)."""
    _KEPT.release()


class StaticDecoder:
    """Static buffers, the in-place step and the graphs that replay it: one generation call,
    or (:meth:`start` between them) several calls of the same batch size and settings."""

    def __init__(
        self,
        model,
        prefix: torch.Tensor,
        valid: torch.Tensor | None,
        cfg: GenerationConfig,
        *,
        generator: Generators = None,
        output_scores: bool = False,
        output_logits: bool = False,
        use_graph: bool = False,
        bucket: int = DEFAULT_BUCKET,
        compile_logic: bool = False,
        compile_processors: bool = False,
        fused: bool = False,
        matmul: str = "mm",
        reorder: str = "copy",
        attention: str | None = None,
        ahead: bool = True,
        pdl: bool = False,
        choice: str = "torch",
        read_ahead: bool = False,
        compile_stack: bool = True,
        capacity: int = 0,
    ):
        """Allocate every buffer for calls shaped like ``prefix`` (its batch, dtype and
        device; prompts up to ``capacity`` cache positions with the codes, at least this one's),
        then :meth:`start` the call of ``prefix``."""
        self.model, self.cfg = model, cfg
        self.read_ahead = read_ahead
        self.compile_logic = compile_logic
        self.compile_processors = compile_processors
        # A decoder made to be kept (capacity given) also captures the window of its eager
        # first step: a later call with this prompt length starts in that window.
        self.keeps_graphs = capacity > 0
        self.weights = decode_weights(model)
        self.use_graph = use_graph
        self.output_scores, self.output_logits = output_scores, output_logits
        self.stop = model.stop_mel_token
        self.pad = model.stop_mel_token
        beams = self.beams = cfg.num_beams
        max_new = self.max_new = cfg.max_mel_tokens
        device = self.device = prefix.device
        self.prefix_dtype = prefix.dtype
        copies = cfg.num_return_sequences if beams == 1 else 1  # rows per prompt
        batch = self.batch = prefix.size(0) * copies
        rows = self.rows = batch * beams
        # Room for the prompt, the start code and every generated token (the last step also
        # feeds its token, whose key is never read), rounded to whole buckets.
        self.bucket = max(16, -(-int(bucket) // 16) * 16)  # whole multiples of 16 keys
        need = max(prefix.size(1) + 1 + max_new, int(capacity))
        cap = self.capacity = -(-need // self.bucket) * self.bucket
        # A half-precision GPT run under autocast gets a float32 prefix (autocast's LayerNorms
        # return float32), but every key / value is the output of a half-precision product:
        # a cache in the weights' dtype holds exactly the same values, in half the memory.
        cache_dtype = prefill.cache_dtype(model.mel_head, prefix.dtype)
        # reorder="swap": two caches (one tensor each, keys and values together), the one in
        # use is self.cache = self.caches[self.cur]; "copy": one cache, reordered in place.
        self.swap = reorder == "swap" and beams > 1
        if self.swap:
            self.caches, self.kv = [], []
            for _ in range(2):
                cache, kv = _joint_cache(model, rows, cap, device, cache_dtype)
                self.caches.append(cache)
                self.kv.append(kv)
        else:
            self.caches = [model.new_cache(rows, cap, device=device, dtype=cache_dtype)]
        self._use(0)
        self.written_to = 0  # cache positions [0, written_to) may hold an earlier call's values
        # pdl: tts.fast.linear / tts.fast.attention use it only where the GPU has it.
        self.fused = self._fused_stack(fused, matmul, cache_dtype, pdl, compile_stack)
        self.attend = functools.partial(_attend, kind=self._attention(attention, prefix), pdl=pdl)
        self.valid_all = torch.ones(rows, cap, dtype=torch.bool, device=device)
        self.key_pos = torch.arange(cap, device=device)
        # The fused stack's additive attention mask, kept between steps: 0 where a row may
        # attend (its valid prompt positions and every position fed so far), -inf elsewhere.
        # Each step opens its own position with one small kernel, instead of building the mask
        # anew (a comparison, a fill, a not and a masked fill: ~12 us a step on an H100,
        # docs/benchmarks.md, run EA).
        self.step_mask = (
            None
            if self.fused is None
            else torch.empty(rows, cap, dtype=self.fused.dtype, device=device)
        )
        # The cache position of step 0's token (prompt + start code), on the device: nothing
        # a step runs depends on the prompt length on the host, so graphs outlive the call.
        self.first_pos = torch.zeros((), dtype=torch.int64, device=device)
        # reorder="table": the cache row holding each (row, position). The beams of an item
        # hold the same prompt values (fill_repeated), so all of them read the prompt of the
        # item's first beam: one copy read by each, which the GPU's L2 cache can serve.
        # row_ids: what a step writes at its position.
        self.row_ids = torch.arange(rows, dtype=torch.int32, device=device).unsqueeze(1)
        self.src = None
        if reorder == "table" and beams > 1:
            self.src = torch.empty((rows, cap), dtype=torch.int32, device=device)

        vocab = self.vocab = model.mel_head.weight.size(0)
        self.logits = torch.zeros(rows, vocab, device=device)
        self.step_t = torch.zeros((), dtype=torch.int64, device=device)  # step being decided
        self.seen = torch.zeros(rows, vocab, dtype=torch.bool, device=device)
        self.tokens = torch.full((rows, max_new), self.pad, dtype=torch.int64, device=device)
        self.rec_scores = (
            torch.zeros(max_new, rows, vocab, device=device) if output_scores else None
        )
        self.rec_logits = (
            torch.zeros(max_new, rows, vocab, device=device) if output_logits else None
        )
        if beams == 1:
            self.unfinished = torch.ones(rows, dtype=torch.bool, device=device)
            self.finished_at = torch.full((rows,), max_new, dtype=torch.int64, device=device)
        else:
            # The eager bookkeeping object: its tensors are our static buffers, updated in
            # place by _beam_step; its finalize() assembles the result after the loop.
            self.beam = _BeamState(batch, beams, max_new, cfg, self.pad, device)
            self.beam.beam_scores = self.beam.beam_scores.clone()
            self.slots = torch.arange(beams, device=device)
        # One graph per (cache window, index of the cache in use before the step).
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self.pool = None
        self.ahead = ahead
        self.check_every = 1  # steps between "all finished?" tests (run() sets it)
        self.warm = False  # the step ran once eagerly: its pieces are compiled, capture may go
        self.warm_windows: set[int] = set()  # cache windows whose attention ran once
        self.stream = torch.cuda.Stream(device) if use_graph else None
        # choice="triton": the processors' kernel writes `processed` and the survivors of
        # top-k, which the draw's kernel reads; both raise `invalid` where torch.multinomial
        # would refuse the probabilities (checked with the "all finished?" test).
        self.choice_kernels = (
            choice == "triton"
            and ("processors kernel",) not in _FAILED
            and processors.supported(self.logits, cfg)
        )
        self.invalid = None
        if self.choice_kernels:
            self.processed = torch.empty_like(self.logits)
            self.survivors = processors.survivor_buffers(rows, vocab, device)
            self.scratch = processors.split_buffers(rows, vocab, device)  # the split kernels'
            self.invalid = torch.zeros(1, dtype=torch.int32, device=device)
        # With beams and the table reorder, the beam step's bookkeeping is one kernel too.
        self.beam_kernel = self.choice_kernels and self.table and ("beam kernel",) not in _FAILED
        if self.beam_kernel:
            self.chosen = torch.empty(rows, dtype=torch.int64, device=device)
            self.denominators = beam_step.denominators(max_new, cfg.length_penalty, device)
            self.snapshots = beam_step.snapshots(
                self.tokens, self.beam.history, self.seen, self.src
            )
        # Generators the graphs draw from (use_graph): the decoder's own, given each caller's
        # state at start() and giving it back after run(), so graphs outlive the call.
        self.own_generators: list[torch.Generator] | None = None
        self.gen_shape = _generator_shape(generator)
        self.calls = 0  # calls started
        # Where steps replay graphs, the prefill does too (tts.fast.prefill), unless padded.
        self.prefill_graphs = use_graph
        self.start(prefix, valid, generator)

    def start(
        self, prefix: torch.Tensor, valid: torch.Tensor | None, generator: Generators = None
    ) -> None:
        """Set every buffer to the state of a new call for ``prefix`` (same batch, dtype and
        device as the decoder's; a prompt that fits its capacity): the prompt's keys and
        values (the eager prefill), step 0's logits, empty histories and hypotheses, and the
        random generators. The buffers stay where they are, so the graphs of an earlier call
        replay this one; after it the decoder is in the state of a new one."""
        model, cfg, beams, device = self.model, self.cfg, self.beams, self.device
        if self.calls and not (beams == 1 or self.table):
            raise ValueError(
                f"reorder {'swap' if self.swap else 'copy'} with beams moves the cache from the "
                "prompt length on the host: such a decoder serves one call"
            )
        if not self.fits(prefix, generator):
            raise ValueError(
                f"a decoder for {self.batch} rows of {self.prefix_dtype} on {self.device} with "
                f"{self.capacity} positions cannot take a prefix {tuple(prefix.shape)} of "
                f"{prefix.dtype} on {prefix.device} and {self.max_new} codes"
            )
        check_generators(generator, prefix.size(0))
        prefix, valid = expand_rows(prefix, valid, cfg)
        batch, s_len, _ = prefix.shape
        self.calls += 1
        self.s_len = s_len
        cap = self.capacity
        has_padding = not bool(valid.all())  # one host sync, before the loop (as upstream)
        self.first_pos.fill_(s_len + 1)
        # What an earlier call wrote after this prompt goes back to zeros, as in a new cache.
        for cache in self.caches:
            for buf in (cache.k, cache.v):
                buf[:, :, :, s_len + 1 : self.written_to].zero_()
        self.written_to = s_len + 1
        self._use(0)

        # Step 0, eagerly: the prefix plus the start code (mel position 0), once per item.
        valid_all = F.pad(valid, (0, cap - s_len), value=True)
        start_tokens = torch.full((batch,), model.start_mel_token, dtype=torch.int64, device=device)
        emb = torch.cat((prefix, model.mel_input_embedding(start_tokens, 0)), dim=1)
        mask = prefix_attention_mask(valid_all, s_len + 1) if has_padding else None
        logits = self._prefill(emb, mask)
        if beams > 1:
            valid_all = valid_all.repeat_interleave(beams, dim=0)
        if self.swap:  # the second cache starts with the same prompt (+ start code) part
            self.kv[1][..., : s_len + 1, :].copy_(self.kv[0][..., : s_len + 1, :])
        self.valid_all.copy_(valid_all)  # [rows, cap] real (non left-pad) key positions
        if self.step_mask is not None:  # the prompt and the start code, where valid
            shown = self.valid_all & (self.key_pos < s_len + 1)
            self.step_mask.zero_().masked_fill_(~shown, float("-inf"))
        self.logits.copy_(logits)
        self._reset_buffers()
        self.generator = self._generators(generator)
        self.eager_steps = 0
        self.capture_s = 0.0  # host seconds spent capturing graphs (the GPU may idle meanwhile)

    def _prefill(self, emb: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Step 0 of a call, eagerly or (``prefill_graphs``, no padded row) from a graph
        (:mod:`tts.fast.prefill`): the keys and values of ``emb`` [items, n, d] (the prompt and
        the start code) into the cache, each item's in its beams' rows; returns the logits
        [rows, vocab]."""
        model, beams = self.model, self.beams
        n = emb.size(1)
        if self.prefill_graphs and mask is None:
            logits, k, v = prefill.runner_for(model)(emb)
            for src, dst in ((k, self.cache.k), (v, self.cache.v)):
                src = src[:, :, :, :n]
                dst[:, :, :, :n] = src.repeat_interleave(beams, dim=1) if beams > 1 else src
            self.cache.length = n
        elif beams == 1:
            self.cache.length = 0
            logits = model.decode(emb, self.cache, mask)
        else:
            first = model.new_cache(emb.size(0), n, device=emb.device, dtype=emb.dtype)
            logits = model.decode(emb, first, mask)
            self.cache.fill_repeated(first, beams)
        return logits.repeat_interleave(beams, dim=0) if beams > 1 else logits

    def fits(self, prefix: torch.Tensor, generator: Generators = None) -> bool:
        """Whether :meth:`start` can take ``prefix`` [items, s_len, width] and ``generator``
        (one Generator, a list, or None: as the graphs were captured with)."""
        items, s_len = prefix.shape[:2]
        copies = self.cfg.num_return_sequences if self.beams == 1 else 1
        return (
            items * copies == self.batch
            and prefix.dtype == self.prefix_dtype
            and prefix.device == self.device
            and s_len + 1 + self.max_new <= self.capacity
            and (not self.use_graph or _generator_shape(generator) == self.gen_shape)
        )

    def _reset_buffers(self) -> None:
        """Histories, hypotheses, flags and the source table as a new call starts them."""
        self.step_t.zero_()
        self.seen.zero_()
        self.seen[:, FAKE_PROMPT_ID] = True
        self.seen[:, self.model.start_mel_token] = True
        self.tokens.fill_(self.pad)
        for rec in (self.rec_scores, self.rec_logits):
            if rec is not None:
                rec.zero_()
        if self.beams == 1:
            self.unfinished.fill_(True)
            self.finished_at.fill_(self.max_new)
        else:
            fresh = _BeamState(
                self.batch, self.beams, self.max_new, self.cfg, self.pad, self.device
            )
            _copy_state(fresh, self.beam)
            _copy_state(fresh.hyps, self.beam.hyps)
        if self.src is not None:  # every beam reads its item's first beam's prompt
            first = torch.div(self.row_ids, self.beams, rounding_mode="floor") * self.beams
            self.src.copy_(first.expand_as(self.src))
        if self.invalid is not None:
            self.invalid.zero_()
        if self.beam_kernel:
            for snap, buf in zip(
                self.snapshots, (self.tokens, self.beam.history, self.seen, self.src), strict=True
            ):
                snap.copy_(buf[:1].expand_as(snap))

    def _generators(self, generator: Generators) -> Generators:
        """The generators the steps draw from: the caller's, or with graphs the decoder's own
        set to the caller's state (a graph replays draws from the generators it was captured
        with; :meth:`run` gives the state back)."""
        self.callers_generator = generator
        if not self.use_graph or generator is None:
            return generator
        given = generator_list(generator)
        if any(g.device.type != "cuda" for g in given):
            return generator
        if self.own_generators is None:  # one per distinct generator, where the caller's are
            mine = {id(g): torch.Generator(device=g.device) for g in given}
            self.own_generators = [mine[id(g)] for g in given]
        for own, theirs in _distinct(self.own_generators, given):
            own.set_state(theirs.get_state())
        return (
            self.own_generators if isinstance(generator, (list, tuple)) else self.own_generators[0]
        )

    def _give_back_generators(self) -> None:
        """The caller's generators continue from where the call's draws left them."""
        generator, self.callers_generator = self.callers_generator, None
        if self.generator is generator or generator is None:
            return
        given = generator_list(generator)
        for own, theirs in _distinct(self.own_generators, given):
            theirs.set_state(own.get_state())

    # -- the step ----------------------------------------------------------------------------

    def _window_index(self, step: int) -> int:
        """The bucket of cache positions that holds ``step``'s position ``s_len + 1 + step``.
        A graph serves one such bucket, whatever the prompt length (nothing a step runs
        depends on it on the host), so a later call's steps replay it too."""
        return (self.s_len + 1 + step) // self.bucket

    def _window(self, step: int) -> int:
        """Cache positions ``[0, end)`` that ``step``'s graph covers: whole buckets, up to the
        one holding its position (multiples of 16, as SDPA's mask rows want)."""
        return min(self.capacity, (self._window_index(step) + 1) * self.bucket)

    def _window_steps(self, w: int) -> range:
        """This call's steps whose position falls in window bucket ``w``."""
        first = w * self.bucket - self.s_len - 1
        return range(max(0, first), min(self.max_new, first + self.bucket))

    def _graph_key(self, step: int) -> tuple[int, int]:
        """The graph that replays ``step``: (its window bucket, the cache in use before it)."""
        return self._window_index(step), self.cur

    def _step(self, end: int) -> None:
        """Decide the token of step ``step_t`` from ``logits``, then feed it (in place)."""
        chosen, rows_from = self._decide(end)
        if rows_from is not None:
            self._reorder_cache(rows_from, end)
        # Feed the new token: generated token j sits at mel position j + 2 (reference quirk),
        # cache position s_len + 1 + j (first_pos + j).
        self._feed(chosen, self.step_t, end)
        self.step_t.add_(1)

    def _decide(self, end: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits processors and the token choice of step ``step_t``; updates the token, history
        and hypothesis buffers. Returns (tokens [rows], beam source rows or None: nothing
        left to reorder). ``end``: the cache window of the step."""
        j = self.step_t
        if self.output_logits:
            self.rec_logits.index_copy_(0, j.view(1), self.logits.unsqueeze(0))
        processed = self._process()
        if self.output_scores:
            self.rec_scores.index_copy_(0, j.view(1), processed.unsqueeze(0))
        drawn = None  # the beam step's candidates, drawn once whichever path takes them
        if self.beam_kernel:
            drawn = self._beam_candidates(processed)
            try:
                return self._beam_kernel_step(drawn, end), None
            except Exception as exc:  # noqa: BLE001 - keep decoding with the torch ops
                self._give_up("GPT beam step Triton kernel", ("beam kernel",), exc)
                self.beam_kernel = False
        if self.compile_logic and ("select",) not in _FAILED:
            try:
                return _compiled_select()(self, processed, drawn)
            except Exception as exc:  # noqa: BLE001 - compiled code failed: plain path
                from tts.fast import fallback

                fallback("GPT decision logic torch.compile", exc)
                _FAILED.add(("select",))  # once per process: do not pay the attempt again
        return self._select(processed, drawn)

    def _give_up(self, what: str, key: tuple, exc: Exception) -> None:
        """A fast piece of the step failed: while a graph is captured, raise (the capture
        falls back as a whole); else record the fallback and skip the piece from now on in
        this process (``_FAILED``)."""
        if _capturing(self.device):
            raise exc
        from tts.fast import fallback

        fallback(what, exc)
        _FAILED.add(key)

    def _process(self) -> torch.Tensor:
        """The logits processors of the step (after log_softmax with beams)."""
        beams = self.beams > 1
        if self.choice_kernels:
            try:
                return processors.process(
                    self.logits,
                    self.seen,
                    self.cfg,
                    2 if beams else 1,
                    log_softmax=beams,
                    out=self.processed,
                    survivors=self.survivors,
                    invalid=self.invalid,
                    scratch=self.scratch,
                )
            except Exception as exc:  # noqa: BLE001 - keep decoding with the torch ops
                self._give_up("GPT logits processors Triton kernel", ("processors kernel",), exc)
                self.choice_kernels = False
        key = (self.rows, self.vocab, beams, self.cfg, self.device.type)
        if self.compile_processors and ("processors", key) not in _FAILED:
            try:
                return _compiled_processors(key)(self.logits, self.seen, self.cfg, beams)
            except Exception as exc:  # noqa: BLE001 - compiled code failed: plain path
                self._give_up("GPT logits processors torch.compile", ("processors", key), exc)
        return _processors(self.logits, self.seen, self.cfg, beams)

    def _select(
        self, processed: torch.Tensor, drawn: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Choose the tokens from the processed scores; update token / beam buffers.
        ``drawn``: the beam step's candidates if already drawn (:meth:`_beam_candidates`)."""
        j = self.step_t
        rows_from = None
        if self.beams == 1:
            chosen = self._greedy_step(processed, j)
        else:
            chosen, rows_from = self._beam_step(processed, j, drawn)
            self.tokens.copy_(self.tokens.index_select(0, rows_from))
            self.seen.copy_(self.seen.index_select(0, rows_from))
        self.tokens.scatter_(1, j.view(1, 1).expand(self.rows, 1), chosen.unsqueeze(1))
        self.seen.scatter_(1, chosen.unsqueeze(1), True)
        return chosen, rows_from

    def _greedy_step(self, scores: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        if self.cfg.do_sample:
            probs = scores.softmax(dim=-1)
            chosen = _draw(probs, 1, self.generator).squeeze(1)
        else:
            chosen = scores.argmax(dim=-1)
        chosen = torch.where(self.unfinished, chosen, self.pad)
        ends = self.unfinished & (chosen == self.stop)
        self.finished_at.copy_(torch.where(ends, j, self.finished_at))
        self.unfinished.copy_(self.unfinished & ~ends)
        return chosen

    def _beam_candidates(self, processed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The beam step's ``2 x beams`` candidates per item (flat indices into the item's
        ``beams x vocab`` scores) and their scores: drawn in the draw's order when sampling,
        else the largest, largest first."""
        st, k = self.beam, self.beams
        if self.cfg.do_sample:
            survivors = self.survivors if self.choice_kernels else None  # none: it fell back
            return _candidates(
                processed, survivors, st.beam_scores, k, 2 * k, self.generator, self.invalid
            )
        total = (processed + st.beam_scores.unsqueeze(1)).view(self.batch, k * self.vocab)
        cand_scores, cand = torch.topk(total, 2 * k, dim=1, largest=True, sorted=True)
        return cand, cand_scores

    def _beam_step(
        self,
        processed: torch.Tensor,
        j: torch.Tensor,
        drawn: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tts.generation._BeamState.step with the step index on the device."""
        st, cfg = self.beam, self.cfg
        k, b, vocab = self.beams, self.batch, self.vocab
        cand, cand_scores = self._beam_candidates(processed) if drawn is None else drawn
        if cfg.do_sample:
            cand_scores, order = torch.sort(cand_scores, dim=1, descending=True)
            cand = cand.gather(1, order)
        cand_beam = torch.div(cand, vocab, rounding_mode="floor")
        cand_tok = cand % vocab
        cand_row = cand_beam + st.row0
        is_stop = cand_tok == self.stop
        active = ~st.done
        generated = j + 1
        denom = generated.double().pow(cfg.length_penalty)
        col = j.view(1, 1).expand(b, 1)
        for rank in range(k):
            parent = cand_row[:, rank]
            hist = st.history.index_select(0, parent)
            hist.scatter_(1, col, parent.unsqueeze(1))
            self._hyp_add(
                is_stop[:, rank] & active,
                cand_scores[:, rank].double() / denom,
                self.tokens.index_select(0, parent),
                j,
                hist,
                generated,
                j * k + rank,
            )
        keep = torch.sort(is_stop.to(torch.uint8), dim=1, stable=True).indices[:, :k]
        next_scores = cand_scores.gather(1, keep)
        next_tok = cand_tok.gather(1, keep)
        next_row = cand_row.gather(1, keep)
        hyps = st.hyps
        full = hyps.valid.sum(dim=1) >= k
        if cfg.early_stopping:
            newly_done = full
        else:
            newly_done = full & (self._worst() >= cand_scores.amax(dim=1).double() / denom)
        was_done = st.done.unsqueeze(1)
        next_scores = torch.where(was_done, 0.0, next_scores)
        next_tok = torch.where(was_done, self.pad, next_tok)
        next_row = torch.where(was_done, 0, next_row)
        st.done.copy_(st.done | (active & newly_done))
        st.done_at.copy_(torch.where(st.done & (st.done_at == self.max_new), j, st.done_at))
        rows_from = next_row.view(-1)
        st.beam_scores.copy_(next_scores.view(-1))
        st.history.copy_(st.history.index_select(0, rows_from))
        st.history.scatter_(1, j.view(1, 1).expand(self.rows, 1), rows_from.unsqueeze(1))
        return next_tok.view(-1), rows_from

    def _beam_kernel_step(self, drawn: tuple[torch.Tensor, torch.Tensor], end: int) -> torch.Tensor:
        """:meth:`_beam_step`, :meth:`_select`'s buffer moves and :meth:`_reorder_cache` (the
        table) as one kernel (:mod:`tts.fast.beam_step`) after the draw; returns the tokens."""
        cand, cand_scores = drawn
        beam_step.step(
            cand.contiguous(),
            cand_scores.contiguous(),
            self.step_t,
            self.beam,
            self.tokens,
            self.seen,
            self.src,
            self.chosen,
            self.denominators,
            self.snapshots,
            stop=self.stop,
            pad=self.pad,
            early_stopping=self.cfg.early_stopping,
            end=end,
            first=self.first_pos,
        )
        return self.chosen

    def _worst(self) -> torch.Tensor:
        h = self.beam.hyps
        return torch.where(h.valid, h.score, torch.inf).amin(dim=1)

    def _hyp_add(self, accept, score, tokens, length, beams, beams_len, stamp) -> None:
        """BeamHypotheses.add with device-side length / stamp (same rules, in place)."""
        h = self.beam.hyps
        count = h.valid.sum(dim=1)
        worst = self._worst()
        has_room = count < self.beams
        take = accept & (has_room | (score > worst))
        first_empty = (~h.valid).to(torch.uint8).argmax(dim=1)
        ties = h.valid & (h.score == worst.unsqueeze(1))
        oldest_worst = torch.where(ties, h.stamp, torch.iinfo(torch.int64).max).argmin(dim=1)
        slot = torch.where(has_room, first_empty, oldest_worst)
        hit = (self.slots.unsqueeze(0) == slot.unsqueeze(1)) & take.unsqueeze(1)
        h.score.copy_(torch.where(hit, score.unsqueeze(1), h.score))
        h.valid.copy_(h.valid | hit)
        h.stamp.copy_(torch.where(hit, stamp, h.stamp))
        h.length.copy_(torch.where(hit, length, h.length))
        h.beams_len.copy_(torch.where(hit, beams_len, h.beams_len))
        h.tokens.copy_(torch.where(hit.unsqueeze(2), tokens.unsqueeze(1), h.tokens))
        h.beams.copy_(torch.where(hit.unsqueeze(2), beams.unsqueeze(1), h.beams))

    def _reorder_cache(self, rows_from: torch.Tensor, end: int) -> None:
        """Gather the beams' cache rows; only the generated part differs between beams, except
        for a done item's rows, which the table path (alone) points at row 0's prompt."""
        lo = self.s_len
        if self.table:  # the rows of the source table; the step's position is the row's own
            part = self.src[:, :end]
            part.copy_(part.index_select(0, rows_from))
            self.src.index_copy_(1, (self.step_t + self.first_pos).view(1), self.row_ids)
            return
        if self.swap:  # into the other cache (keys and values at once), which becomes current
            src, dst = self.kv[self.cur], self.kv[1 - self.cur]
            if not self._gather_window(src, dst, rows_from, lo, end):
                torch.index_select(src[..., lo:end, :], 2, rows_from, out=dst[..., lo:end, :])
            self._use(1 - self.cur)
            return
        for buf in (self.cache.k, self.cache.v):
            part = buf[:, :, :, lo:end]
            part.copy_(part.index_select(1, rows_from))

    def _feed(self, tokens: torch.Tensor, j: torch.Tensor, end: int) -> None:
        """One GPT step for ``tokens`` [rows] at cache position ``s_len + 1 + j``."""
        if self.fused is not None and self._feed_fused(tokens, j, end):
            return
        model = self.model
        pos = (j + self.first_pos).view(1)
        table = model.mel_pos_embedding.emb.weight
        # The last step feeds a token nobody reads; keep its position inside the table.
        x = model.mel_embedding(tokens) + table.index_select(
            0, (j.view(1) + 2).clamp_max(table.size(0) - 1)
        )
        x = x.unsqueeze(1)
        keys = (self.key_pos[:end] <= pos) & self.valid_all[:, :end]
        cache = self.cache
        rows = self.rows
        # The plain step, op by op (under autocast for a half GPT, as the caller runs it); the
        # fused variant runs the same stack natively in the weights' dtype (tts.fast.fused).
        self._layers(x, pos, keys, end, self.weights.layers, cache, rows)

    def _gather_window(self, src, dst, rows_from, lo: int, end: int) -> bool:
        """The swap reorder through the Triton copy kernel (tts.fast.gather) where it runs;
        False: use ``index_select`` (CPU, no Triton, or the kernel failed once)."""
        from tts.fast import gather

        if ("gather",) in _FAILED or not gather.available(src):
            return False
        try:
            gather.gather_window(src, dst, rows_from, lo, end)
            return True
        except Exception as exc:  # noqa: BLE001 - keep decoding with index_select
            from tts.fast import fallback

            fallback("beam reorder Triton gather", exc)
            _FAILED.add(("gather",))
            return False

    @staticmethod
    def _attention(kind: str | None, like: torch.Tensor) -> str:
        """The attention kind to run: ``kind`` (default ATTENTION); "triton" where Triton cannot
        run falls back to "sdpa" (recorded in tts.fast.FALLBACKS)."""
        kind = kind or ATTENTION
        if kind not in ATTENTIONS:
            raise ValueError(f"attention {kind!r} is not one of {ATTENTIONS}")
        if kind == "triton":
            from tts.fast import attention

            if not attention.available(like):
                from tts.fast import fallback

                fallback(
                    "GPT decode Triton attention",
                    RuntimeError("needs CUDA (or TRITON_INTERPRET=1)"),
                )
                return "sdpa"
        return kind

    @property
    def table(self) -> bool:
        """Whether beams read the cache through the source-row table (reorder="table")."""
        return self.src is not None

    def _attend_fn(self, end: int, pos: torch.Tensor | None = None):
        """The attention over the window ``[0, end)``: with reorder="table", through the rows
        of the source table; with ``read_ahead``, told the step's own position ``pos``."""
        extra = {}
        if self.src is not None:
            extra["src"] = self.src[:, :end]
        if self.read_ahead and pos is not None:
            extra["written"] = pos
        return functools.partial(self.attend, **extra) if extra else self.attend

    def _use(self, index: int) -> None:
        """Make cache ``index`` the one in use (reorder="swap")."""
        self.cur = index
        self.cache = self.caches[index]

    def _fused_stack(
        self, fused: bool, matmul: str, cache_dtype: torch.dtype, pdl: bool, compile: bool
    ):
        """The :class:`tts.fast.fused.FusedStack` of this decoder, or None (not asked for,
        not applicable, or its compile or first run failed before in this process)."""
        if not fused:
            return None
        from tts.fast import fallback
        from tts.fast.fused import FusedStack

        model = self.model
        try:
            used = (
                model.gpt,
                model.mel_embedding,
                model.mel_pos_embedding,
                model.final_norm,
                model.mel_head,
            )
            mixed = {p.dtype for m in used for p in m.parameters()} | {cache_dtype}
            if len(mixed) > 1:
                raise TypeError(f"one dtype needed, got {sorted(map(str, mixed))}")
            stack = FusedStack(
                model, self.weights.layers, self.rows, matmul, pdl=pdl, compile=compile
            )
        except Exception as exc:  # noqa: BLE001 - not applicable: plain layers
            fallback("GPT fused decode layers", exc)
            return None
        if ("fused", stack.key) in _FAILED:
            return None
        layers = range(len(model.gpt.h))
        self.layer_views = [
            ([c.k[i] for i in layers], [c.v[i] for i in layers]) for c in self.caches
        ]
        for ks, vs in self.layer_views:
            stack.mark_cache(ks + vs)
        return stack

    def _feed_fused(self, tokens: torch.Tensor, j: torch.Tensor, end: int) -> bool:
        """The step through the fused stack; False (recorded in tts.fast.FALLBACKS) if its
        compile or first run failed, and the plain layers must run."""
        stack = self.fused
        pos = (j + self.first_pos).view(1)
        # The step's own position opens (a fed position is always valid): the mask then shows
        # what (key_pos <= pos) & valid_all shows, as every earlier step opened its own.
        self.step_mask.index_fill_(1, pos, 0.0)
        mask = self.step_mask[:, None, None, :end]
        ks, vs = self.layer_views[self.cur]
        try:
            with torch.autocast(self.device.type, enabled=False):
                attend = self._attend_fn(end, pos)
                stack.step(tokens, j, pos, mask, end, ks, vs, self.logits, attend)
        except Exception as exc:  # noqa: BLE001 - compiled code failed: plain layers
            if _capturing(self.device):
                raise
            from tts.fast import fallback

            what = "torch.compile" if stack.compile else "op by op"
            fallback(f"GPT fused decode layers ({what})", exc)
            _FAILED.add(("fused", stack.key))  # once per process and shape
            self.fused = None
            return False
        return True

    def _layers(self, x, pos, keys, end, weights, cache, rows) -> None:
        model = self.model
        gpt = model.gpt
        mask = None  # additive, in the query dtype, built once per step (not per layer)
        attend = self._attend_fn(end, pos)
        for i, block in enumerate(gpt.h):
            attn = block.attn
            w_qkv, b_qkv, w_o, b_o, w_fc, b_fc, w_proj, b_proj = weights[i]
            h = block.ln_1(x)
            q, k, v = F.linear(h, w_qkv, b_qkv).split(model.model_dim, dim=2)
            q = q.view(rows, 1, attn.heads, attn.head_dim).transpose(1, 2)
            k = k.view(rows, 1, attn.heads, attn.head_dim).transpose(1, 2)
            v = v.view(rows, 1, attn.heads, attn.head_dim).transpose(1, 2)
            kc, vc = cache.k[i], cache.v[i]
            kc.index_copy_(2, pos, k.to(kc.dtype))
            vc.index_copy_(2, pos, v.to(vc.dtype))
            if mask is None:
                mask = torch.zeros(keys.shape, dtype=q.dtype, device=q.device)
                mask = mask.masked_fill_(~keys, float("-inf"))[:, None, None, :]
            out = attend(q, kc[:, :, :end], vc[:, :, :end], mask)
            x = x + F.linear(out.transpose(1, 2).reshape(rows, 1, model.model_dim), w_o, b_o)
            h = F.gelu(F.linear(block.ln_2(x), w_fc, b_fc), approximate="tanh")
            x = x + F.linear(h, w_proj, b_proj)
        last = x[:, -1]
        if last.dtype in (torch.bfloat16, torch.float16) and not torch.is_autocast_enabled(
            last.device.type
        ):
            # Native half stack: the two final norms in float32, as autocast runs them.
            h = last.float()
            for norm in (gpt.ln_f, model.final_norm):
                h = F.layer_norm(
                    h, norm.normalized_shape, norm.weight.float(), norm.bias.float(), norm.eps
                )
            logits = F.linear(h.to(last.dtype), model.mel_head.weight, model.mel_head.bias)
        else:
            logits = model.mel_head(model.final_norm(gpt.ln_f(last)))
        self.logits.copy_(logits.float())

    # -- the loop ----------------------------------------------------------------------------

    def _run_step(self, step: int) -> None:
        end = self._window(step)
        if not self.use_graph:
            self._eager_step(end)
            return
        w, cur = self._graph_key(step)
        if (w, cur) not in self.graphs and self.warm:
            self._capture_window(w, step)  # the pieces ran once: capture without an eager step
            if not self.use_graph:  # capture failed: this step (and the rest) run eagerly
                self._eager_step(end)
                return
        graph = self.graphs.get((w, cur))
        if graph is not None:
            graph.replay()
            if self.swap:
                self._use(1 - cur)  # what the replayed step did on the device
            return
        # The very first step: run it eagerly (it compiles what the variant compiles and is the
        # warm-up that capture needs), then capture the rest of its bucket.
        self._eager_step(end)
        self.warm = True
        self._capture_window(w, step if self.keeps_graphs else step + 1)
        self._capture_ahead(step + 1, self.check_every)  # windows before the first check

    def _eager_step(self, end: int) -> None:
        """Run a step eagerly, on the capture stream where there is one (warm-up before capture
        belongs on the stream that captures)."""
        self.eager_steps += 1
        stream = self.stream
        if stream is None:
            self._step(end)
            return
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self._step(end)
        torch.cuda.current_stream(self.device).wait_stream(stream)

    def _capture_window(self, w: int, first: int) -> None:
        """Capture the graphs that steps ``first`` .. end of window bucket ``w`` replay: one,
        or with reorder="swap" one per cache in use before the step (step ``s`` starts on
        cache ``s % 2``: every step swaps)."""
        last = self._window_steps(w).stop - 1
        if first > last:
            return
        end = self._window(first)
        self._warm_window(end)
        now = self.cur
        for cur in sorted(
            {s % 2 for s in range(first, min(first + 2, last + 1))} if self.swap else {0}
        ):
            if (w, cur) in self.graphs:
                continue
            self._use(cur)
            captured = self._capture(w, end)
            self._use(now)
            if not captured:
                return

    def _capture_ahead(self, step: int, steps: int) -> None:
        """Capture the graphs of the buckets that steps ``step`` .. ``step + steps - 1`` enter,
        before they are needed. Called just before the host waits for the GPU (the "all
        finished?" test), with up to ``steps`` replayed steps queued: the host time of the
        captures then overlaps the GPU's work instead of stalling it at a bucket's first step.
        """
        last = min(step + steps, self.max_new) - 1
        if not (self.use_graph and self.warm and self.ahead) or last < step:
            return
        for w in range(self._window_index(step), self._window_index(last) + 1):
            self._capture_window(w, max(step, self._window_steps(w).start))

    def _warm_window(self, end: int) -> None:
        """Run the attention over a new cache window once, eagerly, on a zero query (the result
        is dropped; nothing is written): a library that prepares per shape on its first call
        (cuDNN's attention plans, a Triton compile) must not do so during capture."""
        if end in self.warm_windows:
            return
        kc, vc = self.cache.k[0], self.cache.v[0]
        rows, heads, _, head_dim = kc.shape
        kind = self.device.type
        if self.fused is not None:  # the fused stack runs without autocast
            dtype, ctx = self.fused.dtype, torch.autocast(kind, enabled=False)
        else:
            dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else kc.dtype
            ctx = contextlib.nullcontext()
        q = torch.zeros((rows, heads, 1, head_dim), dtype=dtype, device=kc.device)
        mask = torch.zeros((rows, 1, 1, end), dtype=dtype, device=kc.device)
        with ctx:  # (with read_ahead, the kernel that the step runs: it reads ahead)
            self._attend_fn(end, self.first_pos.view(1))(q, kc[:, :, :end], vc[:, :, :end], mask)
        self.warm_windows.add(end)

    def _capture(self, w: int, end: int) -> bool:
        """Capture the step of window bucket ``w`` for the cache in use; False if capture
        failed (the decoder then runs eagerly)."""
        from tts.fast.graphs import capture

        key = (w, self.cur)
        start = time.perf_counter()
        graph = torch.cuda.CUDAGraph()
        saved = self.step_t.clone()
        gens = generator_list(self.generator)
        try:
            capture(
                graph, lambda: self._step(end), stream=self.stream, pool=self.pool, generators=gens
            )
        except Exception as exc:  # noqa: BLE001 - keep generating, eagerly
            from tts.fast import fallback

            fallback("GPT decode step CUDA graph capture", exc)
            self.use_graph = False
            self.step_t.copy_(saved)
            return False
        self.step_t.copy_(saved)  # capture records kernels only; keep the counter exact
        if self.pool is None:
            self.pool = graph.pool()
        self.graphs[key] = graph
        self.capture_s += time.perf_counter() - start
        return True

    def _checkpoint(self, step: int, check_every: int) -> bool:
        """After ``step`` steps: every ``check_every`` steps, capture the graphs the next steps
        need (:meth:`_capture_ahead`), then test whether every row is finished (the one host
        synchronisation of the loop). True: stop."""
        if step % check_every:
            return False
        self._capture_ahead(step, check_every)
        return self._all_finished()

    def _all_finished(self) -> bool:
        done = ~self.unfinished.any() if self.beams == 1 else self.beam.done.all()
        if self.invalid is None:
            return bool(done)
        # One transfer for both: the finished test and the choice kernels' validity flag.
        done, invalid = torch.stack((done.to(torch.int32), self.invalid[0])).tolist()
        if invalid:
            raise RuntimeError(INVALID_PROBABILITIES)
        return bool(done)

    def run(self, check_every: int = 1, stats: dict | None = None) -> GenerationOutput:
        cuda = self.device.type == "cuda"
        self.check_every = check_every
        if stats is not None:
            if cuda:
                begin = torch.cuda.Event(enable_timing=True)
                begin.record()
            else:
                begin = time.perf_counter()
        step, started, first_step_s = 0, time.perf_counter(), 0.0
        graphs_before = len(self.graphs)
        try:
            while True:
                self._run_step(step)
                if step == 0:  # host time: its eager run (compiles what the variant compiles),
                    first_step_s = time.perf_counter() - started  # captures
                step += 1
                if step >= self.max_new or self._checkpoint(step, check_every):
                    break
        finally:
            self.written_to = self.s_len + 2 + step  # at most one step more than counted
            self._give_back_generators()
        if self.invalid is not None and int(self.invalid[0]):
            raise RuntimeError(INVALID_PROBABILITIES)
        if stats is not None:
            if cuda:
                end = torch.cuda.Event(enable_timing=True)
                end.record()
                end.synchronize()
                stats["loop_s"] = begin.elapsed_time(end) / 1e3
            else:
                stats["loop_s"] = time.perf_counter() - begin
            stats["steps"] = step
            stats["graphs"] = len(self.graphs)
            stats["captured"] = len(self.graphs) - graphs_before  # in this call
            stats["eager_steps"] = self.eager_steps  # steps run outside a graph (CUDA: <= 1)
            stats["capture_s"] = self.capture_s
            stats["first_step_s"] = first_step_s
            stats["fused"] = self.fused is not None  # False: not asked for, or fell back
            stats["matmul"] = self.fused.matmul if self.fused is not None else None
            stats["attention"] = self.attend.keywords["kind"]
            stats["reorder"] = "swap" if self.swap else "table" if self.table else "copy"
        return self._result(step)

    def _result(self, steps_run: int) -> GenerationOutput:
        cfg = self.cfg
        if self.beams == 1:
            steps = min(int(self.finished_at.max()) + 1, steps_run)
            codes = self.tokens[:, :steps].clone()
            out = GenerationOutput(codes=codes, hit_limit=codes[:, -1] != self.stop, steps=steps)
        else:
            # finalize() adds the open beams as hypotheses by replacing the hypotheses'
            # tensors: on copies, so the ones the graphs write stay the decoder's
            st = copy.copy(self.beam)
            st.hyps = copy.copy(st.hyps)
            st.hyps._added = steps_run * self.beams  # what the eager stamps would have reached
            out = st.finalize(self.tokens, steps_run, cfg.num_return_sequences, self.stop, self.pad)
            steps = st.steps_needed(steps_run)
            out.steps = steps
        if self.output_scores:
            out.scores = self.rec_scores[:steps].clone()
        if self.output_logits:
            out.logits = self.rec_logits[:steps].clone()
        if cfg.warn_on_limit and bool(out.hit_limit.any()):
            import warnings

            warnings.warn(
                f"generation stopped at max_mel_tokens ({self.max_new}) before the stop code for "
                f"{int(out.hit_limit.sum())} of {out.hit_limit.numel()} sequence(s); the speech is "
                "probably cut. Use shorter text segments or a larger max_mel_tokens.",
                RuntimeWarning,
                stacklevel=3,
            )
        return out
