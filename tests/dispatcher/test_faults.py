"""Delivery guarantees under faults, with real processes: qclusters, the fake provider, PostgreSQL
(the shared one, and a private one to restart) and a private Redis.

The dispatcher under test: a dispatch window (a django-q2 task) paces the ticks; each tick claims its
messages and hands them out as chunk tasks that any worker of any qcluster runs; a chunk renews its
short lease while it sends (DISPATCH_LEASE_SECONDS) and the window returns expired leases to the queue
every few seconds (dispatcher.engine.pacing.UPKEEP_SECONDS).

Each test injects one fault (a cluster killed, a chunk task lost, PostgreSQL restarted, a lease lost,
every cluster told to stop, a chunk longer than its task may run, a message deleted in flight, a host
whose clock runs fast, provider errors, Redis down, database connections cut, a stop during a batch)
and checks that no message is lost, none is stuck in `processing`, and every repeated request
carries the Idempotency-Key the provider had already seen. Each prints its figures on a
`FAULT-FIGURES` line; docs/RELIABILITY.md quotes them.

Figures:
  messages             messages the test queued
  lost                 messages that did not end as the test expects (sent, or failed with the reason)
  duplicate_requests   provider requests repeating an Idempotency-Key already sent (retries, re-sends)
  dropped_by_provider  repeats of an already accepted key, which the provider answered without delivering again
"""

from __future__ import annotations

import io
import re
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timedelta

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.db.models import Count, Max, Min
from django.utils import timezone
from django_q.models import OrmQ, Schedule

from dispatcher.engine import pacing, pipeline, recording
from dispatcher.engine.claiming import claim_batch
from dispatcher.engine.providers import locmem
from dispatcher.schedule import (
    DISPATCH_SCHEDULE_NAME,
    SEND_CHUNK_TASK,
    dispatcher_schedule_ensure,
    enqueue_chunk,
    enqueue_dispatch_window,
)
from dispatcher.state import WINDOW_LOST_AFTER, dispatcher_configure, dispatcher_start, dispatcher_stop
from messages_app.models import DeliveryAttempt, Message
from messages_app.transitions import database_now
from tests.factories import phone_number
from tests.processes import (
    child_env,
    drain,
    fake_provider,
    logs_of,
    manage,
    private_postgres,
    provider_faults,
    provider_requests,
    provider_stats,
    qcluster_running,
    qclusters_running,
    redis_server,
    terminate_database_backends,
    wait_for,
    wait_for_log,
)

Status = Message.Status

pytestmark = [pytest.mark.process, pytest.mark.django_db(transaction=True)]

# Every dispatcher process the tests start: the fake provider, short leases and fast retries, and a
# dispatch window longer than any test (windows are started by the tests, not by the minute schedule).
WEBHOOK_TIMEOUT_SECONDS = 2
# Short, so a dead worker's messages come back within seconds; renewed every third of it.
LEASE_SECONDS = 6
# Two sends at a time, so a chunk of five has sends in flight and sends not yet started.
CONCURRENCY = 2
CHUNK_SIZE = 5
UPKEEP_SECONDS = pacing.UPKEEP_SECONDS


def dispatcher_env(provider_url: str, **overrides: str) -> dict[str, str]:
    env = {
        "DISPATCH_PROVIDER_BACKEND": "webhook",
        "WEBHOOK_URL": provider_url,
        "WEBHOOK_TIMEOUT_SECONDS": str(WEBHOOK_TIMEOUT_SECONDS),
        "DISPATCH_LEASE_SECONDS": str(LEASE_SECONDS),
        "DISPATCH_CONCURRENCY": str(CONCURRENCY),
        "DISPATCH_CHUNK_SIZE": str(CHUNK_SIZE),
        "DISPATCH_MAX_ATTEMPTS": "5",
        "DISPATCH_RETRY_BASE_SECONDS": "0.2",
        "DISPATCH_RETRY_MAX_SECONDS": "2",
        "DISPATCH_WINDOW_SECONDS": "150",
        "QCLUSTER_WORKERS": "2",
    }
    env.update(overrides)
    return env


@pytest.fixture
def stopped_dispatcher():
    """Every test starts stopped, with no schedule and an empty task queue, so nothing is sent before
    it starts the dispatcher and every window is one it started."""
    dispatcher_stop()
    Schedule.objects.all().delete()  # `migrate` (and each flush) recreates the minute schedule
    OrmQ.objects.all().delete()
    yield
    dispatcher_stop()  # a stopped dispatcher ends any window at once, so clusters stop quickly


@pytest.fixture
def figures(capsys):
    """figures(name, messages=..., lost=..., duplicate_requests=..., dropped_by_provider=..., **more): print them."""

    def report(name: str, **values: object) -> None:
        line = "FAULT-FIGURES " + name + " " + " ".join(f"{key}={value}" for key, value in values.items())
        with capsys.disabled():
            print(f"\n{line}")

    return report


def make_messages(n: int, label: str = "fault") -> list[Message]:
    Message.objects.bulk_create(
        [Message(recipient_phone_number=phone_number(), content=f"{label} message {i}") for i in range(n)],
        batch_size=1000,
    )
    return list(Message.objects.order_by("id"))


def count(*statuses: str) -> int:
    return Message.objects.filter(status__in=statuses).count()


def status_counts() -> dict[str, int]:
    return dict(Message.objects.order_by().values_list("status").annotate(n=Count("id")))


def wait_or_fail(predicate, *, timeout: float, what: str, processes=(), interval: float = 0.1, counts=None) -> None:
    try:
        wait_for(predicate, timeout=timeout, interval=interval, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; messages: {(counts or status_counts)()}\n{logs_of(*processes)}") from None


def repeats(received: list[dict]) -> int:
    """Requests beyond the first for each Idempotency-Key."""
    keys = Counter(r["idempotency_key"] for r in received)
    return sum(keys.values()) - len(keys)


def repeated_keys(received: list[dict]) -> set[str]:
    return {key for key, n in Counter(r["idempotency_key"] for r in received).items() if n > 1}


def check_idempotency(received: list[dict], messages: list[Message], logs: str = "") -> None:
    """Every request names its message by uuid, and each message was accepted once with the id it keeps."""
    uuids = {str(m.uuid) for m in messages}
    assert all(r["idempotency_key"] in uuids for r in received), f"a request without its message's key\n{logs}"
    accepted: dict[str, list[str]] = defaultdict(list)  # key -> messageIds of requests it delivered
    answered: dict[str, set[str]] = defaultdict(set)  # key -> every messageId it was answered with
    for r in received:
        if 200 <= r["status"] < 300 and r["message_id"]:
            answered[r["idempotency_key"]].add(r["message_id"])
            if not r["duplicate"]:
                accepted[r["idempotency_key"]].append(r["message_id"])
    assert all(len(ids) == 1 for ids in accepted.values()), f"a key delivered twice: {dict(accepted)}\n{logs}"
    assert all(len(ids) == 1 for ids in answered.values()), f"one key, several messageIds: {dict(answered)}\n{logs}"
    for message in messages:
        if message.status == Status.SENT:
            assert answered[str(message.uuid)] == {message.provider_message_id}, (
                f"message {message.pk} keeps {message.provider_message_id!r}, "
                f"provider answered {answered[str(message.uuid)]}\n{logs}"
            )


NOT_COUNTED = {DeliveryAttempt.Outcome.RELEASED, DeliveryAttempt.Outcome.DEFERRED}


def check_attempt_log(messages: list[Message], logs: str = "", attempt_rows=None) -> None:
    """Each counted attempt has its DeliveryAttempt row, numbered 1..attempts, and a sent message's last
    row is its `sent` one, with the messageId it keeps. (A `released` or `deferred` row, a message given back
    by a stopping worker or held back while its provider throttles, does not count as an attempt.)

    `attempt_rows` (DeliveryAttempt instances, in id order) stand for the test database's rows when the
    messages live in another database."""
    if attempt_rows is None:
        attempt_rows = DeliveryAttempt.objects.order_by("message_id", "id")
    rows: dict[int, list[DeliveryAttempt]] = defaultdict(list)
    for attempt in attempt_rows:
        if attempt.outcome not in NOT_COUNTED:
            rows[attempt.message_id].append(attempt)
    for message in messages:
        tries = rows[message.pk]
        summary = [(a.number, a.outcome) for a in tries]
        assert [a.number for a in tries] == list(range(1, message.attempts + 1)), (
            f"message {message.pk} ({message.status}, attempts={message.attempts}) has attempt rows {summary}\n{logs}"
        )
        if message.status == Status.SENT:
            assert tries[-1].outcome == "sent", (message.pk, summary)
            assert tries[-1].provider_message_id == message.provider_message_id, (message.pk, summary)


def chunk_tasks_running(process) -> int:
    """Chunk tasks a qcluster's workers have begun and its monitor has not yet reported done (from its log)."""
    log = process.log()
    begun = log.count("processing send ")
    ended = log.count("Processed 'dispatcher.tasks.send_chunk'") + log.count("Failed 'dispatcher.tasks.send_chunk'")
    return begun - ended


def logged_at(process, text: str) -> list[datetime]:
    """When the process logged lines containing `text` (local time, as its log and datetime.now() show it)."""
    return [datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f") for line in process.log().splitlines() if text in line]


def seconds_since_last_chunk_began(process) -> float | None:
    """How long ago a worker of this qcluster last began a chunk task, from its log."""
    began = logged_at(process, "processing send ")
    return (datetime.now() - began[-1]).total_seconds() if began else None


def last_chunk_is_sending(process) -> bool:
    """Whether the messages of the chunk task this qcluster last began (from its log: "processing send
    N messages (first..last)") are marked started in the database: a worker's first chunk spends a
    moment creating its providers after the log line, before any send."""
    began = [line for line in process.log().splitlines() if "processing send " in line]
    found = re.search(r"\((\d+)\.\.(\d+)\)", began[-1]) if began else None
    if found is None:
        return False
    first, last = int(found[1]), int(found[2])
    return Message.objects.filter(
        pk__range=(first, last), status=Status.PROCESSING, sending_started_at__isnull=False
    ).exists()


def queued_chunk_message_ids() -> set[int]:
    """The messages of chunk tasks still in django-q2's queue: not yet taken, or taken by a cluster that
    never ran them."""
    from django_q.signing import SignedPackage

    ids: set[int] = set()
    for payload in OrmQ.objects.values_list("payload", flat=True):
        task = SignedPackage.loads(payload)
        if task["func"] == SEND_CHUNK_TASK:
            ids.update(task["args"][0])
    return ids


def paces(process) -> bool:
    """Whether a dispatch window runs in this qcluster (from its log)."""
    return " opened for " in process.log()


# --- 1. one of four qclusters killed in mid-chunk ------------------------------------------------


def test_sigkill_of_one_of_four_qclusters_loses_nothing_and_repeats_at_most_one_chunk(
    tmp_path, stopped_dispatcher, figures
):
    # Enough chunks that, on a busy machine too, some cluster is caught in mid-chunk.
    total, chunk = 192, 12
    make_messages(total, "sigkill")
    dispatcher_configure(batch_size=2 * chunk, interval_seconds=1)

    with fake_provider(tmp_path, "--latency-ms", "300") as provider:
        env = dispatcher_env(provider.url, DISPATCH_CHUNK_SIZE=str(chunk))
        names = ["cluster-a", "cluster-b", "cluster-c", "cluster-d"]
        with qclusters_running(tmp_path, names, **env) as clusters:
            processes = (*clusters, provider)
            dispatcher_start()
            victims: list = []

            def a_cluster_in_mid_chunk() -> bool:
                # Not the one pacing (its window would have to wait for the next schedule), and with a chunk
                # begun 0.2 to 1.5 s ago: its sends are under way and far from done (a chunk takes 12 x 0.3 s / 2
                # = 1.8 s).
                if count(Status.SENT) < chunk:
                    return False
                victims[:] = [
                    c
                    for c in clusters
                    if not paces(c)
                    and chunk_tasks_running(c) > 0
                    and 0.2 <= (seconds_since_last_chunk_began(c) or 0) <= 1.5
                    and last_chunk_is_sending(c)
                ]
                return bool(victims)

            wait_or_fail(
                a_cluster_in_mid_chunk, timeout=60, what="a cluster in mid-chunk", processes=processes, interval=0.05
            )
            victim = victims[0]
            victim.signal_group(signal.SIGKILL)  # the main process and all its workers, no goodbyes
            victim.popen.wait(10)
            killed_at, killed_at_local = timezone.now(), datetime.now()
            time.sleep(0.3)  # PostgreSQL rolls back whatever the dead connections had open
            # What was claimed at the kill: the dead cluster's part of it is never renewed again.
            at_kill = {
                pk: (claimed_at, lease, started)
                for pk, claimed_at, lease, started in Message.objects.filter(status=Status.PROCESSING).values_list(
                    "pk", "claimed_at", "lease_expires_at", "sending_started_at"
                )
            }
            sent_at_kill = count(Status.SENT)

            wait_or_fail(
                lambda: count(Status.SENT) == total,
                timeout=60,
                what="every message sent after the kill",
                processes=processes,
            )
            received = provider_requests(provider.url)
            stats = provider_stats(provider.url)
            logs = logs_of(*processes)
            recovered_at = [t for c in clusters for t in logged_at(c, "with expired leases") if t > killed_at_local]

    final = list(Message.objects.order_by("id"))
    by_pk = {m.pk: m for m in final}
    pk_of = {str(m.uuid): m.pk for m in final}
    assert count(Status.PROCESSING) == 0, logs
    assert all(m.status == Status.SENT for m in final), logs
    check_idempotency(received, final, logs)
    check_attempt_log(final, logs)

    # The dead cluster's chunks: messages it had begun sending came back through their lease (a
    # `lease_expired` attempt row); messages of chunks it had taken but not begun came back without
    # spending an attempt. Both were claimed anew after the kill.
    orphaned = set(DeliveryAttempt.objects.filter(outcome="lease_expired").values_list("message_id", flat=True))
    assert orphaned, f"the kill hit no chunk in mid-send\n{logs}"
    assert orphaned <= set(at_kill), logs
    never_started = {
        pk for pk, (claimed_at, _, started) in at_kill.items() if started is None and by_pk[pk].claimed_at != claimed_at
    }
    assert all(by_pk[pk].attempts == 2 for pk in orphaned), logs
    assert all(by_pk[pk].attempts == 1 for pk in set(by_pk) - orphaned), logs

    # Repeats: only messages the dead cluster was sending, at most one chunk's worth, each one the
    # provider recognised by its key and answered without delivering again.
    repeated = repeats(received)
    assert {pk_of[key] for key in repeated_keys(received)} <= orphaned, logs
    assert repeated <= chunk, f"{repeated} repeats\n{logs}"
    assert stats["duplicates_dropped"] == repeated, stats

    # They were not sent again before their lease ran out. They were back in the queue within a lease and
    # an upkeep of the kill, and sent soon after (behind any messages due before them).
    resent_at = dict(
        DeliveryAttempt.objects.filter(message_id__in=orphaned, outcome="sent").values_list("message_id", "started_at")
    )
    for pk in orphaned:
        lease = at_kill[pk][1]
        assert resent_at[pk] >= lease - timedelta(seconds=0.2), f"message {pk} re-sent before its lease ran out"
    assert recovered_at, f"no lease recovered after the kill\n{logs}"
    back_in_queue_after = (max(recovered_at) - killed_at_local).total_seconds()
    assert back_in_queue_after <= LEASE_SECONDS + UPKEEP_SECONDS + 1, f"{back_in_queue_after:.1f} s\n{logs}"
    back_after = max((resent_at[pk] - killed_at).total_seconds() for pk in orphaned)
    # Sent within a further 15 s: behind the messages queued before them at 300 ms each, on a
    # 2-core machine that may be busy with other work (8 s was missed once by 0.4 s under load).
    assert back_after <= LEASE_SECONDS + UPKEEP_SECONDS + 15, f"re-sent {back_after:.1f} s after the kill\n{logs}"

    figures(
        "sigkill_one_of_four_clusters",
        messages=total,
        lost=total - count(Status.SENT),
        duplicate_requests=repeated,
        dropped_by_provider=stats["duplicates_dropped"],
        sent_before_kill=sent_at_kill,
        processing_at_kill=len(at_kill),
        dead_cluster_sending=len(orphaned),
        dead_cluster_not_started=len(never_started),
        back_in_queue_within_s=f"{back_in_queue_after:.1f}",
        resent_within_s=f"{back_after:.1f}",
    )


# --- 2. a chunk task lost before any worker started it ---------------------------------------------


def test_a_chunk_task_lost_before_it_started_comes_back_without_spending_an_attempt(
    tmp_path, stopped_dispatcher, settings, figures
):
    settings.DISPATCHER = {**settings.DISPATCHER, "LEASE_SECONDS": LEASE_SECONDS}  # this process claims
    total = 12
    make_messages(total, "lost-task")
    # Four a tick: the three held by the lost task do not hold the pace (a whole batch in flight would).
    dispatcher_configure(batch_size=4, interval_seconds=1)

    with fake_provider(tmp_path) as provider, qcluster_running(tmp_path, **dispatcher_env(provider.url)) as cluster:
        processes = (cluster, provider)
        # A claimed chunk whose task is lost before any worker starts it (the worker that took it died,
        # or the queue lost it): here it is enqueued, then vanishes before the cluster can see it.
        with transaction.atomic():
            lost = claim_batch(batch_size=3)
            enqueue_chunk(message_ids=lost.message_ids, claim_token=lost.claim_token)
            assert OrmQ.objects.count() == 1
            OrmQ.objects.all().delete()
        leased_until = dict(Message.objects.filter(pk__in=lost.message_ids).values_list("pk", "lease_expires_at"))
        claimed_at = dict(Message.objects.filter(pk__in=lost.message_ids).values_list("pk", "claimed_at"))
        dispatcher_start()
        wait_or_fail(
            lambda: count(Status.SENT) == total - len(lost.message_ids),
            timeout=30,
            what="the others sent while the lost ones wait for their lease",
            processes=processes,
        )
        still_held = count(Status.PROCESSING)
        wait_or_fail(
            lambda: count(Status.SENT) == total,
            timeout=LEASE_SECONDS + UPKEEP_SECONDS + 20,
            what="the lost chunk's messages sent",
            processes=processes,
        )
        received = provider_requests(provider.url)
        stats = provider_stats(provider.url)
        logs = logs_of(*processes)

    final = list(Message.objects.order_by("id"))
    check_idempotency(received, final, logs)
    check_attempt_log(final, logs)
    assert still_held == len(lost.message_ids), logs
    # Back without spending an attempt: each message's only attempt row is its send, number 1.
    assert all(m.status == Status.SENT and m.attempts == 1 for m in final), logs
    assert not DeliveryAttempt.objects.exclude(outcome="sent").exists(), logs
    assert "never started" in cluster.log(), logs
    sent_at = dict(
        DeliveryAttempt.objects.filter(message_id__in=lost.message_ids).values_list("message_id", "started_at")
    )
    for pk in lost.message_ids:
        assert sent_at[pk] >= leased_until[pk], f"message {pk} sent before its lost lease ran out"
        assert Message.objects.get(pk=pk).claimed_at > claimed_at[pk]  # claimed anew, by a tick
    assert repeats(received) == 0
    back_after = max((sent_at[pk] - leased_until[pk]).total_seconds() for pk in lost.message_ids)
    assert back_after <= UPKEEP_SECONDS + 5, logs

    figures(
        "chunk_task_lost",
        messages=total,
        lost=sum(1 for m in final if m.status != Status.SENT),
        duplicate_requests=repeats(received),
        dropped_by_provider=stats["duplicates_dropped"],
        lost_task_messages=len(lost.message_ids),
        others_sent_meanwhile=total - len(lost.message_ids),
        sent_after_lease_s=f"{back_after:.1f}",
    )


# --- 3. PostgreSQL restarted mid-run ---------------------------------------------------------------

# Run by `manage.py shell -c` against the private server: queue the messages and start the dispatcher
# (a stop first, so that the start enqueues a window; no minute schedule).
QUEUE_AND_START = """
from django_q.models import Schedule
from dispatcher.state import dispatcher_configure, dispatcher_start, dispatcher_stop
from messages_app.models import Message
Schedule.objects.all().delete()
dispatcher_stop()
Message.objects.bulk_create(
    [Message(recipient_phone_number=f"+90555{{4000000 + i:07d}}", content=f"pg restart {{i}}") for i in range({total})]
)
dispatcher_configure(batch_size={batch_size}, interval_seconds=1)
dispatcher_start()
"""


class PrivateDatabase:
    """Reads the private server's messages and attempt rows with psycopg (a fresh connection each
    time, so that a restart in between does not matter), as model instances that are never saved."""

    def __init__(self, server, name: str) -> None:
        self.server, self.name = server, name

    def rows(self, query: str, *params: object) -> list[tuple]:
        from psycopg import sql

        tables = {"messages": sql.Identifier(Message._meta.db_table)}
        tables["attempts"] = sql.Identifier(DeliveryAttempt._meta.db_table)
        with self.server.connect(self.name) as conn:
            return conn.execute(sql.SQL(query).format(**tables), params).fetchall()

    def status_counts(self) -> dict[str, int]:
        return dict(self.rows("SELECT status, count(*) FROM {messages} GROUP BY status"))

    def count(self, status: str) -> int:
        return self.status_counts().get(status, 0)

    def uuids(self, status: str) -> set[str]:
        return {str(u) for (u,) in self.rows("SELECT uuid FROM {messages} WHERE status = %s", status)}

    def messages(self) -> list[Message]:
        query = "SELECT id, uuid, status, provider_message_id, attempts, sent_at FROM {messages} ORDER BY id"
        return [
            Message(pk=pk, uuid=u, status=s, provider_message_id=p, attempts=a, sent_at=t)
            for pk, u, s, p, a, t in self.rows(query)
        ]

    def attempts(self) -> list[DeliveryAttempt]:
        query = "SELECT message_id, number, outcome, provider_message_id FROM {attempts} ORDER BY message_id, id"
        return [
            DeliveryAttempt(message_id=m, number=n, outcome=o, provider_message_id=p) for m, n, o, p in self.rows(query)
        ]


def test_postgresql_restarted_mid_run_the_cluster_recovers_by_itself(tmp_path, figures):
    # Chunks of ten at 0.5 s a send, two at a time: 2.5 s each, so a restart finds sends in flight and
    # lease renewals (every 2 s) to come.
    total, batch_size, down = 60, 10, 2
    with private_postgres() as server:
        url = server.create_database("messaging_faults")
        migrated = manage(["migrate", "--noinput"], env=child_env(DATABASE_URL=url), timeout=120)
        assert migrated.returncode == 0, migrated.stdout
        db = PrivateDatabase(server, "messaging_faults")

        with fake_provider(tmp_path, "--latency-ms", "500") as provider:
            env = dispatcher_env(provider.url, DATABASE_URL=url, DISPATCH_CHUNK_SIZE=str(batch_size))
            with qcluster_running(tmp_path, **env) as cluster:
                processes = (cluster, provider)
                queued = manage(
                    ["shell", "-c", QUEUE_AND_START.format(total=total, batch_size=batch_size)], env=child_env(**env)
                )
                assert queued.returncode == 0, queued.stdout
                wait_or_fail(
                    lambda: db.count(Status.SENT) >= 10 and db.count(Status.PROCESSING) >= 1,
                    timeout=30,
                    what="sending under way",
                    processes=processes,
                    counts=db.status_counts,
                )
                exposed = db.uuids(Status.PROCESSING)
                sent_before = db.count(Status.SENT)
                started = time.monotonic()
                # Stopped with -m fast (every connection cut, whatever was open rolled back), down for
                # two seconds, started again.
                server.restart(down_seconds=down)
                restart_took = time.monotonic() - started
                exposed |= db.uuids(Status.PROCESSING)
                wait_or_fail(
                    lambda: db.count(Status.SENT) == total,
                    timeout=60,
                    what="every message sent after the restart",
                    processes=processes,
                    counts=db.status_counts,
                )
                recovered_in = time.monotonic() - started
                assert cluster.popen.poll() is None, f"qcluster died\n{logs_of(*processes)}"
                received = provider_requests(provider.url)
                stats = provider_stats(provider.url)
                logs = logs_of(*processes) + f"\n--- postgres.log:\n{server.log()}"
            final = db.messages()
            attempt_rows = db.attempts()

    assert db_status_summary(final) == {Status.SENT: total}, logs
    check_idempotency(received, final, logs)
    check_attempt_log(final, logs, attempt_rows=attempt_rows)
    # Only what was in flight at the restart may have been sent twice, and never delivered twice.
    assert repeated_keys(received) <= exposed, logs
    assert stats["duplicates_dropped"] == repeats(received), stats
    assert all(m.sent_at is not None for m in final)

    figures(
        "postgresql_restarted",
        messages=total,
        lost=total - sum(1 for m in final if m.status == Status.SENT),
        duplicate_requests=repeats(received),
        dropped_by_provider=stats["duplicates_dropped"],
        sent_before_restart=sent_before,
        in_flight_at_restart=len(exposed),
        down_s=f"{restart_took:.1f}",
        all_sent_after_s=f"{recovered_in:.1f}",
        ticks_failed=logs.count("tick failed"),
        outcome_writes_failed=logs.count("could not record the outcome"),
        leases_lost=logs.count("this worker writes no outcome"),
        cluster_processes_reincarnated=logs.count("reincarnated"),
    )


def db_status_summary(messages: list[Message]) -> dict[str, int]:
    return dict(Counter(m.status for m in messages))


# --- 4. a lease renewal that fails: no outcome written ---------------------------------------------


class TakesLongAndLosesTheLease(locmem.LocmemProvider):
    """Each send takes `seconds`; the first one, as it starts, lets the chunk's lease pass to another
    claim (`take_over`) or makes the next renewals fail (`break_renewals`)."""

    def __init__(self, *, seconds: float, fault) -> None:
        super().__init__()
        self.seconds = seconds
        self.fault = fault
        self.calls = 0
        self._lock = threading.Lock()

    def send(self, message):
        with self._lock:
            self.calls += 1
            first = self.calls == 1
        if first:
            self.fault()
        time.sleep(self.seconds)
        return super().send(message)


@pytest.mark.parametrize("fault", ["taken_over", "renewal_fails"])
def test_a_chunk_that_loses_its_lease_writes_no_outcome(stopped_dispatcher, settings, monkeypatch, figures, fault):
    settings.DISPATCHER = {**settings.DISPATCHER, "LEASE_SECONDS": 1, "CONCURRENCY": 2}  # renewed every 0.33 s
    total = 6
    make_messages(total, "lease-lost")
    with transaction.atomic():
        claim = claim_batch(batch_size=total)
    other_token = uuid.uuid4()
    taken_over: dict[int, object] = {}

    def take_over() -> None:
        # What a recovery and a new claim elsewhere would leave: the rows held by another token.
        Message.objects.filter(pk__in=claim.message_ids).update(
            claim_token=other_token, lease_expires_at=database_now() + timedelta(minutes=5)
        )
        taken_over.update(Message.objects.values_list("pk", "lease_expires_at"))

    def break_renewals() -> None:
        def renewal_fails(**kwargs):
            raise ConnectionError("the database is unreachable")

        monkeypatch.setattr("dispatcher.engine.leases.messages_renew_lease", renewal_fails)

    provider = TakesLongAndLosesTheLease(seconds=0.6, fault=take_over if fault == "taken_over" else break_renewals)
    report = pipeline.send_chunk(message_ids=claim.message_ids, claim_token=claim.claim_token, provider=provider)
    rows = list(Message.objects.order_by("id"))

    assert report.lease_lost
    assert not [o for o in report.outcomes if o.outcome != recording.LOST], report.outcomes
    assert report.released == 0
    # The worker wrote nothing: no status, no attempt row, no delivery record.
    assert all(m.status == Status.PROCESSING and m.sent_at is None and m.attempts == 0 for m in rows)
    assert not DeliveryAttempt.objects.exists()
    if fault == "taken_over":
        # The other claim's state is as it left it.
        assert all(m.claim_token == other_token for m in rows)
        assert {m.pk: m.lease_expires_at for m in rows} == taken_over
    else:
        # Still held under its own token and not released: it comes back when the lease runs out.
        assert all(m.claim_token == claim.claim_token for m in rows)
    # It stopped starting sends once it knew: the sends in flight, and no more.
    sends = len(locmem.outbox)
    assert sends <= 2 * CONCURRENCY, sends

    figures(
        f"lease_lost_{fault}",
        messages=total,
        lost=0,
        duplicate_requests=0,
        dropped_by_provider=0,
        sends_before_it_stopped=sends,
        outcomes_written=0,
    )


# A renewal that happens while a group of outcomes is being written must not count as a lost lease.


class SlowMetrics:
    """metrics_record_batch, slowed down: the cache (Redis) answering slowly after an outcome write."""

    def __init__(self, real, seconds: float) -> None:
        self.real, self.seconds = real, seconds

    def __call__(self, **kwargs):
        time.sleep(self.seconds)
        return self.real(**kwargs)


class Slow(locmem.LocmemProvider):
    def send(self, message):
        time.sleep(0.3)
        return super().send(message)


def test_a_renewal_during_an_outcome_write_is_not_a_lost_lease(stopped_dispatcher, settings, monkeypatch, figures):
    # Renewed every second, each renewal likely to fall in one of the 0.5 s writes. (With a 1 s lease,
    # a write holding renewals off for 0.5 s leaves the worker unsure its lease still runs: it stops
    # starting sends and gives the rest back, as it should.)
    settings.DISPATCHER = {**settings.DISPATCHER, "LEASE_SECONDS": 3, "CONCURRENCY": 2}
    monkeypatch.setattr(recording, "metrics_record_batch", SlowMetrics(recording.metrics_record_batch, 0.5))
    total = 6
    make_messages(total, "renewal-race")
    with transaction.atomic():
        claim = claim_batch(batch_size=total)

    report = pipeline.send_chunk(message_ids=claim.message_ids, claim_token=claim.claim_token, provider=Slow())

    statuses = status_counts()
    figures(
        "renewal_during_outcome_write",
        messages=total,
        lost=total - statuses.get(Status.SENT, 0),
        duplicate_requests=0,
        dropped_by_provider=0,
        lease_lost=report.lease_lost,
        left_processing=statuses.get(Status.PROCESSING, 0),
    )
    assert not report.lease_lost
    assert statuses == {Status.SENT: total}


# --- 5. every qcluster told to stop (SIGTERM to each process group) ---------------------------------


def test_sigterm_to_every_cluster_finishes_sends_in_flight_and_releases_the_rest(tmp_path, stopped_dispatcher, figures):
    total, grace = 40, 15
    make_messages(total, "sigterm")
    dispatcher_configure(batch_size=10, interval_seconds=1)

    with fake_provider(tmp_path, "--latency-ms", "1000") as provider:
        env = dispatcher_env(provider.url)
        with qclusters_running(tmp_path, ["cluster-a", "cluster-b"], **env) as clusters:
            processes = (*clusters, provider)
            dispatcher_start()
            wait_or_fail(
                lambda: (
                    count(Status.SENT) >= 2
                    and Message.objects.filter(status=Status.PROCESSING, sending_started_at__isnull=False).count() >= 4
                ),
                timeout=40,
                what="chunks in mid-send",
                processes=processes,
            )
            claimed_at_term = count(Status.PROCESSING, Status.SENT)
            started = time.monotonic()
            for cluster in clusters:
                cluster.signal_group(signal.SIGTERM)
            took = []
            for cluster in clusters:
                try:
                    cluster.popen.wait(grace)
                except subprocess.TimeoutExpired:
                    raise AssertionError(
                        f"a qcluster still running {grace} s after SIGTERM\n{logs_of(*processes)}"
                    ) from None
                took.append(time.monotonic() - started)
            returncodes = [c.popen.returncode for c in clusters]
            logs = logs_of(*processes)
            left = dict(Message.objects.filter(status=Status.PROCESSING).values_list("pk", "sending_started_at"))
            still_queued = queued_chunk_message_ids()
            released_ids = set(DeliveryAttempt.objects.filter(outcome="released").values_list("message_id", flat=True))
            sent_at_exit = count(Status.SENT)

        # A new cluster sends what the stopped ones gave back (the provider now fast, to save time).
        provider_faults(provider.url, latency_ms=0)
        with qcluster_running(tmp_path, log_name="cluster-after.log", **env) as after:
            enqueue_dispatch_window()  # what the minute schedule would do, without waiting for it
            wait_or_fail(
                lambda: count(Status.SENT) == total,
                timeout=60,
                what="every message sent by the new cluster",
                processes=(after, provider),
            )
            received = provider_requests(provider.url)
            stats = provider_stats(provider.url)
            logs += logs_of(after)

    assert returncodes == [0, 0], logs
    # Nothing a worker had begun is left behind: what it had not begun it gave back. The only messages
    # still `processing` are those of a tick claimed as the signal came, whose chunk task no worker began:
    # it waits in the queue for the next cluster (or their lease runs out), and costs no attempt.
    assert not [pk for pk, started in left.items() if started is not None], f"left half-sent: {left}\n{logs}"
    assert set(left) <= still_queued, f"left processing, no chunk task queued: {left}\n{logs}"
    assert released_ids, f"nothing released\n{logs}"
    final = list(Message.objects.order_by("id"))
    check_idempotency(received, final, logs)
    check_attempt_log(final, logs)
    # A release does not count as an attempt, and a graceful stop re-sends nothing.
    assert all(m.status == Status.SENT and m.attempts == 1 for m in final), logs
    assert repeats(received) == 0, logs
    assert all(t <= grace for t in took)

    figures(
        "sigterm_every_cluster",
        messages=total,
        lost=total - count(Status.SENT),
        duplicate_requests=repeats(received),
        dropped_by_provider=stats["duplicates_dropped"],
        claimed_at_sigterm=claimed_at_term,
        sent_at_exit=sent_at_exit,
        released=len(released_ids),
        claimed_not_begun_at_exit=len(left),
        exit_s="/".join(f"{t:.1f}" for t in took),
    )


def test_sigterm_to_the_main_process_alone_stops_the_workers_with_redis_down(tmp_path, stopped_dispatcher, figures):
    """The workers learn that their cluster is stopping from its stop event, which they inherit,
    not from the cluster status django-q2 keeps in the cache: with Redis gone, a SIGTERM to the main
    process alone still ends the dispatch window (150 s long here) and the chunk in mid-send."""
    total, grace = 40, 15
    make_messages(total, "sigterm-main")
    dispatcher_configure(batch_size=10, interval_seconds=1)

    with redis_server(tmp_path) as redis_srv, fake_provider(tmp_path, "--latency-ms", "1000") as provider:
        env = dispatcher_env(provider.url, REDIS_URL=redis_srv.url())
        with qcluster_running(tmp_path, **env) as cluster:
            processes = (cluster, provider)
            dispatcher_start()
            wait_or_fail(
                lambda: Message.objects.filter(status=Status.PROCESSING, sending_started_at__isnull=False).exists(),
                timeout=40,
                what="a chunk in mid-send",
                processes=processes,
            )
            redis_srv.stop()
            started = time.monotonic()
            cluster.popen.send_signal(signal.SIGTERM)  # the main process only
            try:
                cluster.popen.wait(grace)
            except subprocess.TimeoutExpired:
                logs = logs_of(*processes)
                raise AssertionError(f"the qcluster still running {grace} s after SIGTERM\n{logs}") from None
            took = time.monotonic() - started
            logs = logs_of(*processes)
            half_sent = list(
                Message.objects.filter(status=Status.PROCESSING, sending_started_at__isnull=False).values_list(
                    "pk", flat=True
                )
            )
            released = DeliveryAttempt.objects.filter(outcome="released").count()
            received = provider_requests(provider.url)

    assert cluster.popen.returncode == 0, logs
    assert not half_sent, f"left half-sent: {half_sent}\n{logs}"
    assert "qcluster is shutting down" in logs, logs
    assert repeats(received) == 0, logs
    figures(
        "sigterm_main_process_redis_down",
        messages=total,
        sent_at_exit=count(Status.SENT),
        released=released,
        exit_s=f"{took:.1f}",
    )


# --- 6. a chunk longer than its task may run; a message deleted in flight; a fast clock -------------


def test_a_chunk_longer_than_the_task_timeout_stops_in_time_and_gives_back_the_rest(
    tmp_path, stopped_dispatcher, figures
):
    # DISPATCH_WINDOW_SECONDS=10: django-q2's task timeout is 10 + 2 + 30 = 42 s and a chunk starts sends
    # for at most 10 s. Ninety messages at 1 s each, two at a time, would take 45 s.
    total, window = 90, 10
    make_messages(total, "budget")
    dispatcher_configure(batch_size=total, interval_seconds=1)

    with fake_provider(tmp_path, "--latency-ms", "1000") as provider:
        env = dispatcher_env(
            provider.url,
            DISPATCH_WINDOW_SECONDS=str(window),
            DISPATCH_CHUNK_SIZE=str(total),
            DISPATCH_LEASE_SECONDS="30",
        )
        with qcluster_running(tmp_path, **env) as cluster:
            processes = (cluster, provider)
            dispatcher_start()
            wait_or_fail(
                lambda: DeliveryAttempt.objects.filter(outcome="released").exists(),
                timeout=40,
                what="the chunk to give back what it could not start in time",
                processes=processes,
            )
            first_round = count(Status.SENT)
            released_ids = set(DeliveryAttempt.objects.filter(outcome="released").values_list("message_id", flat=True))
            # The rest fast: a new window (the first one's 10 s are over) sends what was given back.
            provider_faults(provider.url, latency_ms=0)
            enqueue_dispatch_window()
            wait_or_fail(
                lambda: count(Status.SENT) == total, timeout=30, what="every message sent", processes=processes
            )
            received = provider_requests(provider.url)
            stats = provider_stats(provider.url)
            logs = logs_of(*processes)

    final = list(Message.objects.order_by("id"))
    check_idempotency(received, final, logs)
    check_attempt_log(final, logs)
    assert all(m.status == Status.SENT and m.attempts == 1 for m in final), logs
    assert repeats(received) == 0, logs
    assert len(released_ids) + first_round == total, logs
    # django-q2 never had to kill it: the chunk task ended by itself, well inside its timeout.
    assert "reincarnated worker" not in logs, logs
    # It started sends for its budget (the window's 10 s), no longer.
    first_chunk = DeliveryAttempt.objects.filter(outcome="sent").exclude(message_id__in=released_ids)
    span = first_chunk.aggregate(first=Min("started_at"), last=Max("started_at"))
    budget_used = (span["last"] - span["first"]).total_seconds()
    assert window - 2 <= budget_used <= window + 0.5, budget_used

    figures(
        "chunk_outlasts_task_timeout",
        messages=total,
        lost=total - count(Status.SENT),
        duplicate_requests=repeats(received),
        dropped_by_provider=stats["duplicates_dropped"],
        sent_in_first_chunk=first_round,
        released=len(released_ids),
        last_send_started_after_s=f"{budget_used:.1f}",
    )


def test_a_message_deleted_while_its_chunk_is_in_flight_keeps_no_one_else_from_being_recorded(
    tmp_path, stopped_dispatcher, figures
):
    total = 10
    messages = make_messages(total, "deleted")
    dispatcher_configure(batch_size=total, interval_seconds=1)
    # One chunk of ten, two at a time, one second each: five seconds, with renewals every two.
    in_flight_victim, not_started_victim = messages[2], messages[8]

    with fake_provider(tmp_path, "--latency-ms", "1000") as provider:
        env = dispatcher_env(provider.url, DISPATCH_CHUNK_SIZE=str(total))
        with qcluster_running(tmp_path, **env) as cluster:
            processes = (cluster, provider)
            dispatcher_start()
            wait_or_fail(
                lambda: provider_stats(provider.url)["requests"] >= 2,
                timeout=30,
                what="the first two sends answered",
                processes=processes,
            )
            # The third and fourth are now with the provider; the ninth not yet started.
            deleted = Message.objects.filter(pk__in=[in_flight_victim.pk, not_started_victim.pk]).delete()
            # An outcome wrongly left unwritten would come back through its lease: wait long enough for that.
            wait_or_fail(
                lambda: count(Status.SENT) == total - 2 and count(Status.PROCESSING) == 0,
                timeout=LEASE_SECONDS + UPKEEP_SECONDS + 20,
                what="the others sent",
                processes=processes,
            )
            received = provider_requests(provider.url)
            stats = provider_stats(provider.url)
            logs = logs_of(*processes)

    final = list(Message.objects.order_by("id"))
    figures(
        "message_deleted_in_flight",
        messages=total,
        lost=sum(1 for m in final if m.status != Status.SENT),
        duplicate_requests=repeats(received),
        dropped_by_provider=stats["duplicates_dropped"],
        deleted=deleted[1].get("messages_app.Message", 0),
        attempts_beyond_one=sum(m.attempts - 1 for m in final),
        leases_lost=logs.count("this worker writes no outcome"),
    )
    assert deleted[1].get("messages_app.Message") == 2
    check_idempotency(received, [*final, in_flight_victim, not_started_victim], logs)
    check_attempt_log(final, logs)
    # Every other message's outcome was recorded by the chunk that sent it: one attempt, no repeat.
    assert [m.status for m in final] == [Status.SENT] * (total - 2), logs
    assert all(m.attempts == 1 for m in final), logs
    assert repeats(received) == 0, logs


def test_a_worker_with_a_fast_clock_takes_over_nothing(tmp_path, stopped_dispatcher, figures):
    total = 60
    make_messages(total, "clock")
    dispatcher_configure(batch_size=10, interval_seconds=1)

    with fake_provider(tmp_path, "--latency-ms", "500") as provider:
        # Chunks of ten, two at a time at 0.5 s: 2.5 s each, so the normal cluster always has one going.
        env = dispatcher_env(provider.url, DISPATCH_CHUNK_SIZE="10")
        with qcluster_running(tmp_path, log_name="cluster-normal.log", **env) as normal:
            dispatcher_start()
            wait_for_log(normal, " opened for ", timeout=30)  # the normal cluster paces
            wait_or_fail(lambda: count(Status.SENT) >= 5, timeout=30, what="sending under way", processes=(normal,))
            # A second host joins, its clock ten minutes ahead.
            with qcluster_running(tmp_path, log_name="cluster-fast.log", clock_offset_seconds=600, **env) as fast:
                processes = (normal, fast, provider)
                wait_or_fail(
                    lambda: count(Status.SENT) == total, timeout=60, what="every message sent", processes=processes
                )
                received = provider_requests(provider.url)
                stats = provider_stats(provider.url)
                logs = logs_of(*processes)
                now = database_now()

    final = list(Message.objects.order_by("id"))
    chunks = {"normal": normal.log().count("processing send "), "fast": fast.log().count("processing send ")}
    figures(
        "fast_clock_worker",
        messages=total,
        lost=sum(1 for m in final if m.status != Status.SENT),
        duplicate_requests=repeats(received),
        dropped_by_provider=stats["duplicates_dropped"],
        chunks_run_normal=chunks["normal"],
        chunks_run_fast=chunks["fast"],
        windows_run_fast=fast.log().count(" opened for "),
        sent_at_in_future=sum(1 for m in final if m.sent_at > now),
        attempt_rows_stamped_in_future=DeliveryAttempt.objects.filter(started_at__gt=now).count(),
    )
    assert all(m.status == Status.SENT for m in final), logs
    # The times that decide anything come from the database's clock.
    assert not [m.pk for m in final if m.sent_at > now], "sent_at from the fast clock"
    check_idempotency(received, final, logs)
    check_attempt_log(final, logs)
    # No fault here leaves anything in flight: not one message may be sent twice, or attempted twice.
    assert repeats(received) == 0, f"{repeats(received)} repeats\n{logs}"
    assert all(m.attempts == 1 for m in final), logs


# --- 6d. a qcluster whose system clock runs fast leaves; the others go on dispatching ---------------


def schedule_lead_seconds() -> float:
    """How far ahead of the database's clock the dispatch schedule's next run is."""
    next_run = Schedule.objects.get(name=DISPATCH_SCHEDULE_NAME).next_run
    return round((next_run - database_now()).total_seconds(), 1)


def test_a_qcluster_with_a_fast_clock_does_not_halt_dispatch_after_it_leaves(tmp_path, stopped_dispatcher, figures):
    """A qcluster under `faketime` (its whole system clock ten minutes ahead) runs django-q2's scheduler
    once while another, with the right clock, joins; then it leaves. The dispatch schedule must still be
    due within one of its intervals (a minute) by the database's clock, so the remaining qcluster opens a
    window and sends what is queued within about that: django-q2's scheduler moved the schedule's next
    run past its own clock, and nothing was dispatched for ten minutes. (Since test 6e's fix a window
    that ends is also replaced at the next scheduler pass, so the schedule's lead is what proves it.)"""
    dispatcher_configure(batch_size=5, interval_seconds=1)
    dispatcher_start()
    OrmQ.objects.all().delete()  # the window start() queued: every window here comes from the schedule
    dispatcher_schedule_ensure()
    Schedule.objects.exclude(name=DISPATCH_SCHEDULE_NAME).delete()
    interval = timedelta(minutes=Schedule.objects.get(name=DISPATCH_SCHEDULE_NAME).minutes)

    with fake_provider(tmp_path) as provider:
        # Windows shorter than the test, so only the schedule keeps dispatch going.
        env = dispatcher_env(provider.url, DISPATCH_WINDOW_SECONDS="10")
        with qcluster_running(tmp_path, log_name="cluster-fast.log", system_clock_offset_seconds=600, **env) as fast:
            # Due at the fast cluster's first scheduler pass (30 s after it runs), and, by the
            # database's clock, due again 45 s after that: before the other cluster's first pass.
            Schedule.objects.filter(name=DISPATCH_SCHEDULE_NAME).update(next_run=database_now() - timedelta(seconds=15))
            wait_for_log(fast, f"from schedule [{DISPATCH_SCHEDULE_NAME}]", timeout=60)
            lead_after_fast_pass = schedule_lead_seconds()
            with qcluster_running(tmp_path, log_name="cluster-normal.log", **env) as normal:
                fast.signal_group(signal.SIGTERM)
                wait_or_fail(
                    lambda: "has stopped." in fast.log(), timeout=30, what="the fast cluster to stop", processes=(fast,)
                )
                left_at = time.monotonic()
                windows_before = normal.log().count(" opened for ")
                queued = make_messages(10, "after the fast clock left")
                processes = (normal, fast, provider)
                wait_or_fail(
                    lambda: count(Status.SENT) == len(queued) and normal.log().count(" opened for ") > windows_before,
                    timeout=interval.total_seconds() + 10,
                    what=f"the remaining qcluster to send (schedule {schedule_lead_seconds()} s ahead)",
                    processes=processes,
                )
                resumed_after = round(time.monotonic() - left_at, 1)
                lead_after = schedule_lead_seconds()
                received = provider_requests(provider.url)
                stats = provider_stats(provider.url)
                logs = logs_of(*processes)

    figures(
        "fast_clock_left",
        messages=len(queued),
        lost=count(Status.UNSENT, Status.PROCESSING, Status.FAILED),
        duplicate_requests=repeats(received),
        dropped_by_provider=stats["duplicates_dropped"],
        schedule_lead_after_fast_pass_s=lead_after_fast_pass,
        sent_after_it_left_s=resumed_after,
        schedule_lead_at_the_end_s=lead_after,
    )
    # django-q2's scheduler ran on the database's clock: never more than one interval ahead of it.
    assert lead_after_fast_pass <= interval.total_seconds(), logs
    assert lead_after <= interval.total_seconds(), logs


# --- 6e. the qcluster whose worker paces is killed; another starts a window without the schedule ------


def test_the_pacing_qclusters_death_is_followed_by_a_new_window_within_a_scheduler_pass(
    tmp_path, stopped_dispatcher, figures
):
    """Only the newest dispatch window paces. Its qcluster is SIGKILLed (its process group) while
    another runs, and no schedule would start a window (the fixture deleted them): the remaining
    qcluster's scheduler pass sees that no window has said it is alive for WINDOW_LOST_AFTER and
    starts one, so what is queued afterwards is sent within that and a pass (about 30 s), not
    at the minute schedule's next window (in the 45-minute chaos run, nothing paced for 24 % of
    the time)."""
    dispatcher_configure(batch_size=5, interval_seconds=1)
    with fake_provider(tmp_path) as provider:
        env = dispatcher_env(provider.url, DISPATCH_WINDOW_SECONDS="600")
        with qcluster_running(tmp_path, log_name="cluster-pacing.log", **env) as pacing_cluster:
            dispatcher_start()  # queues a window, which the only cluster running takes
            wait_for_log(pacing_cluster, " opened for ", timeout=30)
            with qcluster_running(tmp_path, log_name="cluster-other.log", **env) as other:
                pacing_cluster.signal_group(signal.SIGKILL)
                pacing_cluster.popen.wait(10)
                killed_at = time.monotonic()
                queued = make_messages(10, "after the pacing cluster died")
                processes = (other, pacing_cluster, provider)
                wait_or_fail(
                    lambda: count(Status.SENT) == len(queued),
                    timeout=WINDOW_LOST_AFTER.total_seconds() + 30 + 20,
                    what="the remaining qcluster to start a window and send",
                    processes=processes,
                )
                resumed_after = round(time.monotonic() - killed_at, 1)
                received = provider_requests(provider.url)
                logs = logs_of(*processes)

    figures(
        "pacing_cluster_killed",
        messages=len(queued),
        lost=count(Status.UNSENT, Status.PROCESSING, Status.FAILED),
        duplicate_requests=repeats(received),
        sent_after_the_kill_s=resumed_after,
    )
    assert "no dispatch window said it was alive" in other.log(), logs
    assert " opened for " in other.log(), logs
    assert repeats(received) == 0, logs


# --- 7. what the provider answers: retries and permanent failures ----------------------------------


def tick_until_settled(message: Message, *, timeout: float) -> Message:
    """Run manual ticks (in this process) until `message` is sent or failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        call_command("dispatcher", "tick", "--force", stdout=io.StringIO())
        message.refresh_from_db()
        if message.status in (Status.SENT, Status.FAILED):
            return message
        time.sleep(0.05)
    raise AssertionError(f"message {message.pk} still {message.status} after {timeout}s: {message.last_error}")


def attempts_of(message: Message) -> list[DeliveryAttempt]:
    return list(DeliveryAttempt.objects.filter(message=message).order_by("number", "id"))


def test_provider_answers_are_retried_or_fail_as_they_should(tmp_path, stopped_dispatcher, settings, figures):
    dispatcher_configure(batch_size=1, interval_seconds=1)
    with fake_provider(tmp_path) as provider:
        settings.DISPATCHER = {
            **settings.DISPATCHER,
            "PROVIDER_BACKEND": "webhook",
            "WEBHOOK_URL": provider.url,
            "WEBHOOK_TIMEOUT_SECONDS": 1,
            "MAX_ATTEMPTS": 5,
            "RETRY_BASE_SECONDS": 0.2,
            "RETRY_MAX_SECONDS": 5,
            "LEASE_SECONDS": 5,
        }

        def run(script: list, **faults) -> Message:
            message = Message.objects.create(recipient_phone_number=phone_number(), content=f"script {script}")
            provider_faults(provider.url, script=script, **faults)
            return tick_until_settled(message, timeout=20)

        # Two server errors, then accepted.
        five_hundreds = run([500, 500, 202])
        assert five_hundreds.status == Status.SENT and five_hundreds.attempts == 3
        tries = attempts_of(five_hundreds)
        assert [(a.number, a.outcome, a.http_status) for a in tries] == [
            (1, "retry", 500),
            (2, "retry", 500),
            (3, "sent", 202),
        ]
        assert tries[-1].provider_message_id == five_hundreds.provider_message_id

        # No answer within WEBHOOK_TIMEOUT_SECONDS, then accepted.
        timed_out = run(["timeout", 202], timeout_ms=2500)
        assert timed_out.status == Status.SENT and timed_out.attempts == 2
        tries = attempts_of(timed_out)
        assert [a.outcome for a in tries] == ["retry", "sent"]
        assert tries[0].http_status is None and "time" in tries[0].error.lower(), tries[0].error

        # Too many requests, come back in 2 s: the message waits that long, and the throttling is the
        # provider's doing, not the message's: the attempt is not counted (deferred).
        throttled = run([429, 202], retry_after=2)
        assert throttled.status == Status.SENT and throttled.attempts == 1
        tries = attempts_of(throttled)
        assert [(a.outcome, a.http_status) for a in tries] == [("deferred", 429), ("sent", 202)]
        retry_gap = (tries[1].started_at - tries[0].started_at).total_seconds()
        assert retry_gap >= 2.0, f"retried {retry_gap:.2f}s after a 429 with Retry-After: 2"

        # Server errors until the attempts run out: failed, with the reason.
        settings.DISPATCHER = {**settings.DISPATCHER, "MAX_ATTEMPTS": 3}
        exhausted = run([500] * 5, retry_after=0)
        provider_faults(provider.url, script=[])
        assert exhausted.status == Status.FAILED and exhausted.attempts == 3
        assert "500" in exhausted.last_error, exhausted.last_error
        tries = attempts_of(exhausted)
        assert [(a.outcome, a.http_status) for a in tries] == [("retry", 500), ("retry", 500), ("failed", 500)]

        # The provider logs the timed-out request when its 2.5 s are up.
        expected_requests = 3 + 2 + 2 + 3
        wait_for(lambda: provider_stats(provider.url)["requests"] >= expected_requests, timeout=10, what="requests")
        received = provider_requests(provider.url)
        stats = provider_stats(provider.url)

    messages = [five_hundreds, timed_out, throttled, exhausted]
    by_key = Counter(r["idempotency_key"] for r in received)
    # Every request for a message (each counted attempt, and the deferred one) carried the same key: its uuid.
    tries = Counter(DeliveryAttempt.objects.values_list("message_id", flat=True))
    assert by_key == {str(m.uuid): tries[m.pk] for m in messages}, by_key
    check_idempotency(received, messages)
    check_attempt_log(messages)

    expected = {five_hundreds.pk: Status.SENT, timed_out.pk: Status.SENT, throttled.pk: Status.SENT}
    expected[exhausted.pk] = Status.FAILED
    figures(
        "provider_scripts",
        messages=len(messages),
        lost=sum(1 for m in messages if m.status != expected[m.pk]),
        duplicate_requests=repeats(received),
        dropped_by_provider=stats["duplicates_dropped"],
        retry_after_gap_s=f"{retry_gap:.2f}",
    )


# --- 8. Redis down while sending -------------------------------------------------------------------


def cached_ids(client, provider_message_ids) -> set[str]:
    ids = list(provider_message_ids)
    values = client.mget([f"messages:{i}" for i in ids]) if ids else []
    return {i for i, value in zip(ids, values, strict=True) if value is not None}


def test_redis_down_loses_no_delivery_and_the_cache_catches_up(tmp_path, stopped_dispatcher, figures):
    total = 30
    make_messages(total, "redis")
    dispatcher_configure(batch_size=3, interval_seconds=1)

    with redis_server(tmp_path) as redis_srv, fake_provider(tmp_path, "--latency-ms", "100") as provider:
        env = dispatcher_env(provider.url, REDIS_URL=redis_srv.url())
        with qcluster_running(tmp_path, **env) as cluster:
            processes = (cluster, provider)
            dispatcher_start()
            wait_or_fail(lambda: count(Status.SENT) >= 6, timeout=30, what="six sends", processes=processes)

            redis_srv.stop()  # saves its data, as a Redis with persistence would, and refuses connections
            sent_before_outage = count(Status.SENT)
            wait_or_fail(
                lambda: count(Status.SENT) >= sent_before_outage + 9,
                timeout=30,
                what="nine sends with Redis down",
                processes=processes,
            )
            pending_while_down = Message.objects.filter(status=Status.SENT, delivery_cache_pending=True).count()
            failed_while_down = count(Status.FAILED)

            redis_srv.start()  # same port, same data
            wait_or_fail(
                lambda: (
                    count(Status.SENT) == total and not Message.objects.filter(delivery_cache_pending=True).exists()
                ),
                timeout=60,
                what="every message sent and every delivery cached",
                processes=processes,
            )
            dispatcher_stop()
            logs = logs_of(*processes)

        # Sent with Redis down and no dispatcher to catch up: `dispatcher recache` writes the records.
        redis_srv.stop()
        late = Message.objects.create(recipient_phone_number=phone_number(), content="sent during the outage")
        ticked = manage(["dispatcher", "tick", "--force"], env=child_env(**env))
        assert ticked.returncode == 0, ticked.stdout
        late.refresh_from_db()
        assert late.status == Status.SENT and late.delivery_cache_pending, (late.status, ticked.stdout)
        redis_srv.start()
        recached = manage(["dispatcher", "recache"], env=child_env(**env))
        assert recached.returncode == 0, recached.stdout
        assert "Wrote 1 pending" in recached.stdout, recached.stdout
        again = manage(["dispatcher", "recache"], env=child_env(**env))
        assert again.returncode == 0 and "Wrote 0 pending" in again.stdout, again.stdout

        received = provider_requests(provider.url)
        stats = provider_stats(provider.url)
        client = redis_srv.client()
        try:
            final = list(Message.objects.order_by("id"))
            sent_ids = {m.provider_message_id for m in final if m.status == Status.SENT}
            in_redis = cached_ids(client, sent_ids)
        finally:
            client.close()

    assert failed_while_down == 0, logs
    assert pending_while_down >= 1, f"no message was pending a cache write while Redis was down\n{logs}"
    assert all(m.status == Status.SENT for m in final), logs
    assert not any(m.delivery_cache_pending for m in final)
    assert in_redis == sent_ids, f"{len(sent_ids - in_redis)} deliveries missing from Redis\n{logs}"
    check_idempotency(received, final, logs)
    check_attempt_log(final, logs)

    figures(
        "redis_down",
        messages=total + 1,
        lost=sum(1 for m in final if m.status != Status.SENT),
        duplicate_requests=repeats(received),
        dropped_by_provider=stats["duplicates_dropped"],
        pending_while_down=pending_while_down,
        missing_from_cache=len(sent_ids - in_redis),
    )


# --- 9. the database connections cut in mid-chunk --------------------------------------------------


def processing_uuids() -> set[str]:
    return {str(u) for u in Message.objects.filter(status=Status.PROCESSING).values_list("uuid", flat=True)}


def test_database_connections_terminated_mid_chunk_the_leases_bring_everything_back(
    tmp_path, stopped_dispatcher, figures
):
    total = 24
    make_messages(total, "pgkill")
    dispatcher_configure(batch_size=4, interval_seconds=1)
    cuts, gap = 8, 0.25

    with fake_provider(tmp_path, "--latency-ms", "200") as provider:
        env = dispatcher_env(provider.url, WEBHOOK_TIMEOUT_SECONDS="1")
        with qcluster_running(tmp_path, **env) as cluster:
            processes = (cluster, provider)
            dispatcher_start()
            wait_or_fail(
                lambda: count(Status.SENT) >= 2 and count(Status.PROCESSING) >= 1,
                timeout=30,
                what="a chunk in mid-send",
                processes=processes,
            )
            # Cut every connection of the qcluster (window, chunks, lease keepers, pusher, monitor) again
            # and again for two seconds, so that some cuts land between a send and the write of its outcome.
            exposed: set[str] = set()  # messages in flight at some cut
            terminated = 0
            for _ in range(cuts):
                exposed |= processing_uuids()
                terminated += terminate_database_backends()
                exposed |= processing_uuids()
                time.sleep(gap)
            cut_until = timezone.now()
            wait_or_fail(
                lambda: count(Status.SENT) == total,
                timeout=60,
                what="every message sent after the connections were cut",
                processes=processes,
            )
            assert cluster.popen.poll() is None, f"qcluster died\n{logs_of(*processes)}"
            received = provider_requests(provider.url)
            stats = provider_stats(provider.url)
            logs = logs_of(*processes)

    final = list(Message.objects.order_by("id"))
    assert terminated >= cuts, f"only {terminated} connections terminated in {cuts} cuts"
    assert count(Status.PROCESSING) == 0 and count(Status.FAILED) == 0, logs
    # Later ticks ran: messages were claimed after the last cut.
    assert Message.objects.filter(claimed_at__gt=cut_until).exists(), logs
    check_idempotency(received, final, logs)
    check_attempt_log(final, logs)
    assert repeated_keys(received) <= exposed, f"re-sent though not in flight at a cut\n{logs}"
    assert stats["duplicates_dropped"] == repeats(received), stats
    cluster_log = cluster.log()

    figures(
        "db_connections_terminated",
        messages=total,
        lost=total - count(Status.SENT),
        duplicate_requests=repeats(received),
        dropped_by_provider=stats["duplicates_dropped"],
        backends_terminated=terminated,
        in_flight_at_cuts=len(exposed),
        outcome_writes_failed=cluster_log.count("could not record the outcome"),
        leases_lost=cluster_log.count("this worker writes no outcome"),
        ticks_failed=cluster_log.count("tick failed"),
    )


# --- 10. stop during a batch -----------------------------------------------------------------------


def test_nothing_is_claimed_once_stop_returns_during_a_batch(tmp_path, stopped_dispatcher, figures):
    total = 20
    make_messages(total, "stop")
    dispatcher_configure(batch_size=5, interval_seconds=1)

    with fake_provider(tmp_path, "--latency-ms", "1000") as provider:
        env = dispatcher_env(provider.url, DISPATCH_LEASE_SECONDS="30")  # no lease to come back in this test
        with qcluster_running(tmp_path, **env) as cluster:
            processes = (cluster, provider)
            dispatcher_start()
            wait_or_fail(
                lambda: count(Status.SENT) >= 1 and count(Status.PROCESSING) >= 1,
                timeout=30,
                what="a batch in mid-send",
                processes=processes,
            )
            dispatcher_stop()
            stop_returned = database_now()
            claimed_at_stop = count(Status.PROCESSING, Status.SENT, Status.FAILED)

            wait_or_fail(
                lambda: count(Status.PROCESSING) == 0,
                timeout=20,
                what="the claimed batch to settle",
                processes=processes,
            )
            time.sleep(3)  # three would-be ticks at one a second
            received = provider_requests(provider.url)
            stats = provider_stats(provider.url)
            logs = logs_of(*processes)

    last_claim = Message.objects.aggregate(last=Max("claimed_at"))["last"]
    settled = count(Status.PROCESSING, Status.SENT, Status.FAILED)
    assert last_claim is not None and last_claim <= stop_returned, (last_claim, stop_returned, logs)
    assert settled <= claimed_at_stop, f"{settled} claimed or done now, {claimed_at_stop} at the stop\n{logs}"
    assert count(Status.PROCESSING) == 0 and count(Status.FAILED) == 0, logs
    assert count(Status.UNSENT) == total - count(Status.SENT)
    final = list(Message.objects.order_by("id"))
    check_idempotency(received, final, logs)
    check_attempt_log(final, logs)

    figures(
        "stop_mid_batch",
        messages=total,
        lost=count(Status.PROCESSING, Status.FAILED),
        duplicate_requests=repeats(received),
        dropped_by_provider=stats["duplicates_dropped"],
        claimed_at_stop=claimed_at_stop,
        sent=count(Status.SENT),
    )


# --- 11. a worker frozen (SIGSTOP) past its lease, resumed after another sender sent its messages ----


def freeze_outside_a_transaction(process, attempts: int = 50) -> None:
    """SIGSTOP the process's group at a moment when no other session of the test database is inside a
    transaction or a statement (so the frozen process holds no row lock); SIGCONT and try again otherwise."""
    for _ in range(attempts):
        process.signal_group(signal.SIGSTOP)
        time.sleep(0.05)  # a statement sent just before the signal reaches PostgreSQL
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND state IN ('active', 'idle in transaction', 'idle in transaction (aborted)')"
            )
            if cursor.fetchone()[0] == 0:
                return
        process.signal_group(signal.SIGCONT)
        time.sleep(0.02)
    raise AssertionError(f"could not freeze the process outside a transaction in {attempts} tries")


def test_a_worker_frozen_past_its_lease_starts_no_send_when_it_resumes(tmp_path, stopped_dispatcher, figures):
    # One chunk of 12, 4 sends at a time, through a provider limited to 2 requests a second (so that sends
    # wait for their turn in the worker), lease 3 s (renewed every second). Frozen mid-chunk, the worker
    # holds sends waiting for the rate and messages not started when its lease runs out.
    total, concurrency, lease, rate = 12, 4, 3, 2
    make_messages(total, "frozen")
    dispatcher_start()  # `dispatcher drain` sends only while the dispatcher runs (no qcluster here)

    with fake_provider(tmp_path, "--latency-ms", "200") as provider:
        env = dispatcher_env(
            provider.url,
            PROVIDERS="primary",
            PROVIDER_PRIMARY_URL=provider.url,
            PROVIDER_PRIMARY_RATE_PER_SECOND=str(rate),
            DISPATCH_LEASE_SECONDS=str(lease),
            DISPATCH_CONCURRENCY=str(concurrency),
            DISPATCH_CHUNK_SIZE=str(total),
        )
        with drain(tmp_path, "stale", "--batch-size", str(total), **env) as stale:
            wait_or_fail(
                lambda: count(Status.SENT) >= 2,
                timeout=30,
                what="the first sends recorded",
                processes=(stale, provider),
            )
            # Between two outcome writes: a frozen transaction's row locks would keep the other sender from
            # the messages until the worker resumed. Frozen again if it was caught inside one (a loaded machine
            # delays its writes past any fixed sleep).
            time.sleep(0.2)
            freeze_outside_a_transaction(stale)
            frozen_at = database_now()
            held = Message.objects.filter(status=Status.PROCESSING).count()
            # Its lease runs out; another sender takes the messages back and sends every one of them.
            wait_or_fail(
                lambda: database_now() > frozen_at + timedelta(seconds=lease + 0.5),
                timeout=10,
                what="the frozen worker's lease to run out",
            )
            with drain(tmp_path, "fresh", "--batch-size", str(total), **env) as fresh:
                wait_or_fail(
                    lambda: fresh.popen.poll() is not None,
                    timeout=30,
                    what="the other sender to send everything",
                    processes=(fresh, stale, provider),
                )
                assert fresh.popen.returncode == 0, logs_of(fresh)
            assert count(Status.SENT) == total, logs_of(fresh, stale)
            before_resume = provider_requests(provider.url)

            stale.signal_group(signal.SIGCONT)
            resumed = time.monotonic()
            wait_or_fail(
                lambda: stale.popen.poll() is not None,
                timeout=30,
                what="the resumed worker to finish",
                processes=(stale, provider),
            )
            exited_after = time.monotonic() - resumed
            time.sleep(0.5)  # a request it started as it exited would be answered (and listed) by now
            received = provider_requests(provider.url)
            stats = provider_stats(provider.url)
            logs = logs_of(stale, fresh, provider)

    after_resume = received[len(before_resume) :]
    final = list(Message.objects.order_by("id"))
    assert held >= total - concurrency, logs  # the frozen worker held sends in flight and sends not started
    # The resumed worker started no send it had not checked before the freeze: every request after
    # SIGCONT is one it made. One frozen between its check and its write still goes out (seen once, in
    # a make test on a loaded machine); before the check, 3 in every run.
    assert len(after_resume) <= 1, f"{len(after_resume)} requests after SIGCONT\n{logs}"
    assert all(m.status == Status.SENT for m in final), logs
    check_idempotency(received, final, logs)
    check_attempt_log(final, logs)
    assert stats["duplicates_dropped"] == repeats(received), stats

    figures(
        "frozen_past_its_lease",
        messages=total,
        lost=total - count(Status.SENT),
        duplicate_requests=repeats(received),
        dropped_by_provider=stats["duplicates_dropped"],
        held_when_frozen=held,
        requests_after_resume=len(after_resume),
        exited_after_resume_s=f"{exited_after:.1f}",
    )
