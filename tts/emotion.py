"""Emotion control: emotion vectors, the emotion matrices, the text-to-emotion model, and the
argument precedence of inference.

IndexTTS2 steers emotion in one of three ways (spec 2.1, 2.3, 2.4, 2.6a):

* an emotion prompt (audio): the GPT's ``merge_emovec`` blends the speaker and the emotion
  prompt's emotion embeddings with ``emo_alpha``;
* an emotion vector: 8 weights, one per emotion; each weight picks one row of its emotion's group
  in ``feat2.pt`` (the group row whose ``feat1.pt`` speaker row is closest to the speaker style,
  or a random row) and the rows are summed with those weights;
* an emotion text: a small Qwen3 model (:class:`QwenEmotion`) turns the text into such a vector.

:func:`plan_emotion` applies the reference's argument precedence and alpha handling;
:func:`resolve_emotion` turns the plan and the conditioning features into the final ``emovec``
that the GPT conditions on. The production pipeline and the parity traces both go through them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from tts.loading import CheckpointError, read_tensor_file

# Official order of the 8 emotions (vector entries, matrix groups, Qwen output).
EMOTION_NAMES: tuple[str, ...] = (
    "happy",
    "angry",
    "sad",
    "afraid",
    "disgusted",
    "melancholic",
    "surprised",
    "calm",
)
# The Chinese labels the Qwen emotion model answers with, in the same order.
EMOTION_NAMES_ZH: tuple[str, ...] = ("高兴", "愤怒", "悲伤", "恐惧", "反感", "低落", "惊讶", "自然")
# Per-emotion damping used by the official UI before inference (see normalize_emo_vec).
EMOTION_BIAS: tuple[float, ...] = (0.9375, 0.875, 1.0, 1.0, 0.9375, 0.9375, 0.6875, 0.5625)
MAX_EMOTION_SUM = 0.8
MAX_EMOTION_WEIGHT = 1.2
# Width of a CAMPPlus style vector, hence of the rows of feat1.pt.
STYLE_DIM = 192

_ZH_TO_EN = dict(zip(EMOTION_NAMES_ZH, EMOTION_NAMES, strict=True))
_EN_TO_ZH = dict(zip(EMOTION_NAMES, EMOTION_NAMES_ZH, strict=True))


# ---------------------------------------------------------------------------------------------
# Emotion vectors
# ---------------------------------------------------------------------------------------------


def normalize_emo_vec(vec: Sequence[float], apply_bias: bool = True) -> list[float]:
    """The official UI's softening of a user emotion vector.

    With ``apply_bias`` each weight is multiplied by its :data:`EMOTION_BIAS` (emotions that tend
    to produce odd speech are damped); then, if the weights sum to more than 0.8, all are scaled
    so that the sum is 0.8. Inference itself never calls this; callers opt in. Plain Python float
    arithmetic in the reference's order, so results are bit-identical.
    """
    out = [float(v) for v in vec]
    if apply_bias:
        out = [v * b for v, b in zip(out, EMOTION_BIAS, strict=True)]
    total = sum(out)
    if total > MAX_EMOTION_SUM:
        factor = MAX_EMOTION_SUM / total
        out = [v * factor for v in out]
    return out


def scale_emo_vector(vec: Sequence[float], alpha: float) -> list[float]:
    """Apply ``emo_alpha`` to an emotion vector the way inference does.

    Emotion vectors cannot be blended by ``merge_emovec``'s alpha, so the alpha (clamped to
    [0, 1]) scales the weights up front, truncated to 4 decimals: ``int(x * alpha * 1e4) / 1e4``.
    An alpha of exactly 1 leaves the vector untouched (no truncation).
    """
    scale = max(0.0, min(1.0, float(alpha)))
    if scale == 1.0:
        return [float(v) for v in vec]
    return [int(v * scale * 10000) / 10000 for v in vec]


def validate_emo_vector(vec: Sequence[float] | Mapping[str, float]) -> list[float]:
    """Check a user emotion vector and return it as 8 floats in the official order.

    Accepts a sequence of 8 numbers (order :data:`EMOTION_NAMES`) or a mapping from those names
    to numbers (missing names are 0). Every value must be finite and within [0, 1.2].
    """
    if isinstance(vec, Mapping):
        unknown = sorted(str(k) for k in vec if str(k).lower() not in _EN_TO_ZH)
        if unknown:
            raise ValueError(
                f"emotion vector: unknown emotion name(s) {unknown}; expected some of "
                f"{list(EMOTION_NAMES)}"
            )
        lowered = {str(k).lower(): v for k, v in vec.items()}
        vec = [lowered.get(name, 0.0) for name in EMOTION_NAMES]
    bad_type = ValueError(
        f"emotion vector must be a list of 8 numbers ({', '.join(EMOTION_NAMES)}), "
        f"got {type(vec).__name__}"
    )
    if isinstance(vec, str | bytes):
        raise bad_type
    try:
        values = list(vec.tolist() if hasattr(vec, "tolist") else vec)
    except TypeError:
        raise bad_type from None
    if len(values) != len(EMOTION_NAMES):
        raise ValueError(
            f"emotion vector must have {len(EMOTION_NAMES)} values "
            f"({', '.join(EMOTION_NAMES)}), got {len(values)}"
        )
    out = []
    for name, value in zip(EMOTION_NAMES, values, strict=True):
        if isinstance(value, bool):
            raise ValueError(f"emotion vector: {name} is a boolean, expected a number")
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"emotion vector: {name} = {value!r} is not a number") from None
        if not math.isfinite(x):
            raise ValueError(f"emotion vector: {name} = {x} is not finite")
        if not 0.0 <= x <= MAX_EMOTION_WEIGHT:
            raise ValueError(f"emotion vector: {name} = {x} is outside [0, {MAX_EMOTION_WEIGHT}]")
        out.append(x)
    return out


def validate_emo_alpha(alpha: float) -> float:
    """Check ``emo_alpha`` (emotion strength): a finite number in [0, 1]."""
    if isinstance(alpha, bool):
        raise ValueError("emo_alpha is a boolean, expected a number in [0, 1]")
    try:
        x = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"emo_alpha = {alpha!r} is not a number") from None
    if not math.isfinite(x) or not 0.0 <= x <= 1.0:
        raise ValueError(f"emo_alpha = {x} is outside [0, 1]")
    return x


# ---------------------------------------------------------------------------------------------
# Emotion matrices (feat1.pt / feat2.pt)
# ---------------------------------------------------------------------------------------------


def find_most_similar_cosine(query: torch.Tensor, matrix: torch.Tensor) -> int:
    """Index of the row of ``matrix`` [n, d] with the highest cosine similarity to ``query``.

    ``query`` is [d] or [1, d]; both are compared in float32 (as the reference does).
    """
    q = query.float().reshape(1, -1)
    m = matrix.float().to(q.device)
    return int(torch.argmax(F.cosine_similarity(q, m, dim=1)))


def _check_emo_num(emo_num: Sequence[int], source: str) -> tuple[int, ...]:
    try:
        groups = tuple(int(n) for n in emo_num)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: emo_num must be a list of integers, got {emo_num!r}") from None
    if len(groups) != len(EMOTION_NAMES) or any(n <= 0 for n in groups):
        raise ValueError(
            f"{source}: emo_num must be {len(EMOTION_NAMES)} positive group sizes "
            f"({', '.join(EMOTION_NAMES)}), got {list(emo_num)}"
        )
    return groups


def _check_matrix(obj: object, source: str, rows: int, width: int, what: str) -> torch.Tensor:
    if not isinstance(obj, torch.Tensor):
        raise CheckpointError(
            f"{source}: expected a bare tensor ({what}), found {type(obj).__name__}"
        )
    if not obj.dtype.is_floating_point:
        raise CheckpointError(f"{source}: {what} has dtype {obj.dtype}, expected a float tensor")
    if tuple(obj.shape) != (rows, width):
        raise CheckpointError(
            f"{source}: {what} has shape {list(obj.shape)}, expected [{rows}, {width}] "
            f"(rows = sum(emo_num) = {rows})"
        )
    if not torch.isfinite(obj).all():
        raise CheckpointError(f"{source}: {what} contains non-finite values")
    return obj


@dataclass(frozen=True)
class EmotionMatrices:
    """``feat1.pt`` (speaker rows, [sum(emo_num), 192]) and ``feat2.pt`` (emotion rows,
    [sum(emo_num), model_dim]), split row-wise into the 8 emotion groups."""

    spk: tuple[torch.Tensor, ...]
    emo: tuple[torch.Tensor, ...]

    @property
    def emo_num(self) -> tuple[int, ...]:
        return tuple(int(g.shape[0]) for g in self.emo)

    @classmethod
    def from_tensors(
        cls,
        spk_matrix: object,
        emo_matrix: object,
        emo_num: Sequence[int],
        model_dim: int,
        spk_source: str = "spk_matrix",
        emo_source: str = "emo_matrix",
    ) -> EmotionMatrices:
        """Validate both matrices against ``emo_num`` and ``model_dim``, then split them."""
        groups = _check_emo_num(emo_num, "config.yaml")
        rows = sum(groups)
        spk = _check_matrix(spk_matrix, spk_source, rows, STYLE_DIM, "speaker matrix (feat1)")
        emo = _check_matrix(emo_matrix, emo_source, rows, int(model_dim), "emotion matrix (feat2)")
        return cls(spk=tuple(torch.split(spk, groups)), emo=tuple(torch.split(emo, groups)))

    @classmethod
    def load(
        cls, spk_path: str | Path, emo_path: str | Path, emo_num: Sequence[int], model_dim: int
    ) -> EmotionMatrices:
        """Read the two bare-tensor pickles (``weights_only=True``) and validate them."""
        return cls.from_tensors(
            read_tensor_file(spk_path),
            read_tensor_file(emo_path),
            emo_num,
            model_dim,
            spk_source=str(spk_path),
            emo_source=str(emo_path),
        )

    @classmethod
    def from_config(cls, root: str | Path, cfg: Mapping) -> EmotionMatrices:
        """Load the matrices a model directory's ``config.yaml`` names (``spk_matrix``,
        ``emo_matrix``, ``emo_num``, ``gpt.model_dim``)."""
        root = Path(root)
        if "emo_num" not in cfg:
            raise ValueError(f"{root / 'config.yaml'}: no emo_num entry")
        return cls.load(
            root / str(cfg.get("spk_matrix") or "feat1.pt"),
            root / str(cfg.get("emo_matrix") or "feat2.pt"),
            cfg["emo_num"],
            int(cfg["gpt"]["model_dim"]),
        )

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> EmotionMatrices:
        """A copy on ``device`` with the emotion rows in ``dtype`` (speaker rows stay float)."""
        return EmotionMatrices(
            spk=tuple(g.to(device) for g in self.spk),
            emo=tuple(g.to(device=device, dtype=dtype) for g in self.emo),
        )

    def pick(
        self,
        style: torch.Tensor | None,
        use_random: bool = False,
        generator: torch.Generator | None = None,
    ) -> list[int]:
        """One row index per emotion group.

        Deterministic mode: the row whose speaker vector is most cosine-similar to ``style``
        (the CAMPPlus style of the speaker prompt, [1, 192]). Random mode: a uniform row per group
        drawn from ``generator`` (the reference uses Python's ``random``; any generator is fine
        because no golden depends on it).
        """
        if use_random:
            return [
                int(torch.randint(0, n, (1,), generator=generator).item()) for n in self.emo_num
            ]
        if style is None:
            raise ValueError("emotion vector mode needs the speaker style vector (or use_random)")
        return [find_most_similar_cosine(style, g) for g in self.spk]

    def mix(self, weights: Sequence[float] | torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
        """``emovec_mat = sum_g w_g * emo_g[index_g]`` as a [1, model_dim] tensor."""
        rows = torch.stack([g[i] for g, i in zip(self.emo, indices, strict=True)])
        w = torch.as_tensor(weights, dtype=torch.float32, device=rows.device)
        return (w.to(rows.dtype).unsqueeze(1) * rows).sum(0, keepdim=True)


# ---------------------------------------------------------------------------------------------
# Emotion from text (Qwen3)
# ---------------------------------------------------------------------------------------------

QWEN_SYSTEM_PROMPT = "文本情感分类"
# Emotion texts with one of these words swap the detected sad and melancholic scores: the model
# cannot tell the two apart and always answers "sad".
MELANCHOLIC_WORDS: tuple[str, ...] = (
    "低落",
    "melancholy",
    "melancholic",
    "depression",
    "depressed",
    "gloomy",
)
# Keys under which an answer may name one emotion instead of scoring all of them.
_LABEL_KEYS = ("emotion", "emotion_label", "label", "情感", "情绪")
# "key": number pairs in an answer that is not valid JSON.
_SCORE_PAIR = re.compile(r'"?([^\s":.,]+?)"?\s*:\s*([0-9.]+)')
_THINK_END = "</think>"


def _label_to_zh(value: object) -> str | None:
    """The Chinese key of an emotion named by ``value`` (Chinese or English label), else None."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    if value in _ZH_TO_EN:
        return value
    return _EN_TO_ZH.get(value.lower())


def _clamp_score(zh_key: str, value: object) -> float:
    if isinstance(value, str):
        value = value.strip()
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(
            f"emotion model returned a non-numeric score for {_ZH_TO_EN[zh_key]} "
            f"({zh_key}): {value!r}; please retry"
        ) from None
    if math.isnan(x):
        raise ValueError(f"emotion model returned NaN for {_ZH_TO_EN[zh_key]} ({zh_key})")
    return max(0.0, min(MAX_EMOTION_WEIGHT, x))


def _swap_sad_melancholic(scores: dict) -> None:
    scores["悲伤"], scores["低落"] = scores.get("低落", 0.0), scores.get("悲伤", 0.0)


def _resolve_labels(content: object) -> dict:
    """Turn label-style answers into scores.

    ``"悲伤"`` / ``{"emotion": "sad"}`` -> that emotion 1.0 (when no emotion key is scored),
    and a label given as a key's value (``{"高兴": "悲伤"}``) -> 1.0 for the named emotion,
    0.0 for the key.
    """
    scores = dict(content) if isinstance(content, dict) else {}
    named = _label_to_zh(content) if isinstance(content, str) else None
    if named is None:
        for alias in _LABEL_KEYS:
            named = _label_to_zh(scores.get(alias))
            if named is not None:
                break
    if named is not None and not any(k in scores for k in EMOTION_NAMES_ZH):
        scores[named] = 1.0
    for key in EMOTION_NAMES_ZH:
        label = _label_to_zh(scores.get(key))
        if label is not None:
            scores[key] = 1.0 if label == key else 0.0
            if label != key:
                scores[label] = 1.0
    return scores


def parse_emotion_response(answer: str, emo_text: str) -> dict[str, float]:
    """Decode the emotion model's answer into the 8 scores (English names, official order).

    The answer is JSON (``{"高兴": 0.0, ..., "自然": 0.5}``); anything else falls back to
    picking ``key: number`` pairs out of the text. English keys are accepted where the Chinese
    key is absent. If ``emo_text`` contains a melancholic word (:data:`MELANCHOLIC_WORDS`) the sad
    and melancholic scores are swapped. Scores are clamped to [0, 1.2]; when none is positive the
    result is calm = 1.0. A non-numeric score raises ValueError; an answer with nothing
    recognisable yields the calm default (as the reference does).
    """
    if _THINK_END in answer:
        answer = answer.rsplit(_THINK_END, 1)[1]
    answer = answer.strip()
    try:
        content: object = json.loads(answer)
    except json.JSONDecodeError:
        content = {}
        for m in _SCORE_PAIR.finditer(answer):
            try:
                content[m.group(1)] = float(m.group(2))
            except ValueError:
                raise ValueError(
                    f"emotion model answer has a malformed score {m.group(0)!r}; please retry"
                ) from None
    melancholic = any(word in emo_text.lower() for word in MELANCHOLIC_WORDS)
    if isinstance(content, dict):
        scores = dict(content)
        for key, value in content.items():
            zh = _EN_TO_ZH.get(str(key).strip().lower())
            if zh is not None and zh not in scores:
                scores[zh] = value
        if melancholic:
            _swap_sad_melancholic(scores)
        scores = _resolve_labels(scores)
    else:
        scores = _resolve_labels(content)
        if melancholic:
            _swap_sad_melancholic(scores)
    out = {_ZH_TO_EN[k]: _clamp_score(k, scores.get(k, 0.0)) for k in EMOTION_NAMES_ZH}
    if all(v <= 0.0 for v in out.values()):
        out["calm"] = 1.0
    return out


class QwenEmotion:
    """Emotion scores from text with the fine-tuned Qwen3 model of the checkpoint set
    (``qwen0.6bemo4-merge/``), loaded with transformers from the local folder only.

    The prompt is a chat with system message "文本情感分类" and the text as the user message,
    rendered by the tokenizer's chat template with thinking disabled; the answer is decoded
    greedily and parsed by :func:`parse_emotion_response`.
    """

    def __init__(
        self,
        model_dir: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        max_new_tokens: int = 512,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"{self.model_dir}: not a Qwen emotion model folder (config.json missing); "
                "emotion text needs qwen0.6bemo4-merge/ from the IndexTeam/IndexTTS-2 repo"
            )
        self.device = torch.device(device)
        if dtype is None:
            dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.max_new_tokens = int(max_new_tokens)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(
            str(self.model_dir), local_files_only=True, dtype=dtype
        ).to(self.device)
        self.model.eval()

    def build_prompt(self, text: str) -> str:
        """The exact prompt string fed to the model for ``text``."""
        messages = [
            {"role": "system", "content": QWEN_SYSTEM_PROMPT},
            {"role": "user", "content": text},
        ]
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
        )

    def _answer_from_ids(self, output_ids: list[int]) -> str:
        """Decode the generated ids, keeping only what follows the last ``</think>``."""
        think_end = self.tokenizer.convert_tokens_to_ids(_THINK_END)
        unk = self.tokenizer.unk_token_id
        if isinstance(think_end, int) and think_end != unk and think_end in output_ids:
            cut = len(output_ids) - output_ids[::-1].index(think_end)
            output_ids = output_ids[cut:]
        return self.tokenizer.decode(output_ids, skip_special_tokens=True)

    @torch.no_grad()
    def generate_answer(self, text: str) -> str:
        """The model's raw (greedy) answer for ``text``."""
        inputs = self.tokenizer([self.build_prompt(text)], return_tensors="pt").to(self.device)
        pad = self.tokenizer.eos_token_id
        generated = self.model.generate(
            **inputs,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
        new_ids = generated[0][inputs["input_ids"].shape[1] :].tolist()
        return self._answer_from_ids(new_ids)

    def inference(self, text: str) -> dict[str, float]:
        """Emotion scores for ``text``: a dict over :data:`EMOTION_NAMES`, in that order."""
        return parse_emotion_response(self.generate_answer(text), text)

    def __call__(self, text: str) -> dict[str, float]:
        return self.inference(text)


# ---------------------------------------------------------------------------------------------
# Argument precedence and the final emotion vector
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmotionPlan:
    """What inference's argument preprocessing decided (spec 2.1).

    ``emo_audio`` is the separate emotion prompt, or None when the speaker prompt doubles as the
    emotion prompt (then its emotion features must still be computed with the emotion chain of
    spec 2.3, which differs slightly from the speaker chain). ``merge_alpha`` is the alpha for
    ``merge_emovec`` (1.0 without a separate emotion prompt). ``emo_vector`` holds the
    alpha-scaled weights in vector mode, else None. ``detected`` is the text model's answer when
    emotion text was used.
    """

    emo_audio: str | Path | None
    merge_alpha: float
    emo_vector: tuple[float, ...] | None = None
    detected: dict[str, float] | None = None

    @property
    def mode(self) -> str:
        """ "text", "vector", "audio" or "speaker" (emotion of the speaker prompt)."""
        if self.detected is not None:
            return "text"
        if self.emo_vector is not None:
            return "vector"
        return "audio" if self.emo_audio is not None else "speaker"


EmotionTextModel = Callable[[str], Mapping[str, float]]


def plan_emotion(
    text: str,
    emo_audio_prompt: str | Path | None = None,
    emo_alpha: float = 1.0,
    emo_vector: Sequence[float] | Mapping[str, float] | None = None,
    use_emo_text: bool = False,
    emo_text: str | None = None,
    text_model: EmotionTextModel | None = None,
) -> EmotionPlan:
    """Apply the reference's emotion-argument precedence.

    1. Emotion text or an emotion vector disables the emotion prompt.
    2. With ``use_emo_text`` the emotion text (empty/None -> ``text``) goes through
       ``text_model`` (a :class:`QwenEmotion` or any callable returning the 8 named scores) and its
       scores become the emotion vector.
    3. An emotion vector is validated, then scaled by ``emo_alpha``
       (:func:`scale_emo_vector`).
    4. Without an emotion prompt the speaker prompt is the emotion prompt and the merge alpha
       is 1.0.

    Inputs are validated (``emo_alpha`` in [0, 1], vector entries in [0, 1.2]).
    """
    alpha = validate_emo_alpha(emo_alpha)
    vector = validate_emo_vector(emo_vector) if emo_vector is not None else None
    if use_emo_text or vector is not None:
        emo_audio_prompt = None
    detected = None
    if use_emo_text:
        if text_model is None:
            raise RuntimeError(
                "emotion text needs the Qwen emotion model (qwen0.6bemo4-merge/), which is not "
                "loaded"
            )
        source = emo_text if emo_text and emo_text.strip() else text
        scores = text_model(source)
        detected = {name: float(scores[name]) for name in EMOTION_NAMES}
        vector = validate_emo_vector([detected[name] for name in EMOTION_NAMES])
    if vector is not None:
        vector = scale_emo_vector(vector, alpha)
    if emo_audio_prompt is None:
        alpha = 1.0
    return EmotionPlan(
        emo_audio=emo_audio_prompt,
        merge_alpha=alpha,
        emo_vector=tuple(vector) if vector is not None else None,
        detected=detected,
    )


class EmotionMerger(Protocol):
    """What :func:`resolve_emotion` needs from the GPT (UnifiedVoice)."""

    def merge_emovec(
        self,
        speech_conditioning_input: torch.Tensor,
        emo_speech_conditioning_input: torch.Tensor,
        cond_lengths: torch.Tensor,
        emo_cond_lengths: torch.Tensor,
        alpha: float = 1.0,
    ) -> torch.Tensor: ...


@dataclass
class EmotionResult:
    """The emotion conditioning of one request.

    ``emovec`` [1, model_dim] is what the GPT conditions on (added to every speaker latent);
    ``merged`` is ``merge_emovec``'s output; in vector mode ``emovec_mat`` and ``indices`` are the
    mixed matrix rows and the row picked per group.
    """

    emovec: torch.Tensor
    merged: torch.Tensor
    emovec_mat: torch.Tensor | None = None
    indices: list[int] | None = None
    weights: tuple[float, ...] | None = field(default=None)


def merge_prompts(
    gpt: EmotionMerger, spk_cond: torch.Tensor, emo_cond: torch.Tensor, alpha: float
) -> torch.Tensor:
    """``gpt.merge_emovec`` of the speaker and emotion prompts' features [1, T, 1024], with the
    lengths the reference passes: ``[1, model_dim]``."""
    # The reference passes the feature width (1024) as both lengths. For B=1 any length >= T
    # means "no padding", so this equals the true lengths for prompts up to 1024 frames.
    spk_len = torch.tensor([spk_cond.shape[-1]], device=spk_cond.device)
    emo_len = torch.tensor([emo_cond.shape[-1]], device=emo_cond.device)
    return gpt.merge_emovec(spk_cond, emo_cond, spk_len, emo_len, alpha=alpha)


def resolve_emotion(
    gpt: EmotionMerger,
    spk_cond: torch.Tensor,
    emo_cond: torch.Tensor,
    plan: EmotionPlan,
    style: torch.Tensor | None = None,
    matrices: EmotionMatrices | None = None,
    use_random: bool = False,
    generator: torch.Generator | None = None,
    merged: torch.Tensor | None = None,
) -> EmotionResult:
    """The final emotion vector (spec 2.4, 2.6a).

    ``spk_cond`` / ``emo_cond`` are the w2v-bert features [1, T, 1024] of the speaker prompt and
    of the emotion prompt (``plan.emo_audio``, or the speaker prompt through the emotion chain).
    ``merged = gpt.merge_emovec(spk, emo, alpha=plan.merge_alpha)``; in vector mode
    ``emovec = emovec_mat + (1 - sum(w)) * merged`` with ``emovec_mat`` from ``matrices`` (rows
    picked by ``style`` or at random), else ``emovec = merged``. ``merged``: that merge,
    computed before for the same features and alpha (:meth:`tts.pipeline.Engine.emotion_conditioning`
    keeps it per prompt pair), else computed here.
    """
    if merged is None:
        merged = merge_prompts(gpt, spk_cond, emo_cond, plan.merge_alpha)
    if plan.emo_vector is None:
        return EmotionResult(emovec=merged, merged=merged)
    if matrices is None:
        raise ValueError("emotion vector mode needs the emotion matrices (feat1.pt, feat2.pt)")
    matrices = matrices.to(merged.device)
    indices = matrices.pick(style, use_random=use_random, generator=generator)
    mat = matrices.mix(plan.emo_vector, indices)
    w = torch.tensor(plan.emo_vector, dtype=torch.float32, device=merged.device)
    # As the reference: the mix stays float32 even when merge_emovec ran in half precision
    # under autocast (type promotion), so the result is float32 in vector mode.
    emovec = mat + (1 - torch.sum(w)) * merged
    return EmotionResult(
        emovec=emovec, merged=merged, emovec_mat=mat, indices=indices, weights=plan.emo_vector
    )
