"""Fast flow-matching decoder: fused weight norm, flash attention, precision choice, CUDA graph.

The Euler loop of :meth:`tts.models.cfm.CFM.solve` is reused unchanged (it already runs both
classifier-free-guidance branches as one batch of 2B); what changes is the estimator it calls and
how the loop is launched:

* a private inference copy of the DiT with every weight-normed layer (``weight_g``/``weight_v``)
  replaced by a plain layer holding ``g * v / ||v||`` computed once (the reference recomputes it
  in every call, 25 x 2 x ~20 times per utterance);
* when no row is padded (every ``x_lens`` covers the whole sequence, as in single-segment
  inference) the all-true key mask is dropped, so SDPA can pick flash attention;
* ``precision``: ``float32`` (the reference), ``tf32`` (float32 tensors, TF32 matrix units) or
  ``bfloat16`` / ``float16`` (autocast, on a copy whose matrix weights are stored in that dtype
  and whose WaveNet convolutions run channels-last: :meth:`FusedEstimator.for_precision`);
  parity bounds for each are in docs/gpu.md;
* on CUDA the whole loop (25 steps x 13 DiT layers + WaveNet, ~10k kernels) is captured as one
  CUDA graph per input shape and replayed; the host never waits inside the loop.
"""

from __future__ import annotations

import copy
import types
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from tts.fast.graphs import GraphCache
from tts.models import cfm as _cfm
from tts.models import dit as _dit
from tts.precision import HALF, precision_context

# The plain solver, kept before tts.fast.patched() can replace CFM.solve.
PLAIN_SOLVE = _cfm.CFM.solve
MAX_GRAPHS = 8
# Dynamo keeps one cache entry of the DiT's forward per compiled estimator and input shape, in
# one cache for the whole process; past its limit (8 by default) it would run later ones
# eagerly with only a warning (docs/benchmarks.md, run DL).
RECOMPILE_LIMIT = 64


class _FusedConv1d(nn.Module):
    """A Conv1d with a fixed (already weight-normalised) weight and no padding of its own.

    ``channels_last``: run it as a 2-d convolution on a channels-last ``[B, C, 1, T]`` view, so
    that cuDNN's NHWC kernels need no layout transposes around them (a tenth of a half-precision
    DiT call at batch 1, docs/benchmarks.md, runs DD-DF); under torch.compile the layout change
    is written by the kernel before. Other rounding than the 1-d form: half precision only.
    :meth:`set_channels_last` stores the weight in that layout once, so no call copies it."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.dilation = dilation
        self.channels_last = False

    def set_channels_last(self, on: bool) -> None:
        """Run as the channels-last 2-d convolution (``on``) or as the plain 1-d one, with the
        weight stored for that form: [out, in, k] in (out, k, in) order for the former, so that
        its [out, in, 1, k] view is already channels-last (run DF's profile: 8 weight copies a
        DiT call otherwise), and contiguous for the latter, whose cuDNN kernel would otherwise
        follow the weight's layout."""
        w = self.weight.data
        self.weight.data = w.transpose(1, 2).contiguous().transpose(1, 2) if on else w.contiguous()
        self.channels_last = on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.channels_last:
            return F.conv1d(x, self.weight, self.bias, dilation=self.dilation)
        x4 = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        w4 = self.weight.unsqueeze(2)  # channels-last already (set_channels_last)
        return F.conv2d(x4, w4, self.bias, dilation=(1, self.dilation)).squeeze(2)


class _MaskSwitch(nn.Module):
    """Wraps the DiT transformer; passes no key mask when ``drop`` is set (no padded row)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.drop = False

    def forward(self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.inner(x, c, None if self.drop else mask)


class _Compiled(nn.Module):
    """``torch.compile`` of an estimator whose calls never fall back to eager silently: they
    run with room for :data:`RECOMPILE_LIMIT` entries in Dynamo's cache, and past it they
    raise (which :func:`solve` records as a fallback) instead of running uncompiled."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = torch.compile(module, dynamic=False)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        limit = max(RECOMPILE_LIMIT, torch._dynamo.config.recompile_limit)
        with torch._dynamo.config.patch(recompile_limit=limit, fail_on_recompile_limit_hit=True):
            return self.module(*args)


class FusedEstimator:
    """The inference copy of one DiT and the graphs captured for it."""

    def __init__(self, dit: nn.Module) -> None:
        with torch.no_grad():
            est = copy.deepcopy(dit).eval()
            for module in list(est.modules()):
                for name, child in list(module.named_children()):
                    if isinstance(child, _dit.WNLinear):
                        w = _dit.fuse_weight_norm(child.weight_g, child.weight_v)
                        lin = nn.Linear(w.size(1), w.size(0), device=w.device, dtype=w.dtype)
                        lin.weight.copy_(w)
                        lin.bias.copy_(child.bias)
                        setattr(module, name, lin)
                    elif isinstance(child, _dit.WNConv1d):
                        w = _dit.fuse_weight_norm(child.weight_g, child.weight_v)
                        setattr(
                            module,
                            name,
                            _FusedConv1d(w.clone(), child.bias.clone(), child.dilation),
                        )
            est.transformer = _MaskSwitch(est.transformer)
            for p in est.parameters():
                p.requires_grad_(False)
        self.estimator = est
        self.versions = _versions(dit)
        self.graphs = GraphCache(MAX_GRAPHS)  # the solve's, per input shape and settings
        self._half: dict[str, nn.Module] = {}
        self._compiled: dict[str, nn.Module] = {}
        self.compile_failed = False

    def for_precision(self, precision: str) -> nn.Module:
        """The estimator to run under ``precision``. For ``bfloat16`` / ``float16`` a copy
        whose matrix layers (Linear, Conv1d) hold their weights and biases in that dtype, made
        on first use: autocast would cast them to it in every call anyway (about a hundred
        small kernels per DiT call, a tenth of its GPU time at batch 1: docs/benchmarks.md, run
        DD), and their products take the same operands either way. Everything else (norm
        scales, embeddings) stays float32, as autocast leaves it."""
        if precision not in HALF:
            return self.estimator
        if precision not in self._half:
            half = copy.deepcopy(self.estimator)
            for module in half.modules():
                if isinstance(module, (nn.Linear, nn.Conv1d, _FusedConv1d)):
                    module.to(HALF[precision])
                if isinstance(module, _FusedConv1d):
                    module.set_channels_last(True)
            self._half[precision] = half
        return self._half[precision]

    def compiled(self, precision: str = "float32") -> nn.Module:
        """``torch.compile`` of :meth:`for_precision`'s estimator (Inductor fuses the norm /
        RoPE / gating elementwise work between the matrix products); built on first use. Its
        calls compile or raise, never run eagerly unnoticed (:class:`_Compiled`)."""
        key = precision if precision in HALF else "float32"
        if key not in self._compiled:
            self._compiled[key] = _Compiled(self.for_precision(precision))
        return self._compiled[key]


_FUSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _versions(module: nn.Module) -> tuple:
    return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in module.parameters())


def fused(dit: nn.Module) -> FusedEstimator:
    """The fused copy of ``dit`` (made on first use; remade if its weights changed)."""
    entry = _FUSED.get(dit)
    if entry is None or entry.versions != _versions(dit):
        entry = _FUSED[dit] = FusedEstimator(dit)
    return entry


@torch.no_grad()
def solve(
    cfm: nn.Module,
    z: torch.Tensor,
    x_lens: torch.Tensor,
    prompt: torch.Tensor,
    mu: torch.Tensor,
    style: torch.Tensor,
    t_span: torch.Tensor,
    cfg_rate: float = 0.7,
    trace: dict | None = None,
    *,
    precision: str = "float32",
    graphs: bool | None = None,
    compile: bool = False,
    prompt_lens: torch.Tensor | None = None,
) -> torch.Tensor:
    """:meth:`CFM.solve` through the fused estimator (same arguments, same result).

    ``compile``: run the estimator through ``torch.compile`` (falls back to the uncompiled
    one, recorded in :data:`tts.fast.FALLBACKS`, if compiling fails). ``prompt_lens``: as
    :meth:`CFM.solve` (rows with prompts of different lengths; no CUDA graph then).
    """
    entry = fused(cfm.estimator)
    est = entry.for_precision(precision)
    # One host check before the loop: is any row padded? (x_lens lives on the device.)
    est.transformer.drop = bool((x_lens >= z.size(-1)).all())
    use_compiled = compile and not entry.compile_failed
    proxy = types.SimpleNamespace(
        estimator=entry.compiled(precision) if use_compiled else est,
        zero_prompt_speech_token=cfm.zero_prompt_speech_token,
    )
    if graphs is None:
        graphs = z.device.type == "cuda"
    try:
        if trace is not None or not graphs or prompt_lens is not None:
            with precision_context(precision, z.device):
                return PLAIN_SOLVE(
                    proxy, z, x_lens, prompt, mu, style, t_span, cfg_rate, trace, prompt_lens
                )
        return _graph_solve(
            entry,
            proxy,
            (z, x_lens, prompt, mu, style, t_span),
            cfg_rate,
            precision,
            use_compiled,
            est.transformer.drop,
        )
    except Exception as exc:
        if not use_compiled:
            raise
        from tts.fast import fallback

        fallback("s2mel estimator torch.compile", exc)
        entry.compile_failed = True
        return solve(
            cfm,
            z,
            x_lens,
            prompt,
            mu,
            style,
            t_span,
            cfg_rate,
            trace,
            precision=precision,
            graphs=graphs,
            compile=False,
            prompt_lens=prompt_lens,
        )


def _graph_solve(
    entry: FusedEstimator,
    proxy,
    inputs: tuple,
    cfg_rate: float,
    precision: str,
    compiled: bool = False,
    drop: bool = False,
) -> torch.Tensor:
    """The plain Euler solve of ``inputs`` through a CUDA graph kept per input shape and
    settings in ``entry.graphs``: a key's first call runs eagerly and captures the graph,
    later calls copy their inputs into its buffers and replay it."""
    device = inputs[0].device
    # cuDNN's mode is in the key: a graph keeps the kernels chosen when it was captured.
    key = (
        tuple((tuple(t.shape), t.dtype) for t in inputs),
        float(cfg_rate),
        precision,
        drop,
        compiled,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    if entry.graphs.failed(key):  # eager
        with precision_context(precision, device):
            return PLAIN_SOLVE(proxy, *inputs, cfg_rate, None)
    hit = entry.graphs.use(key)
    if hit is not None:
        graph, static_in, static_out = hit
        for dst, src in zip(static_in, inputs, strict=True):
            dst.copy_(src)
        graph.replay()
        return static_out.clone()
    static_in = tuple(t.clone() for t in inputs)

    def solve_static() -> torch.Tensor:
        with precision_context(precision, device):
            return PLAIN_SOLVE(proxy, *static_in, cfg_rate, None)

    # The eager run is this call's result and the capture's warm-up.
    return entry.graphs.capture(
        key,
        solve_static,
        solve_static,
        static_in,
        device=device,
        what="CFM solve CUDA graph capture",
    )


def patched_solve(graphs: bool | None = None, precision: str = "float32", compile: bool = False):
    """A replacement for ``CFM.solve`` that routes through :func:`solve`."""

    def fast_solve(
        self, z, x_lens, prompt, mu, style, t_span, cfg_rate=0.7, trace=None, prompt_lens=None
    ):
        return solve(
            self,
            z,
            x_lens,
            prompt,
            mu,
            style,
            t_span,
            cfg_rate,
            trace,
            precision=precision,
            graphs=graphs,
            compile=compile,
            prompt_lens=prompt_lens,
        )

    return fast_solve


@torch.no_grad()
def generate_batch(
    s2mel: nn.Module,
    semantic: torch.Tensor,
    gpt_latent: torch.Tensor,
    prompt_condition: torch.Tensor,
    ref_mel: torch.Tensor,
    style: torch.Tensor,
    n_timesteps: int = 25,
    cfg_rate: float = 0.7,
    temperature: float = 1.0,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    precision: str = "float32",
    graphs: bool | None = None,
    compile: bool = False,
) -> torch.Tensor:
    """:meth:`S2Mel.generate` for B rows of equal code length, in one CFM batch (2B with CFG).

    Shapes as S2Mel.generate with B rows: ``semantic [B, T, 1024]``, ``gpt_latent [B, T, 1280]``,
    ``prompt_condition [B, T_ref, C]``, ``ref_mel [B, 80, T_ref]``, ``style [B, 192]``;
    returns ``[B, 80, T_gen]``.
    """
    cfm = s2mel.cfm
    b = semantic.size(0)
    cat = s2mel.condition(semantic, gpt_latent, prompt_condition)
    x_lens = torch.full((b,), cat.size(1), device=cat.device)
    frames = cat.size(1)
    if noise is None:
        device = generator.device if generator is not None else cat.device
        noise = torch.randn([b, cfm.in_channels, frames], device=device, generator=generator)
        noise = noise.to(cat.device, cat.dtype) * temperature
    t_span = torch.linspace(0, 1, n_timesteps + 1, device=cat.device)
    mel = solve(
        cfm,
        noise,
        x_lens,
        ref_mel,
        cat,
        style,
        t_span,
        cfg_rate,
        precision=precision,
        graphs=graphs,
        compile=compile,
    )
    return mel[:, :, ref_mel.size(-1) :]


@torch.no_grad()
def generate_padded(
    s2mel: nn.Module,
    mus: list[torch.Tensor],
    noises: list[torch.Tensor],
    ref_mels: list[torch.Tensor],
    style: torch.Tensor,
    n_timesteps: int = 25,
    cfg_rate: float = 0.7,
    precision: str = "float32",
    compile: bool = False,
) -> list[torch.Tensor]:
    """The mels ``[1, 80, T_gen]`` of segments of unequal length, in one CFM batch.

    ``mus[i] [1, T_i, C]`` (:meth:`S2Mel.condition`: the segment's prompt condition, then its
    generated part), ``noises[i] [1, 80, T_i]`` (the scaled starting noise the segment alone
    would draw), ``ref_mels[i] [1, 80, T_ref_i]`` (its prompt mel) and ``style [B, 192]``. The
    rows are padded at the end to the longest; the DiT masks the padded keys and its WaveNet
    reflects at each row's own end, and a row's prompt frames are its own
    (``CFM.solve``'s ``prompt_lens`` when the prompts differ in length), so each row is the
    segment solved alone up to rounding (tests/test_fast.py). No CUDA graph: the shapes hardly
    ever repeat.
    """
    b = len(mus)
    if not b == len(noises) == len(ref_mels) == style.size(0):
        raise ValueError("generate_padded: one mu, noise, ref_mel and style row per segment")
    refs = [int(r.size(-1)) for r in ref_mels]
    ref_mel = ref_mels[0].new_zeros(b, ref_mels[0].size(1), max(refs))
    for i, r in enumerate(ref_mels):
        ref_mel[i, :, : refs[i]] = r[0]
    same_prompt = len(set(refs)) == 1
    lengths = [int(m.size(1)) for m in mus]
    frames = max(lengths)
    mu = mus[0].new_zeros(b, frames, mus[0].size(2))
    z = noises[0].new_zeros(b, noises[0].size(1), frames)
    for i, (m, n) in enumerate(zip(mus, noises, strict=True)):
        mu[i, : lengths[i]] = m[0]
        z[i, :, : lengths[i]] = n[0]
    x_lens = torch.tensor(lengths, device=mu.device)
    t_span = torch.linspace(0, 1, n_timesteps + 1, device=mu.device)
    mel = solve(
        s2mel.cfm,
        z,
        x_lens,
        ref_mel,
        mu,
        style,
        t_span,
        cfg_rate,
        precision=precision,
        graphs=False,
        compile=compile,
        prompt_lens=None if same_prompt else torch.tensor(refs, device=mu.device),
    )
    return [mel[i : i + 1, :, refs[i] : lengths[i]] for i in range(b)]
