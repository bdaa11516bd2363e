"""Benchmarks that run the service's code in this process against the benchmark
database: the claim query (`claim`), the list endpoints (`sentlist`) and the
bulk create endpoint (`bulk`)."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

from bench.common import (
    BenchError,
    connect,
    empty_tables,
    prepare_database,
    service_env,
    timing_summary,
)
from bench.loading import copy_history, copy_not_due, copy_unsent

BENCH_USERNAME = "bench"


def setup_django() -> None:
    """Point this process at the benchmark database (before Django reads its settings) and set up."""
    env = service_env(
        LOG_LEVEL="WARNING",
        DEBUG="false",
        # django.test.Client talks as "testserver".
        ALLOWED_HOSTS="testserver,localhost,127.0.0.1",
        DISPATCH_PROVIDER_BACKEND="locmem",  # nothing here sends; never reach a real provider
        # The list and bulk timings make hundreds of requests a minute as one user:
        # they measure the endpoints, not the throttle.
        THROTTLE_USER_RATE="1000000/min",
    )
    prepare_database(env)
    os.environ.update(env)
    # WhiteNoise warns that collectstatic has not run; no static file is served here.
    warnings.filterwarnings("ignore", message="No directory at: ")
    import django

    django.setup()


# --all-queued: the queue's share of each priority (the rest is normal).
PRIORITY_MIX = {"high": 0.1, "low": 0.1}


def _fill(*, sent: int, unsent: int, priorities: bool = False) -> dict:
    from django.db import connection

    connection.close()  # ours must not count as "someone else is using the database"
    with connect() as conn:
        empty_tables(conn)
        load = copy_history(conn, sent=sent, unsent=unsent)
        if priorities:
            # Spread over the queue (every tenth message high, the next low), so each level
            # has due messages from its oldest to its newest.
            every = round(1 / PRIORITY_MIX["high"])
            conn.execute(
                "UPDATE messages_app_message SET priority = CASE WHEN id %% %s = 0 THEN 'high' ELSE 'low' END"
                " WHERE status = 'unsent' AND id %% %s IN (0, 1)",
                [every, every],
            )
            load["priorities"] = dict(
                conn.execute("SELECT priority, count(*) FROM messages_app_message GROUP BY 1 ORDER BY 1").fetchall()
            )
        started = time.perf_counter()
        conn.execute("VACUUM ANALYZE messages_app_message")
        load["vacuum_analyze_s"] = round(time.perf_counter() - started, 3)
    print(f"  loaded {sent + unsent} messages at {load['rows_per_s']} rows/s", file=sys.stderr, flush=True)
    return load


class _QueryTimer:
    """A connection.execute_wrapper that keeps how long each statement took (CaptureQueriesContext
    rounds to milliseconds)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def __call__(self, execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.seconds.append(time.perf_counter() - started)


def _explain(sqls: list[str]) -> list[dict]:
    """EXPLAIN (ANALYZE, BUFFERS) each statement, in order, in one transaction that is rolled back."""
    from django.db import connection, transaction

    plans = []
    with transaction.atomic():
        with connection.cursor() as cursor:
            for sql in sqls:
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
                plans.append({"sql": sql, "plan": [row[0] for row in cursor.fetchall()]})
        transaction.set_rollback(True)
    return plans


# --- claim ----------------------------------------------------------------------


def _statement_names(sqls: list[str]) -> list[str]:
    """A name for each of the claim's statements, in order: what it does, numbered from the
    second of a kind on (a claim by priority levels runs a SELECT per level)."""
    names, seen = [], {}
    for sql in sqls:
        if "FOR UPDATE SKIP LOCKED" in sql:
            kind = "select_for_update_skip_locked"
        elif sql.startswith("UPDATE") and "'processing'" in sql:
            kind = "update_to_processing"
        else:
            kind = sql.split(None, 1)[0].lower() if sql.strip() else "statement"
        seen[kind] = seen.get(kind, 0) + 1
        names.append(kind if seen[kind] == 1 else f"{kind}_{seen[kind]}")
    return names


def _claim_timings(options: argparse.Namespace, *, expected: int) -> dict:
    """Time `claim_batch` in this process (Django set up on the benchmark database): each
    call in its own transaction, rolled back; `--warmup` untimed, `--repeat` timed."""
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    from dispatcher.engine.claiming import claim_batch

    def one_claim() -> tuple[float, list[float], list[str]]:
        timer = _QueryTimer()
        with CaptureQueriesContext(connection) as captured, connection.execute_wrapper(timer):
            started = time.perf_counter()
            with transaction.atomic():
                claimed = claim_batch(batch_size=options.batch_size).message_ids
                transaction.set_rollback(True)
            elapsed = time.perf_counter() - started
        if len(claimed) != expected:
            raise BenchError(f"claim_batch returned {len(claimed)} messages, expected {expected}")
        # Django also logs BEGIN and ROLLBACK; the wrapper sees only the statements.
        sqls = [q["sql"] for q in captured.captured_queries if q["sql"] not in ("BEGIN", "ROLLBACK")]
        return elapsed, timer.seconds, sqls

    for _ in range(options.warmup):
        one_claim()
    times, per_query = [], []
    for _ in range(options.repeat):
        elapsed, query_seconds, sqls = one_claim()
        times.append(elapsed)
        per_query.append(query_seconds)
    names = _statement_names(sqls)
    query_times = {
        name: timing_summary([q[index] for q in per_query if len(q) == len(names)]) for index, name in enumerate(names)
    }
    # BEGIN, ROLLBACK and the ORM's Python: the part of claim_batch outside its statements.
    query_times["outside_statements"] = timing_summary([t - sum(q) for t, q in zip(times, per_query, strict=True)])
    # Rolled-back claims leave dead row versions behind: does the claim slow down as they pile up?
    quarter = max(len(times) // 4, 1)
    drift = {
        "first_quarter_p50_ms": timing_summary(times[:quarter])["p50_ms"],
        "last_quarter_p50_ms": timing_summary(times[-quarter:])["p50_ms"],
    }
    return {
        "claim_batch": timing_summary(times),
        # The claim's statements together, without the ORM's Python around them.
        "statements": timing_summary([sum(q) for q in per_query]),
        "queries": query_times,
        "drift": drift,
        "explain": _explain(sqls),
    }


def claim(options: argparse.Namespace) -> dict:
    sizes = [int(s) for s in options.rows.split(",") if s.strip()]
    if not sizes or min(sizes) < 2:
        raise BenchError("--rows takes comma-separated table sizes of at least 2 rows, e.g. 10000,1000000")
    setup_django()
    per_size = []
    for rows in sizes:
        unsent = rows if options.all_queued else min(options.unsent, rows // 2)
        print(f"claim: {rows} rows ({unsent} unsent)", file=sys.stderr, flush=True)
        load = _fill(sent=rows - unsent, unsent=unsent, priorities=options.all_queued)
        timings = _claim_timings(options, expected=min(options.batch_size, unsent))
        per_size.append({"rows": rows, "unsent": unsent, "sent": rows - unsent, "load": load, **timings})
    first, last = per_size[0], per_size[-1]
    ratio = (
        round(last["claim_batch"]["p50_ms"] / first["claim_batch"]["p50_ms"], 2)
        if first["claim_batch"]["p50_ms"]
        else None
    )
    figures = ", ".join(
        f"{s['rows']} rows {s['claim_batch']['p50_ms']} / {s['claim_batch']['p99_ms']}" for s in per_size
    )
    return {
        "summary": f"claim_batch(batch_size={options.batch_size}"
        f"{', every row queued, 10% high, 80% normal, 10% low' if options.all_queued else ''}), "
        f"median / p99 ms: {figures}; "
        f"median ratio {last['rows']}/{first['rows']} rows: {ratio}",
        "batch_size": options.batch_size,
        "repeat": options.repeat,
        "warmup": options.warmup,
        "note": "each claim runs in its own transaction (BEGIN ... ROLLBACK included in the time) and is rolled back",
        "ratio_p50_largest_to_smallest": ratio,
        "sizes": per_size,
    }


def claim_due(options: argparse.Namespace) -> dict:
    """The claim with many older messages not yet due (waiting for a retry) in the table,
    against the same claim with none: the due-queue index must keep them out of its way."""
    if options.not_due < 1 or options.unsent < options.batch_size:
        raise BenchError("--not-due must be at least 1 and --unsent at least --batch-size")
    setup_django()
    from django.db import connection

    cases = []
    for not_due in (0, options.not_due):
        print(f"claim-due: {not_due} not-due messages, then {options.unsent} due", file=sys.stderr, flush=True)
        connection.close()  # ours must not count as "someone else is using the database"
        with connect() as conn:
            empty_tables(conn)
            load = {
                "not_due": copy_not_due(conn, not_due) if not_due else None,
                "due": copy_unsent(conn, options.unsent),
            }
            conn.execute("VACUUM ANALYZE messages_app_message")
        timings = _claim_timings(options, expected=options.batch_size)
        cases.append({"not_due": not_due, "due": options.unsent, "load": load, **timings})
    empty, loaded = cases
    ratio = (
        round(loaded["claim_batch"]["p50_ms"] / empty["claim_batch"]["p50_ms"], 2)
        if empty["claim_batch"]["p50_ms"]
        else None
    )
    passed = ratio is not None and ratio <= options.max_ratio
    return {
        "summary": (
            f"claim-due: claim_batch(batch_size={options.batch_size}) median {empty['claim_batch']['p50_ms']} ms "
            f"with no message waiting for later, {loaded['claim_batch']['p50_ms']} ms with {options.not_due} "
            f"older ones not yet due: ratio {ratio} (at most {options.max_ratio:g}): "
            f"{'PASS' if passed else 'FAIL'}"
        ),
        "ok": passed,
        "ratio_p50": ratio,
        "max_ratio": options.max_ratio,
        "batch_size": options.batch_size,
        "repeat": options.repeat,
        "warmup": options.warmup,
        "note": "each claim runs in its own transaction (BEGIN ... ROLLBACK included in the time) and is rolled back",
        "cases": cases,
    }


def add_claim_due_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--not-due", type=int, default=100_000, help="older unsent messages due only in an hour")
    parser.add_argument("--unsent", type=int, default=5000, help="due messages queued after them")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=200, help="timed claims per case")
    parser.add_argument("--warmup", type=int, default=10, help="untimed claims first")
    parser.add_argument("--max-ratio", type=float, default=2.0, help="the check: loaded / empty median at most this")


def add_claim_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", default="10000,1000000", help="comma-separated table sizes")
    parser.add_argument(
        "--unsent",
        type=int,
        default=5000,
        help="unsent messages queued in each table (at most half of it); the rest are sent. "
        "The same queue at every size isolates the cost of the table's history",
    )
    parser.add_argument(
        "--all-queued",
        action="store_true",
        help="every row unsent instead (a queue of the table's size), 10%% high and 10%% low priority: "
        "the claim by priority against the queue's length",
    )
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=200, help="timed claims per size")
    parser.add_argument("--warmup", type=int, default=10, help="untimed claims first")


# --- API --------------------------------------------------------------------------


def _api_client():
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    user, _ = get_user_model().objects.get_or_create(username=BENCH_USERNAME)
    # Reading and queueing messages need these permissions, as for any API client.
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="messages_app", codename__in=["view_message", "add_message"])
    )
    token, _ = Token.objects.get_or_create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def _get(client, url: str) -> tuple[float, dict]:
    started = time.perf_counter()
    response = client.get(url)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise BenchError(f"GET {url} answered {response.status_code}: {response.content[:300]!r}")
    return elapsed, response.json()


def _page_figures(client, path: str, *, depth: int, repeat: int) -> dict:
    """Time the first page, then follow `next` `depth` pages and time that page."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def measure(url: str) -> dict:
        _get(client, url)  # warm
        with CaptureQueriesContext(connection) as captured:
            _get(client, url)
        # Read now: the next request clears connection.queries, which captured_queries slices.
        queries = list(captured.captured_queries)
        times = [_get(client, url)[0] for _ in range(repeat)]
        page_sql = [q["sql"] for q in queries if "messages_app_message" in q["sql"]]
        return {
            **timing_summary(times),
            "queries_per_request": len(queries),
            "explain": _explain(page_sql[-1:]),
        }

    first = measure(path)
    url, followed, skipped, walk = path, 0, 0, []
    for _ in range(depth):
        elapsed, body = _get(client, url)
        walk.append(elapsed)
        if not body.get("next"):
            break
        url, followed, skipped = body["next"], followed + 1, skipped + len(body["results"])
    deep = measure(url)
    return {
        "first_page": first,
        "deep_page": {"pages_deep": followed, "rows_before_it": skipped, **deep},
        "walk_to_deep_page": timing_summary(walk),
    }


def sentlist(options: argparse.Namespace) -> dict:
    if options.sent < 1:
        raise BenchError("--sent must be at least 1")
    setup_django()
    print(f"sentlist: {options.sent} sent messages", file=sys.stderr, flush=True)
    load = _fill(sent=options.sent, unsent=0)
    client = _api_client()
    sent_page = _page_figures(client, "/api/messages/sent/", depth=options.depth, repeat=options.repeat)
    list_page = _page_figures(client, "/api/messages/", depth=options.depth, repeat=options.repeat)
    return {
        "summary": (
            f"{options.sent} sent messages, {options.repeat} requests each, in-process (no HTTP server): "
            f"/api/messages/sent/ first page p50 {sent_page['first_page']['p50_ms']} / "
            f"p99 {sent_page['first_page']['p99_ms']} ms, {sent_page['deep_page']['pages_deep']} pages deep "
            f"p50 {sent_page['deep_page']['p50_ms']} / p99 {sent_page['deep_page']['p99_ms']} ms; "
            f"/api/messages/ first p50 {list_page['first_page']['p50_ms']} / p99 {list_page['first_page']['p99_ms']}"
            f" ms, deep p50 {list_page['deep_page']['p50_ms']} / p99 {list_page['deep_page']['p99_ms']} ms"
        ),
        "sent": options.sent,
        "repeat": options.repeat,
        "depth_requested": options.depth,
        "load": load,
        "sent_list": sent_page,
        "message_list": list_page,
    }


def add_sentlist_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sent", type=int, default=1_000_000, help="sent messages in the table")
    parser.add_argument("--depth", type=int, default=200, help="pages to follow before timing the deep page")
    parser.add_argument("--repeat", type=int, default=200, help="timed requests per page")


def bulk(options: argparse.Namespace) -> dict:
    if options.messages < 1 or options.per_request < 1:
        raise BenchError("--messages and --per-request must be at least 1")
    setup_django()
    from django.conf import settings

    if options.per_request > settings.MESSAGE_BULK_MAX_ITEMS:
        raise BenchError(f"--per-request is above MESSAGE_BULK_MAX_ITEMS ({settings.MESSAGE_BULK_MAX_ITEMS})")
    from django.db import connection

    connection.close()  # ours must not count as "someone else is using the database"
    with connect() as conn:
        empty_tables(conn)
    client = _api_client()

    def payload(start: int, count: int) -> dict:
        return {
            "messages": [
                {"recipient_phone_number": f"+90 555 00{(start + i) % 100_000:05d}", "content": f"bulk {start + i}"}
                for i in range(count)
            ]
        }

    def post(body: dict) -> float:
        started = time.perf_counter()
        response = client.post("/api/messages/bulk/", body, format="json")
        elapsed = time.perf_counter() - started
        if response.status_code != 201:
            raise BenchError(f"POST /api/messages/bulk/ answered {response.status_code}: {response.content[:300]!r}")
        return elapsed

    post(payload(0, options.per_request))  # warm-up, not timed
    times, sent = [], 0
    while sent < options.messages:
        count = min(options.per_request, options.messages - sent)
        body = payload(sent, count)
        times.append(post(body))
        sent += count
    from messages_app.models import Message

    stored = Message.objects.count() - options.per_request
    if stored != options.messages:
        raise BenchError(f"{stored} messages stored, expected {options.messages}")
    total = sum(times)
    return {
        "summary": (
            f"POST /api/messages/bulk/ in-process, {options.per_request} per request: "
            f"{round(options.messages / total)} messages/s over {options.messages} messages; "
            f"per request p50 {timing_summary(times)['p50_ms']} ms / p99 {timing_summary(times)['p99_ms']} ms"
        ),
        "messages": options.messages,
        "per_request": options.per_request,
        "requests": len(times),
        "seconds": round(total, 3),
        "messages_per_s": round(options.messages / total, 1),
        "per_request_timing": timing_summary(times),
        "note": "the time of each test-client request (validation, phone parsing, INSERT, serialising the answer); "
        "one untimed warm-up request first",
    }


def add_bulk_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--messages", type=int, default=20_000, help="messages to create in total")
    parser.add_argument("--per-request", type=int, default=1000, help="messages per request")
