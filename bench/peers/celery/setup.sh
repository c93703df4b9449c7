#!/usr/bin/env bash
# Makes bench/peers/celery/.venv: a Python virtual environment with Celery 5, redis-py and what
# they need, exactly as pinned in requirements.txt beside this file, from PyPI. Idempotent: a
# venv already holding these pins is left as it is; one made from other pins is made again.
# PYTHON picks the interpreter (python3; Celery 5.7 needs Python 3.10 or newer).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=$here/.venv
python=${PYTHON:-python3}
say() { printf 'celery peer: %s\n' "$*" >&2; }

command -v "$python" >/dev/null || { say "no $python on the PATH: install Python 3.10 or newer, or set PYTHON"; exit 1; }
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  say "$("$python" --version 2>&1) is too old for Celery 5.7: install Python 3.10 or newer, or set PYTHON"
  exit 1
fi

pins=$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)
if [ -x "$venv/bin/celery" ] && [ "$(cat "$venv/.pins" 2>/dev/null)" = "$pins" ]; then
  say "$venv is up to date with requirements.txt"
  exit 0
fi

if [ -d "$venv" ]; then
  say "requirements.txt changed since $venv was made (or it is incomplete): making it again"
  rm -rf "$venv"
fi
say "making $venv with $("$python" --version 2>&1)"
"$python" -m venv "$venv"
say "installing the pinned Celery, redis-py and their dependencies from PyPI"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input --require-virtualenv \
  -r "$here/requirements.txt"
# Written last: a venv whose install failed half way is made again next time.
echo "$pins" >"$venv/.pins"
say "ready: $("$venv/bin/celery" --version) in $venv"
