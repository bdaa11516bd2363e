"""`python -m bench cluster` and the two checks run end to end at a small size: real
gunicorn, qcluster and provider processes, every phase, numbers that make sense and
no duplicate (the figures themselves are not judged)."""

from __future__ import annotations

import pytest

from tests.bench.harness import run_bench

pytestmark = pytest.mark.process

MESSAGES = 300
# The cluster-compare and cluster-latency phases run the cluster phase's code with other
# numbers (--compare-qclusters, --slow-latency-ms); skipped here to keep the suite short.
PHASES = ("cluster", "baseline-fakeprovider", "baseline-stub")


def test_cluster_sends_every_message_once_in_every_phase(bench_lock, tmp_path):
    result = run_bench(
        tmp_path,
        "cluster",
        *("--messages", str(MESSAGES), "--qclusters", "2", "--compare-qclusters", "0", "--workers", "2"),
        *("--slow-latency-ms", "0"),
        *("--batch-size", "100", "--interval", "1", "--per-request", "100", "--log-level", "WARNING"),
        timeout=300,
    )

    assert result["ok"] is True
    (run,) = result["runs"]
    assert tuple(run["phases"]) == PHASES
    for name, phase in run["phases"].items():
        assert phase["ok"] is True, name
        assert phase["duplicates"] == 0, name
        assert phase["provider"] == {"accepted": MESSAGES, "duplicates_dropped": 0}, name
        checks = phase["checks"]
        assert checks["sent_exactly_once"] is True, name
        assert checks["redis_records"] == MESSAGES, name
        assert phase["enqueue"]["messages"] == MESSAGES and phase["enqueue"]["requests"] == 3, name
        assert 0 < phase["messages_per_s_from_start"] <= phase["messages_per_s"], name
        assert 0 < phase["latency_p50_ms"] <= phase["latency_p99_ms"] <= phase["latency_max_ms"], name
        # Queued before the start, every message waits at least from the start to its send.
        assert phase["first_send_after_start_s"] >= 0, name
    for name in ("cluster",):
        phase = run["phases"][name]
        memory = phase["memory"]
        assert phase["worker_peak_rss_mib"] > 20, name
        assert memory["workers_seen"] >= phase["qclusters"] * 2, name
        assert {"main", "sentinel", "worker", "pusher", "monitor"} <= set(memory["peak_rss_mib_max_by_role"]), name
        assert phase["behind"]["signal_available"] is True and phase["behind"]["status_polls"] >= 1, name
        assert phase["detail"]["chunk_tasks"] == {"failed": 0}, name
        assert phase["detail"]["qcluster_returncodes"] == [0] * phase["qclusters"], name
    for name in ("baseline-fakeprovider", "baseline-stub"):
        phase = run["phases"][name]
        assert phase["peak_rss_mib"] > 10, name
        assert phase["detail"]["baseline"]["sent"] == MESSAGES, name
    ratios = result["ratios"]
    assert set(ratios) == {
        "cluster_over_baseline",
        "baseline_fakeprovider_over_stub",
        "qclusters_over_compare",
        "slow_provider_messages_per_s",
        "opt_outs_over_cluster",
    }
    for name in ("cluster_over_baseline", "baseline_fakeprovider_over_stub"):
        assert ratios[name]["value"] > 0 and ratios[name]["met"] in (True, False), name
    # Their phases were skipped (cluster-opt-outs runs only when named).
    for name in ("qclusters_over_compare", "slow_provider_messages_per_s", "opt_outs_over_cluster"):
        assert ratios[name]["value"] is None and ratios[name]["met"] is None, name
    assert result["targets_apply"] is False  # not the conditions at this size
    assert "cluster/baseline" in result["summary"]


def test_cluster_with_opt_outs_checks_every_message_against_them_and_sends_all(bench_lock, tmp_path):
    result = run_bench(
        tmp_path,
        "cluster",
        *("--phases", "cluster,cluster-opt-outs", "--opt-outs", "5000"),
        *("--messages", str(MESSAGES), "--qclusters", "1", "--workers", "2"),
        *("--batch-size", "100", "--interval", "1", "--per-request", "100", "--log-level", "WARNING"),
        timeout=300,
    )

    assert result["ok"] is True and result["opt_outs"] == 5000
    (run,) = result["runs"]
    assert tuple(run["phases"]) == ("cluster", "cluster-opt-outs")
    assert run["phases"]["cluster"]["opt_outs"] is None
    opted_out = run["phases"]["cluster-opt-outs"]
    assert opted_out["opt_outs"]["numbers_opted_out"] == 5000
    # None of the opted-out numbers is a recipient: every message is sent, once.
    assert opted_out["checks"]["sent_exactly_once"] is True
    assert opted_out["provider"] == {"accepted": MESSAGES, "duplicates_dropped": 0}
    ratio = result["ratios"]["opt_outs_over_cluster"]
    assert ratio["value"] > 0 and ratio["target"] == 0.95 and ratio["met"] in (True, False)
    assert "5000 opted out" in result["summary"]


def test_claim_due_compares_the_claim_with_and_without_messages_not_yet_due(bench_lock, tmp_path):
    # A loaded machine may make the check fail (exit 1); the run itself must work.
    result = run_bench(
        tmp_path,
        *("claim-due", "--not-due", "3000", "--unsent", "300", "--repeat", "10", "--warmup", "2"),
        exit_codes=(0, 1),
    )

    empty, loaded = result["cases"]
    assert (empty["not_due"], loaded["not_due"]) == (0, 3000)
    for case in (empty, loaded):
        assert case["due"] == 300
        assert case["claim_batch"]["n"] == 10
        assert 0 < case["claim_batch"]["p50_ms"] <= case["claim_batch"]["p99_ms"]
        assert case["explain"] and case["explain"][0]["plan"]
    assert result["ratio_p50"] > 0
    assert result["ok"] is (result["ratio_p50"] <= 2)
