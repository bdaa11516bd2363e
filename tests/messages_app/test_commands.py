import io
import os
import pty
import select
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from messages_app.csv_import import (
    MessageImportRejection,
    MessageImportRow,
    messages_import_csv,
    messages_import_rows,
)
from messages_app.errors import MessageImportError, MessageStateError
from messages_app.models import DeliveryAttempt, DeliveryReceipt, Message
from messages_app.services import messages_prune, messages_requeue_failed
from tests.factories import make_message
from tests.processes import REPO_ROOT, child_env, manage

pytestmark = pytest.mark.django_db

Status = Message.Status

HEADER = "recipient_phone_number,content,send_after\n"


def run(*args: str) -> tuple[str, str]:
    """Run a command; return what it wrote to stdout and to stderr."""
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def run_rejecting(*args, exit_status: int = 3) -> tuple[str, str]:
    """Run an import that rejects rows: the valid ones are stored, but the command fails
    so that a script notices, with exit status 3 (partly imported), or 1 when it rejected
    every row; its output as run() gives it."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError, match=r"rejected \(listed above\)") as failed:
        call_command(*args, stdout=out, stderr=err)
    assert failed.value.returncode == exit_status
    return out.getvalue(), err.getvalue()


def csv_file(tmp_path, content: str | bytes, name: str = "messages.csv") -> str:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(path)


def aged(message: Message, *, days: float) -> Message:
    """`message` as if created `days` ago (created_at is set on insert)."""
    Message.objects.filter(pk=message.pk).update(created_at=timezone.now() - timedelta(days=days))
    return message


def attempt_for(message: Message) -> DeliveryAttempt:
    return DeliveryAttempt.objects.create(
        message=message, number=1, started_at=timezone.now(), outcome=DeliveryAttempt.Outcome.SENT
    )


# --- import_messages ------------------------------------------------------------------


def test_import_stores_valid_rows_normalised(tmp_path):
    path = csv_file(
        tmp_path,
        HEADER + "+90 555 111 22 33,hello,\n"
        "+90.555.111.22.34,  keeps its spaces  ,2030-01-31T09:00:00+03:00\n"
        "+905551112235,naive time,2030-01-31 09:00\n"
        "+905551112236,a date,2030-02-01\n",
    )

    out, _ = run("import_messages", path)

    assert out == "Imported 4 messages; 0 rows rejected.\n"
    stored = {m.recipient_phone_number: m for m in Message.objects.all()}
    assert set(stored) == {"+905551112233", "+905551112234", "+905551112235", "+905551112236"}
    assert all(m.status == Status.UNSENT and m.attempts == 0 for m in stored.values())
    assert stored["+905551112233"].content == "hello"
    assert stored["+905551112233"].send_after is None
    assert stored["+905551112234"].content == "  keeps its spaces  "
    assert stored["+905551112234"].send_after == datetime(2030, 1, 31, 6, 0, tzinfo=UTC)
    # Without an offset, the default time zone (UTC in these settings).
    assert stored["+905551112235"].send_after == datetime(2030, 1, 31, 9, 0, tzinfo=UTC)
    assert stored["+905551112236"].send_after == datetime(2030, 2, 1, 0, 0, tzinfo=UTC)
    # Not claimable before send_after, as for a message created through the API.
    assert stored["+905551112236"].next_attempt_at == stored["+905551112236"].send_after


def test_import_reports_invalid_rows_by_line_and_stores_the_valid_ones(tmp_path):
    too_long = "x" * (settings.MESSAGE_MAX_LENGTH + 1)
    path = csv_file(
        tmp_path,
        HEADER  # line 1
        + "+905551112233,first,\n"  # 2
        + "not a phone,hello,\n"  # 3
        + "+905551112234,   ,\n"  # 4
        + "\n"  # 5: blank, skipped
        + '+905551112235,"two\nlines",\n'  # 6-7: one row
        + f"+905551112236,{too_long},\n"  # 8
        + "+905551112237,hi,tomorrow\n"  # 9
        + "+905551112238,hi,2030-13-01\n"  # 10
        + "+905551112239,last,2030-01-01T10:00:00Z\n",  # 11
    )

    out, err = run_rejecting("import_messages", path, "--batch-size", "2")

    assert out == "Imported 3 messages; 5 rows rejected.\n"
    rejections = [line for line in err.splitlines() if line.startswith("line ")]
    assert [line.split(":")[0] for line in rejections] == ["line 3", "line 4", "line 8", "line 9", "line 10"]
    assert rejections[0].startswith("line 3: recipient_phone_number: Enter a phone number")
    assert rejections[1] == "line 4: content: Content must not be blank."
    assert f"the limit is {settings.MESSAGE_MAX_LENGTH}" in rejections[2]
    assert rejections[3].startswith("line 9: send_after: 'tomorrow' is not an ISO 8601 date")
    assert rejections[4].startswith("line 10: send_after: ")
    assert sorted(Message.objects.values_list("content", flat=True)) == ["first", "last", "two\nlines"]


def test_import_reports_every_problem_of_a_row_at_once():
    rejected: list[MessageImportRejection] = []
    rows = [MessageImportRow(line=7, recipient_phone_number="123", content="", send_after="soon")]

    result = messages_import_rows(rows=rows, on_rejected=rejected.append)

    assert (result.imported, result.rejected) == (0, 1)
    assert rejected[0].line == 7
    assert rejected[0].reason.startswith("recipient_phone_number: ")
    assert "; content: Content must not be blank.; send_after: 'soon' is not" in rejected[0].reason


def test_import_handles_bom_crlf_extra_columns_and_blank_rows(tmp_path):
    content = (
        "\ufeffid, Content ,note,Recipient_Phone_Number\r\n"
        "1,hello,ignored,+905551112233\r\n"
        "\r\n"
        ",,,\r\n"
        "2,short row without a phone\r\n"
        "3,bye,ignored,+905551112234,and,more,cells\r\n"
    )
    path = csv_file(tmp_path, content)

    out, err = run_rejecting("import_messages", path)

    assert out == "Imported 2 messages; 1 row rejected.\n"
    assert "line 5: recipient_phone_number: A phone number is required." in err
    assert sorted(Message.objects.values_list("recipient_phone_number", "content")) == [
        ("+905551112233", "hello"),
        ("+905551112234", "bye"),
    ]


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("phone,content\n+905551112233,hi\n", "lacks recipient_phone_number"),
        ("recipient_phone_number\n+905551112233\n", "lacks content"),
        ("", "the file is empty"),
        ("\n+905551112233,hi\n", "lacks recipient_phone_number, content"),
    ],
)
def test_import_without_the_required_columns_stores_nothing(tmp_path, content, error):
    path = csv_file(tmp_path, content)

    with pytest.raises(CommandError, match=error):
        run("import_messages", path)

    assert not Message.objects.exists()


def test_import_of_a_file_that_is_not_utf8_stores_nothing_even_after_valid_batches(tmp_path):
    valid = "".join(f"+9055511{n:05d},hello {n}\n" for n in range(10))
    path = csv_file(tmp_path, ("recipient_phone_number,content\n" + valid).encode() + b"+905551112233,caf\xe9\n")

    with pytest.raises(CommandError, match=r"line 12 is not UTF-8"):
        run("import_messages", path, "--batch-size", "2")

    assert not Message.objects.exists()


def test_import_of_a_missing_file_fails(tmp_path):
    with pytest.raises(CommandError, match=r"cannot read .*No such file"):
        run("import_messages", str(tmp_path / "nowhere.csv"))


def test_import_refuses_invisible_content_and_control_characters_as_the_api_does(tmp_path):
    path = csv_file(
        tmp_path,
        HEADER + "+905551112233,\u200b\u200b,\n+905551112234,\x1b[31mred,\n+905551112235,\u200bfine\u200b,\n",
    )

    out, err = run_rejecting("import_messages", path)

    assert out == "Imported 1 message; 2 rows rejected.\n"
    assert "line 2: content: Content must have at least one visible character" in err
    assert "line 3: content: Content must not contain control characters (U+001B at position 1)" in err
    assert list(Message.objects.values_list("content", flat=True)) == ["\u200bfine\u200b"]


def test_import_rejects_times_outside_the_years_taken_by_line_and_the_list_stays_readable(tmp_path, api_client):
    path = csv_file(
        tmp_path,
        "recipient_phone_number,content,send_after,expires_at\n"
        "+905551112233,year 10000 in UTC,9999-12-31T23:59:59-14:00,\n"  # 2
        "+905551112234,year 0 in UTC,0001-01-01T00:00:00+14:00,\n"  # 3
        "+905551112235,no such offset,2030-01-01T00:00:00+23:59,\n"  # 4
        "+905551112236,expiry far ahead,,2200-01-01T00:00:00Z\n"  # 5
        "+905551112237,fine,2030-01-01T00:00:00+14:00,2099-12-31T00:00:00Z\n",  # 6
    )

    out, err = run_rejecting("import_messages", path)

    assert out == "Imported 1 message; 4 rows rejected.\n"
    rejections = [line for line in err.splitlines() if line.startswith("line ")]
    assert rejections == [
        "line 2: send_after: 9999-12-31T23:59:59-14:00 is outside the times this service takes: "
        "from 2000-01-01T00:00:00Z to 2100-01-01T00:00:00Z.",
        "line 3: send_after: 0001-01-01T00:00:00+14:00 is outside the times this service takes: "
        "from 2000-01-01T00:00:00Z to 2100-01-01T00:00:00Z.",
        "line 4: send_after: 2030-01-01T00:00:00+23:59 has a UTC offset of +23:59; "
        "no place is more than 14 hours from UTC.",
        "line 5: expires_at: 2200-01-01T00:00:00+00:00 is outside the times this service takes: "
        "from 2000-01-01T00:00:00Z to 2100-01-01T00:00:00Z.",
    ]
    assert Message.objects.get().send_after == datetime(2029, 12, 31, 10, tzinfo=UTC)
    assert api_client.get("/api/messages/").status_code == 200


def test_an_import_of_1601_rows_with_a_bad_offset_on_row_1500_reports_it_and_stores_the_rest(tmp_path):
    """The issue's file: it stopped with a traceback after committing 1,000 rows, and a re-run
    stored those again."""
    rows = [f"+9055511{n:05d},row {n},2030-01-01T00:00:00+03:00\n" for n in range(1601)]
    rows[1499] = "+905551199999,bad offset,2030-01-01T00:00:00+23:59\n"  # line 1501
    path = csv_file(tmp_path, HEADER + "".join(rows))

    out, err = run_rejecting("import_messages", path)

    assert out == "Imported 1600 messages; 1 row rejected.\n"
    assert "line 1501: send_after: 2030-01-01T00:00:00+23:59 has a UTC offset of +23:59" in err
    assert Message.objects.count() == 1600


def test_an_import_the_database_stops_half_way_stores_nothing_and_fails_in_one_line(tmp_path):
    """All or nothing: the rows go in one transaction, so an import that fails after its first
    batches (here the database refuses row 1,500 by a constraint of its own) leaves nothing a
    re-run would store twice."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"ALTER TABLE {Message._meta.db_table} ADD CONSTRAINT test_refuses_poison CHECK (content <> 'poison')"
        )
    rows = [f"+9055511{n:05d},row {n},\n" for n in range(1601)]
    rows[1499] = "+905551199999,poison,\n"
    path = csv_file(tmp_path, HEADER + "".join(rows))

    with pytest.raises(CommandError) as raised:
        run("import_messages", path, "--batch-size", "500")

    assert str(raised.value).startswith(
        f"{path}: stopped by a database error; nothing was stored, so it can be run again: "
    )
    assert "test_refuses_poison" in str(raised.value)
    assert "\n" not in str(raised.value)
    assert not Message.objects.exists()


@pytest.mark.parametrize("priority", ["HIGH", "High", " high", "high "])
def test_import_takes_a_priority_only_as_the_api_does(tmp_path, api_client, priority):
    # Issue 20: the import lower-cased and stripped it, so it stored what the API refuses.
    body = {"recipient_phone_number": "+905551112233", "content": "hi", "priority": priority}
    assert api_client.post("/api/messages/", body, format="json").status_code == 400
    path = csv_file(tmp_path, f"recipient_phone_number,content,priority\n+905551112233,hi,{priority}\n")

    _, err = run_rejecting("import_messages", path, exit_status=1)

    assert "line 2: priority: must be one of high, normal, low." in err
    assert not Message.objects.exists()


def test_import_rejects_a_batch_size_below_one(tmp_path):
    path = csv_file(tmp_path, "recipient_phone_number,content\n+905551112233,hi\n")
    with pytest.raises(CommandError, match="--batch-size"):
        run("import_messages", path, "--batch-size", "0")
    assert not Message.objects.exists()


def test_import_reads_standard_input(monkeypatch):
    data = "\ufeffrecipient_phone_number,content\n+90 555 111 22 33,from stdin\nbad,row\n".encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))

    out, err = run_rejecting("import_messages", "-")

    assert out == "Imported 1 message; 1 row rejected.\n"
    assert "line 3: recipient_phone_number:" in err
    assert list(Message.objects.values_list("recipient_phone_number", "content")) == [("+905551112233", "from stdin")]


def test_import_from_standard_input_that_is_not_utf8_fails(monkeypatch):
    data = b"recipient_phone_number,content\n+905551112233,caf\xe9\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))

    with pytest.raises(CommandError, match="standard input: line 2 is not UTF-8"):
        run("import_messages", "-")

    assert not Message.objects.exists()


def test_import_dry_run_stores_nothing_but_reports(tmp_path):
    path = csv_file(tmp_path, HEADER + "+905551112233,hello,\nbad,hello,\n+905551112234,hi,\n")

    out, err = run_rejecting("import_messages", path, "--dry-run")

    assert out == "Dry run: would import 2 messages (2 SMS segments); 1 row rejected. Nothing was stored.\n"
    assert "line 3: recipient_phone_number:" in err
    assert not Message.objects.exists()


def test_import_shows_progress(tmp_path):
    rows = "".join(f"+9055511{n:05d},hello\n" for n in range(5))
    path = csv_file(tmp_path, "recipient_phone_number,content\n" + rows)

    _, err = run("import_messages", path, "--batch-size", "2")

    assert "import: 100%" in err
    assert "5/5" in err


def test_import_stores_in_batches_and_reports_progress_per_batch(tmp_path):
    rows = "".join(f"+9055511{n:05d},hello\n" for n in range(5))
    path = tmp_path / "m.csv"
    path.write_text("recipient_phone_number,content\n" + rows + "bad,row\n")
    checked: list[int] = []
    progress: list[int] = []

    with path.open("rb") as stream:
        result = messages_import_csv(
            stream=stream, batch_size=2, on_checked=checked.append, on_progress=progress.append
        )

    assert (result.imported, result.rejected) == (5, 1)
    assert checked == [6]
    assert progress == [2, 2, 2]
    assert Message.objects.count() == 5


@pytest.mark.parametrize(
    "bad_row",
    [
        '+905551112234,"a quote left open\n+905551112235,swallowed\n',
        '+905551112234,"quoted" then more\n+905551112235,fine\n',
    ],
)
def test_import_of_malformed_csv_stores_nothing(tmp_path, bad_row):
    path = csv_file(tmp_path, "recipient_phone_number,content\n+905551112233,ok\n" + bad_row)

    with pytest.raises(CommandError, match="the row starting on line 3 is not valid CSV"):
        run("import_messages", path, "--batch-size", "1")

    assert not Message.objects.exists()


def test_import_service_refuses_a_file_without_header_before_storing():
    with pytest.raises(MessageImportError, match="lacks content"):
        messages_import_csv(stream=io.BytesIO(b"recipient_phone_number\n+905551112233\n"))
    assert not Message.objects.exists()


# --- prune_messages -------------------------------------------------------------------


def test_prune_deletes_only_old_messages_of_the_chosen_status_with_their_attempts():
    old_sent = [aged(make_message(status=Status.SENT), days=40) for _ in range(5)]
    for message in old_sent:
        attempt_for(message)
    young_sent = aged(make_message(status=Status.SENT), days=10)
    old_failed = aged(make_message(status=Status.FAILED), days=40)
    old_unsent = aged(make_message(status=Status.UNSENT), days=40)
    old_processing = aged(make_message(status=Status.PROCESSING), days=40)
    kept_attempt = attempt_for(young_sent)

    out, err = run("prune_messages", "--older-than", "30", "--batch-size", "2")

    assert out == "Deleted 5 messages.\n"
    assert "prune: 100%" in err
    assert "5/5" in err
    assert set(Message.objects.values_list("pk", flat=True)) == {
        young_sent.pk,
        old_failed.pk,
        old_unsent.pk,
        old_processing.pk,
    }
    assert list(DeliveryAttempt.objects.values_list("pk", flat=True)) == [kept_attempt.pk]


def test_prune_takes_the_receipts_of_pruned_messages_and_old_unmatched_ones():
    pruned = aged(make_message(status=Status.SENT, provider_message_id="p-old"), days=40)
    kept = aged(make_message(status=Status.SENT, provider_message_id="p-young"), days=10)

    def receipt(receipt_id: str, message: Message | None, *, days: int) -> DeliveryReceipt:
        made = DeliveryReceipt.objects.create(
            receipt_id=receipt_id,
            provider_message_id=message.provider_message_id if message else "nobody-sent-this",
            status="delivered",
            occurred_at=timezone.now(),
            message=message,
        )
        DeliveryReceipt.objects.filter(pk=made.pk).update(received_at=timezone.now() - timedelta(days=days))
        return made

    receipt("r-pruned", pruned, days=40)
    receipt("r-kept", kept, days=10)
    receipt("r-unmatched-old", None, days=40)
    receipt("r-unmatched-young", None, days=10)

    out, _ = run("prune_messages", "--older-than", "30", "--batch-size", "1")

    assert out == "Deleted 1 messages.\n"
    assert set(DeliveryReceipt.objects.values_list("receipt_id", flat=True)) == {"r-kept", "r-unmatched-young"}
    assert DeliveryReceipt.objects.get(receipt_id="r-kept").message_id == kept.pk


def test_prune_works_in_batches():
    for _ in range(5):
        aged(make_message(status=Status.SENT), days=3)
    checked: list[int] = []
    progress: list[int] = []

    deleted = messages_prune(
        created_before=timezone.now() - timedelta(days=1),
        batch_size=2,
        on_checked=checked.append,
        on_progress=progress.append,
    )

    assert deleted == 5
    assert checked == [5]
    assert progress == [2, 2, 1]
    assert not Message.objects.exists()


def test_prune_with_both_final_statuses():
    old_sent = aged(make_message(status=Status.SENT), days=8)
    old_failed = aged(make_message(status=Status.FAILED), days=8)
    young_failed = aged(make_message(status=Status.FAILED), days=6)

    out, _ = run("prune_messages", "--older-than", "7", "--status", "failed", "--status", "sent")

    assert out == "Deleted 2 messages.\n"
    assert not Message.objects.filter(pk__in=[old_sent.pk, old_failed.pk]).exists()
    assert Message.objects.filter(pk=young_failed.pk).exists()


def test_prune_of_failed_only_keeps_sent():
    old_sent = aged(make_message(status=Status.SENT), days=8)
    aged(make_message(status=Status.FAILED), days=8)

    out, _ = run("prune_messages", "--older-than", "7", "--status", "failed")

    assert out == "Deleted 1 messages.\n"
    assert list(Message.objects.values_list("pk", flat=True)) == [old_sent.pk]


def test_prune_takes_every_final_status_asked_for():
    gone = [aged(make_message(status=status), days=40) for status in ("cancelled", "expired", "suppressed")]
    kept = aged(make_message(status=Status.SENT), days=40)

    out, _ = run(
        "prune_messages", "--older-than", "30", "--status", "cancelled", "--status", "expired", "--status", "suppressed"
    )

    assert out == "Deleted 3 messages.\n"
    assert list(Message.objects.values_list("pk", flat=True)) == [kept.pk]
    assert not Message.objects.filter(pk__in=[m.pk for m in gone]).exists()


@pytest.mark.parametrize("status", ["unsent", "processing"])
def test_prune_refuses_live_statuses(status):
    aged(make_message(status=status), days=40)
    aged(make_message(status=Status.SENT), days=40)

    with pytest.raises(CommandError, match=r"Only final messages \(sent, failed, .*\) can be pruned"):
        run("prune_messages", "--older-than", "30", "--status", "sent", "--status", status)

    assert Message.objects.count() == 2


def test_prune_service_refuses_live_statuses():
    with pytest.raises(MessageStateError):
        messages_prune(created_before=timezone.now(), statuses=[Status.SENT, Status.PROCESSING])


@pytest.mark.parametrize("days", ["0", "-3"])
def test_prune_refuses_fewer_than_one_day(days):
    aged(make_message(status=Status.SENT), days=40)

    with pytest.raises(CommandError, match="--older-than: must be a whole number from 1 to 36,500"):
        run("prune_messages", f"--older-than={days}")

    assert Message.objects.count() == 1


@pytest.mark.process
@pytest.mark.parametrize(
    ("args", "error"),
    [
        # Issue 20: timedelta's OverflowError, then the database's "bigint out of range".
        (["prune_messages", "--older-than", "99999999999"], "--older-than: must be a whole number from 1 to 36,500"),
        (["prune_messages", "--older-than", "999999"], "--older-than: must be a whole number from 1 to 36,500"),
        (["prune_messages", "--older-than", "30", "--batch-size", "1" + "0" * 20], "--batch-size: must be a whole"),
        (["prune_messages", "--older-than", "\u0663\u0660"], "--older-than: '\u0663\u0660' is not a whole number"),
        (["import_messages", "-", "--batch-size", "1" + "0" * 20], "--batch-size: must be a whole number from 1 to"),
    ],
    ids=["days-past-int", "days-past-year-1", "prune-batch", "arabic-indic-days", "import-batch"],
)
def test_a_number_out_of_range_is_a_one_line_error_not_a_traceback(args, error):
    aged(make_message(status=Status.SENT), days=40)

    done = manage(args, env=child_env())

    assert done.returncode != 0
    assert "Traceback" not in done.stdout, done.stdout
    assert error in done.stdout.strip().splitlines()[-1], done.stdout
    assert Message.objects.count() == 1


def test_prune_requires_older_than():
    with pytest.raises(CommandError, match="--older-than"):
        run("prune_messages")


def test_prune_dry_run_deletes_nothing():
    aged(make_message(status=Status.SENT), days=40)
    aged(make_message(status=Status.SENT), days=1)

    out, _ = run("prune_messages", "--older-than", "30", "--dry-run")

    assert out == "Dry run: would delete 1 messages. Nothing was deleted.\n"
    assert Message.objects.count() == 2


# --- requeue_failed -------------------------------------------------------------------


def test_requeue_failed_requeues_every_failed_message():
    failed = [
        make_message(status=Status.FAILED, attempts=5, last_error="HTTP 400"),
        aged(make_message(status=Status.FAILED, attempts=5), days=30),
    ]
    sent = make_message(status=Status.SENT)

    out, _ = run("requeue_failed")

    assert out == "Requeued 2 failed messages.\n"
    for message in failed:
        message.refresh_from_db()
        assert (message.status, message.attempts) == (Status.UNSENT, 0)
        assert message.next_attempt_at <= timezone.now()  # due at once
    sent.refresh_from_db()
    assert sent.status == Status.SENT


@pytest.mark.parametrize("since", ["2030-01-10", "2030-01-10T00:00:00", "2030-01-10T03:00:00+03:00"])
def test_requeue_failed_since_only_requeues_messages_created_since(since):
    def failed_created_at(moment: datetime) -> Message:
        message = make_message(status=Status.FAILED)
        Message.objects.filter(pk=message.pk).update(created_at=moment)
        return message

    before = failed_created_at(datetime(2030, 1, 9, 23, 59, tzinfo=UTC))
    at = failed_created_at(datetime(2030, 1, 10, 0, 0, tzinfo=UTC))
    after = failed_created_at(datetime(2030, 1, 11, tzinfo=UTC))

    out, _ = run("requeue_failed", "--since", since)

    assert out == "Requeued 2 failed messages.\n"
    assert set(Message.objects.filter(status=Status.UNSENT).values_list("pk", flat=True)) == {at.pk, after.pk}
    before.refresh_from_db()
    assert before.status == Status.FAILED


@pytest.mark.parametrize("since", ["yesterday", "2030-13-01", "2030-01-10T25:00", ""])
def test_requeue_failed_with_a_malformed_since_fails(since):
    make_message(status=Status.FAILED)

    with pytest.raises(CommandError, match=r"--since: .* is not an ISO 8601 date"):
        run("requeue_failed", f"--since={since}")

    assert Message.objects.get().status == Status.FAILED


def test_requeue_failed_dry_run_changes_nothing():
    make_message(status=Status.FAILED)
    aged(make_message(status=Status.FAILED), days=3)

    out, _ = run("requeue_failed", "--dry-run", "--since", (timezone.now() - timedelta(days=1)).isoformat())

    listed = Message.objects.filter(created_at__gte=timezone.now() - timedelta(days=1)).get().pk
    assert out == f"Dry run: would requeue 1 failed message: {listed}. Nothing was changed.\n"
    assert Message.objects.filter(status=Status.FAILED).count() == 2


def test_messages_requeue_failed_keeps_its_default_behaviour():
    failed = make_message(status=Status.FAILED)
    other = make_message(status=Status.FAILED)

    assert messages_requeue_failed(message_ids=[failed.pk]) == 1
    assert messages_requeue_failed(created_since=timezone.now() + timedelta(days=1)) == 0
    assert messages_requeue_failed() == 1
    other.refresh_from_db()
    assert other.status == Status.UNSENT


def test_import_lists_rejections_after_the_progress_bar_not_inside_it(tmp_path):
    rows = "".join(f"+9055511{n:05d},hello\n" for n in range(4)) + "bad,row\n"
    path = csv_file(tmp_path, "recipient_phone_number,content\n" + rows)

    _, err = run_rejecting("import_messages", path, "--batch-size", "2")

    assert err.index("import: 100%") < err.index("line 6: recipient_phone_number")
    assert all(not line.startswith("line ") or "import:" not in line for line in err.splitlines())


def test_import_draws_no_progress_bar_before_a_header_error(tmp_path):
    path = csv_file(tmp_path, "phone,text\n+905551112233,hi\n")
    err = io.StringIO()

    with pytest.raises(CommandError, match="lacks recipient_phone_number"):
        call_command("import_messages", path, stdout=io.StringIO(), stderr=err)

    assert "import:" not in err.getvalue()


def test_import_with_rejected_rows_exits_non_zero_but_keeps_the_valid_ones(tmp_path):
    path = csv_file(tmp_path, "recipient_phone_number,content\n+905551112233,hi\nbad,row\n")

    out, _ = run_rejecting("import_messages", path)

    assert out == "Imported 1 message; 1 row rejected.\n"
    assert Message.objects.count() == 1


def test_requeue_failed_dry_run_lists_the_ids():
    failed = [make_message(status=Status.FAILED) for _ in range(3)]
    make_message(status=Status.SENT)

    out, _ = run("requeue_failed", "--dry-run")

    ids = ", ".join(str(m.pk) for m in failed)
    assert out == f"Dry run: would requeue 3 failed messages: {ids}. Nothing was changed.\n"


def test_import_of_only_rejected_rows_exits_1_having_stored_nothing(tmp_path):
    path = csv_file(tmp_path, "recipient_phone_number,content\nbad,row\n+905551112233,\n")
    out = io.StringIO()

    with pytest.raises(CommandError, match=r"^2 rows rejected \(listed above\), every row: nothing was stored\.$") as e:
        call_command("import_messages", path, stdout=out, stderr=io.StringIO())

    assert e.value.returncode == 1
    assert out.getvalue() == "Imported 0 messages; 2 rows rejected.\n"
    assert not Message.objects.exists()


@pytest.mark.process
@pytest.mark.parametrize(
    ("rows", "status", "said"),
    [
        (
            "+905551112233,one\n+905551112234,two\n",
            0,
            "Dry run: would import 2 messages (2 SMS segments); 0 rows rejected.",
        ),
        ("+905551112233,one\nbad,row\n", 3, "CommandError: 1 row rejected (listed above); fix them and import"),
        ("bad,row\n", 1, "CommandError: 1 row rejected (listed above), every row: nothing would be stored."),
        ("", 0, "Dry run: would import 0 messages (0 SMS segments); 0 rows rejected."),
    ],
)
def test_import_exit_status_tells_a_script_whether_all_some_or_none_were_imported(tmp_path, rows, status, said):
    path = csv_file(tmp_path, "recipient_phone_number,content\n" + rows)

    done = manage(["import_messages", path, "--dry-run"], env=child_env())

    assert done.returncode == status, done.stdout
    assert said in done.stdout


# --- progress bars: in place on a terminal, lines elsewhere ----------------------------------------


def test_prune_writes_its_bar_once_as_a_line_where_stderr_is_not_a_terminal():
    for _ in range(5):
        aged(make_message(status=Status.SENT), days=40)

    _, err = run("prune_messages", "--older-than", "30", "--batch-size", "2")

    assert "\r" not in err
    [bar] = [line for line in err.splitlines() if "prune:" in line]
    assert bar.startswith("prune: 100%") and "5/5" in bar


def test_import_writes_its_bar_once_as_a_line_where_stderr_is_not_a_terminal(tmp_path):
    rows = "".join(f"+9055511{n:05d},hello\n" for n in range(5))
    path = csv_file(tmp_path, "recipient_phone_number,content\n" + rows)

    _, err = run("import_messages", path, "--batch-size", "2")

    assert "\r" not in err
    [bar] = [line for line in err.splitlines() if "import:" in line]
    assert bar.startswith("import: 100%") and "5/5" in bar


@pytest.mark.process
@pytest.mark.django_db(transaction=True)
def test_prune_on_a_terminal_redraws_one_bar_in_place_from_the_count_it_found():
    for _ in range(5):
        aged(make_message(status=Status.SENT), days=40)
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "manage.py", "prune_messages", "--older-than", "30", "--batch-size", "2"],
            cwd=REPO_ROOT,
            env=child_env(),
            stdout=subprocess.DEVNULL,
            stderr=terminal,
            timeout=60,
        )
        os.close(terminal)
        terminal = None
        drawn = b""
        while select.select([controller], [], [], 1)[0]:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the other end is closed: all of it was read
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(controller)
        if terminal is not None:
            os.close(terminal)

    assert done.returncode == 0
    draws = [part.strip() for part in drawn.decode().split("\r") if part.strip().startswith("prune:")]
    # Every draw has the count; none before it was known ("prune: 0message [...]" was drawn, then redrawn).
    assert draws and all("/5" in draw for draw in draws), draws
    assert draws[-1].startswith("prune: 100%"), draws
