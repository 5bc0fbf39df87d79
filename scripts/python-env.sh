#!/usr/bin/env bash
# Creates (once) the Python environment the tests use: .venv with pytest.
# The worker and the SDK themselves need nothing beyond the standard library.
# Prints the path of the environment's python.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import pytest' 2>/dev/null; then
  python3 -m venv "$venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'pytest>=7' >&2
fi
echo "$PWD/$venv/bin/python"
