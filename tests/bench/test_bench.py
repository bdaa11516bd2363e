"""`python -m bench` runs end to end at a small size (the figures themselves are not checked).

The benchmarks get databases and Redis dbs of their own, not the test suite's
nor the real benchmark's (tests/bench/harness.py); a file lock on each keeps two tests
on this machine from emptying one under each other.
"""

from __future__ import annotations

import pytest

from tests.bench.harness import run_bench

pytestmark = pytest.mark.process


def test_throughput_sends_every_message_once(bench_lock, tmp_path):
    result = run_bench(tmp_path, "throughput", "--messages", "2000", "--processes", "1")

    assert result["ok"] is True
    assert result["messages"] == 2000
    assert result["duplicates_total"] == 0
    (run,) = result["runs"]
    assert run["checks"]["sent"] == 2000
    assert run["checks"]["sent_exactly_once"] is True
    assert run["duplicates"] == 0
    assert run["provider"]["accepted"] == 2000
    assert run["provider"]["duplicates_dropped"] == 0
    for field in ("messages_per_s", "wall_s", "latency_p50_ms", "latency_p99_ms", "drain_peak_rss_mib"):
        assert isinstance(run[field], (int, float)) and run[field] > 0, field
    assert run["fakeprovider_peak_rss_mib"] > 0
    assert run["load"]["rows"] == 2000 and run["load"]["rows_per_s"] > 0
    assert run["latency_p50_ms"] <= run["latency_p99_ms"]
    for field in ("messages_per_s", "latency_p50_ms", "latency_p99_ms", "drain_peak_rss_mib"):
        assert result["median"][field] == run[field]


def test_claim_times_the_dispatchers_claim_and_explains_it(bench_lock, tmp_path):
    result = run_bench(tmp_path, "claim", "--rows", "1000,2000", "--repeat", "20", "--warmup", "2")

    assert [size["rows"] for size in result["sizes"]] == [1000, 2000]
    for size in result["sizes"]:
        assert size["unsent"] == size["rows"] // 2
        assert size["claim_batch"]["n"] == 20
        assert 0 < size["claim_batch"]["p50_ms"] <= size["claim_batch"]["p99_ms"]
        assert set(size["queries"]) >= {"select_for_update_skip_locked", "update_to_processing"}
        # However many statements the claim takes, one is the SKIP LOCKED select, explained.
        (claim_select, *_) = [e for e in size["explain"] if "FOR UPDATE SKIP LOCKED" in e["sql"]]
        assert any(line.startswith("Execution Time") for line in claim_select["plan"])
    assert result["ratio_p50_largest_to_smallest"] > 0


def test_sentlist_times_first_and_deep_pages(bench_lock, tmp_path):
    result = run_bench(tmp_path, "sentlist", "--sent", "2000", "--depth", "10", "--repeat", "20")

    for name in ("sent_list", "message_list"):
        figures = result[name]
        assert figures["first_page"]["n"] == 20 and figures["first_page"]["p50_ms"] > 0
        assert figures["deep_page"]["pages_deep"] == 10
        assert figures["deep_page"]["rows_before_it"] == 500
        assert figures["deep_page"]["queries_per_request"] >= 1
        assert figures["deep_page"]["explain"][0]["plan"]


def test_bulk_times_the_bulk_endpoint(bench_lock, tmp_path):
    result = run_bench(tmp_path, "bulk", "--messages", "500", "--per-request", "100")

    assert result["messages"] == 500
    assert result["requests"] == 5
    assert result["messages_per_s"] > 0
