#!/usr/bin/env bash
# `make other-pythons`: the suite on every other CPython this machine has (VERSION...).
#
# Each version's venv is made and installed first, one after the other (pip). Then the
# versions' suites run side by side, each in its own venv and its own log: they share
# nothing but the machine (every test keeps to its own segments, by name prefix, private
# shm directory or the fds it holds; the CPython conformance runs each have their own
# session). Side by side, 3.12 and 3.13 take ~13 minutes of `make test` instead of ~21.
# A version the machine lacks is skipped with a note. Every log is printed once all are
# done; the exit code is non-zero if any version failed.
set -u
cd "$(dirname "$0")/.."
MAKE=${MAKE:-make}
logs=ci-logs
mkdir -p "$logs"
versions=()
for v in "$@"; do
  py=$(scripts/find-python.sh "$v")
  if [ -z "$py" ]; then
    echo "note: no Python $v on this machine: the suite does not run on it"
    continue
  fi
  "$MAKE" --no-print-directory venv-on PY_VERSION="$v" PY_EXE="$py" || exit 1
  versions+=("$v")
done
[ ${#versions[@]} -eq 0 ] && exit 0

declare -A pids
for v in "${versions[@]}"; do
  echo "== the suite on Python $v: started $(date -u +%T), log in $logs/python-$v.log"
  "$MAKE" --no-print-directory pytest-on PY_VERSION="$v" > "$logs/python-$v.log" 2>&1 &
  pids[$v]=$!
done
# Ctrl-C or a CI timeout stops the suites too (each is its own make; kill only those, by pid).
trap 'for p in "${pids[@]}"; do kill -- "$p" 2>/dev/null; done' INT TERM

failed=()
for v in "${versions[@]}"; do
  wait "${pids[$v]}"
  rc=$?
  [ "$rc" -ne 0 ] && failed+=("$v (exit $rc)")
  echo "== Python $v: finished $(date -u +%T), exit $rc"
done
for v in "${versions[@]}"; do
  echo
  echo "==================== the suite on Python $v ($logs/python-$v.log) ===================="
  cat "$logs/python-$v.log"
done
if [ ${#failed[@]} -ne 0 ]; then
  echo "the suite failed on Python: ${failed[*]}"
  exit 1
fi
