"""The ``tts`` command line: checks, single jobs and benchmarks.

Every command prints a clear one-line error (no traceback) and exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tts import __version__

# tts.precision.PRECISIONS, written out so that the parser needs no torch import.
PRECISIONS = ("float32", "tf32", "bfloat16", "float16")

# The official IndexTeam/IndexTTS-2 config.yaml, shipped with the package.
OFFICIAL_CONFIG = Path(__file__).resolve().parent / "data" / "config.official.yaml"


def cmd_check(args: argparse.Namespace) -> int:
    """Files present and readable, with sizes and SHA-256; broken files named one per line.

    Cheap checks only (no unpickling, no tensor data read): see :mod:`tts.preflight`. An
    IndexTTS 1.x set is named as such instead of listing what it lacks.
    """
    from tts.checkpoints import (
        FILES,
        CheckpointError,
        CheckpointSet,
        ConfigError,
        config_problems,
        indextts1_evidence,
        indextts1_message,
        missing_files,
        sha256,
    )
    from tts.preflight import check_file, gpt_tensor_names

    root = Path(args.dir)
    if not root.is_dir():
        print(f"error: {root}: not a directory", file=sys.stderr)
        return 1
    missing = missing_files(root)
    bad: list[str] = []
    cs = CheckpointSet(root=root, config={})
    if (root / "config.yaml").is_file():
        try:
            cs = CheckpointSet.open(root)
        except ConfigError as exc:
            bad.append(str(exc))
            print(f"BAD      {'config':32s} {exc}")
    if cs.config:
        evidence = indextts1_evidence(cs.config) + indextts1_evidence(
            gpt_tensors=gpt_tensor_names(cs)
        )
        if evidence:
            label, where = (
                ("set", root) if indextts1_evidence(cs.config) else ("gpt", cs.path("gpt"))
            )
            print(f"BAD      {label:32s} {indextts1_message(where, evidence)}")
            print(f"{root} is not an IndexTTS2 checkpoint set")
            return 1
        for problem in config_problems(cs.config):
            bad.append(problem)
            print(f"BAD      {'config':32s} {cs.path('config')}: {problem}")

    def one_file(key: str) -> bool:
        return "/" in key or FILES[key].kind == "file"

    # A directory where a file belongs is reported as such below, not as missing.
    missing = [m for m in missing if not (one_file(m[0]) and m[1].is_dir())]
    for key, path, source in missing:
        print(f"MISSING  {key:32s} {path}\n         -> {source}")
    missing_keys = {m[0] for m in missing}
    for key, path in cs.required_paths().items():
        if FILES[key.split("/")[0]].optional or not one_file(key) or key in missing_keys:
            continue
        if key == "config" and not cs.config:
            continue  # reported above
        try:
            if key != "config":
                check_file(path)
            digest = sha256(path) if not args.no_hash else "-"
        except (CheckpointError, OSError) as exc:
            bad.append(str(exc))
            print(f"BAD      {key:32s} {exc}")
            continue
        print(f"ok       {key:32s} {path.stat().st_size:>14,d} B  {digest}")
    if missing or bad:
        print(f"{len(missing)} file(s) missing, {len(bad)} unusable in {root}")
        return 1
    print(f"all checkpoint files present in {root}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Strictly load every (or the named) component; non-zero exit on any problem."""
    from tts.validate import parse_only, validate_set
    from tts.weight_report import write_report

    names = parse_only(args.only)
    results = validate_set(args.dir, names, with_stats=bool(args.report))
    for r in results:
        status = "ok  " if r.ok else "FAIL"
        print(f"{status} {r.name:16s} {r.message}")
    if args.report:
        per_file = {f"{r.name}: {Path(r.file).name}": r.stats for r in results if r.ok}
        extra = {
            "components": [
                {
                    "name": r.name,
                    "file": r.file,
                    "ok": r.ok,
                    "message": r.message,
                    "computed": r.computed,
                }
                for r in results
            ]
        }
        write_report(args.report, per_file, extra)
        print(f"weight report written to {args.report} (+ .tsv)")
    bad = [r.name for r in results if not r.ok]
    if bad:
        print(f"validation failed for: {', '.join(bad)}")
        return 1
    return 0


def cmd_manifest(args: argparse.Namespace) -> int:
    """Print file, tensor, shape, dtype for every tensor our modules expect."""
    from tts.checkpoints import CheckpointSet, load_config
    from tts.components import MODULE_COMPONENTS, manifest_rows

    cfg_path = Path(args.config) if args.config else OFFICIAL_CONFIG
    cs = CheckpointSet(root=cfg_path.parent, config=load_config(cfg_path))
    names = [n for n in (args.only.split(",") if args.only else MODULE_COMPONENTS)]
    for name in names:
        for row in manifest_rows(name, cs):
            print("\t".join(row))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Write a small random checkpoint set (labelled DEMO) in the official formats."""
    from tts.demo import write_demo_checkpoints

    out = write_demo_checkpoints(Path(args.out), seed=args.seed)
    print(f"DEMO checkpoint set (random weights, not a real voice model) written to {out}")
    return 0


def synth_text(args: argparse.Namespace) -> str:
    """The text of a synth job: ``--text``, or the content of ``--text-file`` (UTF-8)."""
    if args.text is not None:
        return args.text
    try:
        return Path(args.text_file).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{args.text_file}: not UTF-8 text ({exc.reason})") from None


def cmd_synth(args: argparse.Namespace) -> int:
    """Synthesise one text in one voice to a WAV file."""
    from tts.audio import write_wav
    from tts.pipeline import Engine, SynthesisRequest

    text = synth_text(args)  # before the models load: a bad file fails at once
    engine = Engine.open(
        Path(args.checkpoints),
        device=args.device,
        dtype=args.dtype,
        fast=not args.no_fast,
        gpt_decoder=args.gpt_decoder,
        render_precision=args.render_precision,
        features_precision=args.features_precision,
        cudnn_benchmark=args.cudnn_benchmark,
    )
    vector = [float(v) for v in args.emo_vector.split(",")] if args.emo_vector else None
    request = SynthesisRequest(
        id="cli",
        text=text,
        speaker=Path(args.speaker),
        emo_audio=Path(args.emo_audio) if args.emo_audio else None,
        emo_alpha=args.emo_alpha,
        emo_vector=vector,
        emo_text=args.emo_text,
        seed=args.seed,
        sampling={"max_mel_tokens": args.max_mel_tokens} if args.max_mel_tokens else {},
    )
    result = engine.synthesize([request])[0]
    if not result.ok:
        print(f"error: {result.error}", file=sys.stderr)
        return 1
    write_wav(Path(args.out), result.value["wav"], engine.sample_rate)
    label = " [DEMO checkpoints: random weights, not speech]" if engine.is_demo else ""
    print(
        json.dumps(
            {
                "out": args.out,
                "seconds": result.value["wav"].numel() / engine.sample_rate,
                "timings": result.timings,
            }
        )
        + label
    )
    return 0


def cmd_parity(args: argparse.Namespace) -> int:
    """Run every parity case on a device/dtype and print a line per case."""
    import torch

    from tts import parity

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        args.dtype
    ]
    opts = parity.RunOptions(device=args.device, dtype=dtype)
    failed = 0
    rows = []
    for fs, case in parity.all_cases():
        cid = f"{fs.name}/{parity.case_id(case)}"
        try:
            comparisons = parity.run_case(fs, case, opts)
            fails = [f for c in comparisons if (f := c.failure())]
            worst = max((c.max_abs_diff() for c in comparisons if not c.exact), default=0.0)
        except Exception as exc:  # a crashing case is a failed case, reported and counted
            fails, worst = [f"{type(exc).__name__}: {exc}"], float("nan")
        failed += bool(fails)
        rows.append({"case": cid, "ok": not fails, "max_abs_diff": worst, "failures": fails})
        print(f"{'ok  ' if not fails else 'FAIL'} {cid:60s} max|diff| {worst:.3g}")
        for f in fails:
            print(f"     {f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1), encoding="utf-8")
    print(f"{len(rows) - failed} passed, {failed} failed")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tts",
        description="IndexTTS2 re-implementation: checks, synthesis, scoring, benchmarks.",
    )
    p.add_argument("--version", action="version", version=f"tts {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("check", help="files present and readable, sizes, sha256")
    s.add_argument("dir")
    s.add_argument("--no-hash", action="store_true", help="skip sha256 (faster on large files)")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("validate", help="strict-load every component without running it")
    s.add_argument("dir")
    s.add_argument("--only", help="comma-separated components, e.g. gpt,s2mel")
    s.add_argument("--report", help="write the weight report here (JSON, plus a .tsv beside it)")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser(
        "manifest", help="every tensor our modules expect (file, tensor, shape, dtype)"
    )
    s.add_argument("--config", help="config.yaml (default: the official full-size config)")
    s.add_argument("--only", help="comma-separated module components")
    s.set_defaults(func=cmd_manifest)

    s = sub.add_parser("demo-checkpoints", help="write a small random DEMO checkpoint set")
    s.add_argument("out")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("synth", help="synthesise one text to a WAV file")
    s.add_argument("--checkpoints", required=True, help="the IndexTTS-2 model folder")
    text = s.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", help="the text to speak")
    text.add_argument("--text-file", help="a UTF-8 file holding the text to speak")
    s.add_argument("--speaker", required=True, help="speaker prompt audio (the voice)")
    s.add_argument("--out", required=True, help="output WAV (22.05 kHz, 16-bit)")
    s.add_argument("--emo-audio", help="emotion prompt audio (default: the speaker prompt)")
    s.add_argument(
        "--emo-alpha",
        type=float,
        default=1.0,
        help="emotion strength, 0-1 (how much of the emotion prompt, vector or text)",
    )
    s.add_argument(
        "--emo-vector",
        help="8 comma-separated weights: happy, angry, sad, afraid, disgusted, melancholic, "
        "surprised, calm",
    )
    s.add_argument("--emo-text", help="emotion from this text via the Qwen emotion model")
    s.add_argument("--seed", type=int, help="sampling seed (default: one derived from the text)")
    s.add_argument("--max-mel-tokens", type=int, help="most semantic codes per text segment")
    s.add_argument("--device", default="cuda", help="cuda (default), cuda:N, cpu or auto")
    s.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="GPT precision",
    )
    s.add_argument(
        "--render-precision",
        default="float32",
        choices=PRECISIONS,
        help="DiT solve and vocoder precision (CUDA with the fast paths)",
    )
    s.add_argument(
        "--features-precision",
        default="float32",
        choices=PRECISIONS,
        help="the prompts' w2v-bert encoder precision (CUDA with the fast paths)",
    )
    s.add_argument(
        "--gpt-decoder",
        default="graphke",  # tts.pipeline.ONE_CALL_DECODER: one GPT call per process
        help="fast GPT decoder variant (tts.fast.decode.VARIANTS)",
    )
    s.add_argument(
        "--no-fast",
        action="store_true",
        help="on CUDA, run the plain reference paths instead of the fast ones",
    )
    s.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="let cuDNN time its kernels per shape (faster, not bit-reproducible)",
    )
    s.set_defaults(func=cmd_synth)

    try:
        from tts.scoring.cli import add_score_parser

        add_score_parser(sub)
    except ImportError:
        pass

    try:
        from tts.bench import add_bench_parser

        add_bench_parser(sub)
    except ImportError:
        pass

    s = sub.add_parser("parity", help="run every parity fixture case (optionally on CUDA)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    s.add_argument("--json", help="write per-case results here")
    s.set_defaults(func=cmd_parity)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tts`` console script."""
    from tts.loading import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CheckpointError, FileNotFoundError, ValueError, RuntimeError) as exc:
        first = str(exc).strip() or type(exc).__name__
        print(f"error: {first}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
