"""Fused pieces of the GPT decode step (torch.compile / Inductor) for :mod:`tts.fast.decode`.

A decode step feeds one token per row (``[rows, 1, width]``). Run op by op, one GPT-2 layer is
~30 small kernels: LayerNorms (under autocast: float32 copies of the input and of the weights,
then casts back), GEMMs, bias adds, GELU, residual adds, the two KV writes. Here a layer is two
compiled pure functions around the attention:

* ``pre``: ln_1, qkv projection + bias, split into heads, and the new key / value written into
  the layer's cache at the step's position (in place); returns the queries;
* ``post``: out projection + bias + residual, ln_2, fc + bias + GELU(tanh), proj + bias +
  residual; returns the new hidden state;

plus ``embed`` (code embedding + position row) and ``head`` (ln_f, final_norm, mel_head, into
the float32 logits buffer). The attention itself stays eager (``F.scaled_dot_product_attention``
over the cache window of the bucket, whose length changes from bucket to bucket).

Weights are arguments, so one compiled function serves every layer. Inductor specialises on the
step shape (rows, width, heads, dtype; ``dynamic=False``); the one dimension left symbolic is the
cache capacity (``torch._dynamo.mark_dynamic``), so calls with other prompt lengths and every
window bucket share the compiled code. Every shape gets its own copy of the function's code
object: Dynamo keeps compiled entries (and its recompile limit of 8) per code object, so a
process that sees many batch sizes never runs into that limit.

The stack runs in the weights' dtype with autocast off: LayerNorm statistics are computed in
float32 inside the fused kernel and the result is rounded to the weights' dtype, which is what
autocast's float32 LayerNorm followed by the next matmul's cast computes, without the separate
copy and cast kernels.

``matmul="reduce"`` writes each projection as a multiply-and-sum over the input width, which
Inductor generates as one reduction kernel per projection (bias, GELU and residual in its
epilogue) instead of a cuBLAS GEMM plus an epilogue kernel: with a handful of rows a
projection is a matrix-vector product whose cost is reading the weights once. It is laid out
output-major (``[out, rows]``), so the rows sharing a weight row are computed by one program.
Products and sums are float32, like cuBLAS's accumulation. Whether it beats cuBLAS is for the
GPU measurement to say (scripts/device/decode_profile.py).

``matmul="triton"`` replaces ``pre`` and ``post`` by the hand-written few-row kernels of
:mod:`tts.fast.linear` (bias, GELU, residual and KV write fused into the projections, the two
LayerNorms as small kernels of their own: six kernels per layer plus the attention; with
``pdl=True`` each launched while the one before it runs) when the step has at most 8 rows
(batch x beams); with more rows it is ``"mm"`` (cuBLAS's tensor cores win there). ``embed``
and ``head`` stay compiled.

``matmul="autotune"`` keeps the GEMMs but compiles with Inductor's max-autotune: per shape it
times its Triton GEMM templates (epilogues fused) against cuBLAS and keeps the fastest. The
first compile takes minutes; Inductor caches the choice on disk for later processes.

``compile=False`` runs the same pure functions op by op (inside the decoder's CUDA graphs all
the same): a few more small kernels per step, but nothing is traced or compiled, so neither
TorchDynamo nor Inductor is imported. That suits a process that makes one GPT call, such as a
workflow job, where the compiles took 5 s with warm caches and 20 s with empty ones (H200,
docs/benchmarks.md, run AS). In half precision, where Triton runs, its LayerNorms are
:func:`tts.fast.linear.layer_norm`'s one kernel instead of torch's five. In float32 its
projections are a cuBLAS GEMM and a bias add: ``F.linear``'s bias epilogue made the float32
step at 48 rows 1.8x slower (H100, run BZ).
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable

import torch
import torch.nn.functional as F

MATMULS = ("mm", "reduce", "autotune", "triton")


def _norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over the last dimension with float32 statistics, rounded to ``x``'s dtype."""
    return F.layer_norm(x.float(), w.shape, w.float(), b.float(), eps).to(x.dtype)


def _proj(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, reduce: bool) -> torch.Tensor:
    """``F.linear(x, w, b)`` for ``x`` [rows, 1, in], ``w`` [out, in]; see the module notes."""
    if not reduce:
        return F.linear(x, w, b)
    rows = x.size(0)
    acc = (w.float().unsqueeze(1) * x.float().reshape(1, rows, -1)).sum(-1)  # [out, rows]
    return (acc + b.float().unsqueeze(1)).t().to(x.dtype).reshape(rows, 1, -1)


def _gemm_add(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, reduce: bool) -> torch.Tensor:
    """:func:`_proj` as a cuBLAS GEMM and a bias add: op by op in float32, cuBLASLt's bias
    epilogue (``F.linear``) ran twice as slowly at these row counts (docs/benchmarks.md, run
    BZ)."""
    return _proj(x, w, b, reduce) if reduce else torch.matmul(x, w.t()) + b


def _row_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """:func:`_norm` as :func:`tts.fast.linear.layer_norm`'s one kernel (op by op, the float32
    copies of ``x`` and of the parameters and the cast back are four more kernels each)."""
    from tts.fast import linear

    return linear.layer_norm(x.reshape(-1, x.size(-1)), w, b, eps).view(x.shape)


def _pre(
    x,
    ln_w,
    ln_b,
    eps: float,
    w_qkv,
    b_qkv,
    kc,
    vc,
    pos,
    heads: int,
    reduce: bool,
    norm=_norm,
    proj=_proj,
):
    """Queries ``[rows, heads, 1, head_dim]`` of layer input ``x``; writes the step's key and
    value at cache position ``pos`` (a 1-element device tensor) of ``kc`` / ``vc``."""
    rows, _, dim = x.shape
    qkv = proj(norm(x, ln_w, ln_b, eps), w_qkv, b_qkv, reduce)
    q, k, v = (t.view(rows, 1, heads, dim // heads).transpose(1, 2) for t in qkv.split(dim, 2))
    kc.index_copy_(2, pos, k.to(kc.dtype))
    vc.index_copy_(2, pos, v.to(vc.dtype))
    return q


def _post(
    x,
    att,
    w_o,
    b_o,
    ln_w,
    ln_b,
    eps: float,
    w_fc,
    b_fc,
    w_proj,
    b_proj,
    reduce: bool,
    norm=_norm,
    proj=_proj,
):
    """The rest of the layer after attention output ``att`` [rows, heads, 1, head_dim]."""
    rows, _, dim = x.shape
    x = x + proj(att.transpose(1, 2).reshape(rows, 1, dim), w_o, b_o, reduce)
    h = F.gelu(proj(norm(x, ln_w, ln_b, eps), w_fc, b_fc, reduce), approximate="tanh")
    return x + proj(h, w_proj, b_proj, reduce)


def _embed(tokens, j, emb_w, pos_w):
    """Input of the step: code embedding + position row ``j + 2`` (kept inside the table; the
    last step feeds a token nobody reads)."""
    row = (j.view(1) + 2).clamp_max(pos_w.size(0) - 1)
    return (F.embedding(tokens, emb_w) + pos_w.index_select(0, row)).unsqueeze(1)


def _head(
    x,
    f_w,
    f_b,
    f_eps: float,
    n_w,
    n_b,
    n_eps: float,
    w_head,
    b_head,
    out,
    reduce: bool,
    norm=_norm,
    proj=_proj,
):
    """Logits of the last hidden state into ``out`` [rows, vocab] (float32): both final norms in
    float32, the head in the weights' dtype."""
    h = norm(norm(x[:, -1].float(), f_w, f_b, f_eps), n_w, n_b, n_eps)
    logits = proj(h.to(x.dtype).unsqueeze(1), w_head, b_head, reduce).squeeze(1)
    out.copy_(logits.float())


_FUNCTIONS = {"pre": _pre, "post": _post, "embed": _embed, "head": _head}
_COMPILED: dict[tuple, Callable] = {}


def _own_code(fn: Callable) -> Callable:
    """``fn`` with a fresh code object (Dynamo's compile cache and limit are per code object)."""
    return types.FunctionType(
        fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
    )


def compiled(name: str, key: tuple) -> Callable:
    """The compiled function ``name`` for step shape ``key`` (made once per process)."""
    fn = _COMPILED.get((name, key))
    if fn is None:
        # key[-1] is the matmul mode: "autotune" lets Inductor time Triton GEMM templates
        # (with bias / GELU / residual fused into their epilogues) against cuBLAS per shape.
        mode = "max-autotune-no-cudagraphs" if key[-1] == "autotune" else None
        fn = _COMPILED[(name, key)] = torch.compile(
            _own_code(_FUNCTIONS[name]), dynamic=False, fullgraph=True, mode=mode
        )
    return fn


class FusedStack:
    """The decode step's GPT through the compiled pieces, for one decoder's row count.

    ``matrices``: per layer ``(w_qkv, b_qkv, w_o, b_o, w_fc, b_fc, w_proj, b_proj)`` with the
    matrices ``[out, in]`` (tts.fast.decode.DecodeWeights). Call :meth:`step` with the step's
    tokens and the layer caches; it writes the logits into ``out``. ``pdl``: the Triton
    projections' programmatic dependent launch (``matmul="triton"``).
    """

    def __init__(
        self,
        model,
        matrices,
        rows: int,
        matmul: str = "mm",
        pdl: bool = False,
        compile: bool = True,
    ):
        if matmul not in MATMULS:
            raise ValueError(f"matmul {matmul!r} is not one of {MATMULS}")
        from tts.fast import linear

        # What the projections really run on: "triton" keeps cuBLAS above linear.MAX_ROWS.
        self.matmul = matmul = "mm" if matmul == "triton" and rows > linear.MAX_ROWS else matmul
        gpt = model.gpt
        self.reduce = matmul == "reduce"
        attn = gpt.h[0].attn
        self.heads, self.head_dim = attn.heads, attn.head_dim
        self.layers = []
        for block, (w_qkv, b_qkv, w_o, b_o, w_fc, b_fc, w_proj, b_proj) in zip(
            gpt.h, matrices, strict=True
        ):
            self.layers.append(
                (
                    (
                        block.ln_1.weight.detach(),
                        block.ln_1.bias.detach(),
                        block.ln_1.eps,
                        w_qkv,
                        b_qkv,
                    ),
                    (
                        w_o,
                        b_o,
                        block.ln_2.weight.detach(),
                        block.ln_2.bias.detach(),
                        block.ln_2.eps,
                        w_fc,
                        b_fc,
                        w_proj,
                        b_proj,
                    ),
                )
            )
        self.tables = (
            model.mel_embedding.weight.detach(),
            model.mel_pos_embedding.emb.weight.detach(),
        )
        self.head = (
            gpt.ln_f.weight.detach(),
            gpt.ln_f.bias.detach(),
            gpt.ln_f.eps,
            model.final_norm.weight.detach(),
            model.final_norm.bias.detach(),
            model.final_norm.eps,
            model.mel_head.weight.detach(),
            model.mel_head.bias.detach(),
        )
        weight = model.mel_head.weight
        self.dtype = weight.dtype
        self.key = (rows, model.model_dim, self.heads, weight.dtype, weight.device.type, matmul)
        self.compile = compile
        if compile:
            self.fns = {name: compiled(name, self.key) for name in _FUNCTIONS}
        else:
            self.key += ("op by op",)
            self.fns = dict(_FUNCTIONS)
            chosen = {}
            if linear.available(weight) and weight.dtype != torch.float32:
                # In half precision torch's LayerNorm op by op is five kernels (float32 copies
                # of input, weight and bias, the norm, the cast back), Triton's one; in float32
                # both are one. At 48 rows in bf16 the op-by-op step took 2.45 ms against 1.68
                # compiled (H200, docs/benchmarks.md, run BY).
                chosen["norm"] = _row_norm
            if weight.dtype == torch.float32:
                chosen["proj"] = _gemm_add  # what compiles keeps F.linear, as measured
            if chosen:
                for name in ("pre", "post", "head"):
                    self.fns[name] = functools.partial(_FUNCTIONS[name], **chosen)
        if matmul == "triton":
            if not linear.available(weight):
                raise RuntimeError("matmul='triton' needs CUDA (or TRITON_INTERPRET=1)")
            self.fns["pre"] = functools.partial(linear.decode_pre, pdl=pdl)
            self.fns["post"] = functools.partial(linear.decode_post, pdl=pdl)
            if linear.on_tensor_cores(weight.dtype, weight.size(1)):
                # the head on tensor cores too: 8194 x 1280 at full size, read while the last
                # layer's proj runs (PDL), where the compiled head's GEMM cannot start early
                self.fns["head"] = functools.partial(linear.decode_head, pdl=pdl)

    def mark_cache(self, views: list[torch.Tensor]) -> None:
        """Let the cache length (dim 2 of ``[rows, heads, capacity, head_dim]``) vary in the
        compiled pieces (nothing to do op by op)."""
        if not self.compile:
            return
        for view in views:
            torch._dynamo.mark_dynamic(view, 2)

    def step(
        self,
        tokens,
        j,
        pos,
        mask,
        end: int,
        ks: list[torch.Tensor],
        vs: list[torch.Tensor],
        out: torch.Tensor,
        attend: Callable,
    ) -> None:
        """Feed ``tokens`` [rows] (step ``j``, cache position ``pos``) through the stack;
        ``attend(q, k, v, mask)`` is the attention over the window ``[0, end)``."""
        fns, reduce = self.fns, self.reduce
        x = fns["embed"](tokens, j, *self.tables)
        for (pre, post), kc, vc in zip(self.layers, ks, vs, strict=True):
            q = fns["pre"](x, *pre, kc, vc, pos, self.heads, reduce)
            att = attend(q, kc[:, :, :end], vc[:, :, :end], mask)
            x = fns["post"](x, att, *post, reduce)
        fns["head"](x, *self.head, out, reduce)
