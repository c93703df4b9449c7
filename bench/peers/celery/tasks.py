"""The Celery application Cuttle is measured against (bench/compare-celery.sh).

One task, run_script, does what a Cuttle agent does with `dispatcher bench`'s script: runs
`sh -c CMD` as a child process and returns its exit code and output. The broker comes from
CELERY_BROKER_URL (RabbitMQ), the result backend from CELERY_RESULT_BACKEND (Redis); tasks are
acknowledged late (after they ran), so a worker lost mid-task leaves its task to another, as a
Cuttle agent's unacknowledged start does.
"""

import os
import subprocess

from celery import Celery
from celery.signals import worker_ready


def _setting(name):
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"celery peer: {name} is not set; point it at the broker or backend to use")
    return value


app = Celery("cuttle_peer", broker=_setting("CELERY_BROKER_URL"), backend=_setting("CELERY_RESULT_BACKEND"))
app.conf.update(
    task_acks_late=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
)


@app.task(name="cuttle_peer.run_script")
def run_script(cmd):
    """Runs `sh -c cmd` and returns its exit code and output (text)."""
    done = subprocess.run(["sh", "-c", cmd], stdin=subprocess.DEVNULL, capture_output=True, check=False)
    return {
        "exit_code": done.returncode,
        "stdout": done.stdout.decode(errors="replace"),
        "stderr": done.stderr.decode(errors="replace"),
    }


@worker_ready.connect
def _say_ready(**_):
    # The benchmark waits for this file rather than for a log line: the worker logs at its default
    # level (warnings), which says nothing when it is ready.
    path = os.environ.get("CELERY_READY_FILE")
    if path:
        with open(path, "w", encoding="utf-8") as ready:
            ready.write(f"{os.getpid()}\n")
