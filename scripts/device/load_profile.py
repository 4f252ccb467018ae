"""Where a workflow job's first seconds go: imports, CUDA start-up, part loads (issue 8; GPU).

The workflow's speaker job spent 15.5 s (run BX, H200) and 14.8 s (run CA, H100) loading the
w2v-bert part ``features``, against ~5 s on a 2-core CPU machine. This script repeats what
that job does first, in a new process, and times each phase on its own:

1. ``import torch`` and ``import tts.pipeline``;
2. opening the Engine (``tts.jobs.open_engine``'s call, with the job's thread count);
3. CUDA's start-up (one tensor on the device), unless ``--cuda-late`` leaves it to the
   first part, as in the job;
4. each part of ``--parts`` in order (``Engine.part``, with a device synchronisation),
   under cProfile: the functions with the most time in all and of their own (``--top``);
5. the first speaker conditioning of a prompt, then a second one (cuDNN/cuBLAS handles and
   kernel loads fall on the first).

    python3 scripts/device/load_profile.py --checkpoints /tmp/bench_ckpt --json "$OUT/load.json"

(or ``SECTIONS=load bash scripts/device/run_gpu.sh``).
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

TORCH_S = time.perf_counter() - START
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tts.pipeline import Engine  # noqa: E402

TTS_S = time.perf_counter() - START - TORCH_S


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profiled(fn, device: torch.device, top: int) -> tuple[float, str]:
    """(seconds, cProfile's table) of ``fn()`` followed by a device synchronisation."""
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.enable()
    fn()
    sync(device)
    prof.disable()
    seconds = time.perf_counter() - start
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return seconds, out.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoints", required=True, help="the set tts bench / run_gpu.sh wrote")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (config/config.yaml)")
    ap.add_argument("--parts", default="features,semantic_codec,campplus,length_regulator")
    ap.add_argument("--cuda-late", action="store_true", help="no CUDA start-up before the parts")
    ap.add_argument("--top", type=int, default=18, help="cProfile rows per table")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    result: dict = {"import_torch_s": TORCH_S, "import_tts_s": TTS_S, "parts": {}}
    start = time.perf_counter()
    eng = Engine.open(args.checkpoints, device=args.device, dtype="float32")
    result["open_s"] = time.perf_counter() - start
    dev = eng.device
    if not args.cuda_late and dev.type == "cuda":
        start = time.perf_counter()
        torch.empty(1, device=dev)
        sync(dev)
        result["cuda_start_s"] = time.perf_counter() - start
    for name in [p for p in args.parts.split(",") if p]:
        seconds, table = profiled(lambda n=name: eng.part(n), dev, args.top)
        result["parts"][name] = seconds
        print(f"=== part {name}: {seconds:.2f} s\n{table}", flush=True)

    from tts.audio import SPEAKER_SAMPLE_RATE, write_wav
    from tts.bench import prompt_wave

    wave, _ = prompt_wave(10.0, 1234)
    prompt = Path(tempfile.mkdtemp(prefix="load-profile-")) / "prompt.wav"
    write_wav(prompt, torch.from_numpy(wave), SPEAKER_SAMPLE_RATE)
    for key in ("first_speaker_s", "second_speaker_s"):
        eng.clear_prompt_cache()
        seconds, table = profiled(lambda: eng.speaker_conditioning(prompt), dev, args.top)
        result[key] = seconds
        print(f"=== {key}: {seconds:.2f} s\n{table if key.startswith('first') else ''}")
    result["loaded"] = {k: round(v, 3) for k, v in eng.load_seconds.items()}
    result["process_s"] = time.perf_counter() - START
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
