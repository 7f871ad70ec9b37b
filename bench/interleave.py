#!/usr/bin/env python3
"""Times commands in interleaved rounds: each round runs every command once,
in an order shuffled per round, so a machine whose speed drifts (a shared
VM) slows them all alike and their ratios stay fair; hyperfine runs one
command's runs, then the next's. (Shuffled, because what a command leaves
the kernel to finish after it exits, a namespace's teardown, lands on
whichever command runs next.) Writes hyperfine's CSV and JSON shapes (seconds), so the report
reads either.

    interleave.py --warmup N --runs N --export-csv F --export-json F \\
        NAME 'COMMAND ARGS' [NAME 'COMMAND ARGS']...

Commands are split like a shell would (no shell in between), started with
posix_spawn with standard output and error on /dev/null; a command that
exits non-zero stops the measurement (status 1).
"""

import argparse
import json
import os
import random
import shlex
import statistics
import sys
import time


def run_once(argv, devnull):
    """Wall time (s), user and system CPU time (s) of one run of argv."""
    started = time.perf_counter()
    pid = os.posix_spawnp(
        argv[0],
        argv,
        os.environ,
        file_actions=[
            (os.POSIX_SPAWN_DUP2, devnull, 0),
            (os.POSIX_SPAWN_DUP2, devnull, 1),
            (os.POSIX_SPAWN_DUP2, devnull, 2),
        ],
    )
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"interleave: `{shlex.join(argv)}` exited with status {code}")
    return wall, usage.ru_utime, usage.ru_stime


def summary(name, argv, runs):
    times = [r[0] for r in runs]
    return {
        "command": name,
        "argv": argv,
        "mean": statistics.fmean(times),
        "stddev": statistics.stdev(times) if len(times) > 1 else 0.0,
        "median": statistics.median(times),
        "user": statistics.fmean(r[1] for r in runs),
        "system": statistics.fmean(r[2] for r in runs),
        "min": min(times),
        "max": max(times),
        "times": times,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--export-csv", required=True)
    parser.add_argument("--export-json", required=True)
    parser.add_argument("pairs", nargs="+", help="NAME COMMAND, repeated")
    args = parser.parse_args()
    if len(args.pairs) % 2:
        parser.error("commands come as NAME COMMAND pairs")
    commands = [
        (args.pairs[i], shlex.split(args.pairs[i + 1]))
        for i in range(0, len(args.pairs), 2)
    ]
    devnull = os.open(os.devnull, os.O_RDWR)
    for _ in range(args.warmup):
        for _, argv in commands:
            run_once(argv, devnull)
    measured = [[] for _ in commands]
    order = list(range(len(commands)))
    shuffle = random.Random(0).shuffle  # the same orders every time
    for _ in range(args.runs):
        shuffle(order)
        for k in order:
            measured[k].append(run_once(commands[k][1], devnull))
    results = [
        summary(name, argv, runs)
        for (name, argv), runs in zip(commands, measured)
    ]
    with open(args.export_json, "w") as out:
        json.dump({"interleaved": True, "results": results}, out, indent=1)
    with open(args.export_csv, "w") as out:
        out.write("command,mean,stddev,median,user,system,min,max\n")
        for r in results:
            fields = ["mean", "stddev", "median", "user", "system", "min", "max"]
            out.write(",".join([r["command"]] + [f"{r[f]:.9f}" for f in fields]) + "\n")
    for r in results:
        print(f"{r['command']:10s} median {r['median'] * 1000:8.3f} ms  "
              f"mean {r['mean'] * 1000:8.3f} ± {r['stddev'] * 1000:.3f} ms")


if __name__ == "__main__":
    main()
