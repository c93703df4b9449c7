"""Celery's side of `dispatcher bench`: submits COUNT run_script tasks, CONCURRENCY at a time.

Each of CONCURRENCY threads submits a task and waits for its result (`result.get()`), then
submits the next, until COUNT have run. A task counts as an error unless its script exited 0.
Prints one JSON line: the fields of `dispatcher bench --json` (count, concurrency, p50_ms,
p90_ms, p99_ms by nearest rank, throughput_per_s of the tasks that succeeded, errors), then
cpu_s (this process's user and system CPU time over the timed part) and latencies_ms (each
successful task's, for the histogram).

    CELERY_BROKER_URL=amqp://... CELERY_RESULT_BACKEND=redis://... \\
      .venv/bin/python client.py --count 2000 --concurrency 16
"""

import argparse
import json
import math
import os
import sys
import threading
import time

from tasks import run_script


def percentile(sorted_ms, q):
    """The q-th percentile (0 to 100) of sorted samples by nearest rank, as `dispatcher bench`."""
    if not sorted_ms:
        return 0.0
    rank = math.ceil(q / 100 * len(sorted_ms))
    return sorted_ms[min(max(rank, 1), len(sorted_ms)) - 1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="tasks to run")
    parser.add_argument("--concurrency", type=int, default=16, help="tasks in flight at once")
    parser.add_argument("--script", default="echo hello", help="what each task runs with sh -c")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for one result")
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be at least 1")
    concurrency = min(max(args.concurrency, 1), args.count)

    # One task first, untimed: connects to the broker and the backend, as `dispatcher bench` asks
    # the agent for its capabilities before it starts the clock.
    run_script.delay(args.script).get(timeout=args.timeout)

    lock = threading.Lock()
    latencies, errors = [], []
    submitted = 0

    def submit_until_done():
        nonlocal submitted
        while True:
            with lock:
                if submitted >= args.count:
                    return
                submitted += 1
            started = time.perf_counter()
            try:
                result = run_script.delay(args.script).get(timeout=args.timeout)
                failure = None if result["exit_code"] == 0 else f"exit code {result['exit_code']}"
            except Exception as error:  # noqa: BLE001 - any failure is one error, counted, not fatal
                failure = f"{type(error).__name__}: {error}"
            elapsed_ms = (time.perf_counter() - started) * 1000
            with lock:
                if failure is None:
                    latencies.append(elapsed_ms)
                else:
                    errors.append(failure)

    cpu_before, started = os.times(), time.perf_counter()
    threads = [threading.Thread(target=submit_until_done) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed, cpu_after = time.perf_counter() - started, os.times()

    latencies.sort()
    report = {
        "count": args.count,
        "concurrency": concurrency,
        "p50_ms": round(percentile(latencies, 50), 3),
        "p90_ms": round(percentile(latencies, 90), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
        "throughput_per_s": round(len(latencies) / elapsed, 1),
        "errors": len(errors),
        "cpu_s": round((cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system), 3),
        "latencies_ms": [round(ms, 3) for ms in latencies],
    }
    print(json.dumps(report))
    if errors:
        print(f"celery peer: first error: {errors[0]}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
