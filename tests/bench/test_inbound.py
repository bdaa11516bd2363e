"""`python -m bench inbound` end to end at a small size: real gunicorn, wrk posting signed
batches of replies, every reply stored and every STOP acted on (the rate is not judged)."""

from __future__ import annotations

import pytest

from tests.bench.harness import run_bench

pytestmark = pytest.mark.process


def test_inbound_stores_every_reply_and_acts_on_every_stop(bench_lock, tmp_path):
    result = run_bench(
        tmp_path,
        *("inbound", "--replies", "600", "--batch-size", "100", "--stop-every", "50", "--log-level", "WARNING"),
        timeout=120,
    )

    assert result["ok"] is True
    assert result["replies"] == 600 and result["replies_per_callback"] == 100
    assert result["checks"] == {
        "stored": 600,
        "stop_replies": 12,
        "stored_as_opt_out": 12,
        "numbers_opted_out": 12,
        "confirmations_queued": 12,
    }
    assert result["replies_per_s"] > 0 and result["callbacks_per_s"] > 0
    assert 0 <= result["latency_p50_ms"] <= result["latency_p99_ms"]
