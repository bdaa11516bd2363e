"""`python -m bench scale` and `python -m bench latency` run end to end at a small size:
real gunicorn, qcluster (each in a CPU cgroup of its own) and provider processes, every
message sent once (the figures themselves are not judged)."""

from __future__ import annotations

import pytest

from bench.cgroups import CpuCgroups
from bench.common import BenchError
from tests.bench.harness import run_bench

pytestmark = pytest.mark.process

MESSAGES = 200


@pytest.fixture
def cgroups_available():
    try:
        CpuCgroups(1, cpus=0.2, name="bench-scale-test-probe").remove()
    except BenchError as exc:
        pytest.skip(f"no CPU cgroup can be made here: {exc.code}")


def test_scale_sends_every_message_once_with_each_qcluster_in_its_cgroup(bench_lock, cgroups_available, tmp_path):
    result = run_bench(
        tmp_path,
        "scale",
        *("--qclusters-list", "1,2", "--messages", str(MESSAGES), "--cpus-per-qcluster", "0.5"),
        *("--batch-size", "100", "--log-level", "WARNING"),
        timeout=300,
    )

    assert result["ok"] is True and result["duplicates"] == 0
    assert result["cgroup_version"] in ("v1", "v2")
    (run,) = result["runs"]
    assert set(run) == {"1", "2"}
    for count, figures in run.items():
        assert figures["messages_per_s"] > 0, count
        assert len(figures["cgroup_cpu_s_each"]) == int(count)
        assert all(used > 0 for used in figures["cgroup_cpu_s_each"]), count  # the qclusters ran in them
    assert result["ratios"]["2_over_1"]["ratio"] > 0


def test_latency_sends_lone_messages_within_the_pace(bench_lock, tmp_path):
    result = run_bench(
        tmp_path,
        "latency",
        *("--messages", "20", "--every", "0.2", "--qclusters", "1", "--workers", "2", "--burst", "30"),
        *("--batch-size", "10", "--interval", "1", "--log-level", "WARNING"),
        timeout=240,
        exit_codes=(0, 1),  # the latency targets are the benchmark's to judge, not this test's
    )

    assert result["duplicates"] == 0
    assert result["most_claimed_in_any_window"] <= 10  # the pace is a budget of claims
    assert result["burst"]["received"] == 30
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]
