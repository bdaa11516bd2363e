"""`python -m bench history` and `python -m bench idle-xact` run end to end at a tiny size
(the figures are not judged here: a tiny run on a busy machine may miss the targets, so
either exit status is taken and the result's shape is checked)."""

from __future__ import annotations

import pytest

from tests.bench.harness import run_bench

pytestmark = pytest.mark.process


def test_history_times_the_claim_and_the_sent_list_with_and_without_history(bench_lock, tmp_path):
    result = run_bench(
        tmp_path,
        "history",
        "--rows",
        "3000",
        "--unsent",
        "200",
        "--recent",
        "100",
        "--repeat",
        "10",
        "--warmup",
        "2",
        timeout=180,
        exit_codes=(0, 1),
    )

    empty, loaded = result["cases"]
    assert (empty["history"], loaded["history"]) == (0, 3000)
    assert empty["load"]["history"] is None
    assert loaded["load"]["history"]["rows"] == 3000
    for case in (empty, loaded):
        assert case["claim"]["statements"]["n"] == 10 and case["claim"]["statements"]["p50_ms"] > 0
        assert case["sent_list"]["statements"]["n"] == 10 and case["sent_list"]["request"]["p50_ms"] > 0
        # The sent list's page is read from its partial index, explained.
        assert any("message_sent_recent" in line for e in case["sent_list"]["explain"] for line in e["plan"])
    # Then batches of the retention schedule's delete in the history (created over 400 days).
    assert loaded["retention_batches"]["deleted"] > 2000
    assert "retention_batches" not in empty
    assert result["ok"] is (
        result["ratios"]["claim_server_p50"] <= 1.2 and result["ratios"]["sent_list_server_p50"] <= 1.2
    )


def test_idle_xact_runs_its_phases_and_holds_a_transaction_in_one(bench_lock, tmp_path):
    result = run_bench(
        tmp_path,
        "idle-xact",
        "--minutes",
        "0.25",
        "--batch-size",
        "20",
        "--interval",
        "1",
        "--qclusters",
        "1",
        "--workers",
        "2",
        "--idle-timeout",
        "5",
        timeout=400,
        exit_codes=(0, 1),
    )

    without, held = result["phases"]["without"], result["phases"]["held"]
    assert without["idle_transaction"] is False and without["idle_transaction_at_end"] is None
    assert held["idle_transaction_at_end"]["state"] == "idle in transaction"
    assert held["idle_transaction_at_end"]["held_s"] >= 15
    for phase in (without, held):
        assert phase["sent"] > 0 and phase["duplicates"] == 0
        assert phase["claim_probe"]["n"] > 0
    assert set(result["ratios"]) == {"throughput", "claim_probe_p99"}
    # The third phase: PostgreSQL ended the idle session after its 5 s timeout.
    assert result["phases"]["held_with_timeout"]["idle_transaction_at_end"] == "gone"
    assert result["with_timeout"]["idle_in_transaction_session_timeout_s"] == 5
