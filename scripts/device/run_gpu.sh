#!/usr/bin/env bash
# The GPU runs of issue 8 (benchmark, official comparison, GPU tests) on the lent device.
# Here first: bash scripts/device/prepare.sh (fills the ignored .bench/). Then through the device
# tool, from the repo root, with carry [".bench"]: bash scripts/device/run_gpu.sh
# (docs/benchmarks.md, "Reproducing the GPU runs").
#
# SECTIONS (default "set bench official compare tests profile", run in that order):
#   set       write the full-size random checkpoint set to $CK on cuda (tts.bench.write_random_set;
#             kept if a complete one is there already); bench and official add it when missing
#   bench     python3 -m tts.cli bench --device cuda --checkpoints $CK $BENCH_ARGS
#             (default BENCH_ARGS: H200 run Y of docs/benchmarks.md, with the default decoder
#             graphkp; the default sections together take longer than one 10-minute call: split
#             them with SECTIONS)
#   official  the official harness on the same set and inputs (official_same_weights.py), with
#             $OFFICIAL_ARGS (default: fp16, 3 beams, 500 tokens, warm-up 1, 2 timed passes)
#   compare   speed-up of ours over the official at batch 1 (tts.bench.compare_files)
#   tests     python3 -m pytest -q tests/test_gpu.py $TESTS_ARGS (fixtures unpacked from
#             .bench/shared.tar.xz; TESTS_K selects by -k)
#   profile   scripts/device/decode_profile.py $PROFILE_ARGS (GPT decode-step kernels and times of
#             each decoder variant; no checkpoints), if that script exists
#   cudnn     scripts/device/cudnn_ab.py --checkpoints $CK $CUDNN_ARGS (each stage's time with
#             cuDNN deterministic against cuDNN benchmark mode, alternating in one process)
#   trace     scripts/device/loop_trace.py --checkpoints $CK $TRACE_ARGS (the benchmark's decode
#             loop against decode_profile's stepping on the same GPT and prompt, other buckets,
#             and a torch.profiler summary of the loop: kernels, busy time, gaps)
#   timeline  scripts/device/pass_timeline.py --checkpoints $CK $TIMELINE_ARGS (one benchmark pass
#             under torch.profiler: the GPU's busy and idle time, the idle time by the host's
#             stage, the longest gaps and the host's operator in each)
#   sweep     scripts/device/attention_sweep.py $SWEEP_ARGS (launch settings of the decode
#             attention kernel at the GPT's shapes; no checkpoints)
#   choice    scripts/device/choice_bench.py $CHOICE_ARGS (the decode step's token choice, piece by
#             piece, each as a CUDA graph: top-k, top-p's sort, the draws; no checkpoints)
#   cond      scripts/device/cond_profile.py --checkpoints $CK $COND_ARGS (the prompt conditioning,
#             speaker and emotion, whole and piece by piece, and a profiler summary of each)
#   load      scripts/device/load_profile.py --checkpoints $CK $LOAD_ARGS (a new process's imports,
#             CUDA start-up and each part load of the speaker job, under cProfile)
#   render    scripts/device/render_ab.py --checkpoints $CK $RENDER_ARGS (the render stage of a batch
#             job: segments solved one by one against padded solve batches, render_batch_items)
#   workflow  scripts/device/workflow_bench.py run --checkpoints $CK $WORKFLOW_ARGS (the Snakemake
#             workflow's GPU stages for config/gpu_bench.tsv, from the text stage that
#             scripts/device/prepare_workflow.sh ran here; carry .bench/whl, .bench/shared.tar.xz
#             and .bench/wf)
#   linear    scripts/device/linear_bench.py $LINEAR_ARGS (the GPT's few-row projections against
#             cuBLAS, launch settings with --sweep, the 24-layer stack, --other FILE (repeatable):
#             an A/B against another tts/fast/linear.py, registers per kernel; no checkpoints)
#   counters  scripts/device/kernel_counters.py $COUNTERS_ARGS (Nsight Compute's counters of the
#             layer stack's kernels at 1 and 3 rows: duration, DRAM bytes and throughput,
#             occupancy, registers, instructions, stall reasons; raw CSVs in $OUT/counters;
#             no checkpoints)
#   barrier   scripts/device/barrier_bench.py $BARRIER_ARGS (one dependent phase: a grid barrier inside
#             a persistent Triton kernel against a kernel boundary with and without PDL; no
#             checkpoints)
#   persistent scripts/device/persistent_bench.py $PERSISTENT_ARGS (the 24-layer projection stack as
#             one persistent Triton kernel with grid barriers against the tts.fast.linear chain;
#             checked against it first; no checkpoints)
#   latent    scripts/device/latent_profile.py $LATENT_ARGS (the GPT's teacher-forced latent pass op
#             by op against tts.fast.latent_pass's CUDA graphs, alternating in one process; no
#             checkpoints)
#   calls     scripts/device/call_profile.py $CALLS_ARGS (one GPT generate call's host time outside
#             its replayed steps: the decoder's stats over several calls, then cProfile of one;
#             no checkpoints)
#   vocoder   scripts/device/vocoder_profile.py $VOCODER_ARGS (BigVGAN's forward at the benchmark's
#             shapes: fused / plain activations / convolutions alone, FLOP rate, kernel table;
#             --other FILE: an A/B against an earlier tts/fast/bigvgan.py; no checkpoints)
#   actsweep  scripts/device/activation_sweep.py $ACTSWEEP_ARGS (the fused activation's launch
#             settings at the vocoder's six stage shapes; --other FILE: an earlier kernel's time
#             and bits on the same inputs; no checkpoints)
#   s2mel     scripts/device/s2mel_profile.py $S2MEL_ARGS (one compiled DiT call of the solve at the
#             benchmark's shapes: time, FLOP rate, kernel table; no checkpoints)
#   repro     scripts/device/compile_repro.py $REPRO_ARGS (whether the compiled DiT gives the same bits
#             called again, compiled again, in another process, and in Inductor's deterministic
#             mode; no checkpoints)
#   ab        scripts/device/capture_ab.py --old $AB_OLD $AB_ARGS (the decode loop of an earlier
#             tts/fast/decode.py against the current one; AB_OLD default .bench/decode_old.py,
#             made here with e.g. git show 32ce661:tts/fast/decode.py > .bench/decode_old.py)
# Every section runs under its own timeout (T_SET, T_BENCH, ... seconds), capped by what is left of
# BUDGET (default 540 s, the device allows 600 per call), and writes $OUT/<section>.log and
# $OUT/<section>.json. The device returns at most 8 files, so at the end everything but run.log,
# summary.json (sections, exit codes, times) and the first five section JSON files of $JSONS is
# packed into $OUT/logs.tar.gz.
# Other knobs: CK (/tmp/bench_ckpt), SEED (1234), PY and PY_OFFICIAL (python3: the carried wheels
# are for CPython 3.12, another Python runs with its own packages), DEVICE (cuda) and TINY=1 (a
# tiny set, --tiny for both benchmarks: a dry run of this script on a CPU), PYCACHE (below).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
SECTIONS="${SECTIONS:-set bench official compare tests profile}"
BUDGET="${BUDGET:-540}"
RESERVE=15  # seconds kept for packing $OUT
# What tts.bench.randomize_ writes; a kept set of another format is written anew (2: the
# perceivers' RMSNorm scales 1, not 0).
SET_FORMAT=2
CK="${CK:-/tmp/bench_ckpt}"
SEED="${SEED:-1234}"
BENCH_ARGS="${BENCH_ARGS:---precision bfloat16:bfloat16+compile:bfloat16@1,16#graphkp --precision float32@1#graphkp,graphfi --warmup 1 --repeats 3}"
OFFICIAL_ARGS="${OFFICIAL_ARGS:---fp16 --num-beams 3 --tokens 500 --warmup 1 --repeats 2}"
PROFILE_ARGS="${PROFILE_ARGS:-}"
AB_OLD="${AB_OLD:-.bench/decode_old.py}" AB_ARGS="${AB_ARGS:-}"
CUDNN_ARGS="${CUDNN_ARGS:---precision bfloat16:bfloat16+compile:bfloat16 --gpt-decoder graphkp --batch 1,16 --repeats 2 --rounds 2}"
TRACE_ARGS="${TRACE_ARGS:---precision bfloat16:bfloat16+compile:bfloat16 --batch 1 --gpt-decoder graphkp --repeats 3}"
TIMELINE_ARGS="${TIMELINE_ARGS:---precision bfloat16:bfloat16+compile:bfloat16 --batch 1 --gpt-decoder graphkk}"
SWEEP_ARGS="${SWEEP_ARGS:-}"
CHOICE_ARGS="${CHOICE_ARGS:-}"
COND_ARGS="${COND_ARGS:-}"
LOAD_ARGS="${LOAD_ARGS:-}"
RENDER_ARGS="${RENDER_ARGS:-}"
WORKFLOW_ARGS="${WORKFLOW_ARGS:-}"
VOCODER_ARGS="${VOCODER_ARGS:-}"
ACTSWEEP_ARGS="${ACTSWEEP_ARGS:-}"
S2MEL_ARGS="${S2MEL_ARGS:-}"
REPRO_ARGS="${REPRO_ARGS:-}"
LINEAR_ARGS="${LINEAR_ARGS:-}"
COUNTERS_ARGS="${COUNTERS_ARGS:-}"
BARRIER_ARGS="${BARRIER_ARGS:-}"
PERSISTENT_ARGS="${PERSISTENT_ARGS:-}"
CALLS_ARGS="${CALLS_ARGS:-}"
LATENT_ARGS="${LATENT_ARGS:-}"
TESTS_K="${TESTS_K:-}"  # a pytest -k expression selecting GPU tests (default: all of them)
TESTS_ARGS="${TESTS_ARGS:-}"  # more pytest arguments, e.g. "-n 2 --dist loadgroup" (README's)
T_SET="${T_SET:-150}" T_BENCH="${T_BENCH:-300}" T_OFFICIAL="${T_OFFICIAL:-200}"
T_COMPARE="${T_COMPARE:-30}" T_TESTS="${T_TESTS:-240}" T_PROFILE="${T_PROFILE:-120}"
T_AB="${T_AB:-240}" T_CUDNN="${T_CUDNN:-300}" T_TRACE="${T_TRACE:-240}" T_TIMELINE="${T_TIMELINE:-150}" T_SWEEP="${T_SWEEP:-180}"
T_VOCODER="${T_VOCODER:-120}" T_ACTSWEEP="${T_ACTSWEEP:-120}" T_S2MEL="${T_S2MEL:-150}" T_REPRO="${T_REPRO:-420}" T_CHOICE="${T_CHOICE:-120}" T_COND="${T_COND:-120}" T_LOAD="${T_LOAD:-120}" T_RENDER="${T_RENDER:-240}"
T_WORKFLOW="${T_WORKFLOW:-420}" T_LINEAR="${T_LINEAR:-180}" T_COUNTERS="${T_COUNTERS:-240}" T_BARRIER="${T_BARRIER:-120}" T_PERSISTENT="${T_PERSISTENT:-240}" T_CALLS="${T_CALLS:-180}" T_LATENT="${T_LATENT:-120}"
PY="${PY:-python3}" PY_OFFICIAL="${PY_OFFICIAL:-python3}" DEVICE="${DEVICE:-cuda}" TINY="${TINY:-0}"
JSONS="bench.json official.json compare.json tests.json latent.json calls.json linear.json counters.json barrier.json persistent.json workflow.json profile.json timeline.json trace.json sweep.json vocoder.json actsweep.json s2mel.json choice.json cond.json load.json render.json cudnn.json repro.json ab.json"
SITE_OURS=/tmp/site_ours
SITE_OFFICIAL=/tmp/site_official
SIZE_ARG=""
[ "$TINY" = 1 ] && SIZE_ARG="--tiny"
export PYTHONUNBUFFERED=1 PYTHONNOUSERSITE=1 MPLBACKEND=Agg
# PYCACHE=DIR: Python writes (and reuses) bytecode there. The device image holds none for the
# modules PyTorch imports lazily (Dynamo, Inductor), so without it every process compiles their
# sources again (4.4 s of a GPT job's profile, run AQ); an installed environment has them.
[ -n "${PYCACHE:-}" ] && export PYTHONPYCACHEPREFIX="$PYCACHE"
T0=$SECONDS
TABLE="$(mktemp)"  # section, status, exit code, seconds, timeout

want() { case " $SECTIONS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
drop() { local n; for n in "$@"; do SECTIONS=" $SECTIONS "; SECTIONS="${SECTIONS// $n / }"; done; }
is312() { [ "$("$1" -c 'import sys; print(sys.version_info[:2] == (3, 12))')" = True ]; }

# section NAME TIMEOUT COMMAND...: run with the time left, log to $OUT/NAME.log, note the result.
section() {
  local name=$1 limit=$2 start=$SECONDS rc status
  shift 2
  local left=$((BUDGET - (SECONDS - T0) - RESERVE))
  [ "$limit" -le "$left" ] || limit=$left
  if [ "$limit" -lt 10 ]; then
    echo "=== $name: SKIPPED, only $left s of the $BUDGET s budget left"
    printf '%s\tskipped\t\t0\t0\n' "$name" >> "$TABLE"
    return 1
  fi
  echo
  echo "=== $name (timeout $limit s; t=$((SECONDS - T0)) s)"
  timeout -k 10 "$limit" "$@" 2>&1 | grep --line-buffered -v -E 'it/s\]|s/it\]' | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  case $rc in 0) status=ok ;; 124 | 137) status=timeout ;; *) status=failed ;; esac
  echo "=== $name: $status (exit $rc) in $((SECONDS - start)) s (t=$((SECONDS - T0)) s)"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$((SECONDS - start))" "$limit" >> "$TABLE"
  return "$rc"
}

setup() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda, "| gpu", torch.cuda.is_available())'
  [ -d .bench ] || { echo "ERROR: .bench missing: run scripts/device/prepare.sh and carry .bench"; return 1; }
  rm -rf "$SITE_OURS" && mkdir -p "$SITE_OURS"
  if is312 "$PY"; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE_OURS" \
      .bench/whl/*.whl || return 1
    if want workflow; then
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE_OURS" \
        .bench/wf/whl/*.whl || return 1
    fi
  else
    echo ">> $PY is not CPython 3.12: .bench/whl left out, its own packages used"
  fi
  # The tests read the fixtures; the set takes its bpe.model from them (the workflow section's
  # text stage used that one).
  if want tests || want workflow; then
    if [ -d .bench/shared/fixtures ]; then
      export TTS_SHARED="$PWD/.bench/shared"
    else
      export TTS_SHARED=/tmp/tts_shared
      rm -rf "$TTS_SHARED" && mkdir -p "$TTS_SHARED" && tar -xJf .bench/shared.tar.xz -C "$TTS_SHARED" || return 1
    fi
    export TTS_PARITY_FIXTURES="$TTS_SHARED/fixtures"
  fi
  rm -rf "$SITE_OFFICIAL" && mkdir -p "$SITE_OFFICIAL"
  if want official && is312 "$PY_OFFICIAL"; then
    tar -xJf .bench/official/bundle/site-cp312.tar.xz -C "$SITE_OFFICIAL" || return 1
  elif want official; then
    echo ">> $PY_OFFICIAL is not CPython 3.12: the official bundle left out, its own packages used"
  fi
  echo ">> set up in $((SECONDS - T0)) s; sections: $SECTIONS"
}

# write_set and compare run through `bash -c` (timeout needs a command), hence exported below.
# shellcheck disable=SC2317
# The full-size random set, written to a temporary folder first so that a cut run leaves none.
write_set() {
  if [ -f "$CK/.complete" ] && [ "$(cat "$CK/.complete")" = "seed $SEED tiny $TINY $SET_FORMAT" ]; then
    echo ">> $CK is complete (seed $SEED, tiny $TINY): kept"
    cp "$CK/set.json" "$OUT/set.json" 2>/dev/null
    return 0
  fi
  rm -rf "$CK" "$CK.tmp"
  PYTHONPATH="$SITE_OURS:$PWD" "$PY" - "$CK.tmp" "$SEED" "$OUT/set.json" "$DEVICE" "$TINY" <<'PY' || return 1
import json, sys, time
from pathlib import Path
from tts.bench import write_random_set
out, seed = Path(sys.argv[1]), int(sys.argv[2])
start = time.perf_counter()
write_random_set(out, tiny=sys.argv[5] == "1", seed=seed, device=sys.argv[4])
took = time.perf_counter() - start
files = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
print(f">> wrote {len(files)} files, {sum(files.values()) / 2**30:.2f} GiB, in {took:.1f} s")
info = {"path": sys.argv[1].removesuffix(".tmp"), "seed": seed, "device": sys.argv[4],
        "tiny": sys.argv[5] == "1", "write_s": took, "files": files}
Path(sys.argv[3]).write_text(json.dumps(info, indent=1))
PY
  cp "$OUT/set.json" "$CK.tmp/set.json" && echo "seed $SEED tiny $TINY $SET_FORMAT" > "$CK.tmp/.complete" && mv "$CK.tmp" "$CK"
}

# shellcheck disable=SC2317
compare() {
  for f in bench official; do
    [ -s "$OUT/$f.json" ] || { echo "no $OUT/$f.json: run the $f section in the same call"; return 1; }
  done
  PYTHONPATH="$SITE_OURS:$PWD" "$PY" - "$OUT/bench.json" "$OUT/official.json" "$OUT/compare.json" <<'PY'
import json, sys
from pathlib import Path
from tts.bench import compare_files
Path(sys.argv[3]).write_text(json.dumps(compare_files(sys.argv[1], sys.argv[2]), indent=1))
PY
}

finish() {
  "$PY" - "$TABLE" "$OUT" "$((SECONDS - T0))" <<'PY'
import json, sys
from pathlib import Path
table, out, total = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
rows = [line.rstrip("\n").split("\t") for line in open(table) if line.strip()]
sections = {r[0]: {"status": r[1], "exit": int(r[2]) if r[2] else None, "seconds": int(r[3]),
                   "timeout_s": int(r[4])} for r in rows}
summary = {"sections": sections, "total_s": total}
if (out / "set.json").is_file():
    summary["set"] = json.loads((out / "set.json").read_text())
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print("\n== run_gpu.sh summary")
for name, s in sections.items():
    print(f"   {name:9s} {s['status']:8s} exit {s['exit']!s:5s} {s['seconds']:4d} s (limit {s['timeout_s']} s)")
print(f"   total {total} s")
PY
  # At most 8 files come back from the device: run.log, summary.json and the first five
  # section JSON files (in the order of $JSONS) stay, the rest is packed.
  local keep="run.log summary.json" f n=0
  for f in $JSONS; do
    if [ -f "$OUT/$f" ] && [ "$n" -lt 5 ]; then keep="$keep $f"; n=$((n + 1)); fi
  done
  local rest=()
  while IFS= read -r f; do
    case " $keep " in *" $f "*) ;; *) rest+=("$f") ;; esac
  done < <(cd "$OUT" && find . -mindepth 1 -maxdepth 1 -printf '%P\n' | sort)
  if [ "${#rest[@]}" -gt 0 ]; then
    tar -C "$OUT" -czf "$OUT/logs.tar.gz.part" "${rest[@]}" && rm -rf "${rest[@]/#/$OUT/}"
    mv "$OUT/logs.tar.gz.part" "$OUT/logs.tar.gz"
    echo ">> packed into logs.tar.gz: ${rest[*]}"
  fi
}

main() {
  local s
  setup || { echo "setup failed"; return 1; }
  if ! want set && { want bench || want official || want cudnn || want trace || want cond || want load \
      || want render || want workflow || want timeline; } \
      && [ ! -f "$CK/.complete" ]; then
    SECTIONS="set $SECTIONS"
  fi
  if want set && ! section set "$T_SET" bash -c write_set; then
    echo ">> no checkpoint set: bench, official and compare left out"
    drop bench official compare cudnn trace cond load render workflow
  fi
  # shellcheck disable=SC2086
  want bench && section bench "$T_BENCH" env PYTHONPATH="$SITE_OURS:$PWD" "$PY" -m tts.cli bench \
    --device "$DEVICE" $SIZE_ARG --checkpoints "$CK" $BENCH_ARGS --json "$OUT/bench.json"
  # shellcheck disable=SC2086
  want official && section official "$T_OFFICIAL" env PYTHONPATH= "$PY_OFFICIAL" \
    scripts/device/official_same_weights.py --site "$SITE_OFFICIAL" --harness .bench/official \
    --weights "$CK" --device "$DEVICE" $SIZE_ARG $OFFICIAL_ARGS --out "$OUT/official.json"
  want compare && section compare "$T_COMPARE" bash -c compare
  want tests && section tests "$T_TESTS" env PYTHONPATH="$SITE_OURS:$PWD" \
    TTS_GPU_REPORT="$OUT/tests.json" TTS_TEST_FAILURES="$OUT/failures.log" "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu.py \
    -rs ${TESTS_K:+-k "$TESTS_K"} $TESTS_ARGS
  if want profile; then
    if [ -f scripts/device/decode_profile.py ]; then
      # shellcheck disable=SC2086
      section profile "$T_PROFILE" env PYTHONPATH="$SITE_OURS:$PWD" \
        "$PY" scripts/device/decode_profile.py --device "$DEVICE" $SIZE_ARG $PROFILE_ARGS \
        --json "$OUT/profile.json"
    else
      echo "=== profile: SKIPPED, scripts/device/decode_profile.py does not exist"
      printf 'profile\tskipped\t\t0\t0\n' >> "$TABLE"
    fi
  fi
  # shellcheck disable=SC2086
  want cudnn && section cudnn "$T_CUDNN" env PYTHONPATH="$SITE_OURS:$PWD" "$PY" \
    scripts/device/cudnn_ab.py --device "$DEVICE" $SIZE_ARG --checkpoints "$CK" $CUDNN_ARGS \
    --json "$OUT/cudnn.json"
  # shellcheck disable=SC2086
  want timeline && section timeline "$T_TIMELINE" env PYTHONPATH="$SITE_OURS:$PWD" "$PY" \
    scripts/device/pass_timeline.py --device "$DEVICE" $SIZE_ARG --checkpoints "$CK" \
    $TIMELINE_ARGS --json "$OUT/timeline.json"
  # shellcheck disable=SC2086
  want trace && section trace "$T_TRACE" env PYTHONPATH="$SITE_OURS:$PWD" "$PY" \
    scripts/device/loop_trace.py --device "$DEVICE" $SIZE_ARG --checkpoints "$CK" $TRACE_ARGS \
    --json "$OUT/trace.json"
  # shellcheck disable=SC2086
  want sweep && section sweep "$T_SWEEP" env PYTHONPATH="$SITE_OURS:$PWD" "$PY" \
    scripts/device/attention_sweep.py $SWEEP_ARGS --json "$OUT/sweep.json"
  # shellcheck disable=SC2086
  want choice && section choice "$T_CHOICE" env PYTHONPATH="$SITE_OURS:$PWD" "$PY" \
    scripts/device/choice_bench.py $CHOICE_ARGS --json "$OUT/choice.json"
  # shellcheck disable=SC2086
  want cond && section cond "$T_COND" env PYTHONPATH="$SITE_OURS:$PWD" "$PY" \
    scripts/device/cond_profile.py --device "$DEVICE" --checkpoints "$CK" $COND_ARGS \
    --json "$OUT/cond.json"
  # shellcheck disable=SC2086
  want load && section load "$T_LOAD" env PYTHONPATH="$SITE_OURS:$PWD" "$PY" \
    scripts/device/load_profile.py --device "$DEVICE" --checkpoints "$CK" $LOAD_ARGS \
    --json "$OUT/load.json"
  # shellcheck disable=SC2086
  want render && section render "$T_RENDER" env PYTHONPATH="$SITE_OURS:$PWD" "$PY" \
    scripts/device/render_ab.py --device "$DEVICE" --checkpoints "$CK" $RENDER_ARGS \
    --json "$OUT/render.json"
  # shellcheck disable=SC2086
  want workflow && section workflow "$T_WORKFLOW" env PYTHONPATH="$SITE_OURS:$PWD" "$PY" \
    scripts/device/workflow_bench.py run --checkpoints "$CK" $WORKFLOW_ARGS --json "$OUT/workflow.json"
  # shellcheck disable=SC2086
  want linear && section linear "$T_LINEAR" env PYTHONPATH="$SITE_OURS:$PWD" "$PY" \
    scripts/device/linear_bench.py $LINEAR_ARGS --json "$OUT/linear.json"
  # shellcheck disable=SC2086
  want counters && section counters "$T_COUNTERS" env PYTHONPATH="$SITE_OURS:$PWD" "$PY" \
    scripts/device/kernel_counters.py $COUNTERS_ARGS --raw "$OUT/counters" --json "$OUT/counters.json"
  # shellcheck disable=SC2086
  want barrier && section barrier "$T_BARRIER" env PYTHONPATH="$SITE_OURS:$PWD" "$PY" \
    scripts/device/barrier_bench.py $BARRIER_ARGS --json "$OUT/barrier.json"
  # shellcheck disable=SC2086
  want persistent && section persistent "$T_PERSISTENT" env PYTHONPATH="$SITE_OURS:$PWD" "$PY" \
    scripts/device/persistent_bench.py $PERSISTENT_ARGS --json "$OUT/persistent.json"
  # shellcheck disable=SC2086
  want calls && section calls "$T_CALLS" env PYTHONPATH="$SITE_OURS:$PWD" "$PY" \
    scripts/device/call_profile.py $CALLS_ARGS --json "$OUT/calls.json"
  # shellcheck disable=SC2086
  want latent && section latent "$T_LATENT" env PYTHONPATH="$SITE_OURS:$PWD" "$PY" \
    scripts/device/latent_profile.py $LATENT_ARGS --json "$OUT/latent.json"
  # shellcheck disable=SC2086
  want vocoder && section vocoder "$T_VOCODER" env PYTHONPATH="$SITE_OURS:$PWD" "$PY" \
    scripts/device/vocoder_profile.py --device "$DEVICE" $SIZE_ARG $VOCODER_ARGS \
    --json "$OUT/vocoder.json"
  want actsweep && section actsweep "$T_ACTSWEEP" env PYTHONPATH="$SITE_OURS:$PWD" "$PY" \
    scripts/device/activation_sweep.py $ACTSWEEP_ARGS --json "$OUT/actsweep.json"
  # shellcheck disable=SC2086
  want s2mel && section s2mel "$T_S2MEL" env PYTHONPATH="$SITE_OURS:$PWD" "$PY" \
    scripts/device/s2mel_profile.py --device "$DEVICE" $SIZE_ARG $S2MEL_ARGS \
    --json "$OUT/s2mel.json"
  # shellcheck disable=SC2086
  want repro && section repro "$T_REPRO" env PYTHONPATH="$SITE_OURS:$PWD" "$PY" \
    scripts/device/compile_repro.py --device "$DEVICE" $SIZE_ARG $REPRO_ARGS \
    --work /tmp/compile_repro --json "$OUT/repro.json"
  if want ab; then
    # shellcheck disable=SC2086
    section ab "$T_AB" env PYTHONPATH="$SITE_OURS:$PWD" "$PY" scripts/device/capture_ab.py \
      --old "$AB_OLD" $AB_ARGS --json "$OUT/ab.json"
  fi
  finish
  s=$(cut -f2 "$TABLE" | grep -cv -E '^(ok|skipped)$')
  rm -f "$TABLE"
  return $((s > 0))
}

export -f write_set compare
export CK SEED OUT SITE_OURS PY DEVICE TINY SET_FORMAT
main 2>&1 | tee "$OUT/run.log"
exit "${PIPESTATUS[0]}"
