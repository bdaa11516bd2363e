"""`python -m bench callbacks` end to end at a small size: each mode sends every message
once, the healthy endpoint gets every event, the dead one none (the ratios themselves are
not judged here: a busy test machine's figures)."""

from __future__ import annotations

import pytest

from tests.bench.harness import run_bench

pytestmark = pytest.mark.process


def test_callbacks_compares_sending_with_callbacks_on_off_and_to_a_dead_endpoint(bench_lock, tmp_path):
    # Exit status 1 is a ratio under a target: a busy test machine's figure, not a failure here.
    result = run_bench(
        tmp_path,
        "callbacks",
        "--messages",
        "300",
        "--rounds",
        "1",
        "--callback-timeout",
        "1",
        timeout=300,
        exit_codes=(0, 1),
    )

    assert result["checks_ok"] is True, result
    runs = {run["mode"]: run for run in result["runs"]}
    assert set(runs) == {"off", "healthy", "dead"}
    assert all(run["sent_exactly_once"] and run["messages_per_s"] > 0 for run in runs.values())
    assert runs["off"]["events_written"] == 0
    assert runs["healthy"]["events_written"] == runs["healthy"]["callbacks_delivered"] == 300
    assert runs["dead"]["events_written"] == 300
    assert result["ratio_healthy_to_off"] > 0 and result["ratio_dead_to_healthy"] > 0
    assert result["ok"] is (result["targets_met"] is True)
