"""The retention schedule (retention/): what it deletes, what it keeps, and that its
batches never stand in the sending path's way (real PostgreSQL, real concurrency)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone
from django_q.models import Schedule

from consent.models import Consent, ConsentChange, InboundMessage
from dispatcher.engine.claiming import claim_batch
from dispatcher.schedule import RETENTION_SCHEDULE_NAME, RETENTION_TASK, dispatcher_schedule_ensure
from messages_app.models import DeliveryAttempt, DeliveryReceipt, Message
from messages_app.services import messages_prune_batch
from messages_app.transitions import database_now, message_cancel
from restapi.models import IdempotencyKey
from retention.conf import RETENTION_STATUSES, RetentionSettings, retention_settings
from retention.models import RetentionRun
from retention.selectors import retention_summary
from retention.services import retention_apply
from retention.tasks import retention_run
from tests.factories import make_message, make_user

Status = Message.Status


def retention(days: int = 30, *, inbound_days: int | None = None, run_seconds: int = 30, **per_status: int):
    return RetentionSettings(
        days_by_status={status: per_status.get(status, days) for status in RETENTION_STATUSES},
        inbound_days=days if inbound_days is None else inbound_days,
        batch_size=2,
        run_seconds=run_seconds,
    )


def aged(message: Message, *, days: float) -> Message:
    Message.objects.filter(pk=message.pk).update(created_at=timezone.now() - timedelta(days=days))
    return message


def attempt_for(message: Message) -> DeliveryAttempt:
    return DeliveryAttempt.objects.create(
        message=message, number=1, started_at=timezone.now(), outcome=DeliveryAttempt.Outcome.SENT
    )


def receipt_for(message: Message | None, receipt_id: str, *, days: float = 0) -> DeliveryReceipt:
    made = DeliveryReceipt.objects.create(
        receipt_id=receipt_id,
        provider_message_id=message.provider_message_id if message else f"nobody-{receipt_id}",
        status="delivered",
        occurred_at=timezone.now(),
        message=message,
    )
    DeliveryReceipt.objects.filter(pk=made.pk).update(received_at=timezone.now() - timedelta(days=days))
    return made


def inbound(inbound_id: str, *, days: float, reply: Message | None = None) -> InboundMessage:
    return InboundMessage.objects.create(
        inbound_id=inbound_id,
        provider="test",
        from_number="+12125550123",
        text="STOP",
        keyword=InboundMessage.Keyword.OPT_OUT,
        received_at=timezone.now() - timedelta(days=days),
        reply_message=reply,
    )


def ids(model) -> set[int]:
    return set(model.objects.values_list("pk", flat=True))


# --- what a run deletes and keeps ---------------------------------------------------


@pytest.mark.django_db
def test_a_run_deletes_final_messages_past_retention_with_what_belongs_to_them_and_keeps_the_rest():
    old_final = [aged(make_message(status=status), days=40) for status in RETENTION_STATUSES for _ in range(2)]
    for message in old_final:
        attempt_for(message)
    old_sent = old_final[0]
    receipt_for(old_sent, "r-old")
    young_sent = aged(make_message(status=Status.SENT), days=10)
    kept_attempt = attempt_for(young_sent)
    receipt_for(young_sent, "r-young")
    old_unsent = aged(make_message(status=Status.UNSENT), days=400)
    old_processing = aged(make_message(status=Status.PROCESSING), days=400)
    live_attempt = attempt_for(old_processing)
    receipt_for(None, "r-unmatched-old", days=40)
    receipt_for(None, "r-unmatched-young", days=10)

    run = retention_apply(settings=retention(30))

    assert ids(Message) == {young_sent.pk, old_unsent.pk, old_processing.pk}
    assert ids(DeliveryAttempt) == {kept_attempt.pk, live_attempt.pk}
    assert set(DeliveryReceipt.objects.values_list("receipt_id", flat=True)) == {"r-young", "r-unmatched-young"}
    assert run.complete
    assert run.messages_deleted == dict.fromkeys(RETENTION_STATUSES, 2)
    assert run.messages_total == 10
    assert run.others_deleted == {"delivery attempts": 10, "delivery receipts": 1, "unmatched receipts": 1}
    assert RetentionRun.objects.get() == run


@pytest.mark.django_db
def test_each_final_status_keeps_its_own_days_and_zero_keeps_for_good():
    sent_40 = aged(make_message(status=Status.SENT), days=40)
    sent_100 = aged(make_message(status=Status.SENT), days=100)
    failed_40 = aged(make_message(status=Status.FAILED), days=40)
    failed_100 = aged(make_message(status=Status.FAILED), days=100)
    cancelled_old = aged(make_message(status=Status.CANCELLED), days=10_000)

    run = retention_apply(settings=retention(30, failed=90, cancelled=0))

    assert ids(Message) == {failed_40.pk, cancelled_old.pk}
    assert run.messages_deleted == {"sent": 2, "failed": 1}
    assert not Message.objects.filter(pk__in=[sent_40.pk, sent_100.pk, failed_100.pk]).exists()


@pytest.mark.django_db
def test_inbound_replies_go_once_their_answer_is_gone_or_final_and_consent_keeps_its_change():
    old_answer = aged(make_message(status=Status.SENT), days=40)
    queued_answer = aged(make_message(status=Status.UNSENT), days=40)
    answered_and_gone = inbound("in-gone", days=40, reply=old_answer)
    still_answering = inbound("in-queued", days=40, reply=queued_answer)
    young = inbound("in-young", days=5)
    consent = Consent.objects.create(
        phone_number="+12125550123", status=Consent.Status.OPTED_OUT, inbound_message=answered_and_gone
    )
    change = ConsentChange.objects.create(
        consent=consent, status=Consent.Status.OPTED_OUT, inbound_message=answered_and_gone
    )

    run = retention_apply(settings=retention(30))

    assert ids(InboundMessage) == {still_answering.pk, young.pk}
    assert ids(Message) == {queued_answer.pk}
    assert run.others_deleted["inbound replies"] == 1
    consent.refresh_from_db()
    change.refresh_from_db()
    assert consent.status == Consent.Status.OPTED_OUT and consent.inbound_message_id is None
    assert change.inbound_message_id is None


@pytest.mark.django_db
def test_idempotency_keys_older_than_the_shortest_retention_go():
    user = make_user()
    old = IdempotencyKey.objects.create(user=user, key="old", fingerprint="x")
    young = IdempotencyKey.objects.create(user=user, key="young", fingerprint="y")
    IdempotencyKey.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=3))

    # Keys live 24 h by default, less than any retention: with a TTL of 30 days, the
    # shortest retention (sent, 2 days) is what takes the 3-day-old key.
    with override_settings(IDEMPOTENCY_KEY_TTL_HOURS=24 * 30):
        retention_apply(settings=retention(30, sent=2))

    assert ids(IdempotencyKey) == {young.pk}


@pytest.mark.django_db
def test_callback_events_done_with_go_after_the_longest_retention_and_pending_ones_stay():
    from callbacks.models import CallbackAttempt, CallbackEvent
    from callbacks.services import endpoint_create

    endpoint_create(name="app", url="http://127.0.0.1:9/hooks")
    message = make_message()
    message_cancel(message_id=message.pk)  # one event, as the outbox writes it
    [event] = CallbackEvent.objects.all()

    def copy(state: str, days: float) -> CallbackEvent:
        made = CallbackEvent.objects.get(pk=event.pk)
        made.pk, made.event_id, made.state = None, f"evt_{state}_{days}", state
        made.created_at = timezone.now() - timedelta(days=days)
        made.save()
        return made

    delivered_old = copy("delivered", 40)
    CallbackAttempt.objects.create(event=delivered_old, number=1, started_at=timezone.now(), outcome="delivered")
    copy("failed", 40)  # given up
    pending_old = copy("pending", 40)  # still owed to its endpoint: kept whatever its age
    delivered_between = copy("delivered", 20)  # past sent's 10 days, not failed's 30

    run = retention_apply(settings=retention(30, sent=10))

    assert ids(CallbackEvent) == {event.pk, pending_old.pk, delivered_between.pk}
    assert not CallbackAttempt.objects.exists()
    assert run.others_deleted["callback events"] == 2


@pytest.mark.django_db
def test_a_run_stops_at_its_time_and_says_so_and_the_next_continues():
    for _ in range(6):
        aged(make_message(status=Status.SENT), days=40)

    stopped = retention_apply(settings=retention(30, run_seconds=0))
    finished = retention_apply(settings=retention(30))

    assert not stopped.complete and stopped.messages_total == 0
    assert finished.complete and finished.messages_total == 6
    assert not Message.objects.exists()


@pytest.mark.django_db
def test_with_no_retention_set_nothing_is_deleted_and_no_run_is_recorded():
    aged(make_message(status=Status.SENT), days=10_000)

    assert not retention_settings().enabled  # the default: kept for good
    assert retention_run() == 0

    assert Message.objects.count() == 1
    assert not RetentionRun.objects.exists()


@pytest.mark.django_db
def test_the_scheduled_task_reads_the_settings_and_runs_on_a_schedule(caplog):
    aged(make_message(status=Status.SENT), days=40)
    kept = aged(make_message(status=Status.SENT), days=1)
    dispatcher_schedule_ensure()

    schedule = Schedule.objects.get(name=RETENTION_SCHEDULE_NAME)
    with (
        override_settings(
            MESSAGE_RETENTION={"DAYS_BY_STATUS": {"sent": 30}, "INBOUND_DAYS": 0, "BATCH_SIZE": 1000, "RUN_SECONDS": 30}
        ),
        caplog.at_level("INFO", logger="retention.services"),
    ):
        assert retention_run() == 1

    assert schedule.func == RETENTION_TASK and schedule.schedule_type == Schedule.MINUTES
    assert ids(Message) == {kept.pk}
    assert "retention: deleted 1 messages (1 sent)" in caplog.text


@pytest.mark.django_db
def test_only_the_newest_runs_are_kept(monkeypatch):
    monkeypatch.setattr("retention.services.RUNS_KEPT", 3)
    for _ in range(5):
        retention_apply(settings=retention(30))

    assert RetentionRun.objects.count() == 3


# --- never in the sending path's way ----------------------------------------------


def _in_thread(work):
    """Run `work` on a connection of its own (a thread's); return its result or raise its error."""
    outcome: dict = {}

    def target():
        try:
            with connection.cursor() as cursor:
                # A claim that had to wait for the batch's locks fails here instead of hanging.
                cursor.execute("SET lock_timeout = '3s'")
            outcome["value"] = work()
        except Exception as exc:
            outcome["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@pytest.mark.django_db(transaction=True)
def test_a_claim_completes_while_a_prune_batch_holds_its_locks():
    now = database_now()
    due = [make_message(next_attempt_at=now - timedelta(seconds=5)) for _ in range(3)]
    old = [aged(make_message(status=status), days=40) for status in (Status.SENT, Status.FAILED)]
    for message in old:
        attempt_for(message)

    def claim():
        with transaction.atomic():
            return claim_batch(batch_size=10).message_ids

    with transaction.atomic():
        # The batch's transaction is open: its final rows are locked and deleted, uncommitted.
        batch = messages_prune_batch(
            created_before=timezone.now() - timedelta(days=30), statuses=["sent", "failed"], batch_size=1000
        )
        claimed = _in_thread(claim)

    assert batch[Message._meta.label] == 2
    assert sorted(claimed) == sorted(message.pk for message in due)
    assert set(Message.objects.values_list("status", flat=True)) == {Status.PROCESSING}


@pytest.mark.django_db(transaction=True)
def test_a_run_completes_while_a_claim_holds_its_rows_and_leaves_them():
    now = database_now()
    due = [make_message(next_attempt_at=now - timedelta(seconds=5)) for _ in range(3)]
    old_failed = aged(make_message(status=Status.FAILED), days=40)
    for message in due:
        aged(message, days=40)

    with transaction.atomic():
        claimed = claim_batch(batch_size=10).message_ids  # locked until this commits
        run = _in_thread(lambda: retention_apply(settings=retention(30)))

    assert sorted(claimed) == sorted(message.pk for message in due)
    assert run.messages_deleted == {"failed": 1}
    assert not Message.objects.filter(pk=old_failed.pk).exists()
    assert Message.objects.filter(status=Status.PROCESSING).count() == 3


@pytest.mark.django_db(transaction=True)
def test_a_failed_message_requeued_while_a_batch_holds_it_is_not_deleted_afterwards():
    failed = aged(make_message(status=Status.FAILED), days=40)
    other = aged(make_message(status=Status.FAILED), days=40)

    with transaction.atomic():
        # Another transaction holds the row (a requeue in progress): the batch skips it.
        Message.objects.select_for_update().get(pk=failed.pk)
        run = _in_thread(lambda: retention_apply(settings=retention(30)))
        Message.objects.filter(pk=failed.pk).update(status=Status.UNSENT)

    assert run.messages_deleted == {"failed": 1}
    assert ids(Message) == {failed.pk}
    assert Message.objects.get(pk=failed.pk).status == Status.UNSENT
    assert other.pk not in ids(Message)


@pytest.mark.django_db
def test_the_summary_names_a_transaction_held_open_on_the_database():
    import psycopg

    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    assert retention_summary().oldest_transaction_seconds is None
    with psycopg.connect(**params) as other:  # not autocommit: the first statement begins
        other.execute("SELECT txid_current()")
        summary = retention_summary()
        other.rollback()

    assert summary.oldest_transaction_seconds is not None and summary.oldest_transaction_seconds >= 0
    assert summary.oldest_transaction_state == "idle in transaction"
