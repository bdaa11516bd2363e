"""The reference sender that `python -m bench cluster` measures the paced mode against:
one Python process, asyncio + aiohttp, doing a tick's work with nothing around it.

    python -m bench.baseline --provider-url http://127.0.0.1:8081/ --batch-size 5000 --interval 1 \
        [--concurrency 64] [--result-file out.json]

Every `--interval` seconds it claims up to `--batch-size` due unsent messages
(SELECT ... FOR UPDATE SKIP LOCKED, then an UPDATE to processing with a claim
token and a lease, in one transaction), POSTs each to the provider with the
webhook backend's JSON and headers, `--concurrency` at a time on one aiohttp
connection pool, and records the answers in groups (every 200 results or
0.25 s): the `messages:<messageId>` records in one Redis pipeline, then in one
transaction the UPDATE to sent (under the claim token) and the INSERT of the
attempt rows. It follows the service's pace rule: a due tick is held while a
whole batch is still in flight, and the tick after a held one is counted from
when it was taken. Nothing else: no task queue, no lease renewal, no metrics,
no log line per message. It stops once a claim comes back short and everything
claimed is recorded, and writes what it did as JSON to `--result-file`.

Reads BENCH_DATABASE_URL and BENCH_REDIS_URL (or --database-url, --redis-url).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
import psycopg
import redis.asyncio as aioredis

from bench.common import database_url, redis_url

FLUSH_RESULTS = 200
FLUSH_SECONDS = 0.25
LEASE_SECONDS = 600  # nothing renews it here; long enough for any benchmark
CONNECT_TIMEOUT_SECONDS = 3.05
READ_TIMEOUT_SECONDS = 10.0

CLAIM_SELECT = """
SELECT id FROM messages_app_message
WHERE status = 'unsent' AND next_attempt_at <= now()
ORDER BY next_attempt_at, id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""
CLAIM_UPDATE = """
UPDATE messages_app_message
SET status = 'processing', claimed_at = now(), claim_token = %(token)s,
    lease_expires_at = now() + make_interval(secs => %(lease)s), sending_started_at = now()
WHERE id = ANY(%(ids)s) AND status = 'unsent'
RETURNING id, uuid, recipient_phone_number, content, attempts
"""
MARK_SENT = """
UPDATE messages_app_message AS m
SET status = 'sent', sent_at = %(sent_at)s, provider_message_id = v.pmid, attempts = m.attempts + 1,
    last_error = '', claim_token = NULL, lease_expires_at = NULL, sending_started_at = NULL,
    next_attempt_at = NULL, delivery_cache_pending = %(pending)s
FROM unnest(%(ids)s::bigint[], %(pmids)s::text[]) AS v(id, pmid)
WHERE m.id = v.id AND m.status = 'processing' AND m.claim_token = %(token)s
RETURNING m.id
"""
INSERT_ATTEMPTS = """
INSERT INTO messages_app_deliveryattempt
    (message_id, number, started_at, duration_ms, http_status, outcome, error, provider_message_id{extra_columns})
SELECT v.id, v.number, v.started_at, v.duration_ms, v.http_status, %(outcome)s, v.error, v.pmid{extra_values}
FROM unnest(%(ids)s::bigint[], %(numbers)s::int[], %(started)s::timestamptz[], %(durations)s::int[],
            %(statuses)s::smallint[], %(errors)s::text[], %(pmids)s::text[])
    AS v(id, number, started_at, duration_ms, http_status, error, pmid)
WHERE v.id = ANY(%(moved)s)
"""
MARK_FAILED = """
UPDATE messages_app_message AS m
SET status = 'failed', attempts = m.attempts + 1, last_error = v.error, claim_token = NULL,
    lease_expires_at = NULL, sending_started_at = NULL, next_attempt_at = NULL
FROM unnest(%(ids)s::bigint[], %(errors)s::text[]) AS v(id, error)
WHERE m.id = v.id AND m.status = 'processing' AND m.claim_token = %(token)s
RETURNING m.id
"""


ATTEMPT_COLUMNS = {
    "id",
    "message_id",
    "number",
    "started_at",
    "duration_ms",
    "http_status",
    "outcome",
    "error",
    "provider_message_id",
}
EMPTY_VALUES = {"character varying": "''", "text": "''", "integer": "0", "smallint": "0", "bigint": "0"}


async def insert_attempts_sql(conn) -> str:
    """The attempt INSERT, with the empty value for any NOT NULL column the service added
    to the attempt table since this was written (as its model's blank default would be)."""
    cursor = await conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_name = 'messages_app_deliveryattempt' AND is_nullable = 'NO'"
        " AND column_default IS NULL AND is_identity = 'NO'"
    )
    extra = [(name, kind) for name, kind in await cursor.fetchall() if name not in ATTEMPT_COLUMNS]
    unknown = [name for name, kind in extra if kind not in EMPTY_VALUES]
    if unknown:
        raise SystemExit(f"messages_app_deliveryattempt has NOT NULL columns the baseline cannot fill: {unknown}")
    return INSERT_ATTEMPTS.format(
        extra_columns="".join(f", {name}" for name, _ in extra),
        extra_values="".join(f", {EMPTY_VALUES[kind]}" for _, kind in extra),
    )


@dataclass
class Claimed:
    id: int
    uuid: uuid.UUID
    to: str
    content: str
    attempts: int
    token: uuid.UUID


@dataclass
class Answer:
    message: Claimed
    started_at: datetime
    duration_ms: int
    http_status: int | None
    message_id: str = ""
    error: str = ""


@dataclass
class Totals:
    started_at: float = 0.0
    ticks: int = 0
    held_ticks: int = 0  # due ticks that waited because a whole batch was in flight
    behind_seconds_max: float = 0.0
    claimed: int = 0
    sent: int = 0
    failed: int = 0
    lost: int = 0  # answered, but no longer ours to record (never expected here)
    flushes: int = 0
    cache_errors: int = 0
    claim_ms: list[float] = field(default_factory=list)
    flush_ms: list[float] = field(default_factory=list)


class Baseline:
    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.totals = Totals()
        self.queue: asyncio.Queue[Claimed | None] = asyncio.Queue()
        self.answers: list[Answer] = []
        self.in_flight = 0  # claimed and not yet recorded
        self.recorded = asyncio.Event()  # set after every flush: a held tick looks again
        self.answered = asyncio.Event()
        self.claiming_done = False
        self.insert_attempts = INSERT_ATTEMPTS

    async def run(self) -> Totals:
        options = self.options
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if options.auth_key:
            headers["x-ins-auth-key"] = options.auth_key
        timeout = aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT_SECONDS, sock_read=READ_TIMEOUT_SECONDS)
        connector = aiohttp.TCPConnector(limit=options.concurrency)
        async with (
            await psycopg.AsyncConnection.connect(options.database_url, autocommit=True) as claim_conn,
            await psycopg.AsyncConnection.connect(options.database_url, autocommit=True) as record_conn,
            aiohttp.ClientSession(connector=connector, headers=headers, timeout=timeout) as session,
        ):
            cache = aioredis.from_url(options.redis_url)
            self.insert_attempts = await insert_attempts_sql(record_conn)
            try:
                await cache.ping()
                self.totals.started_at = time.time()
                senders = [asyncio.create_task(self.sender(session)) for _ in range(options.concurrency)]
                recorder = asyncio.create_task(self.recorder(record_conn, cache))
                pacer = asyncio.create_task(self.pace(claim_conn))
                # The recorder failing (a write refused) would leave the pacer waiting for ever.
                await asyncio.wait({pacer, recorder}, return_when=asyncio.FIRST_COMPLETED)
                if recorder.done():
                    pacer.cancel()
                    recorder.result()  # raises what stopped it
                    raise RuntimeError("the recorder stopped before the pacer")
                pacer.result()
                for _ in senders:
                    self.queue.put_nowait(None)
                await asyncio.gather(*senders)
                self.claiming_done = True
                self.answered.set()
                await recorder
            finally:
                await cache.aclose()
        return self.totals

    async def pace(self, conn) -> None:
        """Take a tick every interval; hold a due tick while a whole batch is in flight."""
        options = self.options
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while True:
            now = loop.time()
            if now < next_tick:
                await asyncio.sleep(next_tick - now)
                continue
            if self.in_flight >= options.batch_size:
                self.totals.held_ticks += 1
                self.recorded.clear()
                while self.in_flight >= options.batch_size:
                    await self.recorded.wait()
                    self.recorded.clear()
                taken = loop.time()
                self.totals.behind_seconds_max = max(self.totals.behind_seconds_max, taken - next_tick)
                next_tick = taken + options.interval  # no burst for the time lost
            else:
                next_tick += options.interval
            rows = await self.claim(conn)
            self.totals.ticks += 1
            if len(rows) < options.batch_size:
                # The queue is empty: what is claimed is the last; wait for it to be recorded.
                while self.in_flight:
                    self.recorded.clear()
                    await self.recorded.wait()
                return

    async def claim(self, conn) -> list[Claimed]:
        started = time.perf_counter()
        token = uuid.uuid4()
        async with conn.transaction():
            cursor = await conn.execute(CLAIM_SELECT, {"limit": self.options.batch_size})
            ids = [row[0] for row in await cursor.fetchall()]
            rows = []
            if ids:
                cursor = await conn.execute(CLAIM_UPDATE, {"token": token, "lease": LEASE_SECONDS, "ids": ids})
                rows = await cursor.fetchall()
        self.totals.claim_ms.append((time.perf_counter() - started) * 1000)
        claimed = sorted((Claimed(r[0], r[1], r[2], r[3], r[4], token) for r in rows), key=lambda c: c.id)
        self.in_flight += len(claimed)
        self.totals.claimed += len(claimed)
        for message in claimed:
            self.queue.put_nowait(message)
        return claimed

    async def sender(self, session: aiohttp.ClientSession) -> None:
        url = self.options.provider_url
        while (message := await self.queue.get()) is not None:
            started_at = datetime.now(UTC)
            started = time.monotonic()
            status: int | None = None
            message_id = error = ""
            try:
                async with session.post(
                    url,
                    json={"to": message.to, "content": message.content},
                    headers={"Idempotency-Key": str(message.uuid)},
                ) as response:
                    status = response.status
                    body = await response.read()
                if 200 <= status < 300:
                    data = json.loads(body)
                    message_id = data.get("messageId") if isinstance(data, dict) else None
                    if not isinstance(message_id, str) or not message_id:
                        message_id, error = "", f"HTTP {status} without a messageId"
                else:
                    error = f"HTTP {status}: {body[:200]!r}"
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            duration_ms = int((time.monotonic() - started) * 1000)
            self.answers.append(Answer(message, started_at, duration_ms, status, message_id, error))
            if len(self.answers) >= FLUSH_RESULTS:
                self.answered.set()

    async def recorder(self, conn, cache) -> None:
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self.answered.wait(), FLUSH_SECONDS)
            self.answered.clear()
            answers, self.answers = self.answers, []
            if answers:
                await self.record(conn, cache, answers)
            elif self.claiming_done:
                return

    async def record(self, conn, cache, answers: list[Answer]) -> None:
        started = time.perf_counter()
        ok = [a for a in answers if a.message_id]
        bad = [a for a in answers if not a.message_id]
        sent_at = datetime.now(UTC)
        pending = False
        if ok:
            try:
                async with cache.pipeline(transaction=False) as pipe:
                    for a in ok:
                        record = json.dumps({"messageId": a.message_id, "timestamp": int(sent_at.timestamp())})
                        pipe.set(f"messages:{a.message_id}", record)
                    await pipe.execute()
            except Exception:  # as in the service, a cache failure never fails a delivery
                self.totals.cache_errors += 1
                pending = True
        by_token: dict[uuid.UUID, list[Answer]] = {}
        for a in ok:
            by_token.setdefault(a.message.token, []).append(a)
        async with conn.transaction():
            for token, group in by_token.items():
                ids = [a.message.id for a in group]
                pmids = [a.message_id for a in group]
                cursor = await conn.execute(
                    MARK_SENT, {"sent_at": sent_at, "pending": pending, "ids": ids, "pmids": pmids, "token": token}
                )
                moved = [row[0] for row in await cursor.fetchall()]
                await conn.execute(
                    self.insert_attempts,
                    {
                        "outcome": "sent",
                        "ids": ids,
                        "numbers": [a.message.attempts + 1 for a in group],
                        "started": [a.started_at for a in group],
                        "durations": [a.duration_ms for a in group],
                        "statuses": [a.http_status for a in group],
                        "errors": ["" for _ in group],
                        "pmids": pmids,
                        "moved": moved,
                    },
                )
                self.totals.sent += len(moved)
                self.totals.lost += len(group) - len(moved)
            for a in bad:
                cursor = await conn.execute(
                    MARK_FAILED, {"ids": [a.message.id], "errors": [a.error], "token": a.message.token}
                )
                self.totals.failed += len(await cursor.fetchall())
        self.totals.flushes += 1
        self.totals.flush_ms.append((time.perf_counter() - started) * 1000)
        self.in_flight -= len(answers)
        self.recorded.set()


def _ms(values: list[float]) -> dict:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}
    return {
        "n": len(ordered),
        "p50_ms": round(ordered[len(ordered) // 2], 2),
        "max_ms": round(ordered[-1], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline", description=__doc__.splitlines()[0])
    parser.add_argument("--provider-url", required=True)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight at once")
    parser.add_argument("--auth-key", default="", help="sent as x-ins-auth-key when given")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--result-file", default=None, help="write the totals here as JSON (else stdout)")
    options = parser.parse_args(argv)
    options.database_url = options.database_url or database_url()
    options.redis_url = options.redis_url or redis_url()
    totals = asyncio.run(Baseline(options).run())
    result = {
        "started_at": totals.started_at,
        "ticks": totals.ticks,
        "held_ticks": totals.held_ticks,
        "behind_seconds_max": round(totals.behind_seconds_max, 3),
        "claimed": totals.claimed,
        "sent": totals.sent,
        "failed": totals.failed,
        "lost": totals.lost,
        "flushes": totals.flushes,
        "cache_errors": totals.cache_errors,
        "claim": _ms(totals.claim_ms),
        "flush": _ms(totals.flush_ms),
    }
    text = json.dumps(result)
    if options.result_file:
        with open(options.result_file, "w") as out:
            out.write(text)
    else:
        print(text)
    return 0 if totals.failed == 0 and totals.lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
