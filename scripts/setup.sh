#!/usr/bin/env bash
# Make .venv with everything Sana Studio needs; `--test` adds the test dependencies.
# Works on a fresh Linux machine with Python 3.11: the Debian libraries Qt needs are installed
# when missing and this script may install them (root, or sudo without a password).
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
[[ "${1:-}" == "--test" ]] && with_tests=1

python=${PYTHON:-}
if [[ -z "$python" ]]; then
  for candidate in python3.11 python3.12 python3.10 python3; do
    if command -v "$candidate" >/dev/null; then python=$candidate; break; fi
  done
fi
[[ -n "$python" ]] || { echo "setup: no python3 found; install Python 3.10 or newer" >&2; exit 1; }

qt_libs=(libegl1 libgl1 libxkbcommon0 libfontconfig1 libdbus-1-3 libglib2.0-0)
if command -v dpkg-query >/dev/null; then
  missing=()
  for lib in "${qt_libs[@]}"; do
    dpkg-query -W -f='${Status}' "$lib" 2>/dev/null | grep -q "ok installed" || missing+=("$lib")
  done
  if ((${#missing[@]})); then
    sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo -n"
    if $sudo true 2>/dev/null; then
      echo "setup: installing the libraries Qt needs: ${missing[*]}" >&2
      $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      echo "setup: Qt needs ${missing[*]}; install them with: sudo apt-get install ${missing[*]}" >&2
    fi
  fi
fi

[[ -x .venv/bin/python ]] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: an unpinned torch would pull a newer multi-GB build.
.venv/bin/python -m pip install -q "torch==2.13.0"
if ((with_tests)); then
  .venv/bin/python -m pip install -q -e ".[test]"
else
  .venv/bin/python -m pip install -q -e .
fi
