#!/usr/bin/env bash
# Runs a Celery worker for tasks.py with 4 prefork processes (CELERY_CONCURRENCY), in the
# foreground, as this very process (exec: its PID is the worker's parent, whose children are the
# prefork processes). Needs setup.sh run first, and CELERY_BROKER_URL and CELERY_RESULT_BACKEND;
# extra arguments go to `celery worker` (e.g. --hostname bench@%h).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ -x "$here/.venv/bin/celery" ] || { echo "celery peer: no venv yet: run $here/setup.sh first" >&2; exit 1; }
cd "$here"
exec "$here/.venv/bin/celery" -A tasks worker --pool prefork --concurrency "${CELERY_CONCURRENCY:-4}" \
  --loglevel "${CELERY_LOGLEVEL:-warning}" "$@"
