#!/usr/bin/env bash
# Prepare the git-ignored .bench/wf/ folder for timing the Snakemake workflow on the GPU device
# (run HERE, after scripts/device/prepare.sh; needs PyPI and this machine's .venv). Then, on the
# device, from the repo root, carry [".bench/whl", ".bench/shared.tar.xz", ".bench/wf"]:
#   SECTIONS="set workflow" bash scripts/device/run_gpu.sh
# (docs/benchmarks.md, "The workflow on the GPU").
#
# .bench/wf/whl/            Snakemake and the packages it needs that the device image lacks, as
#                           cp312 wheels at the versions installed in .venv (PuLP, 16 MB, is left
#                           out: only Snakemake's ILP scheduler imports it; the run uses
#                           --scheduler greedy)
# .bench/wf/results-<name>/ the text stage of config/gpu_bench.yaml for each variant, run here:
#                           the device has no text normaliser (WeTextProcessing + pynini, ~420 MB),
#                           the workflow's text front-end is a CPU job of its own, and its output
#                           depends on the checkpoint set's bpe.model alone. The device's
#                           full-size set gets the same bpe.model (the parity fixtures' one);
#                           workflow_bench.py checks that against .bench/wf/bpe.sha256.
#
# Knobs (env): SHARED (default ../shared), PY (default .venv/bin/python).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
SHARED="${SHARED:-$ROOT/../shared}"
PY="${PY:-$ROOT/.venv/bin/python}"
W="$ROOT/.bench/wf"
EXCLUDE="$(git rev-parse --git-path info/exclude)"
grep -qxF '/.bench/' "$EXCLUDE" 2>/dev/null || echo '/.bench/' >> "$EXCLUDE"
mkdir -p "$W/whl"

# ---- 1. Snakemake's wheels -------------------------------------------------------------------
# Already in the device image (docs of the device tool): left out.
ON_DEVICE="attrs certifi charset-normalizer idna jinja2 markupsafe packaging psutil pyyaml requests
tabulate typing-extensions urllib3 wrapt pulp"
mapfile -t SPECS < <("$PY" - "$ON_DEVICE" <<'PY'
import importlib.metadata as md
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

skip = set(sys.argv[1].split())
seen, todo = {}, ["snakemake"]
while todo:
    name = canonicalize_name(todo.pop())
    if name in seen:
        continue
    dist = md.distribution(name)
    seen[name] = dist.version
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            todo.append(req.name)
for name, version in sorted(seen.items()):
    if name not in skip:
        print(f"{name}=={version}")
PY
)
rm -f "$W"/whl/*.whl
for spec in "${SPECS[@]}"; do
  # A cp312 wheel where one exists (compiled packages); else a wheel built here (pure Python,
  # e.g. connection-pool, published as a source archive only).
  if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d "$W/whl" "$spec" 2>/dev/null; then
    "$PY" -m pip wheel -q --no-deps -w "$W/whl" "$spec"
  fi
done
echo ">> .bench/wf/whl: ${#SPECS[@]} wheels, $(du -sh "$W/whl" | cut -f1)"

# ---- 2. the text stage, here -----------------------------------------------------------------
# A tiny random set with the fixtures' bpe.model (tts.bench._write_bpe takes it from
# TTS_PARITY_FIXTURES): the check rule needs a complete set, the text stage only its bpe.model.
TTS_PARITY_FIXTURES="$SHARED/fixtures" "$PY" scripts/device/workflow_bench.py prepare --out "$W"
du -sh "$W"
