"""Where the prompt conditioning's time goes (issue 8; GPU device).

``tts bench`` charges batch 1 with ~0.17 s of prompt conditioning (run AE of
docs/benchmarks.md: ``spk_cond`` 0.093 s, ``emo_cond`` 0.079 s), a fifth of the whole pass. This
opens the benchmark's checkpoint set as ``tts bench`` does (GPT in ``--dtype``), warms up, then
times :meth:`Engine.speaker_conditioning` and :meth:`Engine.emotion_conditioning` whole (with
the Engine's per-file cache cleared, and the emotion call again for a later row of the same
prompt, which the cache answers), the GPT's speaker latent of a row (anew and cached), and
piece by piece (wall clock with a CUDA synchronisation after each piece, medians of
``--repeats``), and prints a torch.profiler summary of one call of each (CPU and CUDA time per
op, kernel count).

    python3 scripts/device/cond_profile.py --checkpoints /tmp/bench_ckpt --json "$OUT/cond.json"

(or ``SECTIONS=cond bash scripts/device/run_gpu.sh``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tts.audio import (  # noqa: E402
    SPEAKER_SAMPLE_RATE,
    campplus_features,
    load_prompt,
    mel_kwargs,
    mel_spectrogram,
    resample,
    write_wav,
)
from tts.bench import prompt_wave  # noqa: E402
from tts.emotion import plan_emotion, resolve_emotion  # noqa: E402
from tts.pipeline import Engine, SynthesisRequest  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(
    fn, repeats: int, device: torch.device, times: list[float] | None = None
) -> tuple[float, object]:
    """Median milliseconds of ``fn()`` (synchronised before and after), and its last result;
    each call's milliseconds are appended to ``times`` if given."""
    times, out = ([] if times is None else times), None
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), out


def pieces(eng: Engine, prompt: Path, request: SynthesisRequest, repeats: int) -> dict:
    """Each step of the two conditioning calls alone (the same calls, in the same order)."""
    dev = eng.device
    ms: dict[str, float] = {}
    ms["spk.load_prompt"], (wav22, sr) = timed(
        lambda: load_prompt(prompt, SPEAKER_SAMPLE_RATE), repeats, dev
    )
    ms["spk.resample_16k"], wav16 = timed(lambda: resample(wav22, sr, 16000), repeats, dev)
    feats = eng.part("features")
    ms["spk.extract"], (inp, mask) = timed(lambda: feats.extract(wav16), repeats, dev)
    ms["spk.w2v_bert"], (hidden, _) = timed(lambda: feats.hidden(inp, mask), repeats, dev)
    ms["spk.normalize"], emb = timed(lambda: feats.normalize(hidden), repeats, dev)
    codec = eng.part("semantic_codec")
    ms["spk.codec_quantize"], (_, s_ref) = timed(lambda: codec.quantize(emb), repeats, dev)
    kw = mel_kwargs(eng.cs.config["s2mel"])
    ms["spk.mel"], ref_mel = timed(lambda: mel_spectrogram(wav22.to(dev), **kw), repeats, dev)
    ms["spk.campplus_fbank (CPU)"], fb = timed(lambda: campplus_features(wav16), repeats, dev)
    camp = eng.part("campplus")
    ms["spk.campplus"], style = timed(lambda: camp(fb.unsqueeze(0).to(dev)), repeats, dev)
    s2mel = eng.part("s2mel")
    ylens = torch.tensor([ref_mel.size(2)], device=dev)
    ms["spk.regulate"], _ = timed(lambda: s2mel.regulate(s_ref, ylens), repeats, dev)

    plan = plan_emotion(
        request.text,
        emo_audio_prompt=None,
        emo_alpha=1.0,
        emo_vector=None,
        use_emo_text=False,
        emo_text=None,
        text_model=None,
    )
    ms["emo.load_prompt_16k"], (w16, _) = timed(lambda: load_prompt(prompt, 16000), repeats, dev)
    ms["emo.features"], emo_cond = timed(lambda: feats(w16), repeats, dev)
    gpt = eng.part("gpt")

    def merge():
        with eng._gpt_autocast():
            return resolve_emotion(
                gpt, emb.to(dev, eng.dtype), emo_cond.to(eng.dtype), plan, style=style
            )

    ms["emo.resolve_emotion"], _ = timed(merge, repeats, dev)
    return ms


def pair(eng: Engine, prompt: Path, request: SynthesisRequest, repeats: int) -> dict:
    """A row's whole prompt conditioning (speaker, then emotion), with the file's two
    w2v-bert passes as two forwards and as one batched forward (``emotion_too``), the two
    forms alternating so that a drifting host slows both alike; and the two forwards alone
    (``SemanticFeatures.__call__`` twice against ``SemanticFeatures.batch``). Medians, ms;
    and the batched features' largest difference from the calls one by one."""
    dev = eng.device

    def whole(emotion_too: bool):
        eng.clear_prompt_cache()
        spk = eng.speaker_conditioning(prompt, emotion_too=emotion_too)
        return eng.emotion_conditioning(request, spk)

    runs: dict[str, list[float]] = {"two_forwards": [], "one_forward": []}
    for _ in range(repeats):
        timed(lambda: whole(False), 1, dev, runs["two_forwards"])
        timed(lambda: whole(True), 1, dev, runs["one_forward"])
    feats = eng.part("features")
    wav22, sr = load_prompt(prompt, SPEAKER_SAMPLE_RATE)
    wav16, w16 = resample(wav22, sr, 16000), load_prompt(prompt, 16000)[0]
    out = {f"conditioning.{k}": statistics.median(v) for k, v in runs.items()}
    out["w2v_bert.two_calls"], _ = timed(lambda: (feats(wav16), feats(w16)), repeats, dev)
    out["w2v_bert.batch"], batched = timed(lambda: feats.batch([wav16, w16]), repeats, dev)
    # How far the batched forward's features are from the calls one by one (float rounding).
    for name, wave, got in (("speaker", wav16, batched[0]), ("emotion", w16, batched[1])):
        alone = feats(wave)
        out[f"max_abs_diff.{name}"] = float((got - alone).abs().max())
        out[f"max_abs.{name}"] = float(alone.abs().max())
    # The emotion merge's two encoder passes (speaker and emotion features of one shape) as
    # one batch (merge_emovec) against one by one, as the Engine runs them (GPT dtype).
    gpt = eng._emotion_gpt()
    spk, emo = batched[0].to(eng.dtype), batched[1].to(eng.dtype)
    if spk.shape == emo.shape:
        n = torch.tensor([spk.shape[-1]], device=dev)

        def two():
            e, b = gpt.get_emovec(emo, n), gpt.get_emovec(spk, n)
            return b + 1.0 * (e - b)

        with torch.no_grad(), eng._gpt_autocast():
            one_ms, one = timed(lambda: gpt.merge_emovec(spk, emo, n, n, alpha=1.0), repeats, dev)
            out["merge.one_pass"] = one_ms
            out["merge.two_passes"], sep = timed(two, repeats, dev)
        out["max_abs_diff.merge"] = float((one - sep).abs().max())
        out["max_abs.merge"] = float(sep.abs().max())
    print(
        "speaker + emotion conditioning (ms, and differences): "
        + ", ".join(f"{k} {v:.4g}" for k, v in out.items())
    )
    return out


def precisions(
    eng: Engine,
    prompt: Path,
    request: SynthesisRequest,
    names: list[str],
    repeats: int,
    rows: int,
) -> dict:
    """The w2v-bert encoder at each ``features_precision`` in ``names``: the batched forward
    of a row's speaker and emotion waveforms (``SemanticFeatures.batch``) and the row's whole
    prompt conditioning (speaker with ``emotion_too``, then emotion), the precisions
    alternating within each repeat so that a drifting host slows all alike. Medians, ms; each
    precision's features against float32's (relative L2); and a profile of one batched
    forward at each (its kernels' busy time against the forward's wall time tells whether
    the GPU or the host issuing ~900 kernels bounds it)."""
    dev = eng.device
    feats = eng.part("features")
    wav22, sr = load_prompt(prompt, SPEAKER_SAMPLE_RATE)
    wav16, w16 = resample(wav22, sr, 16000), load_prompt(prompt, 16000)[0]
    forward = {p: [] for p in names}
    whole = {p: [] for p in names}

    def conditioning(precision: str):
        eng.features_precision = precision
        eng.clear_prompt_cache()
        spk = eng.speaker_conditioning(prompt, emotion_too=True)
        return eng.emotion_conditioning(request, spk)

    saved = eng.features_precision
    try:
        for _ in range(repeats):
            for p in names:
                timed(lambda p=p: feats.batch([wav16, w16], p), 1, dev, forward[p])
                timed(lambda p=p: conditioning(p), 1, dev, whole[p])
    finally:
        eng.features_precision = saved
    exact = feats.batch([wav16, w16])
    out: dict = {}
    for p in names:
        out[f"w2v_bert.batch.{p}"] = statistics.median(forward[p])
        out[f"conditioning.{p}"] = statistics.median(whole[p])
        got = feats.batch([wav16, w16], p)
        out[f"rel_l2.{p}"] = max(
            float((g - e).norm() / e.norm()) for g, e in zip(got, exact, strict=True)
        )
    out.update(graph_ab(feats, [wav16, w16], names, repeats))
    for p in names:
        print(f"\n== profile: SemanticFeatures.batch at {p}")
        found = profile(lambda p=p: feats.batch([wav16, w16], p), dev, rows)
        out[f"kernels.{p}"] = found["kernels"]
        out[f"kernel_busy_ms.{p}"] = found["kernel_busy_ms"]
    print(
        "features precisions (ms, and relative L2 against float32): "
        + ", ".join(f"{k} {v:.4g}" for k, v in out.items())
    )
    return out


def graph_ab(feats, waves: list[torch.Tensor], names: list[str], repeats: int) -> dict:
    """Would the encoder's forward gain from a CUDA graph at each precision? (It did not in
    float32, run DA, where its GEMMs bound it.) The batched forward of ``waves`` at its fixed
    shape, eagerly against one graph of it captured here at that precision (the script's
    own; the Engine has none), alternating; medians, ms, and the replay's largest difference
    from the eager forward. CUDA only: {} elsewhere."""
    from tts.fast import FALLBACKS
    from tts.fast.graphs import warm_then_capture

    dev = feats.device
    if dev.type != "cuda":
        return {}
    inp, mask, _ = feats.batch_inputs(waves)
    out: dict = {}
    for p in names:

        def eager(p=p):
            return feats.hidden(inp, mask, precision=p)[0]

        with torch.no_grad():
            want, graph, held = warm_then_capture(
                eager, eager, device=dev, what=f"cond_profile w2v-bert graph ({p})"
            )
            if graph is None:  # reported; the other precisions go on
                out[f"graph_ab.error.{p}"] = FALLBACKS[-1][1]
                continue
            replay_ms, eager_ms = [], []
            for _ in range(repeats):
                timed(graph.replay, 1, dev, replay_ms)
                timed(eager, 1, dev, eager_ms)
        out[f"graph_ab.eager.{p}"] = statistics.median(eager_ms)
        out[f"graph_ab.replay.{p}"] = statistics.median(replay_ms)
        out[f"graph_ab.max_abs_diff.{p}"] = float((held - want).abs().max())
    return out


def profile(fn, device: torch.device, rows: int) -> dict:
    """torch.profiler of one call: the top ops by CUDA and by CPU time, and the kernel count."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        fn()
        sync(device)
    events = prof.key_averages()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy_us = sum(e.device_time for e in kernels)
    print(events.table(sort_by="device_time_total", row_limit=rows))
    print(events.table(sort_by="self_cpu_time_total", row_limit=rows))
    return {"kernels": len(kernels), "kernel_busy_ms": busy_us / 1e3}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoints", required=True, help="the set tts bench / run_gpu.sh wrote")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", help="the GPT's dtype (tts bench's variant)")
    ap.add_argument("--seconds", type=float, default=10.0, help="prompt length")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--rows", type=int, default=25, help="profiler table rows")
    ap.add_argument(
        "--features-precisions",
        default="float32,tf32",
        help="comma-separated w2v-bert precisions to time against each other (CUDA: any of "
        "float32, tf32, bfloat16, float16; the CPU runs float32 and tf32 alike)",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    eng = Engine.open(args.checkpoints, device=args.device, dtype=args.dtype)
    dev = eng.device
    tmp = Path(tempfile.mkdtemp(prefix="cond-profile-"))
    wave, _ = prompt_wave(args.seconds, 1234)
    prompt = tmp / "prompt.wav"
    write_wav(prompt, torch.from_numpy(wave), SPEAKER_SAMPLE_RATE)
    request = SynthesisRequest(id="cond", text="(token ids)", speaker=prompt, seed=1234)

    def spk():
        eng.clear_prompt_cache()  # time the work, not the Engine's per-file cache
        return eng.speaker_conditioning(prompt)

    def emo(speaker):
        eng.clear_prompt_cache()
        return eng.emotion_conditioning(request, speaker)

    speaker = spk()  # loads every part it needs
    emo(speaker)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    result: dict = {
        "device": name,
        "dtype": args.dtype,
        "prompt_seconds": args.seconds,
        "repeats": args.repeats,
    }
    result["spk_cond_runs_ms"], result["emo_cond_runs_ms"] = [], []
    result["spk_cond_ms"], speaker = timed(spk, args.repeats, dev, result["spk_cond_runs_ms"])
    result["emo_cond_ms"], _ = timed(
        lambda: emo(speaker),
        args.repeats,
        dev,
        result["emo_cond_runs_ms"],
    )
    # A later row of a batch with the same prompt: the Engine's per-file cache answers.
    eng.emotion_conditioning(request, speaker)
    result["emo_cond_cached_ms"], _ = timed(
        lambda: eng.emotion_conditioning(request, speaker), args.repeats, dev
    )
    # The GPT's speaker latent of a row (semantic_tokens computes one per row): anew, and for
    # a later row of the same speaker (kept per speaker features).
    emotion = eng.emotion_conditioning(request, speaker)

    def latent(clear: bool):
        if clear:
            eng.clear_prompt_cache()
        return eng._gpt_conditioning(speaker, emotion)

    result["gpt_latent_ms"], _ = timed(lambda: latent(True), args.repeats, dev)
    result["gpt_latent_cached_ms"], _ = timed(lambda: latent(False), args.repeats, dev)
    result["pieces_ms"] = pieces(eng, prompt, request, args.repeats)
    result["pair_ms"] = pair(eng, prompt, request, args.repeats)
    names = [p for p in args.features_precisions.split(",") if p]
    result["features_precisions"] = precisions(eng, prompt, request, names, args.repeats, args.rows)
    print(
        f"speaker_conditioning {result['spk_cond_ms']:.2f} ms, "
        f"emotion_conditioning {result['emo_cond_ms']:.2f} ms (medians)"
    )
    print(
        f"emotion_conditioning of a later row, same prompt: {result['emo_cond_cached_ms']:.2f} ms"
    )
    print(
        f"GPT speaker latent of a row: {result['gpt_latent_ms']:.2f} ms, of a later row of "
        f"the same speaker {result['gpt_latent_cached_ms']:.2f} ms"
    )
    for key in ("spk_cond_runs_ms", "emo_cond_runs_ms"):
        print(f"  {key}: {' '.join(f'{t:.1f}' for t in result[key])}")
    for name, value in result["pieces_ms"].items():
        print(f"  {name:28s} {value:8.2f} ms")
    print("\n== profile: speaker_conditioning")
    result["spk_profile"] = profile(spk, dev, args.rows)
    print("\n== profile: emotion_conditioning")
    result["emo_profile"] = profile(lambda: emo(speaker), dev, args.rows)
    print(json.dumps({k: result[k] for k in ("spk_profile", "emo_profile")}))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
