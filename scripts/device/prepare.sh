#!/usr/bin/env bash
# Rebuild the git-ignored .bench/ folder that the GPU device scripts read (run HERE, not on the
# device; needs PyPI only). Then, on the device: `bash scripts/device/run_gpu.sh`, carry [".bench"]
# (docs/benchmarks.md, "Reproducing the GPU runs").
#
# .bench/whl/              cp312 manylinux x86_64 wheels of the packages that `tts bench`, tts.pipeline
#                          and tests/test_gpu.py import and the device image lacks (versions as
#                          pinned in pyproject.toml; their needs as installed in .venv)
# .bench/shared.tar.xz     ../shared/fixtures + ../shared/spec (what the GPU tests read; xz saves
#                          ~7 MiB of the 64 MiB that may travel)
# .bench/official/         the official-speed harness (../shared/bench/official) built by its own
#                          prepare.sh from the official sources at OFFICIAL_COMMIT: bundle/ (its
#                          packages, xz), ref/ (the official modules it imports), official_bench.py
#
# Knobs (env): SHARED (default ../shared), MIRROR (a git mirror of index-tts/index-tts),
# OFFICIAL_COMMIT (default ee40fa7), PY (python with pip, default python3), FORCE=1 (rebuild all).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
SHARED="${SHARED:-$ROOT/../shared}"
MIRROR="${MIRROR:-/work/.mirror/index-tts+index-tts/repo}"
OFFICIAL_COMMIT="${OFFICIAL_COMMIT:-ee40fa7}"
PY="${PY:-python3}"
FORCE="${FORCE:-0}"
B="$ROOT/.bench"

# Never commit .bench: ignore it in this clone only (.git/info/exclude).
EXCLUDE="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$EXCLUDE")"
grep -qxF '/.bench/' "$EXCLUDE" 2>/dev/null || echo '/.bench/' >> "$EXCLUDE"
mkdir -p "$B"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# ---- 1. our wheels ---------------------------------------------------------------------------
# pinned() NAME: the version pyproject.toml pins, else the one installed in .venv.
pinned() {
  local v
  v="$(sed -n "s/^ *\"$1==\([^\"]*\)\".*/\1/p" pyproject.toml | head -1)"
  if [ -z "$v" ] && [ -x .venv/bin/python ]; then
    v="$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))")"
  fi
  [ -n "$v" ] || { echo "no version for $1 (not pinned, not in .venv)" >&2; return 1; }
  echo "$v"
}
# soundfile (audio decoding; its wheel bundles libsndfile) needs cffi (+ pycparser, cffi's
# dependency); soxr resamples. Everything else that `tts bench` and the GPU tests import is in
# the device image (torch, torchaudio, transformers, numpy, pyyaml, safetensors, sentencepiece,
# triton, pytest); the text normaliser (WeTextProcessing + pynini, ~420 MB) is too big to travel,
# so its three parity cases are skipped there. pytest-xdist (+ execnet) runs the GPU tests as
# README's test command does (TESTS_ARGS="-n 2 --dist loadgroup" in run_gpu.sh).
WHEELS=(soundfile cffi pycparser soxr pytest-xdist execnet)
mkdir -p "$B/whl"
specs=()
for name in "${WHEELS[@]}"; do specs+=("$name==$(pinned "$name")"); done
# Keep one version of each: drop wheels that are not in the list any more.
for f in "$B"/whl/*.whl; do
  [ -e "$f" ] || continue
  base="$(basename "$f")"; keep=0
  for s in "${specs[@]}"; do
    n="${s%%==*}"  # a wheel's file name spells the project's dashes as underscores
    case "$base" in "${n//-/_}-${s##*==}-"*) keep=1 ;; esac
  done
  [ "$keep" = 1 ] || rm -f "$f"
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$B/whl" "${specs[@]}"
echo ">> .bench/whl: ${specs[*]}"

# ---- 2. fixtures and spec for the GPU tests --------------------------------------------------
for d in fixtures spec; do
  [ -d "$SHARED/$d" ] || { echo "missing $SHARED/$d (set SHARED=...)" >&2; exit 1; }
done
stamp="$(cd "$SHARED" && find fixtures spec -type f -printf '%p %s %T@\n' | sort | sha256sum | cut -c1-16)"
if [ "$FORCE" = 1 ] || [ ! -f "$B/shared.tar.xz" ] || [ "$(cat "$B/shared.stamp" 2>/dev/null)" != "$stamp" ]; then
  echo ">> packing $SHARED/{fixtures,spec} -> .bench/shared.tar.xz (about a minute)"
  tar -C "$SHARED" --sort=name --owner=0 --group=0 --numeric-owner -cf - fixtures spec \
    | xz -6 -T2 > "$TMP/shared.tar.xz"
  mv "$TMP/shared.tar.xz" "$B/shared.tar.xz"
  echo "$stamp" > "$B/shared.stamp"
fi

# ---- 3. the official harness -----------------------------------------------------------------
H="$SHARED/bench/official"
O="$B/official"
commit="$(git -C "$MIRROR" rev-parse "$OFFICIAL_COMMIT^{commit}")"
if [ "$FORCE" = 1 ] || [ ! -f "$O/bundle/site-cp312.tar.xz" ] || [ ! -f "$O/official_bench.py" ] \
   || [ "$(cat "$O/ref/SOURCE" 2>/dev/null)" != "index-tts $commit" ] \
   || ! cmp -s "$H/official_bench.py" "$O/official_bench.py"; then
  echo ">> building the official harness from index-tts $commit (a few minutes)"
  mkdir -p "$TMP/src" "$TMP/harness"
  # Export indextts/ + LICENSE blob by blob: a partial mirror may lack large binaries (none of
  # which the harness imports), and `git archive` stops at the first one missing.
  git -C "$MIRROR" ls-tree -r "$commit" -- indextts LICENSE | while read -r _ kind hash path; do
    [ "$kind" = blob ] || continue
    mkdir -p "$TMP/src/$(dirname "$path")"
    git -C "$MIRROR" cat-file blob "$hash" > "$TMP/src/$path" 2>/dev/null \
      || { rm -f "$TMP/src/$path"; echo "   (not in the mirror, not needed: $path)"; }
  done
  cp "$H/official_bench.py" "$H/prepare.sh" "$TMP/harness/"
  PATH="$(dirname "$(command -v "$PY")"):$PATH" \
    bash "$TMP/harness/prepare.sh" "$TMP/src" "$SHARED/spec/config.official.yaml"
  echo "index-tts $commit" > "$TMP/harness/ref/SOURCE"  # an archive has no git metadata
  rm -rf "$O"; mkdir -p "$O"
  cp -r "$TMP/harness/bundle" "$TMP/harness/ref" "$TMP/harness/official_bench.py" "$O/"
fi

# ---- sizes -----------------------------------------------------------------------------------
echo
du -sh "$B/whl" "$B/shared.tar.xz" "$O/bundle" "$O/ref" "$O/official_bench.py"
tracked="$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)"
bench="$(du -sb "$B" | cut -f1)"
echo ">> .bench: $((bench / 1048576)) MiB; tracked files: $((tracked / 1048576)) MiB; together" \
     "$(((bench + tracked) / 1048576)) MiB of the 64 MiB that may travel (untracked files travel too)"
