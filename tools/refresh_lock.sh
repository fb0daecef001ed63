#!/usr/bin/env bash
# Refresh the lock (lock/): install the newest versions pyproject.toml and the COMET requirements allow into
# fresh environments, run the whole test suite there with COMET required, and rewrite lock/ only if it passed.
#   tools/refresh_lock.sh                        # then review `git diff lock/` and commit it
#   tools/refresh_lock.sh tests/test_output.py   # arguments go to pytest: a trial run, lock/ is not rewritten
# The environments (.venv-lock/, .venv-comet-lock/) are made from scratch each time and left for inspection;
# .venv/ and .venv-comet/ are not touched. About 10 minutes on 2 cores (setup, COMET environment, suite).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-lock
COMET=$PWD/.venv-comet-lock
rm -rf "$VENV" "$COMET"
IWSLT_MC_VENV=$VENV IWSLT_MC_UNLOCKED=1 ./setup.sh
export IWSLT_MC_UNLOCKED=1 IWSLT_MC_COMET_ENV=$COMET IWSLT_MC_REQUIRE_COMET=1
"$VENV/bin/iwslt-mc" setup-comet
log=$VENV/suite.log
if ! "$VENV/bin/python" -m pytest -q "$@" 2>&1 | tee "$log"; then
  echo "refresh_lock: the suite failed with the newest versions ($log): lock/ left as it was" >&2
  exit 1
fi
if [ $# -gt 0 ]; then
  echo "refresh_lock: a partial run (pytest $*) passed: lock/ not rewritten (run without arguments to rewrite it)"
  exit 0
fi
summary=$(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed).* =+$' "$log" | tail -1 | tr -d '=' | sed 's/^ *//; s/ *$//')
"$VENV/bin/python" tools/lock.py write --venv "$VENV" --comet-venv "$COMET" \
  --note "${summary:-passed}, $(git rev-parse --short HEAD 2>/dev/null || echo 'no git')"
git --no-pager diff --stat -- lock/ 2>/dev/null || true
