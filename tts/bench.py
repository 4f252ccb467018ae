"""`tts bench`: speed of the whole pipeline on full-size random weights.

No real weights are needed (or used): the modules are built at the official configuration
(``tts/data/config.official.yaml``; ``--tiny`` shrinks it for a CPU smoke test) with a fixed
random initialisation, saved as a checkpoint set in the official file formats and loaded back
through the strict loader (so the official implementation can load the very same files). The
GPT's stop code gets a large negative bias, so generation always runs to exactly ``--tokens``
codes (500 codes = 9.98 s of audio).

One run = the stages of one synthesis job, for ``B`` rows that share one voice prompt:

* ``spk_cond``  - :meth:`Engine.speaker_conditioning` of the prompt file (once per batch), with
  the file's emotion features in the same w2v-bert forward, as the Engine computes them for a
  row whose speaker file is its emotion prompt;
* ``emo_cond``  - :meth:`Engine.emotion_conditioning` (once per batch: every row asks for the
  same emotion);
* ``gpt_generate`` - ``UnifiedVoice.inference_speech`` for the B texts at once, with the official
  sampling defaults (beam sampling, 3 beams, top-k 30, top-p 0.8, temperature 0.8, repetition
  penalty 10), through the static-cache CUDA-graph decoder (``--gpt-decoder graph``) or the
  plain one (``eager``), each row drawing from its own generator as the Engine's rows do;
* ``gpt_latent`` - the teacher-forced second GPT pass giving the latents;
* ``s2mel`` - codes -> codebook embedding, length regulator, 25 Euler steps of the DiT with
  classifier-free guidance (both branches in one batch of 2B), all B rows in one batch;
* ``vocoder`` - BigVGAN (fused anti-aliased activation on CUDA), and ``post`` (clamp, to CPU).

Each stage is timed with CUDA events (wall clock on the CPU) after ``--warmup`` untimed runs;
medians of ``--repeats`` runs are reported with tokens/s, real-time factor (RTF = seconds of
compute per second of audio), peak GPU memory and the GPT time per token against its floor:
the bytes of the weights one decode step must read over the measured device copy bandwidth,
and that floor plus the keys and values the decode steps read (:func:`decode_cache_bytes`).

``--official-json`` adds the official implementation's numbers from a run of
``official_bench.py`` on the same files (see docs/benchmarks.md) and prints the speed ratio.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from tts.checkpoints import merge_config
from tts.fast import decode as fast_decode
from tts.fast.decode import VARIANTS
from tts.models.gpt import SPEAKER_LATENTS
from tts.precision import PRECISIONS, precision_context

SAMPLE_RATE = 22050
HOP = 256  # BigVGAN samples per mel frame
STAGES = ("spk_cond", "emo_cond", "gpt_generate", "gpt_latent", "s2mel", "vocoder", "post")
COND_STAGES = ("spk_cond", "emo_cond")
GPT_DTYPES = ("float32", "bfloat16", "float16")
# Every named variant of tts.fast.decode.VARIANTS (static cache + CUDA graphs; graph = op by op,
# graphf = fused compiled layers + swap reorder + compiled token choice, graphfi = the same with
# the table reorder and Triton attention, graphkp = graphfi with the Triton projections up to 8
# rows, launched ahead, graphkt = graphkp with the processors and the beam draw as Triton
# kernels (the Engine's default), ...) and eager: the plain tts.generation loop.
DECODERS = (*VARIANTS, "eager")

# --tiny: shrunk sizes (everything the reference hard-codes - 1024-wide semantic features, 80
# mels, 192-wide style, the 1280-wide gpt_layer input, hence the GPT width - keeps its value).
TINY_GPT = {
    "layers": 1,
    "number_text_tokens": 256,
    "max_mel_tokens": 64,
    "max_text_tokens": 64,
    "condition_module": {
        "output_size": 32,
        "linear_units": 64,
        "attention_heads": 2,
        "num_blocks": 1,
        "input_layer": "conv2d2",
        "perceiver_mult": 2,
    },
    "emo_condition_module": {
        "output_size": 32,
        "linear_units": 64,
        "attention_heads": 2,
        "num_blocks": 1,
        "input_layer": "conv2d2",
        "perceiver_mult": 0.375,
    },
}
TINY_S2MEL = {
    "DiT": {"hidden_dim": 64, "num_heads": 4, "depth": 3, "content_dim": 64},
    "wavenet": {"hidden_dim": 64, "num_layers": 2},
    "length_regulator": {"channels": 64},
}
TINY_CODEC = {"vocos_dim": 32, "vocos_intermediate_dim": 64, "vocos_num_layers": 1}
TINY_BIGVGAN = {
    "upsample_initial_channel": 64,
    "resblock_kernel_sizes": [3],
    "resblock_dilation_sizes": [[1, 3]],
}
TINY_W2V = {"num_hidden_layers": 2, "intermediate_size": 64, "num_attention_heads": 16}
TINY_W2V_LAYER = 2
# Where the auxiliary models go: the flat layout (as the fixture sets have it).
FLAT_FILES = {
    "semantic_codec": "semantic_codec/model.safetensors",
    "campplus": "campplus_cn_common.bin",
    "bigvgan": "bigvgan/bigvgan_generator.pt",
    "w2v_bert": "w2v-bert-2.0/model.safetensors",
}


# ---------------------------------------------------------------------------------------------
# Random full-size checkpoint set in the official formats
# ---------------------------------------------------------------------------------------------


def bench_config(tiny: bool) -> tuple[dict, dict, dict]:
    """(config.yaml dict, BigVGAN config.json dict, w2v-bert config.json dict)."""
    from importlib import resources

    from tts.checkpoints import load_config
    from tts.cli import OFFICIAL_CONFIG

    cfg = load_config(OFFICIAL_CONFIG)
    data = resources.files("tts.data")
    bigvgan = json.loads(data.joinpath("bigvgan_v2_22khz_80band_256x.json").read_text())
    w2v = json.loads(data.joinpath("w2v-bert-2.0.config.json").read_text())
    if tiny:
        cfg["gpt"] = merge_config(cfg["gpt"], TINY_GPT)
        cfg["s2mel"] = merge_config(cfg["s2mel"], TINY_S2MEL)
        cfg["semantic_codec"] = merge_config(cfg["semantic_codec"], TINY_CODEC)
        cfg["w2v_bert_layer"] = TINY_W2V_LAYER
        bigvgan = {**bigvgan, **TINY_BIGVGAN}
        w2v = {**w2v, **TINY_W2V}
    cfg["bench"] = True  # random weights: never a voice model
    return cfg, bigvgan, w2v


def _fan_in(module: nn.Module, name: str, p: torch.Tensor) -> int:
    kind = type(module).__name__
    if kind == "Conv1D":  # HF GPT-2 layout [in, out]
        return p.shape[0]
    if getattr(module, "transposed", False):  # [in, out, k]
        return p.shape[0] * (p.shape[2] if p.ndim > 2 else 1)
    return max(1, p[0].numel())


@torch.no_grad()
def randomize_(module: nn.Module, seed: int, device: torch.device | str | None = None) -> nn.Module:
    """Deterministic, well-scaled random weights for every parameter of ``module``.

    Norm scales 1 (``weight``, or ``gamma`` as the perceivers' RMSNorm names it) and shifts 0,
    Snake log-parameters 0 (a = b = 1), biases 0, other tensors
    N(0, 1/fan_in); weight-norm magnitudes equal ``||v||`` (the effective weight is ``v``).
    Buffers (sinusoid tables, filters, running statistics) keep their constructed values.
    """
    device = torch.device(device or "cpu")
    gen = torch.Generator(device=device).manual_seed(seed)
    for mod in module.modules():
        kind = type(mod).__name__
        params = dict(mod.named_parameters(recurse=False))
        for name, p in params.items():
            if name == "weight_g" or p.numel() == 0:
                continue
            if "Norm" in kind:  # scales (weight, or an RMSNorm's gamma) 1, shifts 0
                p.fill_(0.0 if name == "bias" else 1.0)
            elif kind in ("Snake", "SnakeBeta"):
                p.fill_(0.0 if getattr(mod, "logscale", True) else 1.0)
            elif name == "bias":
                p.zero_()
            else:
                std = 0.02 if p.ndim == 1 else 1.0 / math.sqrt(_fan_in(mod, name, p))
                noise = (
                    torch.randn(p.shape, generator=gen, dtype=torch.float32, device=device) * std
                )
                p.copy_(noise.to(p.device, p.dtype))
        if "weight_g" in params:
            v = params["weight_v"]
            dims = tuple(range(1, v.dim()))
            params["weight_g"].copy_(torch.linalg.vector_norm(v, dim=dims, keepdim=True))
    return module


@torch.no_grad()
def write_random_set(
    out: Path,
    tiny: bool = False,
    seed: int = 1234,
    stop_bias: float = -1.0e4,
    device: str | None = None,
) -> Path:
    """Write a complete random checkpoint set (official layout and formats) to ``out``.

    ``device``: where the modules are built and the random numbers drawn (a GPU is much
    faster at full size; the values depend on the device's generator, the seed fixes them).
    """
    import yaml
    from safetensors.torch import save_file

    from tts.checkpoints import CheckpointSet
    from tts.components import MODULE_COMPONENTS, S2MEL_PARTS

    cfg, bigvgan_cfg, w2v_cfg = bench_config(tiny)
    cfg = {**cfg, "demo": True}  # random weights: every output made from this set says DEMO
    out.mkdir(parents=True, exist_ok=True)
    (out / "bigvgan").mkdir(exist_ok=True)
    (out / "bigvgan" / "config.json").write_text(json.dumps(bigvgan_cfg, indent=1))
    w2v_dir = out / "w2v-bert-2.0"
    w2v_dir.mkdir(exist_ok=True)
    (w2v_dir / "config.json").write_text(json.dumps(w2v_cfg, indent=1))
    from importlib import resources

    pre = resources.files("tts.data").joinpath("w2v-bert-2.0.preprocessor_config.json")
    (w2v_dir / "preprocessor_config.json").write_text(pre.read_text())
    (out / "config.yaml").write_text(
        "# BENCHMARK checkpoint set written by `tts bench`: random weights, NOT a voice model.\n"
        + yaml.safe_dump(cfg, sort_keys=False),
        encoding="utf-8",
    )
    cs = CheckpointSet.open(out)
    for i, (name, comp) in enumerate(MODULE_COMPONENTS.items()):
        with torch.device(device or "cpu"):
            module = randomize_(comp.build(cs), seed + 1000 * i, device or "cpu")
        if name == "gpt":
            module.mel_head.bias[module.stop_mel_token] = stop_bias
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        path = out / FLAT_FILES[name] if name in FLAT_FILES else comp.file(cs)
        path.parent.mkdir(parents=True, exist_ok=True)
        if name == "s2mel":
            net = {
                part: {k[len(part) + 1 :]: v for k, v in state.items() if k.startswith(part + ".")}
                for part in S2MEL_PARTS
            }
            torch.save({"net": net}, path)
        elif name == "bigvgan":
            torch.save({"generator": state}, path)
        elif path.suffix == ".safetensors":
            save_file(state, str(path))
        else:
            torch.save(state, path)
        del module, state
    gen = torch.Generator().manual_seed(seed)
    rows = sum(cfg["emo_num"])
    torch.save(torch.rand(rows, 192, generator=gen) - 0.5, out / "feat1.pt")
    torch.save(
        (torch.rand(rows, cfg["gpt"]["model_dim"], generator=gen) - 0.5) * 0.2, out / "feat2.pt"
    )
    hidden = int(w2v_cfg["hidden_size"])
    torch.save(
        {
            "mean": torch.randn(hidden, generator=gen) * 0.1,
            "var": torch.rand(hidden, generator=gen) + 0.5,
        },
        out / "wav2vec2bert_stats.pt",
    )
    _write_bpe(out / "bpe.model")
    return out


def _write_bpe(path: Path) -> None:
    """A small SentencePiece model (the bench feeds token ids, never text)."""
    import os

    roots = [Path(__file__).resolve().parents[2] / "shared" / "fixtures"]
    roots += [Path(p) for p in os.environ.get("TTS_PARITY_FIXTURES", "").split(os.pathsep) if p]
    for root in roots:
        for fixture in (root / "gpt-small" / "bpe.model", root / "bpe.model"):
            if fixture.is_file():
                path.write_bytes(fixture.read_bytes())
                return
    from tts.demo import _train_bpe

    _train_bpe(path, 256)


def prompt_wave(seconds: float, seed: int, sr: int = SAMPLE_RATE):
    """The synthetic voice prompt of the official harness (a gliding harmonic tone + noise)."""
    import numpy as np

    n = int(seconds * sr)
    tt = np.arange(n, dtype=np.float64) / sr
    rng = np.random.default_rng(seed)
    f0 = 110.0 + 40.0 * np.sin(2 * np.pi * 0.3 * tt)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    wav = sum(0.3 / k * np.sin(k * phase) for k in range(1, 8))
    wav = wav * (0.55 + 0.45 * np.sin(2 * np.pi * 3.0 * tt)) + 0.01 * rng.standard_normal(n)
    return wav.astype(np.float32), rng


# ---------------------------------------------------------------------------------------------
# Timing helpers
# ---------------------------------------------------------------------------------------------


class StageClock:
    """Marks between stages: CUDA events on a GPU (read once, at the end), else wall clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.marks: list[tuple[str, object]] = []
        self.start = self._now()

    def _now(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record(torch.cuda.current_stream(self.device))
            return ev
        return time.perf_counter()

    def mark(self, name: str) -> None:
        self.marks.append((name, self._now()))

    def seconds(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        out, prev = {}, self.start
        for name, now in self.marks:
            out[name] = out.get(name, 0.0) + (
                prev.elapsed_time(now) / 1e3 if self.cuda else now - prev
            )
            prev = now
        return out


def kernel_rows(prof, width: int = 90) -> list[dict]:
    """The CUDA kernels a ``torch.profiler`` run recorded, grouped by name (its first ``width``
    characters): ``kernel``, ``count`` and total ``us``, longest first (the kernel tables of
    scripts/device/)."""
    rows: dict[str, dict] = {}
    for ev in prof.events():
        if ev.device_type.name != "CUDA":
            continue
        name = ev.name[:width]
        row = rows.setdefault(name, {"kernel": name, "count": 0, "us": 0.0})
        row["count"] += 1
        row["us"] += ev.device_time
    return sorted(rows.values(), key=lambda r: -r["us"])


def median_cuda_ms(fn, repeats: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of ``fn()`` on the current CUDA stream (CUDA events around each
    call, after ``warmup`` untimed calls): the kernel-timing helper of scripts/device/."""
    for _ in range(warmup):
        fn()
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        for _ in range(repeats)
    ]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30, repeats: int = 10) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    if device.type != "cuda":
        return float("nan")
    n = nbytes // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        torch.cuda.synchronize(device)
        times.append(a.elapsed_time(b) / 1e3)
    del src, dst
    return 2 * n * 4 / statistics.median(times)


def decode_weight_bytes(gpt: nn.Module) -> int:
    """Bytes one decode step must read: the GPT-2 stack, final norm and mel head (+1 row each
    of the mel embedding and position tables, negligible and left out)."""
    parts = [gpt.gpt, gpt.final_norm, gpt.mel_head]
    return sum(p.numel() * p.element_size() for m in parts for p in m.parameters())


def decode_cache_bytes(gpt: nn.Module, rows: int, prefix: int, tokens: int) -> int:
    """Bytes of keys and values that the decode steps of one generation read from the KV
    cache, each of ``rows`` rows reading its own history (beams that share positions could
    read fewer): what a decode step must read besides its weights.

    Code 0 comes from the prefill (the ``prefix`` positions and the start code); decode step
    ``j`` (1 .. tokens - 1) feeds code ``j`` at position ``prefix + j`` and attends over
    ``prefix + j + 1`` positions in every layer.
    """
    blocks = gpt.gpt.h
    dim = blocks[0].ln_1.normalized_shape[0]
    per_position = len(blocks) * 2 * dim * next(blocks.parameters()).element_size()
    steps = max(tokens - 1, 0)
    positions = steps * (prefix + 1) + steps * (steps + 1) // 2
    return rows * positions * per_position


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------


def vocoder_flops(bigvgan_cfg: dict, mel_frames: int) -> int:
    """FLOPs of one row's BigVGAN pass over ``mel_frames`` frames (its convolutions; the
    anti-aliased activations' arithmetic is not counted), on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from tts.models.bigvgan import BigVGAN

    with torch.device("meta"), torch.no_grad():
        vocoder = BigVGAN.from_config(bigvgan_cfg)
        with FlopCounterMode(display=False) as counter:
            vocoder(torch.zeros(1, 80, mel_frames))
    return int(counter.get_total_flops())


def render_flops(
    s2mel_cfg: dict, bigvgan_cfg: dict, frames: int, mel_frames: int, steps: int, cfg_rate: float
) -> dict[str, int]:
    """FLOPs of one row's s2mel solve and vocoder pass, counted on the meta device.

    ``frames``: the DiT's sequence (prompt + generated mel frames), called ``steps`` times with
    both guidance branches when ``cfg_rate > 0``; ``mel_frames``: the vocoder's input. Counted
    by ``torch.utils.flop_counter`` (matrix products, attention, convolutions; elementwise work
    and the anti-aliased activations are not counted), so a stage's rate reached is
    ``rows * flops / seconds``: how far it is from the GPU's matrix throughput.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from tts.models.s2mel import S2Mel

    branches = 2 if cfg_rate > 0 else 1
    with torch.device("meta"), torch.no_grad():
        dit = S2Mel.from_config(s2mel_cfg).cfm.estimator
        width = dit.cond_projection.in_features
        args = (
            torch.zeros(branches, 80, frames),
            torch.zeros(branches, 80, frames),
            torch.full((branches,), frames),
            torch.zeros(branches),
            torch.zeros(branches, 192),
            torch.zeros(branches, frames, width),
        )
        with FlopCounterMode(display=False) as counter:
            dit(*args)
    return {
        "s2mel": int(steps * counter.get_total_flops()),
        "vocoder": vocoder_flops(bigvgan_cfg, mel_frames),
    }


@dataclass
class Variant:
    """One benchmark variant: the GPT dtype, s2mel, vocoder and w2v-bert features precisions
    (``+compile`` after the s2mel precision: torch.compile the DiT), and optionally its own
    batch sizes."""

    gpt: str = "float32"
    s2mel: str = "float32"
    vocoder: str = "float32"
    s2mel_compile: bool = False
    batches: tuple[int, ...] | None = None
    decoders: tuple[str, ...] | None = None
    features: str = "float32"

    @classmethod
    def parse(cls, spec: str) -> Variant:
        """``GPT[:S2MEL[+compile][:VOCODER[:FEATURES]]][@B1,B2,...][#DECODER,...]`` (the
        vocoder's precision defaults to the s2mel's, the features' to float32)."""
        spec, _, decoder_text = spec.partition("#")
        decoders = tuple(d for d in decoder_text.split(",") if d) or None
        for d in decoders or ():
            if d not in DECODERS:
                raise ValueError(f"decoder {d!r} is not one of {DECODERS}")
        spec, _, batch_text = spec.partition("@")
        parts = spec.split(":")
        if len(parts) > 4 or not parts[0]:
            raise ValueError(
                f"precision spec {spec!r}: use GPT[:S2MEL[+compile][:VOCODER[:FEATURES]]][@B,..]"
            )
        gpt = parts[0]
        s2mel = parts[1] if len(parts) > 1 else "float32"
        compile_ = s2mel.endswith("+compile")
        s2mel = s2mel.removesuffix("+compile")
        vocoder = parts[2] if len(parts) > 2 else s2mel
        features = parts[3] if len(parts) > 3 else "float32"
        if gpt not in GPT_DTYPES:
            raise ValueError(f"GPT dtype {gpt!r} is not one of {GPT_DTYPES}")
        for p in (s2mel, vocoder, features):
            if p not in PRECISIONS:
                raise ValueError(f"precision {p!r} is not one of {PRECISIONS}")
        batches = None
        if batch_text:
            try:
                batches = tuple(int(b) for b in batch_text.split(",") if b)
            except ValueError:
                raise ValueError(
                    f"precision spec {spec!r}: bad batch list {batch_text!r}"
                ) from None
        return cls(gpt, s2mel, vocoder, compile_, batches, decoders, features)

    @property
    def name(self) -> str:
        """The spec without batches and decoders; the features' precision only if not
        float32 (so names of earlier runs stay what they were)."""
        name = f"{self.gpt}:{self.s2mel}{'+compile' if self.s2mel_compile else ''}:{self.vocoder}"
        return name if self.features == "float32" else f"{name}:{self.features}"


@dataclass
class BenchResult:
    variant: str
    batch: int
    tokens: int
    decoder: str
    runs: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


class Bench:
    """Loaded engine(s) and the inputs; :meth:`run` times one configuration."""

    def __init__(self, args: argparse.Namespace):
        from tts.pipeline import DTYPES, Engine, SynthesisRequest, resolve_device

        self.args = args
        self.device = resolve_device(args.device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.tmp = Path(tempfile.mkdtemp(prefix="tts-bench-"))
        start = time.perf_counter()
        if args.checkpoints:
            self.root = Path(args.checkpoints)
        else:
            self.root = (
                Path(args.write_checkpoints) if args.write_checkpoints else self.tmp / "ckpt"
            )
            write_random_set(
                self.root,
                tiny=args.tiny,
                seed=args.seed,
                stop_bias=args.stop_bias,
                device=str(self.device),
            )
        self.write_s = time.perf_counter() - start
        self.engine = Engine.open(
            self.root,
            device=str(self.device),
            dtype="float32",
            cudnn_benchmark=args.cudnn_benchmark,
        )
        start = time.perf_counter()
        for name in ("gpt", "s2mel", "semantic_codec", "campplus", "bigvgan", "features"):
            self.engine.part(name)
        self.load_s = time.perf_counter() - start
        self.bandwidth = copy_bandwidth(self.device)  # bytes/s, NaN on the CPU
        self._dtypes = DTYPES
        self._engines: dict[str, Engine] = {"float32": self.engine}
        self._Engine = Engine
        self._flops: dict[tuple[int, int], dict[str, int]] = {}

        import numpy as np

        from tts.audio import write_wav

        wave, rng = prompt_wave(args.prompt_seconds, args.seed)
        self.prompt = self.tmp / "prompt.wav"
        write_wav(self.prompt, torch.from_numpy(wave), SAMPLE_RATE)
        n_text = int(self.engine.cs.config["gpt"]["number_text_tokens"])
        ids = rng.integers(2, n_text, size=args.text_tokens)
        self.text_ids = torch.tensor(np.asarray(ids), dtype=torch.int64)
        self.request = SynthesisRequest(
            id="bench", text="(token ids)", speaker=self.prompt, seed=args.seed
        )

    def engine_for(self, dtype: str):
        """An Engine with the GPT in ``dtype`` sharing every other loaded part."""
        if dtype not in self._engines:
            eng = self._Engine(self.engine.cs, self.device, self._dtypes[dtype])
            eng._parts = dict(self.engine._parts)
            gpt = copy.deepcopy(self.engine.part("gpt")).to(self._dtypes[dtype])
            eng._parts["gpt"] = gpt
            self._engines[dtype] = eng
        return self._engines[dtype]

    @torch.no_grad()
    def run_once(self, variant: Variant, batch: int, decoder: str) -> tuple[dict, dict]:
        from tts.fast import s2mel as fast_s2mel
        from tts.fast.bigvgan import fuse_activations
        from tts.generation import GenerationConfig
        from tts.generation import generate as plain_generate
        from tts.pipeline import speaker_is_emotion_prompt

        args, dev = self.args, self.device
        eng = self.engine_for(variant.gpt)
        gpt = eng.part("gpt")
        s2mel, codec = eng.part("s2mel"), eng.part("semantic_codec")
        vocoder = eng.part("bigvgan")
        if self.device.type == "cuda" and args.vocoder_act != "eager":
            fuse_activations(vocoder, args.vocoder_act)
        cfg = GenerationConfig(
            max_mel_tokens=args.tokens, num_beams=args.beams, warn_on_limit=False
        )
        gen = torch.Generator(device=dev).manual_seed(args.seed)
        # One generator per row, as the Engine gives every item its own (segment_seed).
        row_gens = [
            torch.Generator(device=dev).manual_seed(args.seed + 1 + i) for i in range(batch)
        ]
        extra: dict = {}

        eng.features_precision = variant.features  # Engines are shared by GPT dtype
        eng.clear_prompt_cache()  # every pass conditions the prompt anew, as a new prompt is
        clock = StageClock(dev)
        spk = eng.speaker_conditioning(self.prompt, speaker_is_emotion_prompt(self.request))
        clock.mark("spk_cond")
        emo = eng.emotion_conditioning(self.request, spk)
        clock.mark("emo_cond")

        spk_cond = spk["spk_cond_emb"].to(dev, eng.dtype).expand(batch, -1, -1).contiguous()
        emovec = emo["emovec"].to(dev, eng.dtype).expand(batch, -1).contiguous()
        # The ids stay on the host for generation, where its prefix is laid out (a copy to the
        # device would wait for the conditioning's kernels); the latent pass reads a device copy.
        text_host = self.text_ids.unsqueeze(0).expand(batch, -1).contiguous()
        text = text_host.to(dev, non_blocking=True)
        import tts.generation as generation_module

        stats: dict = {}
        if decoder in VARIANTS:

            def chosen(*a, **k):  # the graph decoder, reporting its loop time
                return fast_decode.generate(*a, stats=stats, **VARIANTS[decoder], **k)
        else:
            chosen = plain_generate
        saved = generation_module.generate
        generation_module.generate = chosen
        try:
            with eng._gpt_autocast():
                out, speech_latent = gpt.inference_speech(
                    spk_cond, text_host, emo_vec=emovec, config=cfg, generator=row_gens
                )
        finally:
            generation_module.generate = saved
        clock.mark("gpt_generate")
        codes = out.codes
        n = codes.size(1)
        with eng._gpt_autocast():
            latent = gpt(
                speech_latent,
                text,
                torch.full((batch,), text.size(1), device=dev),
                codes,
                torch.full((batch,), n, device=dev),
                None,
                emo_vec=emovec,
                use_speed=torch.zeros(batch, dtype=torch.long, device=dev),
            )
        clock.mark("gpt_latent")
        semantic = codec.vq2emb(codes)
        mel = fast_s2mel.generate_batch(
            s2mel,
            semantic,
            latent.float(),
            spk["prompt_condition"].to(dev).expand(batch, -1, -1).contiguous(),
            spk["ref_mel"].to(dev).expand(batch, -1, -1).contiguous(),
            spk["style"].to(dev).expand(batch, -1).contiguous(),
            n_timesteps=args.diffusion_steps,
            cfg_rate=args.cfg_rate,
            generator=gen,
            precision=variant.s2mel,
            graphs=None if args.s2mel_graphs else False,
            compile=variant.s2mel_compile,
        )
        clock.mark("s2mel")
        with precision_context(variant.vocoder, dev):
            wav = vocoder(mel.float())
        clock.mark("vocoder")
        wav = wav.float().clamp(-1.0, 1.0).cpu()
        clock.mark("post")
        times = clock.seconds()
        extra.update(
            generated_tokens=n,
            wav_samples=int(wav.shape[-1]),
            finite=bool(torch.isfinite(wav).all()),
            mel_frames=int(mel.size(-1)),
            s2mel_frames=int(mel.size(-1) + spk["ref_mel"].size(-1)),
        )
        if stats:
            extra["decode_loop_s"] = stats.get("loop_s")
            extra["decode_steps"] = stats.get("steps")
            # what the decoder really ran (e.g. graphk keeps cuBLAS above 8 rows)
            extra["decode_matmul"] = stats.get("matmul")
            extra["decode_attention"] = stats.get("attention")
            extra["decode_graphs"] = stats.get("graphs")
            extra["decode_eager_steps"] = stats.get("eager_steps")
            extra["decode_capture_s"] = stats.get("capture_s")  # host time of the captures
            # Host time before the loop (buffers, prefill launch) and of its step 0 (the eager
            # step and the captures it makes): the per-call cost that replays do not show.
            extra["decode_setup_s"] = stats.get("setup_s")
            extra["decode_first_step_s"] = stats.get("first_step_s")
            # graphkk: whether the call reused the decoder of the call before, and the graphs
            # it still had to capture
            extra["decode_kept"] = stats.get("kept")
            extra["decode_captured"] = stats.get("captured")
        return times, extra

    def flop_rates(self, batch: int, run: dict, med: dict) -> dict:
        """FLOPs per row of s2mel and the vocoder (:func:`render_flops`) and the TFLOP/s each
        stage reached in the median pass."""
        from tts.components import bigvgan_config

        key = (run["s2mel_frames"], run["mel_frames"])
        if key not in self._flops:
            cs = self.engine.cs
            self._flops[key] = render_flops(
                cs.config["s2mel"],
                bigvgan_config(cs),
                *key,
                self.args.diffusion_steps,
                self.args.cfg_rate,
            )
        flops = self._flops[key]
        return {
            "flops_per_row": flops,
            "s2mel_tflops_per_s": batch * flops["s2mel"] / med["s2mel"] / 1e12,
            "vocoder_tflops_per_s": batch * flops["vocoder"] / med["vocoder"] / 1e12,
        }

    def run(
        self,
        variant: Variant,
        batch: int,
        decoder: str,
        warmup: int | None = None,
        repeats: int | None = None,
    ) -> BenchResult:
        args = self.args
        warmup = args.warmup if warmup is None else warmup
        repeats = args.repeats if repeats is None else repeats
        res = BenchResult(variant.name, batch, args.tokens, decoder)
        cuda = self.device.type == "cuda"
        # A decoder kept by the configuration before (graphkk) would count in this one's peak
        # memory: only this configuration's own passes may keep one.
        fast_decode.release()
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        for i in range(warmup + repeats):
            torch.manual_seed(args.seed + i)
            wall = time.perf_counter()
            times, extra = self.run_once(variant, batch, decoder)
            wall = time.perf_counter() - wall
            rec = {"stages_s": times, "wall_s": wall, **extra, "warmup": i < warmup}
            res.runs.append(rec)
            _log(
                f"   {'warmup' if rec['warmup'] else 'run'} {i}: wall {wall:.3f} s, "
                + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in times.items())
                + " ms"
                + _decode_host_times(rec)
            )
        timed = [r for r in res.runs if not r["warmup"]] or res.runs
        med = {s: statistics.median(r["stages_s"].get(s, 0.0) for r in timed) for s in STAGES}
        total = statistics.median(sum(r["stages_s"].values()) for r in timed)
        cached = statistics.median(
            sum(v for k, v in r["stages_s"].items() if k not in COND_STAGES) for r in timed
        )
        audio_s = timed[-1]["wav_samples"] / SAMPLE_RATE
        n = timed[-1]["generated_tokens"]
        gpt_s = med["gpt_generate"]
        summary = {
            "stages_median_s": med,
            "total_s": total,
            "total_cached_prompt_s": cached,
            "audio_s_per_row": audio_s,
            "generated_tokens": n,
            "rtf": total / audio_s,
            "rtf_cached_prompt": cached / audio_s,
            "x_realtime_aggregate": batch * audio_s / total,
            "tokens_per_s_aggregate": batch * n / gpt_s,
            "gpt_ms_per_token": 1e3 * gpt_s / max(n, 1),
            "all_finite": all(r["finite"] for r in timed),
        }
        summary.update(self.flop_rates(batch, timed[-1], med))
        # The GPT's prefix: speaker latents, the two speed rows, the text ids framed by start
        # and stop (tts.models.gpt.UnifiedVoice.prepare_gpt_inputs).
        prefix = SPEAKER_LATENTS + 2 + self.text_ids.numel() + 2
        gpt = self.engine_for(variant.gpt).part("gpt")
        summary["kv_cache_bytes"] = decode_cache_bytes(gpt, batch * args.beams, prefix, n)
        summary["kv_cache_ms_per_token"] = (
            1e3 * summary["kv_cache_bytes"] / max(n, 1) / self.bandwidth
        )
        loops = [r["decode_loop_s"] for r in timed if r.get("decode_loop_s")]
        if loops:
            steps = timed[-1].get("decode_steps") or n
            summary["decode_loop_ms_per_step"] = 1e3 * statistics.median(loops) / max(steps, 1)
        if cuda:
            summary["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        if variant.features != "float32":
            summary["features_vs_float32"] = self.features_deviation(variant.features)
        res.summary = summary
        return res

    @torch.no_grad()
    def features_deviation(self, precision: str) -> dict:
        """The cost of running the prompt's w2v-bert encoder at ``precision``, on this run's
        weights and prompt: how far its normalised features are from float32's (largest
        difference, relative L2), and the share of the prompt's semantic codes (what s2mel's
        prompt condition is made of) that stay the same."""
        from tts.audio import load_prompt, resample

        features = self.engine.part("features")
        codec = self.engine.part("semantic_codec")
        wav16 = resample(load_prompt(self.prompt, SAMPLE_RATE)[0], SAMPLE_RATE, 16000)
        exact = features(wav16.to(self.device))
        other = features(wav16.to(self.device), precision)
        diff = other - exact
        codes_exact, _ = codec.quantize(exact)
        codes_other, _ = codec.quantize(other)
        return {
            "max_abs_diff": float(diff.abs().max()),
            "rel_l2": float(diff.norm() / exact.norm()),
            "codes_equal": float((codes_exact == codes_other).float().mean()),
        }


def _decode_host_times(rec: dict) -> str:
    """The decode loop's time and the decoder's host times of one pass, for its log line."""
    keys = ("loop", "setup", "first_step", "capture")
    if rec.get("decode_loop_s") is None:
        return ""
    return (
        "; decode "
        + ", ".join(
            f"{k} {rec[f'decode_{k}_s'] * 1e3:.1f}"
            for k in keys
            if rec.get(f"decode_{k}_s") is not None
        )
        + " ms"
        + (f", kept, {rec.get('decode_captured')} captured" if rec.get("decode_kept") else "")
    )


def _log(text: str) -> None:
    print(text, flush=True)


def environment(device: torch.device) -> dict:
    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cudnn_enabled": torch.backends.cudnn.enabled,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_version": torch.backends.cudnn.version()
        if torch.backends.cudnn.is_available()
        else None,
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env


def graph_counts() -> dict[str, dict[str, int]]:
    """Captures and replays so far of each family of length-bucketed CUDA graphs (the GPT's
    prefill and latent pass, the prompt encoders with CAMPPlus): whether a run's passes really
    replayed them."""
    from tts.fast import conditioning, latent_pass, prefill

    return {
        "prefill": dict(prefill.COUNTS),
        "latent_pass": dict(latent_pass.COUNTS),
        "conditioning": dict(conditioning.COUNTS),
    }


def print_table(
    results: list[BenchResult], floors: dict[str, float], official: dict | None
) -> None:
    cols = ("spk_cond", "emo_cond", "gpt_generate", "gpt_latent", "s2mel", "vocoder", "post")
    print()
    print("ours (medians; seconds per stage; RTF = compute s / audio s; xRT = rows*audio/total)")
    head = (
        f"{'variant (gpt:s2mel:voc)':26s} {'dec':6s} {'B':>3s} "
        + " ".join(f"{c:>12s}" for c in cols)
        + f" {'total':>8s} {'RTF':>7s} {'RTFc':>7s} {'xRT':>7s} {'tok/s':>8s} {'ms/tok':>7s}"
        f" {'loop':>6s} {'floor':>6s} {'GiB':>6s}"
    )
    print(head)
    for r in results:
        s = r.summary
        m = s["stages_median_s"]
        floor = floors.get(r.variant.split(":")[0], float("nan"))
        loop = s.get("decode_loop_ms_per_step", float("nan"))
        print(
            f"{r.variant:26s} {r.decoder:6s} {r.batch:3d} "
            + " ".join(f"{m[c]:12.4f}" for c in cols)
            + f" {s['total_s']:8.3f} {s['rtf']:7.4f} {s['rtf_cached_prompt']:7.4f}"
            f" {s['x_realtime_aggregate']:7.1f} {s['tokens_per_s_aggregate']:8.0f}"
            f" {s['gpt_ms_per_token']:7.3f} {loop:6.3f} {floor:6.3f}"
            f" {s.get('peak_gpu_mem_gib', 0.0):6.2f}"
        )
    print(
        "GPT per token: the floor (its weights) plus the KV cache its rows read (the"
        " generation's average) at the same bandwidth, against the time measured:"
    )
    for r in results:
        s = r.summary
        floor = floors.get(r.variant.split(":")[0], float("nan"))
        kv = s.get("kv_cache_ms_per_token", float("nan"))
        print(
            f"   {r.variant:26s} {r.decoder:6s} B={r.batch:<3d} {floor:.3f} + {kv:.3f} ="
            f" {floor + kv:.3f} ms; measured {s['gpt_ms_per_token']:.3f} ms ="
            f" {s['gpt_ms_per_token'] / (floor + kv):.2f}x"
        )
    deviations = [r for r in results if "features_vs_float32" in r.summary]
    if deviations:
        print("w2v-bert features against float32 (the prompt's normalised features; codes kept):")
    for r in deviations:
        d = r.summary["features_vs_float32"]
        print(
            f"   {r.variant:26s} {r.decoder:6s} B={r.batch:<3d} largest difference"
            f" {d['max_abs_diff']:.3g}, relative L2 {d['rel_l2']:.3g}, semantic codes kept"
            f" {d['codes_equal']:.4f}"
        )
    print("s2mel / vocoder FLOPs per row (torch.utils.flop_counter) and the rate reached:")
    for r in results:
        s = r.summary
        f = s["flops_per_row"]
        print(
            f"   {r.variant:26s} {r.decoder:6s} B={r.batch:<3d} s2mel {f['s2mel'] / 1e12:.2f}"
            f" TFLOP/row, {s['s2mel_tflops_per_s']:.1f} TFLOP/s; vocoder"
            f" {f['vocoder'] / 1e12:.3f} TFLOP/row, {s['vocoder_tflops_per_s']:.1f} TFLOP/s"
        )
    if official:
        o = official["summary"]
        print()
        print(
            f"official ({official.get('label', '')}): total {o['total_s']:.3f} s, RTF "
            f"{o['rtf']:.4f}, cached-prompt RTF {o['rtf_cached_prompt']:.4f}, GPT "
            f"{o['gpt_ms_per_token']:.2f} ms/token, peak {o.get('peak_gpu_mem_gib', 0):.2f} GiB"
        )
        for r in results:
            if r.batch != 1:
                continue
            s = r.summary
            print(
                f"   speed-up of ours {r.variant} ({r.decoder}) at batch 1: "
                f"{o['total_s'] / s['total_s']:.2f}x end to end, "
                f"{o['total_cached_prompt_s'] / s['total_cached_prompt_s']:.2f}x cached prompt, "
                f"{o['stages_median_s']['gpt_generate'] / s['stages_median_s']['gpt_generate']:.2f}x GPT"
            )


def fill_defaults(args: argparse.Namespace) -> None:
    """The sizes left unset: 500 codes, a 10 s prompt, 60 text ids (tiny: 12, 1.5 s, 8)."""
    if args.tiny:
        if args.tokens is None:
            args.tokens = 12
        if args.prompt_seconds is None:
            args.prompt_seconds = 1.5
        if args.text_tokens is None:
            args.text_tokens = 8
    args.tokens = args.tokens or 500
    args.prompt_seconds = args.prompt_seconds or 10.0
    args.text_tokens = args.text_tokens or 60


def script_args(
    argv: list[str], default_precision: str
) -> tuple[argparse.Namespace, Variant, str, list[int]]:
    """``tts bench``'s options in ``argv`` for a device script that runs its passes (the script
    parses its own options first): the arguments with :func:`fill_defaults` applied, the first
    ``--precision`` variant (``default_precision`` if none), the first decoder and the batch
    sizes."""
    from tts.cli import build_parser

    args = build_parser().parse_args(["bench", *argv])
    fill_defaults(args)
    variant = Variant.parse((args.precision or [default_precision])[0])
    batches = [int(b) for b in str(args.batch).split(",") if b]
    return args, variant, args.gpt_decoder.split(",")[0], batches


def cmd_bench(args: argparse.Namespace) -> int:
    from tts.pipeline import resolve_device

    fill_defaults(args)
    device = resolve_device(args.device)
    variants = [Variant.parse(s) for s in (args.precision or ["float32"])]
    if device.type == "cpu" and any(
        v.gpt != "float32" or {v.s2mel, v.vocoder, v.features} & {"bfloat16", "float16"}
        for v in variants
    ):
        raise ValueError("half-precision variants need CUDA; use --precision float32 on the CPU")
    batches = [int(b) for b in str(args.batch).split(",") if b]
    decoders = [d for d in args.gpt_decoder.split(",") if d]
    for d in decoders:
        if d not in DECODERS:
            raise ValueError(f"--gpt-decoder {d!r}: use one of {DECODERS}")
    if device.type == "cuda":
        torch.backends.cudnn.enabled = True  # benchmark/deterministic: Engine.open decides
    _log(
        f">> tts bench: device {device}, tokens {args.tokens}, beams {args.beams}, batches "
        f"{batches}, variants {[v.name for v in variants]}, decoders {decoders}"
        f"{' (TINY config)' if args.tiny else ''}"
    )
    bench = Bench(args)
    env = environment(bench.device)
    env.update(
        tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        cudnn_tf32=torch.backends.cudnn.allow_tf32,
    )
    _log(
        f">> checkpoints {bench.root} (written in {bench.write_s:.1f} s, loaded in "
        f"{bench.load_s:.1f} s); {env['gpu'] or platform.processor() or 'cpu'}"
    )
    bandwidth = bench.bandwidth
    floors = {}
    for v in variants:
        gpt = bench.engine_for(v.gpt).part("gpt")
        floors[v.gpt] = 1e3 * decode_weight_bytes(gpt) / bandwidth
    plan = [
        (v, d, b, None)
        for v in variants
        for d in (v.decoders or decoders)
        for b in (v.batches or batches)
    ]
    if args.eager_baseline and "eager" not in decoders:
        plan.append((variants[0], "eager", (variants[0].batches or batches)[0], 1))  # slow
    official = None
    if args.official_json and Path(args.official_json).is_file():
        official = json.loads(Path(args.official_json).read_text())
        official.setdefault("label", Path(args.official_json).stem)
    results: list[BenchResult] = []
    payload = {
        "what": "tts bench: ours, random full-size weights" + (" (TINY)" if args.tiny else ""),
        "args": {k: v for k, v in vars(args).items() if k != "func"},
        "env": env,
        "checkpoints": str(bench.root),
        "write_s": bench.write_s,
        "load_s": bench.load_s,
        "copy_bandwidth_Bps": bandwidth,
        "floor_ms_per_token": floors,
        "results": [],
    }
    if official:
        payload["official"] = official.get("summary")
    from tts import fast

    for v, decoder, b, once in plan:
        _log(f">> {v.name} decoder={decoder} batch={b}")
        try:
            if once:
                results.append(bench.run(v, b, decoder, warmup=0, repeats=once))
            else:
                results.append(bench.run(v, b, decoder))
        except torch.OutOfMemoryError as exc:
            _log(f"   out of memory: {str(exc).splitlines()[0]}")
            torch.cuda.empty_cache()
        payload["results"] = [r.__dict__ for r in results]
        payload["fallbacks"] = list(fast.FALLBACKS)
        payload["graphs"] = graph_counts()
        if args.json:  # rewritten after every configuration: a cut run keeps what it measured
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")
    print_table(results, floors, official)
    if not math.isnan(bandwidth):
        print(
            f"device copy bandwidth (read + write): {bandwidth / 1e12:.2f} TB/s; GPT decode "
            "floor = weight bytes / bandwidth: "
            + ", ".join(f"{k} {f:.3f} ms/token" for k, f in floors.items())
        )
    print(
        "length-bucketed CUDA graphs (captures / replays): "
        + ", ".join(f"{k} {c['captures']} / {c['replays']}" for k, c in graph_counts().items())
    )
    if fast.FALLBACKS:
        print(
            "fast paths that fell back to the plain path: "
            + "; ".join(f"{w} ({r})" for w, r in fast.FALLBACKS)
        )
    if args.json:
        _log(f">> wrote {args.json}")
    bad = [r for r in results if not r.summary.get("all_finite", False)]
    if bad or len(results) < len(plan):
        return 1
    return 0


def compare_files(ours_json: str, official_json: str) -> dict:
    """Print (and return) the ratios of a `tts bench --json` file to an official_bench.py one."""
    ours = json.loads(Path(ours_json).read_text())
    off = json.loads(Path(official_json).read_text())["summary"]
    rows = []
    print(
        f"official: total {off['total_s']:.3f} s (cached prompt {off['total_cached_prompt_s']:.3f}"
        f" s), RTF {off['rtf']:.4f}, GPT {off['gpt_ms_per_token']:.2f} ms/token, "
        f"gpt_generate {off['stages_median_s']['gpt_generate']:.3f} s, s2mel "
        f"{off['stages_median_s']['s2mel_cfm']:.3f} s, BigVGAN {off['stages_median_s']['bigvgan']:.3f} s"
    )
    for r in ours["results"]:
        s = r["summary"]
        if r["batch"] != 1:
            continue
        row = {
            "variant": r["variant"],
            "decoder": r["decoder"],
            "speedup_total": off["total_s"] / s["total_s"],
            "speedup_cached_prompt": off["total_cached_prompt_s"] / s["total_cached_prompt_s"],
            "speedup_gpt": off["stages_median_s"]["gpt_generate"]
            / s["stages_median_s"]["gpt_generate"],
        }
        rows.append(row)
        print(
            f"ours {row['variant']:26s} {row['decoder']:5s} batch 1: {row['speedup_total']:.2f}x "
            f"end to end, {row['speedup_cached_prompt']:.2f}x cached prompt, "
            f"{row['speedup_gpt']:.2f}x GPT generate"
        )
    return {"official": off, "ratios": rows}


def add_bench_parser(subparsers) -> None:
    """Register ``tts bench`` on the CLI's sub-command parser."""
    s = subparsers.add_parser(
        "bench",
        help="time the whole pipeline on full-size random weights",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--tiny", action="store_true", help="small config: a CPU smoke test")
    s.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    s.add_argument(
        "--precision",
        action="append",
        help="GPT[:S2MEL[+compile][:VOCODER[:FEATURES]]][@B,..][#DEC,..] precisions, repeatable, "
        "e.g. float32, bfloat16:tf32:tf32@1,16 or bfloat16:bfloat16+compile:"
        "bfloat16#graphc (default float32; @ and # give the variant its own "
        "batch sizes and decoders)",
    )
    s.add_argument("--batch", default="1", help="comma-separated batch sizes (rows), e.g. 1,16")
    s.add_argument("--tokens", type=int, help="generated codes per row (default 500; tiny 12)")
    s.add_argument("--beams", type=int, default=3, help="beams (official default 3)")
    s.add_argument(
        "--gpt-decoder",
        default="graph",
        help=f"comma-separated: {', '.join(DECODERS)} (the static-cache CUDA-graph "
        "variants of tts.fast.decode.VARIANTS, e.g. graph = op by op, graphf = "
        "fused compiled layers; eager = the plain loop)",
    )
    s.add_argument("--text-tokens", type=int, help="random text ids per row (default 60)")
    s.add_argument("--prompt-seconds", type=float, help="synthetic prompt length (default 10)")
    s.add_argument("--diffusion-steps", type=int, default=25)
    s.add_argument("--cfg-rate", type=float, default=0.7)
    s.add_argument(
        "--no-s2mel-graphs",
        dest="s2mel_graphs",
        action="store_false",
        help="run the Euler loop eagerly (no CUDA graph)",
    )
    s.add_argument(
        "--vocoder-act",
        default="auto",
        choices=["auto", "triton", "compile", "eager"],
        help="BigVGAN activation: fused Triton kernel (auto on CUDA), compile, eager",
    )
    s.add_argument(
        "--eager-baseline",
        action="store_true",
        help="also time the plain (eager) decoder once: first variant, first batch",
    )
    s.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="cuDNN times its kernels per shape (Engine.open(cudnn_benchmark=True))",
    )
    s.add_argument("--warmup", type=int, default=1)
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--seed", type=int, default=1234)
    s.add_argument(
        "--stop-bias",
        type=float,
        default=-1.0e4,
        help="bias written on the stop code of mel_head (disables stopping)",
    )
    s.add_argument("--checkpoints", help="use this (random) checkpoint set instead of writing one")
    s.add_argument("--write-checkpoints", help="write the random set here (default: a temp dir)")
    s.add_argument("--official-json", help="official_bench.py output to compare with")
    s.add_argument("--json", help="write all numbers here")
    s.set_defaults(func=cmd_bench)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="tts")
    sub = parser.add_subparsers(dest="command", required=True)
    add_bench_parser(sub)
    ns = parser.parse_args(["bench", *sys.argv[1:]])
    sys.exit(ns.func(ns))
