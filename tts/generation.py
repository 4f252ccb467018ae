"""Autoregressive semantic-code generation for the UnifiedVoice GPT.

Reproduces what the reference gets from HF ``generate`` (its vendored copy of transformers'
``GenerationMixin._sample`` / ``_beam_search`` and ``BeamSearchScorer``), on a preallocated KV
cache, with every per-step decision made on the device:

* the prompt the reference feeds is ``S`` fake ids (all ``1``) followed by the start code; the
  fake ids are replaced by the prefix embeddings, but the repetition penalty still sees them, so
  ids ``1`` and ``start_mel`` (8192) are penalised from the first step;
* step 0 embeds the start code at mel position 0; from then on the token generated at step ``j``
  is fed with mel position ``j + 2`` (the reference derives the position from the attention-mask
  length, which already counts the start code; inherited from Tortoise);
* greedy / multinomial sampling (``num_beams == 1``): the penalty (and, when sampling,
  temperature, top-k, top-p) act on the raw logits; finished rows are padded with the stop code;
* beam search / beam sampling (``num_beams > 1``): the processors act on log-softmax scores,
  the running beam score is added, ``2 * num_beams`` candidates are taken per batch item (top-k,
  or a multinomial draw without replacement sorted by score) and a device-side port of
  ``BeamSearchScorer`` keeps the beams and the finished hypotheses (score = sum of processed
  log-probs / generated_len ** length_penalty, ``early_stopping=False`` heuristic, ties resolved
  like the reference's list bookkeeping). Initial beam scores are ``[0, -1e9, ...]``.

The only host synchronisations are one before the loop (is there any prompt padding?), the
"is everything finished?" test every ``check_every`` steps, and the final assembly.

Random numbers: ``generator`` is one ``torch.Generator`` (or None: torch's global RNG) that draws
for the whole batch, as the reference does, or a list with one Generator per batch item; with a
list, the draws of item ``i`` (its ``num_return_sequences`` rows when sampling, its one row of
beam candidates with beams) come from generator ``i`` only, so an item's codes do not depend on
which other items share the batch (see :func:`multinomial_rows`).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from tts.models.gpt import prefix_attention_mask

if TYPE_CHECKING:
    from collections.abc import Callable

    from tts.models.gpt import UnifiedVoice

# The reference's fake prompt is ``torch.ones``: this id is in every row's history.
FAKE_PROMPT_ID = 1

# One Generator for the whole batch, one per batch item, or None (torch's global RNG).
Generators = torch.Generator | list[torch.Generator] | tuple[torch.Generator, ...] | None


def generator_list(generator: Generators) -> list:
    """``generator`` as a list: the list or tuple's generators, else ``[generator]``."""
    return list(generator) if isinstance(generator, (list, tuple)) else [generator]


@dataclass(frozen=True)
class GenerationConfig:
    """Generation controls; defaults are the official ``infer_v2`` ones (beam sampling)."""

    do_sample: bool = True
    top_k: int | None = 30
    top_p: float | None = 0.8
    temperature: float | None = 0.8
    repetition_penalty: float = 10.0
    num_beams: int = 3
    length_penalty: float = 0.0
    early_stopping: bool = False
    max_mel_tokens: int = 1500
    num_return_sequences: int = 1
    warn_on_limit: bool = True

    def replace(self, **changes: object) -> GenerationConfig:
        """A copy with ``changes`` applied; unknown names raise TypeError."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"unknown generation option(s) {unknown}; known: {sorted(names)}")
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def validate(self) -> None:
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.max_mel_tokens < 1:
            raise ValueError(f"max_mel_tokens must be >= 1, got {self.max_mel_tokens}")
        if self.num_return_sequences < 1:
            raise ValueError("num_return_sequences must be >= 1")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ValueError("num_return_sequences cannot exceed num_beams")
        if self.do_sample and self.temperature is not None and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


@dataclass
class GenerationOutput:
    """What :func:`generate` returns.

    ``codes`` [N, n]: generated codes per returned sequence (N = batch * num_return_sequences),
    a finished sequence ends with the stop code, shorter ones are padded with it.
    ``scores`` / ``logits`` [steps, rows, vocab] (rows = batch * num_beams): per-step processed
    scores (what the selection saw, before adding beam scores) and raw logits, when requested.
    ``beam_indices`` [N, n] (beam search): the cache row each step of the returned sequence came
    from (-1 past its end). ``sequences_scores`` [N] (beam search): the hypothesis score.
    ``hit_limit`` [N]: the sequence does not end with the stop code (cut by ``max_mel_tokens``).
    """

    codes: torch.Tensor
    hit_limit: torch.Tensor
    steps: int
    scores: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    beam_indices: torch.Tensor | None = None
    sequences_scores: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------------
# Logits processors (the HF ones the reference's generate builds, in its order)
# ---------------------------------------------------------------------------------------------


def cumulative_probs(sorted_scores: torch.Tensor) -> torch.Tensor:
    """Top-p's cumulative probabilities of scores sorted in ascending order."""
    return sorted_scores.softmax(dim=-1).cumsum(dim=-1)


def process_scores(
    scores: torch.Tensor,
    seen: torch.Tensor,
    cfg: GenerationConfig,
    min_tokens_to_keep: int,
    cumulative: Callable[[torch.Tensor], torch.Tensor] = cumulative_probs,
    kth_largest: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Repetition penalty, then (sampling only) temperature, top-k, top-p.

    ``seen`` [rows, vocab] bool marks every id in the row's history (prompt ids included).
    The penalty multiplies negative scores and divides positive ones. ``cumulative`` computes
    top-p's cumulative probabilities (the compiled decoder passes one kept out of Inductor);
    ``kth_largest(scores, k)`` top-k's threshold, ``torch.topk(scores, k).values[..., -1:]``
    (the fast decoder passes :func:`tts.fast.topk.kth_largest`, which gives the same values).
    """
    if cfg.repetition_penalty != 1.0:
        p = cfg.repetition_penalty
        scores = torch.where(seen, torch.where(scores < 0, scores * p, scores / p), scores)
    if not cfg.do_sample:
        return scores
    if cfg.temperature is not None and cfg.temperature != 1.0:
        scores = scores / cfg.temperature
    if cfg.top_k is not None and cfg.top_k != 0:
        k = min(max(cfg.top_k, min_tokens_to_keep), scores.size(-1))
        kth = (
            torch.topk(scores, k).values[..., -1:]
            if kth_largest is None
            else kth_largest(scores, k)
        )
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if cfg.top_p is not None and cfg.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        drop_sorted = cumulative(sorted_scores) <= (1 - cfg.top_p)
        drop_sorted[..., -min_tokens_to_keep:] = False
        drop = drop_sorted.scatter(1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


# ---------------------------------------------------------------------------------------------
# Finished beam hypotheses, kept on the device
# ---------------------------------------------------------------------------------------------


class BeamHypotheses:
    """Per batch item, the best ``num_beams`` finished hypotheses (``BeamSearchScorer`` rules).

    A hypothesis is added when there is room or when its score beats the current worst; when
    full, the worst is evicted (the earliest added among equal worst scores). Scores are float64
    (python floats upstream). ``stamp`` orders additions, which breaks ties at selection.
    """

    def __init__(
        self,
        batch: int,
        num_beams: int,
        max_len: int,
        length_penalty: float,
        early_stopping: bool,
        pad: int,
        device: torch.device,
    ):
        self.num_beams = num_beams
        self.length_penalty = length_penalty
        self.early_stopping = early_stopping
        self.score = torch.full(
            (batch, num_beams), float("-inf"), dtype=torch.float64, device=device
        )
        self.valid = torch.zeros(batch, num_beams, dtype=torch.bool, device=device)
        self.stamp = torch.zeros(batch, num_beams, dtype=torch.int64, device=device)
        self.length = torch.zeros(batch, num_beams, dtype=torch.int64, device=device)
        self.tokens = torch.full((batch, num_beams, max_len), pad, dtype=torch.int64, device=device)
        self.beams = torch.full((batch, num_beams, max_len), -1, dtype=torch.int64, device=device)
        self.beams_len = torch.zeros(batch, num_beams, dtype=torch.int64, device=device)
        self._slots = torch.arange(num_beams, device=device)
        self._added = 0

    def denominator(self, generated_len: int) -> float:
        return float(generated_len**self.length_penalty)

    def worst(self) -> torch.Tensor:
        return torch.where(self.valid, self.score, torch.inf).amin(dim=1)

    def add(
        self,
        accept: torch.Tensor,
        score: torch.Tensor,
        tokens: torch.Tensor,
        length: int,
        beams: torch.Tensor,
        beams_len: int,
    ) -> None:
        """Offer one hypothesis per batch item (where ``accept``); ``score`` is already divided."""
        count = self.valid.sum(dim=1)
        worst = self.worst()
        has_room = count < self.num_beams
        take = accept & (has_room | (score > worst))
        first_empty = (~self.valid).to(torch.uint8).argmax(dim=1)
        ties = self.valid & (self.score == worst.unsqueeze(1))
        oldest_worst = torch.where(ties, self.stamp, torch.iinfo(torch.int64).max).argmin(dim=1)
        slot = torch.where(has_room, first_empty, oldest_worst)
        hit = (self._slots.unsqueeze(0) == slot.unsqueeze(1)) & take.unsqueeze(1)  # [B, K]
        self.score = torch.where(hit, score.unsqueeze(1), self.score)
        self.valid = self.valid | hit
        self.stamp = torch.where(hit, self._added, self.stamp)
        self.length = torch.where(hit, length, self.length)
        self.beams_len = torch.where(hit, beams_len, self.beams_len)
        self.tokens = torch.where(hit.unsqueeze(2), tokens.unsqueeze(1), self.tokens)
        self.beams = torch.where(hit.unsqueeze(2), beams.unsqueeze(1), self.beams)
        self._added += 1

    def is_done(self, best_running: torch.Tensor, generated_len: int) -> torch.Tensor:
        """[B] bool: full, and (early_stopping or no running beam can beat the worst kept)."""
        full = self.valid.sum(dim=1) >= self.num_beams
        if self.early_stopping:
            return full
        best = best_running.double() / self.denominator(generated_len)
        return full & (self.worst() >= best)

    def best(self, n: int) -> torch.Tensor:
        """Slot indices [B, n] of the best hypotheses: highest score, latest added on ties."""
        by_stamp = torch.argsort(self.stamp, dim=1, descending=True)
        ranked = torch.where(self.valid, self.score, float("-inf")).gather(1, by_stamp)
        order = torch.sort(ranked, dim=1, descending=True, stable=True).indices
        return by_stamp.gather(1, order)[:, :n]


# ---------------------------------------------------------------------------------------------
# Random draws, one generator per batch item
# ---------------------------------------------------------------------------------------------


def expand_rows(
    prefix: torch.Tensor, valid: torch.Tensor | None, cfg: GenerationConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prefix and its valid-position mask (all true when None) with, without beams, each
    item repeated ``num_return_sequences`` times (beams return their sequences from one row)."""
    if valid is None:
        valid = torch.ones(prefix.shape[:2], dtype=torch.bool, device=prefix.device)
    if cfg.num_beams == 1 and cfg.num_return_sequences > 1:
        prefix = prefix.repeat_interleave(cfg.num_return_sequences, dim=0)
        valid = valid.repeat_interleave(cfg.num_return_sequences, dim=0)
    return prefix, valid


def check_generators(generator: Generators, items: int) -> None:
    """A list of generators must hold exactly one Generator per batch item."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != items:
            raise ValueError(
                f"{len(generator)} generators for a batch of {items} items; pass one "
                "torch.Generator per item (or a single one for the whole batch)"
            )
        if not all(isinstance(g, torch.Generator) for g in generator):
            raise TypeError("every entry of the generator list must be a torch.Generator")


def multinomial_rows(probs: torch.Tensor, n: int, generator: Generators) -> torch.Tensor:
    """``torch.multinomial(probs, n)`` (without replacement) with per-item generators.

    A single Generator (or None) draws for all rows in one call. With a list of ``G``
    generators the rows split into ``G`` equal consecutive groups and group ``i`` is drawn by
    generator ``i`` alone (one call per group), so what group ``i`` gets depends only on its own
    probabilities and generator. A one-element list is the same call as that single Generator.
    """
    if not isinstance(generator, (list, tuple)):
        return torch.multinomial(probs, n, generator=generator)
    groups = len(generator)
    if groups == 0 or probs.size(0) % groups:
        raise ValueError(f"{probs.size(0)} rows do not split over {groups} generators")
    size = probs.size(0) // groups
    return torch.cat(
        [
            torch.multinomial(probs[i * size : (i + 1) * size], n, generator=g)
            for i, g in enumerate(generator)
        ]
    )


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def generate(
    model: UnifiedVoice,
    prefix: torch.Tensor,
    valid: torch.Tensor | None,
    cfg: GenerationConfig | None = None,
    *,
    generator: Generators = None,
    output_scores: bool = False,
    output_logits: bool = False,
    check_every: int = 1,
) -> GenerationOutput:
    """Generate codes after ``prefix`` [B, S, d] (from ``UnifiedVoice.prepare_gpt_inputs``).

    ``valid`` [B, S] marks real (non left-pad) prefix positions (None: all real).
    ``generator`` seeds sampling (None: torch's global RNG, like the reference): one Generator
    for the batch, or a list of B generators, item ``i`` drawing from generator ``i`` only.
    ``check_every`` = how many steps between "all finished?" host checks (1 = stop exactly
    when done, as the reference; larger values only add wasted steps, never change results).
    """
    cfg = cfg or GenerationConfig()
    cfg.validate()
    check_generators(generator, prefix.size(0))
    stop, start, pad = model.stop_mel_token, model.start_mel_token, model.stop_mel_token
    beams = cfg.num_beams
    max_new = cfg.max_mel_tokens
    device = prefix.device
    prefix, valid = expand_rows(prefix, valid, cfg)
    batch, s_len, _ = prefix.shape
    rows = batch * beams
    has_padding = not bool(valid.all())

    # Step 0: the whole prefix plus the start code (mel position 0), computed once per item.
    valid_all = F.pad(valid, (0, max_new), value=True)  # keys of every position ever cached
    start_tokens = torch.full((batch,), start, dtype=torch.int64, device=device)
    emb = torch.cat((prefix, model.mel_input_embedding(start_tokens, 0)), dim=1)
    mask = prefix_attention_mask(valid_all, s_len + 1) if has_padding else None
    cache = model.new_cache(rows, s_len + max_new, device=device, dtype=prefix.dtype)
    if beams == 1:
        logits = model.decode(emb, cache, mask)
    else:
        first = model.new_cache(batch, s_len + 1, device=device, dtype=prefix.dtype)
        logits = model.decode(emb, first, mask).repeat_interleave(beams, dim=0)
        cache.fill_repeated(first, beams)
        valid_all = valid_all.repeat_interleave(beams, dim=0)
        del first

    vocab = logits.size(-1)
    seen = torch.zeros(rows, vocab, dtype=torch.bool, device=device)
    seen[:, FAKE_PROMPT_ID] = True
    seen[:, start] = True
    tokens = torch.full((rows, max_new), pad, dtype=torch.int64, device=device)
    rec_scores: list[torch.Tensor] = []
    rec_logits: list[torch.Tensor] = []

    if beams == 1:
        state = _GreedyState(rows, max_new, device)
    else:
        state = _BeamState(batch, beams, max_new, cfg, pad, device)

    step = 0
    while True:
        if output_logits:
            rec_logits.append(logits)
        if beams == 1:
            processed = process_scores(logits, seen, cfg, 1)
            next_tokens = state.step(processed, step, cfg, stop, pad, generator)
        else:
            processed = process_scores(F.log_softmax(logits, dim=-1), seen, cfg, 2)
            next_tokens, rows_from = state.step(processed, tokens, step, cfg, stop, pad, generator)
            tokens = tokens.index_select(0, rows_from)
            seen = seen.index_select(0, rows_from)
            cache.reorder(rows_from)
        if output_scores:
            rec_scores.append(processed)
        tokens[:, step] = next_tokens
        seen.scatter_(1, next_tokens.unsqueeze(1), True)
        step += 1
        if step >= max_new or (step % check_every == 0 and state.all_finished()):
            break
        # Feed the new token: generated token j sits at mel position j + 2 (reference quirk).
        emb = model.mel_input_embedding(next_tokens, step + 1)
        length = cache.length + 1
        mask = valid_all[:, None, None, :length] if has_padding else None
        logits = model.decode(emb, cache, mask)

    steps = state.steps_needed(step)
    if beams == 1:
        codes = tokens[:, :steps]
        out = GenerationOutput(codes=codes, hit_limit=codes[:, -1] != stop, steps=steps)
    else:
        out = state.finalize(tokens, step, cfg.num_return_sequences, stop, pad)
        out.steps = steps
    if output_scores:
        out.scores = torch.stack(rec_scores[:steps])
    if output_logits:
        out.logits = torch.stack(rec_logits[:steps])
    if cfg.warn_on_limit and bool(out.hit_limit.any()):
        warnings.warn(
            f"generation stopped at max_mel_tokens ({max_new}) before the stop code for "
            f"{int(out.hit_limit.sum())} of {out.hit_limit.numel()} sequence(s); the speech is "
            "probably cut. Use shorter text segments or a larger max_mel_tokens.",
            RuntimeWarning,
            stacklevel=2,
        )
    return out


class _GreedyState:
    """Greedy search / multinomial sampling bookkeeping (HF ``_sample``)."""

    def __init__(self, rows: int, max_new: int, device: torch.device):
        self.unfinished = torch.ones(rows, dtype=torch.bool, device=device)
        self.finished_at = torch.full((rows,), max_new, dtype=torch.int64, device=device)

    def step(
        self,
        scores: torch.Tensor,
        step: int,
        cfg: GenerationConfig,
        stop: int,
        pad: int,
        generator: Generators,
    ) -> torch.Tensor:
        if cfg.do_sample:
            probs = scores.softmax(dim=-1)
            chosen = multinomial_rows(probs, 1, generator).squeeze(1)
        else:
            chosen = scores.argmax(dim=-1)
        chosen = torch.where(self.unfinished, chosen, pad)
        ends = self.unfinished & (chosen == stop)
        self.finished_at = torch.where(ends, step, self.finished_at)
        self.unfinished = self.unfinished & ~ends
        return chosen

    def all_finished(self) -> bool:
        return not bool(self.unfinished.any())

    def steps_needed(self, steps_run: int) -> int:
        return min(int(self.finished_at.max()) + 1, steps_run)


class _BeamState:
    """Running beams and finished hypotheses (HF ``_beam_search`` + ``BeamSearchScorer``)."""

    def __init__(
        self,
        batch: int,
        beams: int,
        max_new: int,
        cfg: GenerationConfig,
        pad: int,
        device: torch.device,
    ):
        self.batch, self.beams, self.max_new = batch, beams, max_new
        scores = torch.zeros(batch, beams, dtype=torch.float32, device=device)
        scores[:, 1:] = -1e9
        self.beam_scores = scores.view(-1)
        self.history = torch.full((batch * beams, max_new), -1, dtype=torch.int64, device=device)
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)
        self.done_at = torch.full((batch,), max_new, dtype=torch.int64, device=device)
        self.hyps = BeamHypotheses(
            batch, beams, max_new, cfg.length_penalty, cfg.early_stopping, pad, device
        )
        self.row0 = torch.arange(batch, device=device).unsqueeze(1) * beams  # [B, 1]

    def step(
        self,
        processed: torch.Tensor,
        tokens: torch.Tensor,
        step: int,
        cfg: GenerationConfig,
        stop: int,
        pad: int,
        generator: Generators,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Choose the next beams; returns (their new tokens [rows], source rows [rows])."""
        k, b = self.beams, self.batch
        vocab = processed.size(-1)
        total = (processed + self.beam_scores.unsqueeze(1)).view(b, k * vocab)
        n_cand = 2 * k  # at least one non-stop continuation per beam (one stop id)
        if cfg.do_sample:
            cand = multinomial_rows(total.softmax(dim=-1), n_cand, generator)
            cand_scores = total.gather(1, cand)
            cand_scores, order = torch.sort(cand_scores, dim=1, descending=True)
            cand = cand.gather(1, order)
        else:
            cand_scores, cand = torch.topk(total, n_cand, dim=1, largest=True, sorted=True)
        cand_beam = torch.div(cand, vocab, rounding_mode="floor")
        cand_tok = cand % vocab
        cand_row = cand_beam + self.row0  # global cache row of each candidate's parent
        is_stop = cand_tok == stop
        active = ~self.done

        # Stop candidates ranked within the first `k` become finished hypotheses, in rank order.
        generated = step + 1
        denom = self.hyps.denominator(generated)
        for rank in range(k):
            parent = cand_row[:, rank]
            hist = self.history.index_select(0, parent)
            hist[:, step] = parent
            self.hyps.add(
                is_stop[:, rank] & active,
                cand_scores[:, rank].double() / denom,
                tokens.index_select(0, parent),
                step,
                hist,
                step + 1,
            )
        # The first `k` non-stop candidates (in rank order) continue.
        keep = torch.sort(is_stop.to(torch.uint8), dim=1, stable=True).indices[:, :k]
        next_scores = cand_scores.gather(1, keep)
        next_tok = cand_tok.gather(1, keep)
        next_row = cand_row.gather(1, keep)
        newly_done = self.hyps.is_done(cand_scores.amax(dim=1), generated)
        # Items already done before this step only carry padding (row index 0, as upstream).
        was_done = self.done.unsqueeze(1)
        next_scores = torch.where(was_done, 0.0, next_scores)
        next_tok = torch.where(was_done, pad, next_tok)
        next_row = torch.where(was_done, 0, next_row)
        self.done = self.done | (active & newly_done)
        self.done_at = torch.where(self.done & (self.done_at == self.max_new), step, self.done_at)

        rows_from = next_row.view(-1)
        self.beam_scores = next_scores.view(-1)
        self.history = self.history.index_select(0, rows_from)
        self.history[:, step] = rows_from
        return next_tok.view(-1), rows_from

    def all_finished(self) -> bool:
        return bool(self.done.all())

    def steps_needed(self, steps_run: int) -> int:
        return min(int(self.done_at.max()) + 1, steps_run)

    def finalize(
        self, tokens: torch.Tensor, steps_run: int, n_return: int, stop: int, pad: int
    ) -> GenerationOutput:
        """Add the open beams of unfinished items, pick the best ``n_return`` per item."""
        k, b = self.beams, self.batch
        denom = self.hyps.denominator(steps_run)
        open_items = ~self.done
        for beam in range(k):
            rows = self.row0.squeeze(1) + beam
            self.hyps.add(
                open_items,
                self.beam_scores.index_select(0, rows).double() / denom,
                tokens.index_select(0, rows),
                steps_run,
                self.history.index_select(0, rows),
                steps_run,
            )
        slots = self.hyps.best(n_return)  # [B, R]
        take = lambda t: t.gather(1, slots)  # noqa: E731
        lengths = take(self.hyps.length).reshape(-1)
        scores = take(self.hyps.score).reshape(-1).float()
        index3 = slots.unsqueeze(2).expand(-1, -1, self.max_new)
        seqs = self.hyps.tokens.gather(1, index3).reshape(b * n_return, self.max_new)
        hist = self.hyps.beams.gather(1, index3).reshape(b * n_return, self.max_new)
        hist_len = take(self.hyps.beams_len).reshape(-1)

        width = min(int(lengths.max()) + 1, self.max_new)
        cols = torch.arange(width, device=tokens.device).unsqueeze(0)
        codes = torch.where(cols < lengths.unsqueeze(1), seqs[:, :width], pad)
        codes = torch.where(cols == lengths.unsqueeze(1), stop, codes)
        beam_indices = torch.where(cols < hist_len.unsqueeze(1), hist[:, :width], -1)
        return GenerationOutput(
            codes=codes,
            hit_limit=codes[:, -1] != stop,
            steps=steps_run,
            beam_indices=beam_indices,
            sequences_scores=scores,
        )


def trim_at_stop(codes: torch.Tensor, stop: int) -> tuple[torch.Tensor, list[int]]:
    """infer's code trimming: each row's length is the index of its first ``stop`` code (or its
    full length); the batch keeps the longest such length. Returns (codes, lengths)."""
    lengths = []
    for row in codes:
        hits = (row == stop).nonzero()
        lengths.append(int(hits[0, 0]) if hits.numel() else row.numel())
    return codes[:, : max(lengths)], lengths
