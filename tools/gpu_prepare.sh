#!/usr/bin/env bash
# Prepare what tools/gpu_check.py needs on the lent GPU machine (Python 3.12, no package index):
#   tools/gpu_prepare.sh            wheels for CPython 3.12 manylinux x86-64 of tools/gpu_wheels.txt -> .whl/
#                                   and the size check: wheels + tracked tree under 60 MiB (the carry limit is 64)
#   tools/gpu_prepare.sh --cpu      the same versions for this machine's Python (cp311 here) -> .whl-cpu/,
#                                   for the CPU rehearsal (tools/gpu_rehearse.sh)
# Both folders are ignored by git (.gitignore). --no-deps: gpu_wheels.txt names every dependency missing there.
set -euo pipefail
cd "$(dirname "$0")/.."
LIST=tools/gpu_wheels.txt
mapfile -t PKGS < <(grep -v '^\s*#' "$LIST" | grep -v '^\s*$')
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
if [ "${1:-}" = "--cpu" ]; then
  DEST=.whl-cpu
  PYV=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
else
  DEST=.whl
  PYV=3.12
fi
rm -rf "$DEST.tmp" && mkdir -p "$DEST.tmp"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp "${PLAT[@]}" \
  -d "$DEST.tmp" "${PKGS[@]}"
n=$(ls "$DEST.tmp"/*.whl | wc -l)
if [ "$n" != "${#PKGS[@]}" ]; then
  echo "gpu_prepare: $n wheels for ${#PKGS[@]} packages in $LIST" >&2; exit 1
fi
rm -rf "$DEST" && mv "$DEST.tmp" "$DEST"
wheels=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z | xargs -0 stat -c %s | awk '{s+=$1} END {print s}')
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r stat -c %s | awk '{s+=$1} END {print s+0}')
total=$((wheels + tree + untracked))
printf 'gpu_prepare: %s: %d wheels for Python %s, %.1f MiB; tracked tree %.1f MiB; untracked %.1f MiB; total %.1f MiB (limit 60)\n' \
  "$DEST" "$n" "$PYV" "$(echo "$wheels/1048576" | bc -l)" "$(echo "$tree/1048576" | bc -l)" \
  "$(echo "$untracked/1048576" | bc -l)" "$(echo "$total/1048576" | bc -l)"
if [ "$DEST" = .whl ] && [ "$total" -ge $((60 * 1048576)) ]; then
  echo "gpu_prepare: $DEST and the tree are over 60 MiB together" >&2; exit 1
fi
