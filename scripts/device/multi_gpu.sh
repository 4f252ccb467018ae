#!/usr/bin/env bash
# Needs .bench/whl (the wheels the device lacks, see docs/benchmarks.md); run through the device
# tool with carry [".bench"] on a 2-GPU machine: bash scripts/device/multi_gpu.sh
# Issue 10, reduced measurement: the GPU stages (tts bench, one row per pass, bf16, graph
# decoder) on 1 GPU vs 2 GPUs at once, each job pinned to its own GPU by tts.gpu_slots.
set -uo pipefail
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONNOUSERSITE=1 MPLBACKEND=Agg
T0=$SECONDS; t() { echo "[t=$((SECONDS - T0)) s] $*"; }
nvidia-smi -L
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site_ours .bench/whl/*.whl || exit 1
export PYTHONPATH="/tmp/site_ours:$PWD"
CK=/tmp/ck
t "write random full-size set"
python3 -c "from pathlib import Path; from tts.bench import write_random_set; write_random_set(Path('$CK'), tiny=False, seed=1234, device='cuda')" || exit 1
ARGS="--device cuda --checkpoints $CK --precision bfloat16:bfloat16:bfloat16@1#graph --warmup 1 --repeats ${REPEATS:-6}"
PIN='import sys; from tts import gpu_slots; s = gpu_slots.claim_gpu({"device": "cuda", "gpus": None}); print("slot", s, flush=True); from tts.cli import main; sys.exit(main(sys.argv[1:]))'
export TTS_GPU_LOCK_DIR=/tmp/locks TTS_GPU_WAIT=0
t "one GPU"
timeout 200 python3 -c "$PIN" bench $ARGS --json "$OUT/one.json" > "$OUT/one.log" 2>&1; echo "one: exit $?"
t "two GPUs at once"
for i in 0 1; do timeout 220 python3 -c "$PIN" bench $ARGS --json "$OUT/two_$i.json" > "$OUT/two_$i.log" 2>&1 & done
wait
t "done"
grep -h "^slot" "$OUT"/*.log
python3 - "$OUT" <<'PY'
import json, statistics, sys
out = sys.argv[1]
def rate(name):
    d = json.load(open(f"{out}/{name}.json"))
    r = d["results"][0]
    timed = [x for x in r["runs"] if not x.get("warmup")]
    audio = r["summary"]["audio_s_per_row"]
    med = statistics.median(x["wall_s"] for x in timed)
    return audio / med, med, len(timed)
one = rate("one"); a = rate("two_0"); b = rate("two_1")
res = {"one_gpu_x_realtime": one[0], "one_gpu_median_pass_s": one[1],
       "two_gpu_x_realtime": a[0] + b[0], "two_gpu_median_pass_s": [a[1], b[1]],
       "ratio": (a[0] + b[0]) / one[0], "timed_passes": [one[2], a[2], b[2]]}
print(json.dumps(res, indent=1)); json.dump(res, open(f"{out}/multi_gpu.json", "w"), indent=1)
PY
