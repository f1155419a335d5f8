#!/usr/bin/env bash
# Print the path of a working CPython VERSION (e.g. 3.12) on this machine, or nothing.
# Looks in pyenv's versions first (its shims answer "command not found" for versions
# that are installed but not selected), then on PATH. Used by `make test` to run the
# suite on every Python the machine has.
set -u
v=$1
for p in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".*/bin/python"$v" /usr/bin/python"$v" /usr/local/bin/python"$v" "$(command -v python"$v" 2>/dev/null)"; do
  [ -n "$p" ] && [ -x "$p" ] || continue
  if "$p" -c 'import sys, venv; sys.exit(sys.version_info[:2] != tuple(map(int, sys.argv[1].split("."))))' "$v" >/dev/null 2>&1; then
    echo "$p"
    exit 0
  fi
done
exit 0
