"""`history`: the claim and the sent list's first page with millions of final messages kept
in history, against the same with none (issue 26: within 1.2 x).

Both cases hold the same live work: `--unsent` due messages and `--recent` recently sent
ones (the sent list's first page). The loaded case has `--rows` older final messages
before them (lower ids, created and ended long ago; 90 % sent, the rest failed, cancelled,
expired and suppressed), written with one `INSERT ... SELECT generate_series`, then
`VACUUM (ANALYZE)` and `CHECKPOINT` in both cases. The claim (`claim_batch`, each call
rolled back) and the sent list (`GET /api/messages/sent/` in-process) are timed
`--repeat` times each, statement by statement.
"""

from __future__ import annotations

import argparse
import sys
import time

from bench.common import BenchError, connect, empty_tables, timing_summary
from bench.inprocess import _api_client, _claim_timings, _explain, _QueryTimer, setup_django
from bench.loading import _copy_extras, copy_history, copy_unsent

# The history's final statuses: mostly sent, as a service's history is.
HISTORY_STATUS_SQL = (
    "CASE WHEN i %% 20 = 1 THEN 'failed' WHEN i %% 20 = 2 THEN 'cancelled' WHEN i %% 20 = 3 THEN 'expired'"
    " WHEN i %% 20 = 4 THEN 'suppressed' ELSE 'sent' END"
)


def insert_history(conn, rows: int, *, days_ago: int = 400) -> dict:
    """`rows` final messages created over the `days_ago` days before the last minute, oldest
    first, in one INSERT ... SELECT generate_series; returns its rate."""
    copy_sql, suffix = _copy_extras(conn)  # the NOT NULL columns the service added, with their defaults
    columns = copy_sql.split("(", 1)[1].split(")", 1)[0].split(", ")
    extras = dict(zip(columns[-len(suffix.split("\t")[1:]) :], suffix.split("\t")[1:], strict=True)) if suffix else {}
    values = {
        "uuid": "md5('history' || i)::uuid",
        "recipient_phone_number": "'+9055500' || lpad((i %% 100000)::text, 5, '0')",
        "content": "'history message ' || i",
        "status": HISTORY_STATUS_SQL,
        "created_at": "now() - interval '1 minute' - (%(rows)s - i) * (%(span_ms)s / %(rows)s) * interval '1 ms'",
        "next_attempt_at": "NULL",
        "sent_at": f"CASE WHEN {HISTORY_STATUS_SQL} = 'sent' THEN now() - interval '1 minute'"
        " - (%(rows)s - i) * (%(span_ms)s / %(rows)s) * interval '1 ms' + interval '1 second' END",
        "provider_message_id": "'history-' || i",
        "delivery_cache_pending": "false",
        "attempts": "1",
        "last_error": "''",
        **{name: _sql_literal(value) for name, value in extras.items()},
    }
    # Every name and expression above is this module's own; the sizes go as parameters.
    sql = (
        f"INSERT INTO messages_app_message ({', '.join(values)}) "  # noqa: S608
        f"SELECT {', '.join(values.values())} FROM generate_series(1, %(rows)s) AS i"
    )
    started = time.perf_counter()
    conn.execute(sql, {"rows": rows, "span_ms": days_ago * 86_400_000.0})
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds) if seconds else None}


def _sql_literal(value: str) -> str:
    if value in ("t", "f"):
        return "true" if value == "t" else "false"
    return value if value.lstrip("-").isdigit() else "'" + value.replace("'", "''") + "'"


def _load(*, history: int, recent: int, unsent: int) -> dict:
    from django.db import connection

    connection.close()  # ours must not count as "someone else is using the database"
    with connect() as conn:
        empty_tables(conn)
        load = {"history": insert_history(conn, history) if history else None}
        load["recent_sent"] = copy_history(conn, sent=recent) if recent else None
        load["due"] = copy_unsent(conn, unsent)
        started = time.perf_counter()
        conn.execute("VACUUM (ANALYZE) messages_app_message")
        conn.execute("CHECKPOINT")
        load["vacuum_analyze_checkpoint_s"] = round(time.perf_counter() - started, 3)
        load["table_bytes"] = conn.execute("SELECT pg_total_relation_size('messages_app_message')").fetchone()[0]
    return load


def _sent_list_timings(client, *, repeat: int, warmup: int) -> dict:
    """The first page of /api/messages/sent/: the request and its statements, `repeat` times."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    url = "/api/messages/sent/"
    requests, statements, sqls = [], [], []
    for index in range(warmup + repeat):
        timer = _QueryTimer()
        with CaptureQueriesContext(connection) as captured, connection.execute_wrapper(timer):
            started = time.perf_counter()
            response = client.get(url)
            elapsed = time.perf_counter() - started
        if response.status_code != 200 or not response.json().get("results"):
            raise BenchError(f"GET {url} answered {response.status_code} with no results: {response.content[:200]!r}")
        if index >= warmup:
            requests.append(elapsed)
            statements.append(timer.seconds)
            sqls = [q["sql"] for q in captured.captured_queries]
    page_sqls = [sql for sql in sqls if "messages_app_message" in sql]
    return {
        "request": timing_summary(requests),
        "statements": timing_summary([sum(each) for each in statements]),
        "statements_per_request": len(sqls),
        "explain": _explain(page_sqls),
    }


def _server_side(sqls: list[str], *, repeat: int) -> dict:
    """Run the statements `repeat` times (each round in a transaction rolled back) under
    EXPLAIN (ANALYZE, BUFFERS): the database's own execution time per round, which leaves
    out the round trips and Python that a busy shared machine makes noisy, and the pages
    each round touched (the same on any machine: the cost itself)."""
    import json

    from django.db import connection, transaction

    times, pages = [], []
    for _ in range(repeat):
        total_ms, total_pages = 0.0, 0
        with transaction.atomic():
            with connection.cursor() as cursor:
                for sql in sqls:
                    cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql)
                    raw = cursor.fetchone()[0]
                    (explained,) = json.loads(raw) if isinstance(raw, str) else raw
                    total_ms += explained["Execution Time"] + explained.get("Planning Time", 0)
                    plan = explained["Plan"]
                    total_pages += plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)
            transaction.set_rollback(True)
        times.append(total_ms / 1000)
        pages.append(total_pages)
    return {**timing_summary(times), "pages_p50": sorted(pages)[len(pages) // 2], "pages_max": max(pages)}


def _retention_batches(*, batches: int, batch_size: int) -> dict:
    """Time `batches` batches of the retention schedule's delete (messages_prune_batch, every
    final status, cutoff 30 days ago: in the history) after everything else is measured."""
    from datetime import timedelta

    from django.utils import timezone

    from messages_app.services import MESSAGE_PRUNABLE_STATUSES, messages_prune_batch

    cutoff = timezone.now() - timedelta(days=30)
    times, deleted = [], 0
    for _ in range(batches):
        started = time.perf_counter()
        batch = messages_prune_batch(created_before=cutoff, statuses=MESSAGE_PRUNABLE_STATUSES, batch_size=batch_size)
        times.append(time.perf_counter() - started)
        if not batch:
            break
        deleted += batch["messages_app.Message"]
    return {"batch_size": batch_size, "deleted": deleted, **timing_summary(times)}


def _ratio(loaded: float | None, empty: float | None) -> float | None:
    return round(loaded / empty, 2) if loaded is not None and empty else None


def history(options: argparse.Namespace) -> dict:
    if options.rows < 1 or options.unsent < options.batch_size or options.recent < 1:
        raise BenchError("--rows and --recent must be at least 1 and --unsent at least --batch-size")
    setup_django()
    client = None
    cases = []
    for rows in (0, options.rows):
        print(f"history: {rows} final messages in history", file=sys.stderr, flush=True)
        load = _load(history=rows, recent=options.recent, unsent=options.unsent)
        client = _api_client()
        claim = _claim_timings(options, expected=options.batch_size)
        claim["server_side"] = _server_side([e["sql"] for e in claim["explain"]], repeat=options.repeat)
        sent_list = _sent_list_timings(client, repeat=options.repeat, warmup=options.warmup)
        sent_list["server_side"] = _server_side([e["sql"] for e in sent_list["explain"]], repeat=options.repeat)
        case = {"history": rows, "load": load, "claim": claim, "sent_list": sent_list}
        if rows and options.retention_batches:
            # Last: it deletes some of the history the figures above were measured with.
            case["retention_batches"] = _retention_batches(batches=options.retention_batches, batch_size=1000)
        cases.append(case)
    empty, loaded = cases
    ratios = {
        "claim_server_p50": _ratio(loaded["claim"]["server_side"]["p50_ms"], empty["claim"]["server_side"]["p50_ms"]),
        "claim_pages": _ratio(loaded["claim"]["server_side"]["pages_p50"], empty["claim"]["server_side"]["pages_p50"]),
        "sent_list_server_p50": _ratio(
            loaded["sent_list"]["server_side"]["p50_ms"], empty["sent_list"]["server_side"]["p50_ms"]
        ),
        "sent_list_pages": _ratio(
            loaded["sent_list"]["server_side"]["pages_p50"], empty["sent_list"]["server_side"]["pages_p50"]
        ),
        "claim_statements_p50": _ratio(loaded["claim"]["statements"]["p50_ms"], empty["claim"]["statements"]["p50_ms"]),
        "claim_p50": _ratio(loaded["claim"]["claim_batch"]["p50_ms"], empty["claim"]["claim_batch"]["p50_ms"]),
        "claim_p99": _ratio(loaded["claim"]["claim_batch"]["p99_ms"], empty["claim"]["claim_batch"]["p99_ms"]),
        "sent_list_statements_p50": _ratio(
            loaded["sent_list"]["statements"]["p50_ms"], empty["sent_list"]["statements"]["p50_ms"]
        ),
        "sent_list_request_p50": _ratio(
            loaded["sent_list"]["request"]["p50_ms"], empty["sent_list"]["request"]["p50_ms"]
        ),
    }
    # Judged on what the database does (the history is the database's to carry): its own
    # execution time of the statements, median of --repeat rounds. The same statements timed
    # from this process, and the whole call with Django's Python, are reported beside them.
    judged = (ratios["claim_server_p50"], ratios["sent_list_server_p50"])
    passed = all(ratio is not None and ratio <= options.max_ratio for ratio in judged)
    return {
        "summary": (
            f"history: {options.rows} final messages kept vs none ({options.unsent} due, {options.recent} recently "
            f"sent in both), {options.repeat} rounds each: claim_batch({options.batch_size}) database time median "
            f"{empty['claim']['server_side']['p50_ms']} -> {loaded['claim']['server_side']['p50_ms']} ms "
            f"(x {ratios['claim_server_p50']}; pages x {ratios['claim_pages']}; timed from the client "
            f"x {ratios['claim_statements_p50']}, whole call x {ratios['claim_p50']}), sent list first page "
            f"database time median {empty['sent_list']['server_side']['p50_ms']} -> "
            f"{loaded['sent_list']['server_side']['p50_ms']} ms (x {ratios['sent_list_server_p50']}; pages "
            f"x {ratios['sent_list_pages']}; from the client x {ratios['sent_list_statements_p50']}, whole request "
            f"x {ratios['sent_list_request_p50']}); "
            f"at most {options.max_ratio:g}: {'PASS' if passed else 'FAIL'}"
            + (
                f"; retention: {loaded['retention_batches']['deleted']} deleted in batches of 1,000, median "
                f"{loaded['retention_batches']['p50_ms']} ms a batch"
                if "retention_batches" in loaded
                else ""
            )
        ),
        "ok": passed,
        "ratios": ratios,
        "max_ratio": options.max_ratio,
        "rows": options.rows,
        "unsent": options.unsent,
        "recent": options.recent,
        "batch_size": options.batch_size,
        "repeat": options.repeat,
        "warmup": options.warmup,
        "note": "claims are rolled back (BEGIN ... ROLLBACK in the time); the sent list is requested in-process",
        "cases": cases,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=10_000_000, help="final messages in history (the loaded case)")
    parser.add_argument("--unsent", type=int, default=5000, help="due messages (both cases)")
    parser.add_argument("--recent", type=int, default=1000, help="recently sent messages (both cases)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=300, help="timed claims and timed sent-list requests per case")
    parser.add_argument("--warmup", type=int, default=20, help="untimed ones first")
    parser.add_argument(
        "--retention-batches",
        type=int,
        default=20,
        help="then time this many of the retention schedule's batches of 1,000 in the history (0: none)",
    )
    parser.add_argument("--max-ratio", type=float, default=1.2, help="the check: loaded / empty median at most this")
