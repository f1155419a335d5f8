#!/usr/bin/env bash
# Run every reproducer against this tree, one at a time, and print each one's verdict line.
#   tools/security-repros/run-all.sh [script.py ...]     (as root: the cross-user ones drop to uid 65534)
# Exit status 1 if any says "vulnerable" or ends without a verdict.
set -u
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
py=${PYTHON:-$top/.venv/bin/python}
cd "$top" || exit 2
scripts=("$@")
[ ${#scripts[@]} -gt 0 ] || scripts=($(cd "$here" && ls [nrf]*.py))
bad=0
for s in "${scripts[@]}"; do
  s=$(basename "$s")
  start=$(date +%s)
  out=$(PYTHONPATH="$top/src:$here" timeout -k 10 ${REPRO_TIMEOUT:-300} "$py" "$here/$s" 2>&1)
  verdict=$(printf '%s\n' "$out" | grep 'VERDICT:' | tail -n 1)
  [ -n "$verdict" ] || verdict="NO VERDICT (exit $?): $(printf '%s\n' "$out" | tail -n 1)"
  printf '%-32s %4ss  %s\n' "$s" "$(( $(date +%s) - start ))" "$verdict"
  case "$verdict" in *"VERDICT: safe"*) ;; *) bad=1 ;; esac
done
exit $bad
