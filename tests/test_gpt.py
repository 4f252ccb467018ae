"""UnifiedVoice GPT: manifest, strict loading, KV-cached decoding, sampling, beam bookkeeping."""

import copy
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tts.checkpoints import CheckpointSet, load_config
from tts.components import load_component, load_gpt_emotion, load_gpt_speech, manifest_rows
from tts.generation import GenerationConfig, _BeamState, generate
from tts.loading import CheckpointError
from tts.models.gpt import UnifiedVoice, prefix_attention_mask

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SMALL = SHARED / "fixtures" / "gpt-small"
MANIFEST = SHARED / "spec" / "manifests" / "gpt.pth.tsv"
OFFICIAL_CONFIG = SHARED / "spec" / "config.official.yaml"
needs_small = pytest.mark.skipif(not (SMALL / "cases.json").is_file(), reason="gpt-small absent")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def gpt() -> UnifiedVoice:
    model, _ = load_component("gpt", CheckpointSet.open(SMALL))
    return model


@pytest.fixture(scope="module")
def golden() -> dict:
    from safetensors.torch import load_file

    return load_file(str(SMALL / "golden.safetensors"))


def _prefix(gpt: UnifiedVoice, golden: dict, batch2: bool = False):
    if batch2:
        names = ("cond_spk_b2.latent", "gen.batch2.text_tokens", "merge_b2.emovec")
    else:
        names = ("cond_spk_b1.latent", "gen.text0.text_tokens", "merge_b1.emovec")
    spk, text, emo = (golden[n] for n in names)
    conds = gpt.conditioning_prefix(spk, emo, text.size(0))
    return gpt.prepare_gpt_inputs(conds, text)


# -- structure and loading ----------------------------------------------------------------------


def test_manifest_equality_at_official_config(tmp_path):
    cs = CheckpointSet(root=tmp_path, config=load_config(OFFICIAL_CONFIG))
    rows = manifest_rows("gpt", cs)
    lines = MANIFEST.read_text(encoding="utf-8").splitlines()[1:]
    expected = [tuple(line.split("\t")) for line in lines if line]
    assert len(rows) == 665
    assert [r[1:] for r in rows] == expected
    assert all(r[0] == "gpt.pth" for r in rows)


@needs_small
def test_strict_load_of_gpt_small(gpt):
    state = gpt.state_dict()
    assert all(t.device.type != "meta" for t in state.values())
    assert not any(k.startswith(("gpt.wte", "gpt.wpe", "inference_model")) for k in state)
    # The file's (perturbed) sinusoid table wins over the computed one.
    from tts.models.conformer import sinusoid_table

    pe = gpt.conditioning_encoder.embed.pos_enc.pe
    assert not torch.equal(pe, sinusoid_table(pe.size(1), pe.size(2)))


@needs_small
def test_missing_tensor_is_refused(tmp_path):
    for name in ("config.yaml", "feat1.pt", "feat2.pt"):
        shutil.copy(SMALL / name, tmp_path / name)
    state = torch.load(SMALL / "gpt.pth", weights_only=True)
    del state["speed_emb.weight"]
    torch.save(state, tmp_path / "gpt.pth")
    with pytest.raises(CheckpointError, match="speed_emb.weight"):
        load_component("gpt", CheckpointSet.open(tmp_path))


@needs_small
def test_emotion_path_alone_meets_the_fixtures(golden, monkeypatch):
    """The GPT's emotion path loaded alone (what the workflow's emotion job loads) passes the
    emotion-encoder and merge fixture cases, and equals the whole GPT bit for bit."""
    from tts import parity
    from tts.parity import gpt_cases

    alone, report = load_gpt_emotion(CheckpointSet.open(SMALL))
    full, _ = load_component("gpt", CheckpointSet.open(SMALL))
    names = {k.split(".")[0] for k in alone.state_dict()}
    assert names == {
        "emo_conditioning_encoder",
        "emo_perceiver_encoder",
        "emo_layer",
        "emovec_layer",
    }
    assert report.loaded == len(alone.state_dict()) - len(report.computed)
    for k, v in alone.state_dict().items():
        assert torch.equal(v, full.state_dict()[k]), k
    monkeypatch.setattr(gpt_cases, "_gpt", lambda fs, opts: alone)
    wanted = {"cond_emo_b2", "merge_b2", "merge_b1_inferv2"}
    ran = set()
    for fs, case in parity.all_cases():
        if fs.root.resolve() == SMALL.resolve() and parity.case_id(case) in wanted:
            assert not parity.check_case(fs, case), parity.case_id(case)
            ran.add(parity.case_id(case))
    assert ran == wanted
    feat, lens = golden["b2.emo_feat"], golden["b2.emo_lens"]  # through both models
    with torch.no_grad():
        assert torch.equal(alone.get_emovec(feat, lens), full.get_emovec(feat, lens))
        assert torch.equal(
            alone.merge_emovec(feat, feat.flip(0), lens, lens.flip(0), alpha=0.4),
            full.merge_emovec(feat, feat.flip(0), lens, lens.flip(0), alpha=0.4),
        )


@needs_small
def test_merge_of_equal_shapes_is_one_encoder_pass():
    """``merge_emovec`` of speaker and emotion features of one shape (the speaker file as the
    emotion prompt) runs the emotion encoder once on both as a batch, and equals the two
    passes one by one up to float rounding; other shapes take two passes."""
    from safetensors.torch import load_file

    golden = load_file(str(SMALL / "golden.safetensors"))
    gpt, _ = load_component("gpt", CheckpointSet.open(SMALL))
    calls = []
    gpt.emo_conditioning_encoder.register_forward_hook(lambda m, a, o: calls.append(a[0].shape))
    feat, lens = golden["b2.emo_feat"], golden["b2.emo_lens"]  # two rows, one padded
    assert lens[0] != lens[1]
    with torch.no_grad():
        got = gpt.merge_emovec(feat, feat.flip(0), lens, lens.flip(0), alpha=0.4)
        assert len(calls) == 1 and calls[0][0] == 4
        base, emo = gpt.get_emovec(feat, lens), gpt.get_emovec(feat.flip(0), lens.flip(0))
        torch.testing.assert_close(got, base + 0.4 * (emo - base), atol=1e-6, rtol=1e-5)
        calls.clear()
        gpt.merge_emovec(feat, feat[:, :-3].flip(0), lens, lens.flip(0).clamp(max=feat.size(1) - 3))
        assert len(calls) == 2


@needs_small
def test_gpt_without_emotion_path_meets_the_fixtures(monkeypatch):
    """The GPT loaded without its emotion path and text head (what the workflow's tokens job
    loads) holds every other tensor of the whole GPT bit for bit, passes the speaker
    conditioning, generation and forward fixture cases (those given the emotion vector, as the
    tokens job is), and says it has no emotion path."""
    from tts import parity
    from tts.models.gpt import NOT_FOR_SPEECH, has_emotion_path
    from tts.parity import gpt_cases

    speech, report = load_gpt_speech(CheckpointSet.open(SMALL))
    full, _ = load_component("gpt", CheckpointSet.open(SMALL))
    children = {name for name, _ in full.named_children()}
    assert {name for name, _ in speech.named_children()} == children - set(NOT_FOR_SPEECH)
    assert report.loaded == len(speech.state_dict()) - len(report.computed)
    whole = full.state_dict()
    assert speech.state_dict().keys() == {k for k in whole if k.split(".")[0] not in NOT_FOR_SPEECH}
    for k, v in speech.state_dict().items():
        assert torch.equal(v, whole[k]), k
    assert has_emotion_path(full) and not has_emotion_path(speech)
    monkeypatch.setattr(gpt_cases, "_gpt", lambda fs, opts: speech)
    wanted = {"cond_spk_b2", "cond_spk_b1_inferv2", "fwd_b1", "fwd_b2_padded"}
    ran = set()
    for fs, case in parity.all_cases():
        cid = parity.case_id(case)
        if fs.root.resolve() == SMALL.resolve() and (cid in wanted or cid.startswith("gen_")):
            assert not parity.check_case(fs, case), cid
            ran.add(cid)
    assert wanted < ran and len(ran) == len(wanted) + 5, sorted(ran)


def _edited_gpt_loader(tmp_path: Path, load):
    """``save_and_load(change)``: the small fixture set copied into ``tmp_path`` with gpt.pth's
    tensors edited by ``change(state)`` in place, then loaded by ``load(CheckpointSet)``."""
    for name in ("config.yaml", "feat1.pt", "feat2.pt"):
        shutil.copy(SMALL / name, tmp_path / name)
    state = torch.load(SMALL / "gpt.pth", weights_only=True)
    nested = "model" in state and isinstance(state["model"], dict)
    flat = state["model"] if nested else state

    def save_and_load(change):
        edited = dict(flat)
        change(edited)
        torch.save({**state, "model": edited} if nested else edited, tmp_path / "gpt.pth")
        return load(CheckpointSet.open(tmp_path))

    return save_and_load


@needs_small
def test_gpt_without_emotion_path_is_strict(tmp_path):
    """A tensor the speech GPT runs that is missing or mis-shaped, or an unknown one, is an
    error naming it; the emotion path's tensors are the emotion job's business."""
    save_and_load = _edited_gpt_loader(tmp_path, load_gpt_speech)
    save_and_load(lambda st: st.pop("emo_layer.weight"))  # not the speech path's: loads
    save_and_load(lambda st: st.pop("text_head.bias"))
    with pytest.raises(CheckpointError, match="speed_emb.weight"):
        save_and_load(lambda st: st.pop("speed_emb.weight"))
    with pytest.raises(CheckpointError, match="mel_head.bias"):
        save_and_load(lambda st: st.update({"mel_head.bias": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match="gpt.h.0.extra"):
        save_and_load(lambda st: st.update({"gpt.h.0.extra": torch.zeros(2)}))


@needs_small
def test_emotion_path_alone_is_strict(tmp_path):
    """A tensor of the emotion path missing, or an unknown one under its modules, is an error
    naming it; the rest of gpt.pth is the whole-GPT load's (and validate_weights') business."""
    save_and_load = _edited_gpt_loader(tmp_path, load_gpt_emotion)
    save_and_load(lambda st: st.pop("speed_emb.weight"))  # not the emotion path's: loads
    with pytest.raises(CheckpointError, match="emo_layer.weight"):
        save_and_load(lambda st: st.pop("emo_layer.weight"))
    with pytest.raises(CheckpointError, match="emovec_layer.extra"):
        save_and_load(lambda st: st.update({"emovec_layer.extra": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match="emo_layer.bias"):
        save_and_load(lambda st: st.update({"emo_layer.bias": torch.zeros(3)}))


def test_from_config_rejects_unsupported_variants():
    cfg = load_config(OFFICIAL_CONFIG)["gpt"]
    with pytest.raises(NotImplementedError):
        UnifiedVoice.from_config({**cfg, "condition_type": "perceiver"})


# -- decoding ------------------------------------------------------------------------------------


def _full_recompute_logits(gpt, prefix, valid, tokens):
    """Logits of every generation step without a cache: prefix, start@0, token j @ j+2."""
    b, s, _ = prefix.shape
    out = []
    for t in range(tokens.size(1)):
        parts = [prefix, gpt.mel_input_embedding(torch.full((b,), gpt.start_mel_token), 0)]
        parts += [gpt.mel_input_embedding(tokens[:, j], j + 2) for j in range(t)]
        emb = torch.cat(parts, dim=1)
        full_valid = F.pad(valid, (0, emb.size(1) - s), value=True)
        hidden = gpt.gpt(emb, attn_mask=prefix_attention_mask(full_valid, emb.size(1)))
        out.append(gpt.mel_head(gpt.final_norm(hidden[:, -1])))
    return torch.stack(out)


@needs_small
@pytest.mark.parametrize("batch2", [False, True])
def test_kv_cached_decoding_equals_full_recomputation(gpt, golden, batch2):
    prefix, valid = _prefix(gpt, golden, batch2)
    assert bool(valid.all()) != batch2  # the batch case really is left-padded
    cfg = GenerationConfig(do_sample=False, num_beams=1, max_mel_tokens=12, warn_on_limit=False)
    with torch.no_grad():
        out = generate(gpt, prefix, valid, cfg, output_logits=True)
        expected = _full_recompute_logits(gpt, prefix, valid, out.codes)
    torch.testing.assert_close(out.logits, expected, rtol=1e-4, atol=1e-5)


@needs_small
@pytest.mark.parametrize("shared_conds", [False, True])
def test_prefix_rows_are_the_framed_texts_left_padded(gpt, shared_conds):
    """prepare_gpt_inputs lays every row out as the reference does, row by row: start/stop ids
    dropped wherever they stand, the text framed and embedded with positions from 0 after the
    conditioning rows, the whole row left-padded with zeros."""
    torch.manual_seed(3)
    start, stop = gpt.start_text_token, gpt.stop_text_token
    text = torch.tensor(
        [[5, start, 9, 12, stop, stop], [7, 8, 9, 10, 11, 12], [stop, 4, stop, stop, start, stop]]
    )
    b = text.size(0)
    conds = torch.randn(1 if shared_conds else b, 34, gpt.model_dim)
    with torch.no_grad():
        prefix, valid = gpt.prepare_gpt_inputs(conds, text)
        assert prefix.shape == (b, 34 + 6 + 2, gpt.model_dim)
        for i in range(b):
            ids = [start] + [t for t in text[i].tolist() if t not in (start, stop)] + [stop]
            emb = gpt.text_embedding(torch.tensor(ids))
            emb = emb + gpt.text_pos_embedding.emb.weight[: len(ids)]
            row = torch.cat((conds[0 if shared_conds else i], emb))
            pad = prefix.size(1) - row.size(0)
            assert torch.equal(prefix[i, pad:], row), i
            assert not bool(prefix[i, :pad].any()), i
            assert valid[i].tolist() == [False] * pad + [True] * row.size(0), i


@pytest.mark.parametrize(
    "rows",
    [[0, 1, 2], [0, 0, 1], [1, 2, 0], [2, 2, 2], [2, 0, 1, 5, 3, 3], [1, 0, 3, 2, 4, 4]],
)
def test_kv_cache_reorder_moves_rows_as_index_select(rows):
    """KVCache.reorder (on the CPU: only the rows that change, their overwritten sources saved
    first) equals index_select over the filled positions, bit for bit, and leaves the rest."""
    from tts.models.gpt import KVCache

    cache = KVCache(2, len(rows), 3, 9, 4, "cpu", torch.float32)
    cache.k.normal_(generator=torch.Generator().manual_seed(1))
    cache.v.normal_(generator=torch.Generator().manual_seed(2))
    cache.length = 6
    index = torch.tensor(rows)
    want_k, want_v = cache.k.clone(), cache.v.clone()
    want_k[:, :, :, :6] = want_k[:, :, :, :6].index_select(1, index)
    want_v[:, :, :, :6] = want_v[:, :, :, :6].index_select(1, index)
    cache.reorder(index)
    assert torch.equal(cache.k, want_k) and torch.equal(cache.v, want_v)


@needs_small
def test_beam_cache_reordering_equals_full_recomputation(gpt, golden):
    # At step t the returned sequence came from cache row beam_indices[t], whose history was
    # codes[:t]: that row's logits must equal a cache-free pass over codes[:t].
    prefix, valid = _prefix(gpt, golden, batch2=True)
    cfg = GenerationConfig(do_sample=False, num_beams=3, max_mel_tokens=10, warn_on_limit=False)
    with torch.no_grad():
        out = generate(gpt, prefix, valid, cfg, output_logits=True)
        for b in range(prefix.size(0)):
            n = int((out.beam_indices[b] >= 0).sum())
            expected = _full_recompute_logits(
                gpt, prefix[b : b + 1], valid[b : b + 1], out.codes[b : b + 1, :n]
            )[:, 0]
            actual = out.logits[torch.arange(n), out.beam_indices[b, :n]]
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


@needs_small
def test_beam_sampling_follows_the_reference_rng_stream(gpt, golden):
    # The traced infer_v2 runs drew their codes from torch's global RNG right after
    # torch.manual_seed(seed) (informational fixture outputs): the same draws give the same codes.
    import json

    cases = {c["id"]: c for c in json.loads((SMALL / "cases.json").read_text())["cases"]}
    for name in ("trace_emoaudio", "trace_emovector"):
        key = f"{name}.codes_sampled"
        if name not in cases or key not in golden:
            pytest.skip("trace cases absent")
        args = cases[name]["args"]
        torch.manual_seed(int(args["torch_manual_seed"]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out, _ = gpt.inference_speech(
                golden["b1.spk_feat"],
                golden[f"{name}.text_tokens"].int().reshape(1, -1),
                emo_vec=golden[f"{name}.emo_vec_final"],
                max_generate_length=int(args["max_mel_tokens"]),
            )
        assert torch.equal(out.codes, golden[key])


@needs_small
def test_seeded_sampling_is_reproducible(gpt, golden):
    prefix, valid = _prefix(gpt, golden)
    for cfg in (
        GenerationConfig(max_mel_tokens=15, warn_on_limit=False),  # official beam sampling
        GenerationConfig(num_beams=1, max_mel_tokens=15, warn_on_limit=False),
    ):
        runs = [
            generate(gpt, prefix, valid, cfg, generator=torch.Generator().manual_seed(seed)).codes
            for seed in (7, 7, 8)
        ]
        assert torch.equal(runs[0], runs[1])
        assert runs[0].shape[0] == 1 and runs[0].shape[1] <= 15
    # Sampling is not greedy: across seeds the first steps vary.
    cfg = GenerationConfig(num_beams=1, max_mel_tokens=4, warn_on_limit=False)
    firsts = set()
    for seed in range(6):
        out = generate(gpt, prefix, valid, cfg, generator=torch.Generator().manual_seed(seed))
        firsts.add(tuple(out.codes[0].tolist()))
    assert len(firsts) > 1


@needs_small
def test_max_token_warning(gpt, golden):
    prefix, valid = _prefix(gpt, golden)
    cfg = GenerationConfig(do_sample=False, max_mel_tokens=3)
    with pytest.warns(RuntimeWarning, match="max_mel_tokens"):
        out = generate(gpt, prefix, valid, cfg)
    assert out.hit_limit.all() and out.codes.shape == (1, 3)


@needs_small
@pytest.mark.parametrize("beams", [1, 3])
def test_stop_code_ends_generation_without_warning(gpt, golden, beams):
    prefix, valid = _prefix(gpt, golden, batch2=True)
    model = copy.deepcopy(gpt)
    with torch.no_grad():
        model.mel_head.bias[model.stop_mel_token] += 50.0  # the stop code always wins
    cfg = GenerationConfig(do_sample=False, num_beams=beams, max_mel_tokens=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out = generate(model, prefix, valid, cfg, check_every=4)
    assert out.codes.tolist() == [[model.stop_mel_token]] * 2
    assert not out.hit_limit.any()


@needs_small
def test_inference_speech_defaults_follow_reference(gpt, golden):
    # The reference's default cap without max_generate_length is max_mel_tokens - 1; a config
    # or an explicit max_generate_length overrides it.
    spk = golden["b1.spk_feat"]
    text = golden["gen.text0.text_tokens"].int()
    emo = golden["merge_b1.emovec"]
    with pytest.warns(RuntimeWarning):
        out, latent = gpt.inference_speech(
            spk, text, emo_vec=emo, max_generate_length=2, do_sample=False, num_beams=1
        )
    torch.testing.assert_close(latent, golden["cond_spk_b1.latent"], rtol=1e-4, atol=1e-5)
    assert torch.equal(out.codes, golden["gen_greedy_text0.codes"][:, :2])
    with pytest.raises(TypeError, match="unknown generation option"):
        gpt.inference_speech(spk, text, emo_vec=emo, bogus=1)


@needs_small
def test_inference_speech_leaves_check_every_to_the_generator(gpt, golden, monkeypatch):
    """Without ``check_every``, inference_speech passes none, so each generator keeps its own
    default (tts.fast.decode's graph decoder: every 32 steps; tts.bench swaps it in here, and
    a check after every step made the benchmark wait for the GPU each step); given, it is
    passed on."""
    import tts.generation as generation

    calls = []
    plain = generation.generate

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return plain(*args, **kwargs)

    monkeypatch.setattr(generation, "generate", recording)
    spk = golden["b1.spk_feat"]
    text = golden["gen.text0.text_tokens"].int()
    emo = golden["merge_b1.emovec"]
    for every in (None, 4):
        extra = {} if every is None else {"check_every": every}
        with pytest.warns(RuntimeWarning):
            out, _ = gpt.inference_speech(
                spk, text, emo_vec=emo, max_generate_length=2, do_sample=False, num_beams=1, **extra
            )
        assert torch.equal(out.codes, golden["gen_greedy_text0.codes"][:, :2])
    assert "check_every" not in calls[0]
    assert calls[1]["check_every"] == 4


# -- beam bookkeeping against a plain transcription of BeamSearchScorer -------------------------


def _oracle_beam_search(steps, batch, beams, stop, lp, max_new):
    """List-based beam search over given per-step processed scores (HF semantics)."""
    rows = batch * beams
    beam_scores = torch.zeros(batch, beams)
    beam_scores[:, 1:] = -1e9
    beam_scores = beam_scores.view(-1)
    seqs = [[] for _ in range(rows)]
    hist = [() for _ in range(rows)]
    hyps = [[] for _ in range(batch)]  # (score, tokens, beam indices)
    worst = [1e9] * batch
    done = [False] * batch

    def add(b, tokens, score, bidx, gen_len):
        s = score / (gen_len**lp)
        if len(hyps[b]) < beams or s > worst[b]:
            hyps[b].append((s, tokens, bidx))
            if len(hyps[b]) > beams:
                ranked = sorted((h[0], i) for i, h in enumerate(hyps[b]))
                del hyps[b][ranked[0][1]]
                worst[b] = ranked[1][0]
            else:
                worst[b] = min(s, worst[b])

    n_run = 0
    for t, processed in enumerate(steps):
        n_run = t + 1
        vocab = processed.size(-1)
        total = (processed + beam_scores[:, None]).view(batch, beams * vocab)
        top_scores, top = torch.topk(total, 2 * beams, dim=1)
        new_scores, new_tok, new_row = [], [], []
        for b in range(batch):
            if done[b]:
                new_scores += [0.0] * beams
                new_tok += [stop] * beams
                new_row += [0] * beams
                continue
            kept = 0
            for rank in range(2 * beams):
                tok = int(top[b, rank]) % vocab
                row = b * beams + int(top[b, rank]) // vocab
                score = top_scores[b, rank].item()
                if tok == stop:
                    if rank >= beams:
                        continue
                    add(b, list(seqs[row]), score, hist[row] + (row,), t + 1)
                else:
                    new_scores.append(score)
                    new_tok.append(tok)
                    new_row.append(row)
                    kept += 1
                if kept == beams:
                    break
            best = top_scores[b].max().item()
            done[b] = done[b] or (len(hyps[b]) >= beams and worst[b] >= best / (t + 1) ** lp)
        seqs = [seqs[r] + [tok] for r, tok in zip(new_row, new_tok, strict=True)]
        hist = [hist[r] + (r,) for r in new_row]
        beam_scores = torch.tensor(new_scores, dtype=torch.float32)
        if all(done):
            break
    for b in range(batch):
        if done[b]:
            continue
        for k in range(beams):
            r = b * beams + k
            add(b, list(seqs[r]), beam_scores[r].item(), hist[r], n_run)
    best = [sorted(h, key=lambda x: x[0])[-1] for h in hyps]
    width = min(max(len(h[1]) for h in best) + 1, max_new)
    codes = torch.full((batch, width), stop)
    indices = torch.full((batch, width), -1)
    for b, (_, tokens, bidx) in enumerate(best):
        codes[b, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        indices[b, : len(bidx)] = torch.tensor(bidx, dtype=torch.long)
    return codes, torch.tensor([h[0] for h in best], dtype=torch.float32), indices, n_run


@pytest.mark.parametrize("seed, lp", [(0, 0.0), (1, 0.0), (2, 1.0), (3, -0.5), (4, 0.0)])
def test_device_beam_scorer_matches_list_transcription(seed, lp):
    batch, beams, vocab, stop, max_new = 2, 3, 6, 5, 9
    gen = torch.Generator().manual_seed(seed)
    steps = [
        F.log_softmax(torch.randn(batch * beams, vocab, generator=gen) * 2, dim=-1)
        for _ in range(max_new)
    ]
    cfg = GenerationConfig(
        do_sample=False, num_beams=beams, length_penalty=lp, max_mel_tokens=max_new
    )
    state = _BeamState(batch, beams, max_new, cfg, stop, torch.device("cpu"))
    tokens = torch.full((batch * beams, max_new), stop)
    step = 0
    while True:
        nxt, rows = state.step(steps[step], tokens, step, cfg, stop, stop, None)
        tokens = tokens.index_select(0, rows)
        tokens[:, step] = nxt
        step += 1
        if step >= max_new or state.all_finished():
            break
    out = state.finalize(tokens, step, 1, stop, stop)
    codes, scores, indices, n_run = _oracle_beam_search(steps, batch, beams, stop, lp, max_new)
    assert step == n_run
    assert torch.equal(out.codes, codes)
    assert torch.equal(out.beam_indices, indices)
    torch.testing.assert_close(out.sequences_scores, scores, rtol=0, atol=0)
