#!/usr/bin/env python3
"""Tables of `bench_peers.py` runs, as the README shows them.

    python3 bench/peer_tables.py RUN.json [RUN.json ...]

For each run: the figures of every peer and of scifaas (the README's table), then the
issue's targets as ratios within that run. With several runs, last: how many of them met
each target, and the range of its ratio. Only the standard library.
"""

import json
import sys

NAMES = {
    "parsl": "parsl (DFK)",
    "parsl_raw": "parsl_raw (HTEX, what funcX uses)",
    "dask": "dask",
    "ppe": "ProcessPoolExecutor",
    "scifaas": "scifaas",
}


def peers(run):
    """{peer: figures} of the first round of a run; parsl's raw pass as its own peer."""
    out = {}
    for result in run["runs"][0]["results"]:
        out[result["peer"]] = result
        if "raw" in result:
            out["parsl_raw"] = result["raw"]
    return out


def get(figures, *keys):
    for key in keys:
        if not isinstance(figures, dict):
            return None
        figures = figures.get(key)
    return figures


def fmt(value, pattern):
    return "-" if value is None else pattern % value


def table(by_peer):
    lines = [
        "| peer | cold start s | warm mean ms | p50 ms | p99 ms | no-op tasks/s "
        "| sleep(10 ms) efficiency | 1 MiB MB/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for peer, name in NAMES.items():
        r = by_peer.get(peer)
        if r is None:
            continue
        efficiency = get(r, "sleep", "efficiency")
        cells = [
            fmt(get(r, "cold_start", "cold_start_s"), "%.2f"),
            fmt(get(r, "latency", "mean_ms"), "%.3f"),
            fmt(get(r, "latency", "p50_ms"), "%.3f"),
            fmt(get(r, "latency", "p99_ms"), "%.3f"),
            fmt(get(r, "noop", "tasks_per_s"), "%.0f"),
            fmt(None if efficiency is None else efficiency * 100, "%.0f %%"),
            fmt(get(r, "payload", "mb_per_s"), "%.0f"),
        ]
        if peer == "scifaas":
            name = "**%s**" % name
            cells = ["**%s**" % c for c in cells]
        lines.append("| %s | %s |" % (name, " | ".join(cells)))
    return "\n".join(lines)


# (figure, target, ratio from {peer: figures}, whether the ratio meets the target)
TARGETS = [
    ("warm p50 / ProcessPoolExecutor's", "<= 3x",
     lambda p: get(p["scifaas"], "latency", "p50_ms") / get(p["ppe"], "latency", "p50_ms"),
     lambda x: x <= 3),
    ("warm p50 / parsl_raw's", "<= 0.25x",
     lambda p: get(p["scifaas"], "latency", "p50_ms") / get(p["parsl_raw"], "latency", "p50_ms"),
     lambda x: x <= 0.25),
    ("warm p99 / our p50", "<= 2x",
     lambda p: get(p["scifaas"], "latency", "p99_ms") / get(p["scifaas"], "latency", "p50_ms"),
     lambda x: x <= 2),
    ("no-op throughput / ProcessPoolExecutor's", ">= 2x",
     lambda p: get(p["scifaas"], "noop", "tasks_per_s") / get(p["ppe"], "noop", "tasks_per_s"),
     lambda x: x >= 2),
    ("no-op throughput / parsl_raw's", ">= 15x",
     lambda p: get(p["scifaas"], "noop", "tasks_per_s") / get(p["parsl_raw"], "noop", "tasks_per_s"),
     lambda x: x >= 15),
    ("sleep(10 ms) efficiency, %", ">= 97",
     lambda p: get(p["scifaas"], "sleep", "efficiency") * 100,
     lambda x: x >= 97),
    ("1 MiB MB/s / ProcessPoolExecutor's", ">= 0.7x",
     lambda p: get(p["scifaas"], "payload", "mb_per_s") / get(p["ppe"], "payload", "mb_per_s"),
     lambda x: x >= 0.7),
    ("cold start / Dask's", "<= 0.33x",
     lambda p: get(p["scifaas"], "cold_start", "cold_start_s")
     / get(p["dask"], "cold_start", "cold_start_s"),
     lambda x: x <= 1 / 3),
]


def ratios(by_peer):
    out = []
    for _, _, ratio, meets in TARGETS:
        try:
            value = ratio(by_peer)
        except (KeyError, TypeError, ZeroDivisionError):
            value = None
        out.append((value, value is not None and meets(value)))
    return out


def main(paths):
    if not paths:
        sys.exit(__doc__)
    every = []
    for path in paths:
        with open(path) as f:
            run = json.load(f)
        by_peer = peers(run)
        print("%s (started %s)\n" % (path, run.get("started_utc", "?")))
        print(table(by_peer))
        print()
        found = ratios(by_peer)
        every.append(found)
        for (figure, target, _, _), (value, met) in zip(TARGETS, found):
            print("  %-42s %-8s %8s  %s" % (figure, target, fmt(value, "%.2f"), "met" if met else "MISSED"))
        print()
    if len(every) > 1:
        print("over %d runs:" % len(every))
        for i, (figure, target, _, _) in enumerate(TARGETS):
            values = [run[i][0] for run in every if run[i][0] is not None]
            met = sum(1 for run in every if run[i][1])
            span = "%.2f-%.2f" % (min(values), max(values)) if values else "-"
            print("  %-42s %-8s met in %d of %d (%s)" % (figure, target, met, len(every), span))


if __name__ == "__main__":
    main(sys.argv[1:])
