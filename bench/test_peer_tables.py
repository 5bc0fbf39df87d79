"""bench/peer_tables.py against a recorded run (bench/results)."""

import json
import os
import subprocess
import sys

import peer_tables

HERE = os.path.dirname(os.path.abspath(__file__))
RUN = os.path.join(HERE, "results", "peers-2026-11-27-session7-b.json")


def test_ratios_of_a_recorded_run():
    with open(RUN) as f:
        by_peer = peer_tables.peers(json.load(f))
    found = dict(
        (figure, (round(value, 2), met))
        for (figure, _, _, _), (value, met) in zip(peer_tables.TARGETS, peer_tables.ratios(by_peer))
    )
    # scifaas p50 0.591 ms against ProcessPoolExecutor's 0.296 and parsl_raw's 2.000.
    assert found["warm p50 / ProcessPoolExecutor's"] == (2.0, True)
    assert found["warm p50 / parsl_raw's"] == (0.3, False)
    assert found["1 MiB MB/s / ProcessPoolExecutor's"] == (0.56, False)
    assert found["sleep(10 ms) efficiency, %"] == (97.16, True)
    assert sum(met for _, met in found.values()) == 6


def test_the_command_prints_the_table_and_a_summary_over_runs():
    out = subprocess.run(
        [sys.executable, os.path.join(HERE, "peer_tables.py"), RUN, RUN],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "| **scifaas** | **0.06** | **0.609** | **0.591** | **0.831** | **42744** | **97 %** | **339** |" in out
    assert "| ProcessPoolExecutor | 0.02 | 0.304 | 0.296 | 0.415 | 9744 | 96 % | 603 |" in out
    assert "over 2 runs:" in out
    assert "met in 0 of 2 (0.30-0.30)" in out
