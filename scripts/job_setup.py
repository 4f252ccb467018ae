"""Seconds from a process's start until a workflow job's models are ready (its "set-up").

Every workflow job is a new process that imports PyTorch and ``tts`` and loads what its stage
needs (docs/benchmarks.md, "Per-job set-up"). This times that in one fresh process: the
imports a job script makes, ``Engine.open`` and the loads, and for ``speaker`` also one
conditioning of a short prompt (the parts it loads are decided by running it), with the
file's emotion features as the speaker job computes them (``--save``: write the result for
``emotion``). ``emotion`` conditions the emotion of a row whose emotion prompt is its speaker
file, from that saved result (``--recompute``: without its emotion features, as before
2026-12-05). ``tokens`` loads the GPT as the tokens job does (without its emotion path;
``--whole-gpt``: all of it, as before 2026-12-05) and imports the fast decoder's module.

    python3 scripts/job_setup.py CHECKPOINTS speaker --prompt voice.wav [--save spk.safetensors]
    python3 scripts/job_setup.py CHECKPOINTS emotion --prompt voice.wav --speaker spk.safetensors
    python3 scripts/job_setup.py CHECKPOINTS render
    python3 scripts/job_setup.py CHECKPOINTS tokens [--whole-gpt]

Run it several times (the page cache and the host's load move it) and compare medians.
"""

import time

START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402

from tts import jobs  # noqa: E402, F401 - what a job script imports
from tts.pipeline import (  # noqa: E402
    EMOTION_FEATURES,
    Engine,
    SynthesisRequest,
    load_tensors,
    save_tensors,
)

RENDER_PARTS = ("s2mel", "semantic_codec", "bigvgan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints")
    ap.add_argument("stage", choices=("speaker", "emotion", "render", "tokens"))
    ap.add_argument("--prompt", help="speaker prompt WAV (stages speaker, emotion)")
    ap.add_argument("--save", help="stage speaker: write its tensors here")
    ap.add_argument("--speaker", help="stage emotion: the speaker stage's --save file")
    ap.add_argument(
        "--recompute", action="store_true", help="stage emotion: ignore its emotion features"
    )
    ap.add_argument("--whole-gpt", action="store_true", help="stage tokens: load all of gpt.pth")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    engine = Engine.open(args.checkpoints, device=args.device)
    if args.stage == "speaker":
        if not args.prompt:
            ap.error("stage speaker needs --prompt")
        tensors = engine.speaker_conditioning(args.prompt, emotion_too=True)
        tensors[EMOTION_FEATURES] = engine.emotion_features(args.prompt).float().cpu()
        if args.save:
            save_tensors(args.save, tensors)
    elif args.stage == "emotion":
        if not (args.prompt and args.speaker):
            ap.error("stage emotion needs --prompt and --speaker")
        speaker = load_tensors(args.speaker)
        if args.recompute:
            del speaker[EMOTION_FEATURES]
        engine.emotion_gpt_alone = True
        row = SynthesisRequest(id="row", text="Hello.", speaker=args.prompt)
        engine.emotion_conditioning(row, speaker)
    elif args.stage == "tokens":
        import tts.fast.decode  # noqa: F401 - what the job's first GPT call imports

        engine.gpt_speech_alone = not args.whole_gpt
        engine.part("gpt")
    else:
        for name in RENDER_PARTS:
            engine.part(name)
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)
    print(
        json.dumps(
            {
                "stage": args.stage,
                "seconds": round(time.perf_counter() - START, 3),
                "loads": {k: round(v, 3) for k, v in engine.load_seconds.items()},
                "dynamo_imported": "torch._dynamo" in sys.modules,
                "transformers_imported": "transformers" in sys.modules,
            }
        )
    )


if __name__ == "__main__":
    main()
