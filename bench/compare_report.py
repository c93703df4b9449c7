"""The figures of bench/compare-celery.sh: one record per run, then the tables. Standard library only.

    compare_report.py record ROUND SYSTEM COUNT BEFORE AFTER STATS_BEFORE STATS_AFTER LUA CLIENT_CPU LOAD RUNS LATENCIES
        reads the bench report (one JSON line) on stdin; appends the run to RUNS (JSON lines) and its
        latencies to LATENCIES (JSON lines), and prints the run as one line
    compare_report.py tables RUNS
        prints a Markdown table per concurrency: Cuttle, Celery and Cuttle/Celery (medians of the runs)

BEFORE and AFTER are the CPU clock ticks so far of "executor shells rabbitmq redis" (see
compare-celery.sh); STATS_* are files of `redis-cli INFO commandstats`; LUA is the number of
commands Redis ran inside Lua scripts during the run (from MONITOR), or "-" when not counted;
CLIENT_CPU is the seconds of CPU the dispatcher used, or "-" for the report's own cpu_s (the
Celery client's).
"""

import json
import os
import statistics
import sys

SYSTEMS = ("cuttle", "celery")
NAMES = {"cuttle": "Cuttle", "celery": "Celery"}
# Commands the benchmark itself sends to Redis (to read its counters), not the systems measured.
OWN_COMMANDS = {"info", "monitor"}
SCRIPT_CALLS = {"eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"}
CPU_PARTS = ("executor", "shells", "rabbitmq", "redis", "client")

# (key in a run, row title, digits); per-script CPU in ms and Redis commands per script.
ROWS = [
    ("p50_ms", "p50 ms", 2),
    ("p90_ms", "p90 ms", 2),
    ("p99_ms", "p99 ms", 2),
    ("throughput_per_s", "throughput, scripts/s", 1),
    ("cpu.executor", "CPU ms/script: agent, or worker (parent and prefork processes)", 3),
    ("cpu.shells", "CPU ms/script: the scripts' sh (reaped children)", 3),
    ("cpu.rabbitmq", "CPU ms/script: RabbitMQ (beam.smp)", 3),
    ("cpu.redis", "CPU ms/script: Redis", 3),
    ("cpu.client", "CPU ms/script: dispatcher, or Celery client", 3),
    ("cpu.total", "CPU ms/script: all of the above", 3),
    ("redis.commands", "Redis commands/script: all (INFO commandstats)", 2),
    ("redis.script_calls", "Redis commands/script: script calls (EVAL, EVALSHA, FCALL)", 2),
    ("redis.inside_lua", "Redis commands/script: run inside Lua scripts (MONITOR)", 2),
    ("redis.from_clients", "Redis commands/script: sent by clients (all less inside Lua)", 2),
]


def commandstats(path):
    """Calls per command from `INFO commandstats` (lines `cmdstat_get:calls=3,usec=...`)."""
    calls = {}
    with open(path, encoding="utf-8") as stats:
        for line in stats:
            name, _, fields = line.strip().partition(":")
            if name.startswith("cmdstat_"):
                values = dict(field.split("=", 1) for field in fields.split(","))
                calls[name.removeprefix("cmdstat_")] = int(values["calls"])
    return calls


def record(args):
    (round_, system, count, before, after, stats_before, stats_after, lua, client_cpu, load, runs, latencies) = args
    report = json.loads(sys.stdin.read())
    count = int(count)
    per_script_ms = 1000 / count / os.sysconf("SC_CLK_TCK")
    ticks = [int(a) - int(b) for a, b in zip(after.split(), before.split())]
    cpu = {part: round(t * per_script_ms, 3) for part, t in zip(CPU_PARTS, ticks)}
    client_cpu = report.pop("cpu_s") if client_cpu == "-" else float(client_cpu)
    cpu["client"] = round(client_cpu * 1000 / count, 3)
    cpu["total"] = round(sum(cpu.values()), 3)

    old, new = commandstats(stats_before), commandstats(stats_after)
    delta = {name: calls - old.get(name, 0) for name, calls in new.items() if name not in OWN_COMMANDS}
    redis = {
        "commands": round(sum(delta.values()) / count, 2),
        "script_calls": round(sum(calls for name, calls in delta.items() if name in SCRIPT_CALLS) / count, 2),
    }
    if lua != "-":
        redis["inside_lua"] = round(int(lua) / count, 2)
        redis["from_clients"] = round(redis["commands"] - redis["inside_lua"], 2)

    samples = report.pop("latencies_ms", [])
    run = {"round": int(round_), "system": system, **report, "cpu": cpu, "redis": redis, "load": float(load)}
    with open(runs, "a", encoding="utf-8") as out:
        out.write(json.dumps(run) + "\n")
    with open(latencies, "a", encoding="utf-8") as out:
        keep = ("system", "round", "concurrency", "p50_ms", "p90_ms", "p99_ms")
        out.write(json.dumps({**{k: run[k] for k in keep}, "latencies_ms": samples}) + "\n")
    print(json.dumps(run))


def value(run, key):
    """A run's figure by dotted key, or None when the run has none (e.g. Lua not counted)."""
    for part in key.split("."):
        run = run.get(part) if isinstance(run, dict) else None
    return run


def tables(args):
    (path,) = args
    with open(path, encoding="utf-8") as lines:
        runs = [json.loads(line) for line in lines if line.strip()]
    for concurrency in sorted({run["concurrency"] for run in runs}):
        by_system = {s: [r for r in runs if r["system"] == s and r["concurrency"] == concurrency] for s in SYSTEMS}
        counts = sorted({r["count"] for s in SYSTEMS for r in by_system[s]})
        rounds = max(len(by_system[s]) for s in SYSTEMS)
        spread = " (lowest–highest)" if rounds > 1 else ""
        print(
            f"\n#### {concurrency} in flight: {'/'.join(map(str, counts))} scripts a run, median of {rounds}{spread}\n"
        )
        print("| measure | Cuttle | Celery | Cuttle/Celery |")
        print("|---|---|---|---|")
        for key, title, digits in ROWS:
            medians, cells = {}, []
            for system in SYSTEMS:
                values = [v for v in (value(r, key) for r in by_system[system]) if v is not None]
                if not values:
                    cells.append("not counted")
                    continue
                medians[system] = statistics.median(values)
                spread = f" ({min(values):.{digits}f}–{max(values):.{digits}f})" if len(values) > 1 else ""
                cells.append(f"{medians[system]:.{digits}f}{spread}")
            ratio = "–"
            if len(medians) == 2 and medians["celery"]:
                ratio = f"{medians['cuttle'] / medians['celery']:.2f}"
            print(f"| {title} | {cells[0]} | {cells[1]} | {ratio} |")
        errors = {s: sum(r["errors"] for r in by_system[s]) for s in SYSTEMS}
        print(f"| errors (all runs) | {errors['cuttle']} | {errors['celery']} | |")
    goals = [
        (1, "p50_ms", "p50 at 1 in flight", "at most 0.70"),
        (16, "throughput_per_s", "throughput at 16 in flight", "at least 2.00"),
    ]
    print()
    for concurrency, key, what, goal in goals:
        medians = {s: [r[key] for r in runs if r["system"] == s and r["concurrency"] == concurrency] for s in SYSTEMS}
        if all(medians.values()) and statistics.median(medians["celery"]):
            ratio = statistics.median(medians["cuttle"]) / statistics.median(medians["celery"])
            print(f"Cuttle/Celery, {what}: {ratio:.2f} (the goal: {goal})")
    loads = [run["load"] for run in runs]
    print(
        f"\nload average (1 min) at the end of each run: {min(loads):.2f}–{max(loads):.2f}, "
        f"median {statistics.median(loads):.2f}"
    )


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("record", "tables"):
        sys.exit(__doc__)
    {"record": record, "tables": tables}[sys.argv[1]](sys.argv[2:])
