"""`python -m bench templates` end to end at a small size: both kinds of bulk stored, the
messages from the template with the texts written out (the ratio itself is not judged)."""

from __future__ import annotations

import pytest

from tests.bench.harness import run_bench

pytestmark = pytest.mark.process


def test_templates_compares_bulk_from_a_template_with_finished_content(bench_lock, tmp_path):
    # Exit status 1 is a ratio under the target: a busy test machine's figure, not a failure here.
    result = run_bench(
        tmp_path, "templates", "--messages", "600", "--per-request", "200", timeout=120, exit_codes=(0, 1)
    )

    assert result["messages_each"] == 600 and result["per_request"] == 200
    assert len(result["paired_ratios"]) == 3
    assert result["template_messages_per_s"] > 0 and result["content_messages_per_s"] > 0
    assert result["ok"] is (result["ratio"] >= result["target_ratio"] == 0.8)
