"""Emotion control (tts.emotion): vectors, matrices, argument precedence, the Qwen text model.

The Qwen tests build a tiny Qwen3-architecture model and a character-level tokenizer in a tmp
folder (nothing downloaded). To check the whole path deterministically, the model is wired as a
bigram machine: attention and MLP outputs are zero, embeddings are one-hot and ``lm_head`` maps
each token to a chosen successor, so greedy decoding emits a known answer.
"""

from __future__ import annotations

import math
import string
from pathlib import Path

import pytest
import torch

from tts import emotion as E
from tts.loading import CheckpointError

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------
# Vectors
# ---------------------------------------------------------------------------------------------


def test_emotion_order():
    assert E.EMOTION_NAMES == (
        "happy",
        "angry",
        "sad",
        "afraid",
        "disgusted",
        "melancholic",
        "surprised",
        "calm",
    )
    assert len(E.EMOTION_NAMES_ZH) == 8 and E.EMOTION_NAMES_ZH[2] == "悲伤"


def test_normalize_emo_vec():
    v = [0.1] * 8
    assert E.normalize_emo_vec(v, apply_bias=False) == v
    assert E.normalize_emo_vec(v) == [0.1 * b for b in E.EMOTION_BIAS]
    out = E.normalize_emo_vec([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.2], apply_bias=False)
    assert out[-1] == pytest.approx(0.8) and sum(out) <= 0.8 + 1e-12
    big = E.normalize_emo_vec([1.0] * 8)
    assert sum(big) == pytest.approx(0.8)
    # Ratios between emotions survive the rescale.
    assert big[0] / big[7] == pytest.approx(E.EMOTION_BIAS[0] / E.EMOTION_BIAS[7])


def test_scale_emo_vector():
    v = [0.0, 0.0, 0.4266666666666667, 0.0, 0.0, 0.26666666666666666, 0.0, 0.10666666666666667]
    assert E.scale_emo_vector(v, 0.6) == [0.0, 0.0, 0.256, 0.0, 0.0, 0.16, 0.0, 0.064]
    assert E.scale_emo_vector(v, 1.0) == v  # no truncation at alpha 1
    assert E.scale_emo_vector(v, 3.0) == v  # clamped to 1
    assert E.scale_emo_vector(v, -1.0) == [0.0] * 8
    assert E.scale_emo_vector([0.33333], 0.5) == [0.1666]  # truncation, not rounding


def test_validate_emo_vector():
    assert E.validate_emo_vector([0, 0, 1, 0, 0, 0, 0, 0.5]) == [0, 0, 1.0, 0, 0, 0, 0, 0.5]
    assert E.validate_emo_vector({"sad": 0.7, "Calm": 0.2}) == [0, 0, 0.7, 0, 0, 0, 0, 0.2]
    assert E.validate_emo_vector(torch.zeros(8)) == [0.0] * 8
    with pytest.raises(ValueError, match="8 values"):
        E.validate_emo_vector([0.1] * 7)
    with pytest.raises(ValueError, match="sad = nan is not finite"):
        E.validate_emo_vector([0, 0, math.nan, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match=r"calm = 1.3 is outside \[0, 1.2\]"):
        E.validate_emo_vector([0, 0, 0, 0, 0, 0, 0, 1.3])
    with pytest.raises(ValueError, match="happy = -0.1"):
        E.validate_emo_vector([-0.1, 0, 0, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="angry = 'x' is not a number"):
        E.validate_emo_vector([0, "x", 0, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="list of 8 numbers"):
        E.validate_emo_vector("0,0,0,0,0,0,0,0")
    with pytest.raises(ValueError, match="unknown emotion"):
        E.validate_emo_vector({"joy": 1.0})


def test_validate_emo_alpha():
    assert E.validate_emo_alpha(0) == 0.0 and E.validate_emo_alpha(1) == 1.0
    for bad in (-0.01, 1.5, math.inf, math.nan):
        with pytest.raises(ValueError, match="emo_alpha"):
            E.validate_emo_alpha(bad)
    with pytest.raises(ValueError, match="not a number"):
        E.validate_emo_alpha("strong")


# ---------------------------------------------------------------------------------------------
# Matrices
# ---------------------------------------------------------------------------------------------

EMO_NUM = [3, 17, 2, 8, 4, 5, 10, 24]


def _matrices(dim: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(73, 192, generator=g), torch.randn(73, dim, generator=g)


def test_matrices_split_and_validate(tmp_path: Path):
    spk, emo = _matrices()
    m = E.EmotionMatrices.from_tensors(spk, emo, EMO_NUM, 12)
    assert m.emo_num == tuple(EMO_NUM)
    assert torch.equal(m.emo[1][0], emo[3]) and torch.equal(m.spk[7][-1], spk[-1])

    torch.save(spk, tmp_path / "feat1.pt")
    torch.save(emo[:70], tmp_path / "feat2.pt")
    with pytest.raises(CheckpointError, match=r"feat2\.pt: emotion matrix .* shape \[70, 12\]"):
        E.EmotionMatrices.load(tmp_path / "feat1.pt", tmp_path / "feat2.pt", EMO_NUM, 12)
    torch.save(emo, tmp_path / "feat2.pt")
    with pytest.raises(CheckpointError, match=r"feat2\.pt: .*expected \[73, 16\]"):
        E.EmotionMatrices.load(tmp_path / "feat1.pt", tmp_path / "feat2.pt", EMO_NUM, 16)
    torch.save(spk[:, :100], tmp_path / "bad1.pt")
    with pytest.raises(CheckpointError, match=r"bad1\.pt: speaker matrix .*\[73, 192\]"):
        E.EmotionMatrices.load(tmp_path / "bad1.pt", tmp_path / "feat2.pt", EMO_NUM, 12)
    torch.save({"w": spk}, tmp_path / "dict.pt")
    with pytest.raises(CheckpointError, match=r"dict\.pt: expected a bare tensor"):
        E.EmotionMatrices.load(tmp_path / "dict.pt", tmp_path / "feat2.pt", EMO_NUM, 12)
    with pytest.raises(CheckpointError, match="missing.pt: file not found"):
        E.EmotionMatrices.load(tmp_path / "missing.pt", tmp_path / "feat2.pt", EMO_NUM, 12)
    with pytest.raises(ValueError, match="emo_num"):
        E.EmotionMatrices.from_tensors(spk, emo, EMO_NUM[:7], 12)
    ok = E.EmotionMatrices.load(tmp_path / "feat1.pt", tmp_path / "feat2.pt", EMO_NUM, 12)
    assert torch.equal(torch.cat(ok.emo), emo)


def test_cosine_pick_and_mix():
    spk, emo = _matrices()
    m = E.EmotionMatrices.from_tensors(spk, emo, EMO_NUM, 12)
    # A style equal to a scaled row picks that row in its group.
    style = 3.0 * m.spk[1][5].unsqueeze(0)
    picked = m.pick(style)
    assert picked[1] == 5
    for g, i in zip(m.spk, picked, strict=True):
        sims = torch.nn.functional.cosine_similarity(style, g, dim=1)
        assert i == int(sims.argmax())
    assert E.find_most_similar_cosine(style[0].double(), m.spk[1]) == 5

    w = [0.1, 0.0, 0.3, 0.0, 0.0, 0.2, 0.0, 0.05]
    mat = m.mix(w, picked)
    expected = sum(wi * g[i] for wi, g, i in zip(w, m.emo, picked, strict=True))
    assert mat.shape == (1, 12)
    torch.testing.assert_close(mat[0], expected.float())

    r1 = m.pick(None, use_random=True, generator=torch.Generator().manual_seed(3))
    r2 = m.pick(None, use_random=True, generator=torch.Generator().manual_seed(3))
    assert r1 == r2 and all(0 <= i < n for i, n in zip(r1, EMO_NUM, strict=True))
    with pytest.raises(ValueError, match="style"):
        m.pick(None)


# ---------------------------------------------------------------------------------------------
# Precedence and the final vector
# ---------------------------------------------------------------------------------------------


def test_plan_precedence():
    p = E.plan_emotion("hi")
    assert (p.mode, p.emo_audio, p.merge_alpha, p.emo_vector) == ("speaker", None, 1.0, None)
    p = E.plan_emotion("hi", emo_audio_prompt="emo.wav", emo_alpha=0.6)
    assert (p.mode, p.emo_audio, p.merge_alpha) == ("audio", "emo.wav", 0.6)
    # A vector disables the emotion prompt; alpha scales the vector and the merge uses 1.0.
    v = [0, 0, 0.45, 0, 0, 0.3, 0, 0.2]
    p = E.plan_emotion("hi", emo_audio_prompt="emo.wav", emo_alpha=0.5, emo_vector=v)
    assert (p.mode, p.emo_audio, p.merge_alpha) == ("vector", None, 1.0)
    assert p.emo_vector == (0, 0, 0.225, 0, 0, 0.15, 0, 0.1)

    seen = []

    def fake_model(text):
        seen.append(text)
        return {n: (0.9 if n == "happy" else 0.0) for n in E.EMOTION_NAMES}

    p = E.plan_emotion(
        "main text",
        emo_audio_prompt="emo.wav",
        emo_alpha=0.5,
        emo_vector=v,
        use_emo_text=True,
        text_model=fake_model,
    )
    assert seen == ["main text"]  # emotion text defaults to the text
    assert (p.mode, p.emo_audio, p.merge_alpha) == ("text", None, 1.0)
    assert p.emo_vector == (0.45, 0, 0, 0, 0, 0, 0, 0)
    assert p.detected["happy"] == 0.9
    E.plan_emotion("main", use_emo_text=True, emo_text="other", text_model=fake_model)
    assert seen[-1] == "other"
    with pytest.raises(RuntimeError, match="Qwen emotion model"):
        E.plan_emotion("hi", use_emo_text=True)
    with pytest.raises(ValueError, match="emo_alpha"):
        E.plan_emotion("hi", emo_alpha=2.0)
    with pytest.raises(ValueError, match="8 values"):
        E.plan_emotion("hi", emo_vector=[0.5])


class _FakeGPT:
    def __init__(self, dim: int = 12):
        self.calls = []
        self.dim = dim

    def merge_emovec(self, spk, emo, spk_len, emo_len, alpha=1.0):
        self.calls.append((spk, emo, spk_len, emo_len, alpha))
        return spk.mean(1)[:, : self.dim] + alpha * emo.mean(1)[:, : self.dim]


def test_resolve_emotion():
    spk_cond = torch.randn(1, 9, 1024)
    emo_cond = torch.randn(1, 7, 1024)
    gpt = _FakeGPT()
    plan = E.plan_emotion("x", emo_audio_prompt="e.wav", emo_alpha=0.6)
    r = E.resolve_emotion(gpt, spk_cond, emo_cond, plan)
    _, _, sl, el, alpha = gpt.calls[-1]
    assert sl.tolist() == [1024] and el.tolist() == [1024] and alpha == 0.6
    assert r.emovec is r.merged and r.emovec_mat is None

    spk, emo = _matrices()
    m = E.EmotionMatrices.from_tensors(spk, emo, EMO_NUM, 12)
    style = torch.randn(1, 192)
    v = [0, 0, 0.45, 0, 0, 0.3, 0, 0.2]
    plan = E.plan_emotion("x", emo_alpha=0.6, emo_vector=v)
    r = E.resolve_emotion(gpt, spk_cond, spk_cond, plan, style=style, matrices=m)
    assert gpt.calls[-1][4] == 1.0
    assert r.indices == m.pick(style)
    w = torch.tensor(plan.emo_vector)
    torch.testing.assert_close(r.emovec, r.emovec_mat + (1 - w.sum()) * r.merged)
    torch.testing.assert_close(r.emovec_mat, m.mix(plan.emo_vector, r.indices))
    with pytest.raises(ValueError, match="matrices"):
        E.resolve_emotion(gpt, spk_cond, spk_cond, plan, style=style)
    # A half-precision merge (autocast) still gives a float32 mix, as the reference.
    half = E.resolve_emotion(gpt, spk_cond.half(), spk_cond.half(), plan, style=style, matrices=m)
    assert half.merged.dtype == torch.float16 and half.emovec.dtype == torch.float32
    torch.testing.assert_close(half.emovec.float(), r.emovec, atol=2e-2, rtol=1e-2)


# ---------------------------------------------------------------------------------------------
# Parsing the emotion model's answers
# ---------------------------------------------------------------------------------------------


def _vec(d):
    return [d[n] for n in E.EMOTION_NAMES]


def test_parse_json_answer():
    ans = (
        '{"高兴": 0.0, "愤怒": 0.0, "悲伤": 0.7, "恐惧": 0.0, "反感": 0.0, "低落": 0.1, '
        '"惊讶": 0.0, "自然": 0.3}'
    )
    out = E.parse_emotion_response(ans, "今天下雨了")
    assert list(out) == list(E.EMOTION_NAMES)
    assert _vec(out) == [0, 0, 0.7, 0, 0, 0.1, 0, 0.3]
    # Melancholic words swap sad and melancholic.
    out = E.parse_emotion_response(ans, "I feel so GLOOMY today")
    assert (out["sad"], out["melancholic"]) == (0.1, 0.7)
    # Clamp and calm default.
    assert E.parse_emotion_response('{"愤怒": 5, "高兴": -1}', "x")["angry"] == 1.2
    zero = E.parse_emotion_response('{"高兴": 0.0}', "x")
    assert _vec(zero) == [0, 0, 0, 0, 0, 0, 0, 1.0]
    # English keys and label answers.
    assert E.parse_emotion_response('{"Happy": 0.4}', "x")["happy"] == 0.4
    assert _vec(E.parse_emotion_response('"悲伤"', "x")) == [0, 0, 1.0, 0, 0, 0, 0, 0]
    assert E.parse_emotion_response('{"emotion": "surprised"}', "x")["surprised"] == 1.0
    lab = E.parse_emotion_response('{"高兴": "愤怒"}', "x")
    assert (lab["happy"], lab["angry"]) == (0.0, 1.0)
    # A thinking block is ignored.
    assert E.parse_emotion_response('<think>hmm</think>\n{"恐惧": 0.5}', "x")["afraid"] == 0.5


def test_parse_non_json_answer():
    out = E.parse_emotion_response('高兴: 0.6, "惊讶": 0.3 and 自然:0.1 (done', "x")
    assert _vec(out) == [0.6, 0, 0, 0, 0, 0, 0.3, 0.1]
    out = E.parse_emotion_response('{"悲伤": 0.9, "低落": 0.2,', "depressed")  # truncated JSON
    assert (out["sad"], out["melancholic"]) == (0.2, 0.9)
    garbage = E.parse_emotion_response("I cannot classify this.", "x")
    assert _vec(garbage) == [0, 0, 0, 0, 0, 0, 0, 1.0]
    assert _vec(E.parse_emotion_response("", "x")) == [0, 0, 0, 0, 0, 0, 0, 1.0]
    with pytest.raises(ValueError, match="non-numeric score for happy"):
        E.parse_emotion_response('{"高兴": "very"}', "x")
    with pytest.raises(ValueError, match="malformed score"):
        E.parse_emotion_response("高兴: 0.5.5", "x")


# ---------------------------------------------------------------------------------------------
# The Qwen emotion model, end to end on a tiny random Qwen3
# ---------------------------------------------------------------------------------------------

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
# Renders like Qwen3's template for plain system/user chats (thinking disabled -> empty block).
CHAT_TEMPLATE = (
    "{%- for m in messages %}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)


def _tiny_qwen(folder: Path, answer: list[str] | None) -> Path:
    """Save a tiny Qwen3 + tokenizer; with ``answer`` (token strings) greedy decoding after any
    prompt emits exactly those tokens then ``<|im_end|>``; without, the weights stay random."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    chars = sorted(
        set(string.printable)
        | set("".join(E.EMOTION_NAMES_ZH))
        | set(E.QWEN_SYSTEM_PROMPT + "今天我很开心")
    )
    pieces = ["[UNK]", *chars, *[a for a in (answer or []) if a not in chars]]
    vocab = {t: i for i, t in enumerate(pieces)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)

    v = len(tok.get_vocab())
    hidden = v + (-v % 8)
    cfg = Qwen3Config(
        vocab_size=v,
        hidden_size=hidden,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=512,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(cfg)
    if answer is not None:
        with torch.no_grad():
            layer = model.model.layers[0]
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
            model.model.embed_tokens.weight.copy_(torch.eye(v, hidden))
            head = torch.zeros(v, hidden)
            ids = [tok.token_to_id(a) for a in answer] + [fast.eos_token_id]
            head[ids[0], :v] = 1.0  # every token -> first answer token ...
            for cur, nxt in zip(ids[:-1], ids[1:], strict=True):
                head[:, cur] = 0.0
                head[nxt, cur] = 2.0  # ... except along the answer chain
            model.lm_head.weight.copy_(head)
    model.save_pretrained(folder)
    return folder


ANSWER = ['{"悲伤": 0.6, ', '"低落": 0.2, ', '"自然": 0.9', "}"]


def test_qwen_prompt_and_json_answer(tmp_path: Path):
    q = E.QwenEmotion(_tiny_qwen(tmp_path / "qwen", ANSWER))
    prompt = q.build_prompt("今天我很开心")
    assert prompt == (
        "<|im_start|>system\n文本情感分类<|im_end|>\n<|im_start|>user\n今天我很开心<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert q.generate_answer("今天我很开心") == "".join(ANSWER)
    out = q.inference("今天我很开心")
    assert _vec(out) == [0, 0, 0.6, 0, 0, 0.2, 0, 0.9]
    assert _vec(q("I am depressed")) == [0, 0, 0.2, 0, 0, 0.6, 0, 0.9]
    p = E.plan_emotion("今天我很开心", emo_alpha=0.5, use_emo_text=True, text_model=q)
    assert p.emo_vector == (0, 0, 0.3, 0, 0, 0.1, 0, 0.45)


def test_qwen_non_json_and_think_answers(tmp_path: Path):
    q = E.QwenEmotion(_tiny_qwen(tmp_path / "a", ["<think>", "恐惧", "</think>", "惊讶:0.7 ", "x"]))
    assert q.generate_answer("hi") == "惊讶:0.7 x"
    assert q.inference("hi")["surprised"] == 0.7
    assert q.inference("hi")["afraid"] == 0.0
    q = E.QwenEmotion(_tiny_qwen(tmp_path / "b", ["no idea", "!"]))
    assert _vec(q.inference("hi")) == [0, 0, 0, 0, 0, 0, 0, 1.0]


def test_qwen_random_weights_run(tmp_path: Path):
    q = E.QwenEmotion(_tiny_qwen(tmp_path / "r", None), max_new_tokens=24)
    answer = q.generate_answer("今天我很开心")
    assert isinstance(answer, str)
    try:
        out = q.inference("今天我很开心")
    except ValueError as exc:  # garbage with a malformed number is a clear error
        assert "please retry" in str(exc)
    else:
        assert list(out) == list(E.EMOTION_NAMES)
        assert all(0.0 <= x <= 1.2 for x in out.values()) and max(out.values()) > 0


def test_qwen_missing_folder(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="qwen0.6bemo4-merge"):
        E.QwenEmotion(tmp_path / "nothing")
