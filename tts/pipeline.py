"""End-to-end IndexTTS2 inference, in stages that the workflow can cache as files.

Stages (each a method of :class:`Engine`, each batched over rows):

1. :meth:`Engine.speaker_conditioning` - one speaker prompt file -> features (cached per file).
2. :meth:`Engine.emotion_conditioning` - one request's emotion settings -> emotion vector.
3. :meth:`Engine.semantic_tokens` - text + conditioning -> semantic codes and GPT latents (GPU);
   the text segments of all rows run through the GPT together, in batches of equal settings.
4. :meth:`Engine.render` - codes + latents + speaker features -> 22.05 kHz waveform (GPU).

On CUDA the Engine uses the fast paths of :mod:`tts.fast` (static-cache CUDA-graph GPT decoder,
fused s2mel solve, fused BigVGAN activation) unless it was opened with ``fast=False``; on the CPU
it always runs the plain reference paths.

Every stage returns one :class:`RowResult` per input row: a failing row (bad text, NaN in a
tensor, out of memory after retries) never takes the other rows of its batch down with it.
Intermediate results are plain ``dict[str, torch.Tensor]`` saved with safetensors.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import platform
import re
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tts.checkpoints import CheckpointSet, missing_files, sha256
from tts.loading import CheckpointError
from tts.text.frontend import TextPlan

log = logging.getLogger("tts.pipeline")

SAMPLE_RATE = 22050

# Official generation defaults (infer_v2); the workflow config may override any of them.
DEFAULT_SAMPLING: dict[str, float | int | bool] = {
    "do_sample": True,
    "top_k": 30,
    "top_p": 0.8,
    "temperature": 0.8,
    "num_beams": 3,
    "repetition_penalty": 10.0,
    "length_penalty": 0.0,
    "max_mel_tokens": 1500,
    "max_text_tokens_per_segment": 120,
    "interval_silence_ms": 200,
    "diffusion_steps": 25,
    "cfg_rate": 0.7,
}


# The fast GPT decoder variant the Engine uses on CUDA (tts.fast.decode.VARIANTS).
DEFAULT_DECODER = "graphkk"
# The one for a process that makes one GPT call (a workflow job, `tts synth`): graphkk without
# torch.compile, whose compiles would cost such a process seconds (tts.fast.variants).
ONE_CALL_DECODER = "graphke"
# Key of a speaker file's emotion features (Engine.emotion_features) in its speaker
# conditioning, where the workflow's speaker job stores them for the emotion job.
EMOTION_FEATURES = "emo_cond_emb"
# Prompts whose conditioning an Engine keeps, per kind (speaker conditioning, emotion features,
# the merge of both, the GPT's speaker latent).
PROMPT_CACHE_FILES = 16


@dataclass
class SynthesisRequest:
    """One row of work: what to say, in which voice, with which emotion and sampling."""

    id: str
    text: str
    speaker: Path
    emo_audio: Path | None = None
    emo_alpha: float = 1.0
    emo_vector: list[float] | None = None
    emo_text: str | None = None  # use the Qwen emotion model on this text ("" = the row's text)
    use_random: bool = False
    seed: int | None = None
    sampling: dict = field(default_factory=dict)  # overrides of DEFAULT_SAMPLING
    # The text front-end's result for ``text`` when it ran elsewhere (the workflow's CPU text
    # stage); None: the Engine runs the front-end itself.
    text_plan: TextPlan | None = None

    def sampling_options(self) -> dict:
        return {**DEFAULT_SAMPLING, **self.sampling}


@dataclass
class RowResult:
    """The outcome of one row in one stage: ``value`` when ok, else ``error`` says why."""

    id: str
    value: dict[str, torch.Tensor] | None = None
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per sub-stage
    warnings: list[str] = field(default_factory=list)  # e.g. unknown characters, token limit hit

    @property
    def ok(self) -> bool:
        return self.error is None


class DeviceError(RuntimeError):
    """The requested device cannot be used (e.g. CUDA asked for on a machine without it)."""


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# The device values every entry point takes (workflow/schemas/config.schema.yaml: the same).
DEVICE_PATTERN = re.compile(r"cpu|auto|cuda(:[0-9]+)?")


def resolve_device(device: str | torch.device) -> torch.device:
    """``cuda``/``cuda:N``/``cpu``/``auto`` -> torch.device, with a clear error for anything
    else and when CUDA is asked for and missing. ``auto``: the first CUDA device where there
    is one, else the CPU."""
    device = str(device)
    if not DEVICE_PATTERN.fullmatch(device):
        raise DeviceError(f"unsupported device {device!r}; use cuda, cuda:N, cpu or auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(
            f"device {device!r} was requested but CUDA is not available on this machine; "
            "run on the CPU instead: `--device cpu` for the tts command, "
            "`--config device=cpu` for the workflow (or set device: cpu in config/config.yaml)"
        )
    return torch.device(device)


def default_seed(request: SynthesisRequest) -> int:
    """A stable per-row seed (from id and text) so that reruns reproduce the same audio."""
    digest = hashlib.sha256(f"{request.id}\0{request.text}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def save_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None
) -> None:
    """Write tensors as safetensors atomically (temporary name, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    try:
        save_file(cpu, str(tmp), metadata={k: str(v) for k, v in (metadata or {}).items()})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file written by :func:`save_tensors`."""
    from safetensors.torch import load_file

    return load_file(str(path))


def _check_finite(stage: str, t: torch.Tensor) -> None:
    if not torch.isfinite(t).all():
        raise FloatingPointError(
            f"NaN or inf in the {stage} output; nothing was written for this row"
        )


def _finite_on_host(stage: str, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``out``'s tensors as float32 on the CPU, after checking that all are finite (a
    :class:`FloatingPointError` names the first that is not). The checks are queued on the
    tensors' device together and read after the copies, so the host waits for the device
    once, not once per check and copy."""
    flags = torch.stack([torch.isfinite(t).all() for t in out.values()])
    host = {name: t.float().cpu() for name, t in out.items()}
    for name, ok in zip(out, flags.tolist(), strict=True):
        if not ok:
            raise FloatingPointError(
                f"NaN or inf in the {stage} output ({name}); nothing was written for this row"
            )
    return host


def configure_cudnn(benchmark: bool = False) -> None:
    """cuDNN on, TF32 off (float32 parity), and deterministic kernels unless ``benchmark``.

    Off (the default), cuDNN picks each convolution's kernel by heuristics among its
    deterministic ones, so every job, process and GPU computes the same bits. On, it times the
    candidate kernels the first time it meets a shape and keeps the fastest for the process
    (the shapes of a batch repeat: BigVGAN and the DiT see the same few lengths), which may be
    faster but may also round differently from one process, GPU or driver to the next.
    Both flags are process-wide; they are recorded in :meth:`Engine.provenance`.
    """
    torch.backends.cudnn.enabled = True
    torch.backends.cudnn.benchmark = bool(benchmark)
    torch.backends.cudnn.deterministic = not benchmark
    torch.backends.cuda.matmul.allow_tf32 = False  # parity: keep fp32 matmuls exact
    torch.backends.cudnn.allow_tf32 = False


def speaker_is_emotion_prompt(request: SynthesisRequest) -> bool:
    """True when the row's speaker file is also its emotion prompt: no emotion audio, or one
    that emotion text or an emotion vector disables (:func:`tts.emotion.plan_emotion`'s
    precedence), or the speaker file itself."""
    if request.emo_audio is None or request.emo_text is not None or request.emo_vector is not None:
        return True
    key = _file_key(request.emo_audio)
    return key is not None and key == _file_key(request.speaker)


def _file_key(path: str | Path) -> tuple | None:
    """(resolved path, size, modification time in ns) of a file, None if it cannot be read:
    what :meth:`Engine._memo` keys a prompt file's conditioning by."""
    try:
        resolved = Path(path).resolve()
        st = resolved.stat()
    except OSError:
        return None  # the loader reports the missing or unreadable file
    return (str(resolved), st.st_size, st.st_mtime_ns)


def _fingerprint(t: torch.Tensor) -> str:
    """A digest of a tensor's shape, dtype and bytes (~1.5 ms for a 10 s prompt's features;
    sha256, which CPUs with SHA extensions run ~2.5x as fast as blake2b)."""
    data = t.detach().contiguous().cpu()
    digest = hashlib.sha256()
    digest.update(f"{tuple(data.shape)} {data.dtype}".encode())
    digest.update(memoryview(data.view(torch.uint8).numpy()))
    return digest.hexdigest()[:32]


# The attribute through which a tensor carries its memo identity: (its ``_version`` then, key).
_IDENTITY = "_tts_identity"
_COMPUTED = itertools.count()  # numbers what Engines compute, for those identities


def _content_key(t: torch.Tensor) -> tuple:
    """A key for ``t``'s content in :meth:`Engine._memo`: the identity it carries
    (:func:`_tag`: an Engine numbers what it computes, and its copies carry the number) as
    long as it was not modified in place since, else its :func:`_fingerprint` (then kept on
    the tensor the same way, so each tensor is hashed once)."""
    tagged = getattr(t, _IDENTITY, None)
    if tagged is not None and tagged[0] == t._version:
        return tagged[1]
    key = ("bytes", _fingerprint(t))
    _tag(t, key)
    return key


def _tag(t: torch.Tensor, key: tuple) -> None:
    setattr(t, _IDENTITY, (t._version, key))


class Engine:
    """The loaded model set on one device. Components load lazily, once, on first use.

    The GPT runs in the chosen dtype (float32, bfloat16 or float16); everything else runs in
    float32, as the reference does (s2mel and BigVGAN never run in half precision there).

    ``fast`` (used on CUDA only): GPT generation through :func:`tts.fast.decode.generate` and
    its teacher-forced latent pass through CUDA graphs (:mod:`tts.fast.latent_pass`), the
    s2mel flow-matching solve through :func:`tts.fast.s2mel.generate_padded` (fused weight norm,
    the segments of a call's rows solved together, up to ``render_batch_items`` per batch;
    eager loop: a CUDA graph per shape would rarely be replayed, segments differ in length) and
    BigVGAN's activation through the fused kernel. ``gpt_decoder`` names the fast decoder's
    variant (:data:`tts.fast.decode.VARIANTS`; default ``graphkk``: Triton projections up to 8
    rows launched ahead of their inputs (compiled fused pieces above), beams reading the cache
    through a source-row table with the Triton attention, the logits processors and the beam
    draw as one Triton kernel each, the rest of the token choice compiled, and the decoder with
    its CUDA graphs kept for the next call of the same batch size; docs/benchmarks.md has the
    measurements).
    ``gpt_batch_items``: the most (row, segment) items one GPT generation call takes (see
    :meth:`semantic_tokens`). ``render_precision`` (CUDA with ``fast`` only): the precision of
    the flow-matching solve and of BigVGAN, as ``tts bench``'s s2mel/vocoder precisions
    (float32 = the reference; tf32, bfloat16, float16 trade exactness for speed: docs/gpu.md
    lists the measured bounds of the half-precision cases). ``features_precision`` (CUDA with
    ``fast`` only): the precision of the w2v-bert encoder of the speaker and emotion prompts
    (same choices; float32 = the reference, the only one whose features equal its own).
    """

    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        cs: CheckpointSet,
        device: torch.device,
        dtype: torch.dtype,
        fast: bool = True,
        gpt_batch_items: int = 16,
        gpt_decoder: str = DEFAULT_DECODER,
        render_precision: str = "float32",
        render_batch_items: int = 16,
        features_precision: str = "float32",
    ):
        self.cs = cs
        self.device = device
        self.dtype = dtype
        self.fast = bool(fast) and device.type == "cuda"
        if int(gpt_batch_items) < 1:
            raise ValueError(f"gpt_batch_items must be >= 1, got {gpt_batch_items}")
        self.gpt_batch_items = int(gpt_batch_items)
        if int(render_batch_items) < 1:
            raise ValueError(f"render_batch_items must be >= 1, got {render_batch_items}")
        self.render_batch_items = int(render_batch_items)
        from tts.fast.variants import VARIANTS

        if gpt_decoder not in VARIANTS:
            raise ValueError(f"gpt_decoder {gpt_decoder!r} is not one of {', '.join(VARIANTS)}")
        self.gpt_decoder = gpt_decoder
        self.render_precision = self._precision("render_precision", render_precision)
        self.features_precision = self._precision("features_precision", features_precision)
        self._parts: dict[str, object] = {}
        self._prompt_cache: OrderedDict[tuple, object] = OrderedDict()
        self._vocoder_fused = False
        self.load_seconds: dict[str, float] = {}
        # True in a process that computes emotion vectors and nothing after them (the workflow's
        # emotion job): emotion conditioning then loads the GPT's emotion path alone
        # ("gpt_emotion", 19% of gpt.pth) unless the whole GPT is loaded already.
        self.emotion_gpt_alone = False
        # True in a process that generates speech from emotion vectors computed elsewhere (the
        # workflow's tokens job): "gpt" then loads without its emotion path and text head
        # (tts.components.load_gpt_speech, 79% of gpt.pth); emotion conditioning, if asked for
        # all the same, loads the emotion path alone.
        self.gpt_speech_alone = False

    def _precision(self, setting: str, value: str) -> str:
        """``value`` if it is one of :data:`tts.precision.PRECISIONS` that this engine can run
        (anything but float32 needs CUDA and the fast paths), else a ValueError naming
        ``setting``."""
        from tts.precision import PRECISIONS

        if value not in PRECISIONS:
            raise ValueError(f"{setting} {value!r} is not one of {', '.join(PRECISIONS)}")
        if value != "float32" and not self.fast:
            raise ValueError(f"{setting} {value} needs CUDA and fast: true; use float32")
        return value

    @classmethod
    def open(
        cls,
        checkpoints: str | Path,
        device: str = "cuda",
        dtype: str = "float32",
        fast: bool = True,
        gpt_batch_items: int = 16,
        gpt_decoder: str = DEFAULT_DECODER,
        render_precision: str = "float32",
        cudnn_benchmark: bool = False,
        render_batch_items: int = 16,
        features_precision: str = "float32",
    ) -> Engine:
        """Open a checkpoint set for inference; fails early on a missing file or device.

        ``fast``: use the fast CUDA paths (ignored on the CPU, which runs the plain paths);
        ``gpt_batch_items``: most generation items per GPT call; ``gpt_decoder``: the fast
        decoder's variant; ``render_precision``: s2mel solve and vocoder precision;
        ``render_batch_items``: most segments per s2mel solve (CUDA with ``fast``);
        ``features_precision``: the prompts' w2v-bert encoder precision;
        ``cudnn_benchmark``: let cuDNN time its kernels per shape (see :func:`configure_cudnn`).

        Also fails early, naming the file, on anything :func:`tts.preflight.check_set` finds
        without loading tensors: an IndexTTS 1.x set, config.yaml problems, empty, text,
        truncated, unreadable or wrong-container files, a pickle that would run code. Tensor
        problems (names, shapes, dtypes, NaN) raise :class:`CheckpointError` when the component
        loads.
        """
        from tts.preflight import check_set

        dev = resolve_device(device)
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        if DTYPES[dtype] != torch.float32 and dev.type == "cpu":
            raise ValueError(f"dtype {dtype} needs CUDA; use float32 on the CPU")
        missing = missing_files(checkpoints)
        if any(key == "config" for key, _, _ in missing):
            lines = [f"{key}: {path} ({source})" for key, path, source in missing]
            raise CheckpointError(
                f"{checkpoints}: {len(missing)} checkpoint file(s) missing:\n  "
                + "\n  ".join(lines)
            )
        if dev.type == "cuda":
            configure_cudnn(cudnn_benchmark)
        return cls(
            check_set(checkpoints),
            dev,
            DTYPES[dtype],
            fast=fast,
            gpt_batch_items=gpt_batch_items,
            gpt_decoder=gpt_decoder,
            render_precision=render_precision,
            render_batch_items=render_batch_items,
            features_precision=features_precision,
        )

    @property
    def is_demo(self) -> bool:
        """True when the set was written by `tts demo-checkpoints` (random weights)."""
        return self.cs.is_demo

    # -- components ---------------------------------------------------------------------------

    def part(self, name: str):
        """The loaded component ``name`` (gpt, gpt_emotion, s2mel, length_regulator,
        semantic_codec, campplus, bigvgan, features, tokenizer, matrices, qwen), loading it on
        first use."""
        if name not in self._parts:
            start = time.perf_counter()
            self._parts[name] = self._load(name)
            self.load_seconds[name] = time.perf_counter() - start
        return self._parts[name]

    def _load(self, name: str):
        from tts.components import load_component

        if name == "gpt_emotion":
            from tts.components import load_gpt_emotion

            module, _ = load_gpt_emotion(self.cs)
            return self._fast_gpt(module.to(device=self.device, dtype=self.dtype).eval())
        if name == "gpt" and self.gpt_speech_alone:
            from tts.components import load_gpt_speech

            module, _ = load_gpt_speech(self.cs)
            return self._fast_gpt(module.to(device=self.device, dtype=self.dtype).eval())
        if name == "length_regulator":
            from tts.components import load_length_regulator

            module, _ = load_length_regulator(self.cs)
            return module["length_regulator"].to(device=self.device, dtype=torch.float32).eval()
        if name in ("gpt", "s2mel", "semantic_codec", "campplus", "bigvgan"):
            module, _ = load_component(name, self.cs)
            dtype = self.dtype if name == "gpt" else torch.float32
            module = module.to(device=self.device, dtype=dtype).eval()
            if name == "bigvgan":
                module.remove_weight_norm()
            return self._fast_gpt(module) if name == "gpt" else module
        if name == "features":
            from tts.models.w2v_bert import SemanticFeatures

            layer = int(self.cs.config.get("w2v_bert_layer", 17))
            return SemanticFeatures.from_checkpoints(self.cs, device=self.device, layer=layer)
        if name == "tokenizer":
            from tts.text.tokenizer import TextTokenizer

            return TextTokenizer(self.cs.path("bpe"))
        if name == "matrices":
            from tts.emotion import EmotionMatrices

            return EmotionMatrices.from_config(self.cs.root, self.cs.config).to(self.device)
        if name == "qwen":
            from tts.emotion import QwenEmotion

            folder = self.cs.path("qwen_emotion")
            if not folder.is_dir():
                raise CheckpointError(
                    f"{folder}: missing; emotion from text needs the Qwen emotion model "
                    "(qwen0.6bemo4-merge/ from the Hugging Face repo IndexTeam/IndexTTS-2)"
                )
            return QwenEmotion(folder, device=self.device)
        raise KeyError(f"unknown engine part {name!r}")

    def provenance(self) -> dict:
        """What produced the audio: code, checkpoints, device, dtype, cuDNN, library versions."""
        import tts

        info = {
            "code_version": tts.__version__,
            "git": _git_describe(),
            "checkpoints": str(self.cs.root),
            "demo_checkpoints": self.is_demo,
            "device": str(self.device),
            "device_name": torch.cuda.get_device_name(self.device)
            if self.device.type == "cuda"
            else platform.processor() or platform.machine(),
            "gpt_dtype": str(self.dtype).removeprefix("torch."),
            "render_precision": self.render_precision,
            "features_precision": self.features_precision,
            "fast": self.fast,
            "gpt_decoder": self.gpt_decoder if self.fast else "tts.generation (plain)",
            "gpt_batch_items": self.gpt_batch_items,
            "render_batch_items": self.render_batch_items if self.fast else 1,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn_enabled": torch.backends.cudnn.enabled,
            "cudnn_version": torch.backends.cudnn.version()
            if torch.backends.cudnn.is_available()
            else None,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
        }
        return info

    def checkpoint_hashes(self) -> dict[str, str]:
        """SHA-256 of every checkpoint file of the set (slow on real weights: hashes GBs)."""
        return {k: sha256(p) for k, p in self.cs.required_paths().items() if p.is_file()}

    # -- stage 1: speaker prompt ----------------------------------------------------------------

    def _memo(self, kind: str, key: tuple | None, compute):
        """``compute()``, or what it returned before under ``(kind, *key)``; ``key`` None: not
        kept. Rows of a batch mostly share their prompts, and a prompt's conditioning is a
        pure function of the file (:func:`_file_key`) or of the features computed from it
        (:func:`_content_key`), so it is computed once per Engine. At most
        :data:`PROMPT_CACHE_FILES` entries per kind, the least recently used dropped; failures
        are not kept."""
        if key is None:
            return compute()
        key = (kind, *key)
        if key in self._prompt_cache:
            self._prompt_cache.move_to_end(key)
            return self._prompt_cache[key]
        value = compute()
        self._prompt_cache[key] = value
        if sum(k[0] == kind for k in self._prompt_cache) > PROMPT_CACHE_FILES:
            oldest = next(k for k in self._prompt_cache if k[0] == kind)
            del self._prompt_cache[oldest]
        return value

    def _is_kept(self, kind: str, key: tuple) -> bool:
        """True when :meth:`_memo` holds a value under ``(kind, *key)``."""
        return (kind, *key) in self._prompt_cache

    def clear_prompt_cache(self) -> None:
        """Forget every prompt's conditioning and latent (``tts bench`` times a new prompt each
        pass)."""
        self._prompt_cache.clear()

    def speaker_conditioning(
        self, audio_path: str | Path, emotion_too: bool = False
    ) -> dict[str, torch.Tensor]:
        """Speaker prompt file -> features every later stage needs (spec 2.2), on the CPU.

        ``spk_cond_emb`` [1, T, 1024] normalised w2v-bert features, ``style`` [1, 192] CAMPPlus
        embedding, ``ref_mel`` [1, 80, T_ref] and ``prompt_condition`` [1, T_ref, C]. Computed
        once per prompt file (:meth:`_memo`); each call returns new tensors.

        ``emotion_too``: the file is an emotion prompt as well (a row without emotion audio,
        see :func:`speaker_is_emotion_prompt`). Its :meth:`emotion_features`, which come from
        the file read at 16 kHz rather than resampled from 22.05 kHz, are then computed in the
        same w2v-bert forward as the speaker's (:meth:`SemanticFeatures.batch`) and kept for
        :meth:`emotion_features`: one forward instead of two.
        """
        out = self._memo(
            "speaker",
            _file_key(audio_path),
            lambda: self._speaker_conditioning(audio_path, emotion_too),
        )
        mine = {k: v.clone() for k, v in out.items()}  # callers own what they get
        # Later stages key their memos by these features' content: the copy carries the
        # identity its original got when computed, instead of being hashed (~2 MB) there.
        _tag(mine["spk_cond_emb"], _content_key(out["spk_cond_emb"]))
        return mine

    @torch.no_grad()
    def _speaker_conditioning(
        self, audio_path: str | Path, emotion_too: bool = False
    ) -> dict[str, torch.Tensor]:
        from tts.audio import (
            campplus_features,
            load_prompt,
            load_prompt_rates,
            mel_kwargs,
            mel_spectrogram,
            resample,
        )

        dev = self.device
        key = _file_key(audio_path)
        emotion_now = emotion_too and key is not None and not self._is_kept("emotion", key)
        # The file decoded once where it is the emotion prompt too (read at 16 kHz there).
        if emotion_now:
            wav22, emo16 = load_prompt_rates(audio_path, (SAMPLE_RATE, 16000))
            emo16 = emo16.to(dev)
        else:
            wav22 = load_prompt(audio_path, SAMPLE_RATE)[0]
        # Every copy from the host first (the mel's tables too, on a first call): such a copy
        # waits for the GPU's queue to drain, so one made after w2v-bert's kernels were queued
        # would hold the host until they ran, instead of letting it queue CAMPPlus's ~900
        # small kernels meanwhile (tests/test_gpu.py checks that nothing there waits).
        # CAMPPlus's Kaldi filterbanks run on the device, where the reference computes them: on
        # the host they kept the GPU idle (~17 ms for 10 s of audio on a 2-core CPU).
        wav16 = resample(wav22, SAMPLE_RATE, 16000).to(dev)  # on the host, as the reference
        wav22 = wav22.to(dev)
        ref_mel = mel_spectrogram(wav22, **mel_kwargs(self.cs.config["s2mel"]))
        fbank = campplus_features(wav16).unsqueeze(0)
        features = self.part("features")
        if emotion_now:
            spk_cond_emb, emo_cond = features.batch([wav16, emo16], self.features_precision)
            self._memo("emotion", key, lambda: emo_cond)
        else:
            spk_cond_emb = features(wav16, self.features_precision)
        _, s_ref = self.part("semantic_codec").quantize(spk_cond_emb)
        style = self._campplus()(fbank)
        ylens = torch.full((1,), ref_mel.size(2), device=dev)
        # s2mel's length regulator; loaded alone unless s2mel is (a speaker job needs no DiT).
        regulator = (
            self._parts["s2mel"].length_regulator
            if "s2mel" in self._parts
            else self.part("length_regulator")
        )
        prompt_condition = regulator(s_ref, ylens)[0]
        out = {
            "spk_cond_emb": spk_cond_emb,
            "style": style,
            "ref_mel": ref_mel,
            "prompt_condition": prompt_condition,
        }
        host = _finite_on_host("speaker conditioning", out)
        _tag(host["spk_cond_emb"], ("computed", next(_COMPUTED)))  # see speaker_conditioning
        return host

    def _campplus(self):
        """CAMPPlus, with ``fast`` through its CUDA graphs (:func:`tts.fast.conditioning.
        campplus_runner`: ~950 small kernels become one replay per prompt-length bucket)."""
        model = self.part("campplus")
        if not self.fast:
            return model
        from tts.fast.conditioning import campplus_runner

        return campplus_runner(model)

    # -- stage 2: emotion -----------------------------------------------------------------------

    @torch.no_grad()
    def emotion_features(self, audio_path: str | Path) -> torch.Tensor:
        """w2v-bert features ``[1, T, 1024]`` of an emotion prompt file through the 16 kHz
        emotion chain (on the device), computed once per file (:meth:`_memo`). They differ
        from a speaker prompt's ``spk_cond_emb`` of the same file, which goes through 22.05 kHz
        and a resampler, as in the reference. Shared with later calls: do not modify."""
        from tts.audio import load_prompt

        return self._memo(
            "emotion",
            _file_key(audio_path),
            lambda: self.part("features")(
                load_prompt(audio_path, 16000)[0], self.features_precision
            ),
        )

    @torch.no_grad()
    def emotion_conditioning(
        self,
        request: SynthesisRequest,
        speaker: dict[str, torch.Tensor],
        emotion_prompt: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The row's emotion vector ``emovec`` [1, model_dim] (spec 2.1, 2.3, 2.4, 2.6a).

        Precedence as the reference: emotion text or an emotion vector disable the emotion
        audio; without emotion audio the speaker prompt (through the 16 kHz emotion chain) is the
        emotion prompt. The emotion prompt's w2v-bert features are computed once per file
        (:meth:`_memo`), and so is their merge with the speaker's: a batch's rows mostly share
        them. ``speaker`` may carry the speaker file's emotion features under
        :data:`EMOTION_FEATURES` (:meth:`emotion_features`, computed where the speaker was
        conditioned), and ``emotion_prompt`` those of the row's emotion audio file; each is
        used where its file is the emotion prompt.
        """
        from tts.emotion import merge_prompts, plan_emotion, resolve_emotion

        use_text = request.emo_text is not None
        plan = plan_emotion(
            request.text,
            emo_audio_prompt=request.emo_audio,
            emo_alpha=request.emo_alpha,
            emo_vector=request.emo_vector,
            use_emo_text=use_text,
            emo_text=request.emo_text or None,
            text_model=self.part("qwen") if use_text else None,
        )
        emo_path = plan.emo_audio or request.speaker
        emo_key = _file_key(emo_path)
        emo_cond = None  # the prompt's features, from a speaker job where it ran them
        for path, conditioning in ((request.speaker, speaker), (request.emo_audio, emotion_prompt)):
            given = (conditioning or {}).get(EMOTION_FEATURES)
            if given is None or path is None or emo_key is None:
                continue
            if _file_key(path) == emo_key:
                emo_cond = given.to(self.device)  # computed by a speaker job (the workflow)
                break
        if emo_cond is None:
            emo_cond = self.emotion_features(emo_path)
        gpt = self._emotion_gpt()
        spk_cond = speaker["spk_cond_emb"]
        gen = torch.Generator(device="cpu").manual_seed(_seed(request))

        def merge() -> torch.Tensor:
            # The features move to the device only here: a cached merge does not need them.
            return merge_prompts(
                gpt, spk_cond.to(self.device, self.dtype), emo_cond.to(self.dtype), plan.merge_alpha
            )

        with self._gpt_autocast():
            # The merge of the two prompts' emotion encodings, kept per (speaker features,
            # emotion file, alpha): rows that share their prompts share it.
            merge_key = (
                None
                if emo_key is None
                else (_content_key(spk_cond), *emo_key, float(plan.merge_alpha))
            )
            merged = self._memo("merged", merge_key, merge)
            result = resolve_emotion(
                gpt,
                spk_cond,
                emo_cond,
                plan,
                style=speaker["style"].to(self.device),
                matrices=self.part("matrices") if plan.emo_vector is not None else None,
                use_random=request.use_random,
                generator=gen,
                merged=merged,
            )
        _check_finite("emotion conditioning", result.emovec)
        # A copy: on the CPU the result can be the cached merge itself, which rows would share.
        out = {"emovec": result.emovec.float().cpu().clone()}
        if plan.emo_vector is not None:
            out["emo_vector"] = torch.tensor(plan.emo_vector)
        return out

    def _emotion_gpt(self):
        """The module emotion conditioning runs: the whole GPT where it is (or is to be) loaded
        with its emotion path, else the emotion path alone (``gpt_emotion``)."""
        from tts.models.gpt import has_emotion_path

        loaded = self._parts.get("gpt")
        if loaded is not None and has_emotion_path(loaded):
            return loaded
        lean = loaded is not None or self.emotion_gpt_alone or self.gpt_speech_alone
        return self.part("gpt_emotion" if lean else "gpt")

    def _fast_gpt(self, gpt):
        """With ``fast``: the GPT's teacher-forced latent pass (where it has one) and its
        prompt encoders through CUDA graphs (:mod:`tts.fast.latent_pass`,
        :mod:`tts.fast.conditioning`)."""
        if self.fast:
            from tts.fast import conditioning, latent_pass

            if hasattr(gpt, "gpt"):
                latent_pass.install(gpt)
            conditioning.install(gpt)
        return gpt

    def _gpt_autocast(self):
        enabled = self.dtype != torch.float32
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=enabled)

    # -- stage 3: GPT -------------------------------------------------------------------------

    @torch.no_grad()
    def semantic_tokens(
        self,
        requests: list[SynthesisRequest],
        speakers: list[dict[str, torch.Tensor]],
        emotions: list[dict[str, torch.Tensor]],
    ) -> list[RowResult]:
        """Text -> semantic codes and GPT latents per segment (spec 2.5, 2.6), for many rows.

        Value per row: ``codes_<i>`` [T_i] int64 and ``latent_<i>`` [T_i, model_dim] float32 for
        each text segment ``i``, plus ``text_ids_<i>``.

        Every (row, segment) is one generation item. Items with equal
        :class:`~tts.generation.GenerationConfig` go through the GPT together, at most
        ``gpt_batch_items`` per call (sorted by text length, shorter texts left-padded under a
        mask); the teacher-forced latent pass of a call's items is one batch too
        (:meth:`UnifiedVoice.forward_packed`). Each row's speaker latent is computed alone,
        exactly as the single-row path does (the conditioning encoder sees the row's whole
        prompt: rows are not padded to a common prompt length). Each item samples from its own
        generator (:func:`segment_seed`), so what it draws does not depend on the other items of
        its call; only float rounding of the batched kernels can differ (see
        tests/test_batching.py for what holds exactly).

        Failures stay per row: a text the front-end rejects, a segment without codes, NaN. If a
        batched call raises anything but out-of-memory (which propagates, so that the caller
        retries with fewer rows), its items are rerun one by one and only the rows whose item
        fails alone fail.

        Timings per row: ``gpt_generate`` and ``gpt_forward`` are the row's share of the batched
        calls its items ran in (each call's time split equally over its items), plus the row's
        own conditioning encoder time in ``gpt_generate``.
        """
        n_rows = len(requests)
        if len(speakers) != n_rows or len(emotions) != n_rows:
            raise ValueError(
                f"{n_rows} requests, {len(speakers)} speakers and {len(emotions)} emotions"
            )
        batch = _TokenBatch(n_rows)
        items: list[_Item] = []
        for r, req in enumerate(requests):
            try:
                items.extend(self._plan_items(r, req, batch.warnings[r]))
            except torch.OutOfMemoryError:
                raise
            except _row_errors() as exc:
                batch.fail(r, exc)
        conds: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for r in sorted({it.row for it in items}):
            start = _tick(self.device)
            try:
                conds[r] = self._gpt_conditioning(speakers[r], emotions[r])
            except torch.OutOfMemoryError:
                raise
            except _row_errors() as exc:
                batch.fail(r, exc)
            batch.timings[r]["gpt_generate"] += _tock(self.device, start)
        groups: dict[object, list[_Item]] = {}
        for it in items:
            groups.setdefault(it.config, []).append(it)
        for group in groups.values():
            pending = sorted(group, key=lambda it: len(it.ids))  # stable: ties keep row order
            while pending:
                live = [it for it in pending if it.row not in batch.errors]
                chunk, pending = live[: self.gpt_batch_items], live[self.gpt_batch_items :]
                if chunk:
                    for it, outcome in zip(chunk, self._run_chunk(chunk, conds), strict=True):
                        batch.record(it, outcome)
        return batch.results(requests)

    def frontend(self, max_text_tokens_per_segment: int = 120):
        """The text front-end (normaliser, tokenizer, segmentation) for this checkpoint set."""
        from tts.text.frontend import TextFrontend

        key = f"frontend_{max_text_tokens_per_segment}"
        if key not in self._parts:
            self._parts[key] = TextFrontend.for_checkpoints(self.cs, max_text_tokens_per_segment)
        return self._parts[key]

    def _plan_items(self, row: int, req: SynthesisRequest, warnings: list[str]) -> list[_Item]:
        """The row's text segments as generation items (raises on a text the front-end
        rejects or sampling options generation would refuse)."""
        from tts.generation import GenerationConfig

        opts = req.sampling_options()
        plan = req.text_plan
        if plan is None:
            plan = self.frontend(int(opts["max_text_tokens_per_segment"])).process(req.text)
        config = GenerationConfig(
            do_sample=bool(opts["do_sample"]),
            top_k=int(opts["top_k"]),
            top_p=float(opts["top_p"]),
            temperature=float(opts["temperature"]),
            repetition_penalty=float(opts["repetition_penalty"]),
            num_beams=int(opts["num_beams"]),
            length_penalty=float(opts["length_penalty"]),
            max_mel_tokens=int(opts["max_mel_tokens"]),
            warn_on_limit=False,
        )
        config.validate()
        if plan.unknown_message():
            warnings.append(plan.unknown_message())
        seed = _seed(req)
        return [
            _Item(
                row,
                i,
                config,
                [int(t) for t in ids],
                torch.Generator(device=self.device).manual_seed(segment_seed(seed, i)),
            )
            for i, ids in enumerate(plan.segment_ids)
        ]

    def _gpt_conditioning(self, spk: dict, emo: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """One row's speaker latent [1, 32, d] and emotion vector [1, d], as
        ``UnifiedVoice.inference_speech`` computes them for a batch of one (the prompt's
        lengths default to its feature width: nothing is masked). The latent is kept per
        speaker features (their digest): the rows of a batch mostly share their speaker."""
        gpt = self.part("gpt")
        dev = self.device

        def latent() -> torch.Tensor:
            spk_cond = spk["spk_cond_emb"].to(dev, self.dtype)
            with self._gpt_autocast():
                lengths = torch.tensor([spk_cond.shape[-1]], device=dev)
                return gpt.get_conditioning(spk_cond.transpose(1, 2), lengths)

        key = (_content_key(spk["spk_cond_emb"]),)
        return self._memo("latent", key, latent), emo["emovec"].to(dev, self.dtype)

    def _run_chunk(self, chunk: list[_Item], conds: dict) -> list[_Outcome]:
        """One batched GPT call for ``chunk``; if it raises (not out of memory), each item
        again alone, so that only the items that fail alone fail."""
        try:
            return self._generate_items(chunk, conds)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:
            if len(chunk) == 1:
                if isinstance(exc, _row_errors()):
                    return [_Outcome(error=exc)]
                raise
            # Said aloud: a batched call that always fails would otherwise only show as speed.
            log.warning(
                "a batched GPT call of %d items failed (%s); running them one by one",
                len(chunk),
                _error_text(exc),
            )
        outcomes = []
        for it in chunk:
            try:
                outcomes.extend(self._generate_items([it], conds))
            except torch.OutOfMemoryError:
                raise
            except _row_errors() as exc:
                outcomes.append(_Outcome(error=exc))
        return outcomes

    def _generate(self, gpt, prefix, valid, config, generators):
        if self.fast:
            from tts.fast.decode import VARIANTS, generate

            stats: dict = {}
            out = generate(
                gpt,
                prefix,
                valid,
                config,
                generator=generators,
                stats=stats,
                **VARIANTS[self.gpt_decoder],
            )
            # A job's log says where a GPT call's time went (first calls pay compiles, captures).
            log.info(
                "GPT decode (%s%s): %d items, prompt %d positions, %d steps; host set-up "
                "%.2f s, step 0 %.2f s, graph captures %.2f s (%d graphs), loop %.2f s; "
                "TorchDynamo %s",
                self.gpt_decoder,
                ", the decoder of the call before" if stats.get("kept") else "",
                prefix.size(0),
                prefix.size(1),
                stats.get("steps", 0),
                stats.get("setup_s", 0.0),
                stats.get("first_step_s", 0.0),
                stats.get("capture_s", 0.0),
                stats.get("graphs", 0),
                stats.get("loop_s", 0.0),
                "imported" if "torch._dynamo" in sys.modules else "not imported",
            )
            return out
        from tts.generation import generate

        return generate(gpt, prefix, valid, config, generator=generators)

    def _generate_items(self, chunk: list[_Item], conds: dict) -> list[_Outcome]:
        """Generate codes for the items of ``chunk`` (same config) in one call, then their
        latents in one teacher-forced pass. Item-level problems (no codes, NaN) are returned
        as that item's error; anything else raises."""
        from tts.generation import trim_at_stop

        gpt = self.part("gpt")
        dev = self.device
        config = chunk[0].config
        b = len(chunk)
        start = _tick(dev)
        latent = torch.cat([conds[it.row][0] for it in chunk])
        emovec = torch.cat([conds[it.row][1] for it in chunk])
        width = max(len(it.ids) for it in chunk)
        # Padding ids are the stop text id, which prepare_gpt_inputs drops (then left-pads). The
        # ids stay on the CPU, where prepare_gpt_inputs lays the prefix out.
        text = torch.full((b, width), gpt.stop_text_token, dtype=torch.int64)
        for j, it in enumerate(chunk):
            text[j, : len(it.ids)] = torch.tensor(it.ids, dtype=torch.int64)
        with self._gpt_autocast():
            prefix, valid = gpt.prepare_gpt_inputs(gpt.conditioning_prefix(latent, emovec, b), text)
            out = self._generate(gpt, prefix, valid, config, [it.generator for it in chunk])
        gen_share = _tock(dev, start) / b

        outcomes: list[_Outcome | None] = [None] * b
        keep: list[tuple[int, torch.Tensor, list[str]]] = []
        for j, it in enumerate(chunk):
            codes, (n,) = trim_at_stop(out.codes[j : j + 1], gpt.stop_mel_token)
            warns = []
            if bool(out.hit_limit[j]):
                warns.append(
                    f"segment {it.segment}: generation stopped at max_mel_tokens "
                    f"({config.max_mel_tokens}) before the stop token; the audio may be cut"
                )
            if n == 0:
                error = ValueError("the GPT produced no semantic codes")
                outcomes[j] = _Outcome(error=error, generate_s=gen_share)
            else:
                keep.append((j, codes[0, :n], warns))
        if keep:
            idx = [j for j, _, _ in keep]
            start = _tick(dev)
            with self._gpt_autocast():
                latents = gpt.forward_packed(
                    latent[idx],
                    emovec[idx],
                    [text[j, : len(chunk[j].ids)] for j in idx],
                    [codes for _, codes, _ in keep],
                )
            fwd_s = _tock(dev, start)
            fwd_share = fwd_s / len(keep)
            log.info("GPT latent pass: %d items, %.2f s", len(keep), fwd_s)
            for (j, codes, warns), lat in zip(keep, latents, strict=True):
                seg = chunk[j].segment
                if not bool(torch.isfinite(lat).all()):
                    error = FloatingPointError(
                        "NaN or inf in the GPT latent output; nothing was written for this row"
                    )
                    outcomes[j] = _Outcome(error=error, generate_s=gen_share, forward_s=fwd_share)
                    continue
                value = {
                    f"codes_{seg}": codes.cpu(),
                    f"latent_{seg}": lat.float().cpu(),
                    f"text_ids_{seg}": torch.tensor(chunk[j].ids, dtype=torch.int64),
                }
                outcomes[j] = _Outcome(value, None, warns, gen_share, fwd_share)
        return outcomes  # type: ignore[return-value]

    # -- everything, for single jobs -------------------------------------------------------------

    def synthesize(self, requests: list[SynthesisRequest]) -> list[RowResult]:
        """All stages for each request (the `tts synth` command); one RowResult per request.

        A row that runs out of GPU memory is tried once more after :func:`free_gpu_memory`
        (the kept GPT decoder can hold GiBs while the row renders); if it still does not fit,
        it fails alone and the other rows go on."""
        results = []
        for req in requests:
            timings: dict[str, float] = {}
            try:
                start = time.perf_counter()
                spk = self.speaker_conditioning(req.speaker, speaker_is_emotion_prompt(req))
                emo = self.emotion_conditioning(req, spk)
                timings["conditioning"] = time.perf_counter() - start
            except Exception as exc:  # noqa: BLE001 - reported as this row's error
                results.append(RowResult(req.id, error=f"{type(exc).__name__}: {exc}"))
                continue
            tok = self._fitting(
                req.id, lambda r=req, s=spk, e=emo: self.semantic_tokens([r], [s], [e])
            )
            if not tok.ok:
                results.append(tok)
                continue
            wav = self._fitting(
                req.id, lambda r=req, s=spk, t=tok: self.render([r], [s], [t.value])
            )
            wav.timings = {**timings, **tok.timings, **wav.timings}
            wav.warnings = tok.warnings + wav.warnings
            results.append(wav)
        return results

    def _fitting(self, row_id: str, stage) -> RowResult:
        """``stage()[0]`` (one row's batched stage); out of GPU memory, once more after
        :func:`free_gpu_memory`, then the row's error."""
        for attempt in range(2):
            try:
                return stage()[0]
            except torch.OutOfMemoryError:
                free_gpu_memory()
                if attempt == 0:
                    log.warning(
                        "row %s: out of GPU memory; retrying without the kept decoder", row_id
                    )
        return RowResult(
            row_id,
            error="out of GPU memory (try a shorter text, a lower max_mel_tokens, dtype "
            "bfloat16 or float16, or gpt_decoder graphkt)",
        )

    # -- memory -----------------------------------------------------------------------------------

    def release_decoder(self) -> None:
        """Drop the fast GPT decoder that ``graphkk`` keeps between calls (its KV cache and
        CUDA graphs: +0.5 GiB at batch 1, +3.8 GiB at batch 16 in docs/benchmarks.md, run BU),
        and the prefill's, latent pass's and prompt encoders' graphs; the next GPT call makes
        them anew. Nothing to do on the plain paths."""
        if self.fast:
            from tts.fast import prefill
            from tts.fast.decode import release

            release()
            gpt = self._parts.get("gpt")
            for attr in ("stack_runner", "speaker_encoder_runner", "emotion_encoder_runner"):
                runner = getattr(gpt, attr, None)
                if runner is not None:
                    runner.clear()  # their graphs: captured again when next needed
            if gpt is not None:
                prefill.release(gpt)

    def close(self) -> None:
        """Free what this Engine holds on its device: the kept decoder, the prompt cache and
        the loaded components (a later call loads them again). ``with Engine.open(...) as
        engine:`` calls it on leaving the block."""
        self.release_decoder()
        self.clear_prompt_cache()
        self._parts.clear()
        self._vocoder_fused = False
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- stage 4: s2mel + vocoder ---------------------------------------------------------------

    @torch.no_grad()
    def render(
        self,
        requests: list[SynthesisRequest],
        speakers: list[dict[str, torch.Tensor]],
        tokens: list[dict[str, torch.Tensor]],
    ) -> list[RowResult]:
        """Codes + latents + speaker features -> waveform ``wav`` float32 [N] in [-1, 1].

        Plain path: one s2mel solve and one vocoder call per segment. Fast path (CUDA): the
        segments of all rows whose solver settings agree are solved together, up to
        ``render_batch_items`` per batch, padded to the longest (:meth:`_render_batched`);
        each row is still what it would be alone, up to rounding. The vocoder runs per
        segment.
        """
        if self.fast:
            return self._render_batched(requests, speakers, tokens)
        results = []
        for req, spk, tok in zip(requests, speakers, tokens, strict=True):
            results.append(self._row(req.id, lambda r=req, s=spk, t=tok: self._render_one(r, s, t)))
        return results

    def _render_batched(
        self,
        requests: list[SynthesisRequest],
        speakers: list[dict[str, torch.Tensor]],
        tokens: list[dict[str, torch.Tensor]],
    ) -> list[RowResult]:
        """The fast render: each row's segments conditioned (and their noise drawn, in the
        row's own order), then solved in batches, then vocoded and joined per row."""
        dev = self.device
        n = len(requests)
        timings = [{"s2mel": 0.0, "vocoder": 0.0} for _ in range(n)]
        # RowResult.value here: the row's list of segment inputs (see _segment_inputs).
        prepared = [
            self._row(req.id, lambda r=req, s=spk, t=tok: (self._segment_inputs(r, s, t), {}))
            for req, spk, tok in zip(requests, speakers, tokens, strict=True)
        ]
        errors = {i: p.error for i, p in enumerate(prepared) if not p.ok}
        mels: dict[tuple[int, int], torch.Tensor] = {}  # (row, segment) -> mel
        for chunk in self._render_chunks(prepared, errors):
            start = _tick(dev)
            mels.update(self._solve_chunk(chunk, requests, errors))
            share = _tock(dev, start) / len(chunk)
            for seg in chunk:
                timings[seg["row"]]["s2mel"] += share + seg["prep_s"]
        results = []
        for i, req in enumerate(requests):
            if i in errors:
                results.append(RowResult(req.id, error=errors[i]))
                continue
            count = len(prepared[i].value)
            pieces = [mels[(i, j)] for j in range(count)]
            results.append(
                self._row(req.id, lambda r=req, p=pieces, t=timings[i]: self._vocode(r, p, t))
            )
        return results

    def _segment_inputs(self, req: SynthesisRequest, spk: dict, tok: dict) -> list[dict]:
        """Per segment of a row: the CFM condition, the starting noise (from the row's
        generator, segment after segment, as the plain path draws it), the prompt and the
        solver settings; a row-level error (bad tensors) surfaces here."""
        dev = self.device
        opts = req.sampling_options()
        s2mel = self.part("s2mel")
        codec = self.part("semantic_codec")
        gen = torch.Generator(device=dev).manual_seed(_seed(req) + 1)
        prompt = spk["prompt_condition"].to(dev)
        ref_mel = spk["ref_mel"].to(dev)
        style = spk["style"].to(dev)
        settings = (int(opts["diffusion_steps"]), float(opts["cfg_rate"]))
        segments = []
        for j in range(_segments(tok)):
            start = _tick(dev)
            codes = tok[f"codes_{j}"].to(dev).unsqueeze(0)
            latent = tok[f"latent_{j}"].to(dev, torch.float32).unsqueeze(0)
            mu = s2mel.condition(codec.vq2emb(codes), latent, prompt)
            noise = torch.randn(
                [1, s2mel.cfm.in_channels, mu.size(1)], device=gen.device, generator=gen
            ).to(dev, mu.dtype)
            segments.append(
                {
                    "seg": j,
                    "mu": mu,
                    "noise": noise,
                    "ref_mel": ref_mel,
                    "style": style,
                    "key": settings,
                    "prep_s": _tock(dev, start),
                }
            )
        return segments

    def _render_chunks(self, prepared: list[RowResult], errors: dict[int, str]) -> list[list]:
        """The solve batches: segments grouped by solver settings, sorted by length (little
        padding), at most ``render_batch_items`` each."""
        groups: dict[tuple, list[dict]] = {}
        for i, p in enumerate(prepared):
            if i in errors:
                continue
            for seg in p.value:
                groups.setdefault(seg["key"], []).append({**seg, "row": i})
        chunks = []
        for segs in groups.values():
            segs.sort(key=lambda seg: seg["mu"].size(1))
            for k in range(0, len(segs), self.render_batch_items):
                chunks.append(segs[k : k + self.render_batch_items])
        return chunks

    def _solve_chunk(
        self, chunk: list[dict], requests: list[SynthesisRequest], errors: dict[int, str]
    ) -> dict[tuple[int, int], torch.Tensor]:
        """One padded CFM batch; if it fails (other than out of memory), each segment alone,
        so that the error lands on its own row."""
        from tts.fast.s2mel import generate_padded

        steps, cfg_rate = chunk[0]["key"]

        def solve(segs: list[dict]) -> list[torch.Tensor]:
            return generate_padded(
                self.part("s2mel"),
                [seg["mu"] for seg in segs],
                [seg["noise"] for seg in segs],
                [seg["ref_mel"] for seg in segs],
                torch.cat([seg["style"] for seg in segs]),
                n_timesteps=steps,
                cfg_rate=cfg_rate,
                precision=self.render_precision,
            )

        out = {}
        results = None
        if len(chunk) > 1:
            try:
                results = list(zip(chunk, solve(chunk), strict=True))
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried alone below, each error on its row
                log.warning(
                    "a batched s2mel solve of %d segments failed (%s); solving them one by one",
                    len(chunk),
                    _error_text(exc),
                )
                results = None
        if results is None:
            results = []
            for seg in chunk:
                outcome = self._row(requests[seg["row"]].id, lambda s=seg: (solve([s])[0], {}))
                if outcome.ok:
                    results.append((seg, outcome.value))
                else:
                    errors.setdefault(seg["row"], outcome.error)
        for seg, mel in results:
            if not bool(torch.isfinite(mel).all()):
                errors.setdefault(
                    seg["row"],
                    "FloatingPointError: NaN or inf in the s2mel (mel spectrogram) output; "
                    "nothing was written for this row",
                )
            out[(seg["row"], seg["seg"])] = mel
        return out

    def _vocode(self, req: SynthesisRequest, mels: list[torch.Tensor], timings: dict):
        """BigVGAN per segment, the segments joined with the row's silence."""
        dev = self.device
        vocoder = self._vocoder()
        opts = req.sampling_options()
        silence = torch.zeros(int(SAMPLE_RATE * float(opts["interval_silence_ms"]) / 1000))
        pieces: list[torch.Tensor] = []
        for mel in mels:
            start = _tick(dev)
            with self._render_context():
                wav = vocoder(mel.float()).reshape(-1).float()
            _check_finite("vocoder (waveform)", wav)
            timings["vocoder"] += _tock(dev, start)
            if pieces:
                pieces.append(silence)
            pieces.append(wav.cpu())
        wav = torch.cat(pieces) if pieces else torch.zeros(0)
        return {"wav": wav.float().clamp(-1.0, 1.0)}, timings

    def _render_one(self, req: SynthesisRequest, spk: dict, tok: dict) -> tuple[dict, dict]:
        """The plain render of one row: :meth:`S2Mel.generate` per segment, then the vocoder."""
        dev = self.device
        opts = req.sampling_options()
        s2mel = self.part("s2mel")
        codec = self.part("semantic_codec")
        gen = torch.Generator(device=dev).manual_seed(_seed(req) + 1)
        steps, cfg_rate = int(opts["diffusion_steps"]), float(opts["cfg_rate"])
        timings = {"s2mel": 0.0, "vocoder": 0.0}
        mels = []
        for i in range(_segments(tok)):
            start = _tick(dev)
            codes = tok[f"codes_{i}"].to(dev).unsqueeze(0)
            latent = tok[f"latent_{i}"].to(dev, torch.float32).unsqueeze(0)
            mel = s2mel.generate(
                codec.vq2emb(codes),
                latent,
                spk["prompt_condition"].to(dev),
                spk["ref_mel"].to(dev),
                spk["style"].to(dev),
                n_timesteps=steps,
                cfg_rate=cfg_rate,
                generator=gen,
            )
            _check_finite("s2mel (mel spectrogram)", mel)
            timings["s2mel"] += _tock(dev, start)
            mels.append(mel)
        return self._vocode(req, mels, timings)

    def _render_context(self):
        """Autocast / TF32 for the vocoder at ``render_precision`` (nothing at float32)."""
        from contextlib import nullcontext

        if self.render_precision == "float32":
            return nullcontext()
        from tts.precision import precision_context

        return precision_context(self.render_precision, self.device)

    def _vocoder(self):
        """BigVGAN; with ``fast``, its anti-aliased activations use the fused kernel (this
        instance only, set on first use)."""
        vocoder = self.part("bigvgan")
        if self.fast and not self._vocoder_fused:
            from tts.fast.bigvgan import fuse_activations

            fuse_activations(vocoder, "auto")
            self._vocoder_fused = True
        return vocoder

    def _row(self, row_id: str, work) -> RowResult:
        """Run one row's work; a row-level failure becomes the row's error, not an exception."""
        from tts.audio import AudioError

        try:
            value, timings, *rest = work()
            return RowResult(row_id, value=value, timings=timings, warnings=rest[0] if rest else [])
        except torch.OutOfMemoryError:
            raise  # the caller retries with a smaller batch, then fails the rows
        except (
            AudioError,
            ValueError,
            FloatingPointError,
            CheckpointError,
            RuntimeError,
            KeyError,
        ) as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return RowResult(row_id, error=f"{type(exc).__name__}: {text}")


def free_gpu_memory() -> None:
    """After running out of GPU memory: drop the GPT decoder kept between calls (``graphkk``:
    its KV cache and CUDA graphs) and the allocator's cached blocks, so that a retry gets
    the memory they held."""
    if torch.cuda.is_available():
        from tts.fast.decode import release

        release()
        torch.cuda.empty_cache()


def _git_describe() -> str | None:
    """``git describe`` of the source tree, when running from a checkout."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _seed(request: SynthesisRequest) -> int:
    return int(request.seed) if request.seed is not None else default_seed(request)


def _segments(tokens: dict[str, torch.Tensor]) -> int:
    return sum(1 for k in tokens if k.startswith("codes_"))


def _tick(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _tock(device: torch.device, start: float) -> float:
    return _tick(device) - start


def segment_seed(seed: int, segment: int) -> int:
    """The seed of the generator that samples text segment ``segment`` of a row with ``seed``.

    Segment 0 uses the row seed itself (a one-segment row draws what it always drew); segment
    ``i > 0`` uses the first 8 bytes (little-endian) of SHA-256 of ``"<seed>/<i>"``, top bit
    cleared. Every segment thus has its own random stream, fixed by the row's seed and the
    segment's index alone: not by the other rows or segments generated in the same GPT call.
    """
    if segment == 0:
        return int(seed)
    digest = hashlib.sha256(f"{int(seed)}/{int(segment)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _row_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that fail one row (anything else is a bug and propagates)."""
    from tts.audio import AudioError

    return (AudioError, ValueError, FloatingPointError, CheckpointError, RuntimeError, KeyError)


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else type(exc).__name__}"


@dataclass
class _Item:
    """One generation item: text segment ``segment`` of row ``row``."""

    row: int
    segment: int
    config: object  # tts.generation.GenerationConfig (hashable: items group by it)
    ids: list[int]
    generator: torch.Generator


@dataclass
class _Outcome:
    """What one item produced: its tensors, or the error that fails its row."""

    value: dict[str, torch.Tensor] | None = None
    error: BaseException | None = None
    warnings: list[str] = field(default_factory=list)
    generate_s: float = 0.0
    forward_s: float = 0.0


class _TokenBatch:
    """Per-row bookkeeping of :meth:`Engine.semantic_tokens`: segment tensors, the first
    error, warnings and time shares."""

    def __init__(self, rows: int):
        self.values: list[dict[int, dict[str, torch.Tensor]]] = [{} for _ in range(rows)]
        self.errors: dict[int, str] = {}
        self.warnings: list[list[str]] = [[] for _ in range(rows)]
        self.timings = [{"gpt_generate": 0.0, "gpt_forward": 0.0} for _ in range(rows)]

    def fail(self, row: int, exc: BaseException, segment: int | None = None) -> None:
        if row in self.errors:
            return  # the row's first error is the one reported
        text = _error_text(exc)
        if segment is not None:
            name, _, message = text.partition(": ")
            text = f"{name}: segment {segment}: {message}"
        self.errors[row] = text

    def record(self, item: _Item, outcome: _Outcome) -> None:
        t = self.timings[item.row]
        t["gpt_generate"] += outcome.generate_s
        t["gpt_forward"] += outcome.forward_s
        self.warnings[item.row].extend(outcome.warnings)
        if outcome.error is not None:
            self.fail(item.row, outcome.error, item.segment)
        elif outcome.value is not None:
            self.values[item.row][item.segment] = outcome.value

    def results(self, requests: list[SynthesisRequest]) -> list[RowResult]:
        out = []
        for r, req in enumerate(requests):
            if r in self.errors:
                out.append(
                    RowResult(
                        req.id,
                        error=self.errors[r],
                        timings=self.timings[r],
                        warnings=self.warnings[r],
                    )
                )
                continue
            value: dict[str, torch.Tensor] = {}
            for seg in sorted(self.values[r]):
                value.update(self.values[r][seg])
            out.append(
                RowResult(req.id, value=value, timings=self.timings[r], warnings=self.warnings[r])
            )
        return out
